// Sockets Node lacks, as Node streams: AF_VSOCK stream sockets and AF_UNIX
// stream sockets that carry fds (SCM_RIGHTS). Driven by libuv readiness
// (a uv_poll_t per fd); every syscall is non-blocking, no threads involved.
import { Duplex } from 'node:stream';
import { EventEmitter } from 'node:events';
import { C, native, type NativePoller, type NativeSockAddr } from './binding.js';
import { SysError, errnoName, sync } from './errors.js';
import * as v from './validate.js';

const READ_CHUNK = 64 * 1024;
/** Most fds accepted with one message (the kernel's SCM_MAX_FD). */
export const MAX_FDS_PER_MESSAGE = 253;
const SUN_PATH_MAX = 107;

export type SocketAddress =
  | { family: 'vsock'; cid: number; port: number }
  | { family: 'unix'; path: string }
  | { family: 'other'; domain: number };

function toAddress(a: NativeSockAddr): SocketAddress {
  if (a.family === C.AF_VSOCK) return { family: 'vsock', cid: a.cid ?? 0, port: a.port ?? 0 };
  if (a.family === C.AF_UNIX) return { family: 'unix', path: a.path?.toString('utf8') ?? '' };
  return { family: 'other', domain: a.family };
}

const EBADF = 9;

/**
 * The errno behind a poll event: the socket's pending error (SO_ERROR, which also clears it), else
 * the poll status (libuv's -errno), else 0. libuv reports POLLERR as UV_EBADF without asking the
 * socket, so a refused or reset connect (vsock answers an unbound port with a reset) would
 * otherwise surface as EBADF.
 */
function pollErrno(fd: number, status: number): number {
  let soError: number;
  try {
    soError = native.getsockoptInt(fd, C.SO_ERROR);
  } catch (e) {
    soError = (e as { errno?: number }).errno ?? 0;
  }
  return soError !== 0 ? soError : status < 0 ? -status : 0;
}

function pollError(fd: number, status: number, syscall: string): SysError {
  const errno = pollErrno(fd, status);
  return new SysError(errnoName(errno), errno, syscall);
}

/** EBADF for an fd we already closed: its number may belong to another file by now. */
function closedError(syscall: string): SysError {
  return new SysError(errnoName(EBADF), EBADF, syscall);
}

/**
 * A connected, non-blocking stream socket as a Duplex. Received fds are
 * emitted as an `fds` event just before the bytes they arrived with; the
 * listener owns them (closes them if unused). Without an `fds` listener they
 * are closed on arrival. Use writeWithFds() to send fds.
 */
export class FdSocket extends Duplex {
  readonly fd: number;
  private poller: NativePoller;
  private wantRead = false;
  private pendingWrite: { buf: Buffer; offset: number; fds: number[]; cb: (err?: Error | null) => void } | null = null;
  private readonly fdsFor = new WeakMap<Buffer, number[]>();
  private interest = 0;
  private released = false;
  /** Receive fds (SCM_RIGHTS)? Only meaningful on AF_UNIX; off for vsock. */
  private readonly acceptFds: boolean;
  private readBuf = Buffer.allocUnsafe(READ_CHUNK);
  /** Received fds by the chunk they arrived with, until that chunk is emitted (see holdFds). */
  private readonly heldFds = new Map<Buffer, number[]>();

  constructor(fd: number, opts: { acceptFds?: boolean } = {}) {
    super({ allowHalfOpen: true });
    this.fd = v.fd(fd);
    this.acceptFds = opts.acceptFds ?? false;
    this.poller = sync(() => new native.Poller(this.fd, (status, events) => this.onPoll(status, events)));
  }

