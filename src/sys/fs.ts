// Typed, validated wrappers over the native filesystem calls. Every call that
// can block returns a promise (it runs on the libuv pool). Plain fds returned
// here work with Node's own fs.read / fs.write / fs.fsync / fs.close.
import { C, native, type NativeDirent, type NativeStatfs, type NativeStatx } from './binding.js';
import { SysError, async, isNativeError, sync, toSysError } from './errors.js';
import * as v from './validate.js';
import type { PathArg } from './validate.js';

export type { PathArg };
export type Stat = NativeStatx;
export type Statfs = NativeStatfs;

/** Features of the running kernel, probed once when this module loads. */
export const features = {
  /** openat2(2) with RESOLVE_BENEATH | RESOLVE_NO_XDEV | RESOLVE_NO_MAGICLINKS (Linux >= 5.6). */
  openat2: native.probeOpenat2() === 0,
  /** openat2's RESOLVE_CACHED (Linux >= 5.12), probed below. */
  cachedLookups: false,
};

/** Throws a clear error when the kernel cannot confine path lookups. */
export function requireOpenat2(): void {
  if (!features.openat2) {
    throw new Error(
      'this kernel has no usable openat2(2) with RESOLVE_BENEATH | RESOLVE_NO_XDEV | RESOLVE_NO_MAGICLINKS ' +
        '(Linux >= 5.6 needed): prism confines every path lookup with it and will not serve files without it',
      { cause: new SysError('ENOSYS', 38, 'openat2') },
    );
  }
}

const AT_FDCWD = C.AT_FDCWD;
const dirfd = (d: unknown, name = 'dirfd'): number => v.dirfd(d, AT_FDCWD, name);

export interface OpenHow {
  /** O_* flags (O_CLOEXEC is always added). */
  flags: number;
  /** Creation mode, only with O_CREAT or O_TMPFILE. */
  mode?: number;
  /** RESOLVE_* flags. */
  resolve?: number;
}

/**
 * openat2(2): opens `path` relative to `dirfd` with the given RESOLVE_* confinement.
 * Resolves to the new fd.
 */
function openArgs(dir: number, path: PathArg, how: OpenHow): [number, Buffer, number, number, number] {
  const d = dirfd(dir);
  const p = v.pathBytes(path);
  if (typeof how !== 'object' || how === null) throw new TypeError('how must be an object {flags, mode?, resolve?}');
  const flags = v.flags(how.flags, 'how.flags') | C.O_CLOEXEC;
  const mode = v.int(how.mode ?? 0, 'how.mode', 0, 0o7777);
  const resolve = v.flags(how.resolve ?? 0, 'how.resolve');
  if (mode !== 0 && (flags & (C.O_CREAT | C.O_TMPFILE)) === 0) {
    throw new RangeError('how.mode is only valid with O_CREAT or O_TMPFILE (openat2 refuses it otherwise)');
  }
  if (!features.openat2) requireOpenat2();
  return [d, p, flags, mode, resolve];
}

export async function openat2(dir: number, path: PathArg, how: OpenHow): Promise<number> {
  const [d, p, flags, mode, resolve] = openArgs(dir, path, how);
  return async(native.openat2(d, p, flags, mode, resolve), v.showPath(path));
}

/** RESOLVE_CACHED (Linux >= 5.12): a lookup that fails with EAGAIN rather than doing I/O. */
function probeCachedLookups(): boolean {
  if (!features.openat2) return false;
  try {
    native.close(native.openat2Sync(C.AT_FDCWD, Buffer.from('/'), C.O_PATH | C.O_CLOEXEC, 0, C.RESOLVE_CACHED));
    return true;
  } catch (e) {
    return isNativeError(e) && e.code === 'EAGAIN';
  }
}
features.cachedLookups = probeCachedLookups();

/**
 * openat2 done on the calling thread when the kernel can resolve the path from its
 * dentry cache alone (RESOLVE_CACHED): the fd, or null when that would need I/O, or
 * when the kernel lacks RESOLVE_CACHED. Then use openat2(), which runs on the pool.
 * It saves a thread-pool round trip on the hot lookup path and can never block.
 */
export function openat2Cached(dir: number, path: PathArg, how: OpenHow): number | null {
  if (!features.cachedLookups) return null;
  const [d, p, flags, mode, resolve] = openArgs(dir, path, how);
  try {
    return native.openat2Sync(d, p, flags, mode, resolve | C.RESOLVE_CACHED);
  } catch (e) {
    if (isNativeError(e) && e.code === 'EAGAIN') return null;
    throw toSysError(e, v.showPath(path));
  }
}

