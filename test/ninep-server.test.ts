// The 9P2000.L server from the host side: version and attach, pipelining,
// flush, limits, bad input that must cost one request or one connection and
// never the server, and confinement probed with a raw client.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { once } from 'node:events';
import { execFileSync, spawn } from 'node:child_process';
import { NinePClient, NinePError } from '../src/9p/client.js';
import { NinePServer } from '../src/9p/server.js';
import { PassthroughFs } from '../src/fs/passthrough.js';
import { listen } from '../src/transport/index.js';
import { FrameReader, NOFID, OpenFlags, decodeR, encodeT, type Rmessage, type Tmessage } from '../src/codecs/9p/index.js';

const b = (s: string): Buffer => Buffer.from(s);

async function startServer(dir: string, opts: { readOnly?: boolean; maxFids?: number; maxMsize?: number } = {}): Promise<{ addr: string; server: NinePServer; stop: () => Promise<void> }> {
  const pfs = await PassthroughFs.open(dir, { readOnly: opts.readOnly ?? false });
  const server = new NinePServer(pfs, { exportPath: dir, maxFids: opts.maxFids ?? 4096, maxMsize: opts.maxMsize ?? 1024 * 1024 });
  const sock = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'prism-9s-')), 's.sock');
  const l = await listen(`unix:${sock}`);
  server.serve(l);
  return {
    addr: `unix:${sock}`,
    server,
    stop: async () => {
      await server.close();
      pfs.close();
    },
  };
}

/** A raw 9P connection: send frames (or bytes), read replies in order. */
class Raw {
  private readonly reader = new FrameReader(1 << 24);
  private readonly replies: Rmessage[] = [];
  private waiters: (() => void)[] = [];
  closed = false;
  constructor(readonly sock: net.Socket) {
    sock.on('data', (d: Buffer) => {
      this.reader.push(d);
      for (let f = this.reader.next(); f; f = this.reader.next()) this.replies.push(decodeR(Buffer.from(f)));
      this.wake();
    });
    sock.on('close', () => {
      this.closed = true;
      this.wake();
    });
    sock.on('error', () => undefined);
  }
  static async open(addr: string): Promise<Raw> {
    const s = net.connect(addr.replace(/^unix:/, ''));
    await once(s, 'connect');
    return new Raw(s);
  }
  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }
  send(m: Tmessage | Buffer): void {
    this.sock.write(Buffer.isBuffer(m) ? m : encodeT(m));
  }
  async next(): Promise<Rmessage> {
    while (this.replies.length === 0) {
      if (this.closed) throw new Error('connection closed');
      await new Promise<void>((r) => this.waiters.push(r));
    }
    return this.replies.shift() as Rmessage;
  }
  async rpc(m: Tmessage | Buffer): Promise<Rmessage> {
    this.send(m);
    return this.next();
  }
  async waitClosed(): Promise<void> {
    while (!this.closed) await new Promise<void>((r) => this.waiters.push(r));
  }
  async handshake(msize = 65536): Promise<void> {
    const v = await this.rpc({ type: 'Tversion', tag: 0xffff, msize, version: '9P2000.L' });
    assert.equal(v.type, 'Rversion');
    const a = await this.rpc({ type: 'Tattach', tag: 1, fid: 0, afid: NOFID, uname: b('root'), aname: b(''), nUname: 0 });
    assert.equal(a.type, 'Rattach');
  }
  close(): void {
    this.sock.destroy();
  }
}

function lerror(r: Rmessage): number {
  assert.equal(r.type, 'Rlerror', `expected Rlerror, got ${r.type}`);
  return r.type === 'Rlerror' ? r.ecode : -1;
}

const E = os.constants.errno;

