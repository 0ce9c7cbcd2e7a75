// 9P2000.L requests mapped onto the filesystem core (diod protocol.md is the
// reference for each message's semantics). Every failure becomes an errno
// that the session answers with Rlerror; nothing here can stop the server.
import * as fs from 'node:fs';
import { promisify } from 'node:util';
import {
  AT_REMOVEDIR, DirentType, GetattrMask, IOHDRSZ, LockStatus, LockType, MAXWELEM, NOFID, NONUNAME, OpenFlags, P9_GETATTR_BASIC,
  QidType, RREADDIR_HEADER_SIZE, RREAD_HEADER_SIZE, SetattrValid, allocRread, encodeDirents, encodeRreadHeader, finishRread,
  type Qid, type Rmessage, type Tmessage,
} from '../codecs/9p/index.js';
import type { Attr, FileSystem, FileType, FsNode, LockKind, SetAttr } from '../fs/core.js';
import { Errno, FsError } from '../fs/errors.js';
import { isDotDot } from '../fs/name.js';
import { constants as K, preadCached } from '../sys/index.js';
import type { Fid, FidTable } from './fids.js';

const read = promisify(fs.read);
const write = promisify(fs.write);
const close = promisify(fs.close);

export interface HandlerContext<N extends FsNode> {
  fs: FileSystem<N>;
  fids: FidTable<N>;
  msize: number;
  maxMsize: number;
  versioned: boolean;
  exportPath: string;
  ownerFromClient: boolean;
  setMsize(m: number): void;
  resetSession(): void;
  /**
   * A buffer of msize bytes for an Rread frame, from the session's reuse pool. The session takes
   * it back once the frame is written, so a frame built in it must be a view of it from byte 0.
   */
  readBuffer?(): Buffer;
}

const NOBODY = 65534;
const XATTR_MAX = 65536;
/** Lock owners (processes of the client) with locks through one open fid at a time. */
const MAX_LOCK_OWNERS = 64;
const RREAD_HDR = RREAD_HEADER_SIZE;
const SETATTR = SetattrValid;
const LOCK_TYPE = LockType;
const LOCK_STATUS = LockStatus;
const GETATTR_BASIC = P9_GETATTR_BASIC;
const GETATTR_BTIME = BigInt(GetattrMask.BTIME);

// P9_DOTL_* open flags (include/net/9p/9p.h) → this host's O_* values.
const DOTL_OPEN: [number, number][] = [
  [OpenFlags.CREATE, K.O_CREAT], [OpenFlags.EXCL, K.O_EXCL], [OpenFlags.NOCTTY, K.O_NOCTTY], [OpenFlags.TRUNC, K.O_TRUNC],
  [OpenFlags.APPEND, K.O_APPEND], [OpenFlags.NONBLOCK, K.O_NONBLOCK], [OpenFlags.DSYNC, K.O_DSYNC], [OpenFlags.DIRECT, K.O_DIRECT],
  [OpenFlags.LARGEFILE, K.O_LARGEFILE], [OpenFlags.DIRECTORY, K.O_DIRECTORY], [OpenFlags.NOFOLLOW, K.O_NOFOLLOW],
  [OpenFlags.NOATIME, K.O_NOATIME], [OpenFlags.CLOEXEC, K.O_CLOEXEC], [OpenFlags.SYNC, K.O_SYNC],
];

export function dotlToHostFlags(flags: number): number {
  let out = flags & OpenFlags.ACCMODE; // access mode: same values everywhere
  for (const [dotl, host] of DOTL_OPEN) if (flags & dotl) out |= host;
  return out;
}

function qidType(t: FileType): number {
  return t === 'dir' ? QidType.DIR : t === 'symlink' ? QidType.SYMLINK : QidType.FILE;
}

export function qidOf(node: FsNode): Qid {
  return { type: qidType(node.type), version: 0, path: node.ino };
}

function fail(errno: number, why: string): never {
  throw new FsError(errno, why);
}

function fidOf<N extends FsNode>(ctx: HandlerContext<N>, fid: number): Fid<N> {
  const f = ctx.fids.get(fid);
  if (!f) fail(Errno.EBADF, `unknown fid ${fid}`);
  if (f.xattr && f.xattr.kind === 'xattr-write') fail(Errno.EBADF, `fid ${fid} is an xattr being written`);
  return f;
}

