// vhost-user messages as plain objects, discriminated by `request` (the VHOST_USER_ name without
// its prefix). Payload layouts are quoted from vhost-user.rst "Payload"; each interface names the
// payload its request carries (vhost-user.rst "Front-end message types").
//
// Conventions:
// - Every u64 is a bigint, except where the spec gives the value a narrower meaning that the
//   decoder checks (NET_SET_MTU mtu ≤ 0xffff, SET_STATUS / GET_STATUS status ≤ 0xff, the vring
//   index and no-fd bit packed into the u64 of SET_VRING_KICK/CALL/ERR). u32/u16/u8 are numbers.
// - Byte arrays (config space contents, the opaque crypto session) are Buffers and are copies.
// - Padding is not a field: the encoder writes zeros and the decoder refuses anything else, except
//   in the IOTLB payload, whose tail padding QEMU copies from an uninitialized struct (decode.ts).
// - fds are not part of a message object: the wire carries them beside the bytes (SCM_RIGHTS).
//   rules.ts says how many each message takes, and decodeFrontend() checks the count it is given.
import type { FrontendRequestName } from './constants.js';

/** The header flags of a request, beyond the version (always 1) and the reply bit (always 0). */
export interface RequestFlags {
  /** NEED_REPLY: the front-end wants a REPLY_ACK (if it has no explicit reply). */
  needReply: boolean;
}

/** One region of guest memory, as SET_MEM_TABLE / ADD_MEM_REG / REM_MEM_REG describe it. */
export interface MemoryRegion {
  /** Guest physical address of the region's first byte. */
  guestPhysAddr: bigint;
  /** Bytes; never 0 in a decoded message. */
  memorySize: bigint;
  /** The front-end's virtual address of the region (ring addresses are in this space). */
  userspaceAddr: bigint;
  /** Where the region starts in the fd that comes with it (mmap offset). */
  mmapOffset: bigint;
}

/** SET_VRING_ADDR's payload: "A vring address description". */
export interface VringAddress {
  index: number;
  /** VringAddrFlag bits (LOG). */
  flags: number;
  /** Front-end virtual address (IOVA with ACCESS_PLATFORM) of the descriptor table. */
  descUserAddr: bigint;
  usedUserAddr: bigint;
  availUserAddr: bigint;
  /** Guest physical address where used-ring writes are logged (with flags LOG). */
  logGuestAddr: bigint;
}

/** "Virtio device config space": offset u32, size u32, flags u32, then size bytes. */
export interface ConfigSpace {
  offset: number;
  /** ConfigFlags value (passed through; see constants.ts). */
  flags: number;
  /** The bytes; its length is the size field (≤ MAX_CONFIG_SIZE). In GET_CONFIG requests: zeros. */
  data: Buffer;
}

/** SET_LOG_BASE's payload: "Log description". */
export interface LogDescription {
  mmapSize: bigint;
  mmapOffset: bigint;
}

/** "Inflight description" (GET_INFLIGHT_FD / SET_INFLIGHT_FD). */
export interface InflightDescription {
  mmapSize: bigint;
  mmapOffset: bigint;
  numQueues: number;
  queueSize: number;
}

/** "An IOTLB message" (IOTLB_MSG, both directions). */
export interface IotlbMessage {
  iova: bigint;
  size: bigint;
  userspaceAddr: bigint;
  /** IotlbPerm */
  perm: number;
  /** IotlbType */
  type: number;
}

interface Req<R extends string> {
  request: R;
  flags: RequestFlags;
}

/** A vring state description: index u32, num u32. */
interface VringState {
  index: number;
  num: number;
}

// --- front-end requests (vhost-user.rst "Front-end message types") ----------------------------

/** id 1, no payload; reply u64 features. */
export type GetFeatures = Req<'GET_FEATURES'>;
/** id 2, u64 */
export interface SetFeatures extends Req<'SET_FEATURES'> {
  features: bigint;
}
/** id 3, no payload */
export type SetOwner = Req<'SET_OWNER'>;
/** id 4, no payload (deprecated) */
export type ResetOwner = Req<'RESET_OWNER'>;
/** id 5, memory regions description (≤ 8 regions, none overlapping), one fd per region. */
export interface SetMemTable extends Req<'SET_MEM_TABLE'> {
  regions: MemoryRegion[];
}
/** id 6, log description, one fd (the log's shared memory). Reply: explicit (see BackendReply). */
export interface SetLogBase extends Req<'SET_LOG_BASE'>, LogDescription {}
/** id 7, no payload, one fd (an eventfd). */
export type SetLogFd = Req<'SET_LOG_FD'>;
/** id 8, vring state: num = queue size */
export interface SetVringNum extends Req<'SET_VRING_NUM'>, VringState {}
/** id 9, vring address description */
export interface SetVringAddr extends Req<'SET_VRING_ADDR'> {
  addr: VringAddress;
}
/**
 * id 10, vring state: num = the next available-ring index (split rings; bits 16-31 reserved), or for
 * packed rings avail index (bits 0-14), avail wrap (15), used index (16-30), used wrap (31).
 */
