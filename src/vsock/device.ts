// virtio-vsock as a vhost-user device (virtio 1.2 §5.10; QEMU `-device vhost-user-vsock-pci`):
// queue 0 receives into the guest, queue 1 transmits from it, queue 2 carries events; the config
// space holds the guest's CID. The device is the muxer: it checks every packet the guest sends,
// routes connection requests by destination CID to a pluggable endpoint (the hybrid host side,
// later other VMs), keeps one VsockConnection state machine per connection and moves data
// between them and the host streams, with back-pressure both ways.
//
// Choices where the spec leaves room (written down here, as the issues ask):
// - A packet whose src_cid is not the guest's own is dropped and counted (spoofing); nothing is
//   sent back to an address the guest made up.
// - A packet that cannot be read (shorter than the header, reserved CID bits set) is dropped; one
//   with a bad len, an unknown type or op is answered with RST (and ends its connection, if any).
//   So is any packet but REQUEST/RST for a connection that does not exist (Linux does the same).
// - Connection key: (local CID, local port, guest CID, guest port); local = the side the guest
//   addressed. Host-initiated connections get local ports from 2^30 up (cloud-hypervisor's range).
// - Limits: connections in all (default 256) and connections being set up (default 32); a REQUEST
//   over either is refused with RST and counted. A host connection to the hybrid side is refused
//   the same way (its stream is closed).
// - Back-pressure, guest → host: the guest may only have buf_alloc unforwarded bytes per
//   connection (credit), so what we hold for a slow host program is bounded; the state machine
//   resets a guest that exceeds it. RSTs owed to the guest for packets that have no connection
//   wait in a bounded queue: when it is full, transmit processing stops (chains stay in the ring)
//   until receive buffers drain it, as vhost-vsock does.
// - Back-pressure, host → guest: a host stream is paused once 64 KiB wait for the guest's credit
//   or receive buffers, and resumed as they drain (on the guest's receive-queue kick).
// - Driver resets: a ring that restarts at avail index 0 after running means the driver was
//   re-initialised (guest reboot): connections are dropped without RST (the guest knows none). A
//   ring that starts at an index we did not stop it at means the driver ran with a backend whose
//   state we do not have (we restarted, or the VMM reconnected): connections are dropped and the
//   guest gets VIRTIO_VSOCK_EVENT_TRANSPORT_RESET so it resets its sockets (§5.10.6.7).
import type { Duplex } from 'node:stream';
import { featureMask } from '../codecs/vhost-user/index.js';
import {
  Cid, EVENT_SIZE, EventId, HEADER_SIZE, MAX_GUEST_CID, MAX_PKT_PAYLOAD, MIN_GUEST_CID, Op, Queue, SocketType, VsockDecodeError, VsockFeature,
  decodePacket, describeHeader, encodeConfig, encodeEvent, encodeHeader, opName, type VsockHeader, type VsockDecodeReason,
} from '../codecs/vsock/index.js';
import type { VhostUserDevice } from '../vhost/backend.js';
import { QueueBroken, scatter, type SplitVirtqueue } from '../vhost/virtqueue.js';
import { DEFAULT_BUF_ALLOC, DEFAULT_HOST_QUEUE_LIMIT, VsockConnection, type ConnectionCounters, type HostAction, type OutgoingPacket } from './connection.js';

export const VIRTIO_F_VERSION_1 = 32;
export const VIRTIO_RING_F_INDIRECT_DESC = 28;
export const VIRTIO_RING_F_EVENT_IDX = 29;

/** Where a guest's connections to one CID go. */
export interface VsockEndpoint {
  /**
   * Opens the host side for the guest connecting to `port` on this endpoint, from `from`.
   * Resolve with the stream the connection carries; reject to refuse (the guest gets RST).
   */
  connect(port: number, from: { cid: number; port: number }): Promise<Duplex>;
}

/**
 * The device's routing and policy: the endpoint serving a guest's connection to dstCid:dstPort, or
 * null to refuse it (the guest gets RST).
 */
export type VsockRouter = (dstCid: number, dstPort: number) => VsockEndpoint | null;

export type VsockLog = (level: 'info' | 'warn' | 'debug', msg: string, fields?: Record<string, unknown>) => void;

