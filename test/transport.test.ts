// The address grammar, the hybrid-vsock handshake codec, and listen/dial on every kind.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { once } from 'node:events';
import type { Duplex } from 'node:stream';
import fc from 'fast-check';
import { AddressError, TransportError, dial, formatAddress, listen, parseAddress, type Address, type Connection } from '../src/transport/index.js';
import { HandshakeError, encodeConnect, parseReply } from '../src/codecs/hvsock.js';
import * as sys from '../src/sys/index.js';

function tmpdir(): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'prism-tr-'));
}

function readAll(s: Duplex): Promise<string> {
  return new Promise((resolve, reject) => {
    let out = '';
    s.setEncoding('utf8');
    s.on('data', (d: string) => (out += d));
    s.once('end', () => {
      s.end(); // half-open sockets: finish our side too
      resolve(out);
    });
    s.once('error', reject);
  });
}

describe('address grammar', () => {
  it('parses every kind', () => {
    assert.deepEqual(parseAddress('tcp:127.0.0.1:564'), { kind: 'tcp', host: '127.0.0.1', port: 564 });
    assert.deepEqual(parseAddress('tcp:[::1]:0'), { kind: 'tcp', host: '::1', port: 0 });
    assert.deepEqual(parseAddress('tcp:localhost:65535'), { kind: 'tcp', host: 'localhost', port: 65535 });
    assert.deepEqual(parseAddress('unix:/run/a:b.sock'), { kind: 'unix', path: '/run/a:b.sock' });
    assert.deepEqual(parseAddress('vsock:any:564'), { kind: 'vsock', cid: 0xffffffff, port: 564 });
    assert.deepEqual(parseAddress('vsock:3:1024'), { kind: 'vsock', cid: 3, port: 1024 });
    assert.deepEqual(parseAddress('vsock:host:1'), { kind: 'vsock', cid: 2, port: 1 });
    assert.deepEqual(parseAddress('hvsock:/run/vm:1/v.sock:5000'), { kind: 'hvsock', path: '/run/vm:1/v.sock', port: 5000 });
    assert.deepEqual(parseAddress('fd:3'), { kind: 'fd', fd: 3 });
  });

  const bad: [string, RegExp][] = [
    ['', /missing the "kind:" prefix/],
    ['127.0.0.1:564', /unknown kind/],
    ['udp:1.2.3.4:5', /unknown kind "udp"/],
    ['tcp:127.0.0.1', /missing ":PORT"/],
    ['tcp:127.0.0.1:65536', /above 65535/],
    ['tcp::564', /the host is empty/],
    ['tcp:::1:564', /brackets/],
    ['tcp:[::1:564', /brackets/],
    ['tcp:a b:1', /characters no host name/],
    ['tcp:h:-1', /decimal number/],
    ['tcp:h:0x10', /decimal number/],
    ['unix:', /path is empty/],
    ['unix:/' + 'x'.repeat(120), /Unix sockets allow 107/],
    ['unix:/a\0b', /NUL/],
    ['vsock:any', /missing ":PORT"/],
    ['vsock:guest:1', /the CID must be a decimal number/],
    ['vsock:4294967296:1', /does not fit in 32 bits/],
    ['vsock:3:99999999999', /the vsock port/],
    ['hvsock:/run/x.sock', /missing ":PORT"/],
    ['hvsock::5', /path is empty/],
    ['fd:', /the fd must be a decimal number/],
    ['fd:-1', /decimal number/],
    ['fd:3000000000', /out of range/],
  ];
  for (const [input, why] of bad) {
    it(`refuses ${JSON.stringify(input.length > 30 ? input.slice(0, 30) + '…' : input)} and shows the grammar`, () => {
      assert.throws(() => parseAddress(input), (e: unknown) => {
        assert.ok(e instanceof AddressError);
        assert.match(e.message, why);
        assert.match(e.message, /vsock:CID:PORT/);
        return true;
      });
    });
  }

  it('round-trips every valid address through format and parse (property)', () => {
    const addr: fc.Arbitrary<Address> = fc.oneof(
      fc.record({ kind: fc.constant('tcp' as const), host: fc.oneof(fc.ipV4(), fc.ipV6(), fc.domain()), port: fc.integer({ min: 0, max: 65535 }) }),
      fc.record({ kind: fc.constant('unix' as const), path: fc.string({ minLength: 1, maxLength: 100 }).filter((s) => !s.includes('\0') && Buffer.byteLength(s) <= 107) }),
      fc.record({ kind: fc.constant('vsock' as const), cid: fc.integer({ min: 0, max: 0xffffffff }), port: fc.integer({ min: 0, max: 0xffffffff }) }),
      fc.record({ kind: fc.constant('hvsock' as const), path: fc.string({ minLength: 1, maxLength: 100 }).filter((s) => !s.includes('\0') && Buffer.byteLength(s) <= 107), port: fc.integer({ min: 0, max: 0xffffffff }) }),
      fc.record({ kind: fc.constant('fd' as const), fd: fc.integer({ min: 0, max: 0x7fffffff }) }),
    );
    fc.assert(fc.property(addr, (a) => assert.deepEqual(parseAddress(formatAddress(a)), { ...a })), { numRuns: 2000 });
  });

  it('throws only AddressError on arbitrary input (property)', () => {
    fc.assert(
      fc.property(fc.oneof(fc.string(), fc.string().map((s) => `tcp:${s}`), fc.string().map((s) => `vsock:${s}`), fc.string().map((s) => `hvsock:${s}`)), (s) => {
        try {
          parseAddress(s);
        } catch (e) {
          assert.ok(e instanceof AddressError, `unexpected ${String(e)}`);
        }
      }),
      { numRuns: 5000 },
    );
  });
});

