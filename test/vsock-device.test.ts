// The vsock connection state machine (pure) and the vhost-user-vsock device driven by a scripted
// frontend (test/helpers/vhost-frontend.ts): this file plays the guest driver, writing packets
// into the transmit ring and reading what the device puts into receive buffers laid out as Linux
// 6.1 posts them (a 44-byte header buffer and a 4 KiB data buffer per chain); host streams are
// socketpairs.
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import type { Duplex } from 'node:stream';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { ProtocolFeature, featureMask } from '../src/codecs/vhost-user/index.js';
import {
  CONFIG_SIZE, EVENT_SIZE, EventId, HEADER_SIZE, Op, Queue, ShutdownFlag, SocketType, decodeHeader, encodeHeader, type VsockHeader,
} from '../src/codecs/vsock/index.js';
import * as sys from '../src/sys/index.js';
import { VhostUserBackend } from '../src/vhost/backend.js';
import { VsockConnection, type HostAction, type OutgoingPacket } from '../src/vsock/connection.js';
import { GuestRefusedError, VsockDevice, type VsockDeviceOptions, type VsockEndpoint } from '../src/vsock/device.js';
import { VsockServer, type VsockServerOptions } from '../src/vsock/server.js';
import { Frontend, MiB, UVA, bringUp, f, ringAt, shutDown, type Guest } from './helpers/vhost-frontend.js';

const GUEST = 3;
const HOST = 2;

function hdr(over: Partial<VsockHeader>): VsockHeader {
  return { srcCid: GUEST, dstCid: HOST, srcPort: 1024, dstPort: 5000, len: 0, type: SocketType.STREAM, op: Op.RW, flags: 0, bufAlloc: 65536, fwdCnt: 0, ...over };
}

// --- the state machine ------------------------------------------------------------------------------

/** A guest-initiated connection, established (RESPONSE taken). */
function established(opts: { bufAlloc?: number; guestBuf?: number; hostQueueLimit?: number } = {}): VsockConnection {
  const c = VsockConnection.fromGuestRequest(hdr({ op: Op.REQUEST, bufAlloc: opts.guestBuf ?? 65536 }), {
    bufAlloc: opts.bufAlloc ?? 8192, hostQueueLimit: opts.hostQueueLimit ?? 65536,
  });
  c.hostConnected();
  const r = c.nextPacket(4096);
  assert.equal(r?.header.op, Op.RESPONSE);
  return c;
}

function fromGuest(c: VsockConnection, over: Partial<VsockHeader>, payload: Uint8Array = new Uint8Array(0)): HostAction[] {
  return c.fromGuest(hdr({ ...over, len: payload.length }), payload);
}

function drain(c: VsockConnection, max = 4096): OutgoingPacket[] {
  const out: OutgoingPacket[] = [];
  for (let p = c.nextPacket(max); p; p = c.nextPacket(max)) out.push({ header: p.header, payload: Buffer.from(p.payload) });
  return out;
}

