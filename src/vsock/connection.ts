// One virtio-vsock stream connection, as a pure state machine (no I/O, no timers): the guest's
// packets and the host side's events go in; packets for the guest (pulled with nextPacket, as
// receive buffers allow) and actions on the host stream come out. The device owns the I/O.
//
// Protocol (virtio 1.2 §5.10.6), checked against what Linux does (net/vmw_vsock/
// virtio_transport_common.c) and how cloud-hypervisor/Firecracker's csm/connection.rs serve it:
// - Set-up: REQUEST answered by RESPONSE (or RST). A guest-initiated connection answers only once
//   the host side is connected, so "nothing listens" becomes an RST, as connect() expects.
// - Credit (§5.10.6.3), both ways. We advertise buf_alloc (our per-connection buffer for guest
//   data) and fwd_cnt (bytes the host stream has taken from it) in every packet. The guest may have
//   at most buf_alloc bytes in flight; a guest that sends more broke the protocol and the connection
//   is reset (Linux resets in the same case). Towards the guest we never send more RW bytes than
//   peer_buf_alloc - (tx_cnt - peer_fwd_cnt), all u32 arithmetic modulo 2^32.
// - Credit updates. Linux blocks a writer when its view of our free space reaches 0 and only a
//   packet from us moves that view, so after the host consumes data we send CREDIT_UPDATE once the
//   guest's view falls below half of buf_alloc. A CREDIT_REQUEST always gets one. When the guest's
//   credit runs out with host data waiting, we ask with CREDIT_REQUEST (once per stall); Linux also
//   sends updates by itself as its reader drains.
// - Shutdown (§5.10.6.5): SHUTDOWN flags accumulate. Guest SEND → the host stream is half-closed
//   after the data already forwarded. Guest RCV → host data still queued is dropped, and what the
//   host sends later is read and dropped. Both → the guest closed its socket: we answer RST (Linux
//   waits for it, or gives up after 8 s) and finish the host stream gracefully. Host EOF →
//   SHUTDOWN(SEND) once every queued byte went to the guest. Two half-closes do not end the
//   connection: the guest's close() will. Any RST ends it at once; a host stream error or a
//   protocol violation sends one.
import { HEADER_SIZE, Op, ShutdownFlag, SocketType, opName, type VsockHeader } from '../codecs/vsock/index.js';

export type ConnectionState =
  /** We sent REQUEST for a host program and wait for the guest's RESPONSE. */
  | 'connecting-guest'
  /** The guest sent REQUEST; the host side is being connected. */
  | 'connecting-host'
  | 'established'
  /** Over: an RST went or came, or is queued to go (then `hasPacket()` is true until it does). */
  | 'closed';

export interface ConnectionAddress {
  /** The host side: CID 2 for the hybrid host, or whichever CID the guest addressed. */
  localCid: number;
  localPort: number;
  /** The guest. */
  peerCid: number;
  peerPort: number;
}

export interface ConnectionOptions {
  /** Our buffer for guest→host data, advertised as buf_alloc. Default 256 KiB (Linux's default). */
  bufAlloc?: number;
  /** Host→guest bytes queued before the host stream is paused. Default 64 KiB. */
  hostQueueLimit?: number;
  /** Socket type echoed in our packets (only STREAM is negotiated). */
  type?: number;
}

export const DEFAULT_BUF_ALLOC = 256 * 1024;
export const DEFAULT_HOST_QUEUE_LIMIT = 64 * 1024;

/** What the device must do with the host stream. */
export type HostAction =
  /** Forward guest data to the host stream. */
  | { kind: 'write'; data: Uint8Array }
  /** The guest sends no more: half-close the host stream after the writes before this. */
  | { kind: 'end' }
  /** The guest accepted a host-initiated connection (hybrid: answer `OK <localPort>`). */
  | { kind: 'established' }
  /** The connection is over. graceful: finish pending writes first; else destroy now. */
  | { kind: 'close'; graceful: boolean; reason: string };

export interface OutgoingPacket {
  header: VsockHeader;
  /** header.len bytes (a view of queued host data; consume it before the next call). */
  payload: Uint8Array;
}

