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
// - a guest connecting to another VM's CID C port P is let through only if an --allow rule names
//   C and P; prism then dials the peer VM's own hybrid socket (`CONNECT P` on peers[C]), so no two
//   VMs' backends share memory. The peer guest sees the connection come from the host (CID 2): the
//   hybrid handshake carries no source CID.
// One VMM connection at a time (src/vhost/endpoint.ts): a new one replaces the old (a restarted
// VMM), and in client mode (`connect`) prism connects to a VMM that listens, and reconnects.
import * as fs from 'node:fs';
import * as net from 'node:net';
import type { Duplex } from 'node:stream';
import { Cid, MAX_CONNECT_LINE, encodeOk, parseConnect } from '../codecs/vsock/index.js';
import { dial, listen, type Listener } from '../transport/index.js';
import { VhostUserEndpoint } from '../vhost/endpoint.js';
import { VsockDevice, type VsockDeviceOptions, type VsockEndpoint, type VsockLog, type VsockRouter } from './device.js';

export interface VsockServerOptions {
  /** The vhost-user socket: the VMM connects to it, or with `connect`, listens on it. */
  socket: string;
  /** Client mode: the VMM listens on `socket` (QEMU server=on) and prism connects, and reconnects. */
  connect?: boolean;
  /** Client mode: delay between connection attempts (ms). */
  retryMs?: number;
  /** The guest's CID. */
  cid: number;
  /** The hybrid socket: host programs connect here; guests' connections to port P go to UDS_P. */
  uds: string;
  /** Other VMs' hybrid sockets by CID: a guest reaches peer CID C through `CONNECT P` on peers[C]. */
  peers?: Record<number, string>;
  /** Which VM-to-VM connections are allowed (default deny): this guest to `to`, port `port` or any. */
  allow?: VsockAllow[];
  /** Routes for other destination CIDs, consulted after the host and the peers; default: none. */
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

/** `--allow FROM:TO:PORT`: a guest with CID `from` may connect to CID `to` on `port` ('*': any). */
export interface VsockAllow {
  from: number;
  to: number;
  port: number | '*';
}

export interface VsockServerStatus {
  socket: string;
  uds: string;
  cid: number;
  vmmConnected: boolean;
  counters: VsockDevice['counters'];
  handshakesRefused: number;
  /** Guest connections to a peer VM that no --allow rule lets through. */
  policyDenied: number;
  connections: ReturnType<VsockDevice['connections']>;
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
  private readonly endpoint: VhostUserEndpoint;
  private hybrid: Listener | null = null;
  private handshakes = new Set<Duplex>();
  private handshakesRefused = 0;
  private policyDenied = 0;
  private closed = false;

  constructor(private readonly opts: VsockServerOptions) {
    this.log = opts.log ?? (() => undefined);
    const hostConnectTimeoutMs = opts.hostConnectTimeoutMs ?? 5000;
    const host: VsockEndpoint = {
      connect: (port) => dial({ kind: 'unix', path: `${opts.uds}_${port}` }, { timeoutMs: hostConnectTimeoutMs }),
    };
    const extra = opts.route;
    const peers = new Map<number, VsockEndpoint>();
    for (const [cidText, uds] of Object.entries(opts.peers ?? {})) {
      const cid = Number(cidText);
      if (cid === opts.cid || cid === Cid.HOST) throw new Error(`--peer ${cid}=${uds}: a peer must be another VM's CID, not ${cid === Cid.HOST ? 'the host' : 'this guest'}`);
      // The peer's own hybrid socket: its prism (or cloud-hypervisor) connects us to its guest.
      peers.set(cid, { connect: (port) => dial({ kind: 'hvsock', path: uds, port }, { timeoutMs: hostConnectTimeoutMs }) });
    }
    for (const a of opts.allow ?? []) {
      if (a.from !== opts.cid) throw new Error(`--allow ${a.from}:${a.to}:${a.port}: this device serves CID ${opts.cid}, so the rule can never apply`);
      if (!peers.has(a.to)) throw new Error(`--allow ${a.from}:${a.to}:${a.port}: CID ${a.to} has no --peer ${a.to}=UDS`);
    }
    const allowed = (to: number, port: number): boolean => (opts.allow ?? []).some((a) => a.to === to && (a.port === '*' || a.port === port));
    this.device = new VsockDevice({
      ...opts.device,
      guestCid: opts.cid,
      hostConnectTimeoutMs: opts.device?.hostConnectTimeoutMs ?? hostConnectTimeoutMs + 1000,
      route: (cid, port) => {
        if (cid === Cid.HOST) return host;
        const peer = peers.get(cid);
        if (!peer) return extra?.(cid, port) ?? null;
        if (allowed(cid, port)) return peer;
        this.policyDenied++;
        this.log('warn', `guest ${opts.cid} -> ${cid}:${port} denied by policy (no --allow ${opts.cid}:${cid}:${port})`);
        return null;
      },
      log: this.log,
    });
    this.endpoint = new VhostUserEndpoint(
      {
        path: opts.socket,
        mode: opts.connect ? 'connect' : 'listen',
        log: this.log,
        ...(opts.retryMs === undefined ? {} : { retryMs: opts.retryMs }),
        onSessionEnd: (why) => {
          this.device.disconnected(why === 'replaced' ? 'the VMM reconnected' : 'the VMM disconnected');
          this.log('info', 'VMM session ended', { why, counters: this.device.counters });
        },
      },
      this.device,
    );
  }

  /** Listens on (or connects to) the vhost-user socket, and listens on the hybrid socket. */
  async start(): Promise<void> {
    if (!this.opts.connect) await clearStaleSocket(this.opts.socket);
    this.hybrid = await listen({ kind: 'unix', path: this.opts.uds });
    this.hybrid.on('connection', ({ stream }) => this.handshake(stream));
    this.hybrid.on('error', (e) => this.log('warn', `hybrid socket: accept failed: ${e.message}`));
    try {
      this.endpoint.start();
    } catch (e) {
      await this.hybrid.close();
      throw e;
    }
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
      vmmConnected: this.endpoint.backend !== null,
      counters: this.device.counters,
      handshakesRefused: this.handshakesRefused,
      policyDenied: this.policyDenied,
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
    await this.endpoint.close();
  }
}
