// Smoke tests of the guest lab: the cached kernel boots under QEMU/TCG, runs a script, reports its
// exit code, and the guest-side pieces the integration tests rely on (virtio-serial ports, 9p
// modules, vsock with socat) work. Each boot takes a few seconds; they run one after another.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { createServer, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { assertGuestExit, guestTail, LAB_SETUP_HINT, labPaths, newcArchive, requireLab, runGuest } from './helpers/lab.js';

async function withTempDir<T>(fn: (dir: string) => Promise<T>): Promise<T> {
  const dir = await mkdtemp(join(tmpdir(), 'prism-lab-test-'));
  try {
    return await fn(dir);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

describe('guest lab', () => {
  it('labPaths throws the set-up instructions when the cache is empty', async () => {
    await withTempDir((emptyCache) => {
      // Arrange: an empty cache directory
      // Act + Assert
      assert.throws(
        () => labPaths(emptyCache),
        (err: Error) => err.name === 'LabNotSetUpError' && err.message.startsWith(LAB_SETUP_HINT),
      );
      return Promise.resolve();
    });
  });

  it('writes newc archives that GNU cpio extracts with the same contents and modes', async () => {
    await withTempDir(async (dir) => {
      // Arrange
      const archive = newcArchive([
        { path: '/test.sh', data: '#!/bin/sh\nexit 0\n', mode: 0o755 },
        { path: '/etc/prism/odd.bin', data: new Uint8Array([1, 2, 3]) },
      ]);
      // Act
      execFileSync('cpio', ['-id', '--quiet'], { cwd: dir, input: archive });
      // Assert
      assert.equal(await readFile(join(dir, 'test.sh'), 'utf8'), '#!/bin/sh\nexit 0\n');
      assert.equal((await stat(join(dir, 'test.sh'))).mode & 0o777, 0o755);
      assert.deepEqual([...(await readFile(join(dir, 'etc/prism/odd.bin')))], [1, 2, 3]);
      assert.equal((await stat(join(dir, 'etc/prism/odd.bin'))).mode & 0o777, 0o644);
    });
  });

  it('boots the cached kernel, runs the script and reports exit code 0 with its output', async () => {
    // Arrange
    const lab = requireLab();
    // Act
    const result = await runGuest({ script: 'echo "smoke: hello from $(uname -r)"\nexit 0' });
    // Assert
    assertGuestExit(result, 0);
    assert.equal(result.timedOut, false);
    assert.match(result.console, new RegExp(`^smoke: hello from ${lab.kernelVersion.replace(/\./g, '\\.')}$`, 'm'), guestTail(result));
    assert.equal(result.qemuExitCode, 0, guestTail(result));
  });

  it('reports exit code 3 when the script exits 3', async () => {
    // Arrange
    requireLab();
    // Act
    const result = await runGuest({ script: 'echo about to fail\nexit 3' });
    // Assert
    assertGuestExit(result, 3);
    assert.match(result.console, /^about to fail$/m);
  });

  it('carries a line each way over a named virtio-serial port backed by a host unix socket', async () => {
    requireLab();
    await withTempDir(async (dir) => {
      // Arrange: the host listens; QEMU connects when it starts
      const path = join(dir, 'port.sock');
      let received = '';
      const connections: Socket[] = [];
      const server = createServer((sock) => {
        connections.push(sock);
        sock.setEncoding('utf8');
        sock.on('data', (text: string) => {
          const hadLine = received.includes('\n');
          received += text;
          if (!hadLine && received.includes('\n')) sock.write('hello from host\n');
        });
        sock.on('error', () => {});
      });
      await new Promise<void>((resolve) => server.listen(path, resolve));
      const script = [
        'dev=$(vport prism.smoke) || exit 10',
        'echo "port is $dev"',
        'exec 3<>"$dev"',
        'echo "hello from guest" >&3',
        'read -r reply <&3 || exit 11',
        'echo "guest got: $reply"',
        '[ "$reply" = "hello from host" ] || exit 12',
      ].join('\n');
      try {
        // Act
        const result = await runGuest({ script, serialPorts: [{ name: 'prism.smoke', path }], timeoutMs: 60_000 });
        // Assert
        assertGuestExit(result, 0);
        assert.equal(received.split('\n')[0], 'hello from guest');
        assert.match(result.console, /^port is \/dev\/vport\d+p\d+$/m);
        assert.match(result.console, /^guest got: hello from host$/m);
      } finally {
        for (const c of connections) c.destroy();
        await new Promise((resolve) => server.close(resolve));
      }
    });
  });

  it('loads the 9p, vhci and vsock modules, runs usbip, and carries data over vsock loopback with socat', async () => {
    // Arrange
    requireLab();
    const script = String.raw`
grep -qw 9p /proc/filesystems || { echo "no 9p in /proc/filesystems"; exit 20; }
modprobe 9pnet_fd || exit 21
for m in 9pnet 9pnet_fd 9pnet_virtio 9p virtio_console vhci_hcd usbip_core virtiofs vsock_loopback; do
  grep -q "^$m " /proc/modules || { echo "module $m not loaded"; exit 22; }
done
usbip port | grep -q 'Imported USB devices' || { echo "usbip port failed"; exit 25; }
socat -V | grep -q 'WITH_VSOCK 1' || { echo "socat lacks vsock"; exit 23; }
socat -u VSOCK-LISTEN:5000 CREATE:/tmp/vsock.out &
listener=$!
n=0
until echo "ping over vsock" | socat -u STDIN VSOCK-CONNECT:1:5000 2>/dev/null; do
  n=$((n + 1)); [ "$n" -lt 50 ] || { echo "cannot connect to vsock 1:5000"; exit 24; }
  usleep 100000
done
wait "$listener"
echo "vsock got: $(cat /tmp/vsock.out)"
`;
    // Act
    const result = await runGuest({ script });
    // Assert
    assertGuestExit(result, 0);
    assert.match(result.console, /^vsock got: ping over vsock$/m);
  });
});
