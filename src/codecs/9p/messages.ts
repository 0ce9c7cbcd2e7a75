// 9P2000.L messages as plain objects, one interface per message, discriminated by `type`.
// Wire layouts are quoted from diod protocol.md; field names are the camelCase of its field names
// (n_uname -> nUname), except where a field is itself called "type" (Rstatfs.type -> fsType,
// Tlock/Tgetlock/Rgetlock type -> lockType), because `type` names the message kind here.
//
// Conventions:
// - Every 64-bit field is a bigint; 8/16/32-bit fields are numbers.
// - Every 9P string (s) is a Buffer: names are bytes and need not be UTF-8. Decoded strings are
//   copies, safe to keep. The one exception is Tversion/Rversion.version, a latin1 string.
// - `data` of Twrite, Rread and Rreaddir ALIASES the decoded frame (no copy): keep the frame
//   untouched while using it, or copy it. (xattr values have no message of their own: they travel
//   as Twrite/Rread on the fid that Txattrcreate/Txattrwalk prepared.)
// - Counts that equal an array's or a buffer's length (nwname, nwqid, Rread/Twrite/Rreaddir count)
//   are not fields: the encoder derives them.

/** A server's unique id for a file: type[1] version[4] path[8] (protocol.md, Data Structures). */
export interface Qid {
  /** QidType bits (DIR, SYMLINK, ...). */
  type: number;
  version: number;
  path: bigint;
}

interface Base {
  tag: number;
}

// --- 9P2000 subset ---------------------------------------------------------------------------

/** size[4] Tversion tag[2] msize[4] version[s] */
export interface Tversion extends Base {
  type: 'Tversion';
  msize: number;
  version: string;
}
/** size[4] Rversion tag[2] msize[4] version[s] */
export interface Rversion extends Base {
  type: 'Rversion';
  msize: number;
  version: string;
}
/** size[4] Tflush tag[2] oldtag[2] */
export interface Tflush extends Base {
  type: 'Tflush';
  oldtag: number;
}
/** size[4] Rflush tag[2] */
export interface Rflush extends Base {
  type: 'Rflush';
}
/** size[4] Twalk tag[2] fid[4] newfid[4] nwname[2] nwname*(wname[s]); nwname ≤ MAXWELEM */
export interface Twalk extends Base {
  type: 'Twalk';
  fid: number;
  newfid: number;
  wnames: Buffer[];
}
/** size[4] Rwalk tag[2] nwqid[2] nwqid*(wqid[13]); nwqid ≤ MAXWELEM */
export interface Rwalk extends Base {
  type: 'Rwalk';
  wqids: Qid[];
}
/** size[4] Tread tag[2] fid[4] offset[8] count[4] */
export interface Tread extends Base {
  type: 'Tread';
  fid: number;
  offset: bigint;
  count: number;
}
/** size[4] Rread tag[2] count[4] data[count]; data aliases the frame. */
export interface Rread extends Base {
  type: 'Rread';
  data: Buffer;
}
/** size[4] Twrite tag[2] fid[4] offset[8] count[4] data[count]; data aliases the frame. */
export interface Twrite extends Base {
  type: 'Twrite';
  fid: number;
  offset: bigint;
  data: Buffer;
}
/** size[4] Rwrite tag[2] count[4] */
export interface Rwrite extends Base {
  type: 'Rwrite';
  count: number;
}
/** size[4] Tclunk tag[2] fid[4] */
export interface Tclunk extends Base {
  type: 'Tclunk';
  fid: number;
}
/** size[4] Rclunk tag[2] */
export interface Rclunk extends Base {
  type: 'Rclunk';
}
/** size[4] Tremove tag[2] fid[4] */
export interface Tremove extends Base {
  type: 'Tremove';
  fid: number;
}
/** size[4] Rremove tag[2] */
export interface Rremove extends Base {
  type: 'Rremove';
}

// --- 9P2000.u subset ---------------------------------------------------------------------------

