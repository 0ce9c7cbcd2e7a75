// 9P2000.L wire constants, in one place. Sources: diod protocol.md (the 9P2000.L description) and
// Linux include/net/9p/9p.h (enum p9_msg_t, P9_* magic numbers, lock and open-flag constants).
// Setattr valid bits are P9_ATTR_* in Linux fs/9p/vfs_inode_dotl.c (diod protocol.md calls them
// P9_SETATTR_*). Errno values are Linux's (asm-generic/errno.h): Rlerror carries Linux errnos.

/**
 * Message type numbers (9p.h enum p9_msg_t). 9P2000.L replies are request + 1. Tlerror (6) is a
 * number only: no client sends it, and Rlerror (7) answers any failed request.
 */
export const MessageType = {
  Tlerror: 6,
  Rlerror: 7,
  Tstatfs: 8,
  Rstatfs: 9,
  Tlopen: 12,
  Rlopen: 13,
  Tlcreate: 14,
  Rlcreate: 15,
  Tsymlink: 16,
  Rsymlink: 17,
  Tmknod: 18,
  Rmknod: 19,
  Trename: 20,
  Rrename: 21,
  Treadlink: 22,
  Rreadlink: 23,
  Tgetattr: 24,
  Rgetattr: 25,
  Tsetattr: 26,
  Rsetattr: 27,
  Txattrwalk: 30,
  Rxattrwalk: 31,
  Txattrcreate: 32,
  Rxattrcreate: 33,
  Treaddir: 40,
  Rreaddir: 41,
  Tfsync: 50,
  Rfsync: 51,
  Tlock: 52,
  Rlock: 53,
  Tgetlock: 54,
  Rgetlock: 55,
  Tlink: 70,
  Rlink: 71,
  Tmkdir: 72,
  Rmkdir: 73,
  Trenameat: 74,
  Rrenameat: 75,
  Tunlinkat: 76,
  Runlinkat: 77,
  Tversion: 100,
  Rversion: 101,
  Tauth: 102,
  Rauth: 103,
  Tattach: 104,
  Rattach: 105,
  Tflush: 108,
  Rflush: 109,
  Twalk: 110,
  Rwalk: 111,
  Tread: 116,
  Rread: 117,
  Twrite: 118,
  Rwrite: 119,
  Tclunk: 120,
  Rclunk: 121,
  Tremove: 122,
  Rremove: 123,
} as const;

export type MessageTypeName = keyof typeof MessageType;

/**
 * 9P2000 / 9P2000.u types that 9P2000.L replaced (9p.h): Terror/Rerror (106/107, string errors),
 * Topen/Tcreate (112/114), Tstat/Twstat (124/126). Not decoded; a request of one of these kinds is
 * answered with EOPNOTSUPP (see decode.ts).
 */
export const LegacyMessageType = {
  Terror: 106,
  Rerror: 107,
  Topen: 112,
  Ropen: 113,
  Tcreate: 114,
  Rcreate: 115,
  Tstat: 124,
  Rstat: 125,
  Twstat: 126,
  Rwstat: 127,
} as const;

/** The version string of 9P2000.L (protocol.md, version). */
export const VERSION_9P2000L = '9P2000.L';
/** What a server answers in Rversion when it speaks none of the versions offered (version(5)). */
export const VERSION_UNKNOWN = 'unknown';

/** Tag of Tversion/Rversion (9p.h P9_NOTAG). */
export const NOTAG = 0xffff;
/** "No fid", e.g. Tattach.afid without authentication (9p.h P9_NOFID). */
export const NOFID = 0xffff_ffff;
/** Tattach/Tauth n_uname when the user is given by name only (protocol.md, attach: P9_NONUNAME). */
export const NONUNAME = 0xffff_ffff;
/** Most path elements in one Twalk, and qids in one Rwalk (9p.h P9_MAXWELEM). */
export const MAXWELEM = 16;

// --- sizes ------------------------------------------------------------------------------------

/** size[4] type[1] tag[2] (9p.h P9_HDRSZ). */
export const HEADER_SIZE = 7;
/** A qid on the wire: type[1] version[4] path[8] (protocol.md, Data Structures). */
export const QID_SIZE = 13;
/** A string's length prefix is u16: at most this many bytes (protocol.md, Data Structures). */
export const MAX_STRING_BYTES = 0xffff;
/** Largest value of the size[4] field. */
export const MAX_FRAME_SIZE = 0xffff_ffff;
/**
 * Room the Linux client reserves for a Tread/Twrite/Rread header when it sizes I/O: it never asks
 * for more than msize - IOHDRSZ bytes in one Tread or Twrite (9p.h P9_IOHDRSZ, net/9p/client.c).
 */
export const IOHDRSZ = 24;
/** Room the Linux client reserves for the Rreaddir header (9p.h P9_READDIRHDRSZ). */
export const READDIRHDRSZ = 24;
/** size[4] Rread tag[2] count[4]: data starts here (protocol.md, read). */
export const RREAD_HEADER_SIZE = HEADER_SIZE + 4;
/** size[4] Rreaddir tag[2] count[4]: data starts here (protocol.md, readdir). */
export const RREADDIR_HEADER_SIZE = HEADER_SIZE + 4;
/** size[4] Twrite tag[2] fid[4] offset[8] count[4]: data starts here (protocol.md, write). */
export const TWRITE_HEADER_SIZE = HEADER_SIZE + 4 + 8 + 4;
/** size[4] Rwrite tag[2] count[4] (protocol.md, write). */
export const RWRITE_SIZE = HEADER_SIZE + 4;
/**
 * A directory entry in Rreaddir data: qid[13] offset[8] type[1] name[s] (protocol.md, readdir),
 * so DIRENT_HEADER_SIZE + name length bytes each.
 */
