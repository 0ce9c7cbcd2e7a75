// The virtio-vsock packet: a 44-byte little-endian header and, for RW, a payload (virtio 1.2
// §5.10.6). Pure: bytes in, plain objects out, and back. A packet reaches a device scattered over
// the descriptors of a chain, so decodePacket reads the header and payload across any split.
import {
  CONFIG_SIZE, EVENT_SIZE, HEADER_SIZE, HeaderOffset as O, MAX_PKT_PAYLOAD, Op, SocketType, opName,
} from './constants.js';
import { VsockDecodeError } from './errors.js';

export interface VsockHeader {
  /** CIDs are le64 on the wire with the upper 32 bits reserved (zero), so they fit a number. */
  srcCid: number;
  dstCid: number;
  srcPort: number;
  dstPort: number;
  /** Payload bytes after the header. */
  len: number;
  type: number;
  op: number;
  flags: number;
  /** The sender's receive buffer for this connection (credit, §5.10.6.3). */
  bufAlloc: number;
  /** Bytes the sender has consumed from that buffer so far (wrapping u32). */
  fwdCnt: number;
}

export interface VsockPacket {
  header: VsockHeader;
  /** header.len bytes; a copy, never a view of the input. */
  payload: Buffer;
}

export interface DecodeOptions {
  /** Largest payload accepted; default MAX_PKT_PAYLOAD (64 KiB). */
  maxPayload?: number;
  /** Accept SEQPACKET as well as STREAM (only if VIRTIO_VSOCK_F_SEQPACKET was negotiated). */
  allowSeqpacket?: boolean;
}

function view(b: Uint8Array): DataView {
  return new DataView(b.buffer, b.byteOffset, b.byteLength);
}

function readCid(v: DataView, at: number, what: string): number {
  const lo = v.getUint32(at, true);
  const hi = v.getUint32(at + 4, true);
  if (hi !== 0) throw new VsockDecodeError(`${what} 0x${hi.toString(16)}${lo.toString(16).padStart(8, '0')} has its reserved upper 32 bits set`, 'cid');
  return lo;
}

/**
 * Reads the header from the first 44 bytes of `bytes` (more may follow; they are not looked at).
 * Throws VsockDecodeError 'short' or 'cid'; checks nothing else.
 */
export function decodeHeader(bytes: Uint8Array): VsockHeader {
  if (bytes.length < HEADER_SIZE) throw new VsockDecodeError(`a packet needs a ${HEADER_SIZE}-byte header, got ${bytes.length} bytes`, 'short');
  const v = view(bytes);
  return {
    srcCid: readCid(v, O.SRC_CID, 'src_cid'),
    dstCid: readCid(v, O.DST_CID, 'dst_cid'),
    srcPort: v.getUint32(O.SRC_PORT, true),
    dstPort: v.getUint32(O.DST_PORT, true),
    len: v.getUint32(O.LEN, true),
    type: v.getUint16(O.TYPE, true),
    op: v.getUint16(O.OP, true),
    flags: v.getUint32(O.FLAGS, true),
    bufAlloc: v.getUint32(O.BUF_ALLOC, true),
    fwdCnt: v.getUint32(O.FWD_CNT, true),
  };
}

/** Checks type, op and length rules of a header whose payload is `payloadBytes` long. */
export function checkHeader(h: VsockHeader, payloadBytes: number, opts: DecodeOptions = {}): void {
  const maxPayload = opts.maxPayload ?? MAX_PKT_PAYLOAD;
  const name = opName(h.op) ?? `op ${h.op}`;
  if (h.len !== payloadBytes) throw new VsockDecodeError(`${name}: header len ${h.len} but ${payloadBytes} payload bytes follow`, 'length', h);
  if (h.len > maxPayload) throw new VsockDecodeError(`${name}: payload of ${h.len} bytes; the limit is ${maxPayload}`, 'too-long', h);
  const typeOk = h.type === SocketType.STREAM || (opts.allowSeqpacket === true && h.type === SocketType.SEQPACKET);
  if (!typeOk) throw new VsockDecodeError(`${name}: socket type ${h.type} is not supported (only STREAM)`, 'type', h);
  if (opName(h.op) === undefined) throw new VsockDecodeError(`unknown operation ${h.op}`, 'op', h);
  if (h.op !== Op.RW && h.len !== 0) throw new VsockDecodeError(`${name} carries ${h.len} payload bytes; only RW carries data`, 'length', h);
}

/**
 * Decodes one packet from the device-readable buffers of a descriptor chain, split anywhere.
 * The payload is copied out (the buffers are guest memory, which the guest may change).
 */