export interface VsockDeviceOptions {
  /** The guest's CID (config space), 3..0xfffffffe. */
  guestCid: number;
  route: VsockRouter;
  /** Per-connection buffer for guest data (buf_alloc). Default 256 KiB. */
  bufAlloc?: number;
  /** Host bytes queued per connection before its stream is paused. Default 64 KiB. */
  hostQueueLimit?: number;
  /** Connections in all. Default 256. */
  maxConnections?: number;
  /** Connections being set up (either side waiting). Default 32. */
  maxPendingRequests?: number;
  /** How long a host-initiated REQUEST waits for the guest's answer. Default 5 s. */
  requestTimeoutMs?: number;
  /** How long a guest's REQUEST waits for the endpoint to connect. Default 5 s. */
  hostConnectTimeoutMs?: number;
  /** How long a graceful close may wait for the host stream to take its last bytes. Default 10 s. */
  closeTimeoutMs?: number;
  /** RSTs for connection-less packets held while the guest has no receive buffers. Default 256. */
  maxControlBacklog?: number;
  log?: VsockLog;
  /**
   * Sees every packet as raw bytes (header and payload): 'from-guest' as the guest sent it (before
   * any check; cut at 44 + 64 KiB bytes), 'to-guest' as written into a receive buffer. For
   * debugging and captures.
   */
  tap?: (direction: 'from-guest' | 'to-guest', bytes: Buffer) => void;
}

/** Why a guest packet was dropped or refused; each has a counter. */
export type DropReason =
  | VsockDecodeReason
  | 'spoofed'
  | 'no-route'
  | 'no-connection'
  | 'connection-limit'
  | 'request-limit'
  | 'violation'
  | 'rx-buffer'
  | 'event-buffer';

const DROP_REASONS: readonly DropReason[] = [
  'short', 'cid', 'length', 'too-long', 'type', 'op', 'spoofed', 'no-route', 'no-connection', 'connection-limit', 'request-limit', 'violation', 'rx-buffer', 'event-buffer',
];

export interface VsockDeviceCounters {
  packetsFromGuest: number;
  packetsToGuest: number;
  bytesFromGuest: number;
  bytesToGuest: number;
  /** Connections that reached the established state. */
  connectionsOpened: number;
  /** Connection requests refused (either direction): nothing listening, limits, no route, timeouts. */
  connectionsRefused: number;
  connectionsClosed: number;
  resetsSent: number;
  transportResets: number;
  drops: Record<DropReason, number>;
}

export interface ConnectionInfo {
  local: string;
  guest: string;
  initiator: 'guest' | 'host';
  state: string;
  counters: ConnectionCounters;
  queuedToGuest: number;
  unforwarded: number;
}

export interface ConnectToGuestOptions {
  /** The CID the guest sees the connection come from; default 2 (the host). */
  localCid?: number;
  /** Bytes the host program sent already (after its CONNECT line), for the guest. */
  initial?: Buffer;
  /** Called when the guest accepts, before any guest data is written to the stream. */
  onEstablished?: (localPort: number) => void;
}

/** A host-initiated connection request the guest refused or never answered. */
export class GuestRefusedError extends Error {
  override readonly name = 'GuestRefusedError';
  readonly code = 'ERR_VSOCK_REFUSED';
}

interface Conn {
  key: string;
  sm: VsockConnection;
  initiator: 'guest' | 'host';
  stream: Duplex | null;
  paused: boolean;
  /** The stream is gone (closed or destroyed): nothing more can be written to or read from it. */
  streamClosed: boolean;
  /** The stream's readable side ended normally. */
  streamEnded: boolean;
  closing: boolean;
  timer: NodeJS.Timeout | null;
  openedAt: number;
  established: boolean;
  settle: { resolve: (port: number) => void; reject: (e: Error) => void; onEstablished?: (localPort: number) => void } | null;
}

interface Ring {
  q: SplitVirtqueue;
  notify: () => void;
}

const FIRST_HOST_PORT = 0x4000_0000;
const HOST_PORT_SPAN = 0x4000_0000;
const RETRY_MS = 50;

function keyOf(localCid: number, localPort: number, peerCid: number, peerPort: number): string {
  return `${localCid}:${localPort}/${peerCid}:${peerPort}`;
}

export class VsockDevice implements VhostUserDevice {
  readonly features = featureMask(VIRTIO_F_VERSION_1, VIRTIO_RING_F_INDIRECT_DESC, VIRTIO_RING_F_EVENT_IDX);
  readonly queueCount = 3;
  /** Names of the vsock feature bits, for the core's logs (none of them is offered). */
  readonly featureTable = VsockFeature;
  readonly guestCid: number;