describe('hybrid vsock handshake codec', () => {
  it('encodes CONNECT with the port', () => {
    assert.equal(encodeConnect(564).toString(), 'CONNECT 564\n');
    assert.throws(() => encodeConnect(-1), RangeError);
  });

  it('needs more bytes until the newline, then yields the port and the rest, at every split', () => {
    const reply = Buffer.from('OK 1073741824\nhello');
    for (let i = 0; i < 14; i++) assert.deepEqual(parseReply(reply.subarray(0, i)), { done: false });
    for (let i = 14; i <= reply.length; i++) {
      const r = parseReply(reply.subarray(0, i));
      assert.equal(r.done, true);
      assert.equal(r.done && r.hostPort, 1073741824);
      assert.equal(r.done && r.rest.toString(), 'hello'.slice(0, i - 14));
    }
  });

  it('refuses garbage, refusals and endless lines', () => {
    for (const s of ['NO\n', 'OK\n', 'OK -1\n', 'OK 99999999999\n', 'ok 5\n', 'OK 5 6\n']) {
      assert.throws(() => parseReply(Buffer.from(s)), HandshakeError, s);
    }
    assert.throws(() => parseReply(Buffer.alloc(64, 0x41)), HandshakeError);
  });
});

/** A fake hybrid-vsock VMM: answers CONNECT per `behaviour`, then echoes. */
async function fakeVmm(sock: string, behaviour: 'ok' | 'close' | 'garbage'): Promise<net.Server> {
  const server = net.createServer((c) => {
    let line = '';
    const onData = (d: Buffer): void => {
      line += d.toString('latin1');
      if (!line.includes('\n')) return;
      c.off('data', onData);
      const m = /^CONNECT (\d+)\n/.exec(line);
      if (behaviour === 'close' || !m) {
        c.end();
        return;
      }
      if (behaviour === 'garbage') {
        c.write('ERR no listener\n');
        return;
      }
      // The reply and the guest's first bytes in one write, as a fast guest can cause.
      c.write(`OK 1073741825\nguest-port-${m[1]}:`);
      c.pipe(c);
    };
    c.on('data', onData);
  });
  server.listen(sock);
  await once(server, 'listening');
  return server;
}