describe('vsock connection state machine', () => {
  it('answers a guest REQUEST with RESPONSE only once the host side is connected, advertising our buffer', () => {
    const c = VsockConnection.fromGuestRequest(hdr({ op: Op.REQUEST, srcPort: 1111, dstPort: 5000 }), { bufAlloc: 8192 });
    assert.equal(c.state, 'connecting-host');
    assert.equal(c.hasPacket(), false);
    c.hostConnected();
    const [p] = drain(c);
    assert.deepEqual(p?.header, { srcCid: HOST, srcPort: 5000, dstCid: GUEST, dstPort: 1111, len: 0, type: 1, op: Op.RESPONSE, flags: 0, bufAlloc: 8192, fwdCnt: 0 });
    assert.equal(c.state, 'established');
  });

  it('forwards guest data to the host and resets a guest that sends beyond its credit', () => {
    const c = established({ bufAlloc: 8192 });
    assert.deepEqual(fromGuest(c, {}, Buffer.alloc(8192, 1)).map((a) => a.kind), ['write'], 'exactly buf_alloc is allowed');
    // Nothing forwarded yet: one more byte exceeds the credit.
    const actions = fromGuest(c, {}, Buffer.alloc(1));
    assert.deepEqual(actions, [{ kind: 'close', graceful: false, reason: 'the guest sent 1 bytes with 0 bytes of credit' }]);
    assert.equal(c.closeReason?.reason, 'violation');
    const [rst] = drain(c);
    assert.equal(rst?.header.op, Op.RST);
    assert.equal(c.finished, true);
    assert.deepEqual(fromGuest(c, {}, Buffer.alloc(1)), [], 'a closed connection ignores the guest');
  });

  it('lets the guest send more as the host takes data, and tells it with CREDIT_UPDATE', () => {
    const c = established({ bufAlloc: 8192 });
    fromGuest(c, {}, Buffer.alloc(3000));
    c.hostWritten(3000);
    assert.equal(c.hasPacket(), false, 'the guest still sees 5192 free of 8192: no update yet');
    fromGuest(c, {}, Buffer.alloc(5000));
    c.hostWritten(5000);
    const [u] = drain(c);
    assert.equal(u?.header.op, Op.CREDIT_UPDATE);
    assert.equal(u?.header.fwdCnt, 8000);
    // The guest may now fill the whole buffer again.
    assert.deepEqual(fromGuest(c, { fwdCnt: 0 }, Buffer.alloc(8192)).map((a) => a.kind), ['write']);
  });

  it('answers CREDIT_REQUEST with CREDIT_UPDATE', () => {
    const c = established();
    fromGuest(c, { op: Op.CREDIT_REQUEST });
    const [u] = drain(c);
    assert.equal(u?.header.op, Op.CREDIT_UPDATE);
    assert.equal(drain(c).length, 0);
  });

  it('never sends the guest more than its credit, asks for credit once when it runs out, resumes on update', () => {
    const c = established({ guestBuf: 10_000 });
    c.hostData(Buffer.alloc(25_000, 7));
    const first = drain(c, 4096);
    const sent = first.filter((p) => p.header.op === Op.RW).reduce((n, p) => n + p.payload.length, 0);
    assert.equal(sent, 10_000, 'exactly the guest\'s buffer');
    assert.ok(first.every((p) => p.payload.length <= 4096), 'no packet beyond the receive buffer');
    assert.equal(first.at(-1)?.header.op, Op.CREDIT_REQUEST, 'then one CREDIT_REQUEST');
    assert.equal(drain(c).length, 0, 'and nothing more until the guest answers');
    fromGuest(c, { op: Op.CREDIT_UPDATE, bufAlloc: 10_000, fwdCnt: 6000 });
    assert.equal(drain(c).reduce((n, p) => n + p.payload.length, 0), 6000);
    assert.equal(c.counters.creditStalls, 2);
    assert.equal(c.counters.creditUpdatesFromGuest, 1, 'the guest\'s CREDIT_UPDATE is counted');
    assert.equal(c.guestBufAlloc, 10_000);
  });

  it('property: whatever the guest does with its buffer and reads, RW stays within credit and in order', () => {
    type Step = { kind: 'host'; n: number } | { kind: 'read'; n: number } | { kind: 'resize'; buf: number } | { kind: 'pull'; max: number };
    const step = fc.oneof(
      fc.record({ kind: fc.constant('host' as const), n: fc.integer({ min: 1, max: 20_000 }) }),
      fc.record({ kind: fc.constant('read' as const), n: fc.integer({ min: 0, max: 20_000 }) }),
      fc.record({ kind: fc.constant('resize' as const), buf: fc.integer({ min: 0, max: 70_000 }) }),
      fc.record({ kind: fc.constant('pull' as const), max: fc.integer({ min: 0, max: 70_000 }) }),
    );
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 70_000 }), fc.array(step, { maxLength: 60 }), (buf0, steps: Step[]) => {
        const c = established({ guestBuf: buf0, hostQueueLimit: 1 << 30 });
        let guestBuf = buf0;
        let guestFwd = 0; // what the guest has read (and told us)
        let txTotal = 0;
        let hostTotal = 0;
        let seq = 0;
        for (const s of steps) {
          if (s.kind === 'host') {
            const b = Buffer.alloc(s.n);
            for (let i = 0; i < s.n; i++) b[i] = (hostTotal + i) & 0xff;
            c.hostData(b);
            hostTotal += s.n;
          } else if (s.kind === 'read') {
            guestFwd = Math.min(txTotal, guestFwd + s.n);
            fromGuest(c, { op: Op.CREDIT_UPDATE, bufAlloc: guestBuf, fwdCnt: guestFwd >>> 0 });
          } else if (s.kind === 'resize') {
            guestBuf = s.buf;
            fromGuest(c, { op: Op.CREDIT_UPDATE, bufAlloc: guestBuf, fwdCnt: guestFwd >>> 0 });
          } else {
            for (const p of drain(c, s.max)) {
              if (p.header.op !== Op.RW) continue;
              assert.ok(p.payload.length > 0 && p.payload.length <= s.max);
              txTotal += p.payload.length;
              assert.ok(txTotal - guestFwd <= guestBuf, `in flight ${txTotal - guestFwd} > buf_alloc ${guestBuf}`);
              for (const byte of p.payload) assert.equal(byte, seq++ & 0xff, 'bytes arrive in order');
            }
          }
        }
      }),
      { numRuns: 400 },
    );
  });

  it('counts modulo 2^32: more than 4 GiB each way keeps credit right', () => {
    const c = established({ bufAlloc: 65536, guestBuf: 65536, hostQueueLimit: 1 << 30 });
    const chunk = Buffer.alloc(65536);
    let guestFwd = 0;
    for (let i = 0; i < 65537; i++) {
      assert.equal(fromGuest(c, { fwdCnt: guestFwd }, chunk)[0]?.kind, 'write', `guest chunk ${i}`);
      c.hostWritten(65536);
      c.hostData(chunk);
      const p = c.nextPacket(65536);
      const rw = p?.header.op === Op.RW ? p : c.nextPacket(65536);
      assert.equal(rw?.payload.length, 65536, `host chunk ${i}`);
      guestFwd = (guestFwd + 65536) >>> 0;
      fromGuest(c, { op: Op.CREDIT_UPDATE, fwdCnt: guestFwd });
      drain(c);
    }
    assert.equal(c.counters.bytesFromGuest, 65537 * 65536);
    assert.ok(c.counters.bytesToGuest > 2 ** 32);
    assert.equal(c.state, 'established');
  });

  it('guest SHUTDOWN(SEND) half-closes the host stream; RW after it is a violation', () => {
    const c = established();
    assert.deepEqual(fromGuest(c, { op: Op.SHUTDOWN, flags: ShutdownFlag.SEND }), [{ kind: 'end' }]);
    c.hostData(Buffer.from('still flowing to the guest'));
    assert.equal(drain(c)[0]?.header.op, Op.RW, 'the other direction carries on');
    assert.equal(fromGuest(c, {}, Buffer.from('x'))[0]?.kind, 'close');
    assert.equal(drain(c)[0]?.header.op, Op.RST);
  });

  it('guest SHUTDOWN(RCV|SEND) (close) gets RST and a graceful host close; the flags also add up over two packets', () => {
    const c = established();
    assert.deepEqual(fromGuest(c, { op: Op.SHUTDOWN, flags: ShutdownFlag.RCV | ShutdownFlag.SEND }), [
      { kind: 'end' }, { kind: 'close', graceful: true, reason: 'the guest closed the connection' },
    ]);
    assert.equal(drain(c)[0]?.header.op, Op.RST);
    assert.equal(c.finished, true);
    const d = established();
    fromGuest(d, { op: Op.SHUTDOWN, flags: ShutdownFlag.RCV });
    assert.equal(d.state, 'established');
    assert.equal(fromGuest(d, { op: Op.SHUTDOWN, flags: ShutdownFlag.SEND }).at(-1)?.kind, 'close');
  });

  it('guest SHUTDOWN(RCV) drops host data, sends no more RW, and keeps reading the host so it never blocks', () => {
    const c = established();
    c.hostData(Buffer.alloc(100));
    fromGuest(c, { op: Op.SHUTDOWN, flags: ShutdownFlag.RCV });
    assert.equal(c.queuedBytes, 0);
    c.hostData(Buffer.alloc(100_000));
    assert.equal(c.queuedBytes, 0);
    assert.equal(c.wantsHostData(), true);
    assert.equal(drain(c).length, 0);
  });

  it('host EOF becomes SHUTDOWN(SEND) after the queued data; the guest\'s close then gets RST', () => {
    const c = established();
    c.hostData(Buffer.from('last words'));
    c.hostEnd();
    const out = drain(c);
    assert.deepEqual(out.map((p) => [p.header.op, p.header.flags]), [[Op.RW, 0], [Op.SHUTDOWN, ShutdownFlag.SEND]]);
    assert.equal(c.wantsHostData(), false);
    fromGuest(c, { op: Op.SHUTDOWN, flags: ShutdownFlag.SEND });
    assert.equal(c.state, 'established', 'two half-closes: the guest\'s socket is still open');
    fromGuest(c, { op: Op.SHUTDOWN, flags: 3 });
    assert.equal(drain(c)[0]?.header.op, Op.RST);
  });

  it('a guest RST ends the connection with no reply, finishing the host stream gracefully', () => {
    const c = established();
    assert.deepEqual(fromGuest(c, { op: Op.RST }), [{ kind: 'close', graceful: true, reason: 'the guest reset the connection' }]);
    assert.equal(c.hasPacket(), false);
    assert.equal(c.finished, true);
  });

  it('host-initiated: REQUEST, host data held until RESPONSE, then sent within the credit RESPONSE gave', () => {
    const c = VsockConnection.toGuest({ localCid: HOST, localPort: 2 ** 30, peerCid: GUEST, peerPort: 6000 }, { bufAlloc: 4096 });
    c.hostData(Buffer.from('early bytes'));
    const [req] = drain(c);
    assert.deepEqual(req?.header, { srcCid: HOST, srcPort: 2 ** 30, dstCid: GUEST, dstPort: 6000, len: 0, type: 1, op: Op.REQUEST, flags: 0, bufAlloc: 4096, fwdCnt: 0 });
    assert.equal(drain(c).length, 0, 'no data before the guest accepts');
    assert.deepEqual(c.fromGuest(hdr({ op: Op.RESPONSE, srcPort: 6000, dstPort: 2 ** 30, bufAlloc: 5 }), new Uint8Array(0)), [{ kind: 'established' }]);
    const out = drain(c);
    assert.equal(Buffer.from(out[0]?.payload ?? []).toString(), 'early', 'five bytes of credit');
    assert.equal(out[1]?.header.op, Op.CREDIT_REQUEST);
  });

  it('host-initiated: a REQUEST nobody answers expires with RST; a host that leaves first withdraws it', () => {
    const c = VsockConnection.toGuest({ localCid: HOST, localPort: 2 ** 30, peerCid: GUEST, peerPort: 6000 });
    drain(c);
    assert.equal(c.expire()[0]?.kind, 'close');
    assert.equal(c.closeReason?.reason, 'request-timeout');
    assert.equal(drain(c)[0]?.header.op, Op.RST);
    const d = VsockConnection.toGuest({ localCid: HOST, localPort: 2 ** 30, peerCid: GUEST, peerPort: 6000 });
    drain(d);
    assert.equal(d.hostEnd()[0]?.kind, 'close');
    assert.equal(drain(d)[0]?.header.op, Op.RST);
  });

  it('resets on packets that do not fit the state: REQUEST on a live connection, RESPONSE to a guest-initiated one, RW before RESPONSE', () => {
    for (const op of [Op.REQUEST, Op.RESPONSE]) {
      const c = established();
      assert.equal(fromGuest(c, { op })[0]?.kind, 'close');
      assert.equal(c.closeReason?.reason, 'violation');
    }
    const c = VsockConnection.toGuest({ localCid: HOST, localPort: 2 ** 30, peerCid: GUEST, peerPort: 6000 });
    drain(c);
    assert.equal(c.fromGuest(hdr({ srcPort: 6000, dstPort: 2 ** 30, len: 1 }), Buffer.from('x'))[0]?.kind, 'close');
  });

  it('pauses the host stream when its queue is full and resumes once the guest takes data', () => {
    const c = established({ hostQueueLimit: 10_000 });
    c.hostData(Buffer.alloc(10_000));
    assert.equal(c.wantsHostData(), false);
    c.nextPacket(4096);
    assert.equal(c.wantsHostData(), true);
  });
});