export interface SetVringBase extends Req<'SET_VRING_BASE'>, VringState {}
/** id 11, vring state whose num must be 0; stops the ring; reply vring state. */
export interface GetVringBase extends Req<'GET_VRING_BASE'> {
  index: number;
}
/** ids 12-14, u64: vring index (bits 0-7) and no-fd (bit 8); one fd unless noFd. */
export interface SetVringKick extends Req<'SET_VRING_KICK'> {
  index: number;
  noFd: boolean;
}
export interface SetVringCall extends Req<'SET_VRING_CALL'> {
  index: number;
  noFd: boolean;
}
export interface SetVringErr extends Req<'SET_VRING_ERR'> {
  index: number;
  noFd: boolean;
}
/** id 15, no payload; reply u64 protocol features. */
export type GetProtocolFeatures = Req<'GET_PROTOCOL_FEATURES'>;
/** id 16, u64 */
export interface SetProtocolFeatures extends Req<'SET_PROTOCOL_FEATURES'> {
  features: bigint;
}
/** id 17, no payload; reply u64. */
export type GetQueueNum = Req<'GET_QUEUE_NUM'>;
/** id 18, vring state whose num is 0 or 1. */
export interface SetVringEnable extends Req<'SET_VRING_ENABLE'> {
  index: number;
  enable: boolean;
}
/** id 19, u64 whose first 6 bytes are the guest's MAC (the other 2 zero). */
export interface SendRarp extends Req<'SEND_RARP'> {
  /** "52:54:00:12:34:56" (lowercase hex). */
  mac: string;
}
/** id 20, u64 ≤ 0xffff */
export interface NetSetMtu extends Req<'NET_SET_MTU'> {
  mtu: number;
}
/** id 21, no payload, one fd (a socket for back-end requests). */
export type SetBackendReqFd = Req<'SET_BACKEND_REQ_FD'>;
/** id 22, IOTLB message; reply u64 (0 = success). */
export interface IotlbMsg extends Req<'IOTLB_MSG'> {
  iotlb: IotlbMessage;
}
/** id 23, vring state whose num is 0 (little-endian) or 1 (big-endian). */
export interface SetVringEndian extends Req<'SET_VRING_ENDIAN'> {
  index: number;
  bigEndian: boolean;
}
/** id 24, config space (data: size bytes, zeros); reply config space of the same size. */
export interface GetConfig extends Req<'GET_CONFIG'> {
  config: ConfigSpace;
}
/** id 25, config space */
export interface SetConfig extends Req<'SET_CONFIG'> {
  config: ConfigSpace;
}
/** id 26, a crypto session description, kept opaque (prism offers no crypto device). */
export interface CreateCryptoSession extends Req<'CREATE_CRYPTO_SESSION'> {
  payload: Buffer;
}
/** id 27, u64 session id */
export interface CloseCryptoSession extends Req<'CLOSE_CRYPTO_SESSION'> {
  sessionId: bigint;
}
/** ids 28-30, no payload. POSTCOPY_ADVISE's reply carries a userfaultfd; POSTCOPY_END's is a u64. */
export type PostcopyAdvise = Req<'POSTCOPY_ADVISE'>;
export type PostcopyListen = Req<'POSTCOPY_LISTEN'>;
export type PostcopyEnd = Req<'POSTCOPY_END'>;
/** id 31, inflight description (front-end fills numQueues, queueSize); reply inflight + one fd. */
export interface GetInflightFd extends Req<'GET_INFLIGHT_FD'> {
  inflight: InflightDescription;
}
/** id 32, inflight description, one fd. */
export interface SetInflightFd extends Req<'SET_INFLIGHT_FD'> {
  inflight: InflightDescription;
}
/** id 33, no payload, one fd (vhost-user-gpu.rst socket). */
export type GpuSetSocket = Req<'GPU_SET_SOCKET'>;
/** id 34, no payload */
export type ResetDevice = Req<'RESET_DEVICE'>;
/** id 35, vring state whose num must be 0 (in-band kick). */
export interface VringKick extends Req<'VRING_KICK'> {
  index: number;
}
/** id 36, no payload; reply u64. */
export type GetMaxMemSlots = Req<'GET_MAX_MEM_SLOTS'>;
/** id 37, single memory region description, one fd. */
export interface AddMemReg extends Req<'ADD_MEM_REG'> {
  region: MemoryRegion;
}
/** id 38, single memory region description; no fd (one stray fd is tolerated: rules.ts). */
export interface RemMemReg extends Req<'REM_MEM_REG'> {
  region: MemoryRegion;
}
/** id 39, u64 ≤ 0xff: DeviceStatus bits */
export interface SetStatus extends Req<'SET_STATUS'> {
  status: number;
}
/** id 40, no payload; reply u64. */
export type GetStatus = Req<'GET_STATUS'>;
/** id 41, a UUID (16 bytes, RFC 4122 byte order). */
export interface GetSharedObject extends Req<'GET_SHARED_OBJECT'> {
  /** Lowercase "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx". */
  uuid: string;
}
/** id 42, transfer direction u32 and migration phase u32, one fd; reply u64. */
export interface SetDeviceStateFd extends Req<'SET_DEVICE_STATE_FD'> {
  /** TransferDirection */
  direction: number;
  /** MigrationPhase */
  phase: number;
}
/** id 43, no payload; reply u64. */
export type CheckDeviceState = Req<'CHECK_DEVICE_STATE'>;
/** id 44, no payload; reply shared memory config. */
export type GetShmemConfig = Req<'GET_SHMEM_CONFIG'>;

