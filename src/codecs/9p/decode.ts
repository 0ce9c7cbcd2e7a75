// 9P2000.L decoding: a FrameReader that splits a byte stream into frames (keeping leftovers, the
// pg-protocol / mqtt-packet pattern: "need more bytes" returns null, only bad input throws), and
// decodeT/decodeR that turn one frame into a message object. Pure: no I/O.
//
// Every read is bounds-checked against the frame; a frame is accepted only if its size field equals
// its length, every field fits, and nothing is left over (protocol.md gives exact layouts).
import { Errno, HEADER_SIZE, INITIAL_MAX_FRAME_SIZE, LegacyMessageType, MAXWELEM, MAX_FRAME_SIZE, MessageType, QID_SIZE } from './constants.js';
import { DecodeError, ProtocolError } from './errors.js';
import { KIND_BY_TYPE, type KindInfo } from './layout.js';
import type { Message, Qid, Rmessage, Tmessage } from './messages.js';

export { DecodeError, ProtocolError } from './errors.js';

// --- framing -----------------------------------------------------------------------------------

/**
 * Splits a 9P byte stream into frames: push() what arrives, then call next() until it returns null.
 *
 * Frames are cut as bytes are pushed. A frame that lies inside one pushed chunk is returned as a
 * view of that chunk (no copy: do not modify chunks after pushing them); a frame that spans chunks
 * is copied once into a buffer of its declared size. Each byte is handled once, however the stream
 * is chunked (a peer trickling single bytes costs no more than one sending whole frames).
 *
 * A size field below HEADER_SIZE or above the limit is caught as soon as its 4 bytes are in,
 * before any of the frame is buffered: next() returns the frames before it, then throws
 * ProtocolError (code ERR_9P_FRAMING) on this and every later call, and further pushes are dropped.
 * The stream cannot be re-synchronized: close the connection. The limit applies to frames whose
 * size field arrives after it is set.
 */
export class FrameReader {
  /** Whole frames not yet returned; `readyHead` indexes the next one. */
  private ready: (Buffer | undefined)[] = [];
  private readyHead = 0;
  private readyBytes = 0;
  /** The size field of the next frame, while it is split across chunks. */
  private readonly sizeBytes = Buffer.alloc(4);
  private sizeLen = 0;
  /** A frame being assembled from several chunks. */
  private partial: Buffer | null = null;
  private partialLen = 0;
  private max: number;
  private failure: ProtocolError | null = null;

  /** @param maxSize the largest acceptable frame (the msize limit); default INITIAL_MAX_FRAME_SIZE. */
  constructor(maxSize: number = INITIAL_MAX_FRAME_SIZE) {
    this.max = checkMaxSize(maxSize);
  }

  /** The frame-size limit in force. */
  get maxSize(): number {
    return this.max;
  }

  /** Bytes pushed and not yet returned by next(). */
  get bufferedBytes(): number {
    return this.readyBytes + this.partialLen + this.sizeLen;
  }

  /** Sets the frame-size limit, e.g. to the msize agreed in Tversion/Rversion. */
  setMaxSize(msize: number): void {
    this.max = checkMaxSize(msize);
  }

  /** Takes received bytes (whole frames inside `chunk` are kept by reference). */
  push(chunk: Buffer): void {
    if (!Buffer.isBuffer(chunk)) throw new TypeError('FrameReader.push needs a Buffer');
    let off = 0;
    while (off < chunk.length && this.failure === null) {
      const left = chunk.length - off;
      if (this.partial !== null) {
        const n = Math.min(this.partial.length - this.partialLen, left);
        chunk.copy(this.partial, this.partialLen, off, off + n);
        this.partialLen += n;
        off += n;
        if (this.partialLen === this.partial.length) {
          this.addReady(this.partial);
          this.partial = null;
          this.partialLen = 0;
        }
      } else if (this.sizeLen > 0 || left < 4) {
        const n = Math.min(4 - this.sizeLen, left);
        chunk.copy(this.sizeBytes, this.sizeLen, off, off + n);
        this.sizeLen += n;
        off += n;
        if (this.sizeLen === 4) {
          const size = this.sizeBytes.readUInt32LE(0);
          if (!this.accept(size)) break;
          this.partial = Buffer.allocUnsafe(size); // every byte is copied in before it is returned
          this.sizeBytes.copy(this.partial, 0);
          this.partialLen = 4;
          this.sizeLen = 0;
        }
      } else {
        const size = chunk.readUInt32LE(off);
        if (!this.accept(size)) break;
        if (left >= size) {
          this.addReady(chunk.subarray(off, off + size));
          off += size;
        } else {
          this.partial = Buffer.allocUnsafe(size); // filled by this and later chunks
          chunk.copy(this.partial, 0, off);
          this.partialLen = left;
          off = chunk.length;
        }
      }
    }
  }

