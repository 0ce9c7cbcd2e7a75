// kernel:BUSID against real kernels, VM to VM (the USB-VM scenario with a real device):
// - guest 1 (the USB VM, CID 3) has an ext4 image as a virtio-blk disk and makes it a USB mass
//   storage gadget on dummy_hcd (configfs, lun = /dev/vda), so the machine has a real USB device;
//   it runs `prism usbip serve --device kernel:BUSID`, which binds the device to usbip-host and,
//   on an allowed import, gives the kernel the connected AF_VSOCK socket (usbip_sockfd);
// - guest 2 (an app VM, CID 4) runs `prism usbip attach vsock:3:3240 BUSID` (vhci-hcd takes its
//   socket), mounts the disk, reads the files the image was made with, writes one, unmounts and
//   detaches with the Debian usbip tool;
// - each guest has its own prism vsock device; guest 2's allows 4:3:3240 only and reaches guest 1
//   through guest 1's hybrid socket, so guest 1 sees the connection come from CID 2 (the hybrid
//   handshake carries no source CID): guest 1's USB/IP policy is `peer=vsock:2`, and which VM may
//   reach it is guest 2's vsock policy. An import over guest 1's own loopback TCP (the Debian
//   usbip tool, peer tcp:127.0.0.1) is refused by that policy and leaves the device available.
// Guest 1 watches usbip_status go 1 → 2 → 1 (imported, detached), then stops prism, which gives
// the device back to the `usb` driver. The host then reads the written file out of the image with
// debugfs and compares checksums.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { dial } from '../src/transport/index.js';
import { VsockServer } from '../src/vsock/server.js';
import { usbDiskWorkload } from './helpers/usbip.js';
import { guestTail, makeExt4Image, requireLab, runHostNode, type GuestResult } from './helpers/lab.js';

const GUEST_TIMEOUT_MS = 420_000;
const sha256 = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

/** The first of prism's JSON log lines with this message, or ''. */
function logLine(consoleText: string, msg: string): string {
  return consoleText.split('\n').find((l) => l.includes(`"msg":${JSON.stringify(msg)}`)) ?? '';
}

function marker(r: GuestResult, name: string): string[] {
  const m = new RegExp(`^${name} ?(.*)$`, 'm').exec(r.console);
  assert.ok(m?.[1] !== undefined, `no ${name} line\n${guestTail(r, 80)}`);
  return m[1].trim().split(/\s+/).filter((w) => w !== '');
}

/** Guest 1, before prism starts: the gadget on dummy_hcd backed by /dev/vda, its bus ID, the watcher. */
const USB_VM_BEFORE = `
fail() { echo "K-FAIL $*"; }
grep -q ' /sys/kernel/config ' /proc/mounts || mount -t configfs none /sys/kernel/config || fail "mount configfs"
g=/sys/kernel/config/usb_gadget/g
mkdir -p $g/strings/0x409 $g/configs/c.1 $g/functions/mass_storage.0 || fail "mkdir gadget"
echo 0x1d6b > $g/idVendor; echo 0x0104 > $g/idProduct
echo prism-kernel-test > $g/strings/0x409/serialnumber; echo prism > $g/strings/0x409/manufacturer; echo usb-vm-disk > $g/strings/0x409/product
echo /dev/vda > $g/functions/mass_storage.0/lun.0/file || fail "lun file /dev/vda"
ln -s $g/functions/mass_storage.0 $g/configs/c.1/ || fail "link function"
udc=$(ls /sys/class/udc | head -n1)
echo "$udc" > $g/UDC || fail "bind UDC $udc"
b=; i=0
while [ -z "$b" ] && [ $i -lt 200 ]; do
  for d in /sys/bus/usb/devices/*-*; do
    case \${d##*/} in *:*) continue ;; esac
    [ "$(cat $d/idVendor 2>/dev/null)" = 1d6b ] && [ "$(cat $d/idProduct 2>/dev/null)" = 0104 ] && readlink -f $d | grep -q dummy_hcd && b=\${d##*/}
  done
  i=$((i+1)); usleep 100000
done
echo "K-BUSID $b $(basename "$(readlink /sys/bus/usb/devices/$b/driver)")"
echo "$b" > /host/tmp/busid
st() { cat /sys/bus/usb/devices/$b/usbip_status 2>/dev/null || echo none; }
socat -u VSOCK-LISTEN:7000 CREATE:/tmp/stop 2>/dev/null &
(
  i=0; until usbip list -r 127.0.0.1 >/dev/null 2>&1; do i=$((i+1)); [ $i -gt 600 ] || [ -e /tmp/stop ] && break; usleep 250000; done
  echo "K-SERVER-UP $(st) $(basename "$(readlink /sys/bus/usb/devices/$b/driver)")"
  usbip attach -r 127.0.0.1 -b $b; echo "K-REFUSED $? $(st)"
  echo "K-READY"
  last=$(st); seen=0; i=0
  while [ $i -lt 2400 ] && [ ! -e /tmp/stop ]; do
    s=$(st)
    [ "$s" != "$last" ] && { echo "K-STATUS $s"; last=$s; }
    [ "$s" = 2 ] && seen=1
    [ $seen = 1 ] && [ "$s" = 1 ] && break
    i=$((i+1)); usleep 250000
  done
  echo "K-WATCH-END seen=$seen status=$(st)"
  sleep 2
  kill -TERM $(pidof node)
) &
`;

