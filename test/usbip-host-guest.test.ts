// `prism usbip serve --device host:1d6b:0104` against a real USB device: one lab guest builds a
// configfs mass-storage gadget on dummy_hcd (an ext4 image made here with mkfs.ext4 -d), then runs
// this checkout's node (runHostNode) with test/fixtures/usbip-host-guest.mts, which serves the
// gadget through libusb, imports it into the same guest's vhci-hcd with `prism usbip attach`,
// mounts the disk that appears behind vhci-hcd, reads a file (sha256 checked here), writes one and
// reads it back after a remount, detaches (the gadget goes back to usb-storage), imports again and
// unplugs the gadget under the importer: the URBs fail, the server logs it and stays up, and a
// new device list still answers.
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { guestTail, makeExt4Image, requireLab, runHostNode, type GuestResult } from './helpers/lab.js';

const sha256 = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

/** Runs in the guest before node: the gadget 1d6b:0104 on dummy_hcd, its LUN the image at /gadget.img. */
const GADGET = `
grep -q ' /sys/kernel/config ' /proc/mounts || mount -t configfs none /sys/kernel/config || echo "HG-SETUP configfs failed"
g=/sys/kernel/config/usb_gadget/g
mkdir -p $g $g/strings/0x409 $g/configs/c.1 $g/functions/mass_storage.0
echo 0x1d6b > $g/idVendor; echo 0x0104 > $g/idProduct
echo prism > $g/strings/0x409/manufacturer; echo host-guest > $g/strings/0x409/product; echo 0001 > $g/strings/0x409/serialnumber
echo /gadget.img > $g/functions/mass_storage.0/lun.0/file || echo "HG-SETUP lun failed"
ln -s $g/functions/mass_storage.0 $g/configs/c.1/
ls /sys/class/udc | head -n1 > $g/UDC || echo "HG-SETUP UDC failed"
# The chroot sees configfs too (the fixture unplugs the gadget through it).
mount -t configfs none /host/sys/kernel/config || echo "HG-SETUP configfs in the chroot failed"
i=0; until ls /sys/block | grep -q '^sd'; do i=$((i+1)); [ $i -gt 200 ] && break; sleep 0.1; done
for d in /sys/bus/usb/devices/*-*; do case \${d##*/} in *:*) continue;; esac; echo "HG-GADGET \${d##*/} $(cat $d/idVendor):$(cat $d/idProduct) speed $(cat $d/speed)"; done
`;

function marker(r: GuestResult, name: string): string {
  const m = new RegExp(`^HG-${name} (.*)$`, 'm').exec(r.console);
  assert.ok(m?.[1] !== undefined, `no HG-${name} line\n${guestTail(r, 120)}`);
  return m[1].trim();
}

describe('prism usbip serve --device host:1d6b:0104: a configfs gadget on dummy_hcd through libusb, imported into vhci-hcd (lab guest)', () => {
  let dir: string;
  let image: Buffer;
  const big = randomBytes(256 * 1024);
  let g: GuestResult;

  before(async () => {
    requireLab();
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'prism-usbip-host-'));
    image = fs.readFileSync(makeExt4Image(dir, 'gadget.img', '8M', { 'hello.txt': 'hello from a real usb device\n', 'big.bin': big }));
    g = await runHostNode({
      args: ['--import', 'tsx', 'test/fixtures/usbip-host-guest.mts'],
      before: GADGET,
      files: [{ path: '/gadget.img', data: image }],
      timeoutMs: 900_000,
    });
  });

  after(() => {
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  it('libusb in the guest finds the gadget; the server opens it and starts', () => {
    assert.match(g.console, /^HG-GADGET \S+ 1d6b:0104 speed 480$/m, guestTail(g, 120));
    assert.doesNotMatch(g.console, /^HG-SETUP /m, guestTail(g, 120));
    assert.match(g.console, /^SRV .*"msg":"host usb device opened"/m, guestTail(g, 120));
    assert.ok(marker(g, 'READY'));
  });

  it('imports into vhci-hcd; the disk behind vhci reads, writes and reads back after a remount', () => {
    assert.match(marker(g, 'ATTACH'), /^attached 1-1 from tcp:127\.0\.0\.1:3240 on vhci port \d+$/);
    const [, size] = marker(g, 'VHCI-DISK').split(' ');
    assert.equal(Number(size), (8 << 20) / 512, 'the vhci disk has the image\'s sectors');
    const imported = JSON.parse(marker(g, 'DISKS-IMPORTED')) as { hcd: string }[];
    assert.ok(!imported.some((d) => d.hcd === 'dummy_hcd'), `usb-storage let go of the gadget while it is exported: ${JSON.stringify(imported)}`);
    assert.equal(marker(g, 'HELLO'), 'hello from a real usb device');
    assert.equal(marker(g, 'BIG'), sha256(big), 'a 256 KiB file read through vhci-hcd, prism and libusb');
    const [wrote, reread] = marker(g, 'REREAD').split(' ');
    assert.equal(reread, wrote, 'what was written reads back after a remount');
    assert.match(g.console, /^SRV .*"msg":"host usb interface taken from its kernel driver"/m);
    assert.match(g.console, /^SRV .*"msg":"usbip device imported"/m);
  });

  it('detach releases the device and gives it back to usb-storage', () => {
    assert.ok(marker(g, 'DETACHED'));
    assert.match(g.console, /^SRV .*"msg":"usbip device released"/m);
    assert.match(g.console, /^SRV .*"msg":"host usb interface given back to its kernel driver"/m);
    assert.match(marker(g, 'GIVEN-BACK'), /^sd[a-z]+$/, guestTail(g, 120));
  });

  it('unplugging the gadget under an importer ends the import (vhci frees the port); the server stops listing it and stays up', () => {
    assert.match(marker(g, 'REATTACHED'), /^\d+ sd[a-z]+$/);
    assert.ok(marker(g, 'UNPLUGGED'));
    assert.match(marker(g, 'READ-AFTER-UNPLUG'), /^failed/, guestTail(g, 120));
    assert.match(g.console, /^SRV .*"msg":"host usb device is gone/m, guestTail(g, 120));
    assert.match(g.console, /^SRV .*"why":"the device is gone: .*"msg":"usbip device released"/m, guestTail(g, 120));
    assert.equal(marker(g, 'PORT-FREED'), 'yes', `vhci-hcd saw the connection end and freed its port\n${guestTail(g, 120)}`);
    assert.equal(marker(g, 'LIST-AFTER-UNPLUG'), 'empty', 'a gone device is listed no more');
    assert.match(marker(g, 'IMPORT-AFTER-UNPLUG'), /^refused /, 'and cannot be imported');
    assert.equal(marker(g, 'SERVER-RUNNING'), 'yes');
    assert.equal(marker(g, 'SERVER-EXIT'), '0', 'the server stops on SIGTERM');
    assert.equal(g.exitCode, 0, guestTail(g, 120));
  });
});
