// The wire layout of every 9P2000.L message body (what follows size[4] type[1] tag[2]), as a table
// that decode.ts and encode.ts both walk. Each row is protocol.md's layout line for the message.
// A compile-time check at the bottom proves the table and the interfaces in messages.ts agree.
import { MessageType } from './constants.js';
import type { Message, MessageKind, Qid, RmessageKind, TmessageKind } from './messages.js';

/**
 * u8/u16/u32/u64: little-endian integers (u64 as bigint); str: name[s] as a Buffer;
 * version: name[s] as a latin1 string; qid: qid[13];
 * wnames: nwname[2] nwname*(wname[s]); wqids: nwqid[2] nwqid*(qid[13]) (both ≤ MAXWELEM);
 * data: count[4] data[count], the last field of its message (Rread, Twrite, Rreaddir).
 */
export type FieldKind = 'u8' | 'u16' | 'u32' | 'u64' | 'str' | 'version' | 'qid' | 'wnames' | 'wqids' | 'data';

interface FieldValues {
  u8: number;
  u16: number;
  u32: number;
  u64: bigint;
  str: Buffer;
  version: string;
  qid: Qid;
  wnames: Buffer[];
  wqids: Qid[];
  data: Buffer;
}

export type Field = readonly [name: string, kind: FieldKind];

export const LAYOUT = {
  // 9P2000 (protocol.md, "9P2000 Operations (.L subset)")
  Tversion: [['msize', 'u32'], ['version', 'version']],
  Rversion: [['msize', 'u32'], ['version', 'version']],
  Tflush: [['oldtag', 'u16']],
  Rflush: [],
  Twalk: [['fid', 'u32'], ['newfid', 'u32'], ['wnames', 'wnames']],
  Rwalk: [['wqids', 'wqids']],
  Tread: [['fid', 'u32'], ['offset', 'u64'], ['count', 'u32']],
  Rread: [['data', 'data']],
  Twrite: [['fid', 'u32'], ['offset', 'u64'], ['data', 'data']],
  Rwrite: [['count', 'u32']],
  Tclunk: [['fid', 'u32']],
  Rclunk: [],
  Tremove: [['fid', 'u32']],
  Rremove: [],
  // 9P2000.u (protocol.md, "9P2000.u Operations (.L subset)")
  Tauth: [['afid', 'u32'], ['uname', 'str'], ['aname', 'str'], ['nUname', 'u32']],
  Rauth: [['aqid', 'qid']],
  Tattach: [['fid', 'u32'], ['afid', 'u32'], ['uname', 'str'], ['aname', 'str'], ['nUname', 'u32']],
  Rattach: [['qid', 'qid']],
  // 9P2000.L (protocol.md, "9P2000.L Operations")
  Rlerror: [['ecode', 'u32']],
  Tstatfs: [['fid', 'u32']],
  Rstatfs: [
    ['fsType', 'u32'],
    ['bsize', 'u32'],
    ['blocks', 'u64'],
    ['bfree', 'u64'],
    ['bavail', 'u64'],
    ['files', 'u64'],
    ['ffree', 'u64'],
    ['fsid', 'u64'],
    ['namelen', 'u32'],
  ],
  Tlopen: [['fid', 'u32'], ['flags', 'u32']],
  Rlopen: [['qid', 'qid'], ['iounit', 'u32']],
  Tlcreate: [['fid', 'u32'], ['name', 'str'], ['flags', 'u32'], ['mode', 'u32'], ['gid', 'u32']],
  Rlcreate: [['qid', 'qid'], ['iounit', 'u32']],
  Tsymlink: [['fid', 'u32'], ['name', 'str'], ['symtgt', 'str'], ['gid', 'u32']],
  Rsymlink: [['qid', 'qid']],
  Tmknod: [['dfid', 'u32'], ['name', 'str'], ['mode', 'u32'], ['major', 'u32'], ['minor', 'u32'], ['gid', 'u32']],
  Rmknod: [['qid', 'qid']],
  Trename: [['fid', 'u32'], ['dfid', 'u32'], ['name', 'str']],
  Rrename: [],
  Treadlink: [['fid', 'u32']],
  Rreadlink: [['target', 'str']],
  Tgetattr: [['fid', 'u32'], ['requestMask', 'u64']],
  Rgetattr: [
    ['valid', 'u64'],
    ['qid', 'qid'],
    ['mode', 'u32'],
    ['uid', 'u32'],
    ['gid', 'u32'],
    ['nlink', 'u64'],
    ['rdev', 'u64'],
    ['size', 'u64'],
    ['blksize', 'u64'],
    ['blocks', 'u64'],
    ['atimeSec', 'u64'],
    ['atimeNsec', 'u64'],
    ['mtimeSec', 'u64'],
    ['mtimeNsec', 'u64'],
    ['ctimeSec', 'u64'],
    ['ctimeNsec', 'u64'],
    ['btimeSec', 'u64'],
    ['btimeNsec', 'u64'],
    ['gen', 'u64'],
    ['dataVersion', 'u64'],
  ],
  Tsetattr: [
    ['fid', 'u32'],
    ['valid', 'u32'],
    ['mode', 'u32'],
    ['uid', 'u32'],
    ['gid', 'u32'],
    ['size', 'u64'],
    ['atimeSec', 'u64'],
    ['atimeNsec', 'u64'],
    ['mtimeSec', 'u64'],
    ['mtimeNsec', 'u64'],
  ],
  Rsetattr: [],
  Txattrwalk: [['fid', 'u32'], ['newfid', 'u32'], ['name', 'str']],
  Rxattrwalk: [['size', 'u64']],
  Txattrcreate: [['fid', 'u32'], ['name', 'str'], ['attrSize', 'u64'], ['flags', 'u32']],
  Rxattrcreate: [],
  Treaddir: [['fid', 'u32'], ['offset', 'u64'], ['count', 'u32']],
  Rreaddir: [['data', 'data']],
  Tfsync: [['fid', 'u32'], ['datasync', 'u32']],
  Rfsync: [],
  Tlock: [
    ['fid', 'u32'],
    ['lockType', 'u8'],
    ['flags', 'u32'],
    ['start', 'u64'],
    ['length', 'u64'],
    ['procId', 'u32'],
    ['clientId', 'str'],
  ],
  Rlock: [['status', 'u8']],
  Tgetlock: [['fid', 'u32'], ['lockType', 'u8'], ['start', 'u64'], ['length', 'u64'], ['procId', 'u32'], ['clientId', 'str']],
  Rgetlock: [['lockType', 'u8'], ['start', 'u64'], ['length', 'u64'], ['procId', 'u32'], ['clientId', 'str']],
  Tlink: [['dfid', 'u32'], ['fid', 'u32'], ['name', 'str']],
  Rlink: [],
  Tmkdir: [['dfid', 'u32'], ['name', 'str'], ['mode', 'u32'], ['gid', 'u32']],
  Rmkdir: [['qid', 'qid']],
  Trenameat: [['olddirfid', 'u32'], ['oldname', 'str'], ['newdirfid', 'u32'], ['newname', 'str']],
  Rrenameat: [],
  Tunlinkat: [['dirfd', 'u32'], ['name', 'str'], ['flags', 'u32']],
  Runlinkat: [],
} as const satisfies Record<MessageKind, readonly Field[]>;