  /** Queues `data` to be sent with `fds` attached (SCM_RIGHTS); the fds stay owned by the caller. */
  writeWithFds(data: Buffer, fds: number[], cb?: (err?: Error | null) => void): boolean {
    if (!Buffer.isBuffer(data) || data.length === 0) throw new TypeError('writeWithFds needs a non-empty Buffer: fds ride on bytes');
    if (!Array.isArray(fds) || fds.length > MAX_FDS_PER_MESSAGE) throw new RangeError(`fds must be an array of at most ${MAX_FDS_PER_MESSAGE}`);
    fds.forEach((f, i) => v.fd(f, `fds[${i}]`));
    // A fresh Buffer object so the WeakMap key is this chunk and no other.
    const chunk = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
    this.fdsFor.set(chunk, [...fds]);
    return cb ? this.write(chunk, cb) : this.write(chunk);
  }

  localAddress(): SocketAddress {
    if (this.released) throw closedError('getsockname');
    return toAddress(sync(() => native.getsockname(this.fd)));
  }

  remoteAddress(): SocketAddress {
    if (this.released) throw closedError('getpeername');
    return toAddress(sync(() => native.getpeername(this.fd)));
  }

  private setInterest(): void {
    if (this.released) return;
    const mask = (this.wantRead ? C.UV_READABLE : 0) | (this.pendingWrite ? C.UV_WRITABLE : 0);
    if (mask === this.interest) return;
    this.interest = mask;
    if (mask === 0) this.poller.stop();
    else this.poller.start(mask);
  }

  private onPoll(status: number, events: number): void {
    if (this.released) return;
    if (status < 0) {
      this.destroy(pollError(this.fd, status, 'poll'));
      return;
    }
    if (events & C.UV_WRITABLE) this.flushWrite();
    if (events & C.UV_READABLE && this.wantRead) this.readNow();
  }

  private readNow(): void {
    while (this.wantRead && !this.released) {
      let r;
      try {
        r = sync(() => native.recvmsg(this.fd, this.readBuf, 0, this.readBuf.length, this.acceptFds ? MAX_FDS_PER_MESSAGE : 0));
      } catch (e) {
        this.destroy(e as Error);
        return;
      }
      if (r === null) break; // would block: wait for readiness
      if (r.bytes === 0) {
        if (r.fds.length > 0) this.closeFds(r.fds);
        this.wantRead = false;
        this.setInterest();
        this.push(null);
        return;
      }
      const chunk = Buffer.from(this.readBuf.subarray(0, r.bytes));
      if (r.fds.length > 0) this.holdFds(chunk, r.fds);
      if (!this.push(chunk)) this.wantRead = false;
    }
    this.setInterest();
  }

  /**
   * Keeps received fds with the chunk they came with, to be announced ('fds') right before that
   * chunk's 'data' event. They cannot be announced at once: a chunk pushed from inside _read() is
   * buffered by Readable and delivered later, after chunks read earlier, so fds announced at
   * recvmsg time would be taken for an earlier message's (a vhost-user frontend's SET_VRING_KICK
   * fd landing on the SET_VRING_ADDR before it). Nobody listening means nobody will ever close
   * them, so they are closed here: a peer cannot fill our fd table by sending fds we did not ask for.
   */
  private holdFds(chunk: Buffer, fds: number[]): void {
    if (this.listenerCount('fds') > 0) this.heldFds.set(chunk, fds);
    else this.closeFds(fds);
  }

  override emit(event: string | symbol, ...args: unknown[]): boolean {
    if (event === 'data' && this.heldFds.size > 0) {
      const fds = this.heldFds.get(args[0] as Buffer);
      if (fds) {
        this.heldFds.delete(args[0] as Buffer);
        super.emit('fds', fds);
      }
    }
    return super.emit(event, ...args);
  }

  private closeFds(fds: number[]): void {
    for (const f of fds) {
      try {
        native.close(f);
      } catch {
        // already gone
      }
    }
  }

  override _read(): void {
    this.wantRead = true;
    // Try at once: data may already be waiting, and level-triggered polling
    // would report it anyway, one loop turn later.
    this.readNow();
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    const fds = this.fdsFor.get(chunk) ?? [];
    this.pendingWrite = { buf: chunk, offset: 0, fds, cb };
    this.flushWrite();
  }

