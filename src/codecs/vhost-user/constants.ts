// vhost-user wire constants, in one place. Source: QEMU docs/interop/vhost-user.rst ("Message
// Specification", "Protocol features", "Front-end message types", "Back-end message types"), with
// QEMU hw/virtio/vhost-user.c and rust-vmm/vhost vhost_user/message.rs consulted for sizes and
// limits the text leaves implicit. All numbers on the wire are little-endian (the spec says "machine
// native byte order"; every vhost-user host prism runs on is x86-64 or aarch64 little-endian).

/**
 * Requests a front-end (the VMM: QEMU, cloud-hypervisor, crosvm, DPDK virtio_user) sends to a
 * back-end, by wire number (vhost-user.rst, "Front-end message types"). Names drop the
 * VHOST_USER_ prefix; SET_BACKEND_REQ_FD was SET_SLAVE_REQ_FD in older texts (same number).
 */
export const FrontendRequest = {
  GET_FEATURES: 1,
  SET_FEATURES: 2,
  SET_OWNER: 3,
  RESET_OWNER: 4,
  SET_MEM_TABLE: 5,
  SET_LOG_BASE: 6,
  SET_LOG_FD: 7,
  SET_VRING_NUM: 8,
  SET_VRING_ADDR: 9,
  SET_VRING_BASE: 10,
  GET_VRING_BASE: 11,
  SET_VRING_KICK: 12,
  SET_VRING_CALL: 13,
  SET_VRING_ERR: 14,
  GET_PROTOCOL_FEATURES: 15,
  SET_PROTOCOL_FEATURES: 16,
  GET_QUEUE_NUM: 17,
  SET_VRING_ENABLE: 18,
  SEND_RARP: 19,
  NET_SET_MTU: 20,
  SET_BACKEND_REQ_FD: 21,
  IOTLB_MSG: 22,
  SET_VRING_ENDIAN: 23,
  GET_CONFIG: 24,
  SET_CONFIG: 25,
  CREATE_CRYPTO_SESSION: 26,
  CLOSE_CRYPTO_SESSION: 27,
  POSTCOPY_ADVISE: 28,
  POSTCOPY_LISTEN: 29,
  POSTCOPY_END: 30,
  GET_INFLIGHT_FD: 31,
  SET_INFLIGHT_FD: 32,
  GPU_SET_SOCKET: 33,
  RESET_DEVICE: 34,
  VRING_KICK: 35,
  GET_MAX_MEM_SLOTS: 36,
  ADD_MEM_REG: 37,
  REM_MEM_REG: 38,
  SET_STATUS: 39,
  GET_STATUS: 40,
  GET_SHARED_OBJECT: 41,
  SET_DEVICE_STATE_FD: 42,
  CHECK_DEVICE_STATE: 43,
  /** From the VIRTIO shared-memory series (vhost-user.rst as patched; rust-vmm/vhost has it). */
  GET_SHMEM_CONFIG: 44,
} as const;

export type FrontendRequestName = keyof typeof FrontendRequest;

/**
 * Requests a back-end sends to the front-end on the channel set up by SET_BACKEND_REQ_FD
 * (vhost-user.rst, "Back-end message types"; VHOST_USER_BACKEND_*, formerly VHOST_USER_SLAVE_*).
 */
export const BackendRequest = {
  IOTLB_MSG: 1,
  CONFIG_CHANGE_MSG: 2,
  VRING_HOST_NOTIFIER_MSG: 3,
  VRING_CALL: 4,
  VRING_ERR: 5,
  SHARED_OBJECT_ADD: 6,
  SHARED_OBJECT_REMOVE: 7,
  SHARED_OBJECT_LOOKUP: 8,
  /** From the VIRTIO shared-memory series, like GET_SHMEM_CONFIG. */
  SHMEM_MAP: 9,
  SHMEM_UNMAP: 10,
} as const;

export type BackendRequestName = keyof typeof BackendRequest;

// --- header -------------------------------------------------------------------------------------

/** request u32, flags u32, size u32 (vhost-user.rst, "Header"). */
export const HEADER_SIZE = 12;