describe('listen and dial', () => {
  it('tcp on loopback: a listener on port 0 reports its real port and carries data', async () => {
    const l = await listen('tcp:127.0.0.1:0');
    assert.match(l.address, /^tcp:127\.0\.0\.1:[1-9][0-9]*$/);
    l.on('connection', ({ stream }: Connection) => stream.pipe(stream));
    const s = await dial(l.address);
    s.end('ping');
    assert.equal(await readAll(s), 'ping');
    await l.close();
  });

  it('tcp on ::1', async () => {
    const l = await listen('tcp:[::1]:0');
    l.on('connection', ({ stream, peer }: Connection) => stream.end(peer));
    const s = await dial(l.address);
    assert.match(await readAll(s), /^tcp:\[::1\]:\d+$/);
    await l.close();
  });

  it('unix: replaces a stale socket file but refuses a live one', async () => {
    const dir = tmpdir();
    const sock = path.join(dir, 's.sock');
    // A stale socket: bound, then its owner gone.
    const stale = net.createServer().listen(sock);
    await once(stale, 'listening');
    stale.close();
    fs.closeSync(fs.openSync(sock + '.marker', 'w'));
    if (!fs.existsSync(sock)) {
      // Node removes its own socket file on close; recreate a dead one with sys.
      sys.listenUnix(sock).close();
    }
    const l = await listen(`unix:${sock}`);
    l.on('connection', ({ stream }: Connection) => {
      stream.on('error', () => undefined); // the liveness probe below resets its connection
      stream.end('hi');
    });
    assert.equal(await readAll(await dial(`unix:${sock}`)), 'hi');
    await assert.rejects(listen(`unix:${sock}`), (e: unknown) => {
      assert.ok(e instanceof TransportError);
      assert.equal(e.code, 'EADDRINUSE');
      assert.match(e.message, new RegExp(`unix:${sock}: cannot listen on it: the address is in use`));
      return true;
    });
    await l.close();
    assert.equal(fs.existsSync(sock), false, 'close removes the socket file');
  });

  it('dialing nothing says what failed and what to do', async () => {
    const dir = tmpdir();
    await assert.rejects(dial(`unix:${dir}/none.sock`), /none\.sock: cannot connect to it: no such socket file: start the server first/);
    const l = await listen('tcp:127.0.0.1:0');
    const addr = l.address;
    await l.close();
    await assert.rejects(dial(addr), /cannot connect to it: nothing is listening there/);
  });

  it('hvsock dial: sends CONNECT, accepts OK, keeps bytes that came with the reply', async () => {
    const dir = tmpdir();
    const sock = path.join(dir, 'vm.vsock');
    const vmm = await fakeVmm(sock, 'ok');
    const s = await dial(`hvsock:${sock}:564`);
    s.end('data');
    assert.equal(await readAll(s), 'guest-port-564:data');
    vmm.close();
  });

  it('hvsock dial: a VMM that closes without OK is a clear refusal', async () => {
    const dir = tmpdir();
    const sock = path.join(dir, 'vm.vsock');
    const vmm = await fakeVmm(sock, 'close');
    await assert.rejects(dial(`hvsock:${sock}:564`), (e: unknown) => {
      assert.ok(e instanceof TransportError);
      assert.equal(e.code, 'ECONNREFUSED');
      assert.match(e.message, /without answering OK to CONNECT 564: is a guest listening on vsock port 564\?/);
      return true;
    });
    vmm.close();
  });

  it('hvsock dial: a garbled reply is refused with what was received', async () => {
    const dir = tmpdir();
    const sock = path.join(dir, 'vm.vsock');
    const vmm = await fakeVmm(sock, 'garbage');
    await assert.rejects(dial(`hvsock:${sock}:7`), /expected "OK <port>", got "ERR no listener"/);
    vmm.close();
  });

  it('hvsock dial: a VMM that never answers times out', async () => {
    const dir = tmpdir();
    const sock = path.join(dir, 'vm.vsock');
    const silent = net.createServer(() => undefined).listen(sock);
    await once(silent, 'listening');
    await assert.rejects(dial(`hvsock:${sock}:7`, { timeoutMs: 200 }), (e: unknown) => e instanceof TransportError && e.code === 'ETIMEDOUT');
    silent.close();
  });

  it('hvsock listen: accepts the VMM on PATH_PORT', async () => {
    const dir = tmpdir();
    const base = path.join(dir, 'vm.vsock');
    const l = await listen(`hvsock:${base}:1234`);
    l.on('connection', ({ stream }: Connection) => stream.end('from host'));
    const vmmSide = net.connect(`${base}_1234`);
    assert.equal(await readAll(vmmSide), 'from host');
    await l.close();
  });

  it('fd: an inherited listening socket and an inherited connected one', async () => {
    // Inherited fds are made here by passing sockets over SCM_RIGHTS, so the
    // test owns bare fd numbers as a child process would.
    const [a, b] = sys.unixSocketPair();
    b.resume();
    const pass = async (fd: number): Promise<number> => {
      const got = once(b, 'fds') as Promise<[number[]]>;
      a.writeWithFds(Buffer.from('x'), [fd]);
      const [[passed]] = await got;
      assert.ok(passed !== undefined);
      return passed;
    };
    // Listening: a vsock listener (the kind Node cannot adopt itself).
    const vl = sys.listenVsock(sys.constants.VMADDR_CID_ANY, 0x7f00_4321);
    const vfd = await pass(vl.fd);
    vl.close();
    const l = await listen(`fd:${vfd}`);
    assert.equal(l.address, `fd:${vfd}`);
    await l.close();
    // Connected: one end of a socketpair.
    const [c, d] = sys.unixSocketPair();
    const fd = await pass(c.fd);
    const single = await listen(`fd:${fd}`);
    const [conn] = (await once(single, 'connection')) as [Connection];
    conn.stream.end('over the inherited fd');
    const echoed = await new Promise<string>((resolve) => d.once('data', (x: Buffer) => resolve(x.toString())));
    assert.equal(echoed, 'over the inherited fd');
    for (const s of [a, b, c, d]) s.destroy();
  });

  it('vsock listen on any CID binds; a bad fd is a clear error', async () => {
    const l = await listen(`vsock:any:${0x7f00_5555}`);
    assert.equal(l.address, `vsock:any:${0x7f00_5555}`);
    await l.close();
    await assert.rejects(listen('fd:987'), /fd:987: cannot listen on it/);
  });
});
