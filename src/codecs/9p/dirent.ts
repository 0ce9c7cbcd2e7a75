// Directory entries inside Rreaddir data (protocol.md, readdir):
//   qid[13] offset[8] type[1] name[s]
// `offset` is the server's cookie for the entry after this one: the client passes the last entry's
// offset as the next Treaddir.offset. An Rreaddir never holds more than Treaddir.count bytes, and
// never part of an entry: entries that do not fit wait for the next Treaddir.
import { DIRENT_HEADER_SIZE, DirentLayout, MAX_STRING_BYTES, NOTAG, QID_SIZE } from './constants.js';
import { DecodeError } from './errors.js';
import type { Qid } from './messages.js';

export interface Dirent {
  qid: Qid;
  /** Cookie to resume reading after this entry. */
  offset: bigint;
  /** DirentType (d_type). */
  type: number;
  /** The name's bytes (not necessarily UTF-8). Decoded names are copies. */
  name: Buffer;
}

const U64_MAX = 0xffff_ffff_ffff_ffffn;

function checkEntry(e: Dirent, i: number): number {
  const at = `dirent[${i}]`;
  if (typeof e !== 'object' || e === null) throw new TypeError(`${at} must be an object`);
  const q = e.qid as Partial<Qid> | null | undefined;
  if (typeof q !== 'object' || q === null) throw new TypeError(`${at}.qid must be a qid object`);
  checkInt(q.type, 0xff, `${at}.qid.type`);
  checkInt(q.version, 0xffff_ffff, `${at}.qid.version`);
  checkBig(q.path, `${at}.qid.path`);
  checkBig(e.offset, `${at}.offset`);
  checkInt(e.type, 0xff, `${at}.type`);
  if (!(e.name instanceof Uint8Array)) throw new TypeError(`${at}.name must be a Buffer`);
  if (e.name.length > MAX_STRING_BYTES) throw new RangeError(`${at}.name is ${e.name.length} bytes; at most ${MAX_STRING_BYTES}`);
  return DIRENT_HEADER_SIZE + e.name.length;
}

function checkInt(v: unknown, max: number, at: string): void {
  if (typeof v !== 'number') throw new TypeError(`${at} must be a number`);
  if (!Number.isInteger(v) || v < 0 || v > max) throw new RangeError(`${at} must be an integer in 0..${max}, got ${v}`);
}

function checkBig(v: unknown, at: string): void {
  if (typeof v !== 'bigint') throw new TypeError(`${at} must be a bigint`);
  if (v < 0n || v > U64_MAX) throw new RangeError(`${at} must be in 0..2^64-1, got ${v}`);
}

/** The encoded size of one entry with a name of nameBytes bytes. */
export function direntSize(nameBytes: number): number {
  return DIRENT_HEADER_SIZE + nameBytes;
}

/**
 * Packs entries, in order, into `target` while whole entries fit. Returns how many entries were
 * written and how many bytes they take. Use with allocRreaddir/finishRreaddir (encode.ts).
 *
 * `count: 0` with entries left means not even the first entry fits: an Rreaddir with no data tells
 * the client the directory has ended, so answer an error (EINVAL, as getdents does) instead.
 */
export function writeDirents(entries: readonly Dirent[], target: Buffer): { count: number; bytes: number } {
  let off = 0;
  let count = 0;
  const view = new DataView(target.buffer, target.byteOffset, target.byteLength); // fast u64 writes
  for (const e of entries) {
    const size = checkEntry(e, count);
    if (off + size > target.length) break;
    target[off] = e.qid.type;
    target.writeUInt32LE(e.qid.version, off + 1);
    view.setBigUint64(off + 5, e.qid.path, true);
    view.setBigUint64(off + DirentLayout.offset, e.offset, true);
    target[off + DirentLayout.type] = e.type;
    target.writeUInt16LE(e.name.length, off + DirentLayout.nameLength);
    target.set(e.name, off + DirentLayout.name);
    off += size;
    count++;
  }
  return { count, bytes: off };
}

/**
 * Packs as many whole entries as fit in maxBytes (Treaddir.count, capped by msize -
 * RREADDIR_HEADER_SIZE) into one exact-size buffer: the data of an Rreaddir. `count` is the number
 * of entries packed (see writeDirents about count 0).
 */
export function encodeDirents(entries: readonly Dirent[], maxBytes: number): { count: number; data: Buffer } {
  if (!Number.isInteger(maxBytes) || maxBytes < 0) throw new RangeError(`maxBytes must be a non-negative integer, got ${maxBytes}`);
  let size = 0;
  let n = 0;
  for (const e of entries) {
    const s = checkEntry(e, n);
    if (size + s > maxBytes) break;
    size += s;
    n++;
  }
  const data = Buffer.allocUnsafe(size); // writeDirents fills all of it
  const { count, bytes } = writeDirents(entries.slice(0, n), data);
  if (count !== n || bytes !== size) throw new Error('dirent size mismatch');
  return { count, data };
}

/**
 * Unpacks Rreaddir data. Throws DecodeError (EPROTO, with `tag` if given) when an entry is cut
 * short: a server must send whole entries.
 */
export function decodeDirents(data: Buffer, tag: number = NOTAG): Dirent[] {
  const out: Dirent[] = [];
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength); // fast u64 reads
  let off = 0;
  while (off < data.length) {
    const left = data.length - off;
    if (left < DIRENT_HEADER_SIZE) {
      throw new DecodeError(`dirent[${out.length}] at byte ${off}: ${left} bytes left, an entry needs at least ${DIRENT_HEADER_SIZE}`, { tag });
    }
    const nameLen = data.readUInt16LE(off + DirentLayout.nameLength);
    if (left < DIRENT_HEADER_SIZE + nameLen) {
      throw new DecodeError(`dirent[${out.length}] at byte ${off}: name of ${nameLen} bytes runs past the end of the data`, { tag });
    }
    const nameAt = off + DirentLayout.name;
    out.push({
      qid: { type: data[off] as number, version: data.readUInt32LE(off + 1), path: view.getBigUint64(off + 5, true) },
      offset: view.getBigUint64(off + QID_SIZE, true),
      type: data[off + DirentLayout.type] as number,
      name: Buffer.from(data.subarray(nameAt, nameAt + nameLen)),
    });
    off = nameAt + nameLen;
  }
  return out;
}