  private flushWrite(): void {
    const w = this.pendingWrite;
    if (!w) {
      this.setInterest();
      return;
    }
    while (w.offset < w.buf.length) {
      let n: number | null;
      try {
        n = sync(() => native.sendmsg(this.fd, w.buf, w.offset, w.buf.length - w.offset, w.fds));
      } catch (e) {
        this.pendingWrite = null;
        this.setInterest();
        w.cb(e as Error);
        return;
      }
      if (n === null) {
        this.setInterest(); // wait for writable
        return;
      }
      if (n > 0) w.fds = []; // fds went with the first bytes
      w.offset += n;
    }
    this.pendingWrite = null;
    this.setInterest();
    w.cb();
  }

  override _final(cb: (err?: Error | null) => void): void {
    try {
      sync(() => native.shutdown(this.fd, C.SHUT_WR));
      cb();
    } catch (e) {
      // The peer may already be gone; finishing our side is still done.
      if (e instanceof SysError && e.is('ENOTCONN')) cb();
      else cb(e as Error);
    }
  }

  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    if (!this.released) {
      this.released = true;
      this.poller.close();
      const w = this.pendingWrite;
      this.pendingWrite = null;
      try {
        native.close(this.fd);
      } catch {
        // already closed by the kernel's view: nothing left to release
      }
      if (w) w.cb(err ?? new SysError('EPIPE', 32, 'sendmsg'));
      // Fds of chunks that will never be emitted.
      for (const fds of this.heldFds.values()) this.closeFds(fds);
      this.heldFds.clear();
    }
    cb(err);
  }
}

/** A listening socket emitting `connection` with an FdSocket per accepted peer. */
export class FdListener extends EventEmitter {
  readonly fd: number;
  private poller: NativePoller;
  private released = false;
  private readonly acceptFds: boolean;

  constructor(fd: number, opts: { acceptFds?: boolean } = {}) {
    super();
    this.fd = v.fd(fd);
    this.acceptFds = opts.acceptFds ?? false;
    this.poller = sync(() => new native.Poller(this.fd, (status) => this.onReadable(status)));
    this.poller.start(C.UV_READABLE);
  }

  address(): SocketAddress {
    if (this.released) throw closedError('getsockname');
    return toAddress(sync(() => native.getsockname(this.fd)));
  }

  private onReadable(status: number): void {
    if (this.released) return;
    if (status < 0) {
      this.emit('error', pollError(this.fd, status, 'accept4'));
      return;
    }
    for (;;) {
      let fd: number | null;
      try {
        fd = sync(() => native.accept(this.fd));
      } catch (e) {
        // EMFILE and friends: report, keep listening (the next readiness retries).
        this.emit('error', e);
        return;
      }
      if (fd === null) return;
      this.emit('connection', new FdSocket(fd, { acceptFds: this.acceptFds }));
    }
  }

  close(): void {
    if (this.released) return;
    this.released = true;
    this.poller.close();
    try {
      native.close(this.fd);
    } catch {
      // nothing more to release
    }
    this.emit('close');
  }
}

function unixPathBytes(path: string): Buffer {
  const b = v.pathBytes(path, 'unix socket path');
  if (b.length === 0 || b.length > SUN_PATH_MAX) {
    throw new RangeError(`unix socket path must be 1..${SUN_PATH_MAX} bytes, got ${b.length}: '${path}' (use a shorter directory)`);
  }
  return b;
}

function vsockArgs(cid: number, port: number): [number, number] {
  return [v.u32(cid, 'cid'), v.u32(port, 'port')];
}

function withFd<T>(fd: number, fn: () => T): T {
  try {
    return fn();
  } catch (e) {
    native.close(fd);
    throw e;
  }
}

/** Waits for a non-blocking connect to finish (writable), then checks SO_ERROR. */
function finishConnect(fd: number, rc: number, what: string, opts: { acceptFds: boolean }): Promise<FdSocket> {
  if (rc === 0) return Promise.resolve(new FdSocket(fd, opts));
  return new Promise((resolve, reject) => {
    const poller = sync(() => new native.Poller(fd, (status) => {
      poller.close();
      const err = pollErrno(fd, status);
      if (err !== 0) {
        native.close(fd);
        reject(new SysError(errnoName(err), err, 'connect', what));
        return;
      }
      resolve(new FdSocket(fd, opts));
    }));
    poller.start(C.UV_WRITABLE);
  });
}