/** size[4] Tauth tag[2] afid[4] uname[s] aname[s] n_uname[4] */
export interface Tauth extends Base {
  type: 'Tauth';
  afid: number;
  uname: Buffer;
  aname: Buffer;
  nUname: number;
}
/** size[4] Rauth tag[2] aqid[13] */
export interface Rauth extends Base {
  type: 'Rauth';
  aqid: Qid;
}
/** size[4] Tattach tag[2] fid[4] afid[4] uname[s] aname[s] n_uname[4] */
export interface Tattach extends Base {
  type: 'Tattach';
  fid: number;
  afid: number;
  uname: Buffer;
  aname: Buffer;
  nUname: number;
}
/** size[4] Rattach tag[2] qid[13] */
export interface Rattach extends Base {
  type: 'Rattach';
  qid: Qid;
}

// --- 9P2000.L ----------------------------------------------------------------------------------

/** size[4] Rlerror tag[2] ecode[4]; ecode is a Linux errno. */
export interface Rlerror extends Base {
  type: 'Rlerror';
  ecode: number;
}
/** size[4] Tstatfs tag[2] fid[4] */
export interface Tstatfs extends Base {
  type: 'Tstatfs';
  fid: number;
}
/** size[4] Rstatfs tag[2] type[4] bsize[4] blocks[8] bfree[8] bavail[8] files[8] ffree[8] fsid[8] namelen[4] */
export interface Rstatfs extends Base {
  type: 'Rstatfs';
  /** The wire field `type` (statfs f_type). */
  fsType: number;
  bsize: number;
  blocks: bigint;
  bfree: bigint;
  bavail: bigint;
  files: bigint;
  ffree: bigint;
  fsid: bigint;
  namelen: number;
}
/** size[4] Tlopen tag[2] fid[4] flags[4]; flags are OpenFlags (Linux open(2) bits). */
export interface Tlopen extends Base {
  type: 'Tlopen';
  fid: number;
  flags: number;
}
/** size[4] Rlopen tag[2] qid[13] iounit[4] */
export interface Rlopen extends Base {
  type: 'Rlopen';
  qid: Qid;
  iounit: number;
}
/** size[4] Tlcreate tag[2] fid[4] name[s] flags[4] mode[4] gid[4] */
export interface Tlcreate extends Base {
  type: 'Tlcreate';
  fid: number;
  name: Buffer;
  flags: number;
  mode: number;
  gid: number;
}
/** size[4] Rlcreate tag[2] qid[13] iounit[4] */
export interface Rlcreate extends Base {
  type: 'Rlcreate';
  qid: Qid;
  iounit: number;
}
/** size[4] Tsymlink tag[2] fid[4] name[s] symtgt[s] gid[4] */
export interface Tsymlink extends Base {
  type: 'Tsymlink';
  fid: number;
  name: Buffer;
  symtgt: Buffer;
  gid: number;
}
/** size[4] Rsymlink tag[2] qid[13] */
export interface Rsymlink extends Base {
  type: 'Rsymlink';
  qid: Qid;
}
/** size[4] Tmknod tag[2] dfid[4] name[s] mode[4] major[4] minor[4] gid[4] */
export interface Tmknod extends Base {
  type: 'Tmknod';
  dfid: number;
  name: Buffer;
  mode: number;
  major: number;
  minor: number;
  gid: number;
}
/** size[4] Rmknod tag[2] qid[13] */
export interface Rmknod extends Base {
  type: 'Rmknod';
  qid: Qid;
}
/** size[4] Trename tag[2] fid[4] dfid[4] name[s] */
export interface Trename extends Base {
  type: 'Trename';
  fid: number;
  dfid: number;
  name: Buffer;
}
/** size[4] Rrename tag[2] */
export interface Rrename extends Base {
  type: 'Rrename';
}
/** size[4] Treadlink tag[2] fid[4] */
export interface Treadlink extends Base {
  type: 'Treadlink';
  fid: number;
}
/** size[4] Rreadlink tag[2] target[s] */
export interface Rreadlink extends Base {
  type: 'Rreadlink';
  target: Buffer;
}
/** size[4] Tgetattr tag[2] fid[4] request_mask[8]; GetattrMask bits. */
export interface Tgetattr extends Base {
  type: 'Tgetattr';
  fid: number;
  requestMask: bigint;
}
/**
 * size[4] Rgetattr tag[2] valid[8] qid[13] mode[4] uid[4] gid[4] nlink[8] rdev[8] size[8]
 * blksize[8] blocks[8] atime_sec[8] atime_nsec[8] mtime_sec[8] mtime_nsec[8] ctime_sec[8]
 * ctime_nsec[8] btime_sec[8] btime_nsec[8] gen[8] data_version[8]
 */