/** The header's flags field (vhost-user.rst, "Header"). */
export const HeaderFlag = {
  /** Bits 0-1: the protocol version. */
  VERSION_MASK: 0x3,
  /** The only version there is. */
  VERSION: 0x1,
  /** Bit 2: set on every reply. */
  REPLY: 0x4,
  /** Bit 3: the sender asks for a REPLY_ACK (needs PROTOCOL_F_REPLY_ACK; vhost-user.rst "REPLY_ACK"). */
  NEED_REPLY: 0x8,
  /** Bits 4-31 are not defined; prism refuses messages that set them (as rust-vmm does). */
  RESERVED_MASK: 0xffff_fff0,
} as const;

// --- limits -------------------------------------------------------------------------------------

/**
 * Largest payload accepted: 4096 bytes (the header's 12 come on top). The size field is a u32, so
 * a receiver must pick a bound or buffer whatever a peer claims. Every payload in the spec fits:
 * the largest a front-end sends are the memory table (8 + 8 regions × 32 = 264 bytes) and the config
 * space (12 + 256 = 268); the largest a back-end sends is the shared-memory config (8 + 256 × 8 =
 * 2056); QEMU's crypto session is under 1 KiB. rust-vmm/vhost uses the same 4 KiB bound (MAX_MSG_SIZE).
 */
export const MAX_PAYLOAD_SIZE = 4096;

/**
 * Most memory regions in one SET_MEM_TABLE: VHOST_MEMORY_BASELINE_NREGIONS (vhost-user.rst, memory
 * regions description: "region0 ... region7"). QEMU sends at most 8 and moves to ADD_MEM_REG /
 * REM_MEM_REG (PROTOCOL_F_CONFIGURE_MEM_SLOTS) for more.
 */
export const MEMORY_BASELINE_NREGIONS = 8;

/**
 * Most fds one message may carry: one per region of a full memory table. QEMU receives at most this
 * many with a message (VHOST_MEMORY_BASELINE_NREGIONS fds per SCM_RIGHTS), the back-end channel
 * allows "at most 8 descriptors in each message" (vhost-user.rst, "Back-end communication"), and no
 * other message carries more than one.
 */
export const MAX_FDS_PER_MESSAGE = 8;

/** Largest device config space access (QEMU VHOST_USER_MAX_CONFIG_SIZE; "virtio device config space"). */
export const MAX_CONFIG_SIZE = 256;

/** Most VIRTIO shared memory regions in GET_SHMEM_CONFIG (VIRTIO_MAX_SHMEM_REGIONS). */
export const MAX_SHMEM_REGIONS = 256;

// --- payload sizes (vhost-user.rst, "Payload") -------------------------------------------------

export const PayloadSize = {
  U64: 8,
  /** index u32, num u32 */
  VRING_STATE: 8,
  /** index u32, flags u32, descriptor u64, used u64, available u64, log u64 */
  VRING_ADDR: 40,
  /** guest address u64, size u64, user address u64, mmap offset u64 */
  MEMORY_REGION: 32,
  /** num regions u32, padding u32 (then the regions) */
  MEMORY_TABLE_HEADER: 8,
  /** padding u64, region */
  SINGLE_MEMORY_REGION: 40,
  /** log size u64, log offset u64 */
  LOG: 16,
  /** iova u64, size u64, user address u64, permissions u8, type u8, then 6 bytes of C struct padding */
  IOTLB: 32,
  /** offset u32, size u32, flags u32 (then size bytes) */
  CONFIG_HEADER: 12,
  /** vring index/flags u64, size u64, offset u64 */
  VRING_AREA: 24,
  /** mmap size u64, mmap offset u64, num queues u16, queue size u16, then 4 bytes of C struct padding */
  INFLIGHT: 24,
  /** a UUID */
  SHARED_OBJECT: 16,
  /** transfer direction u32, migration phase u32 */
  DEVICE_STATE_TRANSFER: 8,
  /** num regions u32, padding u32, 256 × mem size u64 */
  SHMEM_CONFIG: 8 + 256 * 8,
  /** shmid u8, 7 padding bytes, fd offset u64, shm offset u64, len u64, flags u64 */
  SHMEM_MMAP: 40,
} as const;

// --- payload fields ----------------------------------------------------------------------------

/**
 * The u64 of SET_VRING_KICK/CALL/ERR (and the vring area of VRING_HOST_NOTIFIER_MSG): bits 0-7 are the
 * vring index, bit 8 says no fd came with the message (poll instead). Other bits are undefined.
 */
export const VRING_INDEX_MASK = 0xff;
export const VRING_NOFD_MASK = 0x100;