// --- the device on the vhost-user core --------------------------------------------------------------

const SIZE = 8;
const AREA = [0x40000, 0x60000, 0xf0000];
const STRIDE = [0x2000, 0x10000, 0x100];

interface Posted {
  descs: number[];
}

/** What the driver needs of a set-up frontend. */
type GuestMemoryView = Pick<Guest, 'ram' | 'bytes' | 'kicks'>;

/** The guest driver's side of the three rings (size 8) in the shared memory. */
class Driver {
  private readonly free: number[][] = [0, 1, 2].map(() => [...Array(SIZE).keys()]);
  private readonly availIdx = [0, 0, 0];
  private readonly usedSeen = [0, 0, 0];
  private readonly posted: Map<number, Posted>[] = [0, 1, 2].map(() => new Map<number, Posted>());

  constructor(readonly g: GuestMemoryView, base: number[] = [0, 0, 0]) {
    this.availIdx = [...base];
    this.usedSeen = [...base];
  }

  bufAddr(ring: number, desc: number): number {
    return (AREA[ring] as number) + desc * (STRIDE[ring] as number);
  }

  freeDescs(ring: number): number {
    return (this.free[ring] as number[]).length;
  }

  /** Publishes one chain of buffers (lengths; writable or not) on `ring`; returns its descriptors. */
  post(ring: number, parts: { len: number; writable: boolean; data?: Uint8Array }[]): number[] {
    const free = this.free[ring] as number[];
    assert.ok(free.length >= parts.length, `ring ${ring} has ${free.length} free descriptors`);
    const descs = free.splice(0, parts.length);
    const r = ringAt(ring);
    parts.forEach((p, k) => {
      const d = descs[k] as number;
      const addr = this.bufAddr(ring, d);
      if (p.data) this.g.bytes.set(p.data, addr);
      const o = r.desc + 16 * d;
      this.g.ram.setUint32(o, addr, true);
      this.g.ram.setUint32(o + 4, 0, true);
      this.g.ram.setUint32(o + 8, p.len, true);
      this.g.ram.setUint16(o + 12, (k < parts.length - 1 ? 1 : 0) | (p.writable ? 2 : 0), true);
      this.g.ram.setUint16(o + 14, descs[k + 1] ?? 0, true);
    });
    const idx = this.availIdx[ring] as number;
    this.g.ram.setUint16(r.avail + 4 + 2 * (idx % SIZE), descs[0] as number, true);
    this.availIdx[ring] = (idx + 1) & 0xffff;
    this.g.ram.setUint16(r.avail + 2, this.availIdx[ring], true);
    (this.posted[ring] as Map<number, Posted>).set(descs[0] as number, { descs });
    return descs;
  }

  kick(ring: number): void {
    this.g.kicks[ring]?.write(1n);
  }

  usedIdx(ring: number): number {
    return this.g.ram.getUint16(ringAt(ring).used + 2, true);
  }

  /** Used elements returned since the last call, with their descriptors (freed). */
  reap(ring: number): { descs: number[]; len: number }[] {
    const r = ringAt(ring);
    const out: { descs: number[]; len: number }[] = [];
    while (this.usedSeen[ring] !== this.usedIdx(ring)) {
      const slot = (this.usedSeen[ring] as number) % SIZE;
      const head = this.g.ram.getUint32(r.used + 4 + 8 * slot, true);
      const len = this.g.ram.getUint32(r.used + 4 + 8 * slot + 4, true);
      this.usedSeen[ring] = ((this.usedSeen[ring] as number) + 1) & 0xffff;
      const p = (this.posted[ring] as Map<number, Posted>).get(head);
      assert.ok(p, `used head ${head} on ring ${ring} was never posted`);
      (this.posted[ring] as Map<number, Posted>).delete(head);
      (this.free[ring] as number[]).push(...p.descs);
      out.push({ descs: p.descs, len });
    }
    return out;
  }

  /** Sends a packet as Linux 6.1 does: a header buffer, then a payload buffer if there is one. */
  send(h: Partial<VsockHeader>, payload: Uint8Array = new Uint8Array(0)): void {
    const header = encodeHeader(hdr({ ...h, len: h.len ?? payload.length }));
    const parts = [{ len: HEADER_SIZE, writable: false, data: header }];
    this.reap(Queue.TX); // take back the descriptors of packets the device has consumed
    if (payload.length > 0) parts.push({ len: payload.length, writable: false, data: payload });
    this.post(Queue.TX, parts);
  }

