// Guest memory from a hostile frontend: region files too small for the region
// (touching the missing pages would be SIGBUS for the whole process), fds that
// are not files, and the seal check that tells sealed memfds from ones that
// could still be truncated.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as sys from '../src/sys/index.js';
import { GuestMemory, MemoryError } from '../src/vhost/memory.js';

const PAGE = 4096;

function memfd(size: number, seal = false): number {
  const fd = sys.memfdCreate('prism-guest', { allowSealing: seal });
  fs.ftruncateSync(fd, size);
  if (seal) sys.addSeals(fd, sys.constants.F_SEAL_SHRINK | sys.constants.F_SEAL_GROW);
  return fd;
}

function isOpen(fd: number): boolean {
  try {
    fs.fstatSync(fd);
    return true;
  } catch {
    return false;
  }
}

const region = (fd: number, memorySize: number, mmapOffset = 0) => ({
  guestPhysAddr: 0n,
  memorySize: BigInt(memorySize),
  userspaceAddr: 0x7f00_0000_0000n,
  mmapOffset: BigInt(mmapOffset),
  fd,
});

describe('GuestMemory against a hostile frontend', () => {
  it('refuses a region larger than its file, or reaching past it through the offset, and closes the fd', () => {
    const small = memfd(PAGE);
    assert.throws(() => GuestMemory.map([region(small, 16 * PAGE)]), (e: unknown) => e instanceof MemoryError && /needs 65536 bytes of its file, which has 4096/.test(e.message));
    assert.equal(isOpen(small), false, 'the fd was closed');
    const exact = memfd(2 * PAGE);
    assert.throws(() => GuestMemory.map([region(exact, 2 * PAGE, PAGE)]), MemoryError);
    assert.equal(isOpen(exact), false);
  });

  it('refuses fds that are not files: /dev/zero (mmap would succeed) and a directory', () => {
    for (const p of ['/dev/zero', '/tmp']) {
      const fd = fs.openSync(p, 'r');
      assert.throws(() => GuestMemory.map([region(fd, PAGE)]), /not a regular file or memfd/, p);
      assert.equal(isOpen(fd), false, `${p}: the fd was closed`);
    }
  });

  it('maps a region that fits its file exactly and counts regions not sealed against shrinking', () => {
    const sealed = memfd(4 * PAGE, true);
    const plain = memfd(4 * PAGE);
    const mem = GuestMemory.map([region(sealed, 4 * PAGE), { ...region(plain, 2 * PAGE, 2 * PAGE), guestPhysAddr: 0x10000n, userspaceAddr: 0x7f10_0000_0000n }]);
    try {
      assert.equal(mem.regionCount, 2);
      assert.equal(mem.unsealedRegionCount, 1);
      assert.ok(mem.slice(0x10000 + 2 * PAGE - 1, 1), 'the last byte of the offset region is mapped');
      assert.equal(mem.slice(0x10000 + 2 * PAGE - 1, 2), null);
    } finally {
      mem.unmap();
    }
    assert.equal(isOpen(sealed) || isOpen(plain), false, 'unmap closed both fds');
  });
});