function newFid<N extends FsNode>(ctx: HandlerContext<N>, fid: number, entry: Fid<N>): void {
  if (fid === NOFID) fail(Errno.EBADF, 'NOFID cannot name a new fid');
  if (ctx.fids.has(fid)) fail(Errno.EBADF, `fid ${fid} is already in use`);
  if (!ctx.fids.add(fid, entry)) fail(Errno.EMFILE, `too many fids on this connection (limit ${ctx.fids.limit})`);
}

function dirNode<N extends FsNode>(f: Fid<N>): N {
  if (f.node.type !== 'dir') fail(Errno.ENOTDIR, 'not a directory');
  return f.node;
}

function openFd<N extends FsNode>(f: Fid<N>): number {
  if (f.fd === null) fail(Errno.EBADF, 'fid is not open');
  return f.fd;
}

/** The qid of a node the client only needs to hear about (it walks to it later). */
function qidReleased<N extends FsNode>(ctx: HandlerContext<N>, node: N): Qid {
  const qid = qidOf(node);
  ctx.fs.release(node);
  return qid;
}

/** Releases what a fid holds (its open fd, its lock owners' fds and its node). */
export function releaseFid<N extends FsNode>(ctx: HandlerContext<N>, f: Fid<N>): void {
  if (f.fd !== null) {
    fs.close(f.fd, () => undefined);
    f.fd = null;
  }
  const locks = f.locks;
  if (locks) {
    // After the lock request in progress, if any (closing releases each owner's locks).
    void locks.queue.then(() => {
      for (const fd of locks.owners.values()) fs.close(fd, () => undefined);
      locks.owners.clear();
    });
  }
  ctx.fs.release(f.node);
}

// Byte-range locks. The Linux client (6.1) sends a POSIX lock's owner as proc_id (the locking
// process; client_id is its node name) and turns flock(2) into whole-file POSIX locks. It also
// sends a whole-file unlock for every close() of the file by any process, e.g. each child that
// inherited the fd and exits, with that process's proc_id. One OFD lock per fid would let such an
// unlock drop the lock its parent still holds (diod, which flock(2)s the fid's fd, does). So each
// owner gets its own open file description for its locks: another process's unlock finds nothing
// to release, a conflicting owner on this or any other fid is refused by the host kernel, and the
// owner's whole-file unlock (its close) or the fid's clunk releases them.

function lockOwner(procId: number, clientId: Buffer): string {
  return `${procId}/${clientId.toString('hex')}`;
}

/** Runs fn after the fid's earlier lock requests (so an owner's fd is never closed under one). */
function lockQueue<N extends FsNode, T>(f: Fid<N>, fn: (owners: Map<string, number>) => Promise<T>): Promise<T> {
  const locks = (f.locks ??= { owners: new Map(), queue: Promise.resolve() });
  const run = locks.queue.then(() => {
    if (f.fd === null) fail(Errno.EBADF, 'fid is not open');
    return fn(locks.owners);
  });
  locks.queue = run.catch(() => undefined);
  return run;
}

/** The owner's lock fd on this open fid, opened on first use. */
async function ownerFd<N extends FsNode>(ctx: HandlerContext<N>, f: Fid<N>, owners: Map<string, number>, owner: string): Promise<number> {
  const have = owners.get(owner);
  if (have !== undefined) return have;
  if (owners.size >= MAX_LOCK_OWNERS) fail(Errno.ENOLCK, `more than ${MAX_LOCK_OWNERS} lock owners on one open file`);
  // A write lock needs a writable fd, but flock(2) (which arrives as one) needs no write access:
  // open regular files read-write when the export and permissions allow it.
  let fd: number;
  try {
    fd = await ctx.fs.open(f.node, f.node.type === 'file' ? K.O_RDWR : K.O_RDONLY);
  } catch {
    fd = await ctx.fs.open(f.node, K.O_RDONLY);
  }
  owners.set(owner, fd);
  return fd;
}

function owner<N extends FsNode>(ctx: HandlerContext<N>, f: Fid<N>, gid: number): { uid: number; gid: number } | undefined {
  return ctx.ownerFromClient ? { uid: f.uid, gid } : undefined;
}