  private readonly route: VsockRouter;
  private readonly log: VsockLog;
  private readonly bufAlloc: number;
  private readonly hostQueueLimit: number;
  private readonly maxConnections: number;
  private readonly maxPendingRequests: number;
  private readonly requestTimeoutMs: number;
  private readonly hostConnectTimeoutMs: number;
  private readonly closeTimeoutMs: number;
  private readonly maxControlBacklog: number;

  private rx: Ring | null = null;
  private tx: Ring | null = null;
  private ev: Ring | null = null;
  /** Avail index each ring stopped at (undefined: never stopped since the last reset). */
  private readonly stoppedAt: (number | undefined)[] = [undefined, undefined, undefined];
  private pendingEvents: number[] = [];

  private readonly conns = new Map<string, Conn>();
  /** Connections that may have a packet for the guest, in round-robin order. */
  private readonly ready = new Set<Conn>();
  /** RSTs for packets that have no connection. */
  private readonly control: VsockHeader[] = [];
  private readonly hostPorts = new Set<number>();
  private nextHostPort = 0;
  private flushing = false;
  private retry: NodeJS.Timeout | null = null;
  private closed = false;
  private readonly scratch = Buffer.alloc(HEADER_SIZE);
  private readonly tap: VsockDeviceOptions['tap'];

  readonly counters: VsockDeviceCounters = {
    packetsFromGuest: 0, packetsToGuest: 0, bytesFromGuest: 0, bytesToGuest: 0,
    connectionsOpened: 0, connectionsRefused: 0, connectionsClosed: 0, resetsSent: 0, transportResets: 0,
    drops: Object.fromEntries(DROP_REASONS.map((r) => [r, 0])) as Record<DropReason, number>,
  };

  constructor(opts: VsockDeviceOptions) {
    if (!Number.isInteger(opts.guestCid) || opts.guestCid < MIN_GUEST_CID || opts.guestCid > MAX_GUEST_CID) {
      throw new RangeError(`guest CID must be ${MIN_GUEST_CID}..${MAX_GUEST_CID} (0-2 are reserved, ${Cid.ANY} is "any"), got ${opts.guestCid}`);
    }
    this.guestCid = opts.guestCid;
    this.route = opts.route;
    this.log = opts.log ?? (() => undefined);
    this.bufAlloc = opts.bufAlloc ?? DEFAULT_BUF_ALLOC;
    this.hostQueueLimit = opts.hostQueueLimit ?? DEFAULT_HOST_QUEUE_LIMIT;
    this.maxConnections = opts.maxConnections ?? 256;
    this.maxPendingRequests = opts.maxPendingRequests ?? 32;
    this.requestTimeoutMs = opts.requestTimeoutMs ?? 5000;
    this.hostConnectTimeoutMs = opts.hostConnectTimeoutMs ?? 5000;
    this.closeTimeoutMs = opts.closeTimeoutMs ?? 10_000;
    this.maxControlBacklog = opts.maxControlBacklog ?? 256;
    this.tap = opts.tap;
  }

  // --- VhostUserDevice ------------------------------------------------------------------------------

  readConfig(offset: number, size: number): Buffer | null {
    const cfg = encodeConfig(this.guestCid);
    if (offset < 0 || size < 0 || offset + size > cfg.length) return null;
    return cfg.subarray(offset, offset + size);
  }

  startQueue(index: number, q: SplitVirtqueue, notify: () => void): void {
    const ring = { q, notify };
    if (index === Queue.RX || index === Queue.TX) this.checkDriverContinuity(index, q.nextAvail);
    this.stoppedAt[index] = undefined;
    if (index === Queue.RX) this.rx = ring;
    else if (index === Queue.TX) this.tx = ring;
    else if (index === Queue.EVENT) this.ev = ring;
    if (index === Queue.EVENT) this.flushEvents();
  }

  stopQueue(index: number): void {
    const ring = index === Queue.RX ? this.rx : index === Queue.TX ? this.tx : index === Queue.EVENT ? this.ev : null;
    if (ring) this.stoppedAt[index] = ring.q.nextAvail;
    if (index === Queue.RX) this.rx = null;
    else if (index === Queue.TX) this.tx = null;
    else if (index === Queue.EVENT) this.ev = null;
  }

