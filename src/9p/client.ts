// A 9P2000.L client for scripting and tests: pipelined requests over any
// prism address, with helpers for paths (walk, stat, read, write, list).
import type { Duplex } from 'node:stream';
import {
  DecodeError, FrameReader, IOHDRSZ, MAXWELEM, NOFID, NOTAG, OpenFlags, P9_GETATTR_ALL, RREAD_HEADER_SIZE, decodeDirents, decodeR, encodeT,
  type Qid, type Rmessage, type Tmessage,
} from '../codecs/9p/index.js';
import { dial } from '../transport/index.js';
import { FsError } from '../fs/errors.js';
import { errnoName } from '../sys/index.js';

const RREAD_HDR = RREAD_HEADER_SIZE;

/** Distributes the Omit over each member of a union (so `type` still narrows). */
type DistributiveOmit<T, K extends PropertyKey> = T extends unknown ? Omit<T, K> : never;
export type Request = DistributiveOmit<Tmessage, 'tag'>;
type Reply<T extends Request['type']> = Extract<Rmessage, { type: `R${T extends `T${infer R}` ? R : never}` }>;

export class NinePError extends FsError {
  constructor(errno: number, what: string) {
    super(errno, `${what}: ${errnoName(errno)}`);
  }
}

export interface ClientOptions {
  msize?: number;
  aname?: string;
  uname?: string;
  /** Numeric uid sent as n_uname (default: this process's uid). */
  nUname?: number;
  timeoutMs?: number;
}

export interface DirEntry { name: string; qid: Qid; type: number; offset: bigint }

export class NinePClient {
  private readonly reader: FrameReader;
  private readonly pending = new Map<number, { resolve: (r: Rmessage) => void; reject: (e: Error) => void; what: string }>();
  private nextTag = 0;
  private nextFid = 1;
  private readonly freeFids: number[] = [];
  msize = 0;
  rootFid = 0;
  private dead: Error | null = null;

  private constructor(private readonly stream: Duplex, maxMsize: number) {
    this.reader = new FrameReader(maxMsize);
    stream.on('data', (chunk: Buffer) => this.onData(chunk));
    stream.on('error', (e: Error) => this.fail(e));
    stream.on('close', () => this.fail(new Error('connection closed by the server')));
  }

  /** Connects, negotiates the version and msize, and attaches. */
  static async connect(address: string, opts: ClientOptions = {}): Promise<NinePClient> {
    const stream = await dial(address, { timeoutMs: opts.timeoutMs ?? 10_000 });
    const c = await NinePClient.over(stream, opts);
    return c;
  }

  /** Runs the client over an already-connected stream. */
  static async over(stream: Duplex, opts: ClientOptions = {}): Promise<NinePClient> {
    const want = opts.msize ?? 1024 * 1024;
    const c = new NinePClient(stream, want);
    try {
      const v = await c.rpcRaw({ type: 'Tversion', tag: NOTAG, msize: want, version: '9P2000.L' }, 'version');
      if (v.type !== 'Rversion' || v.version !== '9P2000.L') throw new Error(`the server does not speak 9P2000.L (it answered ${v.type === 'Rversion' ? JSON.stringify(v.version) : v.type})`);
      c.msize = v.msize;
      c.reader.setMaxSize(v.msize);
      c.rootFid = c.allocFid();
      await c.rpc(
        {
          type: 'Tattach',
          fid: c.rootFid,
          afid: NOFID,
          uname: Buffer.from(opts.uname ?? 'root'),
          aname: Buffer.from(opts.aname ?? ''),
          nUname: opts.nUname ?? process.getuid?.() ?? 0,
        },
        'attach',
      );
      return c;
    } catch (e) {
      stream.destroy();
      throw e;
    }
  }

  private onData(chunk: Buffer): void {
    try {
      this.reader.push(chunk);
      for (let f = this.reader.next(); f !== null; f = this.reader.next()) {
        const r = decodeR(f);
        const p = this.pending.get(r.tag);
        if (!p) continue; // a reply we no longer wait for
        this.pending.delete(r.tag);
        p.resolve(r);
      }
    } catch (e) {
      this.fail(e instanceof DecodeError ? new Error(`bad reply from the server: ${e.message}`) : (e as Error));
      this.stream.destroy();
    }
  }

  private fail(e: Error): void {
    if (this.dead) return;
    this.dead = e;
    for (const p of this.pending.values()) p.reject(new Error(`${p.what}: ${e.message}`));
    this.pending.clear();
  }

  private allocTag(): number {
    for (let i = 0; i < 0xffff; i++) {
      const t = this.nextTag;
      this.nextTag = (this.nextTag + 1) % 0xffff;
      if (!this.pending.has(t)) return t;
    }
    throw new Error('too many requests in flight');
  }

  allocFid(): number {
    return this.freeFids.pop() ?? this.nextFid++;
  }

  private rpcRaw(msg: Tmessage, what: string): Promise<Rmessage> {
    if (this.dead) return Promise.reject(new Error(`${what}: ${this.dead.message}`));
    return new Promise((resolve, reject) => {
      this.pending.set(msg.tag, { resolve, reject, what });
      this.stream.write(encodeT(msg));
    });
  }

  /** Sends one request; an Rlerror rejects with NinePError. */
  async rpc<T extends Request>(req: T, what: string = req.type): Promise<Reply<T['type']>> {
    const tag = this.allocTag();
    const r = await this.rpcRaw({ ...req, tag }, what);
    if (r.type === 'Rlerror') throw new NinePError(r.ecode, what);
    return r as Reply<T['type']>;
  }

