// USB/IP encoding: message objects to bytes. encodeParts() returns the header and the transfer
// buffer as separate Buffers (the buffer is not copied: a server writes them with one writev);
// encode() joins them. Fields are checked for range and the lengths for consistency (TypeError or
// RangeError: a bug in the caller, not bad input). The encoder does not enforce the decoder's
// semantic rules (ISO packets in order, endpoint ≤ 15 is the exception since the field is 4 bits),
// so tests can build malformed messages with it.
import {
  BUSID_SIZE,
  Command,
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
import type { CmdSubmit, DeviceRecord, DevlistEntry, IsoPacketDescriptor, RetSubmit, SetupPacket, UsbipMessage } from './messages.js';

function int(v: unknown, min: number, max: number, what: string): number {
  if (typeof v !== 'number' || !Number.isInteger(v)) throw new TypeError(`usbip ${what} must be an integer, got ${String(v)}`);
  if (v < min || v > max) throw new RangeError(`usbip ${what} must be in ${min}..${max}, got ${v}`);
  return v;
}
const u32 = (v: unknown, what: string): number => int(v, 0, 0xffff_ffff, what);
const i32 = (v: unknown, what: string): number => int(v, -0x8000_0000, 0x7fff_ffff, what);
const u16 = (v: unknown, what: string): number => int(v, 0, 0xffff, what);
const u8 = (v: unknown, what: string): number => int(v, 0, 0xff, what);

function buffer(v: unknown, what: string): Buffer {
  if (!Buffer.isBuffer(v)) throw new TypeError(`usbip ${what} must be a Buffer`);
  return v;
}

/** Writes a string NUL-padded into a fixed field: latin1, no NUL, at most size - 1 chars. */
function writeString(out: Buffer, at: number, size: number, s: unknown, what: string): void {
  if (typeof s !== 'string') throw new TypeError(`usbip ${what} must be a string`);
  if (s.length > size - 1) throw new RangeError(`usbip ${what} "${s}" is longer than ${size - 1} bytes`);
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c === 0 || c > 0xff) throw new RangeError(`usbip ${what} may not contain NUL or characters above U+00FF`);
  }
  out.write(s, at, 'latin1');
}

function opHeader(size: number, code: number, status: unknown): Buffer {
  const b = Buffer.alloc(size);
  b.writeUInt16BE(USBIP_VERSION, 0);
  b.writeUInt16BE(code, 2);
  b.writeUInt32BE(u32(status, 'status'), 4);
  return b;
}

function writeDevice(out: Buffer, at: number, d: DeviceRecord): void {
  writeString(out, at + D.PATH, PATH_SIZE, d.path, 'path');
  writeString(out, at + D.BUSID, BUSID_SIZE, d.busid, 'busid');
  out.writeUInt32BE(u32(d.busnum, 'busnum'), at + D.BUSNUM);
  out.writeUInt32BE(u32(d.devnum, 'devnum'), at + D.DEVNUM);
  out.writeUInt32BE(u32(d.speed, 'speed'), at + D.SPEED);
  out.writeUInt16BE(u16(d.idVendor, 'idVendor'), at + D.ID_VENDOR);
  out.writeUInt16BE(u16(d.idProduct, 'idProduct'), at + D.ID_PRODUCT);
  out.writeUInt16BE(u16(d.bcdDevice, 'bcdDevice'), at + D.BCD_DEVICE);
  out[at + D.DEVICE_CLASS] = u8(d.bDeviceClass, 'bDeviceClass');
  out[at + D.DEVICE_SUBCLASS] = u8(d.bDeviceSubClass, 'bDeviceSubClass');
  out[at + D.DEVICE_PROTOCOL] = u8(d.bDeviceProtocol, 'bDeviceProtocol');
  out[at + D.CONFIGURATION_VALUE] = u8(d.bConfigurationValue, 'bConfigurationValue');
  out[at + D.NUM_CONFIGURATIONS] = u8(d.bNumConfigurations, 'bNumConfigurations');
  out[at + D.NUM_INTERFACES] = u8(d.bNumInterfaces, 'bNumInterfaces');
}

