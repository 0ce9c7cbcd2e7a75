// Argument checks for the sys layer: wrong types and out-of-range numbers
// become TypeError/RangeError here and never reach C++.

export type PathArg = string | Buffer;

/** Longest path the kernel accepts (PATH_MAX 4096 including the NUL). */
export const PATH_MAX = 4096;
/** Longest single name component (NAME_MAX). */
export const NAME_MAX = 255;
const INT32_MAX = 0x7fff_ffff;

export function int(v: unknown, name: string, min: number, max: number): number {
  if (typeof v !== 'number' || !Number.isInteger(v)) throw new TypeError(`${name} must be an integer, got ${describe(v)}`);
  if (v < min || v > max) throw new RangeError(`${name} must be between ${min} and ${max}, got ${v}`);
  return v;
}

export const fd = (v: unknown, name = 'fd'): number => int(v, name, 0, INT32_MAX);
export const u32 = (v: unknown, name: string): number => int(v, name, 0, 0xffff_ffff);
export const flags = (v: unknown, name = 'flags'): number => int(v, name, 0, 0xffff_ffff);

/** A directory fd argument: a real fd or AT_FDCWD (-100). */
export function dirfd(v: unknown, atFdcwd: number, name = 'dirfd'): number {
  if (v === atFdcwd) return v;
  return fd(v, name);
}

export function bigU64(v: unknown, name: string): bigint {
  if (typeof v === 'number' && Number.isSafeInteger(v)) v = BigInt(v);
  if (typeof v !== 'bigint') throw new TypeError(`${name} must be a bigint or safe integer, got ${describe(v)}`);
  if (v < 0n || v > 0xffff_ffff_ffff_ffffn) throw new RangeError(`${name} must fit in 64 unsigned bits, got ${v}`);
  return v;
}

export function bigI64(v: unknown, name: string): bigint {
  if (typeof v === 'number' && Number.isSafeInteger(v)) return BigInt(v);
  if (typeof v !== 'bigint') throw new TypeError(`${name} must be a bigint or safe integer, got ${describe(v)}`);
  if (v < -(2n ** 63n) || v >= 2n ** 63n) throw new RangeError(`${name} must fit in 64 signed bits, got ${v}`);
  return v;
}

/** Path bytes for the kernel: no NUL inside, shorter than PATH_MAX. Empty is allowed (AT_EMPTY_PATH). */
export function pathBytes(p: unknown, name = 'path'): Buffer {
  let b: Buffer;
  if (typeof p === 'string') b = Buffer.from(p, 'utf8');
  else if (Buffer.isBuffer(p)) b = p;
  else throw new TypeError(`${name} must be a string or Buffer, got ${describe(p)}`);
  if (b.includes(0)) throw new TypeError(`${name} must not contain NUL bytes`);
  if (b.length >= PATH_MAX) throw new RangeError(`${name} is ${b.length} bytes; the limit is ${PATH_MAX - 1}`);
  return b;
}

/** Bytes for a value (xattr value, message payload). */
export function bytes(v: unknown, name: string): Buffer {
  if (Buffer.isBuffer(v)) return v;
  if (typeof v === 'string') return Buffer.from(v, 'utf8');
  if (v instanceof Uint8Array) return Buffer.from(v.buffer, v.byteOffset, v.byteLength);
  throw new TypeError(`${name} must be a Buffer, Uint8Array or string, got ${describe(v)}`);
}

export function describe(v: unknown): string {
  if (v === null) return 'null';
  if (Buffer.isBuffer(v)) return `Buffer(${v.length})`;
  if (typeof v === 'object') return v.constructor?.name ?? 'object';
  if (typeof v === 'function') return 'function';
  if (typeof v === 'string') return `string ${JSON.stringify(v.length > 40 ? v.slice(0, 40) + '…' : v)}`;
  if (typeof v === 'symbol') return 'symbol';
  if (v === undefined) return 'undefined';
  return `${typeof v} ${(v as number | bigint | boolean).toString()}`;
}

/** Printable form of a path for error messages. */
export function showPath(p: PathArg): string {
  return typeof p === 'string' ? p : p.toString('utf8');
}
