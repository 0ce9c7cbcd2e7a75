// 9P2000.L encoding: message object -> one frame, in a single exact-size allocation, after every
// field has been checked (integers in range, u64 as bigint, strings ≤ 65535 bytes, ≤ MAXWELEM walk
// elements). Wrong JS types throw TypeError, values out of range RangeError (Node's convention).
// Plus zero-copy helpers for the data path: a server reads file data straight into an Rread or
// Rreaddir frame, and a client can send a Twrite header and its data as two writes.
import {
  HEADER_SIZE,
  MAXWELEM,
  MAX_FRAME_SIZE,
  MAX_STRING_BYTES,
  MessageType,
  QID_SIZE,
  RREAD_HEADER_SIZE,
  TWRITE_HEADER_SIZE,
} from './constants.js';
import { KIND_INFO, type KindInfo } from './layout.js';
import type { Message, Qid, Rmessage, Tmessage } from './messages.js';

const U64_MAX = 0xffff_ffff_ffff_ffffn;

type Fields = Record<string, unknown>;

function where(kind: string, field: string): string {
  return `9P ${kind}.${field}`;
}

function checkUint(v: unknown, max: number, kind: string, field: string): number {
  if (typeof v !== 'number') throw new TypeError(`${where(kind, field)} must be a number, got ${typeof v}`);
  if (!Number.isInteger(v) || v < 0 || v > max) throw new RangeError(`${where(kind, field)} must be an integer in 0..${max}, got ${v}`);
  return v;
}

function checkU64(v: unknown, kind: string, field: string): bigint {
  if (typeof v !== 'bigint') throw new TypeError(`${where(kind, field)} must be a bigint, got ${typeof v}`);
  if (v < 0n || v > U64_MAX) throw new RangeError(`${where(kind, field)} must be in 0..2^64-1, got ${v}`);
  return v;
}

function checkBytes(v: unknown, kind: string, field: string): Uint8Array {
  if (!(v instanceof Uint8Array)) throw new TypeError(`${where(kind, field)} must be a Buffer`);
  return v;
}

function checkStr(v: unknown, kind: string, field: string): Uint8Array {
  const b = checkBytes(v, kind, field);
  if (b.length > MAX_STRING_BYTES) throw new RangeError(`${where(kind, field)} is ${b.length} bytes; a 9P string holds at most ${MAX_STRING_BYTES}`);
  return b;
}

function checkVersion(v: unknown, kind: string, field: string): string {
  if (typeof v !== 'string') throw new TypeError(`${where(kind, field)} must be a string, got ${typeof v}`);
  if (!isLatin1(v)) throw new RangeError(`${where(kind, field)} must be latin1 (one byte per character)`);
  if (v.length > MAX_STRING_BYTES) throw new RangeError(`${where(kind, field)} is ${v.length} bytes; a 9P string holds at most ${MAX_STRING_BYTES}`);
  return v;
}

function isLatin1(s: string): boolean {
  for (let i = 0; i < s.length; i++) if (s.charCodeAt(i) > 0xff) return false;
  return true;
}

function checkQid(v: unknown, kind: string, field: string): Qid {
  if (typeof v !== 'object' || v === null) throw new TypeError(`${where(kind, field)} must be a qid object`);
  const q = v as Record<string, unknown>;
  checkUint(q['type'], 0xff, kind, `${field}.type`);
  checkUint(q['version'], 0xffff_ffff, kind, `${field}.version`);
  checkU64(q['path'], kind, `${field}.path`);
  return v as Qid;
}

function checkList(v: unknown, kind: string, field: string): unknown[] {
  if (!Array.isArray(v)) throw new TypeError(`${where(kind, field)} must be an array`);
  if (v.length > MAXWELEM) throw new RangeError(`${where(kind, field)} has ${v.length} elements; at most ${MAXWELEM} (MAXWELEM)`);
  return v;
}

