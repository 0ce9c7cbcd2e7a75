// USB/IP decoding: pure functions that turn one message's bytes into an object, and two stream
// readers that find where messages end (keeping leftover bytes, the pg-protocol / mqtt-packet
// pattern: "need more bytes" returns null, only bad input throws). RequestReader is the server's
// (it reads OP_REQ_* and CMD_*), ReplyReader the client's (OP_REP_* and RET_*).
//
// Where a message ends depends on its header: CMD_SUBMIT carries transfer_buffer_length bytes when
// it is OUT and number_of_packets × 16 bytes of ISO descriptors (usbip_protocol.rst
// USBIP_CMD_SUBMIT; stub_rx.c reads them in that order), RET_SUBMIT carries actual_length bytes when
// the request was IN — which only the client knows, since a server sets direction 0 — and
// OP_REP_DEVLIST's length depends on every device's bNumInterfaces. Every length is checked
// against a limit as soon as its header is in, before anything is buffered for it.
import {
  BUSID_SIZE,
  Command,
  DEFAULT_MAX_DEVICES,
  DEFAULT_MAX_ISO_PACKETS,
  DEFAULT_MAX_TRANSFER_LENGTH,
  DEVICE_RECORD_SIZE,
  DEVLIST_HEADER_SIZE,
  DeviceOffset as D,
  Direction,
  IMPORT_REQUEST_SIZE,
  INTERFACE_RECORD_SIZE,
  ISO_DESCRIPTOR_SIZE,
  MAX_ENDPOINT,
  OP_HEADER_SIZE,
  OpCode,
  OpStatus,
  PATH_SIZE,
  PDU_HEADER_SIZE,
  PduOffset as P,
  SETUP_SIZE,
  USBIP_VERSION,
} from './constants.js';
import { ByteQueue } from '../byte-queue.js';
import { DecodeError, ProtocolError, type UsbipErrorDetails, type UsbipErrorReason } from './errors.js';
import type {
  CmdSubmit,
  CmdUnlink,
  DecodeLimits,
  DeviceRecord,
  DevlistEntry,
  InterfaceRecord,
  IsoPacketDescriptor,
  OpRepDevlist,
  OpRepImport,
  RetSubmit,
  RetUnlink,
  SetupPacket,
  SubmitContext,
  UsbipReply,
  UsbipRequest,
} from './messages.js';

export { DecodeError, ProtocolError } from './errors.js';

// --- limits ------------------------------------------------------------------------------------

interface Limits {
  maxTransferLength: number;
  maxIsoPackets: number;
  maxDevices: number;
}

function limitsOf(l: DecodeLimits = {}): Limits {
  const check = (v: number | undefined, dflt: number, max: number, what: string): number => {
    const n = v ?? dflt;
    if (!Number.isSafeInteger(n) || n < 0 || n > max) throw new RangeError(`usbip ${what} must be an integer in 0..${max}, got ${n}`);
    return n;
  };
  return {
    // transfer_buffer_length is an s32 in struct usbip_header_cmd_submit.
    maxTransferLength: check(l.maxTransferLength, DEFAULT_MAX_TRANSFER_LENGTH, 0x7fff_ffff, 'maxTransferLength'),
    maxIsoPackets: check(l.maxIsoPackets, DEFAULT_MAX_ISO_PACKETS, 0x7fff_ffff, 'maxIsoPackets'),
    maxDevices: check(l.maxDevices, DEFAULT_MAX_DEVICES, 0xffff_ffff, 'maxDevices'),
  };
}

// --- names -------------------------------------------------------------------------------------

const COMMAND_NAMES: Record<number, string> = {
  [Command.CMD_SUBMIT]: 'CMD_SUBMIT',
  [Command.CMD_UNLINK]: 'CMD_UNLINK',
  [Command.RET_SUBMIT]: 'RET_SUBMIT',
  [Command.RET_UNLINK]: 'RET_UNLINK',
};
const OP_NAMES: Record<number, string> = {
  [OpCode.REQ_DEVLIST]: 'OP_REQ_DEVLIST',
  [OpCode.REP_DEVLIST]: 'OP_REP_DEVLIST',
  [OpCode.REQ_IMPORT]: 'OP_REQ_IMPORT',
  [OpCode.REP_IMPORT]: 'OP_REP_IMPORT',
};

