// The storage-VM scenario of the vsock design, with real kernels end to end:
// - guest 1 (the storage VM, CID 3) gets an ext4 image as a virtio-blk disk and serves it with
//   prism's 9P server on vsock:any:564;
// - guest 2 (an app VM, CID 4) mounts it with `prism 9p mount vsock:3:564 /mnt` (the Linux 9p
//   client on trans=fd over an AF_VSOCK socket), reads the files the image was made with and writes
//   a new one;
// - each guest has its own prism vsock device; guest 2's allows 4:3:564 only and reaches guest 1
//   through guest 1's hybrid socket, so the VMs' backends share no memory. A connection to 3:565
//   is refused (RST) and logged.
// Afterwards the host reads the new file out of the image with debugfs and compares checksums.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { dial } from '../src/transport/index.js';
import { VsockServer } from '../src/vsock/server.js';
import { guestTail, makeExt4Image, requireLab, runHostNode, type GuestResult } from './helpers/lab.js';

const TIMEOUT_MS = 300_000;
const sha256 = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

function marker(r: GuestResult, name: string): string[] {
  const m = new RegExp(`^${name} (.*)$`, 'm').exec(r.console);
  assert.ok(m?.[1] !== undefined, `no ${name} line\n${guestTail(r, 60)}`);
  return m[1].trim().split(/\s+/);
}

const APP_VM_WAIT = `i=0; until socat -u OPEN:/dev/null VSOCK-CONNECT:3:564 2>/dev/null; do i=$((i+1)); [ $i -gt 120 ] && break; sleep 1; done; echo "APP-WAITED $i"`;

const APP_VM_WORK = `m=/host/mnt
echo "APP-HELLO $(cat $m/hello.txt)"
echo "APP-BIG $(sha256sum $m/big.bin | cut -d' ' -f1) $(wc -c < $m/big.bin)"
dd if=/dev/urandom of=/tmp/new.bin bs=64k count=32 2>/dev/null
cp /tmp/new.bin $m/new.bin && sync
echo "APP-WROTE $(sha256sum /tmp/new.bin | cut -d' ' -f1) $(sha256sum $m/new.bin | cut -d' ' -f1)"
mkdir $m/dir && echo inside > $m/dir/f && ls $m | tr '\\n' ' ' | sed 's/^/APP-LS /'; echo
umount $m; echo "APP-UMOUNT $?"
echo x | socat -u - VSOCK-CONNECT:3:565 2>/tmp/denied; echo "APP-DENIED-RC $?"
echo "APP-DENIED-ERR $(tail -1 /tmp/denied)"`;

describe('storage VM: an ext4 disk served as 9P over vsock to another VM through prism', () => {
  let dir: string;
  let image: string;
  let storage: VsockServer;
  let app: VsockServer;
  const appLog: string[] = [];
  const big = randomBytes(1 << 20);

  before(async () => {
    requireLab();
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'prism-storage-'));
    image = makeExt4Image(dir, 'disk.img', '64M', { 'hello.txt': 'hello from the storage VM\n', 'big.bin': big });
    storage = new VsockServer({ socket: path.join(dir, 'storage.sock'), cid: 3, uds: path.join(dir, 'storage.vsock') });
    app = new VsockServer({
      socket: path.join(dir, 'app.sock'),
      cid: 4,
      uds: path.join(dir, 'app.vsock'),
      peers: { 3: path.join(dir, 'storage.vsock') },
      allow: [{ from: 4, to: 3, port: 564 }],
      log: (level, msg) => appLog.push(`${level} ${msg}`),
    });
    await storage.start();
    await app.start();
  });

  after(async () => {
    await app?.close();
    await storage?.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('the app VM mounts the storage VM\'s disk, reads and writes files; the image holds what it wrote; other ports are refused', async () => {
    let stopStorage: Promise<void> = Promise.resolve();
    const appVm = runHostNode({
      args: ['--import', 'tsx', 'src/cli/main.ts', '9p', 'mount', 'vsock:3:564', '/mnt', '-o', 'cache=none'],
      before: APP_VM_WAIT,
      after: APP_VM_WORK,
      vhostUser: [{ kind: 'vsock', socket: path.join(dir, 'app.sock') }],
      timeoutMs: TIMEOUT_MS,
    }).then((r) => {
      // The app VM is done: tell the storage VM to stop serving (its port 7000, through its hybrid socket).
      stopStorage = dial(`hvsock:${path.join(dir, 'storage.vsock')}:7000`, { timeoutMs: 30_000 }).then((s) => void s.destroy());
      return r;
    });
    const storageVm = runHostNode({
      args: ['--import', 'tsx', 'test/fixtures/vsock/storage-vm.mts'],
      before: 'mount -t ext4 /dev/vda /host/mnt || echo "STORAGE-NO-DISK"',
      after: 'umount /host/mnt; echo "STORAGE-UMOUNT $?"',
      vhostUser: [{ kind: 'vsock', socket: path.join(dir, 'storage.sock') }],
      extraArgs: ['-drive', `file=${image},format=raw,if=virtio,cache=writethrough`],
      timeoutMs: TIMEOUT_MS,
    });
    const a = await appVm;
    await stopStorage;
    const s = await storageVm;

    assert.equal(a.exitCode, 0, `prism 9p mount in the app VM\n${guestTail(a, 60)}`);
    assert.deepEqual(marker(a, 'APP-HELLO'), ['hello', 'from', 'the', 'storage', 'VM']);
    assert.deepEqual(marker(a, 'APP-BIG'), [sha256(big), String(big.length)], 'the 1 MiB file read over vsock is the one in the image');
    const [wrote, readBack] = marker(a, 'APP-WROTE');
    assert.equal(readBack, wrote, 'the new file reads back the same through the mount');
    assert.deepEqual(marker(a, 'APP-LS'), ['big.bin', 'dir', 'hello.txt', 'lost+found', 'new.bin']);
    assert.deepEqual(marker(a, 'APP-UMOUNT'), ['0']);
    assert.notEqual(marker(a, 'APP-DENIED-RC')[0], '0');
    assert.match(marker(a, 'APP-DENIED-ERR').join(' '), /Connection reset by peer/);
    assert.ok(appLog.some((l) => /guest 4 -> 3:565 denied by policy/.test(l)), appLog.join('\n'));

    assert.equal(s.exitCode, 0, `the storage VM's server\n${guestTail(s, 60)}`);
    assert.deepEqual(marker(s, 'STORAGE-UMOUNT'), ['0']);
    // The host reads the file the app VM wrote straight out of the ext4 image.
    const out = path.join(dir, 'new.bin');
    execFileSync('debugfs', ['-R', `dump /new.bin ${out}`, image], { stdio: 'ignore' });
    assert.equal(sha256(fs.readFileSync(out)), wrote, 'the image holds what the app VM wrote');
    const inside = execFileSync('debugfs', ['-R', 'cat /dir/f', image], { stdio: ['ignore', 'pipe', 'ignore'] }).toString();
    assert.equal(inside, 'inside\n');
  });
});