  kick(index: number): void {
    if (index === Queue.TX) this.processTx();
    else if (index === Queue.RX) {
      // New receive buffers: deliver what waits, then take transmissions held back for want of them.
      this.flushRx();
      this.processTx();
    } else if (index === Queue.EVENT) this.flushEvents();
  }

  /**
   * See the header comment: a ring restarting at an index other than where it stopped means the
   * driver's state and ours differ.
   */
  private checkDriverContinuity(index: number, base: number): void {
    const stopped = this.stoppedAt[index];
    if (stopped === undefined ? base === 0 : base === stopped) return;
    if (base === 0) {
      if (this.conns.size > 0) this.log('info', 'the guest driver was reset: dropping its connections', { connections: this.conns.size });
      this.abandonAll('the guest driver was reset');
      return;
    }
    this.log('info', 'the guest driver ran with another backend: sending TRANSPORT_RESET', { ring: index, base, stoppedAt: stopped ?? null });
    this.resetTransport();
  }

  // --- public API -------------------------------------------------------------------------------------

  /** Drops every connection and tells the guest's driver to reset its sockets (TRANSPORT_RESET). */
  resetTransport(): void {
    this.abandonAll('transport reset');
    // Rings found out of step one after another (rx, then tx) make one reset, not two.
    if (!this.pendingEvents.includes(EventId.TRANSPORT_RESET)) {
      this.pendingEvents.push(EventId.TRANSPORT_RESET);
      this.counters.transportResets++;
    }
    this.flushEvents();
  }

  /** The VMM went away: every connection ends (their host streams are closed), state is forgotten. */
  disconnected(why: string): void {
    this.abandonAll(why);
    this.control.length = 0;
    this.pendingEvents = [];
    this.stoppedAt.fill(undefined);
    this.rx = this.tx = this.ev = null;
  }

  /** Ends every connection with an RST (sent if the guest has receive buffers) and stops. */
  close(): void {
    if (this.closed) return;
    for (const c of [...this.conns.values()]) this.apply(c, c.sm.kill('the vsock service is stopping'));
    this.flushRx();
    this.closed = true;
    this.abandonAll('the vsock service stopped');
    if (this.retry) clearTimeout(this.retry);
    this.retry = null;
  }

  /**
   * A host program's connection to guest port `port` (hybrid: after `CONNECT port`). The device owns
   * `stream` from now on. Resolves with the host-side port once the guest accepts; rejects (and
   * closes the stream) if it refuses, does not answer in time, or a limit is reached.
   */
  connectToGuest(port: number, stream: Duplex, opts: ConnectToGuestOptions = {}): Promise<number> {
    return new Promise<number>((resolve, reject) => {
      const refuse = (why: string): void => {
        this.counters.connectionsRefused++;
        stream.destroy();
        reject(new GuestRefusedError(why));
      };
      if (this.closed) return refuse('the vsock service is stopping');
      if (!Number.isInteger(port) || port < 0 || port > 0xffff_ffff) return refuse(`port ${port} is not a u32`);
      if (!this.tx || !this.rx) return refuse('the guest has not started its vsock device');
      if (this.conns.size >= this.maxConnections) return refuse(`connection limit (${this.maxConnections}) reached`);
      if (this.pendingCount() >= this.maxPendingRequests) return refuse(`too many connections being set up (${this.maxPendingRequests})`);
      const localPort = this.allocHostPort();
      const sm = VsockConnection.toGuest(
        { localCid: opts.localCid ?? Cid.HOST, localPort, peerCid: this.guestCid, peerPort: port },
        { bufAlloc: this.bufAlloc, hostQueueLimit: this.hostQueueLimit },
      );
      const c = this.addConn(sm, 'host');
      c.settle = { resolve, reject, ...(opts.onEstablished ? { onEstablished: opts.onEstablished } : {}) };
      if (opts.initial && opts.initial.length > 0) sm.hostData(opts.initial);
      this.attach(c, stream);
      c.timer = setTimeout(() => {
        c.timer = null;
        this.apply(c, sm.expire());
        this.settleConn(c);
      }, this.requestTimeoutMs);
      this.reconcile(c);
      this.flushRx();
    });
  }

  connections(): ConnectionInfo[] {
    return [...this.conns.values()].map((c) => ({
      local: `${c.sm.addr.localCid}:${c.sm.addr.localPort}`,
      guest: `${c.sm.addr.peerCid}:${c.sm.addr.peerPort}`,
      initiator: c.initiator,
      state: c.sm.state,
      counters: { ...c.sm.counters },
      queuedToGuest: c.sm.queuedBytes,
      unforwarded: c.sm.unforwardedBytes,
    }));
  }