/** One message kind as the codec tables see it. */
export interface KindInfo {
  kind: MessageKind;
  type: number;
  request: boolean;
  fields: readonly Field[];
  /** Bytes of the body when every variable-size field is empty (strings "", arrays [], data 0). */
  minBody: number;
}

const FIXED_SIZE: Record<FieldKind, number> = { u8: 1, u16: 2, u32: 4, u64: 8, str: 2, version: 2, qid: 13, wnames: 2, wqids: 2, data: 4 };

function info(kind: MessageKind): KindInfo {
  const fields: readonly Field[] = LAYOUT[kind];
  return {
    kind,
    type: MessageType[kind],
    request: kind.startsWith('T'),
    fields,
    minBody: fields.reduce((n, [, k]) => n + FIXED_SIZE[k], 0),
  };
}

/** Kinds by wire type number (sparse; index = type byte). */
export const KIND_BY_TYPE: readonly (KindInfo | undefined)[] = (() => {
  const table: (KindInfo | undefined)[] = new Array<KindInfo | undefined>(256).fill(undefined);
  for (const kind of Object.keys(LAYOUT) as MessageKind[]) table[MessageType[kind]] = info(kind);
  return table;
})();

/** Kinds by name. */
export const KIND_INFO: Readonly<Record<MessageKind, KindInfo>> = Object.fromEntries(
  (Object.keys(LAYOUT) as MessageKind[]).map((k) => [k, info(k)]),
) as Record<MessageKind, KindInfo>;

export const REQUEST_KINDS = (Object.keys(LAYOUT) as MessageKind[]).filter((k): k is TmessageKind => k.startsWith('T'));
export const REPLY_KINDS = (Object.keys(LAYOUT) as MessageKind[]).filter((k): k is RmessageKind => k.startsWith('R'));

// --- compile-time agreement between LAYOUT and messages.ts --------------------------------------

type FromLayout<K extends MessageKind> = { type: K; tag: number } & {
  -readonly [F in (typeof LAYOUT)[K][number] as F[0]]: FieldValues[F[1]];
};
type Same<A, B> = [A] extends [B] ? ([B] extends [A] ? true : false) : false;
type Flatten<T> = { [P in keyof T]: T[P] };
type LayoutAgrees = { [K in MessageKind]: Same<Flatten<FromLayout<K>>, Flatten<Extract<Message, { type: K }>>> };
// Fails to compile (with the offending kind named) if a layout row and its interface differ.
const layoutAgrees: { [K in MessageKind]: true } = null as unknown as LayoutAgrees;
void layoutAgrees;