  /** Posts receive buffers as Linux 6.1 does (header + 4 KiB), as many as fit. */
  fillRx(max = SIZE): void {
    let n = 0;
    while (this.freeDescs(Queue.RX) >= 2 && n < max) {
      this.post(Queue.RX, [{ len: HEADER_SIZE, writable: true }, { len: 4096, writable: true }]);
      n++;
    }
  }

  /** Packets the device delivered since the last call. */
  received(): { header: VsockHeader; payload: Buffer }[] {
    return this.reap(Queue.RX).map(({ descs, len }) => {
      const header = decodeHeader(this.g.bytes.subarray(this.bufAddr(Queue.RX, descs[0] as number)));
      const payload = Buffer.from(this.g.bytes.subarray(this.bufAddr(Queue.RX, descs[1] as number), this.bufAddr(Queue.RX, descs[1] as number) + len - HEADER_SIZE));
      assert.equal(header.len, len - HEADER_SIZE, 'used length = header + len');
      return { header, payload };
    });
  }
}

async function until(cond: () => boolean, what: string, ms = 3000): Promise<void> {
  const t0 = Date.now();
  while (!cond()) {
    if (Date.now() - t0 > ms) assert.fail(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 2));
  }
}

/** A host endpoint whose connections are socketpairs; the test holds the other ends. */
function pairEndpoint(): VsockEndpoint & { peers: { port: number; from: { cid: number; port: number }; stream: sys.FdSocket }[] } {
  const peers: { port: number; from: { cid: number; port: number }; stream: sys.FdSocket }[] = [];
  return {
    peers,
    connect(port, from) {
      const [a, b] = sys.unixSocketPair();
      peers.push({ port, from, stream: b });
      return Promise.resolve(a);
    },
  };
}

function collect(s: Duplex): { data: () => Buffer; ended: () => boolean; closed: () => boolean } {
  const chunks: Buffer[] = [];
  let ended = false;
  let closed = false;
  s.on('data', (d: Buffer) => chunks.push(d));
  s.on('end', () => (ended = true));
  s.on('close', () => (closed = true));
  s.on('error', () => undefined);
  // A socketpair end sees its peer's close as EOF (allowHalfOpen keeps it open itself).
  return { data: () => Buffer.concat(chunks), ended: () => ended, closed: () => closed || ended };
}

async function device(opts: Partial<VsockDeviceOptions> = {}): Promise<{ dev: VsockDevice; g: Guest; drv: Driver; ep: ReturnType<typeof pairEndpoint> }> {
  const ep = pairEndpoint();
  const dev = new VsockDevice({ guestCid: GUEST, route: (cid) => (cid === HOST ? ep : null), ...opts });
  const g = await bringUp(dev);
  return { dev, g, drv: new Driver(g), ep };
}

function done(g: Guest, dev: VsockDevice): void {
  dev.close();
  shutDown(g);
}

/** The guest connects from `port` to host port 5000 and the device answers RESPONSE. */
async function connect(drv: Driver, ep: ReturnType<typeof pairEndpoint>, port = 1024, bufAlloc = 65536): Promise<sys.FdSocket> {
  const n = ep.peers.length;
  drv.send({ op: Op.REQUEST, srcPort: port, bufAlloc });
  drv.kick(Queue.TX);
  let got: { header: VsockHeader }[] = [];
  await until(() => (got = drv.received()).length > 0, 'RESPONSE');
  assert.equal(got[0]?.header.op, Op.RESPONSE);
  assert.equal(ep.peers.length, n + 1);
  return (ep.peers[n] as { stream: sys.FdSocket }).stream;
}