export function listenVsock(cid: number, port: number, backlog = 128): FdListener {
  const [c, p] = vsockArgs(cid, port);
  const fd = sync(() => native.socket(C.AF_VSOCK, C.SOCK_STREAM));
  return withFd(fd, () => {
    sync(() => native.bind(fd, C.AF_VSOCK, c, p), `vsock:${c}:${p}`);
    sync(() => native.listen(fd, v.int(backlog, 'backlog', 1, 65535)));
    return new FdListener(fd);
  });
}

export async function connectVsock(cid: number, port: number): Promise<FdSocket> {
  const [c, p] = vsockArgs(cid, port);
  const fd = sync(() => native.socket(C.AF_VSOCK, C.SOCK_STREAM));
  const rc = withFd(fd, () => sync(() => native.connect(fd, C.AF_VSOCK, c, p), `vsock:${c}:${p}`));
  return finishConnect(fd, rc, `vsock:${c}:${p}`, { acceptFds: false });
}

/** An AF_UNIX stream listener whose connections can carry fds. */
export function listenUnix(path: string, backlog = 128): FdListener {
  const b = unixPathBytes(path);
  const fd = sync(() => native.socket(C.AF_UNIX, C.SOCK_STREAM));
  return withFd(fd, () => {
    sync(() => native.bind(fd, C.AF_UNIX, b), path);
    sync(() => native.listen(fd, v.int(backlog, 'backlog', 1, 65535)));
    return new FdListener(fd, { acceptFds: true });
  });
}

export async function connectUnix(path: string): Promise<FdSocket> {
  const b = unixPathBytes(path);
  const fd = sync(() => native.socket(C.AF_UNIX, C.SOCK_STREAM));
  const rc = withFd(fd, () => sync(() => native.connect(fd, C.AF_UNIX, b), path));
  return finishConnect(fd, rc, path, { acceptFds: true });
}

/** A connected pair of AF_UNIX stream sockets that carry fds. */
export function unixSocketPair(): [FdSocket, FdSocket] {
  const [a, b] = sync(() => native.socketpair(C.AF_UNIX, C.SOCK_STREAM));
  return [new FdSocket(a, { acceptFds: true }), new FdSocket(b, { acceptFds: true })];
}

export interface SocketInfo {
  domain: 'unix' | 'inet' | 'inet6' | 'vsock' | 'other';
  type: 'stream' | 'dgram' | 'seqpacket' | 'other';
  listening: boolean;
}

/** What kind of socket an inherited fd is (for `fd:N` addresses). ENOTSOCK if it is none. */
export function socketInfo(fd: number): SocketInfo {
  const f = v.fd(fd);
  const domain = sync(() => native.getsockoptInt(f, C.SO_DOMAIN), `fd:${f}`);
  const type = sync(() => native.getsockoptInt(f, C.SO_TYPE), `fd:${f}`);
  const listening = sync(() => native.getsockoptInt(f, C.SO_ACCEPTCONN), `fd:${f}`) !== 0;
  const domains: Record<number, SocketInfo['domain']> = { [C.AF_UNIX]: 'unix', [C.AF_INET]: 'inet', [C.AF_INET6]: 'inet6', [C.AF_VSOCK]: 'vsock' };
  const types: Record<number, SocketInfo['type']> = { [C.SOCK_STREAM]: 'stream', [C.SOCK_DGRAM]: 'dgram', [C.SOCK_SEQPACKET]: 'seqpacket' };
  return { domain: domains[domain] ?? 'other', type: types[type] ?? 'other', listening };
}

/** Wraps an inherited, connected stream socket fd (vsock or unix) as an FdSocket. */
export function adoptSocket(fd: number): FdSocket {
  const info = socketInfo(fd);
  if (info.type !== 'stream' || info.listening) throw new RangeError(`fd:${fd} is not a connected stream socket (${info.domain} ${info.type}${info.listening ? ', listening' : ''})`);
  sync(() => native.setNonblock(fd), `fd:${fd}`);
  return new FdSocket(fd, { acceptFds: info.domain === 'unix' });
}

