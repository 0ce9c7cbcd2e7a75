// The passthrough filesystem: one export directory on the host, served with
// every path operation relative to a directory fd and confined by the kernel.
//
// Confinement choices (documented in README "File server confinement"):
// - Nodes are O_PATH fds. A lookup is one component, opened with
//   openat2(dir, name, O_PATH | O_NOFOLLOW, RESOLVE_BENEATH | RESOLVE_NO_XDEV |
//   RESOLVE_NO_MAGICLINKS): no "..", no absolute path, no mount crossing, no
//   magic link can be resolved, and a final symlink is never followed (clients
//   read links and resolve them themselves).
// - ".." in a lookup goes to the node's parent as it was when walked, and on
//   the root stays at the root (POSIX "/.."). It never asks the kernel for "..".
// - Re-opening a node for I/O goes through /proc/self/fd/N of our own O_PATH
//   fd: that names the same inode, whatever happened to its path meanwhile, so
//   a directory swapped for a symlink after the walk cannot redirect it.
// - Only regular files and directories are ever opened; device nodes, FIFOs
//   and sockets are refused (EACCES), though a client may create them (mknod).
// - setuid/setgid bits from a client are dropped on create, mkdir, mknod and
//   setattr. Creation is always exclusive (O_EXCL), so an existing FIFO or
//   device can never be opened by a create.
// - A read-only export refuses every write operation with EROFS.
import * as fs from 'node:fs';
import { promisify } from 'node:util';
import * as sys from '../sys/index.js';
import { BaseFileSystem, type Attr, type DirEntry, type FileType, type FsNode, type LockRequest, type Owner, type SetAttr } from './core.js';
import { Errno, FsError } from './errors.js';
import { checkName, isDot, isDotDot } from './name.js';

const K = sys.constants;
const CONFINED = K.RESOLVE_BENEATH | K.RESOLVE_NO_XDEV | K.RESOLVE_NO_MAGICLINKS;
const PERM_MASK = 0o1777; // rwx for all plus sticky; never setuid/setgid
const OPEN_FLAGS_ALLOWED = K.O_ACCMODE | K.O_APPEND | K.O_TRUNC | K.O_DIRECTORY | K.O_NONBLOCK | K.O_DSYNC | K.O_SYNC | K.O_DIRECT | K.O_LARGEFILE;

const fsync = promisify(fs.fsync);
const fdatasync = promisify(fs.fdatasync);
const ftruncate = promisify(fs.ftruncate);
const close = promisify(fs.close);

export class PassthroughNode implements FsNode {
  refs = 1;
  constructor(
    readonly fd: number,
    readonly type: FileType,
    readonly ino: bigint,
    readonly dev: bigint,
    /** The directory and name it was reached by (for ".." and 9P Tremove/Trename); null for the root. */
    public parent: PassthroughNode | null,
    public name: Buffer | null,
  ) {}
}

export function fileType(mode: number): FileType {
  switch (mode & K.S_IFMT) {
    case K.S_IFREG: return 'file';
    case K.S_IFDIR: return 'dir';
    case K.S_IFLNK: return 'symlink';
    case K.S_IFCHR: return 'chardev';
    case K.S_IFBLK: return 'blockdev';
    case K.S_IFIFO: return 'fifo';
    default: return 'socket';
  }
}

const DT_TYPES: Record<number, DirEntry['type']> = { 1: 'fifo', 2: 'chardev', 4: 'dir', 6: 'blockdev', 8: 'file', 10: 'symlink', 12: 'socket' };

/** Linux dev_t from major/minor (glibc makedev). */
export function makedev(major: number, minor: number): bigint {
  const M = BigInt(major);
  const m = BigInt(minor);
  return ((M & 0xfffff000n) << 32n) | ((M & 0xfffn) << 8n) | ((m & 0xffffff00n) << 12n) | (m & 0xffn);
}

function devOf(st: sys.Stat): bigint {
  return makedev(st.devMajor, st.devMinor);
}

function procPath(fd: number): string {
  return `/proc/self/fd/${fd}`;
}

export interface PassthroughOptions {
  readOnly?: boolean;
}

export class PassthroughFs extends BaseFileSystem<PassthroughNode> {
  override readonly readOnly: boolean;
  private readonly rootNode: PassthroughNode;
  private closed = false;

  private constructor(root: PassthroughNode, readOnly: boolean) {
    super();
    this.rootNode = root;
    this.readOnly = readOnly;
  }