describe('9P server protocol', () => {
  let dir: string;
  let srv: Awaited<ReturnType<typeof startServer>>;
  before(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'prism-9p-'));
    fs.chmodSync(dir, 0o755);
    fs.writeFileSync(path.join(dir, 'hello'), 'hello world\n');
    fs.mkdirSync(path.join(dir, 'many'));
    for (let i = 0; i < 1000; i++) fs.writeFileSync(path.join(dir, 'many', `file-${i}`), '');
    srv = await startServer(dir, { maxFids: 64 });
  });
  after(async () => {
    await srv.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('negotiates msize down to the server limit and refuses unknown versions', async () => {
    const raw = await Raw.open(srv.addr);
    const v = await raw.rpc({ type: 'Tversion', tag: 0xffff, msize: 64 * 1024 * 1024, version: '9P2000.L' });
    assert.deepEqual(v, { type: 'Rversion', tag: 0xffff, msize: 1024 * 1024, version: '9P2000.L' });
    const u = await raw.rpc({ type: 'Tversion', tag: 0xffff, msize: 8192, version: '9P2000.u' });
    assert.deepEqual(u, { type: 'Rversion', tag: 0xffff, msize: 8192, version: 'unknown' });
    raw.close();
  });

  it('answers a request before Tversion with EPROTO', async () => {
    const raw = await Raw.open(srv.addr);
    assert.equal(lerror(await raw.rpc({ type: 'Tclunk', tag: 3, fid: 1 })), E.EPROTO);
    raw.close();
  });

  it('attaches with aname "", "/" and the export path, and refuses any other aname', async () => {
    for (const aname of ['', '/', dir]) {
      const c = await NinePClient.connect(srv.addr, { aname });
      assert.equal((await c.stat('hello')).size, 12n);
      c.close();
    }
    await assert.rejects(NinePClient.connect(srv.addr, { aname: '/etc' }), (e: unknown) => e instanceof NinePError && e.code === 'ENOENT');
  });

  it('runs 200 pipelined requests and answers each under its own tag', async () => {
    const raw = await Raw.open(srv.addr);
    await raw.handshake();
    for (let tag = 0; tag < 200; tag++) raw.send({ type: 'Tgetattr', tag, fid: 0, requestMask: 0x7ffn });
    const tags = new Set<number>();
    for (let i = 0; i < 200; i++) {
      const r = await raw.next();
      assert.equal(r.type, 'Rgetattr');
      tags.add(r.tag);
    }
    assert.equal(tags.size, 200);
    raw.close();
  });

  it('lists 1000 entries across several Treaddir calls with stable offsets', async () => {
    const c = await NinePClient.connect(srv.addr, { msize: 8192 });
    const entries = await c.list('many');
    const names = entries.map((e) => e.name).filter((n) => n.startsWith('file-'));
    assert.equal(names.length, 1000);
    assert.equal(new Set(names).size, 1000);
    c.close();
  });

  it('Tflush of an unknown tag answers Rflush; a flushed request still gets its reply first', async () => {
    const raw = await Raw.open(srv.addr);
    await raw.handshake();
    assert.deepEqual(await raw.rpc({ type: 'Tflush', tag: 5, oldtag: 77 }), { type: 'Rflush', tag: 5 });
    raw.send({ type: 'Twalk', tag: 10, fid: 0, newfid: 1, wnames: [b('hello')] });
    raw.send({ type: 'Tflush', tag: 11, oldtag: 10 });
    const first = await raw.next();
    const second = await raw.next();
    assert.equal(first.tag, 10);
    assert.equal(second.type, 'Rflush');
    assert.equal(second.tag, 11);
    raw.close();
  });

  it('bad requests get Rlerror and the connection carries on', async () => {
    const raw = await Raw.open(srv.addr);
    await raw.handshake();
    assert.equal(lerror(await raw.rpc({ type: 'Tgetattr', tag: 2, fid: 999, requestMask: 0x7ffn })), E.EBADF, 'unknown fid');
    assert.equal(lerror(await raw.rpc({ type: 'Tattach', tag: 2, fid: 0, afid: NOFID, uname: b(''), aname: b(''), nUname: 0 })), E.EBADF, 'fid in use');
    assert.equal(lerror(await raw.rpc({ type: 'Twalk', tag: 2, fid: 0, newfid: 1, wnames: [b('a\0b')] })), E.EINVAL, 'NUL in a name');
    assert.equal(lerror(await raw.rpc({ type: 'Twalk', tag: 2, fid: 0, newfid: 1, wnames: [b('a/b')] })), E.EINVAL, 'slash in a name');
    assert.equal(lerror(await raw.rpc({ type: 'Tlopen', tag: 2, fid: 0, flags: OpenFlags.WRONLY })), E.EISDIR);
    // An unknown message type, a truncated body, trailing garbage: hand-built frames.
    const unknown = Buffer.from([7, 0, 0, 0, 200, 9, 0]);
    assert.equal((await raw.rpc(unknown)).tag, 9);
    const truncated = Buffer.from([11, 0, 0, 0, 120, 4, 0, 1, 0, 0, 0]); // Tclunk needs fid[4]: 3 bytes given... then one more
    truncated.writeUInt32LE(10, 0);
    const r = await raw.rpc(truncated.subarray(0, 10));
    assert.equal(r.type, 'Rlerror');
    assert.equal(r.tag, 4);
    // Still alive: a good request works.
    assert.equal((await raw.rpc({ type: 'Tgetattr', tag: 3, fid: 0, requestMask: 0x7ffn })).type, 'Rgetattr');
    raw.close();
  });

  it('a frame larger than msize closes only that connection', async () => {
    const bad = await Raw.open(srv.addr);
    const good = await NinePClient.connect(srv.addr);
    await bad.handshake(8192);
    const huge = Buffer.alloc(16);
    huge.writeUInt32LE(100_000, 0);
    huge[4] = 118;
    bad.send(huge);
    await bad.waitClosed();
    assert.equal((await good.stat('hello')).size, 12n, 'the other client carries on');
    good.close();
  });

  it('refuses fids beyond the per-connection limit with EMFILE', async () => {
    const raw = await Raw.open(srv.addr);
    await raw.handshake();
    let errno = 0;
    for (let fid = 1; fid < 100 && errno === 0; fid++) {
      const r = await raw.rpc({ type: 'Twalk', tag: 2, fid: 0, newfid: fid, wnames: [] });
      if (r.type === 'Rlerror') errno = r.ecode;
    }
    assert.equal(errno, E.EMFILE);
    raw.close();
  });

  it('byte-range locks conflict between two opens and clear on unlock', async () => {
    const c = await NinePClient.connect(srv.addr);
    const { fid: a } = await c.walk('hello');
    const { fid: b2 } = await c.walk('hello');
    await c.rpc({ type: 'Tlopen', fid: a, flags: OpenFlags.RDWR });
    await c.rpc({ type: 'Tlopen', fid: b2, flags: OpenFlags.RDWR });
    const lock = (fid: number, lockType: number) => c.rpc({ type: 'Tlock', fid, lockType, flags: 0, start: 0n, length: 0n, procId: 1, clientId: b('t') });
    assert.equal((await lock(a, 1)).status, 0);
    assert.equal((await lock(b2, 0)).status, 1, 'BLOCKED while the write lock is held');
    const held = await c.rpc({ type: 'Tgetlock', fid: b2, lockType: 0, start: 0n, length: 0n, procId: 2, clientId: b('t') });
    assert.equal(held.lockType, 1);
    // Linux 6.1 always asks with UNLCK; that must still find the holder.
    const asLinux = await c.rpc({ type: 'Tgetlock', fid: b2, lockType: 2, start: 0n, length: 0n, procId: 2, clientId: b('t') });
    assert.equal(asLinux.lockType, 1);
    assert.equal((await lock(a, 2)).status, 0);
    assert.equal((await lock(b2, 0)).status, 0);
    await c.clunk(a);
    await c.clunk(b2);
    c.close();
  });

  it('xattrs: create through Txattrcreate + Twrite + Tclunk, read back through Txattrwalk', async () => {
    const c = await NinePClient.connect(srv.addr);
    const { fid } = await c.walk('hello');
    await c.rpc({ type: 'Txattrcreate', fid, name: b('user.prism'), attrSize: 5n, flags: 0 });
    await c.rpc({ type: 'Twrite', fid, offset: 0n, data: b('value') });
    await c.clunk(fid);
    const { fid: f2 } = await c.walk('hello');
    const xf = c.allocFid();
    const w = await c.rpc({ type: 'Txattrwalk', fid: f2, newfid: xf, name: b('user.prism') });
    assert.equal(w.size, 5n);
    const r = await c.rpc({ type: 'Tread', fid: xf, offset: 0n, count: 100 });
    assert.equal(Buffer.from(r.data).toString(), 'value');
    await c.clunk(xf);
    const lf = c.allocFid();
    const list = await c.rpc({ type: 'Txattrwalk', fid: f2, newfid: lf, name: b('') });
    const names = await c.rpc({ type: 'Tread', fid: lf, offset: 0n, count: Number(list.size) });
    assert.ok(Buffer.from(names.data).toString().split('\0').includes('user.prism'));
    await c.clunk(lf);
    await c.clunk(f2);
    c.close();
  });

  it('the client library copies files both ways', async () => {
    const c = await NinePClient.connect(srv.addr, { msize: 65536 });
    const data = Buffer.alloc(1_000_000);
    for (let i = 0; i < data.length; i++) data[i] = (i * 31) & 0xff;
    assert.equal(await c.write('copied', data), BigInt(data.length));
    assert.ok(fs.readFileSync(path.join(dir, 'copied')).equals(data));
    assert.ok((await c.read('copied'))?.equals(data));
    c.close();
  });
});

