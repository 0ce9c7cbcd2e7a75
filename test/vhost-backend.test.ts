// The vhost-user backend core driven by a scripted frontend over a socketpair
// (the real frontends, QEMU and DPDK, come with the net device): negotiation,
// memory table, ring setup, a kick that moves data, GET_VRING_BASE, and
// refusals that keep the connection.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as sys from '../src/sys/index.js';
import { VhostUserBackend, type VhostUserDevice } from '../src/vhost/backend.js';
import type { SplitVirtqueue } from '../src/vhost/virtqueue.js';
import { ProtocolFeature, VHOST_USER_F_PROTOCOL_FEATURES, featureMask } from '../src/codecs/vhost-user/index.js';
import { Frontend, MiB, UVA, f } from './helpers/vhost-frontend.js';


/** Copies what each chain carries into its writable buffers and returns it: an echo device. */
class EchoDevice implements VhostUserDevice {
  readonly features = featureMask(32); // VIRTIO_F_VERSION_1
  readonly queueCount = 1;
  queue: SplitVirtqueue | null = null;
  notify: () => void = () => undefined;
  kicks = 0;
  readConfig(offset: number, size: number): Buffer | null {
    const cfg = Buffer.from([1, 2, 3, 4, 5, 6, 7, 8]);
    return offset + size <= cfg.length ? cfg.subarray(offset, offset + size) : null;
  }
  startQueue(_i: number, q: SplitVirtqueue, notify: () => void): void {
    this.queue = q;
    this.notify = notify;
  }
  kick(): void {
    this.kicks++;
    const q = this.queue;
    if (!q) return;
    for (let c = q.pop(); c; c = q.pop()) {
      const data = Buffer.concat(c.readable);
      const out = c.writable[0];
      const n = out ? Math.min(out.length, data.length) : 0;
      if (out) out.set(data.subarray(0, n));
      q.pushUsed(c.head, n);
    }
    this.notify();
  }
  stopQueue(): void {
    this.queue = null;
  }
}


function connected(): { fe: Frontend; dev: EchoDevice; be: VhostUserBackend; ram: DataView; ramBytes: Uint8Array; memfd: number } {
  const [a, b] = sys.unixSocketPair();
  const dev = new EchoDevice();
  const be = new VhostUserBackend(b, dev);
  const fe = new Frontend(a);
  const memfd = sys.memfdCreate('prism-vu-test');
  fs.ftruncateSync(memfd, MiB);
  const ab = sys.mmap(memfd, MiB);
  return { fe, dev, be, ram: new DataView(ab), ramBytes: new Uint8Array(ab), memfd };
}