export type FrontendMessage =
  | GetFeatures
  | SetFeatures
  | SetOwner
  | ResetOwner
  | SetMemTable
  | SetLogBase
  | SetLogFd
  | SetVringNum
  | SetVringAddr
  | SetVringBase
  | GetVringBase
  | SetVringKick
  | SetVringCall
  | SetVringErr
  | GetProtocolFeatures
  | SetProtocolFeatures
  | GetQueueNum
  | SetVringEnable
  | SendRarp
  | NetSetMtu
  | SetBackendReqFd
  | IotlbMsg
  | SetVringEndian
  | GetConfig
  | SetConfig
  | CreateCryptoSession
  | CloseCryptoSession
  | PostcopyAdvise
  | PostcopyListen
  | PostcopyEnd
  | GetInflightFd
  | SetInflightFd
  | GpuSetSocket
  | ResetDevice
  | VringKick
  | GetMaxMemSlots
  | AddMemReg
  | RemMemReg
  | SetStatus
  | GetStatus
  | GetSharedObject
  | SetDeviceStateFd
  | CheckDeviceState
  | GetShmemConfig;

// --- back-end replies ---------------------------------------------------------------------------
// Every reply has the REPLY flag and version 1 in its header and the request number it answers.

/**
 * The generic status reply: a u64, 0 for success (vhost-user.rst "REPLY_ACK"). Sent for any request
 * with NEED_REPLY that has no explicit reply, and as the explicit reply of IOTLB_MSG, POSTCOPY_END and
 * CHECK_DEVICE_STATE, whose u64 means the same. On the wire its request number is ackedRequest's.
 */
export interface ReplyAck {
  request: 'REPLY_ACK';
  /** The request answered; a number for one the codec does not know (to refuse it). */
  ackedRequest: FrontendRequestName | number;
  status: bigint;
}

export interface GetFeaturesReply {
  request: 'GET_FEATURES';
  features: bigint;
}
export interface GetProtocolFeaturesReply {
  request: 'GET_PROTOCOL_FEATURES';
  features: bigint;
}
export interface GetQueueNumReply {
  request: 'GET_QUEUE_NUM';
  queueNum: bigint;
}
export interface GetMaxMemSlotsReply {
  request: 'GET_MAX_MEM_SLOTS';
  maxMemSlots: bigint;
}
export interface GetStatusReply {
  request: 'GET_STATUS';
  status: number;
}
/** Vring state: num is the next available-ring index (split), or both indices (packed). */
export interface GetVringBaseReply extends VringState {
  request: 'GET_VRING_BASE';
}
/** Config space of the requested size, or null: an empty payload, which tells the front-end the read failed. */
export interface GetConfigReply {
  request: 'GET_CONFIG';
  config: ConfigSpace | null;
}
/** Inflight description of the buffer, with its fd (one). */
export interface GetInflightFdReply {
  request: 'GET_INFLIGHT_FD';
  inflight: InflightDescription;
}
/**
 * SET_LOG_BASE (with LOG_SHMFD) is answered with a message of the same request number: QEMU checks
 * only that. DPDK 22.11 sends an empty payload (log null); rust-vmm echoes the log description.
 */
