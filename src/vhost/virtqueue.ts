// A split virtqueue, device side (virtio 1.2 §2.7): pop descriptor chains the
// driver made available, push used elements back, decide whether to notify.
// The driver (a guest) is hostile: every index, length and address it wrote
// is checked; a chain that loops, is too long, nests indirect tables or points
// outside guest memory marks the queue broken with the reason, and nothing is
// read or written outside mapped memory.
//
// Memory ordering: guest memory is a plain (non-shared) ArrayBuffer over a
// MAP_SHARED mapping. On x86-64 (TSO) stores become visible in program order,
// so writing a used element before the used index is enough. Other
// architectures would need explicit barriers here.
import type { GuestMemory } from './memory.js';

export const VIRTQ_DESC_F_NEXT = 1;
export const VIRTQ_DESC_F_WRITE = 2;
export const VIRTQ_DESC_F_INDIRECT = 4;
export const VIRTQ_AVAIL_F_NO_INTERRUPT = 1;
export const VIRTQ_USED_F_NO_NOTIFY = 1;
export const MAX_QUEUE_SIZE = 32768;
/** Longest indirect table we follow (entries); Linux never makes one longer than the queue. */
export const MAX_INDIRECT = 1024;
/** Most bytes one chain may describe (virtio 1.2 §2.7.5.2: "longer than 2^32 bytes in total" is forbidden). */
export const MAX_CHAIN_BYTES = 2 ** 32;
const DESC_SIZE = 16;
/** How far ahead avail_event is put when kicks are not wanted (see publishAvailEvent). */
export const AVAIL_EVENT_AWAY = 0x7fff;

export interface DescriptorChain {
  /** Head index: what pushUsed() gives back to the driver. */
  head: number;
  /** Device-readable buffers, in order. */
  readable: Uint8Array[];
  /** Device-writable buffers, in order (they all come after the readable ones). */
  writable: Uint8Array[];
  readableBytes: number;
  writableBytes: number;
}

export interface QueueAddresses {
  /** Guest-physical addresses (translate SET_VRING_ADDR's frontend addresses first). */
  desc: number;
  avail: number;
  used: number;
}

export class QueueBroken extends Error {
  override readonly name = 'QueueBroken';
  readonly code = 'ERR_PRISM_VIRTQUEUE';
}

export class SplitVirtqueue {
  private lastAvail: number;
  private kicksWanted = true;
  private usedIdx: number;
  private broken: string | null = null;
  private readonly descTable: { view: DataView; offset: number };
  private readonly avail: { view: DataView; offset: number };
  private readonly used: { view: DataView; offset: number };
  /** used_event / avail_event with VIRTIO_F_EVENT_IDX. */
  readonly eventIdx: boolean;
  /** Used index at the last notification decision (for EVENT_IDX). */
  private signalledUsed: number;

  /**
   * @param size queue size (power of 2, 1..32768)
   * @param base the avail index to start from (SET_VRING_BASE)
   */
  constructor(
    private readonly mem: GuestMemory,
    readonly size: number,
    addr: QueueAddresses,
    opts: { eventIdx?: boolean; base?: number } = {},
  ) {
    if (!Number.isInteger(size) || size < 1 || size > MAX_QUEUE_SIZE || (size & (size - 1)) !== 0) {
      throw new QueueBroken(`queue size ${size} is not a power of 2 up to ${MAX_QUEUE_SIZE}`);
    }
    this.eventIdx = opts.eventIdx ?? false;
    const extra = this.eventIdx ? 2 : 0;
    const need = (what: string, gpa: number, len: number, align: number): { view: DataView; offset: number } => {
      if (gpa % align !== 0) throw new QueueBroken(`${what} at 0x${gpa.toString(16)} is not ${align}-byte aligned`);
      const v = mem.dataView(gpa, len);
      if (!v) throw new QueueBroken(`${what} (0x${gpa.toString(16)}, ${len} bytes) is outside guest memory`);
      return v;
    };
    this.descTable = need('descriptor table', addr.desc, DESC_SIZE * size, 16);
    this.avail = need('avail ring', addr.avail, 4 + 2 * size + extra, 2);
    this.used = need('used ring', addr.used, 4 + 8 * size + extra, 4);
    this.lastAvail = (opts.base ?? 0) & 0xffff;
    this.usedIdx = this.lastAvail;
    this.signalledUsed = this.usedIdx;
  }