function devlist(status: number, devices: DevlistEntry[]): Buffer {
  if (!Array.isArray(devices)) throw new TypeError('usbip OP_REP_DEVLIST devices must be an array');
  if (status !== OpStatus.OK) {
    if (devices.length > 0) throw new RangeError(`usbip OP_REP_DEVLIST with status ${status} ends after the status: it lists no devices`);
    return opHeader(OP_HEADER_SIZE, OpCode.REP_DEVLIST, status);
  }
  let size = DEVLIST_HEADER_SIZE;
  for (const [i, e] of devices.entries()) {
    if (e.device.bNumInterfaces !== e.interfaces.length) {
      throw new RangeError(`usbip OP_REP_DEVLIST device ${i}: bNumInterfaces ${e.device.bNumInterfaces} but ${e.interfaces.length} interface records`);
    }
    size += DEVICE_RECORD_SIZE + e.interfaces.length * INTERFACE_RECORD_SIZE;
  }
  const b = opHeader(size, OpCode.REP_DEVLIST, status);
  b.writeUInt32BE(devices.length, OP_HEADER_SIZE);
  let at = DEVLIST_HEADER_SIZE;
  for (const e of devices) {
    writeDevice(b, at, e.device);
    at += DEVICE_RECORD_SIZE;
    for (const f of e.interfaces) {
      b[at] = u8(f.bInterfaceClass, 'bInterfaceClass');
      b[at + 1] = u8(f.bInterfaceSubClass, 'bInterfaceSubClass');
      b[at + 2] = u8(f.bInterfaceProtocol, 'bInterfaceProtocol');
      at += INTERFACE_RECORD_SIZE; // the padding byte stays 0
    }
  }
  return b;
}

function pduHeader(command: number, seqnum: unknown, devid: unknown, direction: number, ep: number): Buffer {
  const h = Buffer.alloc(PDU_HEADER_SIZE);
  h.writeUInt32BE(command, P.COMMAND);
  h.writeUInt32BE(u32(seqnum, 'seqnum'), P.SEQNUM);
  h.writeUInt32BE(u32(devid, 'devid'), P.DEVID);
  h.writeUInt32BE(direction, P.DIRECTION);
  h.writeUInt32BE(ep, P.EP);
  return h;
}

function isoBytes(packets: IsoPacketDescriptor[], numberOfPackets: number, what: string): Buffer | null {
  if (!Array.isArray(packets)) throw new TypeError(`usbip ${what} isoPackets must be an array`);
  const want = Math.max(numberOfPackets, 0);
  if (packets.length !== want) throw new RangeError(`usbip ${what} has number_of_packets ${numberOfPackets} but ${packets.length} ISO descriptors`);
  if (want === 0) return null;
  const b = Buffer.allocUnsafe(want * ISO_DESCRIPTOR_SIZE);
  packets.forEach((p, i) => {
    const at = i * ISO_DESCRIPTOR_SIZE;
    b.writeUInt32BE(u32(p.offset, `ISO packet ${i} offset`), at);
    b.writeUInt32BE(u32(p.length, `ISO packet ${i} length`), at + 4);
    b.writeUInt32BE(u32(p.actualLength, `ISO packet ${i} actualLength`), at + 8);
    b.writeInt32BE(i32(p.status, `ISO packet ${i} status`), at + 12);
  });
  return b;
}

function cmdSubmit(m: CmdSubmit): Buffer[] {
  if (m.direction !== 'in' && m.direction !== 'out') throw new TypeError(`usbip CMD_SUBMIT direction must be 'in' or 'out', got ${String(m.direction)}`);
  const h = pduHeader(Command.CMD_SUBMIT, m.seqnum, m.devid, m.direction === 'in' ? Direction.IN : Direction.OUT, int(m.ep, 0, MAX_ENDPOINT, 'ep'));
  const length = int(m.transferBufferLength, 0, 0x7fff_ffff, 'transferBufferLength');
  const data = buffer(m.data, 'CMD_SUBMIT data');
  const want = m.direction === 'out' ? length : 0;
  if (data.length !== want) throw new RangeError(`usbip CMD_SUBMIT ${m.direction.toUpperCase()} carries ${want} data bytes, got ${data.length}`);
  const setup = buffer(m.setup, 'CMD_SUBMIT setup');
  if (setup.length !== SETUP_SIZE) throw new RangeError(`usbip CMD_SUBMIT setup must be ${SETUP_SIZE} bytes, got ${setup.length}`);
  const packets = int(m.numberOfPackets, -1, 0x7fff_ffff, 'numberOfPackets');
  h.writeUInt32BE(u32(m.transferFlags, 'transferFlags'), P.TRANSFER_FLAGS);
  h.writeUInt32BE(length, P.TRANSFER_BUFFER_LENGTH);
  h.writeInt32BE(i32(m.startFrame, 'startFrame'), P.START_FRAME);
  h.writeInt32BE(packets, P.NUMBER_OF_PACKETS);
  h.writeInt32BE(i32(m.interval, 'interval'), P.INTERVAL);
  setup.copy(h, P.SETUP);
  const iso = isoBytes(m.isoPackets, packets, 'CMD_SUBMIT');
  return [h, ...(data.length > 0 ? [data] : []), ...(iso ? [iso] : [])];
}

