// vhost-user encoding: message object -> header + payload in one exact-size allocation. Every field
// is checked as it is written: wrong JS types throw TypeError, values that do not fit their wire
// field (or a protocol limit: ≤ 8 memory regions, ≤ 256 config bytes, the 4096-byte payload limit)
// RangeError (Node's convention). Encoders check what the wire can carry, not the semantic rules
// decoders enforce (zero-size or overlapping regions, wrapping addresses): tests build such messages
// to check that decoders refuse them.
import {
  BackendRequest,
  FrontendRequest,
  HEADER_SIZE,
  HeaderFlag,
  MAX_CONFIG_SIZE,
  MAX_PAYLOAD_SIZE,
  MAX_SHMEM_REGIONS,
  MEMORY_BASELINE_NREGIONS,
  PayloadSize,
  VRING_INDEX_MASK,
  VRING_NOFD_MASK,
  isNoPayloadRequest,
} from './constants.js';
import type {
  BackendMessage,
  BackendReply,
  ConfigSpace,
  FrontendMessage,
  InflightDescription,
  IotlbMessage,
  LogDescription,
  MemoryRegion,
  ReplyAck,
  RequestFlags,
  ShmemMapping,
  VringAddress,
} from './messages.js';

const U64_MAX = 0xffff_ffff_ffff_ffffn;

/** Writes one message: header first, then payload fields in order; checks each value it writes. */
class MessageWriter {
  readonly buf: Buffer;
  // DataView.setBigUint64 is several times faster than Buffer.writeBigUInt64LE.
  private readonly view: DataView;
  private off = HEADER_SIZE;

  constructor(
    readonly what: string,
    request: number,
    flags: number,
    size: number,
  ) {
    if (size > MAX_PAYLOAD_SIZE) throw new RangeError(`${what}: payload of ${size} bytes exceeds the ${MAX_PAYLOAD_SIZE}-byte limit`);
    this.buf = Buffer.alloc(HEADER_SIZE + size); // zeroed: padding needs no writes
    this.view = new DataView(this.buf.buffer, this.buf.byteOffset, this.buf.byteLength);
    this.buf.writeUInt32LE(request, 0);
    this.buf.writeUInt32LE(flags, 4);
    this.buf.writeUInt32LE(size, 8);
  }

  u8(v: unknown, field: string): this {
    this.buf[this.off] = checkUint(v, 0xff, this.what, field);
    this.off += 1;
    return this;
  }

  u16(v: unknown, field: string): this {
    this.buf.writeUInt16LE(checkUint(v, 0xffff, this.what, field), this.off);
    this.off += 2;
    return this;
  }

  u32(v: unknown, field: string): this {
    this.buf.writeUInt32LE(checkUint(v, 0xffff_ffff, this.what, field), this.off);
    this.off += 4;
    return this;
  }

  u64(v: unknown, field: string): this {
    this.view.setBigUint64(this.off, checkU64(v, this.what, field), true);
    this.off += 8;
    return this;
  }

  bytes(b: Uint8Array): this {
    this.buf.set(b, this.off);
    this.off += b.length;
    return this;
  }

  skip(n: number): this {
    this.off += n;
    return this;
  }

  done(): Buffer {
    if (this.off !== this.buf.length) throw new Error(`${this.what}: internal size mismatch (${this.off} != ${this.buf.length})`);
    return this.buf;
  }
}

// --- field checks --------------------------------------------------------------------------------

function checkUint(v: unknown, max: number, what: string, field: string): number {
  if (typeof v !== 'number') throw new TypeError(`${what}.${field} must be a number, got ${typeof v}`);
  if (!Number.isInteger(v) || v < 0 || v > max) throw new RangeError(`${what}.${field} must be an integer in 0..${max}, got ${v}`);
  return v;
}

function checkU64(v: unknown, what: string, field: string): bigint {
  if (typeof v !== 'bigint') throw new TypeError(`${what}.${field} must be a bigint, got ${typeof v}`);
  if (v < 0n || v > U64_MAX) throw new RangeError(`${what}.${field} must be in 0..2^64-1, got ${v}`);
  return v;
}

