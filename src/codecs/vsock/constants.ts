// virtio-vsock wire constants, in one place. Source: virtio 1.2 §5.10 "Socket Device" (the
// packet header, operations, shutdown flags, events, config space) with Linux
// include/uapi/linux/virtio_vsock.h and net/vmw_vsock/virtio_transport_common.c consulted for the
// limits the text leaves implicit. Everything on the wire is little-endian.

/** struct virtio_vsock_hdr: le64 src_cid, le64 dst_cid, le32 src_port, le32 dst_port, le32 len,
 * le16 type, le16 op, le32 flags, le32 buf_alloc, le32 fwd_cnt (virtio 1.2 §5.10.6). */
export const HEADER_SIZE = 44;

/** Byte offsets of the header fields. */
export const HeaderOffset = {
  SRC_CID: 0,
  DST_CID: 8,
  SRC_PORT: 16,
  DST_PORT: 20,
  LEN: 24,
  TYPE: 28,
  OP: 30,
  FLAGS: 32,
  BUF_ALLOC: 36,
  FWD_CNT: 40,
} as const;

/** Socket types (virtio 1.2 §5.10.6). SEQPACKET needs VIRTIO_VSOCK_F_SEQPACKET, which prism does not offer. */
export const SocketType = {
  STREAM: 1,
  SEQPACKET: 2,
} as const;

/** Operations (virtio 1.2 §5.10.6). 0 is VIRTIO_VSOCK_OP_INVALID. */
export const Op = {
  REQUEST: 1,
  RESPONSE: 2,
  RST: 3,
  SHUTDOWN: 4,
  RW: 5,
  CREDIT_UPDATE: 6,
  CREDIT_REQUEST: 7,
} as const;

export type OpName = keyof typeof Op;

const OP_NAMES: Record<number, OpName> = Object.fromEntries(Object.entries(Op).map(([k, v]) => [v, k as OpName]));

/** The name of an operation number, or undefined for an unknown one. */
export function opName(op: number): OpName | undefined {
  return OP_NAMES[op];
}

/** VIRTIO_VSOCK_SHUTDOWN_F_RECEIVE / _SEND (virtio 1.2 §5.10.6.5): flags of a SHUTDOWN packet. */
export const ShutdownFlag = {
  /** The sender will receive no more data. */
  RCV: 1,
  /** The sender will send no more data. */
  SEND: 2,
} as const;

export const SHUTDOWN_BOTH = ShutdownFlag.RCV | ShutdownFlag.SEND;

/** Well-known CIDs (virtio 1.2 §5.10.4, linux/vm_sockets.h). */
export const Cid = {
  HYPERVISOR: 0,
  LOCAL: 1,
  HOST: 2,
  /** VMADDR_CID_ANY; never a valid guest CID. */
  ANY: 0xffff_ffff,
} as const;

/** Lowest CID a guest may have: 0-2 are reserved (virtio 1.2 §5.10.4). */
export const MIN_GUEST_CID = 3;
/** Highest: the upper 32 bits of a CID are reserved and zero, and 0xffffffff is VMADDR_CID_ANY. */
export const MAX_GUEST_CID = 0xffff_fffe;

/** Largest payload one packet carries: Linux's VIRTIO_VSOCK_MAX_PKT_BUF_SIZE (64 KiB). */
export const MAX_PKT_PAYLOAD = 64 * 1024;

/** Virtqueues (virtio 1.2 §5.10.2). */
export const Queue = {
  RX: 0,
  TX: 1,
  EVENT: 2,
} as const;

/** Device config space: le64 guest_cid (virtio 1.2 §5.10.4). */
export const CONFIG_SIZE = 8;

/** struct virtio_vsock_event: le32 id (virtio 1.2 §5.10.6.7). */
export const EVENT_SIZE = 4;

export const EventId = {
  /** The device's state was lost (backend restart, migration): the driver resets every connection. */
  TRANSPORT_RESET: 0,
} as const;

/** Feature bits (virtio 1.2 §5.10.3). */
export const VsockFeature = {
  /** Stream sockets are supported (only meaningful with SEQPACKET; without any, stream is implied). */
  STREAM: 0,
  SEQPACKET: 1,
} as const;