export interface Rgetattr extends Base {
  type: 'Rgetattr';
  valid: bigint;
  qid: Qid;
  mode: number;
  uid: number;
  gid: number;
  nlink: bigint;
  rdev: bigint;
  size: bigint;
  blksize: bigint;
  blocks: bigint;
  atimeSec: bigint;
  atimeNsec: bigint;
  mtimeSec: bigint;
  mtimeNsec: bigint;
  ctimeSec: bigint;
  ctimeNsec: bigint;
  btimeSec: bigint;
  btimeNsec: bigint;
  gen: bigint;
  dataVersion: bigint;
}
/**
 * size[4] Tsetattr tag[2] fid[4] valid[4] mode[4] uid[4] gid[4] size[8] atime_sec[8]
 * atime_nsec[8] mtime_sec[8] mtime_nsec[8]; valid is SetattrValid bits.
 */
export interface Tsetattr extends Base {
  type: 'Tsetattr';
  fid: number;
  valid: number;
  mode: number;
  uid: number;
  gid: number;
  size: bigint;
  atimeSec: bigint;
  atimeNsec: bigint;
  mtimeSec: bigint;
  mtimeNsec: bigint;
}
/** size[4] Rsetattr tag[2] */
export interface Rsetattr extends Base {
  type: 'Rsetattr';
}
/** size[4] Txattrwalk tag[2] fid[4] newfid[4] name[s]; an empty name lists the attributes. */
export interface Txattrwalk extends Base {
  type: 'Txattrwalk';
  fid: number;
  newfid: number;
  name: Buffer;
}
/** size[4] Rxattrwalk tag[2] size[8] */
export interface Rxattrwalk extends Base {
  type: 'Rxattrwalk';
  size: bigint;
}
/** size[4] Txattrcreate tag[2] fid[4] name[s] attr_size[8] flags[4]; XattrFlags. */
export interface Txattrcreate extends Base {
  type: 'Txattrcreate';
  fid: number;
  name: Buffer;
  attrSize: bigint;
  flags: number;
}
/** size[4] Rxattrcreate tag[2] */
export interface Rxattrcreate extends Base {
  type: 'Rxattrcreate';
}
/** size[4] Treaddir tag[2] fid[4] offset[8] count[4] */
export interface Treaddir extends Base {
  type: 'Treaddir';
  fid: number;
  offset: bigint;
  count: number;
}
/**
 * size[4] Rreaddir tag[2] count[4] data[count]; data is packed directory entries (dirent.ts)
 * and aliases the frame.
 */
