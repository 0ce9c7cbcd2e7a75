// vhost-user decoding: a MessageReader that splits a byte stream into messages and gives each the
// fds that came with it (keeping leftovers, the pg-protocol / mqtt-packet pattern: "need more
// bytes" returns null, only bad input throws), and decoders that turn one message into an object.
// Pure: no I/O; fds are plain numbers here, never opened or closed.
//
// A message is accepted only if its size field equals its payload length, its payload has exactly
// the layout its request requires (vhost-user.rst "Front-end message types"), every value the spec
// constrains is in range, and the fd count matches (rules.ts).
import {
  BackendRequest,
  FrontendRequest,
  HEADER_SIZE,
  HeaderFlag,
  MAX_CONFIG_SIZE,
  MAX_FDS_PER_MESSAGE,
  MAX_PAYLOAD_SIZE,
  MAX_SHMEM_REGIONS,
  MEMORY_BASELINE_NREGIONS,
  PayloadSize,
  VRING_INDEX_MASK,
  VRING_NOFD_MASK,
  type BackendRequestName,
  type FrontendRequestName,
  isNoPayloadRequest,
} from './constants.js';
import { ByteQueue } from '../byte-queue.js';
import { DecodeError, ProtocolError } from './errors.js';
import type {
  BackendMessage,
  BackendReply,
  ConfigSpace,
  FrontendMessage,
  InflightDescription,
  IotlbMessage,
  MemoryRegion,
  ShmemMapping,
} from './messages.js';
import { backendFdCount, frontendFdCount, frontendStrayFds, replyFdCount } from './rules.js';

export { DecodeError, ProtocolError } from './errors.js';

const U64_LIMIT = 1n << 64n;

// --- framing -----------------------------------------------------------------------------------

/** One whole message as it came off the stream, with the fds that arrived with it. */
export interface ReceivedMessage {
  /** Header and payload. May alias a pushed chunk: do not modify chunks after pushing them. */
  bytes: Buffer;
  /** fds (numbers, owned by the caller) that arrived with this message, in arrival order. */
  fds: number[];
}

export interface MessageReaderOptions {
  /** Largest payload accepted; default MAX_PAYLOAD_SIZE (4096). */
  maxPayloadSize?: number;
  /** Most fds one message may bring; default MAX_FDS_PER_MESSAGE (8). */
  maxFds?: number;
}

/**
 * Splits a vhost-user byte stream into messages: push() what arrives (with any fds recvmsg returned
 * with it), then call next() until it returns null.
 *
 * fds are given to the message that holds the last byte of the chunk they came with. That is how
 * Linux delivers them on a stream socket: recvmsg() may join earlier bytes to the segment that
 * carries fds, but stops at the end of that segment (unix_stream_read_generic), and every front-end
 * (QEMU, DPDK, rust-vmm) sends one message, header and payload, per sendmsg with its fds.
 *
 * With prism's FdSocket, push each 'data' chunk with the fds of the 'fds' event that came just before
 * it (one recvmsg), in flowing mode: a paused Readable may join chunks and lose that pairing.
 *
 * A size field above the limit, more than maxFds fds for one message, or fds pushed with no bytes
 * make next() throw ProtocolError (code ERR_VHOST_USER_FRAMING), at once and on every later call:
 * the stream cannot be trusted and the connection should be closed. The size check runs as soon as
 * the 12 header bytes are in, so an oversized message is refused before it is buffered. fds the
 * reader still holds (after an error, or at the end of a connection) come back from takeFds(), for
 * the caller to close.
 */
export class MessageReader {
  private readonly queue = new ByteQueue();
  /** Stream offset of the first byte not yet returned. */
  private consumed = 0;
  /** fds waiting for their message: the stream offset of the byte that owns them. */
  private pending: { at: number; fds: number[] }[] = [];
  private pendingCount = 0;
  private failure: ProtocolError | null = null;
  private readonly maxPayload: number;
  private readonly maxFds: number;