/**
 * statx of an fd we hold, on the calling thread, from the in-memory inode
 * (AT_STATX_DONT_SYNC: no round trip to a network filesystem's server). For
 * fields that do not change (type, inode number) or where cached is fine.
 */
export function fstatxCached(fd: number, mask: number): Stat {
  return sync(() => native.statxSync(v.fd(fd), Buffer.alloc(0), C.AT_EMPTY_PATH | C.AT_SYMLINK_NOFOLLOW | C.AT_STATX_DONT_SYNC, v.u32(mask, 'mask')));
}

export interface StatxOptions {
  /** AT_* flags: AT_SYMLINK_NOFOLLOW, AT_EMPTY_PATH... */
  flags?: number;
  /** STATX_* mask; defaults to STATX_BASIC_STATS | STATX_BTIME. */
  mask?: number;
}

export async function statx(dir: number, path: PathArg, opts: StatxOptions = {}): Promise<Stat> {
  const d = dirfd(dir);
  const p = v.pathBytes(path);
  const flags = v.flags(opts.flags ?? 0);
  const mask = v.u32(opts.mask ?? C.STATX_BASIC_STATS | C.STATX_BTIME, 'mask');
  return async(native.statx(d, p, flags, mask), v.showPath(path));
}

/** statx of the fd itself (AT_EMPTY_PATH; works on O_PATH fds). */
export function fstatx(fd: number, mask?: number): Promise<Stat> {
  return statx(v.fd(fd), '', { flags: C.AT_EMPTY_PATH | C.AT_SYMLINK_NOFOLLOW, ...(mask === undefined ? {} : { mask }) });
}

export async function mkdirat(dir: number, path: PathArg, mode: number): Promise<void> {
  return async(native.mkdirat(dirfd(dir), v.pathBytes(path), v.int(mode, 'mode', 0, 0o7777)), v.showPath(path));
}

/** mknodat(2). `mode` includes the file type (S_IFREG, S_IFCHR, S_IFBLK, S_IFIFO, S_IFSOCK). */
export async function mknodat(dir: number, path: PathArg, mode: number, dev: { major: number; minor: number } = { major: 0, minor: 0 }): Promise<void> {
  const m = v.u32(mode, 'mode');
  return async(
    native.mknodat(dirfd(dir), v.pathBytes(path), m, v.u32(dev.major, 'dev.major'), v.u32(dev.minor, 'dev.minor')),
    v.showPath(path),
  );
}

export async function symlinkat(target: PathArg, dir: number, path: PathArg): Promise<void> {
  return async(native.symlinkat(v.pathBytes(target, 'target'), dirfd(dir), v.pathBytes(path)), v.showPath(path));
}

export async function linkat(olddir: number, oldpath: PathArg, newdir: number, newpath: PathArg, flags = 0): Promise<void> {
  return async(
    native.linkat(dirfd(olddir, 'olddirfd'), v.pathBytes(oldpath, 'oldpath'), dirfd(newdir, 'newdirfd'), v.pathBytes(newpath, 'newpath'), v.flags(flags)),
    v.showPath(oldpath),
  );
}

/** renameat2(2); flags: RENAME_NOREPLACE, RENAME_EXCHANGE, RENAME_WHITEOUT. */
export async function renameat2(olddir: number, oldpath: PathArg, newdir: number, newpath: PathArg, flags = 0): Promise<void> {
  return async(
    native.renameat2(dirfd(olddir, 'olddirfd'), v.pathBytes(oldpath, 'oldpath'), dirfd(newdir, 'newdirfd'), v.pathBytes(newpath, 'newpath'), v.flags(flags)),
    v.showPath(oldpath),
  );
}

/** unlinkat(2); AT_REMOVEDIR removes a directory. */
export async function unlinkat(dir: number, path: PathArg, flags = 0): Promise<void> {
  return async(native.unlinkat(dirfd(dir), v.pathBytes(path), v.flags(flags)), v.showPath(path));
}

/** readlinkat(2); the target as bytes (not necessarily UTF-8). Empty path reads an O_PATH fd's own link. */
export async function readlinkat(dir: number, path: PathArg): Promise<Buffer> {
  return async(native.readlinkat(dirfd(dir), v.pathBytes(path)), v.showPath(path));
}

/** fchownat(2); -1 leaves uid or gid unchanged. */
export async function fchownat(dir: number, path: PathArg, uid: number, gid: number, flags = 0): Promise<void> {
  const id = (x: number, name: string): number => (x === -1 ? 0xffff_ffff : v.int(x, name, 0, 0xffff_fffe));
  return async(native.fchownat(dirfd(dir), v.pathBytes(path), id(uid, 'uid'), id(gid, 'gid'), v.flags(flags)), v.showPath(path));
}

