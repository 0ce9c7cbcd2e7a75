// USB/IP's two failure paths against the real peer, Linux 6.1's vhci-hcd and usb-storage in a lab
// guest, over vsock through prism's vsock device:
// - unlink: a READ whose data stage the device holds back outlives the guest's SCSI timeout;
//   usb-storage aborts it, vhci-hcd sends CMD_UNLINK for the pending URB, prism aborts the URB and
//   answers RET_UNLINK; usb-storage's Bulk-Only reset recovery follows and the retried READ returns
//   the image's bytes;
// - a client that disappears mid-transfer: the guest powers off while a READ's data stage is
//   pending; prism aborts the URB, releases the device, and the next guest imports it and reads.
// The server runs in this process so the test can hold one chosen URB: a wrapper around prism's
// emulated storage watches the CBWs and holds the data stage of READ(10) at a given LBA.
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { listen, type Listener } from '../src/transport/index.js';
import { UrbErrno, type Urb, type UrbResult, type UsbDevice } from '../src/usbip/device.js';
import { CBW_SIZE, decodeCbw } from '../src/usbip/emulated/bot.js';
import { createEmulated } from '../src/usbip/emulated/index.js';
import { UsbipPolicy } from '../src/usbip/policy.js';
import { UsbipServer } from '../src/usbip/server.js';
import { VsockServer } from '../src/vsock/server.js';
import { DETACH_PORT_IN_USE } from './helpers/usbip.js';
import { guestTail, requireLab, runGuest, type GuestResult } from './helpers/lab.js';

const sha256 = (b: Buffer): string => createHash('sha256').update(b).digest('hex');
const READ_10 = 0x28;
const BLOCK = 4096;
/** 4 KiB blocks the two scenarios read (512-byte LBAs 4096 and 8192: not touched by the partition scan). */
const UNLINK_BLOCK = 512;
const VANISH_BLOCK = 1024;

interface Held {
  lba: number;
  /** Why the server aborted the held URB (the signal's reason), once it has. */
  reason: Promise<unknown>;
}

/** Prism's emulated storage, except that the data stage of READ(10) at an armed LBA is held until the server aborts it. */
class HoldingStorage implements UsbDevice {
  readonly held: Held[] = [];
  readonly info: UsbDevice['info'];
  private armed = new Set<number>();
  private holdNext: number | null = null;

  constructor(private readonly inner: UsbDevice) {
    this.info = inner.info;
  }

  arm(lba: number): void {
    this.armed.add(lba);
  }

  submit(urb: Urb, signal: AbortSignal): Promise<UrbResult> {
    if (urb.endpoint !== 0 && urb.direction === 'out' && urb.data.length === CBW_SIZE) this.watch(urb.data);
    if (this.holdNext !== null && urb.endpoint !== 0 && urb.direction === 'in') {
      const lba = this.holdNext;
      this.holdNext = null;
      let answer!: (r: UrbResult) => void;
      const result = new Promise<UrbResult>((resolve) => (answer = resolve));
      const reason = new Promise<unknown>((resolve) => {
        signal.addEventListener('abort', () => {
          resolve(signal.reason);
          answer({ status: -UrbErrno.ECONNRESET, data: Buffer.alloc(0) });
        }, { once: true });
      });
      this.held.push({ lba, reason });
      return result;
    }
    return this.inner.submit(urb, signal);
  }

  attached(): void {
    this.inner.attached?.();
  }

  detached(): void {
    this.inner.detached?.();
  }

  private watch(data: Buffer): void {
    let cb: Buffer;
    try {
      cb = decodeCbw(data).cb;
    } catch {
      return; // the inner device answers a bad CBW
    }
    if (cb[0] !== READ_10 || cb.length < 10) return;
    const lba = cb.readUInt32BE(2);
    if (this.armed.delete(lba)) this.holdNext = lba;
  }
}

function marker(r: GuestResult, name: string): string[] {
  const m = new RegExp(`^${name} (.*)$`, 'm').exec(r.console);
  assert.ok(m?.[1] !== undefined, `no ${name} line\n${guestTail(r, 80)}`);
  return m[1].trim().split(/\s+/);
}