  constructor(opts: MessageReaderOptions = {}) {
    this.maxPayload = checkLimit(opts.maxPayloadSize ?? MAX_PAYLOAD_SIZE, 0xffff_ffff, 'maxPayloadSize');
    this.maxFds = checkLimit(opts.maxFds ?? MAX_FDS_PER_MESSAGE, 253, 'maxFds');
  }

  /** The payload-size limit in force. */
  get maxPayloadSize(): number {
    return this.maxPayload;
  }

  /** Bytes pushed and not yet returned by next(). */
  get bufferedBytes(): number {
    return this.queue.length;
  }

  /** fds pushed and not yet returned by next(). */
  get bufferedFds(): number {
    return this.pendingCount;
  }

  /** Appends received bytes (kept by reference) and the fds that came with them. */
  push(chunk: Buffer, fds: readonly number[] = []): void {
    if (fds.length > 0) {
      // The owner is the chunk's last byte; with no bytes the fds belong to nothing that is still
      // unread (offset consumed - 1 or earlier): next() reports them.
      const at = this.consumed + this.queue.length + chunk.length - 1;
      this.pending.push({ at, fds: [...fds] });
      this.pendingCount += fds.length;
    }
    this.queue.push(chunk);
  }

  /** Returns the next whole message with its fds, or null until more bytes arrive. */
  next(): ReceivedMessage | null {
    if (this.failure) throw this.failure;
    const first = this.pending[0];
    if (first !== undefined && first.at < this.consumed) {
      return this.fail(new ProtocolError(`${first.fds.length} fds arrived without bytes to carry them`, 'fds', 0, this.maxPayload));
    }
    if (this.queue.length < HEADER_SIZE) return this.checkFdsUpTo(this.consumed + this.queue.length);
    const size = this.queue.peek(8, 4).readUInt32LE(0);
    if (size > this.maxPayload) {
      return this.fail(
        new ProtocolError(`vhost-user payload size ${size} exceeds the limit of ${this.maxPayload} bytes`, 'size', size, this.maxPayload),
      );
    }
    const total = HEADER_SIZE + size;
    if (this.queue.length < total) return this.checkFdsUpTo(this.consumed + this.queue.length);
    const end = this.consumed + total;
    const fds = this.takeFdsBefore(end);
    if (fds.length > this.maxFds) {
      this.pending.unshift({ at: end - 1, fds });
      this.pendingCount += fds.length;
      return this.fail(new ProtocolError(`${fds.length} fds came with one message; at most ${this.maxFds}`, 'fds', 0, this.maxPayload));
    }
    this.consumed += total;
    return { bytes: this.queue.take(total), fds };
  }

  /** Hands back every fd the reader still holds (for the caller to close) and forgets them. */
  takeFds(): number[] {
    const all = this.pending.flatMap((p) => p.fds);
    this.pending = [];
    this.pendingCount = 0;
    return all;
  }

  private fail(e: ProtocolError): never {
    this.failure = e;
    throw e;
  }

  /** Refuses a message that already has too many fds before its last byte arrives. */
  private checkFdsUpTo(end: number): null {
    if (this.pendingCount > this.maxFds) {
      let n = 0;
      for (const p of this.pending) if (p.at < end) n += p.fds.length;
      if (n > this.maxFds) this.fail(new ProtocolError(`${n} fds came with one message; at most ${this.maxFds}`, 'fds', 0, this.maxPayload));
    }
    return null;
  }

  private takeFdsBefore(end: number): number[] {
    if (this.pendingCount === 0) return [];
    const mine: number[] = [];
    let i = 0;
    for (; i < this.pending.length; i++) {
      const p = this.pending[i] as { at: number; fds: number[] };
      if (p.at >= end) break;
      for (const f of p.fds) mine.push(f);
    }
    if (i > 0) {
      this.pending.splice(0, i);
      this.pendingCount -= mine.length;
    }
    return mine;
  }
}

function checkLimit(n: number, max: number, what: string): number {
  if (!Number.isInteger(n) || n < 0 || n > max) throw new RangeError(`MessageReader ${what} must be an integer in 0..${max}, got ${n}`);
  return n;
}

