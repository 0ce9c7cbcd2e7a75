// One 9P2000.L connection on the server side: frames in, replies out.
// - Requests are pipelined: each runs as soon as it is decoded and its reply
//   goes out when it is ready, in any order.
// - Tflush waits for the flushed request to finish (every operation here
//   finishes: locks never wait, special files are never opened), lets its
//   reply go first, then answers Rflush, as intro(5) allows.
// - Back-pressure: reading stops while `maxInflight` requests are running or
//   the stream's write buffer is full, and resumes when they drain.
// - A malformed message gets Rlerror and the connection carries on; a stream
//   that cannot be framed (size field < 7 or > msize) is closed. Either way
//   the server and its other connections are untouched.
import type { Duplex } from 'node:stream';
import { DecodeError, FrameReader, ProtocolError, decodeT, encodeR, type Rmessage, type Tmessage } from '../codecs/9p/index.js';
import type { FileSystem, FsNode } from '../fs/core.js';
import { Errno, errnoOf } from '../fs/errors.js';
import { FidTable } from './fids.js';
import { handle, releaseFid, type HandlerContext } from './handler.js';

/** The smallest msize we accept: a Tversion plus a useful payload. */
export const MIN_MSIZE = 4096;
export const DEFAULT_MAX_MSIZE = 1024 * 1024;
/**
 * Rread buffers (msize bytes each) a connection keeps for reuse. A fresh msize buffer per read
 * costs page faults, zeroing and GC pressure: at msize 1 MiB most of the server's CPU.
 */
const SPARE_READ_BUFFERS = 2;

export interface SessionOptions {
  /** Largest msize we agree to (default 1 MiB). */
  maxMsize?: number;
  maxFids?: number;
  maxInflight?: number;
  /** The export's absolute path on the host: an aname equal to it reaches the root. */
  exportPath: string;
  /** Called for events worth a log line. */
  log?: (level: 'info' | 'warn' | 'debug', msg: string, fields?: Record<string, unknown>) => void;
  /** Give created files the attaching client's uid and the requested gid (only meaningful as root). */
  ownerFromClient?: boolean;
}

interface Inflight {
  done: Promise<void>;
}

export class ServerSession<N extends FsNode = FsNode> {
  private readonly reader: FrameReader;
  private readonly inflight = new Map<number, Inflight>();
  private readonly ctx: HandlerContext<N>;
  private readonly maxInflight: number;
  private paused = false;
  /** Rread buffers made by ctx.readBuffer, and those already written and free for the next read. */
  private readonly readBuffers = new WeakSet<ArrayBufferLike>();
  private readonly spareReadBuffers: Buffer[] = [];
  /** Replies are being batched until the end of this event-loop turn (see send). */
  private corked = false;
  private closed = false;
  private readonly log: NonNullable<SessionOptions['log']>;
  /** Resolves when the connection is finished and every fid is released. */
  readonly finished: Promise<void>;
  private finish!: () => void;

  constructor(
    private readonly stream: Duplex,
    fs: FileSystem<N>,
    readonly peer: string,
    opts: SessionOptions,
  ) {
    const maxMsize = Math.max(MIN_MSIZE, opts.maxMsize ?? DEFAULT_MAX_MSIZE);
    this.maxInflight = opts.maxInflight ?? 64;
    this.log = opts.log ?? (() => undefined);
    // Before Tversion only a small frame makes sense; the limit grows to the negotiated msize.
    this.reader = new FrameReader(maxMsize);
    this.ctx = {
      fs,
      fids: new FidTable<N>(opts.maxFids ?? 4096),
      msize: maxMsize,
      maxMsize,
      versioned: false,
      exportPath: opts.exportPath,
      ownerFromClient: opts.ownerFromClient ?? false,
      setMsize: (m: number) => {
        this.ctx.msize = m;
        this.reader.setMaxSize(m);
      },
      resetSession: () => this.releaseAll(),
      readBuffer: () => {
        const spare = this.spareReadBuffers.pop();
        if (spare && spare.length === this.ctx.msize) return spare;
        const b = Buffer.allocUnsafeSlow(this.ctx.msize); // its own ArrayBuffer, never Node's shared pool
        this.readBuffers.add(b.buffer);
        return b;
      },
    };
    this.finished = new Promise((resolve) => (this.finish = resolve));
    stream.on('data', (chunk: Buffer) => this.onData(chunk));
    stream.on('end', () => this.close('client closed the connection'));
    stream.on('error', (e: Error) => this.close(`stream error: ${e.message}`));
    stream.on('close', () => this.close('stream closed'));
    stream.on('drain', () => this.maybeResume());
  }