  /** Opens the export. The directory path comes from the operator and is trusted. */
  static async open(dir: string, opts: PassthroughOptions = {}): Promise<PassthroughFs> {
    sys.requireOpenat2();
    if (!fs.existsSync('/proc/self/fd')) throw new Error('/proc is not mounted: prism re-opens files through /proc/self/fd and cannot serve without it');
    let fd: number;
    try {
      fd = await sys.openat2(K.AT_FDCWD, dir, { flags: K.O_PATH | K.O_DIRECTORY });
    } catch (e) {
      throw new Error(`cannot open the export directory ${dir}: ${(e as Error).message}`, { cause: e });
    }
    const st = await sys.fstatx(fd);
    return new PassthroughFs(new PassthroughNode(fd, 'dir', st.ino, devOf(st), null, null), opts.readOnly ?? false);
  }

  root(): PassthroughNode {
    return this.rootNode;
  }

  retain(node: PassthroughNode): PassthroughNode {
    if (node !== this.rootNode) node.refs++;
    return node;
  }

  release(node: PassthroughNode): void {
    if (node === this.rootNode) return;
    let n: PassthroughNode | null = node;
    while (n && n !== this.rootNode && --n.refs === 0) {
      try {
        sys.closeFd(n.fd);
      } catch {
        // nothing left to release
      }
      n = n.parent;
    }
  }

  private writable(): void {
    if (this.readOnly) throw new FsError(Errno.EROFS, 'the export is read-only');
  }

  /** A node for an O_PATH fd we just opened (takes ownership of fd). */
  private adopt(fd: number, parent: PassthroughNode, name: Buffer): PassthroughNode {
    try {
      // Type and inode number never change: the in-memory inode answers, no pool round trip.
      const st = sys.fstatxCached(fd, K.STATX_TYPE | K.STATX_INO);
      return new PassthroughNode(fd, fileType(st.mode), st.ino, devOf(st), this.retain(parent), Buffer.from(name));
    } catch (e) {
      sys.closeFd(fd);
      throw e;
    }
  }

  /** The node of `name` in `dir`, not following a final symlink, confined beneath `dir`. */
  private async child(dir: PassthroughNode, name: Buffer): Promise<PassthroughNode> {
    const how = { flags: K.O_PATH | K.O_NOFOLLOW, resolve: CONFINED };
    // From the dentry cache on this thread when possible; the pool only when it needs I/O.
    const fd = sys.openat2Cached(dir.fd, name, how) ?? (await sys.openat2(dir.fd, name, how));
    return this.adopt(fd, dir, name);
  }

  override async lookup(dir: PassthroughNode, name: Buffer): Promise<PassthroughNode> {
    if (isDot(name)) return this.retain(dir);
    if (isDotDot(name)) return this.retain(dir.parent ?? this.rootNode);
    return this.child(dir, checkName(name));
  }

  override async getattr(node: PassthroughNode): Promise<Attr> {
    const st = await sys.fstatx(node.fd);
    return {
      type: fileType(st.mode),
      mode: st.mode,
      uid: st.uid,
      gid: st.gid,
      nlink: BigInt(st.nlink),
      rdev: makedev(st.rdevMajor, st.rdevMinor),
      size: st.size,
      blksize: BigInt(st.blksize),
      blocks: st.blocks,
      atime: st.atime,
      mtime: st.mtime,
      ctime: st.ctime,
      btime: st.btime,
      ino: st.ino,
      dev: devOf(st),
    };
  }

  override async setattr(node: PassthroughNode, attr: SetAttr): Promise<void> {
    this.writable();
    if (attr.mode !== undefined) {
      if (node.type === 'symlink') throw new FsError(Errno.EOPNOTSUPP, 'symlinks have no mode of their own');
      await sys.fchmodat(K.AT_FDCWD, procPath(node.fd), attr.mode & PERM_MASK);
    }
    if (attr.uid !== undefined || attr.gid !== undefined) {
      await sys.fchownat(node.fd, '', attr.uid ?? -1, attr.gid ?? -1, K.AT_EMPTY_PATH | K.AT_SYMLINK_NOFOLLOW);
    }
    if (attr.size !== undefined) {
      if (node.type === 'dir') throw new FsError(Errno.EISDIR, 'cannot truncate a directory');
      if (node.type !== 'file') throw new FsError(Errno.EINVAL, 'only regular files have a size to set');
      if (attr.size > BigInt(Number.MAX_SAFE_INTEGER)) throw new FsError(Errno.EFBIG, 'size too large');
      const fd = await this.reopen(node, K.O_WRONLY);
      try {
        await ftruncate(fd, Number(attr.size));
      } finally {
        await close(fd);
      }
    }
    if (attr.atime !== undefined || attr.mtime !== undefined) {
      await sys.utimensat(node.fd, '', attr.atime ?? 'omit', attr.mtime ?? 'omit', K.AT_EMPTY_PATH);
    }
  }