export function decodePacket(parts: readonly Uint8Array[], opts: DecodeOptions = {}): VsockPacket {
  let total = 0;
  for (const p of parts) total += p.length;
  if (total < HEADER_SIZE) throw new VsockDecodeError(`a packet needs a ${HEADER_SIZE}-byte header, got ${total} bytes`, 'short');
  const first = parts[0];
  const headBytes = first && first.length >= HEADER_SIZE ? first : gather(parts, 0, HEADER_SIZE);
  const header = decodeHeader(headBytes);
  checkHeader(header, total - HEADER_SIZE, opts);
  return { header, payload: gather(parts, HEADER_SIZE, header.len) };
}

/** Copies `len` bytes starting at byte `from` of the concatenation of `parts`. */
function gather(parts: readonly Uint8Array[], from: number, len: number): Buffer {
  const out = Buffer.allocUnsafe(len);
  let skip = from;
  let at = 0;
  for (const p of parts) {
    if (at === len) break;
    if (skip >= p.length) {
      skip -= p.length;
      continue;
    }
    const n = Math.min(p.length - skip, len - at);
    out.set(p.subarray(skip, skip + n), at);
    at += n;
    skip = 0;
  }
  return out;
}

function u32(v: number, what: string): number {
  if (!Number.isInteger(v) || v < 0 || v > 0xffff_ffff) throw new RangeError(`${what} must be a u32, got ${v}`);
  return v;
}

function u16(v: number, what: string): number {
  if (!Number.isInteger(v) || v < 0 || v > 0xffff) throw new RangeError(`${what} must be a u16, got ${v}`);
  return v;
}

/** Writes the 44-byte header into `out` at `offset` (default: a new Buffer). */
export function encodeHeader(h: VsockHeader, out: Uint8Array = Buffer.alloc(HEADER_SIZE), offset = 0): Uint8Array {
  if (offset < 0 || offset + HEADER_SIZE > out.length) throw new RangeError(`no room for a ${HEADER_SIZE}-byte header at ${offset} of ${out.length} bytes`);
  const v = new DataView(out.buffer, out.byteOffset + offset, HEADER_SIZE);
  v.setUint32(O.SRC_CID, u32(h.srcCid, 'srcCid'), true);
  v.setUint32(O.SRC_CID + 4, 0, true);
  v.setUint32(O.DST_CID, u32(h.dstCid, 'dstCid'), true);
  v.setUint32(O.DST_CID + 4, 0, true);
  v.setUint32(O.SRC_PORT, u32(h.srcPort, 'srcPort'), true);
  v.setUint32(O.DST_PORT, u32(h.dstPort, 'dstPort'), true);
  v.setUint32(O.LEN, u32(h.len, 'len'), true);
  v.setUint16(O.TYPE, u16(h.type, 'type'), true);
  v.setUint16(O.OP, u16(h.op, 'op'), true);
  v.setUint32(O.FLAGS, u32(h.flags, 'flags'), true);
  v.setUint32(O.BUF_ALLOC, u32(h.bufAlloc, 'bufAlloc'), true);
  v.setUint32(O.FWD_CNT, u32(h.fwdCnt, 'fwdCnt'), true);
  return out;
}

/** Header and payload in one Buffer; header.len is set from the payload. */
export function encodePacket(h: Omit<VsockHeader, 'len'>, payload: Uint8Array = new Uint8Array(0)): Buffer {
  const out = Buffer.alloc(HEADER_SIZE + payload.length);
  encodeHeader({ ...h, len: payload.length }, out, 0);
  out.set(payload, HEADER_SIZE);
  return out;
}

/** struct virtio_vsock_event (§5.10.6.7). */
export function encodeEvent(id: number): Buffer {
  const out = Buffer.alloc(EVENT_SIZE);
  out.writeUInt32LE(u32(id, 'event id'), 0);
  return out;
}

export function decodeEvent(bytes: Uint8Array): number {
  if (bytes.length < EVENT_SIZE) throw new RangeError(`an event is ${EVENT_SIZE} bytes, got ${bytes.length}`);
  return view(bytes).getUint32(0, true);
}

/** The config space: le64 guest_cid (§5.10.4). */
export function encodeConfig(guestCid: number): Buffer {
  const out = Buffer.alloc(CONFIG_SIZE);
  out.writeUInt32LE(u32(guestCid, 'guest CID'), 0);
  return out;
}

export function decodeConfig(bytes: Uint8Array): bigint {
  if (bytes.length < CONFIG_SIZE) throw new RangeError(`the config space is ${CONFIG_SIZE} bytes, got ${bytes.length}`);
  return view(bytes).getBigUint64(0, true);
}

/** "REQUEST 3:1234 -> 2:5000 len 0 buf 262144 fwd 0" for logs. */
export function describeHeader(h: VsockHeader): string {
  const flags = h.flags ? ` flags ${h.flags}` : '';
  return `${opName(h.op) ?? `op${h.op}`} ${h.srcCid}:${h.srcPort} -> ${h.dstCid}:${h.dstPort} len ${h.len}${flags} buf ${h.bufAlloc} fwd ${h.fwdCnt}${h.type === SocketType.STREAM ? '' : ` type ${h.type}`}`;
}