function lockKind(t: number): LockKind {
  if (t === LOCK_TYPE.RDLCK) return 'read';
  if (t === LOCK_TYPE.WRLCK) return 'write';
  if (t === LOCK_TYPE.UNLCK) return 'unlock';
  return fail(Errno.EINVAL, `unknown lock type ${t}`);
}

function lockTypeOf(k: LockKind): number {
  return k === 'read' ? LOCK_TYPE.RDLCK : k === 'write' ? LOCK_TYPE.WRLCK : LOCK_TYPE.UNLCK;
}

function toI64(v: bigint): bigint {
  // 9P lock offsets are u64; fcntl takes signed 64-bit. Beyond that is EINVAL.
  if (v > 0x7fff_ffff_ffff_ffffn) fail(Errno.EINVAL, 'lock range beyond 2^63');
  return v;
}

function attachRoot<N extends FsNode>(ctx: HandlerContext<N>, aname: Buffer): N {
  const a = aname.toString('utf8');
  // The Linux client's default aname is empty; diod's convention is the export path.
  if (a === '' || a === '/' || a === ctx.exportPath || a === ctx.exportPath.replace(/\/+$/, '')) return ctx.fs.root();
  return fail(Errno.ENOENT, `aname ${JSON.stringify(a)} is not this server's export (use "", "/" or ${JSON.stringify(ctx.exportPath)})`);
}

function getattrReply(tag: number, node: FsNode, a: Attr, mask: bigint): Rmessage {
  return {
    type: 'Rgetattr',
    tag,
    valid: mask & (GETATTR_BASIC | GETATTR_BTIME),
    qid: qidOf(node),
    mode: a.mode,
    uid: a.uid,
    gid: a.gid,
    nlink: a.nlink,
    rdev: a.rdev,
    size: a.size,
    blksize: a.blksize,
    blocks: a.blocks,
    atimeSec: BigInt(a.atime.sec),
    atimeNsec: BigInt(a.atime.nsec),
    mtimeSec: BigInt(a.mtime.sec),
    mtimeNsec: BigInt(a.mtime.nsec),
    ctimeSec: BigInt(a.ctime.sec),
    ctimeNsec: BigInt(a.ctime.nsec),
    btimeSec: BigInt(a.btime.sec),
    btimeNsec: BigInt(a.btime.nsec),
    gen: 0n,
    dataVersion: 0n,
  };
}

function setattrOf(m: Extract<Tmessage, { type: 'Tsetattr' }>): SetAttr {
  const v = m.valid;
  const a: SetAttr = {};
  if (v & SETATTR.MODE) a.mode = m.mode;
  if (v & SETATTR.UID) a.uid = m.uid;
  if (v & SETATTR.GID) a.gid = m.gid;
  if (v & SETATTR.SIZE) a.size = m.size;
  if (v & SETATTR.ATIME) a.atime = v & SETATTR.ATIME_SET ? { sec: Number(m.atimeSec), nsec: Number(m.atimeNsec) } : 'now';
  if (v & SETATTR.MTIME) a.mtime = v & SETATTR.MTIME_SET ? { sec: Number(m.mtimeSec), nsec: Number(m.mtimeNsec) } : 'now';
  // CTIME alone: any utimensat updates ctime; ask for that with both times omitted.
  if (v & SETATTR.CTIME && a.atime === undefined && a.mtime === undefined) {
    a.atime = 'omit';
    a.mtime = 'omit';
  }
  return a;
}

function checkTime(sec: bigint, nsec: bigint): void {
  if (sec > BigInt(Number.MAX_SAFE_INTEGER) || nsec > 999_999_999n) fail(Errno.EINVAL, 'time out of range');
}