  /** Opens the node's own inode for I/O (never a path: see the header). */
  private reopen(node: PassthroughNode, flags: number): Promise<number> {
    if (node.type !== 'file' && node.type !== 'dir') {
      return Promise.reject(new FsError(node.type === 'symlink' ? Errno.ELOOP : Errno.EACCES, `prism does not open ${node.type} nodes on the host`));
    }
    const dirFlag = node.type === 'dir' ? K.O_DIRECTORY : 0;
    return sys.openat2(K.AT_FDCWD, procPath(node.fd), { flags: (flags & OPEN_FLAGS_ALLOWED) | dirFlag | K.O_NOCTTY });
  }

  override open(node: PassthroughNode, flags: number): Promise<number> {
    const acc = flags & K.O_ACCMODE;
    if (this.readOnly && (acc !== K.O_RDONLY || flags & K.O_TRUNC)) return Promise.reject(new FsError(Errno.EROFS, 'the export is read-only'));
    if (node.type === 'dir' && acc !== K.O_RDONLY) return Promise.reject(new FsError(Errno.EISDIR, 'directories open read-only'));
    return this.reopen(node, flags);
  }

  private async chownNew(node: PassthroughNode, owner: Owner | undefined): Promise<void> {
    if (owner) await sys.fchownat(node.fd, '', owner.uid, owner.gid, K.AT_EMPTY_PATH | K.AT_SYMLINK_NOFOLLOW);
  }

  /** Runs `made` after creating `name`; on failure removes what was created. */
  private async finishCreate(dir: PassthroughNode, name: Buffer, isDir: boolean, owner: Owner | undefined, make: () => Promise<PassthroughNode>): Promise<PassthroughNode> {
    let node: PassthroughNode | undefined;
    try {
      node = await make();
      await this.chownNew(node, owner);
      return node;
    } catch (e) {
      if (node) this.release(node);
      await sys.unlinkat(dir.fd, name, isDir ? K.AT_REMOVEDIR : 0).catch(() => undefined);
      throw e;
    }
  }

  override async create(dir: PassthroughNode, name: Buffer, flags: number, mode: number, owner?: Owner): Promise<{ node: PassthroughNode; fd: number }> {
    this.writable();
    checkName(name);
    const openFlags = (flags & OPEN_FLAGS_ALLOWED & ~K.O_DIRECTORY) | K.O_CREAT | K.O_EXCL | K.O_NOFOLLOW | K.O_NOCTTY;
    const fd = await sys.openat2(dir.fd, name, { flags: openFlags, mode: mode & 0o777, resolve: CONFINED });
    try {
      const node = await this.finishCreate(dir, name, false, owner, async () => this.adopt(await sys.openat2(K.AT_FDCWD, procPath(fd), { flags: K.O_PATH }), dir, name));
      return { node, fd };
    } catch (e) {
      await close(fd);
      throw e;
    }
  }

  override async mkdir(dir: PassthroughNode, name: Buffer, mode: number, owner?: Owner): Promise<PassthroughNode> {
    this.writable();
    await sys.mkdirat(dir.fd, checkName(name), mode & PERM_MASK);
    return this.finishCreate(dir, name, true, owner, () => this.child(dir, name));
  }

  override async symlink(dir: PassthroughNode, name: Buffer, target: Buffer, owner?: Owner): Promise<PassthroughNode> {
    this.writable();
    if (target.length === 0) throw new FsError(Errno.ENOENT, 'empty symlink target');
    if (target.includes(0)) throw new FsError(Errno.EINVAL, 'symlink target contains NUL');
    if (target.length >= sys.PATH_MAX) throw new FsError(Errno.ENAMETOOLONG, 'symlink target too long');
    await sys.symlinkat(target, dir.fd, checkName(name));
    return this.finishCreate(dir, name, false, owner, () => this.child(dir, name));
  }

  override async mknod(dir: PassthroughNode, name: Buffer, mode: number, rdev: { major: number; minor: number }, owner?: Owner): Promise<PassthroughNode> {
    this.writable();
    const type = mode & K.S_IFMT;
    const allowed = [K.S_IFREG, K.S_IFIFO, K.S_IFSOCK, K.S_IFCHR, K.S_IFBLK];
    if (!allowed.includes(type)) throw new FsError(Errno.EINVAL, 'mknod makes regular files, FIFOs, sockets and device nodes only');
    const isDev = type === K.S_IFCHR || type === K.S_IFBLK;
    await sys.mknodat(dir.fd, checkName(name), type | (mode & 0o777), isDev ? rdev : { major: 0, minor: 0 });
    return this.finishCreate(dir, name, false, owner, () => this.child(dir, name));
  }

  override async link(target: PassthroughNode, dir: PassthroughNode, name: Buffer): Promise<void> {
    this.writable();
    if (target.type === 'dir') throw new FsError(Errno.EPERM, 'directories cannot be hard-linked');
    // AT_EMPTY_PATH would need CAP_DAC_READ_SEARCH; /proc/self/fd/N names the same inode.
    await sys.linkat(K.AT_FDCWD, procPath(target.fd), dir.fd, checkName(name), K.AT_SYMLINK_FOLLOW);
  }