/** Validates every field and returns the frame size. */
function sizeOf(info: KindInfo, m: Fields): number {
  checkUint(m['tag'], 0xffff, info.kind, 'tag');
  let size = HEADER_SIZE;
  for (const [name, fk] of info.fields) {
    const v = m[name];
    switch (fk) {
      case 'u8':
        checkUint(v, 0xff, info.kind, name);
        size += 1;
        break;
      case 'u16':
        checkUint(v, 0xffff, info.kind, name);
        size += 2;
        break;
      case 'u32':
        checkUint(v, 0xffff_ffff, info.kind, name);
        size += 4;
        break;
      case 'u64':
        checkU64(v, info.kind, name);
        size += 8;
        break;
      case 'str':
        size += 2 + checkStr(v, info.kind, name).length;
        break;
      case 'version':
        size += 2 + checkVersion(v, info.kind, name).length;
        break;
      case 'qid':
        checkQid(v, info.kind, name);
        size += QID_SIZE;
        break;
      case 'wnames': {
        const list = checkList(v, info.kind, name);
        size += 2;
        for (let i = 0; i < list.length; i++) size += 2 + checkStr(list[i], info.kind, `${name}[${i}]`).length;
        break;
      }
      case 'wqids': {
        const list = checkList(v, info.kind, name);
        for (let i = 0; i < list.length; i++) checkQid(list[i], info.kind, `${name}[${i}]`);
        size += 2 + list.length * QID_SIZE;
        break;
      }
      case 'data':
        size += 4 + checkBytes(v, info.kind, name).length;
        break;
    }
  }
  if (size > MAX_FRAME_SIZE) throw new RangeError(`9P ${info.kind} would be ${size} bytes; a frame holds at most ${MAX_FRAME_SIZE}`);
  return size;
}

function writeQid(buf: Buffer, view: DataView, off: number, q: Qid): number {
  buf[off] = q.type;
  buf.writeUInt32LE(q.version, off + 1);
  view.setBigUint64(off + 5, q.path, true);
  return off + QID_SIZE;
}

function writeStr(buf: Buffer, off: number, s: Uint8Array): number {
  buf.writeUInt16LE(s.length, off);
  buf.set(s, off + 2);
  return off + 2 + s.length;
}

/** Writes a validated message; every byte of buf is written. */
function writeFrame(info: KindInfo, m: Fields, size: number): Buffer {
  const buf = Buffer.allocUnsafe(size);
  // DataView.setBigUint64 is several times faster than Buffer.writeBigUInt64LE.
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  buf.writeUInt32LE(size, 0);
  buf[4] = info.type;
  buf.writeUInt16LE(m['tag'] as number, 5);
  let off = HEADER_SIZE;
  for (const [name, fk] of info.fields) {
    const v = m[name];
    switch (fk) {
      case 'u8':
        buf[off] = v as number;
        off += 1;
        break;
      case 'u16':
        buf.writeUInt16LE(v as number, off);
        off += 2;
        break;
      case 'u32':
        buf.writeUInt32LE(v as number, off);
        off += 4;
        break;
      case 'u64':
        view.setBigUint64(off, v as bigint, true);
        off += 8;
        break;
      case 'str':
        off = writeStr(buf, off, v as Uint8Array);
        break;
      case 'version': {
        const s = v as string;
        buf.writeUInt16LE(s.length, off);
        off += 2 + buf.write(s, off + 2, 'latin1');
        break;
      }
      case 'qid':
        off = writeQid(buf, view, off, v as Qid);
        break;
      case 'wnames': {
        const list = v as Uint8Array[];
        buf.writeUInt16LE(list.length, off);
        off += 2;
        for (const s of list) off = writeStr(buf, off, s);
        break;
      }
      case 'wqids': {
        const list = v as Qid[];
        buf.writeUInt16LE(list.length, off);
        off += 2;
        for (const q of list) off = writeQid(buf, view, off, q);
        break;
      }
      case 'data': {
        const d = v as Uint8Array;
        buf.writeUInt32LE(d.length, off);
        buf.set(d, off + 4);
        off += 4 + d.length;
        break;
      }
    }
  }
  if (off !== size) throw new Error(`9P ${info.kind}: internal size mismatch (${off} != ${size})`);
  return buf;
}

function infoOf(msg: unknown, request: boolean): KindInfo {
  const kind = typeof msg === 'object' && msg !== null ? (msg as Fields)['type'] : undefined;
  const info = typeof kind === 'string' && Object.hasOwn(KIND_INFO, kind) ? KIND_INFO[kind as Message['type']] : undefined;
  if (info === undefined || info.request !== request) {
    throw new TypeError(`not a 9P2000.L ${request ? 'request' : 'reply'}: type ${JSON.stringify(kind)}`);
  }
  return info;
}

/** Encodes a request into one frame. */
export function encodeT(msg: Tmessage): Buffer {
  const info = infoOf(msg, true);
  const m = msg as unknown as Fields;
  return writeFrame(info, m, sizeOf(info, m));
}

/** Encodes a reply into one frame. */
export function encodeR(msg: Rmessage): Buffer {
  const info = infoOf(msg, false);
  const m = msg as unknown as Fields;
  return writeFrame(info, m, sizeOf(info, m));
}