/** SET_VRING_ADDR flags (Linux vhost.h): log writes to the used ring (migration). */
export const VringAddrFlag = { LOG: 0x1 } as const;

/**
 * SET_CONFIG / GET_CONFIG flags (vhost-user.rst "Virtio device config space"; QEMU
 * VHOST_SET_CONFIG_TYPE_*). Values, not bits. rust-vmm reads them as bits (WRITABLE 1, LIVE_MIGRATION
 * 2) and its front-ends send 1 for ordinary writes, so the codec passes the field through unchecked.
 */
export const ConfigFlags = { FRONTEND: 0, MIGRATION: 1 } as const;

/** IOTLB message types and permissions (vhost-user.rst "An IOTLB message"; Linux vhost_types.h). */
export const IotlbType = { MISS: 1, UPDATE: 2, INVALIDATE: 3, ACCESS_FAIL: 4 } as const;
export const IotlbPerm = { NONE: 0, RO: 1, WO: 2, RW: 3 } as const;

/** SET_DEVICE_STATE_FD parameters (vhost-user.rst "Device state transfer parameters"). */
export const TransferDirection = { SAVE: 0, LOAD: 1 } as const;
export const MigrationPhase = { STOPPED: 0 } as const;

/** SHMEM_MAP flags: the mapping is writable (rust-vmm VhostUserMMapFlags). */
export const ShmemMapFlag = { WRITABLE: 1 } as const;

/** SET_VRING_ENDIAN num values (vhost-user.rst): other values are invalid. */
export const VringEndian = { LITTLE: 0, BIG: 1 } as const;

// --- features ----------------------------------------------------------------------------------

/**
 * Protocol feature bit numbers (vhost-user.rst "Protocol features"; VHOST_USER_PROTOCOL_F_*), as
 * exchanged by GET_PROTOCOL_FEATURES / SET_PROTOCOL_FEATURES (u64 masks: see featureMask()).
 */
export const ProtocolFeature = {
  MQ: 0,
  LOG_SHMFD: 1,
  RARP: 2,
  REPLY_ACK: 3,
  /** VHOST_USER_PROTOCOL_F_MTU in the spec's list, F_NET_MTU in its prose. */
  NET_MTU: 4,
  /** Formerly SLAVE_REQ. */
  BACKEND_REQ: 5,
  CROSS_ENDIAN: 6,
  CRYPTO_SESSION: 7,
  PAGEFAULT: 8,
  CONFIG: 9,
  /** Formerly SLAVE_SEND_FD. */
  BACKEND_SEND_FD: 10,
  HOST_NOTIFIER: 11,
  INFLIGHT_SHMFD: 12,
  RESET_DEVICE: 13,
  INBAND_NOTIFICATIONS: 14,
  CONFIGURE_MEM_SLOTS: 15,
  STATUS: 16,
  /** Memory regions grow two u32 fields; this codec does not decode that layout. */
  XEN_MMAP: 17,
  SHARED_OBJECT: 18,
  DEVICE_STATE: 19,
  /**
   * Bit 20 is claimed by two patch series at the time of writing: VIRTIO shared memory (SHMEM, as in
   * rust-vmm/vhost and the patched vhost-user.rst) and GET_VRING_BASE_INFLIGHT (vhost-user-blk
   * in-flight migration). Do not offer it until QEMU settles which one it is.
   */
  SHMEM: 20,
} as const;

export type ProtocolFeatureName = keyof typeof ProtocolFeature;

/**
 * Transport feature bits a back-end offers in GET_FEATURES (virtio 1.2 §6 "Reserved Feature Bits";
 * vhost: Linux vhost.h; vhost-user.rst for PROTOCOL_FEATURES).
 */
export const VirtioFeature = {
  NOTIFY_ON_EMPTY: 24,
  ANY_LAYOUT: 27,
  RING_INDIRECT_DESC: 28,
  RING_EVENT_IDX: 29,
  /** VHOST_USER_F_PROTOCOL_FEATURES: the reserved bit 30, reused by vhost-user (vhost-user.rst "Communication"). */
  PROTOCOL_FEATURES: 30,
  /** VHOST_F_LOG_ALL: the back-end can log its writes for live migration (vhost.h). */
  LOG_ALL: 26,
  VERSION_1: 32,
  /** VIRTIO_F_ACCESS_PLATFORM, formerly IOMMU_PLATFORM: ring addresses are IOVAs (IOTLB_MSG). */
  ACCESS_PLATFORM: 33,
  RING_PACKED: 34,
  IN_ORDER: 35,
  ORDER_PLATFORM: 36,
  SR_IOV: 37,
  NOTIFICATION_DATA: 38,
  NOTIF_CONFIG_DATA: 39,
  RING_RESET: 40,
} as const;