  get fidCount(): number {
    return this.ctx.fids.size;
  }

  private onData(chunk: Buffer): void {
    if (this.closed) return;
    try {
      this.reader.push(chunk);
      this.pump();
    } catch (e) {
      if (e instanceof ProtocolError) {
        this.log('warn', 'closing connection: unframeable stream', { peer: this.peer, error: e.message });
        this.close(e.message);
        this.stream.destroy();
        return;
      }
      throw e;
    }
  }

  /** Dispatches whole frames while under the in-flight limit. */
  private pump(): void {
    while (!this.closed && this.inflight.size < this.maxInflight) {
      const frame = this.reader.next();
      if (frame === null) break;
      this.dispatch(frame);
    }
    if (this.inflight.size >= this.maxInflight && !this.paused) {
      this.paused = true;
      this.stream.pause();
    }
  }

  private maybeResume(): void {
    if (this.closed || !this.paused) return;
    if (this.inflight.size >= this.maxInflight || this.stream.writableNeedDrain) return;
    this.paused = false;
    this.pump();
    if (!this.paused) this.stream.resume();
  }

  private dispatch(frame: Buffer): void {
    let msg: Tmessage;
    try {
      msg = decodeT(frame);
    } catch (e) {
      if (e instanceof DecodeError) {
        this.log('debug', 'malformed request', { peer: this.peer, error: e.message, tag: e.tag });
        this.send({ type: 'Rlerror', tag: e.tag, ecode: e.errno });
        return;
      }
      throw e;
    }
    const tag = msg.tag;
    if (msg.type === 'Tversion') {
      // Tversion aborts everything outstanding (intro(5)); it is answered once they are done.
      void this.afterAll().then(() => this.run(msg));
      return;
    }
    if (this.inflight.has(tag)) {
      this.send({ type: 'Rlerror', tag, ecode: Errno.EINVAL });
      return;
    }
    if (msg.type === 'Tflush') {
      const target = this.inflight.get(msg.oldtag);
      const rflush: Rmessage = { type: 'Rflush', tag };
      if (!target) this.send(rflush);
      else void target.done.then(() => this.send(rflush));
      return;
    }
    this.run(msg);
  }

  private run(msg: Tmessage): void {
    const tag = msg.tag;
    const entry: Inflight = {
      done: handle(this.ctx, msg)
        .then(
          (reply) => this.send(reply),
          (e: unknown) => this.send({ type: 'Rlerror', tag, ecode: errnoOf(e) }),
        )
        .finally(() => {
          this.inflight.delete(tag);
          this.maybeResume();
        }),
    };
    this.inflight.set(tag, entry);
    if (this.inflight.size >= this.maxInflight) this.pump();
  }

  private async afterAll(): Promise<void> {
    await Promise.all([...this.inflight.values()].map((i) => i.done));
  }

  private send(reply: Rmessage | Buffer): void {
    if (this.closed || this.stream.destroyed) return;
    const frame = Buffer.isBuffer(reply) ? reply : encodeR(reply);
    // With other requests still running, more replies are likely to finish in this event-loop turn:
    // cork so they leave in one writev (setImmediate runs after this turn's I/O callbacks) instead
    // of one write(2) each. A lone request's reply goes out at once.
    if (!this.corked && this.inflight.size > 1) {
      this.corked = true;
      this.stream.cork();
      setImmediate(() => {
        this.corked = false;
        this.stream.uncork();
      });
    }
    const reusable = Buffer.isBuffer(reply) && this.readBuffers.has(reply.buffer);
    const written = reusable
      ? this.stream.write(frame, (err?: Error | null) => {
          // Handed to the kernel: the buffer is free again (after a failed write it is dropped).
          if (!err && this.spareReadBuffers.length < SPARE_READ_BUFFERS) this.spareReadBuffers.push(Buffer.from(frame.buffer, 0, frame.buffer.byteLength));
        })
      : this.stream.write(frame);
    if (!written && !this.paused) {
      this.paused = true;
      this.stream.pause();
    }
  }

  private releaseAll(): void {
    for (const f of this.ctx.fids.drain()) releaseFid(this.ctx, f);
  }

  /** Ends the connection from the server side. */
  end(): void {
    this.close('server shutting down');
    this.stream.destroy();
  }

  private close(why: string): void {
    if (this.closed) return;
    this.closed = true;
    this.log('info', 'connection closed', { peer: this.peer, why });
    // Fids are released once running requests are done with them.
    void this.afterAll().then(() => {
      this.releaseAll();
      this.finish();
    });
  }
}