  // --- guest → device -------------------------------------------------------------------------------

  private processTx(): void {
    const tx = this.tx;
    if (!tx || this.closed) return;
    let taken = 0;
    try {
      while (this.control.length < this.maxControlBacklog) {
        const chain = tx.q.pop();
        if (!chain) break;
        taken++;
        this.onGuestPacket(chain.readable);
        tx.q.pushUsed(chain.head, 0);
      }
    } catch (e) {
      if (!(e instanceof QueueBroken)) throw e;
      this.log('warn', `transmit queue broken: ${e.message}`);
      this.tx = null;
    }
    if (taken > 0) tx.notify();
    this.flushRx();
  }

  private drop(reason: DropReason, detail: string, h?: VsockHeader): void {
    this.counters.drops[reason]++;
    this.log('debug', `guest packet refused (${reason}): ${detail}`, h ? { packet: describeHeader(h) } : undefined);
  }

  private onGuestPacket(parts: Uint8Array[]): void {
    if (this.tap) {
      // At most one packet's worth: a chain may describe far more guest memory than that.
      const taken: Uint8Array[] = [];
      let room = HEADER_SIZE + MAX_PKT_PAYLOAD;
      for (const p of parts) {
        if (room === 0) break;
        taken.push(p.subarray(0, room));
        room -= Math.min(room, p.length);
      }
      this.tap('from-guest', Buffer.concat(taken));
    }
    let h: VsockHeader;
    let payload: Buffer;
    try {
      ({ header: h, payload } = decodePacket(parts, { maxPayload: MAX_PKT_PAYLOAD }));
    } catch (e) {
      if (!(e instanceof VsockDecodeError)) throw e;
      const bad = e.header;
      if (bad && bad.srcCid !== this.guestCid) {
        this.drop('spoofed', `src_cid ${bad.srcCid} is not the guest's ${this.guestCid}`, bad);
        return;
      }
      this.drop(e.reason, e.message, bad);
      if (bad) this.refuse(bad, e.message);
      return;
    }
    if (h.srcCid !== this.guestCid) {
      this.drop('spoofed', `src_cid ${h.srcCid} is not the guest's ${this.guestCid}`, h);
      return;
    }
    this.counters.packetsFromGuest++;
    const c = this.conns.get(keyOf(h.dstCid, h.dstPort, h.srcCid, h.srcPort));
    if (c) {
      const before = c.sm.state;
      const actions = c.sm.fromGuest(h, payload);
      for (const a of actions) if (a.kind === 'write') this.counters.bytesFromGuest += a.data.length;
      const why = c.sm.closeReason;
      if (before !== 'closed' && why?.reason === 'violation') this.drop('violation', `${c.sm.toString()}: ${why.detail}`, h);
      this.apply(c, actions);
      this.settleConn(c);
      this.reconcile(c);
      return;
    }
    if (h.op === Op.RST) return; // nothing to reset
    if (h.op !== Op.REQUEST) {
      this.drop('no-connection', `${opName(h.op) ?? h.op} for no connection`, h);
      this.queueRst(h);
      return;
    }
    this.guestRequest(h);
  }

  /** Refuses a bad packet: its connection (if any) is reset, else an RST goes to its sender. */
  private refuse(h: VsockHeader, detail: string): void {
    if (h.op === Op.RST) return;
    const c = this.conns.get(keyOf(h.dstCid, h.dstPort, h.srcCid, h.srcPort));
    if (c) {
      this.apply(c, c.sm.kill(`bad packet: ${detail}`));
      this.settleConn(c);
      this.reconcile(c);
    } else {
      this.queueRst(h);
    }
  }

  private queueRst(h: VsockHeader): void {
    if (h.op === Op.RST) return;
    // An RST echoes the request's type when it is one the guest can match to a socket (Linux ignores
    // an RST whose type differs from its socket's).
    const type = h.type === SocketType.SEQPACKET ? SocketType.SEQPACKET : SocketType.STREAM;
    this.control.push({
      srcCid: h.dstCid, srcPort: h.dstPort, dstCid: this.guestCid, dstPort: h.srcPort,
      len: 0, type, op: Op.RST, flags: 0, bufAlloc: 0, fwdCnt: 0,
    });
  }