export const DIRENT_HEADER_SIZE = QID_SIZE + 8 + 1 + 2;
/** Byte offsets inside one directory entry. */
export const DirentLayout = { qid: 0, offset: QID_SIZE, type: QID_SIZE + 8, nameLength: QID_SIZE + 9, name: DIRENT_HEADER_SIZE } as const;

/**
 * Default frame-size limit of a FrameReader before Tversion has set msize. Tversion/Rversion are
 * tiny (the Linux client's is 21 bytes); the kernel refuses msize below 4096.
 */
export const INITIAL_MAX_FRAME_SIZE = 8192;

// --- qid types (9p.h enum p9_qid_t) ------------------------------------------------------------

export const QidType = {
  DIR: 0x80,
  APPEND: 0x40,
  EXCL: 0x20,
  MOUNT: 0x10,
  AUTH: 0x08,
  TMP: 0x04,
  SYMLINK: 0x02,
  LINK: 0x01,
  FILE: 0x00,
} as const;

// --- getattr (protocol.md, getattr; 9p.h P9_STATS_*) ------------------------------------------
// Masks are u64 on the wire; the bits fit in a number, so they are given both ways.

export const GetattrMask = {
  MODE: 0x0000_0001,
  NLINK: 0x0000_0002,
  UID: 0x0000_0004,
  GID: 0x0000_0008,
  RDEV: 0x0000_0010,
  ATIME: 0x0000_0020,
  MTIME: 0x0000_0040,
  CTIME: 0x0000_0080,
  INO: 0x0000_0100,
  SIZE: 0x0000_0200,
  BLOCKS: 0x0000_0400,
  BTIME: 0x0000_0800,
  GEN: 0x0000_1000,
  DATA_VERSION: 0x0000_2000,
  /** Fields up to BLOCKS: what stat(2) has. */
  BASIC: 0x0000_07ff,
  /** Every field above. */
  ALL: 0x0000_3fff,
} as const;
export const P9_GETATTR_BASIC = 0x7ffn;
export const P9_GETATTR_ALL = 0x3fffn;

// --- setattr valid bits (protocol.md, setattr; Linux P9_ATTR_*) -------------------------------

export const SetattrValid = {
  MODE: 0x001,
  UID: 0x002,
  GID: 0x004,
  SIZE: 0x008,
  /** Set atime: to atime_sec/nsec with ATIME_SET, else to the server's current time. */
  ATIME: 0x010,
  MTIME: 0x020,
  CTIME: 0x040,
  ATIME_SET: 0x080,
  MTIME_SET: 0x100,
} as const;

// --- Tlopen / Tlcreate flags (9p.h P9_DOTL_*; octal like open(2)) ------------------------------

export const OpenFlags = {
  RDONLY: 0o0,
  WRONLY: 0o1,
  RDWR: 0o2,
  NOACCESS: 0o3,
  ACCMODE: 0o3,
  CREATE: 0o100,
  EXCL: 0o200,
  NOCTTY: 0o400,
  TRUNC: 0o1000,
  APPEND: 0o2000,
  NONBLOCK: 0o4000,
  DSYNC: 0o10000,
  FASYNC: 0o20000,
  DIRECT: 0o40000,
  LARGEFILE: 0o100000,
  DIRECTORY: 0o200000,
  NOFOLLOW: 0o400000,
  NOATIME: 0o1000000,
  CLOEXEC: 0o2000000,
  SYNC: 0o4000000,
} as const;

/** Tunlinkat flags (9p.h P9_DOTL_AT_REMOVEDIR). */
export const AT_REMOVEDIR = 0x200;

/** Txattrcreate flags (setxattr(2)). */
export const XattrFlags = { CREATE: 1, REPLACE: 2 } as const;

// --- locks (protocol.md, lock/getlock; 9p.h) ---------------------------------------------------

export const LockType = { RDLCK: 0, WRLCK: 1, UNLCK: 2 } as const;
export const LockStatus = { SUCCESS: 0, BLOCKED: 1, ERROR: 2, GRACE: 3 } as const;
export const LockFlags = { BLOCK: 1, RECLAIM: 2 } as const;

// --- Linux errno values a codec user needs (asm-generic/errno-base.h, errno.h) -----------------

export const Errno = {
  EPERM: 1,
  ENOENT: 2,
  EIO: 5,
  EBADF: 9,
  ENOMEM: 12,
  EACCES: 13,
  EEXIST: 17,
  ENOTDIR: 20,
  EINVAL: 22,
  ENOSPC: 28,
  ERANGE: 34,
  ENAMETOOLONG: 36,
  ENOSYS: 38,
  ENOTEMPTY: 39,
  ENODATA: 61,
  EPROTO: 71,
  EMSGSIZE: 90,
  EOPNOTSUPP: 95,
} as const;

/** Directory entry types in Rreaddir (Linux d_type, DT_*: diod and the kernel pass them through). */
export const DirentType = { UNKNOWN: 0, FIFO: 1, CHR: 2, DIR: 4, BLK: 6, REG: 8, LNK: 10, SOCK: 12, WHT: 14 } as const;
