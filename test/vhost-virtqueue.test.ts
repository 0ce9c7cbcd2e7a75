// Guest memory and split virtqueues against a hostile driver: every bad index,
// length and address is refused without touching memory outside the mapping.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import fc from 'fast-check';
import * as sys from '../src/sys/index.js';
import { GuestMemory, MemoryError } from '../src/vhost/memory.js';
import { MAX_CHAIN_BYTES, MAX_INDIRECT, QueueBroken, SplitVirtqueue, VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE } from '../src/vhost/virtqueue.js';
import { xorshift32 } from '../bench/fuzz-common.js';
import { BIG, Driver, REGIONS, exercise, fuzzOne, makeGuest, newStats, split, type Desc, type Guest, type QueueConfig, type Region } from '../bench/fuzz-virtqueue.js';

const MiB = 1 << 20;

/** A memfd of `size` bytes and a second mapping of it: the "driver's" view of guest memory. */
function guestRam(size = MiB): { fd: number; driver: DataView; bytes: Uint8Array } {
  const fd = sys.memfdCreate('prism-guest');
  fs.ftruncateSync(fd, size);
  const ab = sys.mmap(fd, size);
  return { fd, driver: new DataView(ab), bytes: new Uint8Array(ab) };
}

function dupFd(fd: number): number {
  return fs.openSync(`/proc/self/fd/${fd}`, 'r+');
}

// Queue layout used below (guest-physical): desc 0x1000, avail 0x2000, used 0x3000, data from 0x10000.
const Q = { desc: 0x1000, avail: 0x2000, used: 0x3000 };

function setDesc(d: DataView, table: number, i: number, addr: number, len: number, flags: number, next = 0): void {
  const o = table + 16 * i;
  d.setUint32(o, addr % 0x1_0000_0000, true);
  d.setUint32(o + 4, Math.floor(addr / 0x1_0000_0000), true);
  d.setUint32(o + 8, len, true);
  d.setUint16(o + 12, flags, true);
  d.setUint16(o + 14, next, true);
}

function makeAvail(d: DataView, size: number, heads: number[], startIdx = 0): void {
  heads.forEach((h, i) => d.setUint16(Q.avail + 4 + 2 * ((startIdx + i) % size), h, true));
  d.setUint16(Q.avail + 2, (startIdx + heads.length) & 0xffff, true);
}

function setup(size = 8, opts: { eventIdx?: boolean } = {}): { mem: GuestMemory; d: DataView; bytes: Uint8Array; q: SplitVirtqueue } {
  const ram = guestRam();
  const mem = GuestMemory.map([{ guestPhysAddr: 0n, memorySize: BigInt(MiB), userspaceAddr: 0x7f00_0000_0000n, mmapOffset: 0n, fd: dupFd(ram.fd) }]);
  sys.closeFd(ram.fd);
  return { mem, d: ram.driver, bytes: ram.bytes, q: new SplitVirtqueue(mem, size, Q, opts) };
}

describe('GuestMemory', () => {
  it('translates guest-physical and frontend addresses within regions, and nothing outside', () => {
    const ram = guestRam(2 * MiB);
    const mem = GuestMemory.map([
      { guestPhysAddr: 0n, memorySize: BigInt(MiB), userspaceAddr: 0x1000_0000n, mmapOffset: 0n, fd: dupFd(ram.fd) },
      { guestPhysAddr: 0x1_0000_0000n, memorySize: BigInt(MiB), userspaceAddr: 0x2000_0000n, mmapOffset: BigInt(MiB), fd: dupFd(ram.fd) },
    ]);
    ram.bytes[MiB + 5] = 0x42;
    assert.equal(mem.slice(0x1_0000_0005, 1)?.[0], 0x42, 'second region maps at its mmap offset');
    assert.equal(mem.uvaToGpa(0x2000_0005n, 1), 0x1_0000_0005);
    assert.equal(mem.slice(MiB - 1, 2), null, 'a range crossing the end of a region');
    assert.equal(mem.slice(MiB, 1), null, 'the hole between regions');
    assert.equal(mem.slice(-1, 1), null);
    assert.equal(mem.slice(2 ** 60, 1), null);
    assert.equal(mem.uvaToGpa(0x3000_0000n, 1), null);
    assert.equal(mem.remove(0x1_0000_0000n, BigInt(MiB)), true);
    assert.equal(mem.slice(0x1_0000_0005, 1), null, 'gone after REM_MEM_REG');
    mem.unmap();
    sys.closeFd(ram.fd);
  });

  it('refuses overlapping, empty and wrapping regions, and closes every fd it was given', () => {
    const ram = guestRam();
    const fdsBefore = fs.readdirSync('/proc/self/fd').length;
    const cases: [string, bigint, bigint, bigint][] = [
      ['overlap', 0x800n, 0x1000n, 0x9000_0000n],
      ['empty', 0x10_0000n, 0n, 0x9100_0000n],
      ['wraps', 0xffff_ffff_ffff_f000n, 0x2000n, 0x9200_0000n],
    ];
    for (const [what, gpa, size, uva] of cases) {
      assert.throws(
        () => GuestMemory.map([
          { guestPhysAddr: 0n, memorySize: 0x1000n, userspaceAddr: 0x8000_0000n, mmapOffset: 0n, fd: dupFd(ram.fd) },
          { guestPhysAddr: gpa, memorySize: size, userspaceAddr: uva, mmapOffset: 0n, fd: dupFd(ram.fd) },
          { guestPhysAddr: 0x20_0000n, memorySize: 0x1000n, userspaceAddr: 0x9300_0000n, mmapOffset: 0n, fd: dupFd(ram.fd) },
        ]),
        MemoryError,
        what,
      );
    }
    assert.equal(fs.readdirSync('/proc/self/fd').length, fdsBefore, 'no fd leaked');
    sys.closeFd(ram.fd);
  });
});

