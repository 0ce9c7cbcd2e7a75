// The vsock device as a service with cloud-hypervisor's "hybrid vsock" host side
// (cloud-hypervisor docs/vsock.md, Firecracker docs/vsock.md), so tools written for those VMMs
// work unchanged:
// - the VMM connects to SOCKET (vhost-user; QEMU: -chardev socket,path=SOCKET
//   -device vhost-user-vsock-pci,chardev=...), and the guest gets CID `cid` from the config space;
// - a guest connecting to CID 2 port P reaches the Unix socket UDS_P (refused with RST when nothing
//   listens there);
// - a host program connects to UDS and writes `CONNECT P\n`; once the guest accepts, it reads
//   `OK <host port>\n` and the stream is the connection. If the guest refuses (or does not answer in
//   time) the stream is closed without an answer.
// One VMM connection at a time: a new one replaces the old (a restarted VMM), as the net switch does.
import * as fs from 'node:fs';
import * as net from 'node:net';
import type { Duplex } from 'node:stream';
import { Cid, MAX_CONNECT_LINE, encodeOk, parseConnect } from '../codecs/vsock/index.js';
import * as sys from '../sys/index.js';
import { dial, listen, type Listener } from '../transport/index.js';
import { VhostUserBackend, type VhostUserDevice } from '../vhost/backend.js';
import type { SplitVirtqueue } from '../vhost/virtqueue.js';
import { VsockDevice, type VsockDeviceOptions, type VsockEndpoint, type VsockLog, type VsockRouter } from './device.js';

export interface VsockServerOptions {
  /** The vhost-user socket the VMM connects to. */
  socket: string;
  /** The guest's CID. */
  cid: number;
  /** The hybrid socket: host programs connect here; guests' connections to port P go to UDS_P. */
  uds: string;
  /** Routes for destination CIDs other than 2 (VM-to-VM, later); default: none (refused). */
  route?: VsockRouter;
  /** Device limits and buffer sizes. */
  device?: Omit<VsockDeviceOptions, 'guestCid' | 'route' | 'log'>;
  /** How long a host program may take to send its CONNECT line. Default 5 s. */
  handshakeTimeoutMs?: number;
  /** Host connections allowed to be waiting for their CONNECT line at once. Default 64. */
  maxHandshakes?: number;
  /** How long connecting to UDS_P may take. Default 5 s. */
  hostConnectTimeoutMs?: number;
  log?: VsockLog;
}

export interface VsockServerStatus {
  socket: string;
  uds: string;
  cid: number;
  vmmConnected: boolean;
  counters: VsockDevice['counters'];
  handshakesRefused: number;
  connections: ReturnType<VsockDevice['connections']>;
}

/**
 * The device as one backend connection sees it: while a newer VMM connection has replaced this one,
 * the old backend's late ring stops must not touch the device.
 */
class BackendView implements VhostUserDevice {
  readonly features: bigint;
  readonly queueCount: number;
  readonly featureTable: Readonly<Record<string, number>>;
  constructor(
    private readonly device: VsockDevice,
    private readonly current: () => boolean,
  ) {
    this.features = device.features;
    this.queueCount = device.queueCount;
    this.featureTable = device.featureTable;
  }
  readConfig(offset: number, size: number): Buffer | null {
    return this.device.readConfig(offset, size);
  }
  startQueue(index: number, q: SplitVirtqueue, notify: () => void): void {
    if (this.current()) this.device.startQueue(index, q, notify);
  }
  kick(index: number): void {
    if (this.current()) this.device.kick(index);
  }
  stopQueue(index: number): void {
    if (this.current()) this.device.stopQueue(index);
  }
}

/** Removes a Unix socket file nobody answers on; refuses to touch a live one or a non-socket. */
async function clearStaleSocket(path: string): Promise<void> {
  let st: fs.Stats;
  try {
    st = fs.lstatSync(path);
  } catch {
    return;
  }
  if (!st.isSocket()) throw new Error(`${path} exists and is not a socket: remove it or pick another path`);
  const alive = await new Promise<boolean>((resolve) => {
    const c = net.connect(path);
    c.once('connect', () => {
      c.destroy();
      resolve(true);
    });
    c.once('error', () => resolve(false));
  });
  if (alive) throw new Error(`${path}: another server is listening there`);
  fs.rmSync(path, { force: true });
}

export class VsockServer {
  readonly device: VsockDevice;
  private readonly log: VsockLog;
  private vmmListener: sys.FdListener | null = null;
  private hybrid: Listener | null = null;
  private backend: VhostUserBackend | null = null;
  private vmm: sys.FdSocket | null = null;
  private handshakes = new Set<Duplex>();
  private handshakesRefused = 0;
  private closed = false;