  /** Why the queue stopped, or null while it works. */
  get brokenReason(): string | null {
    return this.broken;
  }

  /** The avail index to report in GET_VRING_BASE. */
  get nextAvail(): number {
    return this.lastAvail;
  }

  private fail(why: string): never {
    this.broken = why;
    throw new QueueBroken(why);
  }

  private availIdx(): number {
    return this.avail.view.getUint16(this.avail.offset + 2, true);
  }

  /** Number of chains the driver has made available and we have not taken. */
  pending(): number {
    if (this.broken) return 0;
    const n = (this.availIdx() - this.lastAvail) & 0xffff;
    if (n > this.size) this.fail(`driver claims ${n} available entries in a queue of ${this.size}`);
    return n;
  }

  /** Takes the next available chain, or null when there is none. Throws QueueBroken on a bad chain. */
  pop(): DescriptorChain | null {
    if (this.broken) throw new QueueBroken(this.broken);
    if (this.pending() === 0) return null;
    const slot = this.lastAvail % this.size;
    const head = this.avail.view.getUint16(this.avail.offset + 4 + 2 * slot, true);
    const chain = this.walk(head);
    this.lastAvail = (this.lastAvail + 1) & 0xffff;
    if (this.eventIdx) this.publishAvailEvent();
    return chain;
  }

  /**
   * Gives back the last `n` chains taken with pop() and not yet pushed as used
   * (e.g. a packet that turned out not to fit): the next pop() returns them again.
   */
  unpop(n: number): void {
    if (!Number.isInteger(n) || n < 0 || n > this.size) throw new RangeError(`cannot give back ${n} chains`);
    this.lastAvail = (this.lastAvail - n) & 0xffff;
  }

  private walk(head: number): DescriptorChain {
    if (head >= this.size) this.fail(`head index ${head} is outside a queue of ${this.size}`);
    const chain: DescriptorChain = { head, readable: [], writable: [], readableBytes: 0, writableBytes: 0 };
    let table = this.descTable;
    let tableSize = this.size;
    let index = head;
    let inIndirect = false;
    // A chain visits each descriptor at most once; more steps than descriptors means a loop.
    for (let steps = 0; ; steps++) {
      if (steps >= tableSize) this.fail('descriptor chain loops or is longer than its table');
      const off = table.offset + DESC_SIZE * index;
      const lo = table.view.getUint32(off, true);
      const hi = table.view.getUint32(off + 4, true);
      const len = table.view.getUint32(off + 8, true);
      const flags = table.view.getUint16(off + 12, true);
      const next = table.view.getUint16(off + 14, true);
      if (hi >= 0x20_0000) this.fail('descriptor address beyond 2^53');
      const gpa = hi * 0x1_0000_0000 + lo;
      if (flags & VIRTQ_DESC_F_INDIRECT) {
        if (inIndirect) this.fail('nested indirect descriptor table');
        if (flags & VIRTQ_DESC_F_NEXT) this.fail('indirect descriptor with NEXT set');
        if (len === 0 || len % DESC_SIZE !== 0) this.fail(`indirect table length ${len} is not a multiple of ${DESC_SIZE}`);
        if (len / DESC_SIZE > MAX_INDIRECT) this.fail(`indirect table of ${len / DESC_SIZE} entries; the limit is ${MAX_INDIRECT}`);
        if (gpa % 8 !== 0) this.fail('indirect table is not aligned');
        const t = this.mem.dataView(gpa, len);
        if (!t) this.fail(`indirect table (0x${gpa.toString(16)}, ${len} bytes) is outside guest memory`);
        table = t;
        tableSize = len / DESC_SIZE;
        index = 0;
        inIndirect = true;
        steps = -1;
        continue;
      }
      const bytes = len === 0 ? new Uint8Array(0) : this.mem.slice(gpa, len);
      if (!bytes) this.fail(`buffer (0x${gpa.toString(16)}, ${len} bytes) is outside guest memory`);
      // Descriptors may name the same memory again and again: without this a chain could claim
      // terabytes, and devices size copies and used lengths (u32) from these totals.
      if (chain.readableBytes + chain.writableBytes + len > MAX_CHAIN_BYTES) this.fail('descriptor chain of more than 2^32 bytes');
      if (flags & VIRTQ_DESC_F_WRITE) {
        chain.writable.push(bytes);
        chain.writableBytes += len;
      } else {
        if (chain.writable.length > 0) this.fail('a device-readable buffer after a device-writable one');
        chain.readable.push(bytes);
        chain.readableBytes += len;
      }
      if (!(flags & VIRTQ_DESC_F_NEXT)) return chain;
      if (next >= tableSize) this.fail(`next index ${next} is outside its table of ${tableSize}`);
      index = next;
    }
  }