function retSubmit(m: RetSubmit): Buffer[] {
  const h = pduHeader(Command.RET_SUBMIT, m.seqnum, 0, 0, 0);
  const actual = int(m.actualLength, 0, 0x7fff_ffff, 'actualLength');
  const data = buffer(m.data, 'RET_SUBMIT data');
  if (data.length !== 0 && data.length !== actual) {
    throw new RangeError(`usbip RET_SUBMIT data must be empty (OUT) or actualLength ${actual} bytes (IN), got ${data.length}`);
  }
  const packets = int(m.numberOfPackets, -1, 0x7fff_ffff, 'numberOfPackets');
  h.writeInt32BE(i32(m.status, 'status'), P.STATUS);
  h.writeUInt32BE(actual, P.ACTUAL_LENGTH);
  h.writeInt32BE(i32(m.startFrame, 'startFrame'), P.START_FRAME);
  h.writeInt32BE(packets, P.NUMBER_OF_PACKETS);
  h.writeInt32BE(i32(m.errorCount, 'errorCount'), P.ERROR_COUNT);
  const iso = isoBytes(m.isoPackets, packets, 'RET_SUBMIT');
  return [h, ...(data.length > 0 ? [data] : []), ...(iso ? [iso] : [])];
}

/**
 * A message as the Buffers to write, in order: the header (with the op body) first, then the
 * transfer buffer as given (not copied), then ISO descriptors.
 */
export function encodeParts(m: UsbipMessage): Buffer[] {
  switch (m.type) {
    case 'OP_REQ_DEVLIST':
      return [opHeader(OP_HEADER_SIZE, OpCode.REQ_DEVLIST, m.status)];
    case 'OP_REQ_IMPORT': {
      const b = opHeader(IMPORT_REQUEST_SIZE, OpCode.REQ_IMPORT, m.status);
      writeString(b, OP_HEADER_SIZE, BUSID_SIZE, m.busid, 'busid');
      return [b];
    }
    case 'OP_REP_DEVLIST':
      return [devlist(u32(m.status, 'status'), m.devices)];
    case 'OP_REP_IMPORT': {
      const status = u32(m.status, 'status');
      if ((status === OpStatus.OK) !== (m.device !== null)) throw new RangeError('usbip OP_REP_IMPORT carries a device exactly when its status is 0');
      if (m.device === null) return [opHeader(OP_HEADER_SIZE, OpCode.REP_IMPORT, status)];
      const b = opHeader(OP_HEADER_SIZE + DEVICE_RECORD_SIZE, OpCode.REP_IMPORT, status);
      writeDevice(b, OP_HEADER_SIZE, m.device);
      return [b];
    }
    case 'CMD_SUBMIT':
      return cmdSubmit(m);
    case 'CMD_UNLINK': {
      const h = pduHeader(Command.CMD_UNLINK, m.seqnum, m.devid, 0, 0);
      h.writeUInt32BE(u32(m.unlinkSeqnum, 'unlinkSeqnum'), P.UNLINK_SEQNUM);
      return [h];
    }
    case 'RET_SUBMIT':
      return retSubmit(m);
    case 'RET_UNLINK': {
      const h = pduHeader(Command.RET_UNLINK, m.seqnum, 0, 0, 0);
      h.writeInt32BE(i32(m.status, 'status'), P.STATUS);
      return [h];
    }
    default:
      throw new TypeError(`usbip: unknown message type ${String((m as { type: unknown }).type)}`);
  }
}

/** A message as one Buffer. */
export function encode(m: UsbipMessage): Buffer {
  const parts = encodeParts(m);
  return parts.length === 1 ? (parts[0] as Buffer) : Buffer.concat(parts);
}

/** Writes a setup packet (USB 2.0 §9.3; little-endian words). */
export function encodeSetup(s: SetupPacket): Buffer {
  const b = Buffer.alloc(SETUP_SIZE);
  b[0] = u8(s.bmRequestType, 'bmRequestType');
  b[1] = u8(s.bRequest, 'bRequest');
  b.writeUInt16LE(u16(s.wValue, 'wValue'), 2);
  b.writeUInt16LE(u16(s.wIndex, 'wIndex'), 4);
  b.writeUInt16LE(u16(s.wLength, 'wLength'), 6);
  return b;
}