export interface SetLogBaseReply {
  request: 'SET_LOG_BASE';
  log: LogDescription | null;
}
/** u64: bits 0-7 an error (0 = success), bit 8 no fd; without it, one fd (the back-end's channel). */
export interface SetDeviceStateFdReply {
  request: 'SET_DEVICE_STATE_FD';
  error: number;
  noFd: boolean;
}
/** No payload, one fd: the back-end's userfaultfd. */
export interface PostcopyAdviseReply {
  request: 'POSTCOPY_ADVISE';
}
/** Postcopy only: the back-end's mapping bases (userspaceAddr holds the back-end's address). */
export interface SetMemTableReply {
  request: 'SET_MEM_TABLE';
  regions: MemoryRegion[];
}
export interface AddMemRegReply {
  request: 'ADD_MEM_REG';
  region: MemoryRegion;
}
/** num regions u32, padding u32, 256 sizes (u64); sizes beyond num regions are 0 on the wire. */
export interface GetShmemConfigReply {
  request: 'GET_SHMEM_CONFIG';
  memorySizes: bigint[];
}

export type BackendReply =
  | ReplyAck
  | GetFeaturesReply
  | GetProtocolFeaturesReply
  | GetQueueNumReply
  | GetMaxMemSlotsReply
  | GetStatusReply
  | GetVringBaseReply
  | GetConfigReply
  | GetInflightFdReply
  | SetLogBaseReply
  | SetDeviceStateFdReply
  | PostcopyAdviseReply
  | SetMemTableReply
  | AddMemRegReply
  | GetShmemConfigReply;

// --- back-end requests (vhost-user.rst "Back-end message types") ------------------------------

interface BReq<R extends string> {
  request: R;
  flags: RequestFlags;
}

/** id 1, IOTLB message (miss / access fail). */
export interface BackendIotlbMsg extends BReq<'IOTLB_MSG'> {
  iotlb: IotlbMessage;
}
/** id 2, no payload */
export type BackendConfigChangeMsg = BReq<'CONFIG_CHANGE_MSG'>;
/** id 3, vring area: u64 (index bits 0-7, no-fd bit 8), size u64, offset u64; one fd unless noFd. */
export interface BackendVringHostNotifierMsg extends BReq<'VRING_HOST_NOTIFIER_MSG'> {
  index: number;
  noFd: boolean;
  size: bigint;
  offset: bigint;
}
/** ids 4-5, vring state whose num must be 0. */
export interface BackendVringCall extends BReq<'VRING_CALL'> {
  index: number;
}
export interface BackendVringErr extends BReq<'VRING_ERR'> {
  index: number;
}
/** ids 6-8, a UUID. */
export interface BackendSharedObjectAdd extends BReq<'SHARED_OBJECT_ADD'> {
  uuid: string;
}
export interface BackendSharedObjectRemove extends BReq<'SHARED_OBJECT_REMOVE'> {
  uuid: string;
}
export interface BackendSharedObjectLookup extends BReq<'SHARED_OBJECT_LOOKUP'> {
  uuid: string;
}
/** ids 9-10: shmid u8, padding 7, fd offset u64, shm offset u64, len u64, flags u64; MAP takes one fd. */
export interface ShmemMapping {
  shmid: number;
  fdOffset: bigint;
  shmOffset: bigint;
  len: bigint;
  /** ShmemMapFlag bits */
  flags: bigint;
}
export interface BackendShmemMap extends BReq<'SHMEM_MAP'> {
  mapping: ShmemMapping;
}
export interface BackendShmemUnmap extends BReq<'SHMEM_UNMAP'> {
  mapping: ShmemMapping;
}

export type BackendMessage =
  | BackendIotlbMsg
  | BackendConfigChangeMsg
  | BackendVringHostNotifierMsg
  | BackendVringCall
  | BackendVringErr
  | BackendSharedObjectAdd
  | BackendSharedObjectRemove
  | BackendSharedObjectLookup
  | BackendShmemMap
  | BackendShmemUnmap;