describe('SplitVirtqueue', () => {
  it('pops a chain of readable then writable buffers and pushes it back as used', () => {
    const { d, bytes, q, mem } = setup();
    bytes.set([1, 2, 3], 0x10000);
    setDesc(d, Q.desc, 0, 0x10000, 3, VIRTQ_DESC_F_NEXT, 5);
    setDesc(d, Q.desc, 5, 0x11000, 100, VIRTQ_DESC_F_WRITE);
    makeAvail(d, 8, [0]);
    const c = q.pop();
    assert.ok(c);
    assert.deepEqual([...(c.readable[0] ?? [])], [1, 2, 3]);
    assert.equal(c.writableBytes, 100);
    c.writable[0]?.set([9, 9], 0);
    assert.deepEqual([...bytes.subarray(0x11000, 0x11002)], [9, 9], 'writes land in guest memory');
    assert.equal(q.pop(), null);
    q.pushUsed(c.head, 2);
    assert.equal(d.getUint16(Q.used + 2, true), 1, 'used idx');
    assert.deepEqual([d.getUint32(Q.used + 4, true), d.getUint32(Q.used + 8, true)], [0, 2]);
    assert.equal(q.needsNotification(), true);
    mem.unmap();
  });

  it('follows an indirect table', () => {
    const { d, q, mem } = setup();
    setDesc(d, 0x5000, 0, 0x10000, 10, VIRTQ_DESC_F_NEXT, 1);
    setDesc(d, 0x5000, 1, 0x11000, 20, VIRTQ_DESC_F_WRITE);
    setDesc(d, Q.desc, 2, 0x5000, 32, VIRTQ_DESC_F_INDIRECT);
    makeAvail(d, 8, [2]);
    const c = q.pop();
    assert.equal(c?.head, 2);
    assert.deepEqual([c?.readableBytes, c?.writableBytes], [10, 20]);
    mem.unmap();
  });

  const hostile: [string, (d: DataView) => void, RegExp][] = [
    ['a loop', (d) => { setDesc(d, Q.desc, 0, 0x10000, 1, VIRTQ_DESC_F_NEXT, 1); setDesc(d, Q.desc, 1, 0x10000, 1, VIRTQ_DESC_F_NEXT, 0); makeAvail(d, 8, [0]); }, /loops/],
    ['a head outside the queue', (d) => makeAvail(d, 8, [8]), /head index 8/],
    ['a next index outside the table', (d) => { setDesc(d, Q.desc, 0, 0x10000, 1, VIRTQ_DESC_F_NEXT, 9); makeAvail(d, 8, [0]); }, /next index 9/],
    ['a buffer outside guest memory', (d) => { setDesc(d, Q.desc, 0, MiB - 10, 100, 0); makeAvail(d, 8, [0]); }, /outside guest memory/],
    ['an address beyond 2^53', (d) => { setDesc(d, Q.desc, 0, 2 ** 53 + 2 ** 52, 1, 0); makeAvail(d, 8, [0]); }, /beyond 2\^53/],
    ['a length that overflows', (d) => { setDesc(d, Q.desc, 0, 0x10000, 0xffff_ffff, 0); makeAvail(d, 8, [0]); }, /outside guest memory/],
    ['nested indirect tables', (d) => { setDesc(d, 0x5000, 0, 0x6000, 16, VIRTQ_DESC_F_INDIRECT); setDesc(d, Q.desc, 0, 0x5000, 16, VIRTQ_DESC_F_INDIRECT); makeAvail(d, 8, [0]); }, /nested indirect/],
    ['an indirect table of odd length', (d) => { setDesc(d, Q.desc, 0, 0x5000, 20, VIRTQ_DESC_F_INDIRECT); makeAvail(d, 8, [0]); }, /multiple of 16/],
    ['an indirect table longer than MAX_INDIRECT', (d) => { setDesc(d, Q.desc, 0, 0x5000, 16 * (MAX_INDIRECT + 1), VIRTQ_DESC_F_INDIRECT); makeAvail(d, 8, [0]); }, /the limit is 1024/],
    ['a readable buffer after a writable one', (d) => { setDesc(d, Q.desc, 0, 0x10000, 1, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 1); setDesc(d, Q.desc, 1, 0x10000, 1, 0); makeAvail(d, 8, [0]); }, /readable buffer after/],
    ['more available entries than the queue holds', (d) => d.setUint16(Q.avail + 2, 9, true), /claims 9 available/],
  ];
  for (const [what, arrange, why] of hostile) {
    it(`marks the queue broken on ${what}`, () => {
      const { d, q, mem } = setup();
      arrange(d);
      assert.throws(() => q.pop(), (e: unknown) => e instanceof QueueBroken && why.test(e.message));
      assert.match(q.brokenReason ?? '', why);
      assert.throws(() => q.pop(), QueueBroken, 'stays broken');
      mem.unmap();
    });
  }

  it('refuses rings outside memory, unaligned, or of a bad size', () => {
    const { mem } = setup();
    assert.throws(() => new SplitVirtqueue(mem, 6, Q), /power of 2/);
    assert.throws(() => new SplitVirtqueue(mem, 8, { ...Q, desc: 0x1001 }), /aligned/);
    assert.throws(() => new SplitVirtqueue(mem, 8, { ...Q, used: MiB - 8 }), /outside guest memory/);
    mem.unmap();
  });

  it('with EVENT_IDX, notifies only when used_event is crossed and publishes avail_event', () => {
    const { d, q, mem } = setup(8, { eventIdx: true });
    for (let i = 0; i < 4; i++) setDesc(d, Q.desc, i, 0x10000, 1, 0);
    makeAvail(d, 8, [0, 1, 2, 3]);
    d.setUint16(Q.avail + 4 + 2 * 8, 2, true); // used_event = 2: notify once used idx passes 2
    const heads = [q.pop(), q.pop(), q.pop(), q.pop()].map((c) => c?.head ?? -1);
    assert.equal(d.getUint16(Q.used + 4 + 8 * 8, true), 4, 'avail_event = next avail index');
    q.pushUsed(heads[0] ?? 0, 0);
    q.pushUsed(heads[1] ?? 0, 0);
    assert.equal(q.needsNotification(), false, 'used idx 2 has not passed used_event 2');
    q.pushUsed(heads[2] ?? 0, 0);
    assert.equal(q.needsNotification(), true, 'used idx 3 passed it');
    q.pushUsed(heads[3] ?? 0, 0);
    assert.equal(q.needsNotification(), false, 'already notified for this event');
    mem.unmap();
  });

  it('resumes from a base index (SET_VRING_BASE) and reports it back (GET_VRING_BASE)', () => {
    const ram = guestRam();
    const mem = GuestMemory.map([{ guestPhysAddr: 0n, memorySize: BigInt(MiB), userspaceAddr: 0n, mmapOffset: 0n, fd: dupFd(ram.fd) }]);
    const d = ram.driver;
    setDesc(d, Q.desc, 3, 0x10000, 1, 0);
    makeAvail(d, 8, [3], 0xfffe + 1); // avail idx wraps to 0
    const q = new SplitVirtqueue(mem, 8, Q, { base: 0xffff });
    assert.equal(q.pop()?.head, 3);
    assert.equal(q.nextAvail, 0);
    mem.unmap();
    sys.closeFd(ram.fd);
  });
});