/** A message's name from its command or operation code, for logs ("CMD_SUBMIT", "op 0x8007"). */
export function messageName(code: number): string {
  return COMMAND_NAMES[code] ?? OP_NAMES[code] ?? `0x${code.toString(16).padStart(8, '0')}`;
}

// --- layouts: how long the message at the front is ---------------------------------------------

/** Why a message cannot be framed or decoded; the caller makes a ProtocolError or DecodeError of it. */
interface Failure {
  message: string;
  reason: UsbipErrorReason;
  details: UsbipErrorDetails;
}

/** Reads bytes [at, at + n) of the input; the caller has checked they are there. */
type Peek = (at: number, n: number) => Buffer;

/** The message's total length, null if more bytes must arrive to know it, or why it has none. */
type Layout = number | null | Failure;

function failure(message: string, reason: UsbipErrorReason, details: UsbipErrorDetails = {}): Failure {
  return { message, reason, details };
}

function isFailure(l: Layout): l is Failure {
  return l !== null && typeof l === 'object';
}

/** The version and code of an operation message; anything but 0x0111 cannot be read further. */
function opVersion(first: Buffer, code: number): Failure | null {
  const version = first.readUInt16BE(0);
  if (version === USBIP_VERSION) return null;
  return failure(`${messageName(code)} with protocol version 0x${version.toString(16).padStart(4, '0')}; only 0x0111 is spoken`, 'version', { code });
}

/** A client's message: OP_REQ_DEVLIST (8), OP_REQ_IMPORT (40), CMD_UNLINK (48), CMD_SUBMIT (48 + data + ISO). */
function requestLayout(available: number, peek: Peek, lim: Limits): Layout {
  if (available < 4) return null;
  const first = peek(0, 4);
  const command = first.readUInt32BE(0);
  if (command === Command.CMD_SUBMIT || command === Command.CMD_UNLINK) {
    if (available < PDU_HEADER_SIZE) return null;
    return command === Command.CMD_UNLINK ? PDU_HEADER_SIZE : submitLayout(peek(0, PDU_HEADER_SIZE), lim);
  }
  if (command === Command.RET_SUBMIT || command === Command.RET_UNLINK) {
    return failure(`${messageName(command)} travels from server to client`, 'command', { code: command });
  }
  const code = first.readUInt16BE(2);
  if (code === OpCode.REQ_DEVLIST || code === OpCode.REQ_IMPORT) {
    return opVersion(first, code) ?? (code === OpCode.REQ_DEVLIST ? OP_HEADER_SIZE : IMPORT_REQUEST_SIZE);
  }
  if (code === OpCode.REP_DEVLIST || code === OpCode.REP_IMPORT) {
    return failure(`${messageName(code)} travels from server to client`, 'command', { code });
  }
  return failure(`neither a USB/IP command nor an operation: first bytes ${first.toString('hex')}`, 'command');
}

/** CMD_SUBMIT: the header, OUT data, ISO descriptors. Refuses what cannot be skipped safely. */
function submitLayout(h: Buffer, lim: Limits): Layout {
  const details = { code: Command.CMD_SUBMIT, seqnum: h.readUInt32BE(P.SEQNUM) };
  const direction = h.readUInt32BE(P.DIRECTION);
  if (direction !== Direction.OUT && direction !== Direction.IN) {
    return failure(`CMD_SUBMIT seqnum ${details.seqnum}: direction ${direction} (0 is OUT, 1 is IN)`, 'direction', details);
  }
  const length = h.readUInt32BE(P.TRANSFER_BUFFER_LENGTH);
  if (direction === Direction.OUT && length > lim.maxTransferLength) {
    return failure(`CMD_SUBMIT seqnum ${details.seqnum}: OUT transfer of ${length} bytes; the limit is ${lim.maxTransferLength}`, 'too-long', details);
  }
  const packets = h.readInt32BE(P.NUMBER_OF_PACKETS);
  if (packets < -1 || packets > lim.maxIsoPackets) {
    return failure(`CMD_SUBMIT seqnum ${details.seqnum}: number_of_packets ${packets} (-1 or 0 for none, at most ${lim.maxIsoPackets})`, 'iso', details);
  }
  return PDU_HEADER_SIZE + (direction === Direction.OUT ? length : 0) + Math.max(packets, 0) * ISO_DESCRIPTOR_SIZE;
}

