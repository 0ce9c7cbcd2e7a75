// Switch ports as vhost-user virtio-net devices, driven by scripted frontends:
// a frame sent by one guest lands in an allowed guest's receive buffer with a
// zeroed virtio-net header, and nowhere else.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { Switch } from '../src/net/switch.js';
import { NET_HDR_SIZE, NetPort } from '../src/net/port.js';
import { bringUp, offer, ringAt, shutDown, usedIdx, type Guest } from './helpers/vhost-frontend.js';

function ethFrame(dst: number[], src: number[], payload: string): Buffer {
  return Buffer.concat([Buffer.from(dst), Buffer.from(src), Buffer.from([0x86, 0xdd]), Buffer.from(payload)]);
}

const MAC_A = [0x52, 0x54, 0, 0x12, 0x34, 1];
const BCAST = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff];

describe('NetPort on the switch', () => {
  it('carries a broadcast from a to its allowed peer b, not to c, with a zeroed header and num_buffers 1', async () => {
    const sw = new Switch(['a', 'b', 'c'], { allow: [['a', 'b']] });
    const ports = new Map<string, NetPort>();
    const deliver = (p: string, frame: Uint8Array): boolean => ports.get(p)?.receive(frame) ?? false;
    for (const n of ['a', 'b', 'c']) ports.set(n, new NetPort(n, sw, deliver));
    const g = new Map<string, Guest>();
    for (const [n, port] of ports) g.set(n, await bringUp(port));
    const ga = g.get('a') as Guest;
    const gb = g.get('b') as Guest;
    const gc = g.get('c') as Guest;
    // b and c post a 2 KiB receive buffer each (ring 0 = RX).
    offer(gb, 0, 0, [[0x40000, 2048, true]]);
    offer(gc, 0, 0, [[0x40000, 2048, true]]);
    // a sends: header + frame from 0x50000 on ring 1 (TX).
    const frame = ethFrame(BCAST, MAC_A, 'hello from a');
    ga.bytes.set(Buffer.alloc(NET_HDR_SIZE), 0x50000);
    ga.bytes.set(frame, 0x50000 + NET_HDR_SIZE);
    offer(ga, 1, 0, [[0x50000, NET_HDR_SIZE + frame.length, false]]);
    const bCalled = new Promise<void>((resolve) => gb.calls[0]?.onReadable(() => resolve()));
    ga.kicks[1]?.write(1n);
    await bCalled;
    assert.equal(usedIdx(ga, 1), 1, 'a\'s transmit buffer came back');
    assert.equal(usedIdx(gb, 0), 1, 'b received one buffer');
    assert.equal(gb.ram.getUint32(0x12000 + 8, true), NET_HDR_SIZE + frame.length, 'used length = header + frame');
    assert.equal(gb.ram.getUint16(0x40000 + 10, true), 1, 'num_buffers');
    assert.deepEqual([...gb.bytes.subarray(0x40000, 0x40000 + 10)], new Array(10).fill(0), 'no offload flags');
    assert.ok(Buffer.from(gb.bytes.subarray(0x40000 + NET_HDR_SIZE, 0x40000 + NET_HDR_SIZE + frame.length)).equals(frame));
    assert.equal(usedIdx(gc, 0), 0, 'c saw nothing');
    assert.deepEqual(sw.counters('b'), { rxPackets: 0, rxBytes: 0, txPackets: 1, txBytes: frame.length, drops: 0 });
    for (const x of g.values()) shutDown(x);
  });

  it('spreads a frame over several receive buffers (MRG_RXBUF) and drops it when the guest has too little room', async () => {
    const sw = new Switch(['a', 'b'], { allow: [['a', 'b']] });
    const ports = new Map<string, NetPort>();
    const deliver = (p: string, fr: Uint8Array): boolean => ports.get(p)?.receive(fr) ?? false;
    for (const n of ['a', 'b']) ports.set(n, new NetPort(n, sw, deliver));
    const gb = await bringUp(ports.get('b') as NetPort);
    const big = ethFrame(BCAST, MAC_A, 'x'.repeat(1000));
    // One 512-byte buffer: too small, the frame is dropped and the buffer stays available.
    offer(gb, 0, 0, [[0x40000, 512, true]]);
    assert.equal(ports.get('b')?.receive(big), false);
    assert.equal(usedIdx(gb, 0), 0);
    // Two more: now 1536 bytes in three buffers.
    offer(gb, 0, 1, [[0x41000, 512, true]]);
    offer(gb, 0, 2, [[0x42000, 512, true]]);
    assert.equal(ports.get('b')?.receive(big), true);
    assert.equal(usedIdx(gb, 0), 3);
    assert.equal(gb.ram.getUint16(0x40000 + 10, true), 3, 'num_buffers = 3');
    const got = Buffer.concat([gb.bytes.subarray(0x40000 + NET_HDR_SIZE, 0x40000 + 512), gb.bytes.subarray(0x41000, 0x41000 + 512), gb.bytes.subarray(0x42000, 0x42000 + big.length + NET_HDR_SIZE - 1024)]);
    assert.ok(got.equals(big));
    shutDown(gb);
  });

  it('a guest whose transmit chain loops breaks only its own queue (logged); the other ports keep forwarding', async () => {
    const sw = new Switch(['a', 'b', 'c'], { allow: [['a', 'b'], ['b', 'c']] });
    const ports = new Map<string, NetPort>();
    const logged: string[] = [];
    const deliver = (p: string, fr: Uint8Array): boolean => ports.get(p)?.receive(fr) ?? false;
    for (const n of ['a', 'b', 'c']) ports.set(n, new NetPort(n, sw, deliver, (m) => logged.push(m)));
    const [ga, gb, gc] = await Promise.all(['a', 'b', 'c'].map((n) => bringUp(ports.get(n) as NetPort)));
    if (!ga || !gb || !gc) throw new Error('bring-up failed');
    // a: descriptor 0 of its TX ring chains to itself.
    offer(ga, 1, 0, [[0x50000, 64, false]]);
    ga.ram.setUint16(ringAt(1).desc + 12, 1, true); // NEXT
    ga.ram.setUint16(ringAt(1).desc + 14, 0, true); // next = 0: a loop
    offer(gb, 0, 0, [[0x40000, 2048, true]]);
    ga.kicks[1]?.write(1n);
    await new Promise((r) => setTimeout(r, 50));
    assert.match(logged.join('\n'), /port a: transmit queue broken: .*(loop|longer)/);
    assert.equal(usedIdx(gb, 0), 0, 'nothing reached b from the broken queue');
    // b still sends to c.
    offer(gc, 0, 0, [[0x40000, 2048, true]]);
    const frame = ethFrame(BCAST, [0x52, 0x54, 0, 0x12, 0x34, 2], 'b is fine');
    gb.bytes.set(Buffer.alloc(NET_HDR_SIZE), 0x50000);
    gb.bytes.set(frame, 0x50000 + NET_HDR_SIZE);
    offer(gb, 1, 0, [[0x50000, NET_HDR_SIZE + frame.length, false]]);
    const cCalled = new Promise<void>((resolve) => gc.calls[0]?.onReadable(() => resolve()));
    gb.kicks[1]?.write(1n);
    await cCalled;
    assert.equal(usedIdx(gc, 0), 1, 'c received b\'s frame');
    // a kicking again changes nothing: its queue stays broken.
    ga.kicks[1]?.write(1n);
    await new Promise((r) => setTimeout(r, 20));
    assert.equal(usedIdx(ga, 1), 0);
    for (const x of [ga, gb, gc]) shutDown(x);
  });
});

