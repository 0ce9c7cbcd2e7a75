// A scripted vhost-user frontend for tests: negotiates, shares 1 MiB of
// "guest memory" (a memfd) and sets up rings, and lets the test play the
// guest driver by writing descriptors into that memory.
import * as fs from 'node:fs';
import * as sys from '../../src/sys/index.js';
import { VhostUserBackend, type VhostUserDevice } from '../../src/vhost/backend.js';
import { ProtocolFeature, decodeReply, encodeFrontend, featureMask, readHeader, type BackendReply, type FrontendMessage } from '../../src/codecs/vhost-user/index.js';

export const MiB = 1 << 20;
export const UVA = 0x7f00_0000_0000n;
export const f = (needReply = false): { needReply: boolean } => ({ needReply });

export class Frontend {
  private buf = Buffer.alloc(0);
  private waiters: (() => void)[] = [];
  closed = false;
  constructor(readonly sock: sys.FdSocket) {
    sock.on('data', (d: Buffer) => {
      this.buf = Buffer.concat([this.buf, d]);
      this.waiters.splice(0).forEach((w) => w());
    });
    const ended = (): void => {
      this.closed = true;
      this.waiters.splice(0).forEach((w) => w());
    };
    sock.on('end', ended);
    sock.on('close', ended);
  }
  send(m: FrontendMessage, fds: number[] = []): void {
    const bytes = encodeFrontend(m);
    if (fds.length) this.sock.writeWithFds(bytes, fds);
    else this.sock.write(bytes);
  }
  async reply(): Promise<BackendReply> {
    for (;;) {
      const h = readHeader(this.buf);
      if (h && this.buf.length >= 12 + h.size) {
        const msg = this.buf.subarray(0, 12 + h.size);
        this.buf = this.buf.subarray(12 + h.size);
        return decodeReply(Buffer.from(msg));
      }
      if (this.closed) throw new Error('backend closed the connection');
      await new Promise<void>((r) => this.waiters.push(r));
    }
  }
}

/** Ring i lives at guest-physical desc 0x10000*(i+1), avail +0x1000, used +0x2000 (size 8). */
export function ringAt(i: number): { desc: number; avail: number; used: number } {
  const base = 0x10000 * (i + 1);
  return { desc: base, avail: base + 0x1000, used: base + 0x2000 };
}

export interface Guest {
  fe: Frontend;
  be: VhostUserBackend;
  ram: DataView;
  bytes: Uint8Array;
  memfd: number;
  kicks: sys.EventFd[];
  calls: sys.EventFd[];
}

/** Connects a backend for `device` and brings up all its rings (size 8) with the device's features. */
export async function bringUp(device: VhostUserDevice): Promise<Guest> {
  const [a, b] = sys.unixSocketPair();
  const be = new VhostUserBackend(b, device);
  const fe = new Frontend(a);
  const memfd = sys.memfdCreate('prism-vu-test');
  fs.ftruncateSync(memfd, MiB);
  const ab = sys.mmap(memfd, MiB);
  fe.send({ request: 'SET_FEATURES', flags: f(), features: be.offeredFeatures });
  fe.send({ request: 'SET_PROTOCOL_FEATURES', flags: f(), features: featureMask(ProtocolFeature.REPLY_ACK) });
  fe.send({ request: 'SET_MEM_TABLE', flags: f(true), regions: [{ guestPhysAddr: 0n, memorySize: BigInt(MiB), userspaceAddr: UVA, mmapOffset: 0n }] }, [memfd]);
  await fe.reply();
  const kicks: sys.EventFd[] = [];
  const calls: sys.EventFd[] = [];
  for (let i = 0; i < device.queueCount; i++) {
    const r = ringAt(i);
    const kick = new sys.EventFd();
    const call = new sys.EventFd();
    kicks.push(kick);
    calls.push(call);
    fe.send({ request: 'SET_VRING_NUM', flags: f(), index: i, num: 8 });
    fe.send({ request: 'SET_VRING_ADDR', flags: f(), addr: { index: i, flags: 0, descUserAddr: UVA + BigInt(r.desc), usedUserAddr: UVA + BigInt(r.used), availUserAddr: UVA + BigInt(r.avail), logGuestAddr: 0n } });
    fe.send({ request: 'SET_VRING_BASE', flags: f(), index: i, num: 0 });
    fe.send({ request: 'SET_VRING_CALL', flags: f(), index: i, noFd: false }, [call.fd]);
    fe.send({ request: 'SET_VRING_KICK', flags: f(), index: i, noFd: false }, [kick.fd]);
    fe.send({ request: 'SET_VRING_ENABLE', flags: f(true), index: i, enable: true });
    await fe.reply();
  }
  return { fe, be, ram: new DataView(ab), bytes: new Uint8Array(ab), memfd, kicks, calls };
}

/** The driver side: puts one chain of (addr, len, writable) buffers on ring `ring` and publishes it. */
export function offer(g: Guest, ring: number, slot: number, buffers: [addr: number, len: number, writable: boolean][]): void {
  const r = ringAt(ring);
  const first = slot * 2;
  buffers.forEach(([addr, len, writable], k) => {
    const i = first + k;
    const o = r.desc + 16 * i;
    g.ram.setUint32(o, addr, true);
    g.ram.setUint32(o + 4, 0, true);
    g.ram.setUint32(o + 8, len, true);
    g.ram.setUint16(o + 12, (k < buffers.length - 1 ? 1 : 0) | (writable ? 2 : 0), true);
    g.ram.setUint16(o + 14, i + 1, true);
  });
  const idx = g.ram.getUint16(r.avail + 2, true);
  g.ram.setUint16(r.avail + 4 + 2 * (idx % 8), first, true);
  g.ram.setUint16(r.avail + 2, (idx + 1) & 0xffff, true);
}

export function usedIdx(g: Guest, ring: number): number {
  return g.ram.getUint16(ringAt(ring).used + 2, true);
}

/** Disconnects the frontend and closes its eventfds (their pollers would keep the test alive). */
export function shutDown(g: Guest): void {
  g.fe.sock.destroy();
  for (const e of [...g.kicks, ...g.calls]) e.close();
}
