// Sockets Node lacks: AF_UNIX with SCM_RIGHTS, AF_VSOCK, inherited fds.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { once } from 'node:events';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import * as sys from '../src/sys/index.js';
import type { FdSocket } from '../src/sys/index.js';

const K = sys.constants;

function readExactly(s: FdSocket, n: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const parts: Buffer[] = [];
    let got = 0;
    const onData = (d: Buffer): void => {
      parts.push(d);
      got += d.length;
      if (got >= n) {
        s.off('data', onData);
        s.pause();
        resolve(Buffer.concat(parts));
      }
    };
    s.on('data', onData);
    s.once('error', reject);
  });
}

describe('AF_UNIX sockets with fd passing', () => {
  it('an fd survives a trip across a socketpair and reads the same file', async () => {
    const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'prism-scm-')), 'payload');
    fs.writeFileSync(file, 'carried by SCM_RIGHTS');
    const [a, b] = sys.unixSocketPair();
    const fd = fs.openSync(file, 'r');
    const received = once(b, 'fds') as Promise<[number[]]>;
    const bytes = readExactly(b, 3);
    a.writeWithFds(Buffer.from('msg'), [fd]);
    const [[got]] = await Promise.all([received, bytes]).then(([f, d]) => [f, d] as const);
    assert.equal(got.length, 1);
    const passed = got[0];
    assert.ok(passed !== undefined && passed !== fd, 'the receiver gets a new fd number');
    assert.equal(fs.readFileSync(passed, 'utf8'), 'carried by SCM_RIGHTS');
    assert.equal((await bytes).toString(), 'msg');
    fs.closeSync(fd);
    fs.closeSync(passed);
    a.destroy();
    b.destroy();
  });

  it('announces fds right before the chunk they came with, even when chunks were read ahead', async () => {
    const [a, b] = sys.unixSocketPair();
    b.pause(); // let several messages wait in the socket, then read them in one _read loop
    const devnull = fs.openSync('/dev/null', 'r');
    const messages = ['A', 'B', 'C', 'D', 'E'];
    for (const m of messages) {
      if (m === 'A') a.write(Buffer.from(m));
      else a.writeWithFds(Buffer.from(m), [devnull]);
    }
    await new Promise((r) => setTimeout(r, 50));
    const events: string[] = [];
    const got = new Promise<void>((resolve) => {
      let seen = '';
      b.on('fds', (fds: number[]) => {
        events.push(`fds:${fds.length}`);
        for (const f of fds) fs.closeSync(f);
      });
      b.on('data', (d: Buffer) => {
        events.push(`data:${d.toString()}`);
        seen += d.toString();
        if (seen.length === messages.length) resolve();
      });
    });
    b.resume();
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`not all messages arrived: ${events.join(' ')}`)), 5000);
    });
    await Promise.race([got, timeout]).finally(() => clearTimeout(timer));
    // The kernel ends a read at the segment carrying fds: A and B come in one chunk with B's fd.
    // Every 'fds' is immediately followed by the chunk whose last message brought them.
    events.forEach((e, i) => {
      if (e.startsWith('fds')) assert.match(events[i + 1] ?? '', /^data:.*[B-E]$/, events.join(' '));
    });
    assert.equal(events.filter((e) => e.startsWith('fds')).length, 4, events.join(' '));
    assert.equal(events.filter((e) => e.startsWith('data')).join(''), 'data:ABdata:Cdata:Ddata:E', events.join(' '));
    fs.closeSync(devnull);
    a.destroy();
    b.destroy();
  });

  it("an exception thrown in a 'data' handler reaches 'uncaughtException' instead of aborting the process", () => {
    const sysIndex = fileURLToPath(new URL('../src/sys/index.ts', import.meta.url));
    const script = `
      const sys = await import(${JSON.stringify(sysIndex)});
      process.on('uncaughtException', (e) => { console.log('caught ' + e.message); process.exit(0); });
      const [a, b] = sys.unixSocketPair();
      b.on('data', () => { throw new Error('boom'); });
      a.write(Buffer.from('x'));`;
    const r = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { encoding: 'utf8', timeout: 30_000 });
    assert.equal(r.signal, null, `the child died of ${r.signal}: ${r.stderr}`);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /caught boom/);
  });

  it('closes fds nobody asked for, so a peer cannot fill our fd table', async () => {
    const [a, b] = sys.unixSocketPair();
    const countFds = (): number => fs.readdirSync('/proc/self/fd').length;
    const before = countFds();
    const fd = fs.openSync('/dev/null', 'r');
    const bytes = readExactly(b, 100);
    for (let i = 0; i < 100; i++) a.writeWithFds(Buffer.from('x'), [fd]);
    assert.equal((await bytes).length, 100);
    fs.closeSync(fd);
    assert.equal(countFds(), before, 'no received fd was left open');
    a.destroy();
    b.destroy();
  });

  it('listens and connects on a path, moves 4 MiB both ways with back-pressure, and ends cleanly', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'prism-unix-'));
    const sock = path.join(dir, 's.sock');
    const listener = sys.listenUnix(sock);
    const accepted = once(listener, 'connection') as Promise<[FdSocket]>;
    const client = await sys.connectUnix(sock);
    const [server] = await accepted;
    assert.deepEqual(listener.address(), { family: 'unix', path: sock });
    assert.deepEqual(client.remoteAddress(), { family: 'unix', path: sock });
    // Echo server.
    server.pipe(server);
    const payload = Buffer.alloc(4 * 1024 * 1024);
    for (let i = 0; i < payload.length; i++) payload[i] = (i * 7) & 0xff;
    const echoed = readExactly(client, payload.length);
    client.end(payload);
    const back = await echoed;
    assert.equal(back.length, payload.length);
    assert.ok(back.equals(payload));
    client.resume();
    await once(client, 'end');
    client.destroy();
    listener.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('connecting to a path nobody listens on fails with ENOENT or ECONNREFUSED', async () => {
    await assert.rejects(sys.connectUnix(path.join(os.tmpdir(), 'prism-nobody-here.sock')), (e: unknown) => {
      assert.ok(e instanceof sys.SysError);
      assert.ok(['ENOENT', 'ECONNREFUSED'].includes(e.code));
      return true;
    });
  });

  it('refuses a socket path longer than sun_path with a message naming the path', () => {
    assert.throws(() => sys.listenUnix('/tmp/' + 'x'.repeat(200)), /unix socket path must be 1\.\.107 bytes/);
  });

  it('writeWithFds refuses empty data and non-fds', () => {
    const [a, b] = sys.unixSocketPair();
    assert.throws(() => a.writeWithFds(Buffer.alloc(0), [0]), TypeError);
    assert.throws(() => a.writeWithFds(Buffer.from('x'), [-1]), RangeError);
    a.destroy();
    b.destroy();
  });

  it('socketInfo describes inherited fds and adoptSocket wraps a connected one', async () => {
    const [a, b] = sys.unixSocketPair();
    assert.deepEqual(sys.socketInfo(a.fd), { domain: 'unix', type: 'stream', listening: false });
    const dup = fs.openSync('/dev/null', 'r');
    assert.throws(() => sys.socketInfo(dup), (e: unknown) => e instanceof sys.SysError && e.code === 'ENOTSOCK');
    fs.closeSync(dup);
    // Pass one end of a second pair across the first, then adopt the received fd.
    const [c, d] = sys.unixSocketPair();
    const received = once(b, 'fds') as Promise<[number[]]>;
    b.resume();
    a.writeWithFds(Buffer.from('!'), [c.fd]);
    const [[passed]] = await received;
    assert.ok(passed !== undefined);
    const adopted = sys.adoptSocket(passed);
    const got = readExactly(d, 5);
    adopted.write('hello');
    assert.equal((await got).toString(), 'hello');
    assert.throws(() => sys.adoptListener(d.fd), /is not a listening stream socket/);
    for (const s of [a, b, c, d, adopted]) s.destroy();
  });
});