/** Why a connection ended; 'violation' reasons are counted as the guest's fault. */
export type CloseReason =
  | 'guest-reset'
  | 'guest-shutdown'
  | 'host-failed'
  | 'host-refused'
  | 'request-timeout'
  | 'violation'
  | 'killed';

export interface ConnectionCounters {
  /** Data bytes from the guest (RW payloads accepted). */
  bytesFromGuest: number;
  /** Data bytes sent to the guest. */
  bytesToGuest: number;
  packetsFromGuest: number;
  packetsToGuest: number;
  creditUpdatesSent: number;
  creditRequestsSent: number;
  /** Times the guest had no credit left while host data waited. */
  creditStalls: number;
  /** CREDIT_UPDATE packets from the guest: Linux sends one after its reader took 192 KiB since the last packet, and
   *  (6.1 as Debian ships it) each time the reader empties its queue: about one per packet behind vhci-hcd (bench:usbip). */
  creditUpdatesFromGuest: number;
}

const u32 = (n: number): number => n >>> 0;

export class VsockConnection {
  private stateNow: ConnectionState;
  readonly addr: ConnectionAddress;
  readonly bufAlloc: number;
  private readonly hostQueueLimit: number;
  private readonly type: number;

  // Guest → host: what we received, and what the host stream has taken (fwd_cnt).
  private rxCnt = 0;
  private fwdCnt = 0;
  private lastFwdCntSent = 0;
  // Host → guest: what we sent, and the guest's buffer as it last told us.
  private txCnt = 0;
  private peerBufAlloc = 0;
  private peerFwdCnt = 0;

  // Shutdown indications. peer*: what the guest said; host*: what the host stream did.
  private peerNoRecv = false;
  private peerNoSend = false;
  private hostEnded = false;
  private shutdownSent = false;

  // Packets owed to the guest.
  private rstPending = false;
  private responsePending = false;
  private requestPending = false;
  private creditUpdatePending = false;
  private creditRequested = false;

  // Host data waiting for the guest's credit and receive buffers.
  private readonly queue: Buffer[] = [];
  private queueHead = 0;
  private queued = 0;

  private why: { reason: CloseReason; detail: string; graceful: boolean } | null = null;
  readonly counters: ConnectionCounters = {
    bytesFromGuest: 0, bytesToGuest: 0, packetsFromGuest: 0, packetsToGuest: 0, creditUpdatesSent: 0, creditRequestsSent: 0, creditStalls: 0, creditUpdatesFromGuest: 0,
  };

  private constructor(addr: ConnectionAddress, state: ConnectionState, opts: ConnectionOptions) {
    this.addr = { ...addr };
    this.stateNow = state;
    this.bufAlloc = opts.bufAlloc ?? DEFAULT_BUF_ALLOC;
    this.hostQueueLimit = opts.hostQueueLimit ?? DEFAULT_HOST_QUEUE_LIMIT;
    this.type = opts.type ?? SocketType.STREAM;
    if (!Number.isInteger(this.bufAlloc) || this.bufAlloc < 1 || this.bufAlloc > 0xffff_ffff) throw new RangeError(`bufAlloc must be 1..2^32-1, got ${this.bufAlloc}`);
  }

  /** The guest sent REQUEST (header `request`): we connect the host side, then answer. */
  static fromGuestRequest(request: VsockHeader, opts: ConnectionOptions = {}): VsockConnection {
    const c = new VsockConnection(
      { localCid: request.dstCid, localPort: request.dstPort, peerCid: request.srcCid, peerPort: request.srcPort },
      'connecting-host',
      { type: request.type, ...opts },
    );
    c.peerBufAlloc = request.bufAlloc;
    c.peerFwdCnt = request.fwdCnt;
    c.counters.packetsFromGuest = 1;
    return c;
  }

  /** A host program asks for guest port addr.peerPort: REQUEST is queued for the guest. */
  static toGuest(addr: ConnectionAddress, opts: ConnectionOptions = {}): VsockConnection {
    const c = new VsockConnection(addr, 'connecting-guest', opts);
    c.requestPending = true;
    return c;
  }