/** VHOST_USER_F_PROTOCOL_FEATURES by its spec name: GET_FEATURES bit 30 (vhost-user.rst "Communication"). */
export const VHOST_USER_F_PROTOCOL_FEATURES = VirtioFeature.PROTOCOL_FEATURES;

/** virtio-net device feature bits (virtio 1.2 §5.1.3), for the net device's GET_FEATURES answer. */
export const VirtioNetFeature = {
  CSUM: 0,
  GUEST_CSUM: 1,
  CTRL_GUEST_OFFLOADS: 2,
  MTU: 3,
  MAC: 5,
  GUEST_TSO4: 7,
  GUEST_TSO6: 8,
  GUEST_ECN: 9,
  GUEST_UFO: 10,
  HOST_TSO4: 11,
  HOST_TSO6: 12,
  HOST_ECN: 13,
  HOST_UFO: 14,
  MRG_RXBUF: 15,
  STATUS: 16,
  CTRL_VQ: 17,
  CTRL_RX: 18,
  CTRL_VLAN: 19,
  CTRL_RX_EXTRA: 20,
  GUEST_ANNOUNCE: 21,
  MQ: 22,
  CTRL_MAC_ADDR: 23,
  HASH_REPORT: 57,
  RSS: 60,
  RSC_EXT: 61,
  STANDBY: 62,
  SPEED_DUPLEX: 63,
} as const;

/** Device status bits carried by SET_STATUS / GET_STATUS (virtio 1.2 §2.1). */
export const DeviceStatus = {
  ACKNOWLEDGE: 1,
  DRIVER: 2,
  DRIVER_OK: 4,
  FEATURES_OK: 8,
  DEVICE_NEEDS_RESET: 64,
  FAILED: 128,
} as const;

/** A u64 feature mask with the given bit numbers set. */
export function featureMask(...bits: readonly number[]): bigint {
  let mask = 0n;
  for (const b of bits) {
    if (!Number.isInteger(b) || b < 0 || b > 63) throw new RangeError(`feature bit must be an integer in 0..63, got ${b}`);
    mask |= 1n << BigInt(b);
  }
  return mask;
}

/** The bit numbers set in a u64 feature mask, lowest first. */
export function featureBits(mask: bigint): number[] {
  const bits: number[] = [];
  for (let b = 0; b < 64; b++) if ((mask >> BigInt(b)) & 1n) bits.push(b);
  return bits;
}

/** Names of the bits set in a mask, by a table such as ProtocolFeature; unknown bits as "bit N". */
export function featureNames(mask: bigint, table: Readonly<Record<string, number>>): string[] {
  const byBit = new Map<number, string>(Object.entries(table).map(([k, v]) => [v, k]));
  return featureBits(mask).map((b) => byBit.get(b) ?? `bit ${b}`);
}

/** Front-end requests that carry no payload (vhost-user.rst: "no payload" / "none"). */
export const NO_PAYLOAD_REQUESTS = [
  'GET_FEATURES',
  'SET_OWNER',
  'RESET_OWNER',
  'SET_LOG_FD',
  'GET_PROTOCOL_FEATURES',
  'GET_QUEUE_NUM',
  'SET_BACKEND_REQ_FD',
  'POSTCOPY_ADVISE',
  'POSTCOPY_LISTEN',
  'POSTCOPY_END',
  'GPU_SET_SOCKET',
  'RESET_DEVICE',
  'GET_MAX_MEM_SLOTS',
  'GET_STATUS',
  'CHECK_DEVICE_STATE',
  'GET_SHMEM_CONFIG',
] as const satisfies readonly FrontendRequestName[];
export type NoPayloadRequestName = (typeof NO_PAYLOAD_REQUESTS)[number];
const noPayload: ReadonlySet<string> = new Set(NO_PAYLOAD_REQUESTS);
export function isNoPayloadRequest(name: FrontendRequestName): name is NoPayloadRequestName {
  return noPayload.has(name);
}
