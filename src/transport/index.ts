// Listeners and dialers for every address kind, all yielding Node Duplex
// streams. Servers and clients take an address string and never care which
// kind it is.
import * as net from 'node:net';
import * as fs from 'node:fs';
import { dirname } from 'node:path';
import { EventEmitter, once } from 'node:events';
import type { Duplex } from 'node:stream';
import * as sys from '../sys/index.js';
import { encodeConnect, parseReply } from '../codecs/hvsock.js';
import { type Address, formatAddress, hvsockListenPath, parseAddress } from './address.js';

export * from './address.js';

export class TransportError extends Error {
  override readonly name = 'TransportError';
  readonly code: string;
  readonly address: string;
  constructor(address: string, message: string, code: string, cause?: unknown) {
    super(`${address}: ${message}`, { cause });
    this.address = address;
    this.code = code;
  }
}

function describeFailure(addr: string, action: 'listen on' | 'connect to', e: unknown): TransportError {
  const code = (e as { code?: string }).code ?? 'EIO';
  const hints: Record<string, string> = {
    EADDRINUSE: 'the address is in use: stop the other server or pick another address',
    EACCES: action === 'listen on' ? 'permission denied: run as a user allowed to bind it (TCP ports < 1024 need privileges; a socket path needs a writable directory)' : 'permission denied',
    EADDRNOTAVAIL: 'no such local address (for vsock: is the vsock transport loaded?)',
    ECONNREFUSED: 'nothing is listening there: start the server first',
    ECONNRESET: 'the peer reset the connection (for vsock: nothing is listening on that port)',
    ENOENT: 'no such socket file: start the server first or check the path',
    ENODEV: 'no vsock transport on this machine (load vhost_vsock, vsock_loopback or run in a VM)',
    ETIMEDOUT: 'timed out',
    ENOTSOCK: 'the inherited fd is not a socket',
  };
  // Our own errors carry a specific `detail`; system errors get a hint by code.
  const why = (e as { detail?: string }).detail ?? hints[code] ?? (e instanceof Error ? e.message : String(e));
  return new TransportError(addr, `cannot ${action} it: ${why}`, code, e);
}

/** A peer's description for logs ("tcp:127.0.0.1:50412", "vsock:3:1024", "unix:/run/x.sock"). */
export interface Connection {
  stream: Duplex;
  peer: string;
}

/** Emits 'connection' (Connection) and 'error' (Error); close() stops accepting. */
export interface Listener extends EventEmitter {
  /** The address actually bound (with the real port for tcp port 0). */
  readonly address: string;
  close(): Promise<void>;
  on(event: 'connection', cb: (c: Connection) => void): this;
  on(event: 'error', cb: (e: Error) => void): this;
}

class NodeServerListener extends EventEmitter implements Listener {
  constructor(
    private readonly server: net.Server,
    readonly address: string,
    private readonly cleanupPath?: string,
  ) {
    super();
    server.on('connection', (s: net.Socket) => {
      const peer = s.remoteAddress ? formatAddress({ kind: 'tcp', host: s.remoteAddress, port: s.remotePort ?? 0 }) : address;
      this.emit('connection', { stream: s, peer });
    });
    server.on('error', (e) => this.emit('error', e));
  }
  /** Stops accepting; connections already made carry on until their owners end them. */
  close(): Promise<void> {
    this.server.close();
    if (this.cleanupPath) fs.rmSync(this.cleanupPath, { force: true });
    return Promise.resolve();
  }
}

class FdServerListener extends EventEmitter implements Listener {
  constructor(
    private readonly listener: sys.FdListener,
    readonly address: string,
    private readonly cleanupPath?: string,
  ) {
    super();
    listener.on('connection', (s: sys.FdSocket) => {
      let peer = address;
      try {
        const r = s.remoteAddress();
        if (r.family === 'vsock') peer = `vsock:${r.cid}:${r.port}`;
      } catch {
        // the peer may already be gone; its stream will report that
      }
      this.emit('connection', { stream: s, peer });
    });
    listener.on('error', (e) => this.emit('error', e));
  }
  close(): Promise<void> {
    this.listener.close();
    if (this.cleanupPath) fs.rmSync(this.cleanupPath, { force: true });
    return Promise.resolve();
  }
}

/** An already-connected inherited socket: a "listener" that yields it once. */
class SingleConnectionListener extends EventEmitter implements Listener {
  constructor(
    private stream: Duplex | null,
    readonly address: string,
  ) {
    super();
    // Handed over as soon as someone listens for it, so it cannot be missed.
    const deliver = (event: string | symbol): void => {
      if (event !== 'connection') return;
      this.off('newListener', deliver);
      process.nextTick(() => {
        const stream = this.stream;
        this.stream = null;
        if (stream) this.emit('connection', { stream, peer: address });
      });
    };
    this.on('newListener', deliver);
  }
  close(): Promise<void> {
    this.stream = null;
    return Promise.resolve();
  }
}