/** The 12-byte header of a message, or null if fewer than 12 bytes are given. Does not validate. */
export function readHeader(buf: Buffer): { request: number; flags: number; size: number } | null {
  if (buf.length < HEADER_SIZE) return null;
  return { request: buf.readUInt32LE(0), flags: buf.readUInt32LE(4), size: buf.readUInt32LE(8) };
}

// --- names ---------------------------------------------------------------------------------------

function namesByNumber<N extends string>(table: Readonly<Record<N, number>>): (N | undefined)[] {
  const out: (N | undefined)[] = [];
  for (const [name, n] of Object.entries(table) as [N, number][]) out[n] = name;
  return out;
}
const FRONTEND_NAMES = namesByNumber<FrontendRequestName>(FrontendRequest);
const BACKEND_NAMES = namesByNumber<BackendRequestName>(BackendRequest);

// --- decoding ----------------------------------------------------------------------------------

/** One message being decoded (one small object instead of per-call closures). */
interface Cursor {
  buf: Buffer;
  /** Payload length (buf.length - HEADER_SIZE). */
  size: number;
  request: number;
  name: string;
  needReply: boolean;
  /** For 64-bit reads: DataView.getBigUint64 is several times faster than Buffer.readBigUInt64LE. */
  view: DataView | null;
}

function fail(c: Cursor, what: string, reason: 'payload' | 'fds' = 'payload'): never {
  throw new DecodeError(`vhost-user ${c.name}: ${what}`, { reason, request: c.request, requestName: c.name, needReply: c.needReply });
}

function payloadSize(c: Cursor, want: number, what: string): void {
  if (c.size !== want) fail(c, `payload of ${c.size} bytes, not the ${want} of ${what}`);
}

/** A u32 at payload offset `at`. */
function u32(c: Cursor, at: number): number {
  return c.buf.readUInt32LE(HEADER_SIZE + at);
}

/** A u64 at payload offset `at`. */
function u64(c: Cursor, at: number): bigint {
  c.view ??= new DataView(c.buf.buffer, c.buf.byteOffset, c.buf.byteLength);
  return c.view.getBigUint64(HEADER_SIZE + at, true);
}

function zeros(c: Cursor, from: number, to: number, what: string): void {
  for (let i = HEADER_SIZE + from; i < HEADER_SIZE + to; i++) if (c.buf[i] !== 0) fail(c, `${what} must be zero`);
}

function fdCount(c: Cursor, got: number, want: number, stray = 0): void {
  if (got < want || got > want + stray) {
    fail(c, `came with ${got} fd${got === 1 ? '' : 's'}; it takes ${stray > 0 ? `${want} to ${want + stray}` : want}`, 'fds');
  }
}

/** Validates the header; returns the cursor for the payload. */
function open(buf: Buffer, fds: number, names: readonly (string | undefined)[], side: string, reply: boolean): Cursor {
  if (!Buffer.isBuffer(buf)) throw new TypeError('vhost-user message must be a Buffer');
  if (!Number.isInteger(fds) || fds < 0) throw new TypeError(`fd count must be a non-negative integer, got ${String(fds)}`);
  if (buf.length < HEADER_SIZE) {
    throw new DecodeError(`vhost-user message of ${buf.length} bytes is shorter than the ${HEADER_SIZE}-byte header`, { reason: 'header' });
  }
  const request = buf.readUInt32LE(0);
  const flags = buf.readUInt32LE(4);
  const size = buf.readUInt32LE(8);
  const name = request < names.length ? names[request] : undefined;
  const needReply = (flags & HeaderFlag.NEED_REPLY) !== 0;
  // The checks in order; the error (and its strings) is built only for a bad header.
  let problem: string | null = null;
  if (size !== buf.length - HEADER_SIZE) problem = `size field says ${size} payload bytes but ${buf.length - HEADER_SIZE} follow the header`;
  else if ((flags & HeaderFlag.VERSION_MASK) !== HeaderFlag.VERSION) problem = `protocol version ${flags & HeaderFlag.VERSION_MASK}, not ${HeaderFlag.VERSION}`;
  else if ((flags & HeaderFlag.RESERVED_MASK) !== 0) problem = `reserved flag bits set (flags 0x${flags.toString(16)})`;
  else if (((flags & HeaderFlag.REPLY) !== 0) !== reply) problem = reply ? 'a reply without the REPLY flag' : 'a request with the REPLY flag';
  else if (reply && needReply) problem = 'a reply with NEED_REPLY';
  if (problem !== null) {
    throw new DecodeError(`vhost-user ${name ?? `${side} request ${request}`}: ${problem}`, { reason: 'header', request, requestName: name, needReply });
  }
  if (name === undefined) {
    throw new DecodeError(`unknown vhost-user ${side} request ${request}`, { reason: 'unknown-request', request, needReply });
  }
  return { buf, size, request, name, needReply, view: null };
}