describe('vhost-user backend core', () => {
  it('negotiates, maps memory, runs a ring, echoes a buffer, signals the call fd, and reports the ring base', async () => {
    const { fe, dev, ram, ramBytes, memfd } = connected();
    fe.send({ request: 'GET_FEATURES', flags: f() });
    const feats = await fe.reply();
    assert.equal(feats.request, 'GET_FEATURES');
    const offered = feats.request === 'GET_FEATURES' ? feats.features : 0n;
    assert.ok(offered & featureMask(VHOST_USER_F_PROTOCOL_FEATURES));
    fe.send({ request: 'SET_FEATURES', flags: f(), features: offered });
    fe.send({ request: 'GET_PROTOCOL_FEATURES', flags: f() });
    const pf = await fe.reply();
    assert.equal(pf.request === 'GET_PROTOCOL_FEATURES' && pf.features, featureMask(ProtocolFeature.REPLY_ACK, ProtocolFeature.CONFIG));
    fe.send({ request: 'SET_PROTOCOL_FEATURES', flags: f(), features: featureMask(ProtocolFeature.REPLY_ACK, ProtocolFeature.CONFIG) });
    fe.send({ request: 'SET_OWNER', flags: f() });
    fe.send({ request: 'SET_MEM_TABLE', flags: f(true), regions: [{ guestPhysAddr: 0n, memorySize: BigInt(MiB), userspaceAddr: UVA, mmapOffset: 0n }] }, [memfd]);
    assert.deepEqual(await fe.reply(), { request: 'REPLY_ACK', ackedRequest: 'SET_MEM_TABLE', status: 0n });
    fe.send({ request: 'GET_CONFIG', flags: f(), config: { offset: 2, flags: 0, data: Buffer.alloc(4) } });
    const cfg = await fe.reply();
    assert.deepEqual(cfg.request === 'GET_CONFIG' && cfg.config && [...cfg.config.data], [3, 4, 5, 6]);

    // Ring 0: size 8, desc 0x1000, avail 0x2000, used 0x3000 (as frontend addresses).
    const kick = new sys.EventFd();
    const call = new sys.EventFd();
    fe.send({ request: 'SET_VRING_NUM', flags: f(), index: 0, num: 8 });
    fe.send({ request: 'SET_VRING_ADDR', flags: f(), addr: { index: 0, flags: 0, descUserAddr: UVA + 0x1000n, usedUserAddr: UVA + 0x3000n, availUserAddr: UVA + 0x2000n, logGuestAddr: 0n } });
    fe.send({ request: 'SET_VRING_BASE', flags: f(), index: 0, num: 0 });
    fe.send({ request: 'SET_VRING_CALL', flags: f(), index: 0, noFd: false }, [call.fd]);
    fe.send({ request: 'SET_VRING_KICK', flags: f(), index: 0, noFd: false }, [kick.fd]);
    fe.send({ request: 'SET_VRING_ENABLE', flags: f(true), index: 0, enable: true });
    assert.deepEqual(await fe.reply(), { request: 'REPLY_ACK', ackedRequest: 'SET_VRING_ENABLE', status: 0n });
    assert.ok(dev.queue, 'the ring started');

    // The driver side: "ping" readable at 0x10000, 16 writable bytes at 0x11000.
    ramBytes.set(Buffer.from('ping'), 0x10000);
    const desc = (i: number, addr: number, len: number, flags: number, next: number): void => {
      ram.setUint32(0x1000 + 16 * i, addr, true);
      ram.setUint32(0x1000 + 16 * i + 8, len, true);
      ram.setUint16(0x1000 + 16 * i + 12, flags, true);
      ram.setUint16(0x1000 + 16 * i + 14, next, true);
    };
    desc(0, 0x10000, 4, 1, 1);
    desc(1, 0x11000, 16, 2, 0);
    ram.setUint16(0x2000 + 4, 0, true);
    ram.setUint16(0x2000 + 2, 1, true);
    const called = new Promise<bigint>((resolve) => call.onReadable(resolve));
    kick.write(1n);
    assert.equal(await called, 1n, 'the call eventfd was signalled');
    assert.equal(Buffer.from(ramBytes.subarray(0x11000, 0x11004)).toString(), 'ping');
    assert.equal(ram.getUint16(0x3000 + 2, true), 1, 'used idx');
    assert.equal(ram.getUint32(0x3000 + 8, true), 4, 'used len');

    fe.send({ request: 'GET_VRING_BASE', flags: f(), index: 0 });
    assert.deepEqual(await fe.reply(), { request: 'GET_VRING_BASE', index: 0, num: 1 });
    assert.equal(dev.queue, null, 'the ring stopped');
    call.close();
    fe.sock.destroy();
  });

  it('refuses bad requests with a failed ack and keeps the connection', async () => {
    const { fe, memfd } = connected();
    fe.send({ request: 'SET_PROTOCOL_FEATURES', flags: f(), features: featureMask(ProtocolFeature.REPLY_ACK) });
    // A memory table with two regions but one fd: the codec refuses it; the fd is closed.
    const extra = fs.openSync('/dev/null', 'r');
    fe.send({ request: 'SET_MEM_TABLE', flags: f(true), regions: [
      { guestPhysAddr: 0n, memorySize: 4096n, userspaceAddr: 0n, mmapOffset: 0n },
      { guestPhysAddr: 8192n, memorySize: 4096n, userspaceAddr: 8192n, mmapOffset: 0n },
    ] }, [extra]);
    const r1 = await fe.reply();
    assert.equal(r1.request === 'REPLY_ACK' && r1.status, 1n);
    // A ring that does not exist.
    fe.send({ request: 'SET_VRING_NUM', flags: f(true), index: 5, num: 8 });
    assert.equal((await fe.reply()).request === 'REPLY_ACK', true);
    // A ring size that is not a power of 2.
    fe.send({ request: 'SET_VRING_NUM', flags: f(true), index: 0, num: 6 });
    const r3 = await fe.reply();
    assert.equal(r3.request === 'REPLY_ACK' && r3.status, 1n);
    // Dirty logging is refused.
    fe.send({ request: 'SET_LOG_FD', flags: f(true) }, [memfd]);
    const r4 = await fe.reply();
    assert.equal(r4.request === 'REPLY_ACK' && r4.status, 1n);
    // Still alive.
    fe.send({ request: 'GET_QUEUE_NUM', flags: f() });
    assert.deepEqual(await fe.reply(), { request: 'GET_QUEUE_NUM', queueNum: 1n });
    fe.sock.destroy();
  });

  it('closes only this connection when a message claims an oversized payload', async () => {
    const { fe, be } = connected();
    const bad = Buffer.alloc(12);
    bad.writeUInt32LE(1, 0);
    bad.writeUInt32LE(1, 4);
    bad.writeUInt32LE(1 << 20, 8);
    fe.sock.write(bad);
    await be.finished;
    await assert.rejects(fe.reply(), /closed/);
  });
});