/**
 * The frame size a message encodes to (validating it like the encoders). A server checks this
 * against msize before sending a reply whose size it does not control (Rreadlink, Rgetlock, …).
 */
export function encodedSize(msg: Message): number {
  const m = msg as unknown as Fields;
  return sizeOf(infoOf(msg, typeof m['type'] === 'string' && m['type'].startsWith('T')), m);
}

// --- zero-copy data path -----------------------------------------------------------------------

/** An Rread/Rreaddir frame under construction: fill `data` (which aliases `frame`), then finish. */
export interface DataFrame {
  frame: Buffer;
  data: Buffer;
}

// Rread and Rreaddir share the header layout size[4] type[1] tag[2] count[4] (RREAD_HEADER_SIZE).
function allocData(type: number, name: string, tag: number, maxCount: number): DataFrame {
  checkUint(tag, 0xffff, name, 'tag');
  checkUint(maxCount, MAX_FRAME_SIZE - RREAD_HEADER_SIZE, name, 'count');
  // Zero-filled: a caller that finishes with a count larger than what it wrote sends zeros, never
  // stale heap memory.
  const frame = Buffer.alloc(RREAD_HEADER_SIZE + maxCount);
  frame[4] = type;
  frame.writeUInt16LE(tag, 5);
  return { frame, data: frame.subarray(RREAD_HEADER_SIZE) };
}

function finishData(type: number, name: string, frame: Buffer, count: number): Buffer {
  if (!Buffer.isBuffer(frame) || frame.length < RREAD_HEADER_SIZE || frame[4] !== type) {
    throw new TypeError(`finish${name} needs a frame from alloc${name}`);
  }
  checkUint(count, frame.length - RREAD_HEADER_SIZE, name, 'count');
  const size = RREAD_HEADER_SIZE + count;
  frame.writeUInt32LE(size, 0);
  frame.writeUInt32LE(count, HEADER_SIZE);
  return frame.subarray(0, size);
}

/**
 * Allocates an Rread frame with room for maxCount data bytes (cap maxCount at
 * min(Tread.count, msize - RREAD_HEADER_SIZE)). Read file data into `data`, then finishRread.
 */
export function allocRread(tag: number, maxCount: number): DataFrame {
  return allocData(MessageType.Rread, 'Rread', tag, maxCount);
}

/** Sets size and count for `count` data bytes and returns the exact frame (a view of `frame`). */
export function finishRread(frame: Buffer, count: number): Buffer {
  return finishData(MessageType.Rread, 'Rread', frame, count);
}

/** Like allocRread, for Rreaddir: fill `data` with writeDirents (dirent.ts). */
export function allocRreaddir(tag: number, maxCount: number): DataFrame {
  return allocData(MessageType.Rreaddir, 'Rreaddir', tag, maxCount);
}

export function finishRreaddir(frame: Buffer, count: number): Buffer {
  return finishData(MessageType.Rreaddir, 'Rreaddir', frame, count);
}

/** The 11-byte header of an Rread whose `count` data bytes are sent right after it (writev). */
export function encodeRreadHeader(tag: number, count: number): Buffer {
  checkUint(tag, 0xffff, 'Rread', 'tag');
  checkUint(count, MAX_FRAME_SIZE - RREAD_HEADER_SIZE, 'Rread', 'count');
  const buf = Buffer.allocUnsafe(RREAD_HEADER_SIZE);
  buf.writeUInt32LE(RREAD_HEADER_SIZE + count, 0);
  buf[4] = MessageType.Rread;
  buf.writeUInt16LE(tag, 5);
  buf.writeUInt32LE(count, HEADER_SIZE);
  return buf;
}

/** The 23-byte header of a Twrite whose `count` data bytes are sent right after it (writev). */
export function encodeTwriteHeader(tag: number, fid: number, offset: bigint, count: number): Buffer {
  checkUint(tag, 0xffff, 'Twrite', 'tag');
  checkUint(fid, 0xffff_ffff, 'Twrite', 'fid');
  checkU64(offset, 'Twrite', 'offset');
  checkUint(count, MAX_FRAME_SIZE - TWRITE_HEADER_SIZE, 'Twrite', 'count');
  const buf = Buffer.allocUnsafe(TWRITE_HEADER_SIZE);
  buf.writeUInt32LE(TWRITE_HEADER_SIZE + count, 0);
  buf[4] = MessageType.Twrite;
  buf.writeUInt16LE(tag, 5);
  buf.writeUInt32LE(fid, 7);
  buf.writeBigUInt64LE(offset, 11);
  buf.writeUInt32LE(count, 19);
  return buf;
}