/** Finds what a client sent for a seqnum (a function) or is the context itself (one reply). */
export type SubmitLookup = ((seqnum: number) => SubmitContext | undefined) | SubmitContext;

function lookup(ctx: SubmitLookup | undefined, seqnum: number): SubmitContext | undefined {
  if (ctx === undefined) return undefined;
  return typeof ctx === 'function' ? ctx(seqnum) : ctx;
}

/** A server's message: OP_REP_* (variable), RET_UNLINK (48), RET_SUBMIT (48 + IN data + ISO). */
function replyLayout(available: number, peek: Peek, lim: Limits, ctx: SubmitLookup | undefined): Layout {
  if (available < 4) return null;
  const first = peek(0, 4);
  const command = first.readUInt32BE(0);
  if (command === Command.RET_SUBMIT || command === Command.RET_UNLINK) {
    if (available < PDU_HEADER_SIZE) return null;
    return command === Command.RET_UNLINK ? PDU_HEADER_SIZE : retSubmitLayout(peek(0, PDU_HEADER_SIZE), lim, ctx);
  }
  if (command === Command.CMD_SUBMIT || command === Command.CMD_UNLINK) {
    return failure(`${messageName(command)} travels from client to server`, 'command', { code: command });
  }
  const code = first.readUInt16BE(2);
  if (code === OpCode.REQ_DEVLIST || code === OpCode.REQ_IMPORT) {
    return failure(`${messageName(code)} travels from client to server`, 'command', { code });
  }
  if (code !== OpCode.REP_DEVLIST && code !== OpCode.REP_IMPORT) {
    return failure(`neither a USB/IP command nor an operation: first bytes ${first.toString('hex')}`, 'command');
  }
  const bad = opVersion(first, code);
  if (bad) return bad;
  if (available < OP_HEADER_SIZE) return null;
  // "otherwise the reply ends with the status field" (OP_REP_IMPORT); the usbip tool reads no
  // further after a failed OP_REP_DEVLIST either.
  if (peek(4, 4).readUInt32BE(0) !== OpStatus.OK) return OP_HEADER_SIZE;
  if (code === OpCode.REP_IMPORT) return OP_HEADER_SIZE + DEVICE_RECORD_SIZE;
  if (available < DEVLIST_HEADER_SIZE) return null;
  const ndev = peek(OP_HEADER_SIZE, 4).readUInt32BE(0);
  if (ndev > lim.maxDevices) return failure(`OP_REP_DEVLIST lists ${ndev} devices; the limit is ${lim.maxDevices}`, 'too-long', { code });
  let at = DEVLIST_HEADER_SIZE;
  for (let i = 0; i < ndev; i++) {
    if (available < at + DEVICE_RECORD_SIZE) return null;
    const interfaces = peek(at + D.NUM_INTERFACES, 1)[0] as number;
    at += DEVICE_RECORD_SIZE + interfaces * INTERFACE_RECORD_SIZE;
  }
  return at;
}

/** RET_SUBMIT: the header, IN data (actual_length bytes), ISO descriptors if the request had them. */
function retSubmitLayout(h: Buffer, lim: Limits, ctx: SubmitLookup | undefined): Layout {
  const seqnum = h.readUInt32BE(P.SEQNUM);
  const details = { code: Command.RET_SUBMIT, seqnum };
  const req = lookup(ctx, seqnum);
  if (req === undefined) return failure(`RET_SUBMIT for seqnum ${seqnum}, which has no request outstanding`, 'seqnum', details);
  const actual = h.readUInt32BE(P.ACTUAL_LENGTH);
  // vhci_rx.c (usbip_recv_xbuff): more than the buffer "should not happen, probably malicious packet".
  if (actual > req.transferBufferLength || actual > lim.maxTransferLength) {
    return failure(`RET_SUBMIT seqnum ${seqnum}: actual_length ${actual} exceeds the ${req.transferBufferLength}-byte transfer buffer`, 'length', details);
  }
  const packets = h.readInt32BE(P.NUMBER_OF_PACKETS);
  if (packets < -1) return failure(`RET_SUBMIT seqnum ${seqnum}: number_of_packets ${packets}`, 'iso', details);
  let descriptors = 0;
  // Descriptors follow only for an ISO request (vhci_rx.c: usbip_recv_iso returns early otherwise),
  // and then the count must be the request's (or 0: "ISO URBs which are np = 0").
  if (req.numberOfPackets > 0 && packets > 0) {
    if (packets !== req.numberOfPackets) {
      return failure(`RET_SUBMIT seqnum ${seqnum}: ${packets} ISO packets for a request of ${req.numberOfPackets}`, 'iso', details);
    }
    descriptors = packets;
  }
  return PDU_HEADER_SIZE + (req.direction === 'in' ? actual : 0) + descriptors * ISO_DESCRIPTOR_SIZE;
}