async function walk<N extends FsNode>(ctx: HandlerContext<N>, m: Extract<Tmessage, { type: 'Twalk' }>): Promise<Rmessage> {
  const from = fidOf(ctx, m.fid);
  if (m.wnames.length > MAXWELEM) fail(Errno.EINVAL, `more than ${MAXWELEM} names in one walk`);
  if (m.newfid !== m.fid && ctx.fids.has(m.newfid)) fail(Errno.EBADF, `fid ${m.newfid} is already in use`);
  const qids: Qid[] = [];
  let node = ctx.fs.retain(from.node);
  try {
    for (const name of m.wnames) {
      if (node.type !== 'dir' && !isDotDot(name)) {
        if (qids.length === 0) fail(Errno.ENOTDIR, 'walk from a non-directory');
        break;
      }
      let next: N;
      try {
        next = await ctx.fs.lookup(node, name);
      } catch (e) {
        if (qids.length === 0) throw e;
        break; // partial walk: Rwalk with the qids so far, newfid untouched
      }
      ctx.fs.release(node);
      node = next;
      qids.push(qidOf(node));
    }
  } catch (e) {
    ctx.fs.release(node);
    throw e;
  }
  if (qids.length < m.wnames.length) {
    ctx.fs.release(node);
    return { type: 'Rwalk', tag: m.tag, wqids: qids };
  }
  if (m.newfid === m.fid) {
    if (from.fd !== null) {
      ctx.fs.release(node);
      fail(Errno.EBADF, 'cannot walk an open fid onto itself');
    }
    ctx.fs.release(from.node);
    from.node = node;
  } else {
    try {
      newFid(ctx, m.newfid, { node, uid: from.uid, fd: null, openFlags: 0, xattr: null });
    } catch (e) {
      ctx.fs.release(node);
      throw e;
    }
  }
  return { type: 'Rwalk', tag: m.tag, wqids: qids };
}

async function readFid<N extends FsNode>(ctx: HandlerContext<N>, m: Extract<Tmessage, { type: 'Tread' }>): Promise<Buffer> {
  const f = ctx.fids.get(m.fid);
  if (!f) fail(Errno.EBADF, `unknown fid ${m.fid}`);
  const count = Math.min(m.count, ctx.msize - RREAD_HDR);
  if (f.xattr?.kind === 'xattr-read') {
    const data = f.xattr.data;
    const start = m.offset > BigInt(data.length) ? data.length : Number(m.offset);
    const { frame, data: out } = allocRread(m.tag, Math.min(count, data.length - start));
    data.copy(out, 0, start, start + out.length);
    return finishRread(frame, out.length);
  }
  const fd = openFd(f);
  if ((f.openFlags & K.O_ACCMODE) === K.O_WRONLY) fail(Errno.EBADF, 'fid is open write-only');
  if (m.offset > BigInt(Number.MAX_SAFE_INTEGER)) fail(Errno.EINVAL, 'offset too large');
  const buf = ctx.readBuffer?.();
  if (buf && buf.length >= RREAD_HDR + count) {
    // A reused buffer (no fresh msize allocation per read): only the header and the bytes read
    // are sent, never what an earlier read left behind them.
    // Cached data is copied on this thread; only a read that must wait goes to the pool.
    const cached = f.noCachedReads ? undefined : preadCached(fd, buf, RREAD_HDR, count, Number(m.offset));
    if (cached === undefined) f.noCachedReads = true;
    const bytesRead = cached ?? (await read(fd, buf, RREAD_HDR, count, Number(m.offset))).bytesRead;
    encodeRreadHeader(m.tag, bytesRead).copy(buf, 0);
    return buf.subarray(0, RREAD_HDR + bytesRead);
  }
  const { frame, data } = allocRread(m.tag, count);
  const { bytesRead } = await read(fd, data, 0, count, Number(m.offset));
  return finishRread(frame, bytesRead);
}

async function writeFid<N extends FsNode>(ctx: HandlerContext<N>, m: Extract<Tmessage, { type: 'Twrite' }>): Promise<Rmessage> {
  const f = ctx.fids.get(m.fid);
  if (!f) fail(Errno.EBADF, `unknown fid ${m.fid}`);
  if (f.xattr?.kind === 'xattr-write') {
    const x = f.xattr;
    if (m.offset !== BigInt(x.written)) fail(Errno.EINVAL, 'xattr writes must be sequential');
    if (x.written + m.data.length > x.size) fail(Errno.ENOSPC, 'xattr value longer than announced');
    m.data.copy(x.data, x.written);
    x.written += m.data.length;
    return { type: 'Rwrite', tag: m.tag, count: m.data.length };
  }
  const fd = openFd(f);
  if ((f.openFlags & K.O_ACCMODE) === K.O_RDONLY) fail(Errno.EBADF, 'fid is open read-only');
  if (m.offset > BigInt(Number.MAX_SAFE_INTEGER)) fail(Errno.EFBIG, 'offset too large');
  const { bytesWritten } = await write(fd, m.data, 0, m.data.length, Number(m.offset));
  return { type: 'Rwrite', tag: m.tag, count: bytesWritten };
}