/** fchmodat(2) (always follows a final symlink: the kernel has no nofollow variant before fchmodat2). */
export async function fchmodat(dir: number, path: PathArg, mode: number): Promise<void> {
  return async(native.fchmodat(dirfd(dir), v.pathBytes(path), v.int(mode, 'mode', 0, 0o7777)), v.showPath(path));
}

export async function fchmod(fd: number, mode: number): Promise<void> {
  return async(native.fchmod(v.fd(fd), v.int(mode, 'mode', 0, 0o7777)));
}

export interface Timespec { sec: number; nsec: number }
export type TimeArg = Timespec | 'now' | 'omit';

function timeParts(t: TimeArg, name: string): [number, number] {
  if (t === 'now') return [0, C.UTIME_NOW];
  if (t === 'omit') return [0, C.UTIME_OMIT];
  if (typeof t !== 'object' || t === null) throw new TypeError(`${name} must be {sec, nsec}, 'now' or 'omit'`);
  return [v.int(t.sec, `${name}.sec`, -(2 ** 53), 2 ** 53), v.int(t.nsec, `${name}.nsec`, 0, 999_999_999)];
}

/** utimensat(2). With an empty path and AT_EMPTY_PATH it sets the times of `dir` itself. */
export async function utimensat(dir: number, path: PathArg, atime: TimeArg, mtime: TimeArg, flags = 0): Promise<void> {
  const [as, an] = timeParts(atime, 'atime');
  const [ms, mn] = timeParts(mtime, 'mtime');
  return async(native.utimensat(dirfd(dir), v.pathBytes(path), as, an, ms, mn, v.flags(flags)), v.showPath(path));
}

export type Dirent = NativeDirent;

export interface GetdentsOptions {
  /** Resume at this d_off cookie (from an earlier entry's `off`); omit to continue where the fd is. 0 restarts. */
  offset?: bigint;
  /** Kernel buffer size in bytes (default 32 KiB, 64 B to 1 MiB). */
  bufferSize?: number;
}

/** One getdents64(2) call on a directory fd. An empty array means end of directory. */
export async function getdents64(fd: number, opts: GetdentsOptions = {}): Promise<Dirent[]> {
  const offset = opts.offset === undefined ? null : v.bigI64(opts.offset, 'offset');
  const size = v.int(opts.bufferSize ?? 32 * 1024, 'bufferSize', 64, 1024 * 1024);
  return async(native.getdents64(v.fd(fd), offset, size));
}

const XATTR_SIZE_MAX = 65536;
const XATTR_LIST_MAX = 65536;
const xattrName = (n: unknown): Buffer => {
  const b = v.pathBytes(n, 'name');
  if (b.length === 0 || b.length > 255) throw new RangeError(`xattr name must be 1..255 bytes, got ${b.length}`);
  return b;
};

/** fgetxattr(2): the value. `size` = 0 returns the value's length instead. */
export async function fgetxattr(fd: number, name: PathArg, size?: number): Promise<Buffer>;
export async function fgetxattr(fd: number, name: PathArg, size: 0): Promise<number>;
export async function fgetxattr(fd: number, name: PathArg, size?: number): Promise<Buffer | number> {
  const f = v.fd(fd);
  const n = xattrName(name);
  if (size !== undefined) return async(native.fgetxattr(f, n, v.int(size, 'size', 0, XATTR_SIZE_MAX)), v.showPath(name));
  // Query the length, then read; a value that grew in between gives ERANGE: ask again.
  for (let attempt = 0; ; attempt++) {
    const len = (await async(native.fgetxattr(f, n, 0), v.showPath(name))) as number;
    try {
      return (await async(native.fgetxattr(f, n, Math.max(len, 1)), v.showPath(name)));
    } catch (e) {
      if (!(e instanceof SysError && e.is('ERANGE')) || attempt >= 3) throw e;
    }
  }
}

/** flistxattr(2): the attribute names. */
export async function flistxattr(fd: number): Promise<string[]> {
  const f = v.fd(fd);
  for (let attempt = 0; ; attempt++) {
    const len = (await async(native.flistxattr(f, 0))) as number;
    if (len === 0) return [];
    try {
      const buf = (await async(native.flistxattr(f, Math.min(len, XATTR_LIST_MAX)))) as Buffer;
      return buf.toString('utf8').split('\0').filter((s) => s.length > 0);
    } catch (e) {
      if (!(e instanceof SysError && e.is('ERANGE')) || attempt >= 3) throw e;
    }
  }
}