// --- pure decoders -----------------------------------------------------------------------------

function peekOf(b: Buffer): Peek {
  return (at, n) => b.subarray(at, at + n);
}

/** Checks that `bytes` is exactly one message; returns nothing or throws DecodeError. */
function wholeMessage(bytes: Buffer, layout: Layout): void {
  if (layout === null) throw new DecodeError(`${bytes.length} bytes are not a whole USB/IP message`, 'short');
  if (isFailure(layout)) throw new DecodeError(layout.message, layout.reason, layout.details);
  if (bytes.length < layout) throw new DecodeError(`${bytes.length} bytes; the message needs ${layout}`, 'short', codeAndSeqnum(bytes));
  if (bytes.length > layout) throw new DecodeError(`${bytes.length} bytes; the message has ${layout}`, 'length', codeAndSeqnum(bytes));
}

function codeAndSeqnum(bytes: Buffer): UsbipErrorDetails {
  const command = bytes.readUInt32BE(0);
  if (command >= Command.CMD_SUBMIT && command <= Command.RET_UNLINK) return { code: command, seqnum: bytes.readUInt32BE(P.SEQNUM) };
  return { code: bytes.readUInt16BE(2) };
}

/**
 * Decodes one client message (exactly its bytes): OP_REQ_DEVLIST, OP_REQ_IMPORT, CMD_SUBMIT,
 * CMD_UNLINK. Throws DecodeError only (RangeError for bad limits).
 */
export function decodeRequest(bytes: Buffer, limits?: DecodeLimits): UsbipRequest {
  const lim = limitsOf(limits);
  wholeMessage(bytes, requestLayout(bytes.length, peekOf(bytes), lim));
  return requestBody(bytes, lim);
}

/** Decodes a request whose length is known to be right. */
function requestBody(b: Buffer, lim: Limits): UsbipRequest {
  const command = b.readUInt32BE(0);
  if (command === Command.CMD_SUBMIT) return cmdSubmit(b, lim);
  if (command === Command.CMD_UNLINK) {
    const m: CmdUnlink = { type: 'CMD_UNLINK', seqnum: b.readUInt32BE(P.SEQNUM), devid: b.readUInt32BE(P.DEVID), unlinkSeqnum: b.readUInt32BE(P.UNLINK_SEQNUM) };
    return m;
  }
  const code = b.readUInt16BE(2);
  const status = b.readUInt32BE(4);
  if (code === OpCode.REQ_DEVLIST) return { type: 'OP_REQ_DEVLIST', status };
  return { type: 'OP_REQ_IMPORT', status, busid: cString(b, OP_HEADER_SIZE, BUSID_SIZE, 'busid', { code }) };
}