function checkBool(v: unknown, what: string, field: string): boolean {
  if (typeof v !== 'boolean') throw new TypeError(`${what}.${field} must be a boolean, got ${typeof v}`);
  return v;
}

function checkBytes(v: unknown, what: string, field: string): Uint8Array {
  if (!(v instanceof Uint8Array)) throw new TypeError(`${what}.${field} must be a Buffer`);
  return v;
}

function checkObject<T>(v: unknown, what: string, field: string): T {
  if (typeof v !== 'object' || v === null) throw new TypeError(`${what}.${field} must be an object`);
  return v as T;
}

function checkArray(v: unknown, max: number, what: string, field: string): unknown[] {
  if (!Array.isArray(v)) throw new TypeError(`${what}.${field} must be an array`);
  if (v.length > max) throw new RangeError(`${what}.${field} has ${v.length} entries; at most ${max}`);
  return v;
}

const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const MAC_RE = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/;

function uuidBytes(v: unknown, what: string): Buffer {
  if (typeof v !== 'string') throw new TypeError(`${what}.uuid must be a string, got ${typeof v}`);
  if (!UUID_RE.test(v)) throw new RangeError(`${what}.uuid must be a lowercase xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx UUID, got ${JSON.stringify(v)}`);
  return Buffer.from(v.replace(/-/g, ''), 'hex');
}

function requestFlags(v: unknown, what: string): number {
  const f = checkObject<RequestFlags>(v, what, 'flags');
  return HeaderFlag.VERSION | (checkBool(f.needReply, what, 'flags.needReply') ? HeaderFlag.NEED_REPLY : 0);
}

function requestNumber(msg: unknown, table: Readonly<Record<string, number>>, kind: string): { name: string; n: number } {
  const name = typeof msg === 'object' && msg !== null ? (msg as { request?: unknown }).request : undefined;
  if (typeof name !== 'string' || !Object.hasOwn(table, name)) throw new TypeError(`not a vhost-user ${kind}: request ${JSON.stringify(name)}`);
  return { name, n: table[name] as number };
}

// --- payload pieces ------------------------------------------------------------------------------

function writeRegion(w: MessageWriter, v: unknown, field: string): void {
  const r = checkObject<MemoryRegion>(v, w.what, field);
  w.u64(r.guestPhysAddr, `${field}.guestPhysAddr`)
    .u64(r.memorySize, `${field}.memorySize`)
    .u64(r.userspaceAddr, `${field}.userspaceAddr`)
    .u64(r.mmapOffset, `${field}.mmapOffset`);
}

function memoryTable(what: string, request: number, flags: number, v: unknown): Buffer {
  const regions = checkArray(v, MEMORY_BASELINE_NREGIONS, what, 'regions');
  const w = new MessageWriter(what, request, flags, PayloadSize.MEMORY_TABLE_HEADER + regions.length * PayloadSize.MEMORY_REGION);
  w.u32(regions.length, 'regions.length').skip(4);
  regions.forEach((r, i) => writeRegion(w, r, `regions[${i}]`));
  return w.done();
}

function singleRegion(what: string, request: number, flags: number, v: unknown): Buffer {
  const w = new MessageWriter(what, request, flags, PayloadSize.SINGLE_MEMORY_REGION).skip(8);
  writeRegion(w, v, 'region');
  return w.done();
}

function u64Message(what: string, request: number, flags: number, v: unknown, field: string): Buffer {
  return new MessageWriter(what, request, flags, PayloadSize.U64).u64(v, field).done();
}

function stateMessage(what: string, request: number, flags: number, index: unknown, num: unknown, numField = 'num'): Buffer {
  return new MessageWriter(what, request, flags, PayloadSize.VRING_STATE).u32(index, 'index').u32(num, numField).done();
}

function vringFdValue(what: string, index: unknown, noFd: unknown): bigint {
  const i = checkUint(index, VRING_INDEX_MASK, what, 'index');
  return BigInt(i | (checkBool(noFd, what, 'noFd') ? VRING_NOFD_MASK : 0));
}