function readRegion(c: Cursor, at: number, what: string): MemoryRegion {
  const r: MemoryRegion = {
    guestPhysAddr: u64(c, at),
    memorySize: u64(c, at + 8),
    userspaceAddr: u64(c, at + 16),
    mmapOffset: u64(c, at + 24),
  };
  if (r.memorySize === 0n) fail(c, `${what} has size 0`);
  if (r.guestPhysAddr + r.memorySize >= U64_LIMIT) fail(c, `${what}: guest address + size wraps past 2^64`);
  if (r.userspaceAddr + r.memorySize >= U64_LIMIT) fail(c, `${what}: user address + size wraps past 2^64`);
  if (r.mmapOffset + r.memorySize >= U64_LIMIT) fail(c, `${what}: mmap offset + size wraps past 2^64`);
  return r;
}

/** "Multiple memory regions description": ≤ 8 regions that overlap neither in guest nor in user space. */
function readMemoryTable(c: Cursor): MemoryRegion[] {
  if (c.size < PayloadSize.MEMORY_TABLE_HEADER) fail(c, `payload of ${c.size} bytes is shorter than the 8-byte memory table header`);
  const n = u32(c, 0);
  if (n > MEMORY_BASELINE_NREGIONS) fail(c, `${n} memory regions; at most ${MEMORY_BASELINE_NREGIONS}`);
  zeros(c, 4, 8, 'padding');
  const want = PayloadSize.MEMORY_TABLE_HEADER + n * PayloadSize.MEMORY_REGION;
  if (c.size !== want) fail(c, `payload of ${c.size} bytes, not the ${want} of ${n} region${n === 1 ? '' : 's'}`);
  const regions: MemoryRegion[] = [];
  for (let i = 0; i < n; i++) {
    const r = readRegion(c, PayloadSize.MEMORY_TABLE_HEADER + i * PayloadSize.MEMORY_REGION, `region ${i}`);
    for (let j = 0; j < i; j++) {
      const o = regions[j] as MemoryRegion;
      if (overlaps(r.guestPhysAddr, r.memorySize, o.guestPhysAddr, o.memorySize)) fail(c, `regions ${j} and ${i} overlap in guest memory`);
      if (overlaps(r.userspaceAddr, r.memorySize, o.userspaceAddr, o.memorySize)) fail(c, `regions ${j} and ${i} overlap in user addresses`);
    }
    regions.push(r);
  }
  return regions;
}

function overlaps(a: bigint, alen: bigint, b: bigint, blen: bigint): boolean {
  return a < b + blen && b < a + alen;
}

/** "Single memory region description": padding u64 (zero), region. */
function readSingleRegion(c: Cursor): MemoryRegion {
  payloadSize(c, PayloadSize.SINGLE_MEMORY_REGION, 'a single memory region description');
  zeros(c, 0, 8, 'padding');
  return readRegion(c, 8, 'the region');
}

/** A vring state (index u32, num u32). */
function readState(c: Cursor): { index: number; num: number } {
  payloadSize(c, PayloadSize.VRING_STATE, 'a vring state description');
  return { index: u32(c, 0), num: u32(c, 4) };
}

