// USB/IP against the real peers: the Linux `usbip` tool and vhci-hcd in a lab guest import prism's
// emulated mass-storage device, over vsock. The host runs `prism usbip serve` (the CLI) on the
// hybrid socket UDS_3240 of the guest's prism vsock device; in the guest, socat turns the usbip
// tool's TCP connection to 127.0.0.1:3240 into a vsock connection to CID 2 port 3240 (the tool only
// speaks TCP; vhci takes whatever socket it is given). The guest lists, attaches, mounts the ext4
// image from the new SCSI disk, reads a file, writes one, unmounts and detaches; the host then
// reads the written file out of the image with debugfs and compares checksums.
import assert from 'node:assert/strict';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { VsockServer } from '../src/vsock/server.js';
import { DETACH_PORT_IN_USE, usbDiskWorkload } from './helpers/usbip.js';
import { REPO_ROOT, guestTail, makeExt4Image, requireLab, runGuest, runHostNode, type GuestResult } from './helpers/lab.js';

const sha256 = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

const SCRIPT = `
socat TCP-LISTEN:3240,bind=127.0.0.1,reuseaddr,fork VSOCK-CONNECT:2:3240 &
i=0; until usbip list -r 127.0.0.1 > /tmp/list 2>&1; do i=$((i+1)); [ $i -gt 20 ] && break; sleep 0.5; done
sed 's/^/USB-LIST /' /tmp/list
usbip attach -r 127.0.0.1 -b 1-3; echo "USB-ATTACH-RC $?"
${usbDiskWorkload('USB')}`;

function marker(r: GuestResult, name: string): string[] {
  const m = new RegExp(`^${name} (.*)$`, 'm').exec(r.console);
  assert.ok(m?.[1] !== undefined, `no ${name} line\n${guestTail(r, 80)}`);
  return m[1].trim().split(/\s+/);
}