async function clunk<N extends FsNode>(ctx: HandlerContext<N>, fid: number): Promise<void> {
  const f = ctx.fids.delete(fid);
  if (!f) fail(Errno.EBADF, `unknown fid ${fid}`);
  try {
    const x = f.xattr;
    if (x?.kind === 'xattr-write') {
      if (x.written !== x.size) fail(Errno.EINVAL, `xattr value is ${x.written} of ${x.size} announced bytes`);
      // Linux removes an xattr with a zero-length XATTR_REPLACE create.
      if (x.size === 0 && x.flags & K.XATTR_REPLACE) await ctx.fs.removexattr(f.node, x.name);
      else await ctx.fs.setxattr(f.node, x.name, x.data, x.flags);
    }
  } finally {
    releaseFid(ctx, f);
  }
}

/** Handles one request; resolves to the reply (or its encoded frame for reads). */
export async function handle<N extends FsNode>(ctx: HandlerContext<N>, m: Tmessage): Promise<Rmessage | Buffer> {
  const tag = m.tag;
  if (m.type !== 'Tversion' && !ctx.versioned) fail(Errno.EPROTO, 'Tversion must come first');
  switch (m.type) {
    case 'Tversion': {
      ctx.resetSession();
      if (m.msize < 4096) fail(Errno.EINVAL, `msize ${m.msize} is too small`);
      const msize = Math.min(m.msize, ctx.maxMsize);
      ctx.setMsize(msize);
      const known = m.version === '9P2000.L';
      ctx.versioned = known;
      return { type: 'Rversion', tag, msize, version: known ? '9P2000.L' : 'unknown' };
    }
    case 'Tauth':
      // ENOENT, as diod answers: libnpclient (diodls, diodcat, diodmount) takes Rlerror ENOENT to
      // Tauth as "no authentication required" and attaches; any other errno stops it.
      return fail(Errno.ENOENT, 'prism needs no authentication: attach with afid NOFID');
    case 'Tattach': {
      if (m.afid !== NOFID) fail(Errno.EINVAL, 'no auth fids exist on this server');
      const root = attachRoot(ctx, m.aname);
      const uid = m.nUname !== NONUNAME ? m.nUname : NOBODY;
      newFid(ctx, m.fid, { node: ctx.fs.retain(root), uid, fd: null, openFlags: 0, xattr: null });
      return { type: 'Rattach', tag, qid: qidOf(root) };
    }
    case 'Tflush':
      return { type: 'Rflush', tag }; // the session handles flushes of running requests
    case 'Twalk':
      return walk(ctx, m);
    case 'Tread':
      return readFid(ctx, m);
    case 'Twrite':
      return writeFid(ctx, m);
    case 'Tclunk':
      await clunk(ctx, m.fid);
      return { type: 'Rclunk', tag };
    case 'Tremove': {
      const f = fidOf(ctx, m.fid);
      try {
        await ctx.fs.removeNode(f.node);
      } finally {
        await clunk(ctx, m.fid).catch(() => undefined);
      }
      return { type: 'Rremove', tag };
    }
    case 'Tstatfs': {
      const st = await ctx.fs.statfs(fidOf(ctx, m.fid).node);
      return {
        type: 'Rstatfs', tag, fsType: Number(st.type & 0xffff_ffffn), bsize: Number(st.bsize & 0xffff_ffffn), blocks: st.blocks, bfree: st.bfree,
        bavail: st.bavail, files: st.files, ffree: st.ffree, fsid: st.fsid, namelen: Number(st.namelen & 0xffff_ffffn),
      };
    }
    case 'Tlopen': {
      const f = fidOf(ctx, m.fid);
      if (f.fd !== null) fail(Errno.EBADF, 'fid is already open');
      const flags = dotlToHostFlags(m.flags) & ~(K.O_CREAT | K.O_EXCL);
      f.fd = await ctx.fs.open(f.node, flags);
      f.openFlags = flags;
      return { type: 'Rlopen', tag, qid: qidOf(f.node), iounit: ctx.msize - IOHDRSZ };
    }
    case 'Tlcreate': {
      const f = fidOf(ctx, m.fid);
      if (f.fd !== null) fail(Errno.EBADF, 'fid is already open');
      const dir = dirNode(f);
      const flags = dotlToHostFlags(m.flags);
      const { node, fd } = await ctx.fs.create(dir, m.name, flags, m.mode, owner(ctx, f, m.gid));
      // The fid now stands for the new, open file (protocol.md, lcreate).
      ctx.fs.release(f.node);
      f.node = node;
      f.fd = fd;
      f.openFlags = flags;
      return { type: 'Rlcreate', tag, qid: qidOf(node), iounit: ctx.msize - IOHDRSZ };
    }
    case 'Tsymlink': {
      const f = fidOf(ctx, m.fid);
      const qid = qidReleased(ctx, await ctx.fs.symlink(dirNode(f), m.name, m.symtgt, owner(ctx, f, m.gid)));
      return { type: 'Rsymlink', tag, qid };
    }
    case 'Tmknod': {
      const f = fidOf(ctx, m.dfid);
      const qid = qidReleased(ctx, await ctx.fs.mknod(dirNode(f), m.name, m.mode, { major: m.major, minor: m.minor }, owner(ctx, f, m.gid)));
      return { type: 'Rmknod', tag, qid };
    }
    case 'Trename': {
      const f = fidOf(ctx, m.fid);
      await ctx.fs.renameNode(f.node, dirNode(fidOf(ctx, m.dfid)), m.name);
      return { type: 'Rrename', tag };
    }
    case 'Treadlink':
      return { type: 'Rreadlink', tag, target: await ctx.fs.readlink(fidOf(ctx, m.fid).node) };
    case 'Tgetattr': {
      const f = fidOf(ctx, m.fid);
      return getattrReply(tag, f.node, await ctx.fs.getattr(f.node), m.requestMask);
    }
    case 'Tsetattr': {
      const f = fidOf(ctx, m.fid);
      if (m.valid & SETATTR.ATIME_SET) checkTime(m.atimeSec, m.atimeNsec);
      if (m.valid & SETATTR.MTIME_SET) checkTime(m.mtimeSec, m.mtimeNsec);
      await ctx.fs.setattr(f.node, setattrOf(m));
      return { type: 'Rsetattr', tag };
    }
    case 'Txattrwalk': {
      const f = fidOf(ctx, m.fid);
      let data: Buffer;
      if (m.name.length === 0) {
        const names = await ctx.fs.listxattr(f.node);
        data = Buffer.concat(names.flatMap((n) => [n, Buffer.alloc(1)]));
      } else {
        data = await ctx.fs.getxattr(f.node, m.name);
      }
      newFid(ctx, m.newfid, { node: ctx.fs.retain(f.node), uid: f.uid, fd: null, openFlags: 0, xattr: { kind: 'xattr-read', data } });
      return { type: 'Rxattrwalk', tag, size: BigInt(data.length) };
    }
    case 'Txattrcreate': {
      const f = fidOf(ctx, m.fid);
      if (f.fd !== null) fail(Errno.EBADF, 'fid is open');
      if (m.attrSize > BigInt(XATTR_MAX)) fail(Errno.E2BIG, `xattr values are limited to ${XATTR_MAX} bytes`);
      if (ctx.fs.readOnly) fail(Errno.EROFS, 'the export is read-only');
      const size = Number(m.attrSize);
      f.xattr = { kind: 'xattr-write', name: Buffer.from(m.name), size, flags: m.flags, data: Buffer.alloc(size), written: 0 };
      return { type: 'Rxattrcreate', tag };
    }
    case 'Treaddir': {
      const f = fidOf(ctx, m.fid);
      const fd = openFd(f);
      if (f.node.type !== 'dir') fail(Errno.ENOTDIR, 'not a directory');
      const count = Math.min(m.count, ctx.msize - RREADDIR_HEADER_SIZE);
      const entries = await ctx.fs.readdir(fd, m.offset, Math.max(512, Math.min(count, 1 << 20)));
      const { count: packed, data } = encodeDirents(
        entries.map((e) => ({
          qid: { type: e.type === 'dir' ? QidType.DIR : e.type === 'symlink' ? QidType.SYMLINK : QidType.FILE, version: 0, path: e.ino },
          offset: e.offset,
          type: direntType(e.type),
          name: e.name,
        })),
        count,
      );
      // An empty reply means "end of directory": if entries exist but not one fits, say so.
      if (packed === 0 && entries.length > 0) fail(Errno.EINVAL, `readdir count ${count} is too small for one entry`);
      return { type: 'Rreaddir', tag, data };
    }
    case 'Tfsync':
      await ctx.fs.fsync(openFd(fidOf(ctx, m.fid)), m.datasync !== 0);
      return { type: 'Rfsync', tag };
    case 'Tlock': {
      const f = fidOf(ctx, m.fid);
      openFd(f);
      const req = { kind: lockKind(m.lockType), start: toI64(m.start), length: toI64(m.length) };
      const owner = lockOwner(m.procId, m.clientId);
      const ok = await lockQueue(f, async (owners) => {
        if (req.kind === 'unlock') {
          const fd = owners.get(owner);
          if (fd === undefined) return true; // this owner holds nothing here
          if (req.start !== 0n || req.length !== 0n) return ctx.fs.lock(fd, req);
          owners.delete(owner); // whole file: closing its fd releases all its locks
          await close(fd);
          return true;
        }
        return ctx.fs.lock(await ownerFd(ctx, f, owners, owner), req);
      });
      // Never wait here: the Linux client retries a BLOCKED lock itself.
      return { type: 'Rlock', tag, status: ok ? LOCK_STATUS.SUCCESS : LOCK_STATUS.BLOCKED };
    }
    case 'Tgetlock': {
      const f = fidOf(ctx, m.fid);
      openFd(f);
      // Linux 6.1 sends UNLCK whatever F_GETLK asked: take it as "any conflicting lock",
      // which is what a write-lock probe finds.
      const req = { kind: m.lockType === LOCK_TYPE.UNLCK ? 'write' : lockKind(m.lockType), start: toI64(m.start), length: toI64(m.length) } as const;
      const owner = lockOwner(m.procId, m.clientId);
      // The asking owner's own locks are no conflict: ask from its lock fd if it has one.
      const held = await lockQueue(f, (owners) => ctx.fs.getlock(owners.get(owner) ?? openFd(f), req));
      if (!held) return { type: 'Rgetlock', tag, lockType: LOCK_TYPE.UNLCK, start: m.start, length: m.length, procId: m.procId, clientId: m.clientId };
      return { type: 'Rgetlock', tag, lockType: lockTypeOf(held.kind), start: held.start, length: held.length, procId: held.pid < 0 ? 0 : held.pid, clientId: Buffer.alloc(0) };
    }
    case 'Tlink': {
      const dir = dirNode(fidOf(ctx, m.dfid));
      await ctx.fs.link(fidOf(ctx, m.fid).node, dir, m.name);
      return { type: 'Rlink', tag };
    }
    case 'Tmkdir': {
      const f = fidOf(ctx, m.dfid);
      const qid = qidReleased(ctx, await ctx.fs.mkdir(dirNode(f), m.name, m.mode, owner(ctx, f, m.gid)));
      return { type: 'Rmkdir', tag, qid };
    }
    case 'Trenameat':
      await ctx.fs.rename(dirNode(fidOf(ctx, m.olddirfid)), m.oldname, dirNode(fidOf(ctx, m.newdirfid)), m.newname);
      return { type: 'Rrenameat', tag };
    case 'Tunlinkat':
      if (m.flags & ~AT_REMOVEDIR) fail(Errno.EINVAL, 'unknown unlinkat flags');
      await ctx.fs.unlink(dirNode(fidOf(ctx, m.dirfd)), m.name, (m.flags & AT_REMOVEDIR) !== 0);
      return { type: 'Runlinkat', tag };
    default:
      return fail(Errno.EOPNOTSUPP, `${(m as { type: string }).type} is not a 9P2000.L request`);
  }
}

// DT_* values (dirent.h), which the Linux client passes to readdir callers.
const DT: Record<FileType | 'unknown', number> = {
  unknown: DirentType.UNKNOWN, fifo: DirentType.FIFO, chardev: DirentType.CHR, dir: DirentType.DIR,
  blockdev: DirentType.BLK, file: DirentType.REG, symlink: DirentType.LNK, socket: DirentType.SOCK,
};
const direntType = (t: FileType | 'unknown'): number => DT[t];