function configMessage(what: string, request: number, flags: number, v: unknown): Buffer {
  const cfg = checkObject<ConfigSpace>(v, what, 'config');
  const data = checkBytes(cfg.data, what, 'config.data');
  if (data.length > MAX_CONFIG_SIZE) throw new RangeError(`${what}.config.data is ${data.length} bytes; at most ${MAX_CONFIG_SIZE}`);
  return new MessageWriter(what, request, flags, PayloadSize.CONFIG_HEADER + data.length)
    .u32(cfg.offset, 'config.offset')
    .u32(data.length, 'config.size')
    .u32(cfg.flags, 'config.flags')
    .bytes(data)
    .done();
}

function logMessage(what: string, request: number, flags: number, v: unknown): Buffer {
  const l = checkObject<LogDescription>(v, what, 'log');
  return new MessageWriter(what, request, flags, PayloadSize.LOG).u64(l.mmapSize, 'mmapSize').u64(l.mmapOffset, 'mmapOffset').done();
}

function inflightMessage(what: string, request: number, flags: number, v: unknown): Buffer {
  const d = checkObject<InflightDescription>(v, what, 'inflight');
  return new MessageWriter(what, request, flags, PayloadSize.INFLIGHT)
    .u64(d.mmapSize, 'inflight.mmapSize')
    .u64(d.mmapOffset, 'inflight.mmapOffset')
    .u16(d.numQueues, 'inflight.numQueues')
    .u16(d.queueSize, 'inflight.queueSize')
    .skip(4)
    .done();
}

function iotlbMessage(what: string, request: number, flags: number, v: unknown): Buffer {
  const m = checkObject<IotlbMessage>(v, what, 'iotlb');
  return new MessageWriter(what, request, flags, PayloadSize.IOTLB)
    .u64(m.iova, 'iotlb.iova')
    .u64(m.size, 'iotlb.size')
    .u64(m.userspaceAddr, 'iotlb.userspaceAddr')
    .u8(m.perm, 'iotlb.perm')
    .u8(m.type, 'iotlb.type')
    .skip(6)
    .done();
}

function uuidMessage(what: string, request: number, flags: number, v: unknown): Buffer {
  return new MessageWriter(what, request, flags, PayloadSize.SHARED_OBJECT).bytes(uuidBytes(v, what)).done();
}

// --- front-end requests --------------------------------------------------------------------------