  private pendingCount(): number {
    let n = 0;
    for (const c of this.conns.values()) if (c.sm.state === 'connecting-guest' || c.sm.state === 'connecting-host') n++;
    return n;
  }

  private guestRequest(h: VsockHeader): void {
    const ep = this.closed ? null : this.route(h.dstCid, h.dstPort);
    if (!ep) {
      this.counters.connectionsRefused++;
      this.drop('no-route', `no route to CID ${h.dstCid} port ${h.dstPort}`, h);
      this.log('info', 'guest connection refused: no route', { packet: describeHeader(h) });
      this.queueRst(h);
      return;
    }
    if (this.conns.size >= this.maxConnections) {
      this.counters.connectionsRefused++;
      this.drop('connection-limit', `connection limit (${this.maxConnections}) reached`, h);
      this.queueRst(h);
      return;
    }
    if (this.pendingCount() >= this.maxPendingRequests) {
      this.counters.connectionsRefused++;
      this.drop('request-limit', `${this.maxPendingRequests} connections already being set up`, h);
      this.queueRst(h);
      return;
    }
    const sm = VsockConnection.fromGuestRequest(h, { bufAlloc: this.bufAlloc, hostQueueLimit: this.hostQueueLimit });
    const c = this.addConn(sm, 'guest');
    c.timer = setTimeout(() => {
      c.timer = null;
      this.counters.connectionsRefused++;
      this.log('info', `guest connection ${sm.toString()} refused: the host side did not connect in time`);
      this.apply(c, sm.hostFailed('the host side did not connect in time', true));
      this.reconcile(c);
      this.flushRx();
    }, this.hostConnectTimeoutMs);
    ep.connect(h.dstPort, { cid: h.srcCid, port: h.srcPort }).then(
      (stream) => {
        if (c.timer) clearTimeout(c.timer);
        c.timer = null;
        if (sm.state !== 'connecting-host' || this.conns.get(c.key) !== c) {
          stream.destroy();
          return;
        }
        this.attach(c, stream);
        sm.hostConnected();
        this.opened(c);
        this.reconcile(c);
        this.flushRx();
      },
      (e: unknown) => {
        if (c.timer) clearTimeout(c.timer);
        c.timer = null;
        if (sm.state !== 'connecting-host') return;
        this.counters.connectionsRefused++;
        const detail = e instanceof Error ? e.message : String(e);
        this.log('info', `guest connection ${sm.toString()} refused: ${detail}`);
        this.apply(c, sm.hostFailed(detail, true));
        this.reconcile(c);
        this.flushRx();
      },
    );
  }

  // --- connections and their host streams -------------------------------------------------------------

  private allocHostPort(): number {
    for (;;) {
      const p = FIRST_HOST_PORT + this.nextHostPort;
      this.nextHostPort = (this.nextHostPort + 1) % HOST_PORT_SPAN;
      if (!this.hostPorts.has(p)) {
        this.hostPorts.add(p);
        return p;
      }
    }
  }

  private addConn(sm: VsockConnection, initiator: 'guest' | 'host'): Conn {
    const { localCid, localPort, peerCid, peerPort } = sm.addr;
    const c: Conn = {
      key: keyOf(localCid, localPort, peerCid, peerPort), sm, initiator, stream: null, paused: false, streamClosed: false, streamEnded: false,
      closing: false, timer: null, openedAt: Date.now(), established: false, settle: null,
    };
    this.conns.set(c.key, c);
    return c;
  }

  private opened(c: Conn): void {
    c.established = true;
    this.counters.connectionsOpened++;
    this.log('info', 'vsock connection open', { conn: c.sm.toString(), initiator: c.initiator });
  }

  private attach(c: Conn, stream: Duplex): void {
    c.stream = stream;
    stream.on('data', (chunk: Buffer) => {
      if (c.sm.state === 'closed') return;
      c.sm.hostData(chunk);
      this.reconcile(c);
      this.flushRx();
    });
    stream.on('end', () => {
      c.streamEnded = true;
      this.apply(c, c.sm.hostEnd());
      this.settleConn(c);
      this.reconcile(c);
      this.flushRx();
    });
    stream.on('error', (e: Error) => {
      this.apply(c, c.sm.hostFailed(`host stream: ${e.message}`));
      this.settleConn(c);
      this.reconcile(c);
      this.flushRx();
    });
    stream.on('close', () => {
      c.streamClosed = true;
      // A stream closed after both of its sides finished normally is not a failure: the guest may
      // still be owed the data queued from it.
      if (!c.streamEnded || !stream.writableFinished) {
        this.apply(c, c.sm.hostFailed('the host stream closed'));
        this.settleConn(c);
      }
      this.reconcile(c);
      this.flushRx();
    });
    // Flowing from now on (a stream read in paused mode for a handshake starts paused).
    stream.resume();
  }