function readU64(c: Cursor): bigint {
  payloadSize(c, PayloadSize.U64, 'a u64');
  return u64(c, 0);
}

function readNone(c: Cursor): void {
  if (c.size !== 0) fail(c, `payload of ${c.size} bytes; this request has none`);
}

/** The u64 of SET_VRING_KICK/CALL/ERR: index bits 0-7, no-fd bit 8, nothing else. */
function readVringFd(c: Cursor): { index: number; noFd: boolean } {
  const v = readU64(c);
  if (v > BigInt(VRING_INDEX_MASK | VRING_NOFD_MASK)) fail(c, `u64 0x${v.toString(16)} sets bits other than the index (0-7) and no-fd (8)`);
  const n = Number(v);
  return { index: n & VRING_INDEX_MASK, noFd: (n & VRING_NOFD_MASK) !== 0 };
}

/** "Virtio device config space": offset, size, flags, size bytes; 1 ≤ size and offset + size ≤ 256. */
function readConfig(c: Cursor): ConfigSpace {
  if (c.size < PayloadSize.CONFIG_HEADER) fail(c, `payload of ${c.size} bytes is shorter than the 12-byte config header`);
  const offset = u32(c, 0);
  const size = u32(c, 4);
  if (size !== c.size - PayloadSize.CONFIG_HEADER) fail(c, `config size ${size} does not match the ${c.size - PayloadSize.CONFIG_HEADER} bytes that follow`);
  if (size === 0) fail(c, 'config size 0');
  if (offset + size > MAX_CONFIG_SIZE) fail(c, `config bytes ${offset}..${offset + size} reach past the ${MAX_CONFIG_SIZE}-byte config space`);
  const start = HEADER_SIZE + PayloadSize.CONFIG_HEADER;
  return { offset, flags: u32(c, 8), data: Buffer.from(c.buf.subarray(start, start + size)) };
}

function readLog(c: Cursor): { mmapSize: bigint; mmapOffset: bigint } {
  payloadSize(c, PayloadSize.LOG, 'a log description');
  const mmapSize = u64(c, 0);
  const mmapOffset = u64(c, 8);
  if (mmapSize === 0n) fail(c, 'log size 0');
  if (mmapOffset + mmapSize >= U64_LIMIT) fail(c, 'log offset + size wraps past 2^64');
  return { mmapSize, mmapOffset };
}

/**
 * "Inflight description". The 4 bytes after queue size are C tail padding: QEMU's designated
 * initializers zero them, so they must be zero.
 */
function readInflight(c: Cursor, needBuffer: boolean): InflightDescription {
  payloadSize(c, PayloadSize.INFLIGHT, 'an inflight description');
  zeros(c, 20, 24, 'padding');
  const d: InflightDescription = { mmapSize: u64(c, 0), mmapOffset: u64(c, 8), numQueues: c.buf.readUInt16LE(HEADER_SIZE + 16), queueSize: c.buf.readUInt16LE(HEADER_SIZE + 18) };
  if (d.numQueues === 0 || d.queueSize === 0) fail(c, `inflight with ${d.numQueues} queues of size ${d.queueSize}`);
  if (needBuffer) {
    if (d.mmapSize === 0n) fail(c, 'inflight buffer of size 0');
    if (d.mmapOffset + d.mmapSize >= U64_LIMIT) fail(c, 'inflight offset + size wraps past 2^64');
  }
  return d;
}

/**
 * "An IOTLB message". Bytes 26-31 are C tail padding that QEMU copies from an uninitialized stack
 * struct (vhost_backend_update_device_iotlb), so they are ignored: this is the one payload whose
 * decoding is not canonical.
 */
function readIotlb(c: Cursor): IotlbMessage {
  payloadSize(c, PayloadSize.IOTLB, 'an IOTLB message');
  const m: IotlbMessage = {
    iova: u64(c, 0),
    size: u64(c, 8),
    userspaceAddr: u64(c, 16),
    perm: c.buf[HEADER_SIZE + 24] as number,
    type: c.buf[HEADER_SIZE + 25] as number,
  };
  if (m.perm > 3) fail(c, `IOTLB permission ${m.perm} (0-3)`);
  if (m.type < 1 || m.type > 4) fail(c, `IOTLB type ${m.type} (1-4)`);
  return m;
}