describe('prism usbip serve under the Linux usbip tool and vhci-hcd (lab guest, over vsock)', () => {
  let dir: string;
  let image: string;
  let device: VsockServer;
  let server: ChildProcess;
  let serverLog = '';
  const big = randomBytes(512 * 1024);

  before(async () => {
    requireLab();
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'prism-usbip-'));
    image = makeExt4Image(dir, 'disk.img', '32M', { 'hello.txt': 'hello over usbip\n', 'big.bin': big });
    const uds = path.join(dir, 'vsock.sock');
    device = new VsockServer({ socket: path.join(dir, 'vu.sock'), cid: 3, uds });
    await device.start();
    server = spawn(
      process.execPath,
      [
        '--import', 'tsx', 'src/cli/main.ts', 'usbip', 'serve', '--listen', `unix:${uds}_3240`,
        '--device', `emulated:storage:${image}`, '--device', 'emulated:keyboard:Hi\\n', '--device', `emulated:storage:${image}:hs`,
        '--allow', 'busid=1-1', '--allow', 'busid=1-2', '--allow', 'busid=1-3',
      ],
      { cwd: REPO_ROOT, stdio: ['ignore', 'ignore', 'pipe'] },
    );
    server.stderr?.setEncoding('utf8');
    server.stderr?.on('data', (t: string) => (serverLog += t));
    const deadline = Date.now() + 30_000;
    while (!serverLog.includes('usbip server ready')) {
      if (server.exitCode !== null || Date.now() > deadline) assert.fail(`prism usbip serve did not start:\n${serverLog}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  });

  after(async () => {
    if (server && server.exitCode === null) {
      server.kill('SIGTERM');
      await once(server, 'exit');
    }
    await device?.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('lists, attaches, mounts the emulated disk, reads and writes a file, detaches; the image holds the write', async () => {
    const g = await runGuest({ script: SCRIPT, vhostUser: [{ kind: 'vsock', socket: path.join(dir, 'vu.sock') }], timeoutMs: 240_000 });
    const tail = `${guestTail(g, 80)}\n--- server log ---\n${serverLog.split('\n').slice(-30).join('\n')}`;
    assert.match(g.console, /^USB-LIST .*1-3/m, tail);
    assert.deepEqual(marker(g, 'USB-ATTACH-RC'), ['0'], tail);
    const [sectors, vendor, maxKb] = marker(g, 'USB-DISK');
    assert.equal(sectors, String((32 << 20) / 512), `the disk has the image's 512-byte sectors\n${tail}`);
    assert.equal(vendor, 'prism', tail);
    assert.equal(maxKb, '120', `usb-storage's high-speed transfer limit (240 sectors) for the :hs device\n${tail}`);
    assert.match(g.console, /^USB-PORT .*High Speed/m, `1-3 sits on a high-speed vhci port\n${tail}`);
    assert.deepEqual(marker(g, 'USB-MOUNT-RC'), ['0'], tail);
    assert.deepEqual(marker(g, 'USB-HELLO'), ['hello', 'over', 'usbip']);
    assert.deepEqual(marker(g, 'USB-BIG'), [sha256(big)], 'a 512 KiB file read through vhci, usb-storage and prism\'s BOT/SCSI');
    const [wrote] = marker(g, 'USB-WROTE');
    assert.deepEqual(marker(g, 'USB-UMOUNT-RC'), ['0'], tail);
    assert.deepEqual(marker(g, 'USB-DETACH-RC'), ['0'], tail);
    // The host reads what the guest wrote straight out of the image.
    const out = path.join(dir, 'new.bin');
    execFileSync('debugfs', ['-R', `dump /new.bin ${out}`, image], { stdio: 'ignore' });
    assert.equal(sha256(fs.readFileSync(out)), wrote, 'the image holds what the guest wrote through USB/IP');
  });

  it('prism usbip attach in the guest hands its AF_VSOCK socket to vhci-hcd; the disk works and detaches', async () => {
    const g = await runHostNode({
      args: ['--import', 'tsx', 'src/cli/main.ts', 'usbip', 'attach', 'vsock:2:3240', '1-1'],
      after: `i=0; until [ -b /dev/sda ]; do i=$((i+1)); [ $i -gt 300 ] && break; sleep 0.1; done
echo "USB-MAXKB $(cat /sys/block/sda/queue/max_hw_sectors_kb 2>/dev/null)"
mount -t ext4 /dev/sda /mnt; echo "USB-MOUNT-RC $?"
echo "USB-HELLO $(cat /mnt/hello.txt)"
umount /mnt
usbip port | sed 's/^/USB-PORT /'
${DETACH_PORT_IN_USE}; echo "USB-DETACH-RC $?"`,
      vhostUser: [{ kind: 'vsock', socket: path.join(dir, 'vu.sock') }],
      timeoutMs: 240_000,
    });
    const tail = `${guestTail(g, 80)}\n--- server log ---\n${serverLog.split('\n').slice(-30).join('\n')}`;
    assert.equal(g.exitCode, 0, `prism usbip attach\n${tail}`);
    const port = /attached 1-1 from vsock:2:3240 on vhci port (\d+)/.exec(g.console)?.[1];
    assert.ok(port !== undefined, tail);
    // The default emulated storage is SuperSpeed: vhci's SuperSpeed hub, and 1 MiB per SCSI command.
    assert.match(g.console, new RegExp(`^USB-PORT .*Port ${port.padStart(2, '0')}: <Port in Use> at Super Speed`, 'm'), tail);
    assert.deepEqual(marker(g, 'USB-MAXKB'), ['1024'], tail);
    assert.deepEqual(marker(g, 'USB-MOUNT-RC'), ['0'], tail);
    assert.deepEqual(marker(g, 'USB-HELLO'), ['hello', 'over', 'usbip']);
    assert.deepEqual(marker(g, 'USB-DETACH-RC'), ['0'], tail);
  });

  it('the emulated keyboard enumerates as an input device in the guest and types "Hi\\n" into it', async () => {
    const g = await runGuest({
      script: `
socat TCP-LISTEN:3240,bind=127.0.0.1,reuseaddr,fork VSOCK-CONNECT:2:3240 &
i=0; until usbip list -r 127.0.0.1 >/dev/null 2>&1; do i=$((i+1)); [ $i -gt 20 ] && break; sleep 0.5; done
usbip attach -r 127.0.0.1 -b 1-2; echo "KBD-ATTACH-RC $?"
ev=; i=0
while [ -z "$ev" ] && [ $i -lt 100 ]; do
  for e in /sys/class/input/event*; do [ -e "$e/device/name" ] && grep -q 'prism emulated keyboard' "$e/device/name" && ev=\${e##*/}; done
  i=$((i+1)); sleep 0.1
done
echo "KBD-DEV $ev $(cat /sys/class/input/$ev/device/name 2>/dev/null)"
cat /dev/input/$ev > /tmp/ev & p=$!
sleep 4; kill $p
od -An -tu2 -w24 -v /tmp/ev | awk '$9 == 1 { print "KBD-EV", $10, $11 }'
${DETACH_PORT_IN_USE}; echo "KBD-DETACH-RC $?"
`,
      vhostUser: [{ kind: 'vsock', socket: path.join(dir, 'vu.sock') }],
      timeoutMs: 240_000,
    });
    const tail = `${guestTail(g, 80)}\n--- server log ---\n${serverLog.split('\n').slice(-30).join('\n')}`;
    assert.deepEqual(marker(g, 'KBD-ATTACH-RC'), ['0'], tail);
    assert.match(marker(g, 'KBD-DEV').join(' '), /^event\d+ prism prism emulated keyboard$/, tail);
    // struct input_event on x86_64 read as u16s: [8] type, [9] code, [10] low half of value. EV_KEY only.
    const keys = [...g.console.matchAll(/^KBD-EV (\d+) (\d+)$/gm)].map((m) => [Number(m[1]), Number(m[2])] as const);
    const presses = keys.filter(([, v]) => v === 1).map(([code]) => code);
    const KEY = { LEFTSHIFT: 42, H: 35, I: 23, ENTER: 28 };
    assert.deepEqual(presses.filter((c) => c !== KEY.LEFTSHIFT), [KEY.H, KEY.I, KEY.ENTER], `key presses ${JSON.stringify(keys)}\n${tail}`);
    assert.ok(presses.indexOf(KEY.LEFTSHIFT) >= 0 && presses.indexOf(KEY.LEFTSHIFT) < presses.indexOf(KEY.H), 'shift is held for the capital H');
    for (const code of [KEY.H, KEY.I, KEY.ENTER, KEY.LEFTSHIFT]) assert.ok(keys.some(([c, v]) => c === code && v === 0), `key ${code} is released`);
    assert.deepEqual(marker(g, 'KBD-DETACH-RC'), ['0'], tail);
  });
});