describe('vsock device on the vhost-user core', () => {
  it('offers VERSION_1 and CONFIG, and reports the guest CID in the config space', async () => {
    const dev = new VsockDevice({ guestCid: 0x1234_5678, route: () => null });
    const [a, b] = sys.unixSocketPair();
    const be = new VhostUserBackend(b, dev);
    const fe = new Frontend(a);
    assert.ok(be.offeredFeatures & featureMask(32));
    assert.ok(be.offeredProtocolFeatures & featureMask(ProtocolFeature.CONFIG));
    fe.send({ request: 'GET_CONFIG', flags: f(), config: { offset: 0, flags: 0, data: Buffer.alloc(CONFIG_SIZE) } });
    const r = await fe.reply();
    assert.deepEqual(r.request === 'GET_CONFIG' && r.config && [...r.config.data], [0x78, 0x56, 0x34, 0x12, 0, 0, 0, 0]);
    fe.send({ request: 'GET_CONFIG', flags: f(), config: { offset: 4, flags: 0, data: Buffer.alloc(8) } });
    const bad = await fe.reply();
    assert.equal(bad.request === 'GET_CONFIG' && bad.config, null, 'beyond the 8 bytes: refused');
    fe.sock.destroy();
    assert.throws(() => new VsockDevice({ guestCid: 2, route: () => null }), RangeError);
    assert.throws(() => new VsockDevice({ guestCid: 0xffff_ffff, route: () => null }), RangeError);
  });

  it('connects a guest to host port 5000 and carries data both ways, then closes on the guest\'s close', async () => {
    const { dev, g, drv, ep } = await device();
    drv.fillRx();
    const host = await connect(drv, ep, 1024);
    assert.deepEqual(ep.peers[0]?.port, 5000);
    assert.deepEqual(ep.peers[0]?.from, { cid: GUEST, port: 1024 });
    const hostSide = collect(host);
    drv.send({ srcPort: 1024 }, Buffer.from('hello host'));
    drv.kick(Queue.TX);
    await until(() => hostSide.data().toString() === 'hello host', 'guest data at the host');
    host.write('hello guest');
    drv.fillRx();
    drv.kick(Queue.RX);
    let rx: { header: VsockHeader; payload: Buffer }[] = [];
    await until(() => (rx = drv.received()).length > 0, 'host data in the guest');
    assert.equal(rx[0]?.header.op, Op.RW);
    assert.equal(rx[0]?.payload.toString(), 'hello guest');
    assert.deepEqual([rx[0]?.header.srcPort, rx[0]?.header.dstPort, rx[0]?.header.dstCid], [5000, 1024, GUEST]);
    drv.send({ srcPort: 1024, op: Op.SHUTDOWN, flags: 3 });
    drv.kick(Queue.TX);
    await until(() => (rx = drv.received()).length > 0, 'RST');
    assert.equal(rx[0]?.header.op, Op.RST);
    await until(() => hostSide.ended(), 'EOF at the host');
    assert.equal(dev.connections().length, 0);
    assert.equal(dev.counters.connectionsOpened, 1);
    assert.equal(dev.counters.bytesFromGuest, 10);
    assert.equal(dev.counters.bytesToGuest, 11);
    host.destroy();
    done(g, dev);
  });

  it('refuses with RST when the endpoint cannot connect (nothing listens) or no route serves the CID', async () => {
    const ep: VsockEndpoint = { connect: () => Promise.reject(new Error('ECONNREFUSED')) };
    const dev = new VsockDevice({ guestCid: GUEST, route: (cid) => (cid === HOST ? ep : null) });
    const g = await bringUp(dev);
    const drv = new Driver(g);
    drv.fillRx();
    drv.send({ op: Op.REQUEST, srcPort: 1 });
    drv.send({ op: Op.REQUEST, srcPort: 2, dstCid: 7 });
    drv.kick(Queue.TX);
    const rx: { header: VsockHeader }[] = [];
    await until(() => rx.push(...drv.received()) >= 0 && rx.length === 2, 'two RSTs');
    assert.deepEqual(rx.map((p) => [p.header.op, p.header.dstPort, p.header.srcCid]).sort(), [[Op.RST, 1, HOST], [Op.RST, 2, 7]]);
    assert.equal(dev.counters.connectionsRefused, 2);
    assert.equal(dev.counters.drops['no-route'], 1);
    done(g, dev);
  });

  it('drops packets whose src_cid is not the guest\'s (spoofing) without answering', async () => {
    const { dev, g, drv, ep } = await device();
    drv.fillRx();
    drv.send({ op: Op.REQUEST, srcCid: 4 });
    drv.send({ op: Op.RW, srcCid: 99 }, Buffer.from('x'));
    drv.send({ op: 0, srcCid: 4 }); // bad op too: still a spoof first
    drv.kick(Queue.TX);
    await until(() => drv.usedIdx(Queue.TX) === 3, 'the device took the three packets');
    await new Promise((r) => setTimeout(r, 20));
    assert.equal(drv.received().length, 0, 'nothing sent back');
    assert.equal(ep.peers.length, 0);
    assert.equal(dev.counters.drops.spoofed, 3);
    done(g, dev);
  });

  it('answers bad packets with RST and counts them: unknown op, type, len mismatch, data for no connection; drops a short one', async () => {
    const { dev, g, drv } = await device();
    drv.fillRx();
    drv.send({ op: 9, srcPort: 11 });
    drv.send({ op: Op.REQUEST, type: 2, srcPort: 12 });
    drv.send({ op: Op.RW, srcPort: 13, len: 100 }, Buffer.from('short'));
    drv.kick(Queue.TX);
    const rx: { header: VsockHeader }[] = [];
    await until(() => rx.push(...drv.received()) >= 0 && rx.length === 3, 'three RSTs');
    drv.fillRx();
    drv.send({ op: Op.RW, srcPort: 14 }, Buffer.from('nobody'));
    drv.post(Queue.TX, [{ len: 20, writable: false }]);
    drv.kick(Queue.TX);
    await until(() => rx.push(...drv.received()) >= 0 && rx.length === 4, 'the fourth RST');
    await until(() => drv.usedIdx(Queue.TX) === 5, 'all five taken');
    assert.deepEqual(rx.map((p) => [p.header.op, p.header.dstPort]), [[Op.RST, 11], [Op.RST, 12], [Op.RST, 13], [Op.RST, 14]]);
    assert.equal(rx[1]?.header.type, 2, 'the RST echoes a SEQPACKET request\'s type, so the guest can match it');
    const d = dev.counters.drops;
    assert.deepEqual([d.op, d.type, d.length, d['no-connection'], d.short], [1, 1, 1, 1, 1]);
    done(g, dev);
  });

  it('resets a connection whose guest exceeds its credit, and one that sends a packet with a bad len', async () => {
    const { dev, g, drv, ep } = await device({ bufAlloc: 4096 });
    drv.fillRx();
    const h1 = collect(await connect(drv, ep, 1));
    // 4096 then 1 more byte in the same batch: the host cannot have taken the first yet.
    drv.send({ srcPort: 1 }, Buffer.alloc(4096, 1));
    drv.send({ srcPort: 1 }, Buffer.alloc(1, 2));
    drv.kick(Queue.TX);
    drv.fillRx();
    let rx: { header: VsockHeader }[] = [];
    await until(() => (rx = drv.received()).length > 0, 'RST');
    assert.equal(rx[0]?.header.op, Op.RST);
    assert.equal(dev.counters.drops.violation, 1);
    await until(() => h1.closed(), 'the host stream closed');
    assert.equal(h1.data().length, 4096, 'what was within credit reached the host');
    const h2 = collect(await connect(drv, ep, 2));
    drv.send({ srcPort: 2, len: 10 }, Buffer.from('abc'));
    drv.kick(Queue.TX);
    drv.fillRx();
    await until(() => (rx = drv.received()).length > 0, 'RST for the bad len');
    assert.deepEqual([rx[0]?.header.op, rx[0]?.header.dstPort], [Op.RST, 2]);
    await until(() => h2.closed(), 'the second host stream closed');
    assert.equal(dev.connections().length, 0);
    done(g, dev);
  });

  it('host → guest: holds host data while the guest has no buffers or credit, never exceeds the credit, asks for more', async () => {
    const { dev, g, drv, ep } = await device({ hostQueueLimit: 16384 });
    drv.fillRx(1);
    const host = await connect(drv, ep, 1, 10_000); // the guest's buffer: 10000 bytes
    const sent = Buffer.alloc(100_000);
    for (let i = 0; i < sent.length; i++) sent[i] = (i * 7) & 0xff;
    host.write(sent);
    await until(() => (dev.connections()[0]?.queuedToGuest ?? 0) > 0, 'host data queued');
    await new Promise((r) => setTimeout(r, 30));
    const queued = dev.connections()[0]?.queuedToGuest ?? 0;
    assert.ok(queued <= 16384 + 65536, `the host stream was paused: ${queued} bytes queued`);
    const got: Buffer[] = [];
    let inFlight = 0;
    let fwd = 0;
    let creditRequests = 0;
    while (Buffer.concat(got).length < sent.length) {
      drv.fillRx();
      drv.kick(Queue.RX);
      await until(() => drv.usedIdx(Queue.RX) !== 0, 'rx');
      await new Promise((r) => setTimeout(r, 5));
      for (const p of drv.received()) {
        if (p.header.op === Op.CREDIT_REQUEST) creditRequests++;
        if (p.header.op !== Op.RW) continue;
        got.push(p.payload);
        inFlight += p.payload.length;
        assert.ok(inFlight <= 10_000, `in flight ${inFlight} beyond the guest's 10000`);
      }
      // The guest reads everything and says so.
      fwd += inFlight;
      inFlight = 0;
      drv.send({ srcPort: 1, op: Op.CREDIT_UPDATE, bufAlloc: 10_000, fwdCnt: fwd });
      drv.kick(Queue.TX);
    }
    assert.ok(Buffer.concat(got).equals(sent), 'every byte, in order');
    assert.ok(creditRequests >= 1, 'the device asked for credit when it ran out');
    host.destroy();
    done(g, dev);
  });

  it('host-initiated: REQUEST to the guest, OK hook and promise on RESPONSE, refusal on RST, timeout without answer', async () => {
    const { dev, g, drv } = await device({ requestTimeoutMs: 200 });
    drv.fillRx();
    const [a, b] = sys.unixSocketPair();
    let hooked = -1;
    const accepted = dev.connectToGuest(6000, a, { initial: Buffer.from('early'), onEstablished: (p) => (hooked = p) });
    let rx: { header: VsockHeader; payload: Buffer }[] = [];
    await until(() => (rx = drv.received()).length > 0, 'REQUEST');
    const req = rx[0]?.header as VsockHeader;
    assert.deepEqual([req.op, req.srcCid, req.dstPort], [Op.REQUEST, HOST, 6000]);
    assert.ok(req.srcPort >= 2 ** 30);
    drv.fillRx();
    drv.send({ op: Op.RESPONSE, srcPort: 6000, dstPort: req.srcPort, bufAlloc: 65536 });
    drv.kick(Queue.TX);
    assert.equal(await accepted, req.srcPort);
    assert.equal(hooked, req.srcPort);
    await until(() => (rx = drv.received()).length > 0, 'the early bytes');
    assert.equal(rx[0]?.payload.toString(), 'early');
    // Refused: the guest answers RST.
    const [c, d] = sys.unixSocketPair();
    const dSide = collect(d);
    const refused = dev.connectToGuest(6001, c);
    drv.fillRx();
    await until(() => (rx = drv.received()).length > 0, 'second REQUEST');
    drv.send({ op: Op.RST, srcPort: 6001, dstPort: rx[0]?.header.srcPort ?? 0 });
    drv.kick(Queue.TX);
    await assert.rejects(refused, GuestRefusedError);
    await until(() => dSide.closed() || dSide.ended(), 'refused stream closed');
    // No answer at all.
    const [e, _f] = sys.unixSocketPair();
    drv.fillRx();
    await assert.rejects(dev.connectToGuest(6002, e), /no answer within 200 ms/);
    a.destroy();
    b.destroy();
    d.destroy();
    _f.destroy();
    done(g, dev);
  });

  it('gives back a receive buffer too small for the waiting data instead of spinning on it, and uses the next', async () => {
    const { dev, g, drv, ep } = await device();
    drv.fillRx(1);
    const host = await connect(drv, ep, 1);
    host.write('waiting for room');
    await until(() => (dev.connections()[0]?.queuedToGuest ?? 0) > 0, 'host data queued');
    drv.received();
    drv.post(Queue.RX, [{ len: HEADER_SIZE, writable: true }]); // a header's worth: no data fits
    drv.kick(Queue.RX);
    await until(() => drv.usedIdx(Queue.RX) === 2, 'the small buffer back');
    assert.deepEqual(drv.reap(Queue.RX).map((u) => u.len), [0], 'returned empty');
    assert.equal(dev.counters.drops['rx-buffer'], 1);
    drv.fillRx();
    drv.kick(Queue.RX);
    let rx: { header: VsockHeader; payload: Buffer }[] = [];
    await until(() => (rx = drv.received()).length > 0, 'the data');
    assert.equal(rx.find((p) => p.header.op === Op.RW)?.payload.toString(), 'waiting for room');
    host.destroy();
    done(g, dev);
  });

  it('limits connections being set up: REQUESTs beyond the limit get RST and are counted', async () => {
    const never: VsockEndpoint = { connect: () => new Promise<Duplex>(() => undefined) };
    const dev = new VsockDevice({ guestCid: GUEST, route: () => never, maxPendingRequests: 2, hostConnectTimeoutMs: 60_000 });
    const g = await bringUp(dev);
    const drv = new Driver(g);
    drv.fillRx();
    for (const p of [1, 2, 3, 4]) drv.send({ op: Op.REQUEST, srcPort: p });
    drv.kick(Queue.TX);
    const rx: { header: VsockHeader }[] = [];
    await until(() => rx.push(...drv.received()) >= 0 && rx.length === 2, 'two RSTs');
    assert.deepEqual(rx.map((p) => [p.header.op, p.header.dstPort]), [[Op.RST, 3], [Op.RST, 4]]);
    assert.equal(dev.counters.drops['request-limit'], 2);
    assert.equal(dev.connections().length, 2);
    done(g, dev);
  });

  it('stops taking transmissions while RSTs wait for receive buffers, and resumes when they come', async () => {
    const { dev, g, drv } = await device({ maxControlBacklog: 2 });
    for (const p of [1, 2, 3]) drv.send({ op: Op.RW, srcPort: p }, Buffer.from('?'));
    drv.kick(Queue.TX);
    await until(() => drv.usedIdx(Queue.TX) === 2, 'two taken');
    await new Promise((r) => setTimeout(r, 20));
    assert.equal(drv.usedIdx(Queue.TX), 2, 'the third waits in the ring');
    drv.fillRx();
    drv.kick(Queue.RX);
    await until(() => drv.usedIdx(Queue.TX) === 3, 'the third taken');
    const rx: { header: VsockHeader }[] = [];
    await until(() => rx.push(...drv.received()) >= 0 && rx.length === 3, 'three RSTs');
    done(g, dev);
  });

  it('survives a hostile guest: 300 random packets (any op, type, len, CID, port, credit), then still serves a new connection', async () => {
    const { dev, g, drv, ep } = await device({ maxConnections: 8, maxPendingRequests: 4, bufAlloc: 4096 });
    const packet = fc.record({
      srcCid: fc.constantFrom(GUEST, GUEST, GUEST, 4),
      dstCid: fc.constantFrom(HOST, HOST, 7),
      srcPort: fc.integer({ min: 1, max: 6 }),
      dstPort: fc.constantFrom(5000, 5001),
      op: fc.integer({ min: 0, max: 8 }),
      type: fc.constantFrom(1, 1, 1, 2, 0),
      flags: fc.integer({ min: 0, max: 3 }),
      bufAlloc: fc.constantFrom(0, 4096, 65536, 0xffff_ffff),
      fwdCnt: fc.integer({ min: 0, max: 0xffff_ffff }),
      size: fc.integer({ min: 0, max: 6000 }),
      lenDelta: fc.constantFrom(0, 0, 0, 0, 1, -1),
    });
    const packets = fc.sample(packet, { numRuns: 300, seed: 20261125 });
    const toGuest: VsockHeader[] = [];
    for (let i = 0; i < packets.length; i += 3) {
      const batch = packets.slice(i, i + 3);
      const before = drv.usedIdx(Queue.TX);
      for (const p of batch) {
        const payload = Buffer.alloc(p.size, 0x5a);
        drv.send({ ...p, len: Math.max(0, p.size + p.lenDelta) }, payload);
      }
      drv.kick(Queue.TX);
      await until(() => ((drv.usedIdx(Queue.TX) - before) & 0xffff) === batch.length, `batch ${i / 3} taken`);
      await new Promise((r) => setTimeout(r, 1));
      toGuest.push(...drv.received().map((p) => p.header));
      drv.fillRx();
      drv.kick(Queue.RX);
    }
    assert.ok(toGuest.length > 0);
    assert.ok(toGuest.every((h) => h.dstCid === GUEST && (h.srcCid === HOST || h.srcCid === 7)), 'everything went to the guest, from an address it used');
    assert.ok(dev.connections().length <= 8);
    const d = dev.counters.drops;
    assert.ok(d.spoofed > 0 && d.op > 0 && d.type > 0 && d.length > 0, JSON.stringify(d));
    // Still serving: a fresh, well-behaved connection works.
    await new Promise((r) => setTimeout(r, 20));
    drv.received();
    drv.fillRx();
    for (const c of dev.connections()) drv.send({ op: Op.RST, srcPort: Number(c.guest.split(':')[1]), dstPort: Number(c.local.split(':')[1]), dstCid: Number(c.local.split(':')[0]) });
    drv.kick(Queue.TX);
    await until(() => dev.connections().length === 0, 'the guest reset its connections');
    const host = collect(await connect(drv, ep, 60_000));
    drv.send({ srcPort: 60_000 }, Buffer.from('still here'));
    drv.kick(Queue.TX);
    await until(() => host.data().toString() === 'still here', 'data through the new connection');
    done(g, dev);
  });

  it('sends TRANSPORT_RESET when the rings start where this device never stopped them (a backend restart)', async () => {
    const dev = new VsockDevice({ guestCid: GUEST, route: () => null });
    const g = await bringUpAt(dev, [7, 5, 0]);
    const drv = new Driver(g, [7, 5, 0]);
    drv.post(Queue.EVENT, [{ len: EVENT_SIZE, writable: true }]);
    drv.kick(Queue.EVENT);
    let ev: { descs: number[]; len: number }[] = [];
    await until(() => (ev = drv.reap(Queue.EVENT)).length > 0, 'an event');
    assert.equal(ev[0]?.len, EVENT_SIZE);
    assert.equal(g.ram.getUint32(drv.bufAddr(Queue.EVENT, ev[0]?.descs[0] ?? 0), true), EventId.TRANSPORT_RESET);
    assert.equal(dev.counters.transportResets, 1);
    done(g, dev);
  });

  it('drops connections without RST when the driver restarts its rings at 0 (guest reboot)', async () => {
    const { dev, g, drv, ep } = await device();
    drv.fillRx();
    const host = collect(await connect(drv, ep, 1));
    // As QEMU does at a reset: GET_VRING_BASE stops the rings, then they start again at 0.
    for (const i of [0, 1, 2]) {
      g.fe.send({ request: 'GET_VRING_BASE', flags: f(), index: i });
      await g.fe.reply();
    }
    // The rebooted driver lays its rings out afresh: indices back to 0.
    for (const i of [0, 1, 2]) {
      g.ram.setUint16(ringAt(i).avail + 2, 0, true);
      g.ram.setUint16(ringAt(i).used + 2, 0, true);
    }
    for (const i of [0, 1, 2]) {
      g.fe.send({ request: 'SET_VRING_BASE', flags: f(), index: i, num: 0 });
      g.fe.send({ request: 'SET_VRING_KICK', flags: f(), index: i, noFd: false }, [dupKick(g, i)]);
      g.fe.send({ request: 'SET_VRING_ENABLE', flags: f(true), index: i, enable: true });
      await g.fe.reply();
    }
    await until(() => host.closed(), 'the host stream closed');
    assert.equal(dev.connections().length, 0);
    assert.equal(dev.counters.transportResets, 0);
    done(g, dev);
  });
});