const HEX = Array.from({ length: 256 }, (_, i) => i.toString(16).padStart(2, '0'));

function readUuid(c: Cursor): string {
  payloadSize(c, PayloadSize.SHARED_OBJECT, 'a UUID');
  const h = (from: number, to: number): string => {
    let s = '';
    for (let i = from; i < to; i++) s += HEX[c.buf[HEADER_SIZE + i] as number] as string;
    return s;
  };
  return `${h(0, 4)}-${h(4, 6)}-${h(6, 8)}-${h(8, 10)}-${h(10, 16)}`;
}

/**
 * Decodes one front-end request (as MessageReader returns it), given how many fds came with it.
 * Throws DecodeError only (TypeError for arguments of the wrong type).
 */
export function decodeFrontend(bytes: Buffer, fds = 0): FrontendMessage {
  const c = open(bytes, fds, FRONTEND_NAMES, 'front-end', false);
  const msg = frontendPayload(c, c.name as FrontendRequestName);
  fdCount(c, fds, frontendFdCount(msg), frontendStrayFds(msg));
  return msg;
}

function frontendPayload(c: Cursor, request: FrontendRequestName): FrontendMessage {
  const flags = { needReply: c.needReply };
  if (isNoPayloadRequest(request)) {
    readNone(c);
    return { request, flags };
  }
  switch (request) {
    case 'SET_FEATURES':
    case 'SET_PROTOCOL_FEATURES':
      return { request, flags, features: readU64(c) };
    case 'CLOSE_CRYPTO_SESSION':
      return { request, flags, sessionId: readU64(c) };
    case 'SET_MEM_TABLE':
      return { request, flags, regions: readMemoryTable(c) };
    case 'SET_LOG_BASE':
      return { request, flags, ...readLog(c) };
    case 'SET_VRING_NUM':
    case 'SET_VRING_BASE': {
      const s = readState(c);
      return { request, flags, index: s.index, num: s.num };
    }
    case 'GET_VRING_BASE': {
      // vhost-user.rst gives GET_VRING_BASE a vring state whose num the
      // backend does not read. QEMU sends 0; DPDK 22.11's virtio_user sends
      // whatever its stack held (seen: 48184). Refusing it would leave the
      // frontend without the ring's last index at shutdown, so num is ignored.
      const s = readState(c);
      return { request, flags, index: s.index };
    }
    case 'VRING_KICK': {
      const s = readState(c);
      if (s.num !== 0) fail(c, `num ${s.num}: reserved, must be 0`);
      return { request, flags, index: s.index };
    }
    case 'SET_VRING_ENABLE': {
      const s = readState(c);
      if (s.num > 1) fail(c, `num ${s.num}: 1 enables, 0 disables`);
      return { request, flags, index: s.index, enable: s.num === 1 };
    }
    case 'SET_VRING_ENDIAN': {
      const s = readState(c);
      if (s.num > 1) fail(c, `num ${s.num}: 0 is little-endian, 1 big-endian`);
      return { request, flags, index: s.index, bigEndian: s.num === 1 };
    }
    case 'SET_VRING_ADDR':
      payloadSize(c, PayloadSize.VRING_ADDR, 'a vring address description');
      return {
        request,
        flags,
        addr: {
          index: u32(c, 0),
          flags: u32(c, 4),
          descUserAddr: u64(c, 8),
          usedUserAddr: u64(c, 16),
          availUserAddr: u64(c, 24),
          logGuestAddr: u64(c, 32),
        },
      };
    case 'SET_VRING_KICK':
    case 'SET_VRING_CALL':
    case 'SET_VRING_ERR':
      return { request, flags, ...readVringFd(c) };
    case 'SEND_RARP': {
      payloadSize(c, PayloadSize.U64, 'a u64 holding a MAC address');
      zeros(c, 6, 8, 'bytes 6-7 after the MAC address');
      let mac = '';
      for (let i = 0; i < 6; i++) mac += (i ? ':' : '') + (HEX[c.buf[HEADER_SIZE + i] as number] as string);
      return { request, flags, mac };
    }
    case 'NET_SET_MTU': {
      const v = readU64(c);
      if (v > 0xffffn) fail(c, `MTU ${v} exceeds 65535`);
      return { request, flags, mtu: Number(v) };
    }
    case 'SET_STATUS': {
      const v = readU64(c);
      if (v > 0xffn) fail(c, `device status 0x${v.toString(16)} does not fit the 8-bit virtio status`);
      return { request, flags, status: Number(v) };
    }
    case 'IOTLB_MSG':
      return { request, flags, iotlb: readIotlb(c) };
    case 'GET_CONFIG':
    case 'SET_CONFIG':
      return { request, flags, config: readConfig(c) };
    case 'CREATE_CRYPTO_SESSION':
      if (c.size === 0) fail(c, 'empty crypto session description');
      return { request, flags, payload: Buffer.from(c.buf.subarray(HEADER_SIZE)) };
    case 'GET_INFLIGHT_FD':
      return { request, flags, inflight: readInflight(c, false) };
    case 'SET_INFLIGHT_FD':
      return { request, flags, inflight: readInflight(c, true) };
    case 'ADD_MEM_REG':
    case 'REM_MEM_REG':
      return { request, flags, region: readSingleRegion(c) };
    case 'GET_SHARED_OBJECT':
      return { request, flags, uuid: readUuid(c) };
    case 'SET_DEVICE_STATE_FD':
      payloadSize(c, PayloadSize.DEVICE_STATE_TRANSFER, 'the device state transfer parameters');
      return { request, flags, direction: u32(c, 0), phase: u32(c, 4) };
  }
}

