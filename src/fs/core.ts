// The filesystem core's interface, shared by the 9P server and (later) the
// virtio-fs device. Handles are nodes (one per looked-up file, like an
// inode); open files are plain fds. Every operation defaults to ENOSYS, so an
// implementation provides what it supports and the rest answers cleanly.
import type { Statfs, TimeArg } from '../sys/index.js';
import { Errno, FsError } from './errors.js';

export type FileType = 'file' | 'dir' | 'symlink' | 'chardev' | 'blockdev' | 'fifo' | 'socket';

/** What every handle exposes; implementations add their own state. */
export interface FsNode {
  readonly type: FileType;
  /** Inode number and device: stable identity (9P qid.path, FUSE nodeid). */
  readonly ino: bigint;
  readonly dev: bigint;
}

export interface Timestamp { sec: number; nsec: number }

export interface Attr {
  type: FileType;
  mode: number; // including the S_IFMT bits
  uid: number;
  gid: number;
  nlink: bigint;
  rdev: bigint; // Linux dev_t encoding (major/minor)
  size: bigint;
  blksize: bigint;
  blocks: bigint; // 512-byte units
  atime: Timestamp;
  mtime: Timestamp;
  ctime: Timestamp;
  btime: Timestamp;
  ino: bigint;
  dev: bigint;
}

export interface SetAttr {
  mode?: number; // permission bits only; setuid/setgid are always cleared
  uid?: number;
  gid?: number;
  size?: bigint;
  atime?: TimeArg;
  mtime?: TimeArg;
}

export interface Owner { uid: number; gid: number }

export interface DirEntry {
  ino: bigint;
  /** Cookie that resumes the listing after this entry. */
  offset: bigint;
  type: FileType | 'unknown';
  name: Buffer;
}

export type LockKind = 'read' | 'write' | 'unlock';
export interface LockRequest { kind: LockKind; start: bigint; length: bigint }

/** The operations. Names are single components (checked by the core). */
export interface FileSystem<N extends FsNode = FsNode> {
  readonly readOnly: boolean;
  /** The export root; never released. */
  root(): N;
  /** One component; ".." goes to the parent, and stays at the root on the root. */
  lookup(dir: N, name: Buffer): Promise<N>;
  /** Another reference to the same node (each must be released). */
  retain(node: N): N;
  release(node: N): void;
  getattr(node: N): Promise<Attr>;
  setattr(node: N, attr: SetAttr): Promise<void>;
  /** Opens a regular file or directory; O_* flags. Returns an fd usable with Node's fs. */
  open(node: N, flags: number): Promise<number>;
  create(dir: N, name: Buffer, flags: number, mode: number, owner?: Owner): Promise<{ node: N; fd: number }>;
  mkdir(dir: N, name: Buffer, mode: number, owner?: Owner): Promise<N>;
  symlink(dir: N, name: Buffer, target: Buffer, owner?: Owner): Promise<N>;
  mknod(dir: N, name: Buffer, mode: number, rdev: { major: number; minor: number }, owner?: Owner): Promise<N>;
  link(target: N, dir: N, name: Buffer): Promise<void>;
  rename(olddir: N, oldname: Buffer, newdir: N, newname: Buffer): Promise<void>;
  unlink(dir: N, name: Buffer, isDir: boolean): Promise<void>;
  /** Removes the node itself by the name it was walked by (9P Tremove), if it still has it. */
  removeNode(node: N): Promise<void>;
  /** Moves the node itself into `dir` as `name` (9P Trename). */
  renameNode(node: N, dir: N, name: Buffer): Promise<void>;
  readlink(node: N): Promise<Buffer>;
  /** Entries of an open directory fd starting at a cookie (0 = start), at most `bufferSize` bytes of kernel records. */
  readdir(dirFd: number, offset: bigint, bufferSize: number): Promise<DirEntry[]>;
  statfs(node: N): Promise<Statfs>;
  getxattr(node: N, name: Buffer): Promise<Buffer>;
  listxattr(node: N): Promise<Buffer[]>;
  setxattr(node: N, name: Buffer, value: Buffer, flags: number): Promise<void>;
  removexattr(node: N, name: Buffer): Promise<void>;
  fsync(fd: number, dataOnly: boolean): Promise<void>;
  /** A non-blocking byte-range lock on an open fd; false when a conflicting lock is held. */
  lock(fd: number, req: LockRequest): Promise<boolean>;
  /** The first lock that conflicts with `req`, or null. */
  getlock(fd: number, req: LockRequest): Promise<(LockRequest & { pid: number }) | null>;
  /** Releases everything (the root too). */
  close(): void;
}

const enosys = (op: string): Promise<never> => Promise.reject(new FsError(Errno.ENOSYS, `${op} is not supported by this filesystem`));

/** A FileSystem whose every operation answers ENOSYS; extend it and override what you support. */
export abstract class BaseFileSystem<N extends FsNode> implements FileSystem<N> {
  readonly readOnly: boolean = false;
  abstract root(): N;
  abstract retain(node: N): N;
  abstract release(node: N): void;
  lookup(_dir: N, _name: Buffer): Promise<N> { return enosys('lookup'); }
  getattr(_node: N): Promise<Attr> { return enosys('getattr'); }
  setattr(_node: N, _attr: SetAttr): Promise<void> { return enosys('setattr'); }
  open(_node: N, _flags: number): Promise<number> { return enosys('open'); }
  create(_dir: N, _name: Buffer, _flags: number, _mode: number, _owner?: Owner): Promise<{ node: N; fd: number }> { return enosys('create'); }
  mkdir(_dir: N, _name: Buffer, _mode: number, _owner?: Owner): Promise<N> { return enosys('mkdir'); }
  symlink(_dir: N, _name: Buffer, _target: Buffer, _owner?: Owner): Promise<N> { return enosys('symlink'); }
  mknod(_dir: N, _name: Buffer, _mode: number, _rdev: { major: number; minor: number }, _owner?: Owner): Promise<N> { return enosys('mknod'); }
  link(_target: N, _dir: N, _name: Buffer): Promise<void> { return enosys('link'); }
  rename(_olddir: N, _oldname: Buffer, _newdir: N, _newname: Buffer): Promise<void> { return enosys('rename'); }
  unlink(_dir: N, _name: Buffer, _isDir: boolean): Promise<void> { return enosys('unlink'); }
  removeNode(_node: N): Promise<void> { return enosys('remove'); }
  renameNode(_node: N, _dir: N, _name: Buffer): Promise<void> { return enosys('rename'); }
  readlink(_node: N): Promise<Buffer> { return enosys('readlink'); }
  readdir(_dirFd: number, _offset: bigint, _bufferSize: number): Promise<DirEntry[]> { return enosys('readdir'); }
  statfs(_node: N): Promise<Statfs> { return enosys('statfs'); }
  getxattr(_node: N, _name: Buffer): Promise<Buffer> { return enosys('getxattr'); }
  listxattr(_node: N): Promise<Buffer[]> { return enosys('listxattr'); }
  setxattr(_node: N, _name: Buffer, _value: Buffer, _flags: number): Promise<void> { return enosys('setxattr'); }
  removexattr(_node: N, _name: Buffer): Promise<void> { return enosys('removexattr'); }
  fsync(_fd: number, _dataOnly: boolean): Promise<void> { return enosys('fsync'); }
  lock(_fd: number, _req: LockRequest): Promise<boolean> { return enosys('lock'); }
  getlock(_fd: number, _req: LockRequest): Promise<(LockRequest & { pid: number }) | null> { return enosys('getlock'); }
  close(): void {}
}