/** A new kick eventfd for ring `i` (GET_VRING_BASE closed the old one on the backend's side). */
function dupKick(g: Guest, i: number): number {
  const k = new sys.EventFd();
  g.kicks[i]?.close();
  g.kicks[i] = k;
  return k.fd;
}

/** bringUp with the rings starting at the given avail indices (a driver that ran before). */
async function bringUpAt(device: VsockDevice, base: number[]): Promise<Guest> {
  const [a, b] = sys.unixSocketPair();
  const be = new VhostUserBackend(b, device);
  const fe = new Frontend(a);
  return { ...(await setUpRings(fe, be.offeredFeatures, device.queueCount, base)), be };
}

/** Plays QEMU's set-up on a frontend connection: features, 1 MiB of memory, rings of 8 at `base`. */
async function setUpRings(fe: Frontend, features: bigint, queueCount: number, base: number[]): Promise<Omit<Guest, 'be'>> {
  const memfd = sys.memfdCreate('prism-vsock-test');
  fs.ftruncateSync(memfd, MiB);
  const ab = sys.mmap(memfd, MiB);
  const ram = new DataView(ab);
  fe.send({ request: 'SET_FEATURES', flags: f(), features });
  fe.send({ request: 'SET_PROTOCOL_FEATURES', flags: f(), features: featureMask(ProtocolFeature.REPLY_ACK) });
  fe.send({ request: 'SET_MEM_TABLE', flags: f(true), regions: [{ guestPhysAddr: 0n, memorySize: BigInt(MiB), userspaceAddr: UVA, mmapOffset: 0n }] }, [memfd]);
  await fe.reply();
  const kicks: sys.EventFd[] = [];
  const calls: sys.EventFd[] = [];
  for (let i = 0; i < queueCount; i++) {
    const r = ringAt(i);
    // The driver's indices as it left them: avail and used both at base.
    ram.setUint16(r.avail + 2, base[i] ?? 0, true);
    ram.setUint16(r.used + 2, base[i] ?? 0, true);
    const kick = new sys.EventFd();
    const call = new sys.EventFd();
    kicks.push(kick);
    calls.push(call);
    fe.send({ request: 'SET_VRING_NUM', flags: f(), index: i, num: 8 });
    fe.send({ request: 'SET_VRING_ADDR', flags: f(), addr: { index: i, flags: 0, descUserAddr: UVA + BigInt(r.desc), usedUserAddr: UVA + BigInt(r.used), availUserAddr: UVA + BigInt(r.avail), logGuestAddr: 0n } });
    fe.send({ request: 'SET_VRING_BASE', flags: f(), index: i, num: base[i] ?? 0 });
    fe.send({ request: 'SET_VRING_CALL', flags: f(), index: i, noFd: false }, [call.fd]);
    fe.send({ request: 'SET_VRING_KICK', flags: f(), index: i, noFd: false }, [kick.fd]);
    fe.send({ request: 'SET_VRING_ENABLE', flags: f(true), index: i, enable: true });
    const ack = await fe.reply();
    assert.deepEqual(ack, { request: 'REPLY_ACK', ackedRequest: 'SET_VRING_ENABLE', status: 0n }, `ring ${i} started`);
  }
  return { fe, ram, bytes: new Uint8Array(ab), memfd, kicks, calls };
}