  override async rename(olddir: PassthroughNode, oldname: Buffer, newdir: PassthroughNode, newname: Buffer): Promise<void> {
    this.writable();
    await sys.renameat2(olddir.fd, checkName(oldname), newdir.fd, checkName(newname));
  }

  override async unlink(dir: PassthroughNode, name: Buffer, isDir: boolean): Promise<void> {
    this.writable();
    await sys.unlinkat(dir.fd, checkName(name), isDir ? K.AT_REMOVEDIR : 0);
  }

  /** The node's parent and name, if that name still names this very inode. */
  private async placeOf(node: PassthroughNode): Promise<{ parent: PassthroughNode; name: Buffer }> {
    const { parent, name } = node;
    if (!parent || !name) throw new FsError(Errno.EBUSY, 'the export root cannot be removed or renamed');
    const st = await sys.statx(parent.fd, name, { flags: K.AT_SYMLINK_NOFOLLOW, mask: K.STATX_INO });
    if (st.ino !== node.ino) throw new FsError(Errno.ENOENT, 'the file no longer has the name it was walked by');
    return { parent, name };
  }

  override async removeNode(node: PassthroughNode): Promise<void> {
    this.writable();
    const { parent, name } = await this.placeOf(node);
    await sys.unlinkat(parent.fd, name, node.type === 'dir' ? K.AT_REMOVEDIR : 0);
  }

  override async renameNode(node: PassthroughNode, dir: PassthroughNode, newname: Buffer): Promise<void> {
    this.writable();
    const { parent, name } = await this.placeOf(node);
    await sys.renameat2(parent.fd, name, dir.fd, checkName(newname));
    const old = node.parent;
    node.parent = this.retain(dir);
    node.name = Buffer.from(newname);
    if (old) this.release(old);
  }

  override async readlink(node: PassthroughNode): Promise<Buffer> {
    if (node.type !== 'symlink') throw new FsError(Errno.EINVAL, 'not a symlink');
    return sys.readlinkat(node.fd, '');
  }

  override async readdir(dirFd: number, offset: bigint, bufferSize: number): Promise<DirEntry[]> {
    const entries = await sys.getdents64(dirFd, { offset, bufferSize });
    return entries.map((e) => ({ ino: e.ino, offset: e.off, type: DT_TYPES[e.type] ?? 'unknown', name: e.name }));
  }

  override statfs(node: PassthroughNode): Promise<sys.Statfs> {
    return sys.fstatfs(node.fd);
  }

  /** xattrs need a real fd; only files and directories are ever opened. */
  private async withXattrFd<T>(node: PassthroughNode, fn: (fd: number) => Promise<T>): Promise<T> {
    if (node.type !== 'file' && node.type !== 'dir') throw new FsError(Errno.EOPNOTSUPP, `prism keeps no xattrs on ${node.type} nodes`);
    const fd = await this.reopen(node, K.O_RDONLY | K.O_NONBLOCK);
    try {
      return await fn(fd);
    } finally {
      await close(fd);
    }
  }

  override getxattr(node: PassthroughNode, name: Buffer): Promise<Buffer> {
    return this.withXattrFd(node, (fd) => sys.fgetxattr(fd, name));
  }

  override listxattr(node: PassthroughNode): Promise<Buffer[]> {
    return this.withXattrFd(node, async (fd) => (await sys.flistxattr(fd)).map((n) => Buffer.from(n)));
  }

  override async setxattr(node: PassthroughNode, name: Buffer, value: Buffer, flags: number): Promise<void> {
    this.writable();
    return this.withXattrFd(node, (fd) => sys.fsetxattr(fd, name, value, flags));
  }

  override async removexattr(node: PassthroughNode, name: Buffer): Promise<void> {
    this.writable();
    return this.withXattrFd(node, (fd) => sys.fremovexattr(fd, name));
  }

  override fsync(fd: number, dataOnly: boolean): Promise<void> {
    return dataOnly ? fdatasync(fd) : fsync(fd);
  }

  override lock(fd: number, req: LockRequest): Promise<boolean> {
    return sys.ofdSetLock(fd, { type: req.kind, start: req.start, len: req.length });
  }

  override async getlock(fd: number, req: LockRequest): Promise<(LockRequest & { pid: number }) | null> {
    const r = await sys.ofdGetLock(fd, { type: req.kind, start: req.start, len: req.length });
    return r && { kind: r.type, start: r.start, length: r.len, pid: r.pid };
  }

  override close(): void {
    if (this.closed) return;
    this.closed = true;
    sys.closeFd(this.rootNode.fd);
  }
}