/** Encodes a front-end request (what QEMU would send); the caller sends rules.frontendFdCount(msg) fds with it. */
export function encodeFrontend(msg: FrontendMessage): Buffer {
  const { name, n } = requestNumber(msg, FrontendRequest, 'front-end request');
  const what = `vhost-user ${name}`;
  const flags = requestFlags(msg.flags, what);
  const m = msg;
  if (isNoPayloadRequest(m.request)) return new MessageWriter(what, n, flags, 0).done();
  switch (m.request) {
    case 'SET_FEATURES':
    case 'SET_PROTOCOL_FEATURES':
      return u64Message(what, n, flags, m.features, 'features');
    case 'CLOSE_CRYPTO_SESSION':
      return u64Message(what, n, flags, m.sessionId, 'sessionId');
    case 'SET_MEM_TABLE':
      return memoryTable(what, n, flags, m.regions);
    case 'SET_LOG_BASE':
      return logMessage(what, n, flags, m);
    case 'SET_VRING_NUM':
    case 'SET_VRING_BASE':
      return stateMessage(what, n, flags, m.index, m.num);
    case 'GET_VRING_BASE':
    case 'VRING_KICK':
      return stateMessage(what, n, flags, m.index, 0);
    case 'SET_VRING_ENABLE':
      return stateMessage(what, n, flags, m.index, checkBool(m.enable, what, 'enable') ? 1 : 0);
    case 'SET_VRING_ENDIAN':
      return stateMessage(what, n, flags, m.index, checkBool(m.bigEndian, what, 'bigEndian') ? 1 : 0);
    case 'SET_VRING_ADDR': {
      const a = checkObject<VringAddress>(m.addr, what, 'addr');
      return new MessageWriter(what, n, flags, PayloadSize.VRING_ADDR)
        .u32(a.index, 'addr.index')
        .u32(a.flags, 'addr.flags')
        .u64(a.descUserAddr, 'addr.descUserAddr')
        .u64(a.usedUserAddr, 'addr.usedUserAddr')
        .u64(a.availUserAddr, 'addr.availUserAddr')
        .u64(a.logGuestAddr, 'addr.logGuestAddr')
        .done();
    }
    case 'SET_VRING_KICK':
    case 'SET_VRING_CALL':
    case 'SET_VRING_ERR':
      return u64Message(what, n, flags, vringFdValue(what, m.index, m.noFd), 'index');
    case 'SEND_RARP': {
      if (typeof m.mac !== 'string') throw new TypeError(`${what}.mac must be a string, got ${typeof m.mac}`);
      if (!MAC_RE.test(m.mac)) throw new RangeError(`${what}.mac must be a lowercase aa:bb:cc:dd:ee:ff MAC address, got ${JSON.stringify(m.mac)}`);
      return new MessageWriter(what, n, flags, PayloadSize.U64).bytes(Buffer.from(m.mac.replace(/:/g, ''), 'hex')).skip(2).done();
    }
    case 'NET_SET_MTU':
      return u64Message(what, n, flags, BigInt(checkUint(m.mtu, 0xffff, what, 'mtu')), 'mtu');
    case 'SET_STATUS':
      return u64Message(what, n, flags, BigInt(checkUint(m.status, 0xff, what, 'status')), 'status');
    case 'IOTLB_MSG':
      return iotlbMessage(what, n, flags, m.iotlb);
    case 'GET_CONFIG':
    case 'SET_CONFIG':
      return configMessage(what, n, flags, m.config);
    case 'CREATE_CRYPTO_SESSION': {
      const p = checkBytes(m.payload, what, 'payload');
      return new MessageWriter(what, n, flags, p.length).bytes(p).done();
    }
    case 'GET_INFLIGHT_FD':
    case 'SET_INFLIGHT_FD':
      return inflightMessage(what, n, flags, m.inflight);
    case 'ADD_MEM_REG':
    case 'REM_MEM_REG':
      return singleRegion(what, n, flags, m.region);
    case 'GET_SHARED_OBJECT':
      return uuidMessage(what, n, flags, m.uuid);
    case 'SET_DEVICE_STATE_FD':
      return new MessageWriter(what, n, flags, PayloadSize.DEVICE_STATE_TRANSFER).u32(m.direction, 'direction').u32(m.phase, 'phase').done();
  }
}

// --- back-end replies ------------------------------------------------------------------------------

const REPLY_FLAGS = HeaderFlag.VERSION | HeaderFlag.REPLY;

/**
 * Encodes a back-end reply (REPLY flag, version 1, the answered request's number). The caller sends
 * rules.replyFdCount(reply) fds with it (the inflight buffer of GET_INFLIGHT_FD, for one).
 */