/** Bridges the usbip tool's TCP to vsock, attaches 1-1 and waits for its disk. */
const ATTACH = `
socat -b 262144 TCP-LISTEN:3240,bind=127.0.0.1,reuseaddr,fork,nodelay VSOCK-CONNECT:2:3240 &
i=0; until usbip list -r 127.0.0.1 >/dev/null 2>&1; do i=$((i+1)); [ $i -gt 40 ] && break; sleep 0.5; done
usbip attach -r 127.0.0.1 -b 1-1; echo "U-ATTACH-RC $?"
i=0; until [ -b /dev/sda ] && [ "$(cat /sys/block/sda/size)" != 0 ]; do i=$((i+1)); [ $i -gt 300 ] && break; sleep 0.1; done
echo "U-DISK $(cat /sys/block/sda/size 2>/dev/null)"
`;

describe('USB/IP unlink and a vanishing client, against vhci-hcd and usb-storage in a lab guest (over vsock)', () => {
  let dir: string;
  let image: string;
  let vsock: VsockServer;
  let listener: Listener;
  let server: UsbipServer;
  let device: HoldingStorage;
  const logs: { level: string; msg: string; fields: Record<string, unknown> }[] = [];
  const vhostUser = (): { kind: 'vsock'; socket: string }[] => [{ kind: 'vsock', socket: path.join(dir, 'vu.sock') }];
  const logTail = (): string => logs.slice(-30).map((l) => `${l.level} ${l.msg} ${JSON.stringify(l.fields)}`).join('\n');

  before(async () => {
    requireLab();
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'prism-usbip-unlink-'));
    image = path.join(dir, 'disk.img');
    fs.writeFileSync(image, randomBytes(16 << 20));
    const uds = path.join(dir, 'vsock.sock');
    vsock = new VsockServer({ socket: path.join(dir, 'vu.sock'), cid: 3, uds });
    await vsock.start();
    device = new HoldingStorage(await createEmulated(`emulated:storage:${image}`, { busid: '1-1', busnum: 1, devnum: 2 }));
    server = new UsbipServer([device], {
      policy: new UsbipPolicy([{ busid: '1-1' }]),
      log: (level, msg, fields) => logs.push({ level, msg, fields: fields ?? {} }),
    });
    listener = await listen(`unix:${uds}_3240`);
    server.serve(listener);
  });

  after(async () => {
    await server?.close();
    await listener?.close();
    await vsock?.close();
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  const blockOfImage = (n: number): string => {
    const fd = fs.openSync(image, 'r');
    try {
      const b = Buffer.alloc(BLOCK);
      fs.readSync(fd, b, 0, BLOCK, n * BLOCK);
      return sha256(b);
    } finally {
      fs.closeSync(fd);
    }
  };

  it('a guest killed while a READ is pending: prism aborts the URB, releases the device and keeps serving', async () => {
    device.arm(VANISH_BLOCK * (BLOCK / 512));
    // The VM dies the way a crashed or destroyed VM does: QEMU gets SIGKILL once the READ is pending.
    // (A clean `poweroff -f` is no test of this: the kernel's shutdown waits for the SCSI timeout
    // and unlinks the URB itself.)
    let seen = '';
    const kill = new AbortController();
    const run = runGuest({
      script: `${ATTACH}
dd if=/dev/sda of=/dev/null bs=${BLOCK} skip=${VANISH_BLOCK} count=1 iflag=direct 2>/dev/null &
sleep 2
echo "U-VANISH $(cut -d' ' -f1 /proc/uptime)"
sleep 60
`,
      vhostUser: vhostUser(),
      timeoutMs: 240_000,
      signal: kill.signal,
      onConsole: (text) => {
        seen += text;
        if (/U-VANISH/.test(seen)) kill.abort(new Error('the test kills the VM'));
      },
    });
    await assert.rejects(run, /guest run aborted/, 'QEMU was killed mid-transfer');
    const tail = `--- console ---\n${seen.replace(/\r\n/g, '\n').split('\n').slice(-30).join('\n')}\n--- server log ---\n${logTail()}`;
    assert.match(seen, /U-ATTACH-RC 0/, tail);
    assert.match(seen, new RegExp(`U-DISK ${(16 << 20) / 512}`), tail);
    const held = device.held.find((h) => h.lba === VANISH_BLOCK * (BLOCK / 512));
    assert.ok(held, `the READ at block ${VANISH_BLOCK} reached the device and was held\n${tail}`);
    const reason = await Promise.race([held.reason, new Promise((r) => setTimeout(() => r('still pending after 20 s'), 20_000))]);
    assert.ok(reason instanceof Error && !/CMD_UNLINK/.test(reason.message), `aborted because the session ended, not by an unlink: ${String(reason)}\n${tail}`);
    const deadline = Date.now() + 20_000;
    while (server.status().devices[0]?.importedBy !== null && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
    assert.equal(server.status().devices[0]?.importedBy, null, `the device is free again\n${tail}`);
    const released = logs.find((l) => l.msg === 'usbip device released');
    assert.ok(released, tail);
    assert.equal(released.fields['aborted'], 1, `the release counts the pending URB it aborted: ${JSON.stringify(released.fields)}`);
  });

  it('usb-storage times out a held READ: vhci-hcd unlinks it, prism answers RET_UNLINK, and the retried READ returns the image\'s bytes', async () => {
    const lba = UNLINK_BLOCK * (BLOCK / 512);
    device.arm(lba);
    const before = device.held.length;
    const g = await runGuest({
      script: `${ATTACH}
echo 3 > /sys/block/sda/device/timeout
t0=$(cut -d' ' -f1 /proc/uptime)
dd if=/dev/sda of=/tmp/blk bs=${BLOCK} skip=${UNLINK_BLOCK} count=1 iflag=direct 2>/dev/null; rc=$?
echo "U-READ-RC $rc $t0 $(cut -d' ' -f1 /proc/uptime)"
echo "U-BLK $(sha256sum /tmp/blk | cut -d' ' -f1)"
dd if=/dev/sda of=/tmp/blk2 bs=${BLOCK} skip=${VANISH_BLOCK} count=1 iflag=direct 2>/dev/null
echo "U-BLK2 $(sha256sum /tmp/blk2 | cut -d' ' -f1)"
dmesg | grep -iE 'usb|sd |scsi' | tail -n 12 | sed 's/^/U-DMESG /'
${DETACH_PORT_IN_USE}; echo "U-DETACH-RC $?"
`,
      vhostUser: vhostUser(),
      timeoutMs: 300_000,
    });
    const tail = `${guestTail(g, 60)}\n--- server log ---\n${logTail()}`;
    assert.deepEqual(marker(g, 'U-ATTACH-RC'), ['0'], `a new guest imports the device the vanished one held\n${tail}`);
    assert.equal(device.held.length, before + 1, `the READ at LBA ${lba} was held\n${tail}`);
    const held = device.held[before];
    assert.ok(held);
    const reason = await Promise.race([held.reason, new Promise((r) => setTimeout(() => r('never aborted'), 1000))]);
    assert.ok(reason instanceof Error && /CMD_UNLINK/.test(reason.message), `vhci-hcd unlinked the held URB: ${String(reason)}\n${tail}`);
    const [rc, t0, t1] = marker(g, 'U-READ-RC');
    assert.equal(rc, '0', `the READ succeeds after reset recovery\n${tail}`);
    assert.ok(Number(t1) - Number(t0) >= 2.5, `it took the SCSI timeout (3 s): ${t0} → ${t1}`);
    assert.deepEqual(marker(g, 'U-BLK'), [blockOfImage(UNLINK_BLOCK)], `the retried READ returns the image's block ${UNLINK_BLOCK}\n${tail}`);
    assert.deepEqual(marker(g, 'U-BLK2'), [blockOfImage(VANISH_BLOCK)], 'the block whose READ the vanished guest left pending reads back intact');
    assert.deepEqual(marker(g, 'U-DETACH-RC'), ['0'], tail);
  });
});