/** Wraps an inherited listening stream socket fd (vsock or unix) as an FdListener. */
export function adoptListener(fd: number): FdListener {
  const info = socketInfo(fd);
  if (info.type !== 'stream' || !info.listening) throw new RangeError(`fd:${fd} is not a listening stream socket (${info.domain} ${info.type})`);
  sync(() => native.setNonblock(fd), `fd:${fd}`);
  return new FdListener(fd, { acceptFds: info.domain === 'unix' });
}

/** This machine's vsock CID (from /dev/vsock); a SysError when there is no vsock transport. */
export function vsockLocalCid(): number {
  return sync(() => native.vsockLocalCid(), '/dev/vsock');
}

/** AF_VSOCK's own socket options (level AF_VSOCK, u64 values; include/uapi/linux/vm_sockets.h). */
export const VSOCK_OPT = { BUFFER_SIZE: 0, BUFFER_MIN_SIZE: 1, BUFFER_MAX_SIZE: 2 } as const;

const INT32_MIN = -0x8000_0000;
const INT32_MAX = 0x7fff_ffff;

/** setsockopt(fd, level, option) with an int value (SO_RCVBUF, SO_SNDBUF, TCP_NODELAY...). */
export function setsockoptInt(fd: number, level: number, option: number, value: number): void {
  const f = v.fd(fd);
  const l = v.int(level, 'level', 0, INT32_MAX);
  const o = v.int(option, 'option', 0, INT32_MAX);
  const val = v.int(value, 'value', INT32_MIN, INT32_MAX);
  sync(() => native.setsockoptInt(f, l, o, val), `fd:${f}`);
}

/** setsockopt(fd, level, option) with a u64 value (AF_VSOCK's SO_VM_SOCKETS_BUFFER_*). */
export function setsockoptU64(fd: number, level: number, option: number, value: bigint | number): void {
  const f = v.fd(fd);
  const l = v.int(level, 'level', 0, INT32_MAX);
  const o = v.int(option, 'option', 0, INT32_MAX);
  const val = v.bigU64(value, 'value');
  sync(() => native.setsockoptU64(f, l, o, val), `fd:${f}`);
}

/** getsockopt(fd, level, option) of a u64 value; EINVAL if the option is not 8 bytes long. */
export function getsockoptU64(fd: number, level: number, option: number): bigint {
  const f = v.fd(fd);
  const l = v.int(level, 'level', 0, INT32_MAX);
  const o = v.int(option, 'option', 0, INT32_MAX);
  return sync(() => native.getsockoptU64(f, l, o), `fd:${f}`);
}

/**
 * Sets an AF_VSOCK socket's buffer, the receive space it advertises to its peer (buf_alloc on
 * virtio-vsock; 256 KiB by default, which is also the default maximum). Raises
 * SO_VM_SOCKETS_BUFFER_MAX_SIZE first (the kernel clamps SIZE to [MIN, MAX]), then sets
 * SO_VM_SOCKETS_BUFFER_SIZE; on a connected virtio socket the kernel sends the peer a credit update.
 * Returns the size now in effect (the kernel's or the transport's clamp may make it smaller).
 */
export function setVsockBufferSize(fd: number, bytes: bigint | number): bigint {
  const f = v.fd(fd);
  const size = v.bigU64(bytes, 'bytes');
  const max = getsockoptU64(f, C.AF_VSOCK, VSOCK_OPT.BUFFER_MAX_SIZE);
  if (size > max) setsockoptU64(f, C.AF_VSOCK, VSOCK_OPT.BUFFER_MAX_SIZE, size);
  setsockoptU64(f, C.AF_VSOCK, VSOCK_OPT.BUFFER_SIZE, size);
  return getsockoptU64(f, C.AF_VSOCK, VSOCK_OPT.BUFFER_SIZE);
}