/** fsetxattr(2); flags XATTR_CREATE or XATTR_REPLACE. */
export async function fsetxattr(fd: number, name: PathArg, value: Buffer | string, flags = 0): Promise<void> {
  const val = v.bytes(value, 'value');
  if (val.length > XATTR_SIZE_MAX) throw new RangeError(`xattr value is ${val.length} bytes; the limit is ${XATTR_SIZE_MAX}`);
  return async(native.fsetxattr(v.fd(fd), xattrName(name), val, v.flags(flags)), v.showPath(name));
}

export async function fremovexattr(fd: number, name: PathArg): Promise<void> {
  return async(native.fremovexattr(v.fd(fd), xattrName(name)), v.showPath(name));
}

export async function fstatfs(fd: number): Promise<Statfs> {
  return async(native.fstatfs(v.fd(fd)));
}

export type LockType = 'read' | 'write' | 'unlock';
export interface LockRange {
  type: LockType;
  /** Byte offset the range starts at (from the start of the file). */
  start: bigint | number;
  /** Length in bytes; 0 means "to the end of the file, however far it grows". */
  len: bigint | number;
}
export interface LockInfo { type: LockType; start: bigint; len: bigint; pid: number }

const lockTypes: Record<LockType, number> = { read: C.F_RDLCK, write: C.F_WRLCK, unlock: C.F_UNLCK };
function lockTypeName(t: number): LockType {
  if (t === C.F_RDLCK) return 'read';
  if (t === C.F_WRLCK) return 'write';
  return 'unlock';
}

function lockArgs(fd: number, range: LockRange): [number, number, bigint, bigint] {
  const type = lockTypes[range.type];
  if (type === undefined) throw new TypeError(`lock type must be 'read', 'write' or 'unlock', got ${v.describe(range.type)}`);
  return [v.fd(fd), type, v.bigI64(range.start, 'start'), v.bigI64(range.len, 'len')];
}

/**
 * Sets or clears an open-file-description lock (F_OFD_SETLK). Resolves to true when
 * granted, false when a conflicting lock is held (EAGAIN/EACCES). With `wait`
 * (F_OFD_SETLKW) it waits on a pool thread until granted; callers bound how many
 * waiting locks they issue, since each holds one of the pool's threads.
 */
export async function ofdSetLock(fd: number, range: LockRange, wait = false): Promise<boolean> {
  const [f, type, start, len] = lockArgs(fd, range);
  try {
    await async(native.fcntlLock(f, wait ? C.F_OFD_SETLKW : C.F_OFD_SETLK, type, C.SEEK_SET, start, len));
    return true;
  } catch (e) {
    if (e instanceof SysError && (e.is('EAGAIN') || e.is('EACCES'))) return false;
    throw e;
  }
}

/** F_OFD_GETLK: the first lock that would conflict with `range`, or null if it could be placed. */
export async function ofdGetLock(fd: number, range: LockRange): Promise<LockInfo | null> {
  const [f, type, start, len] = lockArgs(fd, range);
  const r = await async(native.fcntlLock(f, C.F_OFD_GETLK, type, C.SEEK_SET, start, len));
  if (r.type === C.F_UNLCK) return null;
  return { type: lockTypeName(r.type), start: r.start, len: r.len, pid: r.pid };
}

/** Closes an fd synchronously (for fds not owned by a stream; streams close their own). */
export function closeFd(fd: number): void {
  sync(() => native.close(v.fd(fd)));
}

/**
 * Reads what the page cache already holds, on the calling thread (preadv2 with
 * RWF_NOWAIT): the byte count (0 at end of file), null when the read would wait
 * for I/O, or undefined when the filesystem does not support it (tmpfs): in both
 * cases read on the pool, and after undefined stop asking for this file.
 */
export function preadCached(fd: number, buf: Buffer, offset: number, length: number, position: number): number | null | undefined {
  if (!Buffer.isBuffer(buf)) throw new TypeError('buf must be a Buffer');
  v.int(offset, 'offset', 0, buf.length);
  v.int(length, 'length', 0, buf.length - offset);
  v.int(position, 'position', 0, Number.MAX_SAFE_INTEGER);
  try {
    return native.preadNowait(v.fd(fd), buf, offset, length, position);
  } catch (e) {
    if (isNativeError(e) && (e.code === 'EOPNOTSUPP' || e.code === 'ENOTSUP')) return undefined;
    throw toSysError(e);
  }
}