function cmdSubmit(b: Buffer, lim: Limits): CmdSubmit {
  const seqnum = b.readUInt32BE(P.SEQNUM);
  const details = { code: Command.CMD_SUBMIT, seqnum };
  const ep = b.readUInt32BE(P.EP);
  if (ep > MAX_ENDPOINT) throw new DecodeError(`CMD_SUBMIT seqnum ${seqnum}: endpoint ${ep} (0..${MAX_ENDPOINT})`, 'endpoint', details);
  const direction = b.readUInt32BE(P.DIRECTION) === Direction.IN ? 'in' : 'out';
  const transferBufferLength = b.readUInt32BE(P.TRANSFER_BUFFER_LENGTH);
  if (transferBufferLength > lim.maxTransferLength) {
    throw new DecodeError(`CMD_SUBMIT seqnum ${seqnum}: IN transfer of ${transferBufferLength} bytes; the limit is ${lim.maxTransferLength}`, 'too-long', details);
  }
  const numberOfPackets = b.readInt32BE(P.NUMBER_OF_PACKETS);
  const dataEnd = PDU_HEADER_SIZE + (direction === 'out' ? transferBufferLength : 0);
  const isoPackets = isoDescriptors(b, dataEnd, Math.max(numberOfPackets, 0));
  checkIsoLayout(isoPackets, transferBufferLength, `CMD_SUBMIT seqnum ${seqnum}`, details);
  return {
    type: 'CMD_SUBMIT',
    seqnum,
    devid: b.readUInt32BE(P.DEVID),
    direction,
    ep,
    transferFlags: b.readUInt32BE(P.TRANSFER_FLAGS),
    transferBufferLength,
    startFrame: b.readInt32BE(P.START_FRAME),
    numberOfPackets,
    interval: b.readInt32BE(P.INTERVAL),
    setup: b.subarray(P.SETUP, P.SETUP + SETUP_SIZE),
    data: b.subarray(PDU_HEADER_SIZE, dataEnd),
    isoPackets,
  };
}

function isoDescriptors(b: Buffer, from: number, n: number): IsoPacketDescriptor[] {
  const out: IsoPacketDescriptor[] = [];
  for (let i = 0, at = from; i < n; i++, at += ISO_DESCRIPTOR_SIZE) {
    out.push({ offset: b.readUInt32BE(at), length: b.readUInt32BE(at + 4), actualLength: b.readUInt32BE(at + 8), status: b.readInt32BE(at + 12) });
  }
  return out;
}

/**
 * ISO packets lie in order, without overlapping, inside the transfer buffer (usbip_pad_iso moves
 * them assuming exactly that). A request's actual lengths and statuses are not looked at: Linux
 * sends -EXDEV and 0 there (usb_submit_urb resets them).
 */
function checkIsoLayout(packets: IsoPacketDescriptor[], bufferLength: number, what: string, details: UsbipErrorDetails): void {
  let end = 0;
  for (let i = 0; i < packets.length; i++) {
    const p = packets[i] as IsoPacketDescriptor;
    if (p.offset < end) throw new DecodeError(`${what}: ISO packet ${i} at offset ${p.offset} overlaps the one before (ending at ${end})`, 'iso', details);
    end = p.offset + p.length;
    if (end > bufferLength) throw new DecodeError(`${what}: ISO packet ${i} (offset ${p.offset}, length ${p.length}) ends past the ${bufferLength}-byte buffer`, 'iso', details);
  }
}

/**
 * Decodes one server message (exactly its bytes): OP_REP_DEVLIST, OP_REP_IMPORT, RET_SUBMIT (which
 * needs `ctx`, what the client sent with that seqnum), RET_UNLINK. Throws DecodeError only.
 */
export function decodeReply(bytes: Buffer, ctx?: SubmitLookup, limits?: DecodeLimits): UsbipReply {
  const lim = limitsOf(limits);
  wholeMessage(bytes, replyLayout(bytes.length, peekOf(bytes), lim, ctx));
  return replyBody(bytes, ctx);
}

function replyBody(b: Buffer, ctx: SubmitLookup | undefined): UsbipReply {
  const command = b.readUInt32BE(0);
  if (command === Command.RET_SUBMIT) {
    const seqnum = b.readUInt32BE(P.SEQNUM);
    const req = lookup(ctx, seqnum);
    if (req === undefined) throw new DecodeError(`RET_SUBMIT for seqnum ${seqnum}, which has no request outstanding`, 'seqnum', { code: command, seqnum });
    return retSubmit(b, req);
  }
  if (command === Command.RET_UNLINK) {
    const m: RetUnlink = { type: 'RET_UNLINK', seqnum: b.readUInt32BE(P.SEQNUM), status: b.readInt32BE(P.STATUS) };
    return m;
  }
  const code = b.readUInt16BE(2);
  const status = b.readUInt32BE(4);
  if (code === OpCode.REP_IMPORT) {
    const m: OpRepImport = { type: 'OP_REP_IMPORT', status, device: status === OpStatus.OK ? deviceRecord(b, OP_HEADER_SIZE, code) : null };
    return m;
  }
  const devices: DevlistEntry[] = [];
  if (status === OpStatus.OK) {
    const ndev = b.readUInt32BE(OP_HEADER_SIZE);
    let at = DEVLIST_HEADER_SIZE;
    for (let i = 0; i < ndev; i++) {
      const device = deviceRecord(b, at, code);
      at += DEVICE_RECORD_SIZE;
      const interfaces: InterfaceRecord[] = [];
      for (let j = 0; j < device.bNumInterfaces; j++, at += INTERFACE_RECORD_SIZE) {
        interfaces.push({ bInterfaceClass: b[at] as number, bInterfaceSubClass: b[at + 1] as number, bInterfaceProtocol: b[at + 2] as number });
      }
      devices.push({ device, interfaces });
    }
  }
  const m: OpRepDevlist = { type: 'OP_REP_DEVLIST', status, devices };
  return m;
}