  /** Returns a chain to the driver with `written` bytes written into its writable buffers. */
  pushUsed(head: number, written: number): void {
    if (this.broken) throw new QueueBroken(this.broken);
    const slot = this.usedIdx % this.size;
    const off = this.used.offset + 4 + 8 * slot;
    this.used.view.setUint32(off, head, true);
    this.used.view.setUint32(off + 4, written, true);
    this.usedIdx = (this.usedIdx + 1) & 0xffff;
    this.used.view.setUint16(this.used.offset + 2, this.usedIdx, true);
  }

  /** Should the driver be notified (call eventfd) about what was pushed since the last decision? */
  needsNotification(): boolean {
    const old = this.signalledUsed;
    const now = this.usedIdx;
    this.signalledUsed = now;
    if (this.eventIdx) {
      const usedEvent = this.avail.view.getUint16(this.avail.offset + 4 + 2 * this.size, true);
      // vring_need_event (virtio 1.2 §2.7.10): did we cross used_event since the last notification?
      return ((now - usedEvent - 1) & 0xffff) < ((now - old) & 0xffff);
    }
    return (this.avail.view.getUint16(this.avail.offset, true) & VIRTQ_AVAIL_F_NO_INTERRUPT) === 0;
  }

  /**
   * avail_event (virtio 1.2 §2.7.10): the avail index whose publication should kick us. Wanting
   * kicks, that is the next one; not wanting them, half the index space ahead, which a driver
   * cannot reach before our next pop moves it on (it never has more than the queue size, at most
   * 32768, outstanding).
   */
  private publishAvailEvent(): void {
    const at = this.kicksWanted ? this.lastAvail : (this.lastAvail + AVAIL_EVENT_AWAY) & 0xffff;
    this.used.view.setUint16(this.used.offset + 4 + 8 * this.size, at, true);
  }

  /**
   * Asks the driver not to kick us (while we are polling anyway, or on a receive queue whose new
   * buffers we only look for when a frame arrives), or to kick again.
   */
  setKicksWanted(wanted: boolean): void {
    this.kicksWanted = wanted;
    if (this.eventIdx) {
      this.publishAvailEvent();
      return;
    }
    const flags = this.used.view.getUint16(this.used.offset, true);
    this.used.view.setUint16(this.used.offset, wanted ? flags & ~VIRTQ_USED_F_NO_NOTIFY : flags | VIRTQ_USED_F_NO_NOTIFY, true);
  }
}

/** Copies `src` into the writable buffers of `chain`, starting `at` bytes in; returns the bytes written. */
export function scatter(chain: DescriptorChain, src: Uint8Array, at: number): number {
  let written = 0;
  let pos = at;
  for (const b of chain.writable) {
    if (written === src.length) break;
    if (pos >= b.length) {
      pos -= b.length;
      continue;
    }
    const n = Math.min(b.length - pos, src.length - written);
    b.set(src.subarray(written, written + n), pos);
    written += n;
    pos = 0;
  }
  return written;
}