  private apply(c: Conn, actions: HostAction[]): void {
    for (const a of actions) {
      switch (a.kind) {
        case 'write': {
          const s = c.stream;
          if (!s || c.streamClosed || s.writableEnded) {
            this.apply(c, c.sm.hostFailed('the host stream is closed'));
            break;
          }
          const n = a.data.length;
          s.write(a.data, (err?: Error | null) => {
            if (err) return; // 'error' follows
            c.sm.hostWritten(n);
            this.reconcile(c);
            this.flushRx();
          });
          break;
        }
        case 'end':
          if (c.stream && !c.streamClosed && !c.stream.writableEnded) c.stream.end();
          break;
        case 'established':
          if (c.timer) clearTimeout(c.timer);
          c.timer = null;
          this.opened(c);
          if (c.settle) {
            const { resolve, onEstablished } = c.settle;
            c.settle = null;
            // Synchronously, before any guest data reaches the stream: the hybrid OK line goes first.
            onEstablished?.(c.sm.addr.localPort);
            resolve(c.sm.addr.localPort);
          }
          break;
        case 'close':
          this.closeStream(c, a.graceful);
          break;
      }
    }
  }

  /** Rejects the promise of a host-initiated connection that closed before the guest accepted it. */
  private settleConn(c: Conn): void {
    if (!c.settle || c.sm.state !== 'closed') return;
    const { reject } = c.settle;
    c.settle = null;
    this.counters.connectionsRefused++;
    const why = c.sm.closeReason;
    reject(new GuestRefusedError(why?.reason === 'request-timeout'
      ? `guest port ${c.sm.addr.peerPort}: no answer within ${this.requestTimeoutMs} ms`
      : `guest port ${c.sm.addr.peerPort}: ${why?.detail ?? 'refused'}`));
  }

  private closeStream(c: Conn, graceful: boolean): void {
    if (c.timer) clearTimeout(c.timer);
    c.timer = null;
    const s = c.stream;
    if (!s || c.closing) return;
    c.closing = true;
    if (c.streamClosed || !graceful) {
      s.destroy();
      return;
    }
    // Graceful: the writes already queued reach the host program, then FIN; bounded in time.
    const done = (): void => {
      clearTimeout(t);
      s.destroy();
    };
    const t = setTimeout(done, this.closeTimeoutMs);
    t.unref();
    s.resume(); // drain and discard what the host still sends, so 'finish' can come
    if (s.writableFinished) done();
    else {
      s.once('finish', done);
      s.once('close', done);
      if (!s.writableEnded) s.end();
    }
  }

  /** Brings a connection's host stream, readiness and table entry in line with its state. */
  private reconcile(c: Conn): void {
    const sm = c.sm;
    if (sm.state === 'closed' && !c.closing && c.stream) {
      const why = sm.closeReason;
      this.closeStream(c, why?.graceful ?? false);
    }
    if (sm.finished) {
      this.remove(c);
      return;
    }
    if (sm.hasPacket()) this.ready.add(c);
    const s = c.stream;
    if (s && !c.closing && !c.streamClosed) {
      const want = sm.wantsHostData();
      if (want && c.paused) {
        c.paused = false;
        s.resume();
      } else if (!want && !c.paused) {
        c.paused = true;
        s.pause();
      }
    }
  }

  private remove(c: Conn): void {
    if (this.conns.get(c.key) !== c) return;
    this.conns.delete(c.key);
    this.ready.delete(c);
    if (c.initiator === 'host') this.hostPorts.delete(c.sm.addr.localPort);
    if (c.timer) clearTimeout(c.timer);
    c.timer = null;
    if (!c.established) return;
    this.counters.connectionsClosed++;
    const why = c.sm.closeReason;
    this.log('info', 'vsock connection closed', {
      conn: c.sm.toString(), initiator: c.initiator, reason: why?.reason, detail: why?.detail, ms: Date.now() - c.openedAt, ...c.sm.counters, guestBufAlloc: c.sm.guestBufAlloc,
    });
  }