function retSubmit(b: Buffer, req: SubmitContext): RetSubmit {
  const seqnum = b.readUInt32BE(P.SEQNUM);
  const details = { code: Command.RET_SUBMIT, seqnum };
  const actualLength = b.readUInt32BE(P.ACTUAL_LENGTH);
  const numberOfPackets = b.readInt32BE(P.NUMBER_OF_PACKETS);
  const dataEnd = PDU_HEADER_SIZE + (req.direction === 'in' ? actualLength : 0);
  const descriptors = req.numberOfPackets > 0 && numberOfPackets > 0 ? numberOfPackets : 0;
  if (req.numberOfPackets <= 0 && numberOfPackets > 0) {
    // Framed as vhci frames it (no descriptors for a transfer that is not isochronous), but a
    // packet count there is nonsense: a server echoes the request's 0 or -1.
    throw new DecodeError(`RET_SUBMIT seqnum ${seqnum}: number_of_packets ${numberOfPackets} for a request without ISO packets`, 'iso', details);
  }
  const isoPackets = isoDescriptors(b, dataEnd, descriptors);
  if (descriptors > 0) {
    const what = `RET_SUBMIT seqnum ${seqnum}`;
    checkIsoLayout(isoPackets, req.transferBufferLength, what, details);
    let sum = 0;
    for (const [i, p] of isoPackets.entries()) {
      if (p.actualLength > p.length) throw new DecodeError(`${what}: ISO packet ${i} has actual_length ${p.actualLength} > length ${p.length}`, 'iso', details);
      sum += p.actualLength;
    }
    // vhci_rx.c (usbip_recv_iso): "total length of iso packets ... not equal to actual length of buffer".
    if (sum !== actualLength) throw new DecodeError(`${what}: ISO actual lengths add up to ${sum}, actual_length is ${actualLength}`, 'iso', details);
  }
  return {
    type: 'RET_SUBMIT',
    seqnum,
    status: b.readInt32BE(P.STATUS),
    actualLength,
    startFrame: b.readInt32BE(P.START_FRAME),
    numberOfPackets,
    errorCount: b.readInt32BE(P.ERROR_COUNT),
    data: b.subarray(PDU_HEADER_SIZE, dataEnd),
    isoPackets,
  };
}

function deviceRecord(b: Buffer, at: number, code: number): DeviceRecord {
  return {
    path: cString(b, at + D.PATH, PATH_SIZE, 'path', { code }),
    busid: cString(b, at + D.BUSID, BUSID_SIZE, 'busid', { code }),
    busnum: b.readUInt32BE(at + D.BUSNUM),
    devnum: b.readUInt32BE(at + D.DEVNUM),
    speed: b.readUInt32BE(at + D.SPEED),
    idVendor: b.readUInt16BE(at + D.ID_VENDOR),
    idProduct: b.readUInt16BE(at + D.ID_PRODUCT),
    bcdDevice: b.readUInt16BE(at + D.BCD_DEVICE),
    bDeviceClass: b[at + D.DEVICE_CLASS] as number,
    bDeviceSubClass: b[at + D.DEVICE_SUBCLASS] as number,
    bDeviceProtocol: b[at + D.DEVICE_PROTOCOL] as number,
    bConfigurationValue: b[at + D.CONFIGURATION_VALUE] as number,
    bNumConfigurations: b[at + D.NUM_CONFIGURATIONS] as number,
    bNumInterfaces: b[at + D.NUM_INTERFACES] as number,
  };
}