  constructor(private readonly opts: VsockServerOptions) {
    this.log = opts.log ?? (() => undefined);
    const hostConnectTimeoutMs = opts.hostConnectTimeoutMs ?? 5000;
    const host: VsockEndpoint = {
      connect: (port) => dial({ kind: 'unix', path: `${opts.uds}_${port}` }, { timeoutMs: hostConnectTimeoutMs }),
    };
    const extra = opts.route;
    this.device = new VsockDevice({
      ...opts.device,
      guestCid: opts.cid,
      hostConnectTimeoutMs: opts.device?.hostConnectTimeoutMs ?? hostConnectTimeoutMs + 1000,
      route: (cid) => (cid === Cid.HOST ? host : (extra?.(cid) ?? null)),
      log: this.log,
    });
  }

  /** Listens on the vhost-user socket and on the hybrid socket. */
  async start(): Promise<void> {
    await clearStaleSocket(this.opts.socket);
    const l = sys.listenUnix(this.opts.socket);
    this.vmmListener = l;
    l.on('connection', (s: sys.FdSocket) => this.attachVmm(s));
    l.on('error', (e: Error) => this.log('warn', `vhost-user socket: accept failed: ${e.message}`));
    try {
      this.hybrid = await listen({ kind: 'unix', path: this.opts.uds });
    } catch (e) {
      l.close();
      fs.rmSync(this.opts.socket, { force: true });
      throw e;
    }
    this.hybrid.on('connection', ({ stream }) => this.handshake(stream));
    this.hybrid.on('error', (e) => this.log('warn', `hybrid socket: accept failed: ${e.message}`));
  }

  private attachVmm(s: sys.FdSocket): void {
    if (this.vmm) {
      this.log('info', 'a new VMM connection replaces the old one');
      this.vmm.destroy();
      this.device.disconnected('the VMM reconnected');
    }
    this.vmm = s;
    const view = new BackendView(this.device, () => this.vmm === s);
    const be = new VhostUserBackend(s, view, this.log);
    this.backend = be;
    this.log('info', 'VMM connected', { socket: this.opts.socket, cid: this.opts.cid });
    void be.finished.then(() => {
      if (this.vmm !== s) return;
      this.vmm = null;
      this.backend = null;
      this.device.disconnected('the VMM disconnected');
      this.log('info', 'VMM disconnected', { counters: this.device.counters });
    });
  }

  /** Reads a host program's `CONNECT <port>\n`, then hands the stream to the device. */
  private handshake(stream: Duplex): void {
    if (this.closed || this.handshakes.size >= (this.opts.maxHandshakes ?? 64)) {
      this.handshakesRefused++;
      this.log('warn', 'hybrid connection refused: too many connections waiting for their CONNECT line');
      stream.destroy();
      return;
    }
    this.handshakes.add(stream);
    let received = Buffer.alloc(0);
    const cleanup = (): void => {
      clearTimeout(timer);
      this.handshakes.delete(stream);
      stream.off('readable', onReadable);
      stream.off('end', onEnd);
      stream.off('error', onError);
    };
    const fail = (why: string): void => {
      cleanup();
      this.handshakesRefused++;
      this.log('info', `hybrid connection refused: ${why}`);
      stream.destroy();
    };
    // Paused mode, one read at a time: bytes after the newline belong to the guest.
    const onReadable = (): void => {
      let chunk: Buffer | null;
      while ((chunk = stream.read() as Buffer | null) !== null) {
        received = Buffer.concat([received, chunk]);
        let r;
        try {
          r = parseConnect(received);
        } catch (e) {
          fail((e as Error).message);
          return;
        }
        if (!r.done) {
          if (received.length > MAX_CONNECT_LINE) return fail('the CONNECT line is too long');
          continue;
        }
        cleanup();
        this.connectGuest(stream, r.port, r.rest);
        return;
      }
    };
    const onEnd = (): void => fail('the host program closed before sending CONNECT');
    const onError = (e: Error): void => fail(e.message);
    const timer = setTimeout(() => fail(`no CONNECT line within ${this.opts.handshakeTimeoutMs ?? 5000} ms`), this.opts.handshakeTimeoutMs ?? 5000);
    timer.unref();
    stream.on('readable', onReadable);
    stream.on('end', onEnd);
    stream.on('error', onError);
  }

  private connectGuest(stream: Duplex, port: number, rest: Buffer): void {
    this.device
      .connectToGuest(port, stream, {
        initial: rest,
        onEstablished: (localPort) => stream.write(encodeOk(localPort)),
      })
      .then(
        (localPort) => this.log('debug', 'hybrid connection accepted by the guest', { port, localPort }),
        (e: Error) => this.log('info', `hybrid connection to guest port ${port} refused: ${e.message}`),
      );
  }

  status(): VsockServerStatus {
    return {
      socket: this.opts.socket,
      uds: this.opts.uds,
      cid: this.opts.cid,
      vmmConnected: this.vmm !== null,
      counters: this.device.counters,
      handshakesRefused: this.handshakesRefused,
      connections: this.device.connections(),
    };
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const s of this.handshakes) s.destroy();
    this.handshakes.clear();
    this.device.close();
    await this.hybrid?.close();
    this.vmmListener?.close();
    fs.rmSync(this.opts.socket, { force: true });
    const be = this.backend;
    this.vmm?.destroy();
    if (be) await be.finished;
  }
}
