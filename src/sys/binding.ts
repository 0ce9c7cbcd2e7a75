// The one loader of the native addon. Only src/sys/ imports this module; the
// rest of prism goes through the validated wrappers beside it.
import { createRequire } from 'node:module';
import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

export interface NativeStatxTimestamp { sec: number; nsec: number }
export interface NativeStatx {
  mask: number; blksize: number; attributes: bigint; nlink: number; uid: number; gid: number;
  mode: number; ino: bigint; size: bigint; blocks: bigint;
  atime: NativeStatxTimestamp; btime: NativeStatxTimestamp; ctime: NativeStatxTimestamp; mtime: NativeStatxTimestamp;
  rdevMajor: number; rdevMinor: number; devMajor: number; devMinor: number;
}
export interface NativeDirent { ino: bigint; off: bigint; type: number; name: Buffer }
export interface NativeStatfs {
  type: bigint; bsize: bigint; blocks: bigint; bfree: bigint; bavail: bigint; files: bigint;
  ffree: bigint; fsid: bigint; namelen: bigint; frsize: bigint; flags: bigint;
}
export interface NativeFlock { type: number; whence: number; start: bigint; len: bigint; pid: number }
export interface NativeSockAddr { family: number; cid?: number; port?: number; path?: Buffer }
export interface NativeRecv { bytes: number; fds: number[]; truncated: boolean }
export interface NativePoller {
  start(events: number): void;
  stop(): void;
  close(): void;
}

// Every constant src/native/addon.cc exports; checked at load time.
export const CONSTANT_NAMES = [
  'O_RDONLY',
  'O_WRONLY',
  'O_RDWR',
  'O_ACCMODE',
  'O_CREAT',
  'O_EXCL',
  'O_NOCTTY',
  'O_TRUNC',
  'O_APPEND',
  'O_NONBLOCK',
  'O_DSYNC',
  'O_SYNC',
  'O_DIRECT',
  'O_LARGEFILE',
  'O_DIRECTORY',
  'O_NOFOLLOW',
  'O_NOATIME',
  'O_CLOEXEC',
  'O_PATH',
  'O_TMPFILE',
  'RESOLVE_NO_XDEV',
  'RESOLVE_NO_MAGICLINKS',
  'RESOLVE_NO_SYMLINKS',
  'RESOLVE_BENEATH',
  'RESOLVE_IN_ROOT',
  'RESOLVE_CACHED',
  'AT_FDCWD',
  'AT_SYMLINK_NOFOLLOW',
  'AT_REMOVEDIR',
  'AT_SYMLINK_FOLLOW',
  'AT_NO_AUTOMOUNT',
  'AT_EMPTY_PATH',
  'AT_STATX_SYNC_AS_STAT',
  'AT_STATX_DONT_SYNC',
  'STATX_TYPE',
  'STATX_MODE',
  'STATX_NLINK',
  'STATX_UID',
  'STATX_GID',
  'STATX_ATIME',
  'STATX_MTIME',
  'STATX_CTIME',
  'STATX_INO',
  'STATX_SIZE',
  'STATX_BLOCKS',
  'STATX_BASIC_STATS',
  'STATX_BTIME',
  'STATX_ALL',
  'RENAME_NOREPLACE',
  'RENAME_EXCHANGE',
  'RENAME_WHITEOUT',
  'UTIME_NOW',
  'UTIME_OMIT',
  'XATTR_CREATE',
  'XATTR_REPLACE',
  'F_GETLK',
  'F_SETLK',
  'F_SETLKW',
  'F_OFD_GETLK',
  'F_OFD_SETLK',
  'F_OFD_SETLKW',
  'F_RDLCK',
  'F_WRLCK',
  'F_UNLCK',
  'SEEK_SET',
  'SEEK_CUR',
  'SEEK_END',
  'S_IFMT',
  'S_IFSOCK',
  'S_IFLNK',
  'S_IFREG',
  'S_IFBLK',
  'S_IFDIR',
  'S_IFCHR',
  'S_IFIFO',
  'S_ISUID',
  'S_ISGID',
  'S_ISVTX',
  'AF_UNIX',
  'AF_INET',
  'AF_INET6',
  'AF_VSOCK',
  'SOCK_STREAM',
  'SOCK_DGRAM',
  'SOCK_SEQPACKET',
  'SOL_SOCKET',
  'SO_ERROR',
  'SO_ACCEPTCONN',
  'SO_DOMAIN',
  'SO_TYPE',
  'SHUT_RD',
  'SHUT_WR',
  'SHUT_RDWR',
  'VMADDR_CID_ANY',
  'VMADDR_CID_HYPERVISOR',
  'VMADDR_CID_LOCAL',
  'VMADDR_CID_HOST',
  'VMADDR_PORT_ANY',
  'MFD_CLOEXEC',
  'MFD_ALLOW_SEALING',
  'F_SEAL_SEAL',
  'F_SEAL_SHRINK',
  'F_SEAL_GROW',
  'F_SEAL_WRITE',
  'PROT_NONE',
  'PROT_READ',
  'PROT_WRITE',
  'MAP_SHARED',
  'MAP_PRIVATE',
  'EFD_SEMAPHORE',
  'UV_READABLE',
  'UV_WRITABLE',
  'UV_DISCONNECT',
] as const;
export type ConstantName = (typeof CONSTANT_NAMES)[number];