// --- the hybrid service: VsockServer with a scripted VMM and host programs ------------------------

interface Served {
  server: VsockServer;
  dir: string;
  uds: string;
  vmm: Omit<Guest, 'be'>;
  drv: Driver;
}

/** Starts a VsockServer in a temporary directory and connects a scripted VMM that sets up the rings. */
async function served(opts: Partial<VsockServerOptions> = {}): Promise<Served> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'prism-vsock-srv-'));
  const uds = path.join(dir, 'hv.sock');
  const server = new VsockServer({ socket: path.join(dir, 'vu.sock'), cid: GUEST, uds, ...opts });
  await server.start();
  const vmm = await vmmConnect(path.join(dir, 'vu.sock'));
  const drv = new Driver(vmm);
  drv.fillRx();
  return { server, dir, uds, vmm, drv };
}

async function vmmConnect(socket: string): Promise<Omit<Guest, 'be'>> {
  const fe = new Frontend(await sys.connectUnix(socket));
  fe.send({ request: 'GET_FEATURES', flags: f() });
  const r = await fe.reply();
  assert.equal(r.request, 'GET_FEATURES');
  return setUpRings(fe, r.request === 'GET_FEATURES' ? r.features : 0n, 3, [0, 0, 0]);
}

async function stop(s: Served): Promise<void> {
  s.vmm.fe.sock.destroy();
  for (const e of [...s.vmm.kicks, ...s.vmm.calls]) e.close();
  await s.server.close();
  fs.rmSync(s.dir, { recursive: true, force: true });
}