/** A NUL-terminated string in a fixed field, as latin1 (one char per byte, so it re-encodes exactly). */
function cString(b: Buffer, at: number, size: number, what: string, details: UsbipErrorDetails): string {
  const end = b.indexOf(0, at);
  if (end < 0 || end >= at + size) throw new DecodeError(`${what} field of ${size} bytes has no terminating NUL`, 'string', details);
  return b.toString('latin1', at, end);
}

/** Reads a setup packet (USB 2.0 §9.3; little-endian words). */
export function decodeSetup(setup: Uint8Array): SetupPacket {
  if (setup.length !== SETUP_SIZE) throw new RangeError(`a setup packet is ${SETUP_SIZE} bytes, got ${setup.length}`);
  const v = new DataView(setup.buffer, setup.byteOffset, SETUP_SIZE);
  return { bmRequestType: v.getUint8(0), bRequest: v.getUint8(1), wValue: v.getUint16(2, true), wIndex: v.getUint16(4, true), wLength: v.getUint16(6, true) };
}

// --- stream readers ----------------------------------------------------------------------------


abstract class Reader<M> {
  private readonly queue = new ByteQueue();
  /** Length of the message at the front once known (its header is in), else null. */
  private frame: number | null = null;
  private failure: ProtocolError | null = null;
  protected readonly limits: Limits;

  constructor(limits: DecodeLimits) {
    this.limits = limitsOf(limits);
  }

  /** Bytes pushed and not yet returned by next(). */
  get bufferedBytes(): number {
    return this.queue.length;
  }

  /** Bytes the message at the front still needs, or 0 when not known yet. */
  get missingBytes(): number {
    return this.frame === null ? 0 : Math.max(0, this.frame - this.queue.length);
  }

  /** Appends received bytes (kept by reference: do not modify a chunk after pushing it). */
  push(chunk: Buffer): void {
    this.queue.push(chunk);
  }

  /**
   * The next whole message, or null until more bytes arrive. Throws ProtocolError when the stream
   * cannot be framed (then at once and on every later call), DecodeError when one message was
   * malformed (it is consumed; call next() again for the ones after it).
   */
  next(): M | null {
    if (this.failure) throw this.failure;
    if (this.frame === null) {
      const layout = this.layout(this.queue.length, this.queue.peek);
      if (layout === null) return null;
      if (isFailure(layout)) {
        this.failure = new ProtocolError(layout.message, layout.reason, layout.details);
        throw this.failure;
      }
      this.frame = layout;
    }
    if (this.queue.length < this.frame) return null;
    const bytes = this.queue.take(this.frame);
    this.frame = null;
    return this.body(bytes);
  }

  protected abstract layout(available: number, peek: Peek): Layout;
  protected abstract body(bytes: Buffer): M;
}

/**
 * The server's reader: splits what a client sends into OP_REQ_DEVLIST, OP_REQ_IMPORT, CMD_SUBMIT
 * and CMD_UNLINK, in any order (a server decides what each is allowed to follow). Limits are
 * checked as soon as a header is in: an OUT transfer above maxTransferLength or a
 * number_of_packets out of range is a ProtocolError before any of its bytes are buffered.
 */
export class RequestReader extends Reader<UsbipRequest> {
  constructor(limits: DecodeLimits = {}) {
    super(limits);
  }
  protected layout(available: number, peek: Peek): Layout {
    return requestLayout(available, peek, this.limits);
  }
  protected body(bytes: Buffer): UsbipRequest {
    return requestBody(bytes, this.limits);
  }
}

/**
 * The client's reader. RET_SUBMIT is framed with what the client sent for its seqnum, which
 * `pending` returns (undefined for a seqnum with no request outstanding: ProtocolError 'seqnum').
 */
export class ReplyReader extends Reader<UsbipReply> {
  constructor(
    private readonly pending: (seqnum: number) => SubmitContext | undefined,
    limits: DecodeLimits = {},
  ) {
    super(limits);
  }
  protected layout(available: number, peek: Peek): Layout {
    return replyLayout(available, peek, this.limits, this.pending);
  }
  protected body(bytes: Buffer): UsbipReply {
    return replyBody(bytes, this.pending);
  }
}