/**
 * Decodes one back-end reply, given how many fds came with it (for a test front-end, and to check
 * encodeReply). The header's request number says what the reply answers: requests with an explicit
 * reply decode to their reply type, every other request to a REPLY_ACK (u64 status). Throws
 * DecodeError only.
 */
export function decodeReply(bytes: Buffer, fds = 0): BackendReply {
  const c = open(bytes, fds, FRONTEND_NAMES, 'front-end', true);
  const reply = replyPayload(c, c.name as FrontendRequestName);
  fdCount(c, fds, replyFdCount(reply));
  return reply;
}

function replyPayload(c: Cursor, request: FrontendRequestName): BackendReply {
  switch (request) {
    case 'GET_FEATURES':
    case 'GET_PROTOCOL_FEATURES':
      return { request, features: readU64(c) };
    case 'GET_QUEUE_NUM':
      return { request, queueNum: readU64(c) };
    case 'GET_MAX_MEM_SLOTS':
      return { request, maxMemSlots: readU64(c) };
    case 'GET_STATUS': {
      const v = readU64(c);
      if (v > 0xffn) fail(c, `device status 0x${v.toString(16)} does not fit the 8-bit virtio status`);
      return { request, status: Number(v) };
    }
    case 'GET_VRING_BASE': {
      const s = readState(c);
      return { request, index: s.index, num: s.num };
    }
    case 'GET_CONFIG':
      return { request, config: c.size === 0 ? null : readConfig(c) };
    case 'GET_INFLIGHT_FD':
      return { request, inflight: readInflight(c, true) };
    case 'SET_LOG_BASE':
      return { request, log: c.size === 0 ? null : readLog(c) };
    case 'SET_DEVICE_STATE_FD': {
      const v = readU64(c);
      if (v > 0x1ffn) fail(c, `u64 0x${v.toString(16)} sets bits other than the error (0-7) and no-fd (8)`);
      const error = Number(v & 0xffn);
      const noFd = (v & 0x100n) !== 0n;
      if (error !== 0 && !noFd) fail(c, `error ${error} with an fd: the back-end must not do both`);
      return { request, error, noFd };
    }
    case 'POSTCOPY_ADVISE':
      readNone(c);
      return { request };
    case 'SET_MEM_TABLE':
      // Postcopy: the back-end's mapping bases; otherwise (8 bytes) a REPLY_ACK.
      if (c.size === PayloadSize.U64) return { request: 'REPLY_ACK', ackedRequest: request, status: u64(c, 0) };
      return { request, regions: readMemoryTable(c) };
    case 'ADD_MEM_REG':
      if (c.size === PayloadSize.U64) return { request: 'REPLY_ACK', ackedRequest: request, status: u64(c, 0) };
      return { request, region: readSingleRegion(c) };
    case 'GET_SHMEM_CONFIG': {
      payloadSize(c, PayloadSize.SHMEM_CONFIG, 'a shared memory config');
      const n = u32(c, 0);
      if (n > MAX_SHMEM_REGIONS) fail(c, `${n} shared memory regions; at most ${MAX_SHMEM_REGIONS}`);
      zeros(c, 4, 8, 'padding');
      const memorySizes: bigint[] = [];
      for (let i = 0; i < n; i++) memorySizes.push(u64(c, 8 + i * 8));
      zeros(c, 8 + n * 8, PayloadSize.SHMEM_CONFIG, 'sizes beyond num regions');
      return { request, memorySizes };
    }
    case 'CREATE_CRYPTO_SESSION':
    case 'GET_SHARED_OBJECT':
      return fail(c, 'this codec does not decode the reply to this request');
    default:
      return { request: 'REPLY_ACK', ackedRequest: request, status: readU64(c) };
  }
}