  /** Walks `path` (slash-separated, relative to the root) to a new fid. */
  async walk(path: string): Promise<{ fid: number; qids: Qid[] }> {
    const names = path.split('/').filter((n) => n.length > 0 && n !== '.');
    const fid = this.allocFid();
    let from = this.rootFid;
    const qids: Qid[] = [];
    try {
      // Always at least one walk, so a zero-name clone makes the new fid.
      for (let i = 0; i === 0 || i < names.length; i += MAXWELEM) {
        const chunk = names.slice(i, i + MAXWELEM);
        const r = await this.rpc({ type: 'Twalk', fid: from, newfid: fid, wnames: chunk.map((n) => Buffer.from(n)) }, `walk ${path}`);
        if (r.wqids.length < chunk.length) throw new NinePError(2, `walk ${path}: "${chunk[r.wqids.length]}"`);
        qids.push(...r.wqids);
        from = fid;
      }
    } catch (e) {
      if (from === fid) await this.clunk(fid);
      else this.freeFids.push(fid);
      throw e;
    }
    return { fid, qids };
  }

  async clunk(fid: number): Promise<void> {
    try {
      await this.rpc({ type: 'Tclunk', fid });
    } finally {
      this.freeFids.push(fid);
    }
  }

  async withFid<T>(path: string, fn: (fid: number) => Promise<T>): Promise<T> {
    const { fid } = await this.walk(path);
    try {
      return await fn(fid);
    } finally {
      await this.clunk(fid).catch(() => undefined);
    }
  }

  stat(path: string): Promise<Extract<Rmessage, { type: 'Rgetattr' }>> {
    return this.withFid(path, (fid) => this.rpc({ type: 'Tgetattr', fid, requestMask: P9_GETATTR_ALL }, `stat ${path}`));
  }

  /** Reads a whole file, calling `onChunk` for each piece (or collecting them). */
  async read(path: string, onChunk?: (b: Buffer) => void | Promise<void>): Promise<Buffer | undefined> {
    return this.withFid(path, async (fid) => {
      await this.rpc({ type: 'Tlopen', fid, flags: 0 }, `open ${path}`);
      const parts: Buffer[] = [];
      const count = this.msize - RREAD_HDR;
      for (let offset = 0n; ; ) {
        const r = await this.rpc({ type: 'Tread', fid, offset, count }, `read ${path}`);
        if (r.data.length === 0) break;
        const copy = Buffer.from(r.data);
        if (onChunk) await onChunk(copy);
        else parts.push(copy);
        offset += BigInt(r.data.length);
      }
      return onChunk ? undefined : Buffer.concat(parts);
    });
  }

  /** Creates (or truncates) `path` and writes `data` from an async source of chunks. */
  async write(path: string, data: AsyncIterable<Buffer> | Buffer, mode = 0o644): Promise<bigint> {
    const slash = path.replace(/\/+$/, '').lastIndexOf('/');
    const dir = slash < 0 ? '' : path.slice(0, slash);
    const name = path.slice(slash + 1);
    if (!name) throw new Error(`no file name in ${JSON.stringify(path)}`);
    const { fid } = await this.walk(dir);
    try {
      try {
        await this.rpc({ type: 'Tlcreate', fid, name: Buffer.from(name), flags: OpenFlags.WRONLY | OpenFlags.TRUNC, mode, gid: process.getgid?.() ?? 0 }, `create ${path}`);
      } catch (e) {
        if (!(e instanceof NinePError && e.code === 'EEXIST')) throw e;
        await this.clunk(fid);
        const again = await this.walk(path);
        return await this.writeOpen(again.fid, path, data, true);
      }
      return await this.writeOpen(fid, path, data, false);
    } finally {
      await this.clunk(fid).catch(() => undefined);
    }
  }

  private async writeOpen(fid: number, path: string, data: AsyncIterable<Buffer> | Buffer, open: boolean): Promise<bigint> {
    try {
      if (open) await this.rpc({ type: 'Tlopen', fid, flags: OpenFlags.WRONLY | OpenFlags.TRUNC }, `open ${path}`);
      const max = this.msize - IOHDRSZ;
      let offset = 0n;
      const source = Buffer.isBuffer(data) ? [data] : data;
      for await (const chunk of source) {
        for (let i = 0; i < chunk.length; ) {
          const piece = chunk.subarray(i, i + max);
          const r = await this.rpc({ type: 'Twrite', fid, offset, data: piece }, `write ${path}`);
          if (r.count === 0) throw new Error(`write ${path}: the server accepted no bytes`);
          i += r.count;
          offset += BigInt(r.count);
        }
      }
      return offset;
    } finally {
      if (open) await this.clunk(fid).catch(() => undefined);
    }
  }

  /** Lists a directory (all entries, following readdir offsets). */
  async list(path: string): Promise<DirEntry[]> {
    return this.withFid(path, async (fid) => {
      await this.rpc({ type: 'Tlopen', fid, flags: OpenFlags.RDONLY | OpenFlags.DIRECTORY }, `open ${path}`);
      const out: DirEntry[] = [];
      for (let offset = 0n; ; ) {
        const r = await this.rpc({ type: 'Treaddir', fid, offset, count: this.msize - RREAD_HDR }, `readdir ${path}`);
        const entries = decodeDirents(r.data);
        if (entries.length === 0) break;
        for (const e of entries) out.push({ name: e.name.toString('utf8'), qid: e.qid, type: e.type, offset: e.offset });
        const last = entries[entries.length - 1];
        if (!last) break;
        offset = last.offset;
      }
      return out;
    });
  }

  close(): void {
    this.stream.destroy();
  }
}