/** Reads from a host connection until `pred` holds for what arrived. */
async function readUntil(s: net.Socket, pred: (got: Buffer) => boolean, what: string): Promise<Buffer> {
  let got = Buffer.alloc(0);
  s.on('data', (d: Buffer) => (got = Buffer.concat([got, d])));
  await until(() => pred(got), what);
  return got;
}

describe('vsock hybrid service (VsockServer)', () => {
  it('host → guest: CONNECT with data pipelined behind it gets OK once the guest accepts, then the data flows both ways', async () => {
    const s = await served();
    const host = net.connect(s.uds);
    host.write('CONNECT 6000\nhello guest');
    let rx: { header: VsockHeader; payload: Buffer }[] = [];
    await until(() => (rx = s.drv.received()).length > 0, 'REQUEST');
    const req = rx[0]?.header as VsockHeader;
    assert.deepEqual([req.op, req.dstPort, req.srcCid], [Op.REQUEST, 6000, HOST]);
    s.drv.fillRx();
    s.drv.send({ op: Op.RESPONSE, srcPort: 6000, dstPort: req.srcPort });
    s.drv.send({ srcPort: 6000, dstPort: req.srcPort }, Buffer.from('hello host'));
    s.drv.kick(Queue.TX);
    const got = await readUntil(host, (b) => b.toString().endsWith('hello host'), 'OK and the guest\'s data');
    assert.equal(got.toString(), `OK ${req.srcPort}\nhello host`, 'the OK line comes before any guest data');
    await until(() => (rx = s.drv.received()).length > 0, 'the pipelined bytes in the guest');
    assert.equal(rx[0]?.payload.toString(), 'hello guest');
    host.destroy();
    await stop(s);
  });

  it('host → guest: a refused CONNECT, garbage instead of CONNECT, or silence all close the host connection without OK', async () => {
    const s = await served({ handshakeTimeoutMs: 200 });
    const closedWith = (c: net.Socket): Promise<string> =>
      new Promise((resolve) => {
        let got = '';
        c.on('data', (d: Buffer) => (got += d.toString()));
        c.on('error', () => undefined);
        c.on('close', () => resolve(got));
      });
    const refused = net.connect(s.uds);
    const refusedDone = closedWith(refused);
    refused.write('CONNECT 7000\n');
    let rx: { header: VsockHeader }[] = [];
    await until(() => (rx = s.drv.received()).length > 0, 'REQUEST');
    s.drv.send({ op: Op.RST, srcPort: 7000, dstPort: rx[0]?.header.srcPort ?? 0 });
    s.drv.kick(Queue.TX);
    assert.equal(await refusedDone, '', 'refused by the guest');
    const garbage = net.connect(s.uds);
    const garbageDone = closedWith(garbage);
    garbage.write('GET / HTTP/1.1\r\n\r\n');
    assert.equal(await garbageDone, '', 'not a CONNECT line');
    const silent = net.connect(s.uds);
    assert.equal(await closedWith(silent), '', 'nothing within the handshake timeout');
    assert.equal(s.server.status().handshakesRefused, 2);
    await stop(s);
  });

  it('guest → host: CID 2 port 5000 reaches UDS_5000; port 5999 with nothing there and CID 9 get RST', async () => {
    const s = await served();
    let accepted: net.Socket | null = null;
    const l = net.createServer({ allowHalfOpen: true }, (c) => (accepted = c));
    await new Promise<void>((r) => l.listen(`${s.uds}_5000`, r));
    s.drv.send({ op: Op.REQUEST, srcPort: 1 });
    s.drv.send({ op: Op.REQUEST, srcPort: 2, dstPort: 5999 });
    s.drv.send({ op: Op.REQUEST, srcPort: 3, dstCid: 9 });
    s.drv.kick(Queue.TX);
    const rx: { header: VsockHeader }[] = [];
    await until(() => rx.push(...s.drv.received()) >= 0 && rx.length === 3, 'three answers');
    const byPort = new Map(rx.map((p) => [p.header.dstPort, p.header.op]));
    assert.deepEqual([byPort.get(1), byPort.get(2), byPort.get(3)], [Op.RESPONSE, Op.RST, Op.RST]);
    assert.ok(accepted, 'UDS_5000 got the connection');
    s.drv.fillRx();
    s.drv.send({ srcPort: 1 }, Buffer.from('to the host'));
    s.drv.kick(Queue.TX);
    const got = await readUntil(accepted as net.Socket, (b) => b.length === 11, 'guest data at UDS_5000');
    assert.equal(got.toString(), 'to the host');
    (accepted as net.Socket).destroy();
    l.close();
    await stop(s);
  });

  it('a new VMM connection replaces the old one, whose late ring stops do not disturb the new', async () => {
    const s = await served();
    const second = await vmmConnect(path.join(s.dir, 'vu.sock'));
    const drv2 = new Driver(second);
    drv2.fillRx();
    await new Promise((r) => setTimeout(r, 50)); // the first connection's close has run by now
    const l = net.createServer(() => undefined);
    await new Promise<void>((r) => l.listen(`${s.uds}_5000`, r));
    drv2.send({ op: Op.REQUEST, srcPort: 1 });
    drv2.kick(Queue.TX);
    let rx: { header: VsockHeader }[] = [];
    await until(() => (rx = drv2.received()).length > 0, 'RESPONSE through the new connection');
    assert.equal(rx[0]?.header.op, Op.RESPONSE);
    assert.equal(s.server.status().vmmConnected, true);
    second.fe.sock.destroy();
    for (const e of [...second.kicks, ...second.calls]) e.close();
    l.close();
    await stop(s);
  });
});