export interface NativeBinding {
  constants: Record<ConstantName, number>;
  // fs.cc — promise-returning, run on the libuv pool
  openat2(dirfd: number, path: Buffer, flags: number, mode: number, resolve: number): Promise<number>;
  probeOpenat2(): number;
  openat2Sync(dirfd: number, path: Buffer, flags: number, mode: number, resolve: number): number;
  statxSync(dirfd: number, path: Buffer, flags: number, mask: number): NativeStatx;
  preadNowait(fd: number, buf: Buffer, offset: number, length: number, position: number): number | null;
  statx(dirfd: number, path: Buffer, flags: number, mask: number): Promise<NativeStatx>;
  mkdirat(dirfd: number, path: Buffer, mode: number): Promise<void>;
  mknodat(dirfd: number, path: Buffer, mode: number, major: number, minor: number): Promise<void>;
  symlinkat(target: Buffer, dirfd: number, path: Buffer): Promise<void>;
  linkat(olddirfd: number, oldpath: Buffer, newdirfd: number, newpath: Buffer, flags: number): Promise<void>;
  renameat2(olddirfd: number, oldpath: Buffer, newdirfd: number, newpath: Buffer, flags: number): Promise<void>;
  unlinkat(dirfd: number, path: Buffer, flags: number): Promise<void>;
  readlinkat(dirfd: number, path: Buffer): Promise<Buffer>;
  fchownat(dirfd: number, path: Buffer, uid: number, gid: number, flags: number): Promise<void>;
  fchmodat(dirfd: number, path: Buffer, mode: number): Promise<void>;
  fchmod(fd: number, mode: number): Promise<void>;
  utimensat(dirfd: number, path: Buffer, aSec: number, aNsec: number, mSec: number, mNsec: number, flags: number): Promise<void>;
  getdents64(fd: number, offset: bigint | null, bufsize: number): Promise<NativeDirent[]>;
  fgetxattr(fd: number, name: Buffer, size: number): Promise<Buffer | number>;
  flistxattr(fd: number, size: number): Promise<Buffer | number>;
  fsetxattr(fd: number, name: Buffer, value: Buffer, flags: number): Promise<void>;
  fremovexattr(fd: number, name: Buffer): Promise<void>;
  fstatfs(fd: number): Promise<NativeStatfs>;
  fcntlLock(fd: number, cmd: number, type: number, whence: number, start: bigint, len: bigint): Promise<NativeFlock>;
  // sock.cc — synchronous, non-blocking
  socket(domain: number, type: number): number;
  socketpair(domain: number, type: number): [number, number];
  bind(fd: number, family: number, a: number | Buffer, b?: number): void;
  connect(fd: number, family: number, a: number | Buffer, b?: number): number;
  listen(fd: number, backlog: number): void;
  accept(fd: number): number | null;
  getsockname(fd: number): NativeSockAddr;
  getpeername(fd: number): NativeSockAddr;
  getsockoptInt(fd: number, option: number): number;
  setsockoptInt(fd: number, level: number, option: number, value: number): void;
  setsockoptU64(fd: number, level: number, option: number, value: bigint): void;
  getsockoptU64(fd: number, level: number, option: number): bigint;
  recvmsg(fd: number, buf: Buffer, offset: number, length: number, maxFds: number): NativeRecv | null;
  sendmsg(fd: number, buf: Buffer, offset: number, length: number, fds: number[]): number | null;
  setNonblock(fd: number): void;
  vsockLocalCid(): number;
  shutdown(fd: number, how: number): void;
  close(fd: number): void;
  Poller: new (fd: number, cb: (status: number, events: number) => void) => NativePoller;
  // mem.cc
  memfdCreate(name: Buffer, flags: number): number;
  getSeals(fd: number): number;
  addSeals(fd: number, seals: number): void;
  mmap(fd: number, length: number, prot: number, flags: number, offset: number): ArrayBuffer;
  munmap(ab: ArrayBuffer): void;
  eventfd(initval: number, flags: number): number;
  eventfdRead(fd: number): bigint | null;
  eventfdWrite(fd: number, value: bigint): boolean;
}

function findAddon(): string {
  // Works from src/sys (tsx) and dist/src/sys (compiled): walk up to the package root.
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 5; i++) {
    for (const kind of ['Release', 'Debug']) {
      const candidate = join(dir, 'build', kind, 'prism_native.node');
      if (existsSync(candidate)) return candidate;
    }
    dir = resolve(dir, '..');
  }
  throw new Error(
    'prism native addon not found (build/Release/prism_native.node): run `npm install` (or `npm run install`) ' +
      'in the prism checkout; it needs g++, make and python3 for node-gyp',
  );
}

const require = createRequire(import.meta.url);
export const native = require(findAddon()) as NativeBinding;
for (const name of CONSTANT_NAMES) {
  if (typeof native.constants[name] !== 'number') throw new Error(`prism native addon is stale (no constant ${name}): rebuild it with \`npm run install\``);
}
/** The kernel's constants for this architecture (O_PATH, RESOLVE_BENEATH, AT_EMPTY_PATH...). */
export const C: Readonly<Record<ConstantName, number>> = native.constants;
