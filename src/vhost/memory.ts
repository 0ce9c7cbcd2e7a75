// Guest memory as the frontend shares it (vhost-user.rst, SET_MEM_TABLE /
// ADD_MEM_REG): regions of a memfd mapped into this process, addressed by
// guest-physical address (descriptors) or by the frontend's own virtual
// address (SET_VRING_ADDR). Every access is bounds-checked; an address the
// guest made up yields null, never a read or write outside a mapping.
import * as fs from 'node:fs';
import * as sys from '../sys/index.js';

/** Largest address we accept: addresses are kept as JS numbers, exact below 2^53. */
export const MAX_ADDRESS = Number.MAX_SAFE_INTEGER;
/** The most regions one memory table may have (VHOST_USER_MAX_RAM_SLOTS in QEMU is 512). */
export const MAX_REGIONS = 512;

export interface RegionSpec {
  guestPhysAddr: bigint;
  memorySize: bigint;
  userspaceAddr: bigint;
  mmapOffset: bigint;
  /** The fd to map; GuestMemory takes ownership and closes it on unmap. */
  fd: number;
}

export class MemoryError extends Error {
  override readonly name = 'MemoryError';
  readonly code = 'ERR_PRISM_GUEST_MEMORY';
}

interface Region {
  gpa: number;
  uva: number;
  size: number;
  /** View of exactly this region's bytes. */
  bytes: Uint8Array;
  view: DataView;
  mapping: ArrayBuffer;
  fd: number;
  /** Its memfd is sealed against shrinking. */
  sealed: boolean;
}

const PAGE = 4096;

function num(v: bigint, what: string): number {
  if (v < 0n || v > BigInt(MAX_ADDRESS)) throw new MemoryError(`${what} ${v} is beyond 2^53`);
  return Number(v);
}

export class GuestMemory {
  private regions: Region[] = [];

  /** Checks and maps a memory table. On any error nothing stays mapped and every fd is closed. */
  static map(specs: RegionSpec[]): GuestMemory {
    if (specs.length > MAX_REGIONS) {
      for (const s of specs) closeQuietly(s.fd);
      throw new MemoryError(`${specs.length} regions; the limit is ${MAX_REGIONS}`);
    }
    const m = new GuestMemory();
    let next = 0;
    try {
      for (; next < specs.length; next++) m.add(specs[next] as RegionSpec);
      return m;
    } catch (e) {
      // add() closed the fd it failed on; unmap() closes the mapped ones; close the rest.
      m.unmap();
      for (const s of specs.slice(next + 1)) closeQuietly(s.fd);
      throw e;
    }
  }

  /** Adds one region (ADD_MEM_REG); it must not overlap another in either address space. */
  add(s: RegionSpec): void {
    let ok = false;
    try {
      const size = num(s.memorySize, 'region size');
      const gpa = num(s.guestPhysAddr, 'guest physical address');
      const uva = num(s.userspaceAddr, 'frontend address');
      const offset = num(s.mmapOffset, 'mmap offset');
      if (size === 0) throw new MemoryError('a region of size 0');
      if (gpa + size > MAX_ADDRESS || uva + size > MAX_ADDRESS || offset + size > MAX_ADDRESS) throw new MemoryError('a region that wraps around');
      for (const r of this.regions) {
        if (gpa < r.gpa + r.size && r.gpa < gpa + size) throw new MemoryError(`region at gpa 0x${gpa.toString(16)} overlaps another`);
        if (uva < r.uva + r.size && r.uva < uva + size) throw new MemoryError(`region at frontend address 0x${uva.toString(16)} overlaps another`);
      }
      // The file must hold the whole region: touching a mapped page past its end is SIGBUS, which
      // would kill the process, not just this connection. (fstat of a socket, pipe or device gives
      // no size to trust, so those are refused too.)
      const st = fs.fstatSync(s.fd);
      if (!st.isFile()) throw new MemoryError('the region\'s fd is not a regular file or memfd');
      if (offset + size > st.size) throw new MemoryError(`the region needs ${offset + size} bytes of its file, which has ${st.size}`);
      // A memfd sealed against shrinking cannot be truncated under us later (QEMU seals its
      // memory-backend-memfd by default). Unsealed memory is accepted, and counted, since DPDK and
      // file-backed guest RAM are not sealed; the backend warns about it.
      const seals = sys.getSeals(s.fd);
      const sealed = seals !== null && (seals & sys.constants.F_SEAL_SHRINK) !== 0;
      // mmap offsets must be page aligned: map from the page below and view from there.
      const base = offset - (offset % PAGE);
      const mapping = sys.mmap(s.fd, offset - base + size, { offset: base });
      const bytes = new Uint8Array(mapping, offset - base, size);
      this.regions.push({ gpa, uva, size, bytes, view: new DataView(mapping, offset - base, size), mapping, fd: s.fd, sealed });
      this.regions.sort((a, b) => a.gpa - b.gpa);
      ok = true;
    } finally {
      if (!ok && !this.regions.some((r) => r.fd === s.fd)) closeQuietly(s.fd);
    }
  }

  /** Removes the region matching REM_MEM_REG's description. False if none matches. */
  remove(gpa: bigint, size: bigint): boolean {
    const i = this.regions.findIndex((r) => BigInt(r.gpa) === gpa && BigInt(r.size) === size);
    const r = this.regions[i];
    if (!r) return false;
    this.regions.splice(i, 1);
    release(r);
    return true;
  }

  get regionCount(): number {
    return this.regions.length;
  }

  /** Regions whose file could still be truncated under the mapping (no F_SEAL_SHRINK). */
  get unsealedRegionCount(): number {
    return this.regions.filter((r) => !r.sealed).length;
  }

  private findGpa(gpa: number, len: number): Region | null {
    if (!Number.isSafeInteger(gpa) || gpa < 0 || len < 0) return null;
    for (const r of this.regions) {
      if (gpa >= r.gpa && gpa - r.gpa + len <= r.size) return r;
    }
    return null;
  }

  /** A view of guest memory [gpa, gpa+len), or null if it is not inside one region. */
  slice(gpa: number, len: number): Uint8Array | null {
    const r = this.findGpa(gpa, len);
    return r ? r.bytes.subarray(gpa - r.gpa, gpa - r.gpa + len) : null;
  }

  /** A DataView and offset for [gpa, gpa+len), for typed field access; null if outside. */
  dataView(gpa: number, len: number): { view: DataView; offset: number } | null {
    const r = this.findGpa(gpa, len);
    return r ? { view: r.view, offset: gpa - r.gpa } : null;
  }

  /** Guest-physical address of a frontend virtual address range, or null if not inside one region. */
  uvaToGpa(uva: bigint, len: number): number | null {
    if (uva < 0n || uva > BigInt(MAX_ADDRESS)) return null;
    const u = Number(uva);
    for (const r of this.regions) {
      if (u >= r.uva && u - r.uva + len <= r.size) return r.gpa + (u - r.uva);
    }
    return null;
  }

  /** Unmaps every region and closes their fds. */
  unmap(): void {
    for (const r of this.regions) release(r);
    this.regions = [];
  }
}

function release(r: Region): void {
  try {
    sys.munmap(r.mapping);
  } catch {
    // already unmapped
  }
  closeQuietly(r.fd);
}

function closeQuietly(fd: number): void {
  try {
    sys.closeFd(fd);
  } catch {
    // already closed
  }
}