/**
 * Removes a stale Unix socket file left by a server that died: only if it is a
 * socket and nothing answers on it. A live server's socket is never touched.
 */
async function removeStaleSocket(path: string): Promise<void> {
  let st: fs.Stats;
  try {
    st = fs.lstatSync(path);
  } catch {
    return;
  }
  if (!st.isSocket()) return;
  const alive = await new Promise<boolean>((resolve) => {
    const c = net.connect(path);
    c.once('connect', () => {
      c.destroy();
      resolve(true);
    });
    c.once('error', () => resolve(false));
  });
  if (!alive) fs.rmSync(path, { force: true });
}

async function listenNode(server: net.Server, options: net.ListenOptions): Promise<void> {
  server.listen(options);
  await Promise.race([once(server, 'listening'), once(server, 'error').then(([e]) => Promise.reject(e as Error))]);
}

async function listenNodeUnix(path: string, shown: string): Promise<Listener> {
  // libuv reports a missing directory as EACCES; say what is really wrong.
  const dir = dirname(path);
  if (!fs.existsSync(dir)) {
    const detail = `the directory ${dir} does not exist: create it first`;
    throw Object.assign(new Error(detail), { code: 'ENOENT', detail });
  }
  const server = net.createServer({ allowHalfOpen: true });
  try {
    await listenNode(server, { path });
  } catch (e) {
    if ((e as { code?: string }).code !== 'EADDRINUSE') throw e;
    await removeStaleSocket(path);
    await listenNode(server, { path });
  }
  return new NodeServerListener(server, shown, path);
}

export interface ListenOptions {
  /** For unix: the socket file's mode (default: as the umask leaves it). */
  mode?: number;
}

/** Listens on any address kind. Errors say which address failed and what to do. */
export async function listen(address: string | Address, opts: ListenOptions = {}): Promise<Listener> {
  const a = typeof address === 'string' ? parseAddress(address) : address;
  const shown = formatAddress(a);
  try {
    switch (a.kind) {
      case 'tcp': {
        const server = net.createServer({ allowHalfOpen: true });
        await listenNode(server, { host: a.host, port: a.port });
        const bound = server.address() as net.AddressInfo;
        return new NodeServerListener(server, formatAddress({ kind: 'tcp', host: bound.address, port: bound.port }));
      }
      case 'unix': {
        const l = await listenNodeUnix(a.path, shown);
        if (opts.mode !== undefined) fs.chmodSync(a.path, opts.mode);
        return l;
      }
      case 'vsock':
        return new FdServerListener(sys.listenVsock(a.cid, a.port), shown);
      case 'hvsock': {
        // The VMM connects to PATH_PORT for each guest-initiated connection to PORT.
        const path = hvsockListenPath(a);
        const l = await listenNodeUnix(path, shown);
        if (opts.mode !== undefined) fs.chmodSync(path, opts.mode);
        return l;
      }
      case 'fd':
        return listenFd(a.fd, shown);
    }
  } catch (e) {
    throw describeFailure(shown, 'listen on', e);
  }
}

function listenFd(fd: number, shown: string): Listener {
  const info = sys.socketInfo(fd);
  if (info.type !== 'stream') throw new TransportError(shown, `the inherited fd is a ${info.type} socket; prism needs a stream socket`, 'EPROTOTYPE');
  if (info.listening) {
    if (info.domain === 'vsock') return new FdServerListener(sys.adoptListener(fd), shown);
    const server = net.createServer({ allowHalfOpen: true });
    server.listen({ fd });
    return new NodeServerListener(server, shown);
  }
  return new SingleConnectionListener(adoptConnected(fd, info), shown);
}

function adoptConnected(fd: number, info: sys.SocketInfo): Duplex {
  if (info.domain === 'vsock') return sys.adoptSocket(fd);
  return new net.Socket({ fd, readable: true, writable: true, allowHalfOpen: true });
}

export interface DialOptions {
  /** Give up after this long (default 10 s). */
  timeoutMs?: number;
}

/** Connects to any address kind and resolves to a connected stream. */
export async function dial(address: string | Address, opts: DialOptions = {}): Promise<Duplex> {
  const a = typeof address === 'string' ? parseAddress(address) : address;
  const shown = formatAddress(a);
  const timeoutMs = opts.timeoutMs ?? 10_000;
  const signal = AbortSignal.timeout(timeoutMs);
  try {
    return await dialNow(a, signal);
  } catch (e) {
    throw describeFailure(shown, 'connect to', signal.aborted ? timedOut() : e);
  }
}

function timedOut(): Error {
  return Object.assign(new Error('timed out'), { code: 'ETIMEDOUT' });
}