describe('AF_VSOCK sockets', () => {
  it('listens on any CID and reports the bound port with getsockname', () => {
    const listener = sys.listenVsock(K.VMADDR_CID_ANY, 0x7f00_1234 >>> 0);
    const addr = listener.address();
    assert.equal(addr.family, 'vsock');
    assert.equal(addr.family === 'vsock' && addr.port, 0x7f00_1234);
    assert.deepEqual(sys.socketInfo(listener.fd), { domain: 'vsock', type: 'stream', listening: true });
    listener.close();
  });

  it('setVsockBufferSize raises the buffer and its maximum; the kernel clamps SIZE to MAX', () => {
    // connect needs a vsock transport this host lacks; a listening socket takes the options all the same.
    const listener = sys.listenVsock(K.VMADDR_CID_ANY, K.VMADDR_PORT_ANY);
    const fd = listener.fd;
    const { BUFFER_SIZE, BUFFER_MAX_SIZE } = sys.VSOCK_OPT;
    assert.equal(sys.getsockoptU64(fd, K.AF_VSOCK, BUFFER_SIZE), 256n * 1024n, 'the default is 256 KiB');
    assert.equal(sys.setVsockBufferSize(fd, 2 * 1024 * 1024), 2n * 1024n * 1024n);
    assert.equal(sys.getsockoptU64(fd, K.AF_VSOCK, BUFFER_MAX_SIZE), 2n * 1024n * 1024n);
    assert.equal(sys.setVsockBufferSize(fd, 64n * 1024n), 64n * 1024n, 'smaller again: MAX stays, SIZE follows');
    sys.setsockoptU64(fd, K.AF_VSOCK, BUFFER_SIZE, 8n * 1024n * 1024n);
    assert.equal(sys.getsockoptU64(fd, K.AF_VSOCK, BUFFER_SIZE), 2n * 1024n * 1024n, 'clamped to MAX');
    listener.close();
  });

  it('setsockopt/getsockopt report errno (EBADF, ENOPROTOOPT) and check arguments before any syscall', () => {
    const closed = fs.openSync('/dev/null', 'r');
    fs.closeSync(closed);
    const ebadf = (e: unknown): boolean => e instanceof sys.SysError && e.code === 'EBADF' && e.syscall !== undefined;
    assert.throws(() => sys.setsockoptU64(closed, K.AF_VSOCK, sys.VSOCK_OPT.BUFFER_SIZE, 1n << 20n), ebadf);
    assert.throws(() => sys.getsockoptU64(closed, K.AF_VSOCK, sys.VSOCK_OPT.BUFFER_SIZE), ebadf);
    assert.throws(() => sys.setsockoptInt(closed, K.SOL_SOCKET, 8 /* SO_RCVBUF */, 1 << 20), ebadf);
    assert.throws(() => sys.setVsockBufferSize(closed, 1 << 20), ebadf);
    const [a, b] = sys.unixSocketPair();
    sys.setsockoptInt(a.fd, K.SOL_SOCKET, 7 /* SO_SNDBUF */, 1 << 20);
    assert.throws(() => sys.setsockoptInt(a.fd, K.SOL_SOCKET, 9999, 1), (e: unknown) => e instanceof sys.SysError && e.code === 'ENOPROTOOPT');
    assert.throws(() => sys.setVsockBufferSize(a.fd, 1 << 20), (e: unknown) => e instanceof sys.SysError, 'a unix socket has no AF_VSOCK level');
    assert.throws(() => sys.setsockoptU64(a.fd, K.AF_VSOCK, 0, -1n), RangeError);
    assert.throws(() => sys.setsockoptU64(a.fd, K.AF_VSOCK, 0, 1n << 64n), RangeError);
    assert.throws(() => sys.setsockoptU64(a.fd, K.AF_VSOCK, 0, 1.5), TypeError);
    assert.throws(() => sys.setsockoptInt(a.fd, K.SOL_SOCKET, 8, 2 ** 31), RangeError);
    assert.throws(() => sys.setsockoptInt(-1, K.SOL_SOCKET, 8, 1), RangeError);
    assert.throws(() => sys.getsockoptU64(a.fd, -1, 0), RangeError);
    a.destroy();
    b.destroy();
  });

  it('refuses CIDs and ports outside 32 bits before any syscall', async () => {
    assert.throws(() => sys.listenVsock(-1, 1), RangeError);
    await assert.rejects(sys.connectVsock(3, 2 ** 32), RangeError);
  });
});