  /** Returns the next whole frame, or null until more bytes arrive. */
  next(): Buffer | null {
    if (this.readyHead < this.ready.length) {
      const frame = this.ready[this.readyHead] as Buffer;
      this.ready[this.readyHead++] = undefined;
      this.readyBytes -= frame.length;
      if (this.readyHead === this.ready.length) {
        this.ready = [];
        this.readyHead = 0;
      } else if (this.readyHead >= 1024 && this.readyHead * 2 >= this.ready.length) {
        this.ready = this.ready.slice(this.readyHead);
        this.readyHead = 0;
      }
      return frame;
    }
    if (this.failure) throw this.failure;
    return null;
  }

  private addReady(frame: Buffer): void {
    this.ready.push(frame);
    this.readyBytes += frame.length;
  }

  private accept(size: number): boolean {
    if (size >= HEADER_SIZE && size <= this.max) return true;
    this.failure = new ProtocolError(
      size < HEADER_SIZE
        ? `9P frame size ${size} is smaller than the ${HEADER_SIZE}-byte header`
        : `9P frame size ${size} exceeds the limit of ${this.max} bytes (msize)`,
      size,
      this.max,
    );
    this.sizeLen = 0;
    return false;
  }
}

function checkMaxSize(n: number): number {
  if (!Number.isInteger(n) || n < HEADER_SIZE || n > MAX_FRAME_SIZE) {
    throw new RangeError(`9P frame-size limit must be an integer in ${HEADER_SIZE}..${MAX_FRAME_SIZE}, got ${n}`);
  }
  return n;
}

/** The 7-byte header of a frame, or null if fewer than 7 bytes are given. Does not validate. */
export function readHeader(buf: Buffer): { size: number; type: number; tag: number } | null {
  if (buf.length < HEADER_SIZE) return null;
  return { size: buf.readUInt32LE(0), type: buf[4] as number, tag: buf.readUInt16LE(5) };
}

// --- messages ----------------------------------------------------------------------------------

const LEGACY_REQUESTS = new Set<number>([LegacyMessageType.Topen, LegacyMessageType.Tcreate, LegacyMessageType.Tstat, LegacyMessageType.Twstat]);
const LEGACY_NAMES = new Map<number, string>(Object.entries(LegacyMessageType).map(([k, v]) => [v, k]));

/** Decodes one request frame (as FrameReader returns it). Bad bytes throw DecodeError, nothing else. */
export function decodeT(frame: Buffer): Tmessage {
  return decodeFrame(frame, true) as Tmessage;
}

/** Decodes one reply frame. Bad bytes throw DecodeError, nothing else. */
export function decodeR(frame: Buffer): Rmessage {
  return decodeFrame(frame, false) as Rmessage;
}

function decodeFrame(frame: Buffer, request: boolean): Message {
  if (!Buffer.isBuffer(frame)) throw new TypeError('9P frame must be a Buffer');
  if (frame.length < HEADER_SIZE) {
    throw new DecodeError(`9P frame of ${frame.length} bytes is shorter than the ${HEADER_SIZE}-byte header`);
  }
  const size = frame.readUInt32LE(0);
  const type = frame[4] as number;
  const tag = frame.readUInt16LE(5);
  if (size !== frame.length) {
    throw new DecodeError(`9P size field says ${size} bytes but the frame has ${frame.length}`, { tag, messageType: type });
  }
  const kind = KIND_BY_TYPE[type];
  if (kind === undefined || kind.request !== request) throw unknownType(type, tag, kind, request);
  return decodeBody(frame, kind, tag);
}

function unknownType(type: number, tag: number, kind: KindInfo | undefined, request: boolean): DecodeError {
  const want = request ? 'request' : 'reply';
  if (kind !== undefined) {
    return new DecodeError(`9P ${kind.kind} (type ${type}) is not a ${want}`, { tag, messageType: type });
  }
  if (type === MessageType.Tlerror) return new DecodeError('9P Tlerror (type 6) is not a message anyone sends', { tag, messageType: type });
  const legacy = LEGACY_NAMES.get(type);
  if (legacy !== undefined) {
    // A 9P2000/9P2000.u request is a real request 9P2000.L does not offer; a legacy reply (Rerror…)
    // in either direction is a protocol violation.
    const legacyRequest = request && LEGACY_REQUESTS.has(type);
    return new DecodeError(`9P ${legacy} (type ${type}) is not part of 9P2000.L`, {
      tag,
      messageType: type,
      errno: legacyRequest ? Errno.EOPNOTSUPP : Errno.EPROTO,
    });
  }
  return new DecodeError(`unknown 9P message type ${type}`, { tag, messageType: type, errno: Errno.ENOSYS });
}