  get state(): ConnectionState {
    return this.stateNow;
  }

  /** Why the connection closed (null while open). */
  get closeReason(): { reason: CloseReason; detail: string; graceful: boolean } | null {
    return this.why;
  }

  /** Host bytes queued for the guest. */
  get queuedBytes(): number {
    return this.queued;
  }

  /** Guest bytes handed to the host stream and not yet taken by it (rx_cnt - fwd_cnt). */
  get unforwardedBytes(): number {
    return u32(this.rxCnt - this.fwdCnt);
  }

  /** The guest's receive buffer for this connection (its buf_alloc), as it last told us. */
  get guestBufAlloc(): number {
    return this.peerBufAlloc;
  }

  /** How many more bytes the guest can take now (its credit, as far as we know). */
  get peerCredit(): number {
    const inFlight = u32(this.txCnt - this.peerFwdCnt);
    return inFlight >= this.peerBufAlloc ? 0 : this.peerBufAlloc - inFlight;
  }

  /** True once the connection is closed and owes the guest nothing more: drop it. */
  get finished(): boolean {
    return this.stateNow === 'closed' && !this.rstPending;
  }

  // --- inputs from the guest ------------------------------------------------------------------------

  /**
   * A packet from the guest addressed to this connection (the device has checked its header:
   * source, type, op, len). Returns what to do with the host stream.
   */
  fromGuest(h: VsockHeader, payload: Uint8Array): HostAction[] {
    if (this.stateNow === 'closed') return [];
    this.counters.packetsFromGuest++;
    // Every packet carries the guest's credit (§5.10.6.3).
    this.peerBufAlloc = h.bufAlloc;
    this.peerFwdCnt = h.fwdCnt;
    if (this.peerCredit > 0) this.creditRequested = false;
    switch (h.op) {
      case Op.RST:
        // Graceful towards the host: what the guest sent before its RST was accepted (credited)
        // and still reaches the host program.
        return this.close('guest-reset', 'the guest reset the connection', false, true);
      case Op.RESPONSE:
        if (this.stateNow !== 'connecting-guest') return this.violation(`RESPONSE in state ${this.stateNow}`);
        this.stateNow = 'established';
        return [{ kind: 'established' }];
      case Op.REQUEST:
        return this.violation(`REQUEST on a connection in state ${this.stateNow}`);
      case Op.RW:
        return this.guestData(payload);
      case Op.SHUTDOWN:
        return this.guestShutdown(h.flags);
      case Op.CREDIT_UPDATE:
        this.counters.creditUpdatesFromGuest++;
        return [];
      case Op.CREDIT_REQUEST:
        if (this.stateNow === 'established') this.creditUpdatePending = true;
        return [];
      default:
        return this.violation(`unknown operation ${h.op}`);
    }
  }

  private guestData(payload: Uint8Array): HostAction[] {
    if (this.stateNow !== 'established') return this.violation(`RW in state ${this.stateNow}`);
    if (this.peerNoSend) return this.violation('RW after the guest shut down its sending side');
    if (payload.length === 0) return [];
    if (this.unforwardedBytes + payload.length > this.bufAlloc) {
      return this.violation(`the guest sent ${payload.length} bytes with ${this.bufAlloc - this.unforwardedBytes} bytes of credit`);
    }
    this.rxCnt = u32(this.rxCnt + payload.length);
    this.counters.bytesFromGuest += payload.length;
    return [{ kind: 'write', data: payload }];
  }

  private guestShutdown(flags: number): HostAction[] {
    if (this.stateNow !== 'established') return this.violation(`SHUTDOWN in state ${this.stateNow}`);
    const actions: HostAction[] = [];
    if (flags & ShutdownFlag.RCV && !this.peerNoRecv) {
      this.peerNoRecv = true;
      this.dropQueue();
    }
    if (flags & ShutdownFlag.SEND && !this.peerNoSend) {
      this.peerNoSend = true;
      actions.push({ kind: 'end' });
    }
    // The guest closed (close() sends both flags) and waits for our RST. Two half-closes alone do
    // not end the connection: the guest still owns a socket, and its close() will say so.
    if (this.peerNoRecv && this.peerNoSend) return [...actions, ...this.close('guest-shutdown', 'the guest closed the connection', true, true)];
    return actions;
  }