  private abandonAll(why: string): void {
    for (const c of [...this.conns.values()]) {
      this.apply(c, c.sm.abandon(why));
      this.settleConn(c);
      this.reconcile(c);
    }
    this.ready.clear();
    this.control.length = 0;
  }

  // --- device → guest -------------------------------------------------------------------------------

  private nextOutgoing(maxPayload: number): VsockHeader | OutgoingPacket | null {
    const rst = this.control.shift();
    if (rst) return rst;
    // Each connection gets one look per call: one that re-queues itself without producing a packet
    // (its data does not fit this buffer) must not keep the loop going.
    let looks = this.ready.size;
    for (const c of this.ready) {
      if (looks-- <= 0) break;
      this.ready.delete(c);
      if (!c.sm.hasPacket()) {
        this.reconcile(c);
        continue;
      }
      const p = c.sm.nextPacket(maxPayload);
      this.settleConn(c);
      this.reconcile(c); // re-queues it at the end if it has more: round robin
      if (p) return p;
    }
    return null;
  }

  private hasOutgoing(): boolean {
    return this.control.length > 0 || this.ready.size > 0;
  }

  /** Puts waiting packets into the guest's receive buffers. */
  private flushRx(): void {
    if (this.flushing) return;
    this.flushing = true;
    let pushed = 0;
    const rx = this.rx;
    let starved = false;
    try {
      while (rx && this.hasOutgoing()) {
        const chain = rx.q.pop();
        if (!chain) {
          starved = true;
          break;
        }
        if (chain.writableBytes < HEADER_SIZE) {
          this.drop('rx-buffer', `a receive buffer of ${chain.writableBytes} bytes cannot hold a header`);
          rx.q.pushUsed(chain.head, 0);
          pushed++;
          continue;
        }
        const room = Math.min(chain.writableBytes - HEADER_SIZE, MAX_PKT_PAYLOAD);
        const p = this.nextOutgoing(room);
        if (!p) {
          if (room === 0) {
            // A header's worth cannot carry the data that waits: give it back empty (Linux drops
            // it and posts another) rather than let it block the buffers behind it.
            this.drop('rx-buffer', 'a receive buffer with no room for data');
            rx.q.pushUsed(chain.head, 0);
            pushed++;
            continue;
          }
          rx.q.unpop(1);
          break;
        }
        const header = 'header' in p ? p.header : p;
        const payload = 'header' in p ? p.payload : new Uint8Array(0);
        encodeHeader(header, this.scratch, 0);
        scatter(chain, this.scratch, 0);
        scatter(chain, payload, HEADER_SIZE);
        rx.q.pushUsed(chain.head, HEADER_SIZE + payload.length);
        this.tap?.('to-guest', Buffer.concat([this.scratch, payload]));
        pushed++;
        this.counters.packetsToGuest++;
        this.counters.bytesToGuest += payload.length;
        if (header.op === Op.RST) this.counters.resetsSent++;
      }
    } catch (e) {
      if (!(e instanceof QueueBroken)) throw e;
      this.log('warn', `receive queue broken: ${e.message}`);
      this.rx = null;
    } finally {
      this.flushing = false;
    }
    if (pushed > 0) rx?.notify();
    // A kick can be missed (the driver adds buffers between our last look and its notification
    // check): while work waits for buffers, look again shortly.
    if (starved || (this.tx && this.control.length >= this.maxControlBacklog)) this.armRetry();
  }

  private armRetry(): void {
    if (this.retry || this.closed) return;
    this.retry = setTimeout(() => {
      this.retry = null;
      this.flushRx();
      this.processTx();
    }, RETRY_MS);
    this.retry.unref();
  }

  private flushEvents(): void {
    const ev = this.ev;
    if (!ev || this.pendingEvents.length === 0) return;
    let pushed = 0;
    try {
      while (this.pendingEvents.length > 0) {
        const chain = ev.q.pop();
        if (!chain) break;
        pushed++;
        if (chain.writableBytes < EVENT_SIZE) {
          this.drop('event-buffer', `an event buffer of ${chain.writableBytes} bytes`);
          ev.q.pushUsed(chain.head, 0);
          continue;
        }
        const id = this.pendingEvents.shift() as number;
        ev.q.pushUsed(chain.head, scatter(chain, encodeEvent(id), 0));
      }
    } catch (e) {
      if (!(e instanceof QueueBroken)) throw e;
      this.log('warn', `event queue broken: ${e.message}`);
      this.ev = null;
    }
    if (pushed > 0) ev.notify();
  }
}