export function encodeReply(reply: BackendReply): Buffer {
  const kind = typeof reply === 'object' && reply !== null ? (reply as { request?: unknown }).request : undefined;
  if (kind === 'REPLY_ACK') return encodeAck(reply as ReplyAck);
  const { name, n } = requestNumber(reply, FrontendRequest, 'reply');
  const what = `vhost-user ${name} reply`;
  const r = reply as Exclude<BackendReply, ReplyAck>;
  switch (r.request) {
    case 'GET_FEATURES':
    case 'GET_PROTOCOL_FEATURES':
      return u64Message(what, n, REPLY_FLAGS, r.features, 'features');
    case 'GET_QUEUE_NUM':
      return u64Message(what, n, REPLY_FLAGS, r.queueNum, 'queueNum');
    case 'GET_MAX_MEM_SLOTS':
      return u64Message(what, n, REPLY_FLAGS, r.maxMemSlots, 'maxMemSlots');
    case 'GET_STATUS':
      return u64Message(what, n, REPLY_FLAGS, BigInt(checkUint(r.status, 0xff, what, 'status')), 'status');
    case 'GET_VRING_BASE':
      return stateMessage(what, n, REPLY_FLAGS, r.index, r.num);
    case 'GET_CONFIG':
      return r.config === null ? new MessageWriter(what, n, REPLY_FLAGS, 0).done() : configMessage(what, n, REPLY_FLAGS, r.config);
    case 'GET_INFLIGHT_FD':
      return inflightMessage(what, n, REPLY_FLAGS, r.inflight);
    case 'SET_LOG_BASE':
      return r.log === null ? new MessageWriter(what, n, REPLY_FLAGS, 0).done() : logMessage(what, n, REPLY_FLAGS, r.log);
    case 'SET_DEVICE_STATE_FD': {
      const error = checkUint(r.error, 0xff, what, 'error');
      const noFd = checkBool(r.noFd, what, 'noFd');
      if (error !== 0 && !noFd) throw new RangeError(`${what}: an error reply cannot carry an fd (set noFd)`);
      return u64Message(what, n, REPLY_FLAGS, BigInt(error | (noFd ? VRING_NOFD_MASK : 0)), 'error');
    }
    case 'POSTCOPY_ADVISE':
      return new MessageWriter(what, n, REPLY_FLAGS, 0).done();
    case 'SET_MEM_TABLE':
      return memoryTable(what, n, REPLY_FLAGS, r.regions);
    case 'ADD_MEM_REG':
      return singleRegion(what, n, REPLY_FLAGS, r.region);
    case 'GET_SHMEM_CONFIG': {
      const sizes = checkArray(r.memorySizes, MAX_SHMEM_REGIONS, what, 'memorySizes');
      const w = new MessageWriter(what, n, REPLY_FLAGS, PayloadSize.SHMEM_CONFIG).u32(sizes.length, 'memorySizes.length').skip(4);
      sizes.forEach((s, i) => w.u64(s, `memorySizes[${i}]`));
      return w.skip((MAX_SHMEM_REGIONS - sizes.length) * 8).done();
    }
  }
}

/**
 * A REPLY_ACK: u64 status (0 = success) under the acked request's number. ackedRequest may be a
 * number, to refuse a request the codec could not decode (DecodeError.request).
 */
function encodeAck(reply: ReplyAck): Buffer {
  const acked = reply.ackedRequest;
  let n: number;
  if (typeof acked === 'number') n = checkUint(acked, 0xffff_ffff, 'vhost-user REPLY_ACK', 'ackedRequest');
  else n = requestNumber({ request: acked }, FrontendRequest, 'request to acknowledge').n;
  return u64Message(`vhost-user REPLY_ACK to ${String(acked)}`, n, REPLY_FLAGS, reply.status, 'status');
}

// --- back-end requests ---------------------------------------------------------------------------

/** Encodes a back-end request (for the SET_BACKEND_REQ_FD channel); rules.backendFdCount(msg) fds go with it. */
export function encodeBackend(msg: BackendMessage): Buffer {
  const { name, n } = requestNumber(msg, BackendRequest, 'back-end request');
  const what = `vhost-user back-end ${name}`;
  const flags = requestFlags(msg.flags, what);
  const m = msg;
  switch (m.request) {
    case 'IOTLB_MSG':
      return iotlbMessage(what, n, flags, m.iotlb);
    case 'CONFIG_CHANGE_MSG':
      return new MessageWriter(what, n, flags, 0).done();
    case 'VRING_HOST_NOTIFIER_MSG':
      return new MessageWriter(what, n, flags, PayloadSize.VRING_AREA)
        .u64(vringFdValue(what, m.index, m.noFd), 'index')
        .u64(m.size, 'size')
        .u64(m.offset, 'offset')
        .done();
    case 'VRING_CALL':
    case 'VRING_ERR':
      return stateMessage(what, n, flags, m.index, 0);
    case 'SHARED_OBJECT_ADD':
    case 'SHARED_OBJECT_REMOVE':
    case 'SHARED_OBJECT_LOOKUP':
      return uuidMessage(what, n, flags, m.uuid);
    case 'SHMEM_MAP':
    case 'SHMEM_UNMAP': {
      const s = checkObject<ShmemMapping>(m.mapping, what, 'mapping');
      return new MessageWriter(what, n, flags, PayloadSize.SHMEM_MMAP)
        .u8(s.shmid, 'mapping.shmid')
        .skip(7)
        .u64(s.fdOffset, 'mapping.fdOffset')
        .u64(s.shmOffset, 'mapping.shmOffset')
        .u64(s.len, 'mapping.len')
        .u64(s.flags, 'mapping.flags')
        .done();
    }
  }
}