describe('9P confinement with a raw client', () => {
  let top: string;
  let exp: string;
  let srv: Awaited<ReturnType<typeof startServer>>;
  before(async () => {
    top = fs.mkdtempSync(path.join(os.tmpdir(), 'prism-9c-'));
    exp = path.join(top, 'export');
    fs.mkdirSync(path.join(exp, 'd'), { recursive: true });
    fs.writeFileSync(path.join(top, 'secret'), 'outside');
    fs.symlinkSync('/etc', path.join(exp, 'abs'));
    fs.symlinkSync('../secret', path.join(exp, 'rel'));
    fs.symlinkSync('/proc/self/root', path.join(exp, 'magic'));
    fs.mkdirSync(path.join(exp, 'sgid'));
    fs.chmodSync(path.join(exp, 'sgid'), 0o2777);
    srv = await startServer(exp);
  });
  after(async () => {
    await srv.stop();
    fs.rmSync(top, { recursive: true, force: true });
  });

  it('.. from the root stays at the root', async () => {
    const raw = await Raw.open(srv.addr);
    await raw.handshake();
    const root = await raw.rpc({ type: 'Twalk', tag: 2, fid: 0, newfid: 1, wnames: [] });
    const up = await raw.rpc({ type: 'Twalk', tag: 2, fid: 0, newfid: 2, wnames: [b('..'), b('..'), b('..')] });
    assert.equal(root.type, 'Rwalk');
    assert.equal(up.type === 'Rwalk' && up.wqids.length, 3);
    const attr = await raw.rpc({ type: 'Tgetattr', tag: 2, fid: 2, requestMask: 0x7ffn });
    assert.equal(attr.type === 'Rgetattr' && attr.qid.path, BigInt(fs.statSync(exp).ino));
    const secret = await raw.rpc({ type: 'Twalk', tag: 2, fid: 0, newfid: 3, wnames: [b('..'), b('secret')] });
    assert.equal(secret.type === 'Rwalk' && secret.wqids.length, 1, 'the walk stops at the root: the file beside the export is not reachable');
    assert.equal(lerror(await raw.rpc({ type: 'Tgetattr', tag: 2, fid: 3, requestMask: 0x7ffn })), E.EBADF, 'a partial walk makes no fid');
    raw.close();
  });

  it('symlinks out of the export, absolute, relative and magic, are never followed', async () => {
    const c = await NinePClient.connect(srv.addr);
    for (const name of ['abs', 'rel', 'magic']) {
      const { fid, qids } = await c.walk(name);
      assert.equal(qids[0]?.type, 0x02, `${name} is a symlink node`);
      await assert.rejects(c.rpc({ type: 'Tlopen', fid, flags: 0 }), (e: unknown) => e instanceof NinePError && e.code === 'ELOOP');
      await c.clunk(fid);
    }
    // Walking through a symlink stops at it (a partial Rwalk): the client resolves links, never the server.
    for (const through of [['abs', 'passwd'], ['magic', 'etc'], ['rel']]) {
      const fid = c.allocFid();
      const r = await c.rpc({ type: 'Twalk', fid: c.rootFid, newfid: fid, wnames: [...through.map(b), b('x')] });
      assert.equal(r.wqids.length, 1, `${through.join('/')}: stops at the link`);
    }
    c.close();
  });

  it('a directory swapped for a symlink after the walk still means the original directory', async () => {
    fs.mkdirSync(path.join(exp, 'swap'));
    fs.writeFileSync(path.join(exp, 'swap', 'f'), 'original');
    const c = await NinePClient.connect(srv.addr);
    const { fid } = await c.walk('swap');
    fs.renameSync(path.join(exp, 'swap'), path.join(exp, 'moved'));
    fs.symlinkSync(top, path.join(exp, 'swap'));
    const fileFid = c.allocFid();
    await c.rpc({ type: 'Twalk', fid, newfid: fileFid, wnames: [b('f')] });
    await c.rpc({ type: 'Tlopen', fid: fileFid, flags: 0 });
    const r = await c.rpc({ type: 'Tread', fid: fileFid, offset: 0n, count: 100 });
    assert.equal(Buffer.from(r.data).toString(), 'original');
    const secretFid = c.allocFid();
    await assert.rejects(c.rpc({ type: 'Twalk', fid, newfid: secretFid, wnames: [b('secret')] }), (e: unknown) => e instanceof NinePError && e.code === 'ENOENT');
    c.close();
  });

  it('FIFOs and device nodes can be made with Tmknod but never opened', async () => {
    const c = await NinePClient.connect(srv.addr);
    await c.rpc({ type: 'Tmknod', dfid: c.rootFid, name: b('fifo'), mode: 0o010644, major: 0, minor: 0, gid: 0 });
    await c.rpc({ type: 'Tmknod', dfid: c.rootFid, name: b('null'), mode: 0o020666, major: 1, minor: 3, gid: 0 });
    assert.ok(fs.lstatSync(path.join(exp, 'fifo')).isFIFO());
    assert.ok(fs.lstatSync(path.join(exp, 'null')).isCharacterDevice());
    for (const name of ['fifo', 'null']) {
      const { fid } = await c.walk(name);
      await assert.rejects(c.rpc({ type: 'Tlopen', fid, flags: OpenFlags.RDWR }), (e: unknown) => e instanceof NinePError && e.code === 'EACCES');
      await c.clunk(fid);
    }
    c.close();
  });

  it('files created in a setgid directory never come out setuid or setgid', async () => {
    const c = await NinePClient.connect(srv.addr);
    const { fid } = await c.walk('sgid');
    await c.rpc({ type: 'Tlcreate', fid, name: b('x'), flags: OpenFlags.RDWR, mode: 0o6755, gid: 0 });
    await c.clunk(fid);
    const st = fs.statSync(path.join(exp, 'sgid', 'x'));
    assert.equal(st.mode & 0o6000, 0);
    const d = await c.walk('sgid');
    await c.rpc({ type: 'Tmkdir', dfid: d.fid, name: b('sub'), mode: 0o6777, gid: 0 });
    await c.clunk(d.fid);
    const sub = fs.statSync(path.join(exp, 'sgid', 'sub'));
    assert.equal(sub.mode & 0o4000, 0, 'no setuid on a directory');
    assert.equal(sub.gid, fs.statSync(path.join(exp, 'sgid')).gid, 'group inherited from the setgid parent, as the kernel does');
    c.close();
  });

  it('a read-only export refuses writes with EROFS', async () => {
    const ro = await startServer(exp, { readOnly: true });
    const c = await NinePClient.connect(ro.addr);
    await assert.rejects(c.write('new-file', b('x')), (e: unknown) => e instanceof NinePError && e.code === 'EROFS');
    await assert.rejects(c.rpc({ type: 'Tmkdir', dfid: c.rootFid, name: b('nd'), mode: 0o755, gid: 0 }), (e: unknown) => e instanceof NinePError && e.code === 'EROFS');
    c.close();
    await ro.stop();
  });

  it('a bind mount inside the export is not crossed (RESOLVE_NO_XDEV, private mount namespace)', async () => {
    const mnt = path.join(exp, 'mnt');
    fs.mkdirSync(mnt);
    const src = fs.mkdtempSync(path.join(os.tmpdir(), 'prism-9b-'));
    fs.writeFileSync(path.join(src, 'inside-mount'), 'x');
    const sock = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'prism-9m-')), 's.sock');
    const root = path.join(import.meta.dirname, '..');
    const child = spawn(
      'unshare',
      ['-m', '--propagation', 'private', 'sh', '-c', 'mount --bind "$1" "$2" && exec "$3" --import tsx "$4" 9p serve "$5" --listen "unix:$6"', 'sh', src, mnt, process.execPath, path.join(root, 'src/cli/main.ts'), exp, sock],
      { cwd: root, stdio: ['ignore', 'ignore', 'pipe'] },
    );
    let log = '';
    child.stderr.setEncoding('utf8').on('data', (d: string) => (log += d));
    const deadline = Date.now() + 20_000;
    while (!log.includes('9p server listening')) {
      assert.ok(Date.now() < deadline && child.exitCode === null, `server did not start: ${log}`);
      await new Promise((r) => setTimeout(r, 50));
    }
    try {
      // Outside the namespace the mount does not exist; inside, the server sees it and refuses to cross.
      assert.equal(fs.existsSync(path.join(mnt, 'inside-mount')), false);
      const c = await NinePClient.connect(`unix:${sock}`);
      await assert.rejects(c.walk('mnt/inside-mount'), (e: unknown) => e instanceof NinePError && e.code === 'EXDEV');
      c.close();
    } finally {
      child.kill('SIGTERM');
      await once(child, 'exit');
    }
    assert.equal(execFileSync('sh', ['-c', `grep -c " ${mnt} " /proc/self/mountinfo || true`], { encoding: 'utf8' }).trim(), '0');
  });
});