  // --- inputs from the host side -------------------------------------------------------------------

  /** The host stream of a guest-initiated connection is connected: answer RESPONSE. */
  hostConnected(): void {
    if (this.stateNow !== 'connecting-host') return;
    this.stateNow = 'established';
    this.responsePending = true;
  }

  /** Data read from the host stream, for the guest. */
  hostData(chunk: Buffer): void {
    if (chunk.length === 0 || this.stateNow === 'closed' || this.peerNoRecv || this.hostEnded) return;
    this.queue.push(chunk);
    this.queued += chunk.length;
  }

  /** The host stream reached EOF: the host sends no more. */
  hostEnd(): HostAction[] {
    if (this.stateNow === 'closed' || this.hostEnded) return [];
    this.hostEnded = true;
    // A host-initiated connection the guest has not accepted yet is simply withdrawn.
    if (this.stateNow === 'connecting-guest') return this.close('host-failed', 'the host program left before the guest answered', true, false);
    return [];
  }

  /** The host stream took `n` bytes of the data forwarded to it (our fwd_cnt moves). */
  hostWritten(n: number): void {
    if (n <= 0) return;
    this.fwdCnt = u32(this.fwdCnt + n);
    if (this.stateNow !== 'established' || this.peerNoSend) return;
    // The guest's view of our free space: buf_alloc - (rx_cnt - the fwd_cnt we last sent).
    const guestSeesFree = this.bufAlloc - u32(this.rxCnt - this.lastFwdCntSent);
    if (guestSeesFree < this.bufAlloc / 2 && this.fwdCnt !== this.lastFwdCntSent) this.creditUpdatePending = true;
  }

  /** The host side failed (connect refused, stream error): reset the guest's end. */
  hostFailed(detail: string, refused = false): HostAction[] {
    return this.close(refused ? 'host-refused' : 'host-failed', detail, true, false);
  }

  /** A host-initiated REQUEST got no answer in time. */
  expire(): HostAction[] {
    if (this.stateNow !== 'connecting-guest') return [];
    return this.close('request-timeout', 'the guest did not answer the connection request', true, false);
  }

  /** Ends the connection with an RST (device limits, shutdown of the service). */
  kill(detail: string): HostAction[] {
    return this.close('killed', detail, true, false);
  }

  /** Forgets the connection without telling the guest (its driver was reset and knows nothing of it). */
  abandon(detail: string): HostAction[] {
    return this.close('killed', detail, false, false);
  }

  // --- host stream flow control --------------------------------------------------------------------

  /** Should the device read from the host stream now? False pauses it (back-pressure). */
  wantsHostData(): boolean {
    if (this.stateNow === 'closed' || this.hostEnded) return false;
    // After the guest's SHUTDOWN(RCV) host data is read and dropped, so the host program never blocks.
    return this.peerNoRecv || this.queued < this.hostQueueLimit;
  }

  // --- output: packets for the guest ---------------------------------------------------------------

  /** Does the connection have a packet for the guest right now? */
  hasPacket(): boolean {
    if (this.rstPending) return true;
    if (this.stateNow === 'closed') return false;
    if (this.responsePending || this.requestPending || this.creditUpdatePending) return true;
    if (this.stateNow !== 'established') return false;
    if (this.queued > 0 && !this.peerNoRecv) return this.peerCredit > 0 || !this.creditRequested;
    return this.hostEnded && !this.shutdownSent;
  }