/** Guest 1, after prism exits: where the device went. */
const USB_VM_AFTER = `
b=$(cat /host/tmp/busid)
echo "K-AFTER $(basename "$(readlink /sys/bus/usb/devices/$b/driver)") [$(cat /sys/bus/usb/drivers/usbip-host/match_busid | tr -d ' ')]"
sync; echo 3 > /proc/sys/vm/drop_caches
echo "K-DONE"`;

/** Guest 2, after `prism usbip attach` exits: use the disk, detach. */
const APP_VM_AFTER = usbDiskWorkload('APP');

/** node -e: prism usbip serve with the bus ID guest 1 found (runHostNode's arguments are fixed). */
const SERVE = `const b = require('node:fs').readFileSync('/tmp/busid', 'utf8').trim();
process.argv = [process.argv[0], 'prism', 'usbip', 'serve', '--listen', 'vsock:any:3240', '--listen', 'tcp:127.0.0.1:3240', '--device', 'kernel:' + b, '--allow', 'peer=vsock:2'];
import('./src/cli/main.ts');`;

describe('kernel:BUSID: a USB VM exports a real (gadget) device through usbip-host to an app VM over vsock', () => {
  let dir: string;
  let image: string;
  let usbVmDevice: VsockServer;
  let appVmDevice: VsockServer;
  const appVsockLog: string[] = [];
  const big = randomBytes(512 * 1024);

  before(async () => {
    requireLab();
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'prism-usbip-kernel-'));
    image = makeExt4Image(dir, 'disk.img', '32M', { 'hello.txt': 'hello from the USB VM\n', 'big.bin': big });
    usbVmDevice = new VsockServer({ socket: path.join(dir, 'usb-vm.sock'), cid: 3, uds: path.join(dir, 'usb-vm.vsock') });
    appVmDevice = new VsockServer({
      socket: path.join(dir, 'app-vm.sock'),
      cid: 4,
      uds: path.join(dir, 'app-vm.vsock'),
      peers: { 3: path.join(dir, 'usb-vm.vsock') },
      allow: [{ from: 4, to: 3, port: 3240 }],
      log: (level, msg) => appVsockLog.push(`${level} ${msg}`),
    });
    await usbVmDevice.start();
    await appVmDevice.start();
  });

  after(async () => {
    await appVmDevice?.close();
    await usbVmDevice?.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('binds, hands the import to the kernel, the app VM mounts/reads/writes and detaches, the device goes back; a refused import changes nothing', { timeout: 900_000 }, async () => {
    let usbConsole = '';
    let onReady: (busid: string) => void = () => undefined;
    const ready = new Promise<string | null>((resolve) => (onReady = resolve));
    const usbVm = runHostNode({
      args: ['--import', 'tsx', '-e', SERVE],
      before: USB_VM_BEFORE,
      after: USB_VM_AFTER,
      vhostUser: [{ kind: 'vsock', socket: path.join(dir, 'usb-vm.sock') }],
      extraArgs: ['-drive', `file=${image},format=raw,if=virtio,cache=writethrough`],
      memoryMiB: 768,
      timeoutMs: GUEST_TIMEOUT_MS,
      onConsole: (t) => {
        usbConsole += t.replace(/\r/g, '');
        const busid = /^K-BUSID (\S+)/m.exec(usbConsole)?.[1];
        if (busid !== undefined && /^K-READY$/m.test(usbConsole)) onReady(busid);
      },
    });
    // The app VM starts once the USB VM serves (and the refused import is done): the order is
    // deterministic, and its attach needs the bus ID the USB VM found.
    const busid = await Promise.race([ready, usbVm.then(() => null)]);
    let app: GuestResult | null = null;
    if (busid !== null) {
      app = await runHostNode({
        args: ['--import', 'tsx', 'src/cli/main.ts', 'usbip', 'attach', 'vsock:3:3240', busid],
        after: APP_VM_AFTER,
        vhostUser: [{ kind: 'vsock', socket: path.join(dir, 'app-vm.sock') }],
        memoryMiB: 768,
        timeoutMs: GUEST_TIMEOUT_MS,
      });
    }
    // The USB VM stops by itself once it sees the device free again; if it does not within a
    // minute (something failed), tell it to stop instead of waiting for its watcher's deadline.
    let timer: NodeJS.Timeout | undefined;
    const stopped = await Promise.race([usbVm.then(() => true), new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(false), 60_000)))]);
    clearTimeout(timer);
    if (!stopped) await dial(`hvsock:${path.join(dir, 'usb-vm.vsock')}:7000`, { timeoutMs: 10_000 }).then((s) => void s.destroy(), () => undefined);
    const usb = await usbVm;
    const usbTail = `--- USB VM ---\n${guestTail(usb, 100)}`;
    assert.ok(app !== null && busid !== null, `the USB VM never got ready\n${usbTail}`);
    const tail = `--- app VM ---\n${guestTail(app, 60)}\n${usbTail}`;

    // The USB VM's device: a high-speed gadget on dummy_hcd, first with the usb driver.
    const [gadgetBusid, driverBefore] = marker(usb, 'K-BUSID');
    assert.equal(gadgetBusid, busid);
    assert.equal(driverBefore, 'usb', tail);
    // prism bound it to usbip-host at start; the refused import left it available (status 1).
    assert.deepEqual(marker(usb, 'K-SERVER-UP'), ['1', 'usbip-host'], tail);
    const [refusedRc, statusAfterRefusal] = marker(usb, 'K-REFUSED');
    assert.notEqual(refusedRc, '0', `an import from tcp:127.0.0.1 is refused\n${tail}`);
    assert.equal(statusAfterRefusal, '1', 'the refused import leaves the device available');
    assert.match(logLine(usb.console, 'usbip import refused by policy'), /"peer":"tcp:127\.0\.0\.1:\d+"/, tail);

    // The app VM: attached through vhci-hcd on its AF_VSOCK socket, used the disk, detached.
    assert.equal(app.exitCode, 0, `prism usbip attach in the app VM\n${tail}`);
    assert.match(app.console, new RegExp(`attached ${busid.replace(/\./g, '\\.')} from vsock:3:3240 on vhci port 0`), tail);
    assert.deepEqual(marker(app, 'APP-MOUNT-RC'), ['0'], tail);
    assert.deepEqual(marker(app, 'APP-HELLO'), ['hello', 'from', 'the', 'USB', 'VM'], tail);
    assert.deepEqual(marker(app, 'APP-BIG'), [sha256(big)], 'a 512 KiB file read through vhci-hcd, usbip-host and the gadget');
    const [wrote] = marker(app, 'APP-WROTE');
    assert.deepEqual(marker(app, 'APP-UMOUNT-RC'), ['0'], tail);
    assert.match(app.console, /^APP-PORT .*Port 00: <Port in Use> at High Speed/m, tail);
    assert.deepEqual(marker(app, 'APP-DETACH-RC'), ['0'], tail);
    assert.ok(!appVsockLog.some((l) => /denied/.test(l)), appVsockLog.join('\n'));

    // The USB VM saw the kernel take the device and let it go; prism logged both, then gave it back.
    const statuses = [...usb.console.matchAll(/^K-STATUS (\S+)$/gm)].map((m) => m[1]);
    assert.deepEqual(statuses, ['2', '1'], `usbip_status went 1 → 2 → 1\n${tail}`);
    assert.deepEqual(marker(usb, 'K-WATCH-END'), ['seen=1', 'status=1'], tail);
    const imported = logLine(usb.console, 'usbip device imported');
    assert.match(imported, /"handedTo":"kernel \(usbip-host\)"/, tail);
    assert.match(imported, /"peer":"vsock:2:\d+"/, 'through the hybrid socket the app VM arrives as CID 2');
    assert.match(logLine(usb.console, 'usbip device released'), /"why":"the importer detached \(usbip_status is 1 again\)"/, tail);
    assert.ok(usb.console.indexOf('usbip import refused by policy') < usb.console.indexOf(imported), 'the refusal came first');
    assert.equal(usb.exitCode, 0, `prism usbip serve exits 0 on SIGTERM\n${tail}`);
    assert.deepEqual(marker(usb, 'K-AFTER'), ['usb', '[]'], `the device is back with the usb driver, out of match_busid\n${tail}`);
    assert.match(usb.console, /^K-DONE$/m, tail);
    assert.doesNotMatch(usb.console, /^K-FAIL/m, tail);

    // The host reads what the app VM wrote straight out of the USB VM's disk image.
    const out = path.join(dir, 'new.bin');
    execFileSync('debugfs', ['-R', `dump /new.bin ${out}`, image], { stdio: 'ignore' });
    assert.equal(sha256(fs.readFileSync(out)), wrote, 'the image holds what the app VM wrote through USB/IP');
  });
});