/** Read position in one frame being decoded (one small object instead of per-call closures). */
interface Cursor {
  frame: Buffer;
  off: number;
  kind: KindInfo;
  tag: number;
  /** For 64-bit reads: DataView.getBigUint64 is several times faster than Buffer.readBigUInt64LE. */
  view: DataView | null;
}

function u64At(c: Cursor, at: number): bigint {
  c.view ??= new DataView(c.frame.buffer, c.frame.byteOffset, c.frame.byteLength);
  return c.view.getBigUint64(at, true);
}

function fail(c: Cursor, what: string): never {
  throw new DecodeError(`9P ${c.kind.kind}: ${what}`, { tag: c.tag, messageType: c.kind.type });
}

function need(c: Cursor, n: number, field: string): void {
  const left = c.frame.length - c.off;
  if (left < n) fail(c, `${field} needs ${n} bytes at offset ${c.off}, the frame has ${left} left`);
}

function readStr(c: Cursor, field: string): Buffer {
  need(c, 2, `${field} length`);
  const len = c.frame.readUInt16LE(c.off);
  c.off += 2;
  need(c, len, field);
  const s = len === 0 ? Buffer.alloc(0) : Buffer.from(c.frame.subarray(c.off, c.off + len)); // a copy
  c.off += len;
  return s;
}

function readQid(c: Cursor, field: string): Qid {
  need(c, QID_SIZE, field);
  const f = c.frame;
  const q = { type: f[c.off] as number, version: f.readUInt32LE(c.off + 1), path: u64At(c, c.off + 5) };
  c.off += QID_SIZE;
  return q;
}

function decodeBody(frame: Buffer, kind: KindInfo, tag: number): Message {
  const end = frame.length;
  const c: Cursor = { frame, off: HEADER_SIZE, kind, tag, view: null };
  if (end - HEADER_SIZE < kind.minBody) fail(c, `body of ${end - HEADER_SIZE} bytes is shorter than the ${kind.minBody}-byte minimum`);

  const msg: Record<string, unknown> = { type: kind.kind, tag };
  for (const [name, fk] of kind.fields) {
    switch (fk) {
      case 'u8':
        need(c, 1, name);
        msg[name] = frame[c.off];
        c.off += 1;
        break;
      case 'u16':
        need(c, 2, name);
        msg[name] = frame.readUInt16LE(c.off);
        c.off += 2;
        break;
      case 'u32':
        need(c, 4, name);
        msg[name] = frame.readUInt32LE(c.off);
        c.off += 4;
        break;
      case 'u64':
        need(c, 8, name);
        msg[name] = u64At(c, c.off);
        c.off += 8;
        break;
      case 'str':
        msg[name] = readStr(c, name);
        break;
      case 'version':
        msg[name] = readStr(c, name).toString('latin1');
        break;
      case 'qid':
        msg[name] = readQid(c, name);
        break;
      case 'wnames': {
        need(c, 2, 'nwname');
        const n = frame.readUInt16LE(c.off);
        c.off += 2;
        if (n > MAXWELEM) fail(c, `nwname ${n} exceeds MAXWELEM (${MAXWELEM})`);
        const names: Buffer[] = [];
        for (let i = 0; i < n; i++) names.push(readStr(c, `wname[${i}]`));
        msg[name] = names;
        break;
      }
      case 'wqids': {
        need(c, 2, 'nwqid');
        const n = frame.readUInt16LE(c.off);
        c.off += 2;
        if (n > MAXWELEM) fail(c, `nwqid ${n} exceeds MAXWELEM (${MAXWELEM})`);
        const qids: Qid[] = [];
        for (let i = 0; i < n; i++) qids.push(readQid(c, `wqid[${i}]`));
        msg[name] = qids;
        break;
      }
      case 'data': {
        need(c, 4, 'count');
        const count = frame.readUInt32LE(c.off);
        c.off += 4;
        if (count !== end - c.off) fail(c, `count ${count} does not match the ${end - c.off} data bytes in the frame`);
        msg[name] = frame.subarray(c.off, end); // aliases the frame (see messages.ts)
        c.off = end;
        break;
      }
    }
  }
  if (c.off !== end) fail(c, `${end - c.off} trailing bytes after the last field`);
  return msg as unknown as Message;
}