  /**
   * The next packet for the guest, with at most `maxPayload` data bytes (what its receive buffer
   * holds), or null. Control packets come first; data only within the guest's credit.
   */
  nextPacket(maxPayload: number): OutgoingPacket | null {
    if (this.rstPending) {
      this.rstPending = false;
      return this.packet(Op.RST);
    }
    if (this.stateNow === 'closed') return null;
    if (this.responsePending) {
      this.responsePending = false;
      return this.packet(Op.RESPONSE);
    }
    if (this.requestPending) {
      this.requestPending = false;
      return this.packet(Op.REQUEST);
    }
    if (this.stateNow !== 'established') return this.creditUpdateOrNull();
    if (this.queued > 0 && !this.peerNoRecv) {
      const credit = this.peerCredit;
      if (credit > 0 && maxPayload > 0) {
        const data = this.take(Math.min(credit, maxPayload, this.queued));
        this.txCnt = u32(this.txCnt + data.length);
        this.counters.bytesToGuest += data.length;
        return this.packet(Op.RW, 0, data);
      }
      if (credit === 0 && !this.creditRequested) {
        this.creditRequested = true;
        this.counters.creditStalls++;
        this.counters.creditRequestsSent++;
        return this.packet(Op.CREDIT_REQUEST);
      }
    }
    if (this.hostEnded && this.queued === 0 && !this.shutdownSent) {
      this.shutdownSent = true;
      return this.packet(Op.SHUTDOWN, ShutdownFlag.SEND);
    }
    return this.creditUpdateOrNull();
  }

  private creditUpdateOrNull(): OutgoingPacket | null {
    if (!this.creditUpdatePending) return null;
    this.counters.creditUpdatesSent++;
    return this.packet(Op.CREDIT_UPDATE);
  }

  private packet(op: number, flags = 0, payload: Uint8Array = EMPTY): OutgoingPacket {
    // Any packet tells the guest our credit, so a pending update is carried by this one.
    this.creditUpdatePending = false;
    this.lastFwdCntSent = this.fwdCnt;
    this.counters.packetsToGuest++;
    const { localCid, localPort, peerCid, peerPort } = this.addr;
    return {
      header: {
        srcCid: localCid, srcPort: localPort, dstCid: peerCid, dstPort: peerPort,
        len: payload.length, type: this.type, op, flags,
        bufAlloc: this.bufAlloc, fwdCnt: this.fwdCnt,
      },
      payload,
    };
  }

  private take(n: number): Uint8Array {
    const first = this.queue[0] as Buffer;
    const avail = first.length - this.queueHead;
    if (n <= avail) {
      const out = first.subarray(this.queueHead, this.queueHead + n);
      this.queueHead += n;
      if (this.queueHead === first.length) {
        this.queue.shift();
        this.queueHead = 0;
      }
      this.queued -= n;
      return out;
    }
    const out = Buffer.allocUnsafe(n);
    let at = 0;
    while (at < n) {
      const b = this.queue[0] as Buffer;
      const k = Math.min(b.length - this.queueHead, n - at);
      out.set(b.subarray(this.queueHead, this.queueHead + k), at);
      at += k;
      this.queueHead += k;
      if (this.queueHead === b.length) {
        this.queue.shift();
        this.queueHead = 0;
      }
    }
    this.queued -= n;
    return out;
  }

  private dropQueue(): void {
    this.queue.length = 0;
    this.queueHead = 0;
    this.queued = 0;
  }

  private violation(detail: string): HostAction[] {
    return this.close('violation', detail, true, false);
  }

  private close(reason: CloseReason, detail: string, sendRst: boolean, graceful: boolean): HostAction[] {
    if (this.stateNow === 'closed') return [];
    this.stateNow = 'closed';
    this.why = { reason, detail, graceful };
    this.rstPending = sendRst;
    this.responsePending = false;
    this.requestPending = false;
    this.creditUpdatePending = false;
    this.dropQueue();
    return [{ kind: 'close', graceful, reason: detail }];
  }

  /** "3:1234 <-> 2:5000" for logs. */
  toString(): string {
    const { localCid, localPort, peerCid, peerPort } = this.addr;
    return `${peerCid}:${peerPort} <-> ${localCid}:${localPort}`;
  }
}

const EMPTY = new Uint8Array(0);

/** The size of a packet on the wire (header + payload), for receive-buffer arithmetic. */
export function wireSize(p: OutgoingPacket): number {
  return HEADER_SIZE + p.payload.length;
}

/** One-line description of an operation number for logs. */
export function opLabel(op: number): string {
  return opName(op) ?? `op ${op}`;
}
