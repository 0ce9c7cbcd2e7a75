// Shared memory and event notification: memfd_create, mmap into an
// ArrayBuffer, eventfd with a readiness callback.
import { C, native, type NativePoller } from './binding.js';
import { SysError, sync } from './errors.js';
import * as v from './validate.js';

/** memfd_create(2); the fd is close-on-exec. */
export function memfdCreate(name: string, opts: { allowSealing?: boolean } = {}): number {
  const n = v.pathBytes(name, 'name');
  if (n.length > 249) throw new RangeError(`memfd name must be at most 249 bytes, got ${n.length}`);
  return sync(() => native.memfdCreate(n, opts.allowSealing ? C.MFD_ALLOW_SEALING : 0), name);
}

/** Seals (F_SEAL_*) of a memfd; null for a file that cannot carry seals (EINVAL). */
export function getSeals(fd: number): number | null {
  const f = v.fd(fd);
  try {
    return sync(() => native.getSeals(f));
  } catch (e) {
    if (e instanceof SysError && e.code === 'EINVAL') return null;
    throw e;
  }
}

/** Adds seals (F_SEAL_* bits) to a memfd created with allowSealing. */
export function addSeals(fd: number, seals: number): void {
  const f = v.fd(fd);
  const s = v.int(seals, 'seals', 0, 0xffff);
  sync(() => native.addSeals(f, s));
}

export interface MmapOptions {
  /** Map writable as well as readable (default true). */
  writable?: boolean;
  /** MAP_SHARED (default) or MAP_PRIVATE. */
  shared?: boolean;
  /** File offset, a multiple of the page size. */
  offset?: number;
}

const MAX_MAP = 2 ** 46; // far beyond any guest memory region we map; keeps sizes sane

/**
 * Maps `length` bytes of `fd` into an ArrayBuffer. The mapping lives until
 * munmap(ab) or until the ArrayBuffer is garbage collected.
 */
export function mmap(fd: number, length: number, opts: MmapOptions = {}): ArrayBuffer {
  const f = v.fd(fd);
  const len = v.int(length, 'length', 1, MAX_MAP);
  const offset = v.int(opts.offset ?? 0, 'offset', 0, Number.MAX_SAFE_INTEGER);
  if (offset % 4096 !== 0) throw new RangeError(`offset must be a multiple of the page size (4096), got ${offset}`);
  const prot = C.PROT_READ | (opts.writable === false ? 0 : C.PROT_WRITE);
  const flags = opts.shared === false ? C.MAP_PRIVATE : C.MAP_SHARED;
  return sync(() => native.mmap(f, len, prot, flags, offset));
}

/**
 * Unmaps now. The ArrayBuffer is detached first (byteLength 0), so no view can
 * reach the pages afterwards. Calling it twice, or on a buffer mmap() did not
 * return, throws EINVAL.
 */
export function munmap(ab: ArrayBuffer): void {
  if (!(ab instanceof ArrayBuffer)) throw new TypeError(`munmap needs the ArrayBuffer mmap() returned, got ${v.describe(ab)}`);
  sync(() => native.munmap(ab));
}

/**
 * An eventfd(2), non-blocking, with an optional readiness callback (called on
 * the event loop whenever the counter is non-zero).
 */
export class EventFd {
  readonly fd: number;
  private poller: NativePoller | null = null;
  private closed = false;

  constructor(initial = 0, opts: { semaphore?: boolean; adopt?: number } = {}) {
    if (opts.adopt !== undefined) {
      const fd = v.fd(opts.adopt, 'fd');
      sync(() => native.setNonblock(fd), `fd:${fd}`);
      this.fd = fd;
      return;
    }
    this.fd = sync(() => native.eventfd(v.u32(initial, 'initial'), opts.semaphore ? C.EFD_SEMAPHORE : 0));
  }

  /** Wraps an eventfd received from a peer (a VMM's kick or call fd); takes ownership of it. */
  static adopt(fd: number): EventFd {
    return new EventFd(0, { adopt: fd });
  }

  /** Adds `n` (default 1) to the counter; false if it would overflow. */
  write(n: bigint | number = 1n): boolean {
    const val = v.bigU64(n, 'n');
    if (val === 0n || val === 0xffff_ffff_ffff_ffffn) throw new RangeError('eventfd increment must be 1..2^64-2');
    return sync(() => native.eventfdWrite(this.fd, val));
  }

  /** Reads and resets the counter (or decrements by one in semaphore mode); null when zero. */
  read(): bigint | null {
    return sync(() => native.eventfdRead(this.fd));
  }

  /** Calls `cb` with the counter's value each time it becomes readable; null stops. */
  onReadable(cb: ((value: bigint) => void) | null): void {
    if (this.closed) throw new Error('EventFd is closed');
    if (cb === null) {
      this.poller?.stop();
      return;
    }
    this.poller ??= sync(() => new native.Poller(this.fd, () => {
      const value = this.read();
      if (value !== null) this.listener?.(value);
    }));
    this.listener = cb;
    this.poller.start(C.UV_READABLE);
  }
  private listener: ((value: bigint) => void) | null = null;

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.poller?.close();
    native.close(this.fd);
  }
}