export interface Rreaddir extends Base {
  type: 'Rreaddir';
  data: Buffer;
}
/** size[4] Tfsync tag[2] fid[4] datasync[4] */
export interface Tfsync extends Base {
  type: 'Tfsync';
  fid: number;
  datasync: number;
}
/** size[4] Rfsync tag[2] */
export interface Rfsync extends Base {
  type: 'Rfsync';
}
/** size[4] Tlock tag[2] fid[4] type[1] flags[4] start[8] length[8] proc_id[4] client_id[s] */
export interface Tlock extends Base {
  type: 'Tlock';
  fid: number;
  /** The wire field `type`: LockType. */
  lockType: number;
  /** LockFlags. */
  flags: number;
  start: bigint;
  length: bigint;
  procId: number;
  clientId: Buffer;
}
/** size[4] Rlock tag[2] status[1]; LockStatus. */
export interface Rlock extends Base {
  type: 'Rlock';
  status: number;
}
/** size[4] Tgetlock tag[2] fid[4] type[1] start[8] length[8] proc_id[4] client_id[s] */
export interface Tgetlock extends Base {
  type: 'Tgetlock';
  fid: number;
  lockType: number;
  start: bigint;
  length: bigint;
  procId: number;
  clientId: Buffer;
}
/** size[4] Rgetlock tag[2] type[1] start[8] length[8] proc_id[4] client_id[s] */
export interface Rgetlock extends Base {
  type: 'Rgetlock';
  lockType: number;
  start: bigint;
  length: bigint;
  procId: number;
  clientId: Buffer;
}
/** size[4] Tlink tag[2] dfid[4] fid[4] name[s] */
export interface Tlink extends Base {
  type: 'Tlink';
  dfid: number;
  fid: number;
  name: Buffer;
}
/** size[4] Rlink tag[2] */
export interface Rlink extends Base {
  type: 'Rlink';
}
/** size[4] Tmkdir tag[2] dfid[4] name[s] mode[4] gid[4] */
export interface Tmkdir extends Base {
  type: 'Tmkdir';
  dfid: number;
  name: Buffer;
  mode: number;
  gid: number;
}
/** size[4] Rmkdir tag[2] qid[13] */
export interface Rmkdir extends Base {
  type: 'Rmkdir';
  qid: Qid;
}
/** size[4] Trenameat tag[2] olddirfid[4] oldname[s] newdirfid[4] newname[s] */
export interface Trenameat extends Base {
  type: 'Trenameat';
  olddirfid: number;
  oldname: Buffer;
  newdirfid: number;
  newname: Buffer;
}
/** size[4] Rrenameat tag[2] */
export interface Rrenameat extends Base {
  type: 'Rrenameat';
}
/** size[4] Tunlinkat tag[2] dirfd[4] name[s] flags[4]; flags: AT_REMOVEDIR. */
export interface Tunlinkat extends Base {
  type: 'Tunlinkat';
  dirfd: number;
  name: Buffer;
  flags: number;
}
/** size[4] Runlinkat tag[2] */
export interface Runlinkat extends Base {
  type: 'Runlinkat';
}

/** Every request a client sends. */
export type Tmessage =
  | Tversion
  | Tauth
  | Tattach
  | Tflush
  | Twalk
  | Tread
  | Twrite
  | Tclunk
  | Tremove
  | Tstatfs
  | Tlopen
  | Tlcreate
  | Tsymlink
  | Tmknod
  | Trename
  | Treadlink
  | Tgetattr
  | Tsetattr
  | Txattrwalk
  | Txattrcreate
  | Treaddir
  | Tfsync
  | Tlock
  | Tgetlock
  | Tlink
  | Tmkdir
  | Trenameat
  | Tunlinkat;

/** Every reply a server sends (Rlerror answers any request). */
export type Rmessage =
  | Rlerror
  | Rversion
  | Rauth
  | Rattach
  | Rflush
  | Rwalk
  | Rread
  | Rwrite
  | Rclunk
  | Rremove
  | Rstatfs
  | Rlopen
  | Rlcreate
  | Rsymlink
  | Rmknod
  | Rrename
  | Rreadlink
  | Rgetattr
  | Rsetattr
  | Rxattrwalk
  | Rxattrcreate
  | Rreaddir
  | Rfsync
  | Rlock
  | Rgetlock
  | Rlink
  | Rmkdir
  | Rrenameat
  | Runlinkat;

export type Message = Tmessage | Rmessage;
export type TmessageKind = Tmessage['type'];
export type RmessageKind = Rmessage['type'];
export type MessageKind = Message['type'];
/** The message object of one kind, e.g. MessageOf<'Twalk'>. */
export type MessageOf<K extends MessageKind> = Extract<Message, { type: K }>;