// The oracle of bench/fuzz-virtqueue.ts (a reference walker from virtio 1.2 §2.7.5-2.7.7, buffer
// views checked against the region mappings, rings checked in memory), run here briefly: over
// descriptor tables fast-check builds and shrinks, and over the bench's own generator.
describe('SplitVirtqueue against a hostile driver (properties)', () => {
  let g: Guest;
  let drv: Driver;
  before(() => {
    g = makeGuest();
    drv = new Driver(g);
  });
  after(() => g.close());

  // Rings and up to three indirect tables at fixed places in region 0; descriptors, heads and avail idx from fast-check.
  const RING = { desc: 0x1000, avail: 0x2000, used: 0x3000 };
  const tableAt = (k: number): number => 0x8000 + 0x4000 * k;
  const region = fc.nat(REGIONS.length - 1).map((r) => REGIONS[r] as Region);
  const address = fc.oneof(
    fc.tuple(region, fc.boolean(), fc.integer({ min: -16, max: 16 })).map(([r, end, d]) => split(r.gpa + (end ? r.size : 0) + d)),
    fc.tuple(region, fc.nat(0xffff)).map(([r, off]) => split(r.gpa + (off % r.size))),
    fc.record({ lo: fc.nat(0xffff_ffff), hi: fc.constantFrom(0, 1, 0x1f_ffff, 0x20_0000, 0xffff_ffff) }),
  );
  const length = fc.oneof(fc.nat(64), fc.constantFrom(0, 0x1000, 0xffff, BIG, BIG + 1, 0x7fff_ffff, 0xffff_ffff), fc.nat(0xffff_ffff));
  const flags = fc.oneof(
    { weight: 4, arbitrary: fc.constantFrom(0, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE, VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE) },
    { weight: 1, arbitrary: fc.nat(0xffff) },
  );
  const honest = fc.tuple(region, fc.nat(0xffff), fc.nat(64)).map(([r, off, len]) => {
    const o = off % r.size;
    return { ...split(r.gpa + o), len: Math.min(len, r.size - o) };
  });
  const hostile = fc.tuple(address, length).map(([at, len]) => ({ ...at, len }));
  /** A descriptor; `table` makes it refer to indirect table k. */
  const descriptor = fc.record({
    buffer: fc.oneof({ weight: 4, arbitrary: honest }, { weight: 1, arbitrary: hostile }),
    flags,
    next: fc.oneof({ weight: 6, arbitrary: fc.nat(31) }, { weight: 1, arbitrary: fc.constantFrom(32, 33, 0xffff) }),
    table: fc.option(fc.nat(2), { freq: 4 }),
    /** Instead of the table's own length: odd, short, at and past MAX_INDIRECT entries, huge. */
    tableLen: fc.option(fc.constantFrom(0, 8, 20, 24, 16 * MAX_INDIRECT, 16 * (MAX_INDIRECT + 1), 0xffff_fff0), { freq: 5 }),
  });
  type Arb<A> = A extends fc.Arbitrary<infer T> ? T : never;
  const put = (table: number, i: number, d: Arb<typeof descriptor>, tables: Arb<typeof descriptor>[][]): void => {
    const t = d.table === null ? undefined : tables[d.table];
    const raw: Desc = t
      ? { ...split(tableAt(d.table as number)), len: d.tableLen ?? 16 * t.length, flags: d.flags | VIRTQ_DESC_F_INDIRECT, next: d.next }
      : { ...d.buffer, flags: d.flags, next: d.next };
    drv.desc(table, i, raw);
  };
  const input = fc.record({
    sizeLog: fc.nat(5),
    eventIdx: fc.boolean(),
    base: fc.oneof(fc.constant(0), fc.constant(0xfffe), fc.nat(0xffff)),
    descs: fc.array(descriptor, { maxLength: 32 }),
    tables: fc.array(fc.array(descriptor, { minLength: 1, maxLength: 8 }), { minLength: 1, maxLength: 3 }),
    /** Avail ring entries: an index into the table (taken modulo its size), or any u16. */
    heads: fc.array(fc.oneof({ weight: 6, arbitrary: fc.nat(31).map((v) => -1 - v) }, { weight: 1, arbitrary: fc.nat(0xffff) }), { maxLength: 34 }),
    jump: fc.oneof({ weight: 5, arbitrary: fc.constant(0) }, { weight: 1, arbitrary: fc.nat(0xffff) }),
    /** The used ring against the end of region 2: shift 0 fits exactly; 2 drops avail_event, 4 runs over. */
    usedAtEnd: fc.option(fc.constantFrom(0, 2, 4), { freq: 4 }),
    session: fc.nat(0xffff_ffff),
  });

  it('pops exactly the chains a virtio 1.2 reference walker accepts, as views inside one region, and breaks the queue on all others', () => {
    const stats = newStats();
    fc.assert(
      fc.property(input, ({ sizeLog, eventIdx, base, descs, tables, heads, jump, usedAtEnd, session }) => {
        drv.reset();
        const size = 1 << sizeLog;
        const c: QueueConfig = { size, ...RING, eventIdx, base };
        const r2 = REGIONS[2] as Region;
        if (usedAtEnd !== null) c.used = Math.floor((r2.gpa + r2.size - (4 + 8 * size + (eventIdx ? 2 : 0)) + usedAtEnd) / 4) * 4;
        descs.slice(0, size).forEach((d, i) => put(c.desc, i, d, tables));
        tables.forEach((t, k) => t.forEach((d, i) => put(tableAt(k), i, d, tables)));
        heads.slice(0, size).forEach((h, j) => drv.u16(c.avail + 4 + 2 * ((base + j) % size), h < 0 ? (-1 - h) % size : h));
        drv.u16(c.avail + 2, base + heads.length + jump);
        const failure = exercise(g, drv, c, xorshift32(session), stats, () => undefined);
        if (failure !== null) throw new Error(failure);
      }),
      { numRuns: 1500 },
    );
    assert.ok(stats.chains > 300 && stats.broken.size > 5, `the inputs reach both outcomes (${stats.chains} chains, ${stats.broken.size} kinds of broken queue)`);
  });

  it('holds the same oracle over the fuzz bench generator: rings anywhere, indirect tables, a driver acting between pops', () => {
    const stats = newStats();
    fc.assert(
      fc.property(fc.nat(0xffff_ffff), (seed) => {
        const failure = fuzzOne(g, drv, seed, stats);
        if (failure !== null) throw new Error(`${failure}\n(replay: node --import tsx bench/fuzz-virtqueue.ts --seed ${seed} --runs 1)`);
      }),
      { numRuns: 1500 },
    );
    assert.ok(stats.chains > 1000 && stats.refusedQueues > 0, `the inputs reach accepted chains and refused rings (${stats.chains}, ${stats.refusedQueues})`);
  });

  // Found by bench/fuzz-virtqueue.ts: 65 descriptors naming all of a 64 MiB region made a chain of
  // 4.06 GiB that pop() returned (readableBytes past 2^32; a device sizing a copy from it, or
  // reporting a used length, goes wrong).
  for (const via of ['the descriptor table', 'an indirect table']) {
    it(`refuses a chain of more than 2^32 bytes (virtio 1.2 §2.7.5.2) in ${via}, and takes one of exactly 2^32`, () => {
      for (const oneMore of [false, true]) {
        drv.reset();
        const c = { ...RING, size: 128 };
        const table = via === 'an indirect table' ? tableAt(0) : c.desc;
        const n = oneMore ? 65 : 64;
        // Region 0 is 64 MiB (BIG): 64 descriptors naming all of it are 2^32 bytes; the 65th names one byte.
        for (let i = 0; i < n; i++) drv.desc(table, i, { lo: 0, hi: 0, len: i < 64 ? BIG : 1, flags: i < n - 1 ? VIRTQ_DESC_F_NEXT : VIRTQ_DESC_F_WRITE, next: i + 1 });
        if (table !== c.desc) drv.desc(c.desc, 0, { ...split(table), len: 16 * n, flags: VIRTQ_DESC_F_INDIRECT, next: 0 });
        drv.u16(c.avail + 2, 1);
        const q = new SplitVirtqueue(g.mem, c.size, c);
        if (oneMore) {
          assert.throws(() => q.pop(), (e: unknown) => e instanceof QueueBroken && /more than 2\^32 bytes/.test(e.message));
        } else {
          const chain = q.pop();
          assert.equal(BIG * 64, MAX_CHAIN_BYTES);
          assert.deepEqual([chain?.readable.length, chain?.readableBytes, chain?.writable.length], [63, 63 * BIG, 1]);
          assert.equal((chain?.readableBytes ?? 0) + (chain?.writableBytes ?? 0), MAX_CHAIN_BYTES);
        }
      }
    });
  }
});