/** Decodes one back-end request (on the SET_BACKEND_REQ_FD channel). Throws DecodeError only. */
export function decodeBackend(bytes: Buffer, fds = 0): BackendMessage {
  const c = open(bytes, fds, BACKEND_NAMES, 'back-end', false);
  const msg = backendPayload(c, c.name as BackendRequestName);
  fdCount(c, fds, backendFdCount(msg));
  return msg;
}

function backendPayload(c: Cursor, request: BackendRequestName): BackendMessage {
  const flags = { needReply: c.needReply };
  switch (request) {
    case 'IOTLB_MSG':
      return { request, flags, iotlb: readIotlb(c) };
    case 'CONFIG_CHANGE_MSG':
      readNone(c);
      return { request, flags };
    case 'VRING_HOST_NOTIFIER_MSG': {
      payloadSize(c, PayloadSize.VRING_AREA, 'a vring area description');
      const v = u64(c, 0);
      if (v > BigInt(VRING_INDEX_MASK | VRING_NOFD_MASK)) fail(c, `u64 0x${v.toString(16)} sets bits other than the index (0-7) and no-fd (8)`);
      const n = Number(v);
      return { request, flags, index: n & VRING_INDEX_MASK, noFd: (n & VRING_NOFD_MASK) !== 0, size: u64(c, 8), offset: u64(c, 16) };
    }
    case 'VRING_CALL':
    case 'VRING_ERR': {
      const s = readState(c);
      if (s.num !== 0) fail(c, `num ${s.num}: reserved, must be 0`);
      return { request, flags, index: s.index };
    }
    case 'SHARED_OBJECT_ADD':
    case 'SHARED_OBJECT_REMOVE':
    case 'SHARED_OBJECT_LOOKUP':
      return { request, flags, uuid: readUuid(c) };
    case 'SHMEM_MAP':
    case 'SHMEM_UNMAP': {
      payloadSize(c, PayloadSize.SHMEM_MMAP, 'a shared memory mapping');
      zeros(c, 1, 8, 'padding');
      const mapping: ShmemMapping = { shmid: c.buf[HEADER_SIZE] as number, fdOffset: u64(c, 8), shmOffset: u64(c, 16), len: u64(c, 24), flags: u64(c, 32) };
      if (mapping.len === 0n) fail(c, 'mapping of length 0');
      if (mapping.fdOffset + mapping.len >= U64_LIMIT || mapping.shmOffset + mapping.len >= U64_LIMIT) fail(c, 'offset + length wraps past 2^64');
      return { request, flags, mapping };
    }
  }
}