async function dialNow(a: Address, signal: AbortSignal): Promise<Duplex> {
  switch (a.kind) {
    case 'tcp':
      return connectNode(net.connect({ host: a.host, port: a.port, allowHalfOpen: true }), signal);
    case 'unix':
      return connectNode(net.connect({ path: a.path, allowHalfOpen: true }), signal);
    case 'vsock': {
      // The kernel bounds a vsock connect itself (2 s by default); a late
      // success after our timeout is closed rather than leaked.
      const attempt = sys.connectVsock(a.cid, a.port);
      return abortable(attempt, signal, (s) => s.destroy());
    }
    case 'hvsock':
      return hvsockConnect(await connectNode(net.connect({ path: a.path, allowHalfOpen: true }), signal), a.port, signal);
    case 'fd': {
      const info = sys.socketInfo(a.fd);
      if (info.listening || info.type !== 'stream') {
        const detail = 'the inherited fd is not a connected stream socket';
        throw Object.assign(new Error(detail), { code: 'ENOTCONN', detail });
      }
      return adoptConnected(a.fd, info);
    }
  }
}

function abortable<T>(p: Promise<T>, signal: AbortSignal, dispose: (v: T) => void): Promise<T> {
  return new Promise((resolve, reject) => {
    const onAbort = (): void => reject(timedOut());
    signal.addEventListener('abort', onAbort, { once: true });
    p.then(
      (v) => {
        signal.removeEventListener('abort', onAbort);
        if (signal.aborted) dispose(v);
        else resolve(v);
      },
      (e: Error) => {
        signal.removeEventListener('abort', onAbort);
        reject(e);
      },
    );
  });
}

function connectNode(s: net.Socket, signal: AbortSignal): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const onError = (e: Error): void => {
      signal.removeEventListener('abort', onAbort);
      reject(e);
    };
    const onAbort = (): void => {
      s.destroy();
      reject(timedOut());
    };
    signal.addEventListener('abort', onAbort, { once: true });
    s.once('error', onError);
    s.once('connect', () => {
      signal.removeEventListener('abort', onAbort);
      s.off('error', onError);
      resolve(s);
    });
  });
}

/**
 * The host side of the hybrid-vsock handshake on a connected stream: send
 * `CONNECT <port>\n`, read `OK <n>\n`. Bytes after the reply stay in the stream.
 */
export function hvsockConnect(s: Duplex, port: number, signal?: AbortSignal): Promise<Duplex> {
  // Paused mode ('readable' + read()) so that, once the listener is removed,
  // the stream is back to its initial state and a later 'data' listener or
  // pipe() sees the bytes that followed the reply.
  return new Promise((resolve, reject) => {
    let received = Buffer.alloc(0);
    const cleanup = (): void => {
      signal?.removeEventListener('abort', onAbort);
      s.off('readable', onReadable);
      s.off('end', onEnd);
      s.off('error', onError);
    };
    const fail = (e: Error): void => {
      cleanup();
      s.destroy();
      reject(e);
    };
    const onReadable = (): void => {
      let chunk: Buffer | null;
      while ((chunk = s.read() as Buffer | null) !== null) {
        received = Buffer.concat([received, chunk]);
        let r;
        try {
          r = parseReply(received);
        } catch (e) {
          fail(e as Error);
          return;
        }
        if (!r.done) continue;
        cleanup();
        if (r.rest.length > 0) s.unshift(r.rest);
        resolve(s);
        return;
      }
    };
    const onEnd = (): void => {
      const detail = `the VMM closed the connection without answering OK to CONNECT ${port}: is a guest listening on vsock port ${port}?`;
      fail(Object.assign(new Error(detail), { code: 'ECONNREFUSED', detail }));
    };
    const onError = (e: Error): void => fail(e);
    const onAbort = (): void => fail(timedOut());
    signal?.addEventListener('abort', onAbort, { once: true });
    s.on('readable', onReadable);
    s.once('end', onEnd);
    s.once('error', onError);
    s.write(encodeConnect(port));
  });
}

/**
 * The kernel socket under a dialled or accepted connection, for handing to the kernel (the 9p
 * client's trans=fd, vhci-hcd's attach); null if there is none.
 */
export function connectionFd(stream: Duplex): number | null {
  if (stream instanceof sys.FdSocket) return stream.fd; // vsock, and inherited vsock fds
  if (stream instanceof net.Socket) {
    // tcp, unix, hvsock, inherited unix/inet fds: Node keeps the fd on the libuv handle and has
    // no public accessor for it. A handle without one (another platform) gets null.
    const fd = (stream as unknown as { _handle?: { fd?: unknown } })._handle?.fd;
    return typeof fd === 'number' && Number.isInteger(fd) && fd >= 0 ? fd : null;
  }
  return null;
}
