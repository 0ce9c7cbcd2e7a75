// A switch port as a vhost-user virtio-net device (virtio 1.2 §5.1): queue 0
// receives into the guest, queue 1 transmits from it. Offloads (checksum,
// TSO/UFO) are not offered: every frame crosses the switch complete, with a
// zeroed virtio-net header, so no guest can hand another a packet whose
// checksum it never computed. MRG_RXBUF lets a frame span several receive
// buffers.
import type { VhostUserDevice } from '../vhost/backend.js';
import { QueueBroken, scatter, type DescriptorChain, type SplitVirtqueue } from '../vhost/virtqueue.js';
import { VirtioNetFeature, featureMask } from '../codecs/vhost-user/index.js';
import { ETH_MAX, type Switch } from './switch.js';

/** virtio_net_hdr_v1 (12 bytes, with num_buffers): used with VERSION_1. */
export const NET_HDR_SIZE = 12;
export const VIRTIO_NET_F_MRG_RXBUF = 15;
export const VIRTIO_F_VERSION_1 = 32;
const RX = 0;
const TX = 1;

export type Deliver = (port: string, frame: Uint8Array) => boolean;

function gather(chain: DescriptorChain): Uint8Array {
  if (chain.readable.length === 1) return chain.readable[0] as Uint8Array;
  const out = new Uint8Array(chain.readableBytes);
  let at = 0;
  for (const b of chain.readable) {
    out.set(b, at);
    at += b.length;
  }
  return out;
}


export class NetPort implements VhostUserDevice {
  readonly features = featureMask(VIRTIO_F_VERSION_1, VIRTIO_NET_F_MRG_RXBUF, 28 /* INDIRECT_DESC */, 29 /* EVENT_IDX */);
  readonly queueCount = 2;
  readonly featureTable = VirtioNetFeature;
  private rx: { q: SplitVirtqueue; notify: () => void } | null = null;
  private tx: { q: SplitVirtqueue; notify: () => void } | null = null;
  private rxNotifyQueued = false;
  /** The virtio-net header of every received frame: no offloads (flags, gso, csum all zero), only num_buffers. */
  private readonly hdr = new Uint8Array(NET_HDR_SIZE);
  private readonly hdrView = new DataView(this.hdr.buffer);

  constructor(
    readonly name: string,
    private readonly sw: Switch,
    /** Hands a frame to another port; false when it could not take it. */
    private readonly deliver: Deliver,
    private readonly log: (msg: string) => void = () => undefined,
  ) {}

  startQueue(index: number, q: SplitVirtqueue, notify: () => void): void {
    if (index === RX) {
      // Receive buffers are looked for when a frame arrives, never waited for: a kick saying the
      // guest added some would only wake the switch for nothing.
      q.setKicksWanted(false);
      this.rx = { q, notify };
    }
    else if (index === TX) this.tx = { q, notify };
  }

  stopQueue(index: number): void {
    if (index === RX) this.rx = null;
    else if (index === TX) this.tx = null;
  }

  kick(index: number): void {
    if (index === TX) this.transmit();
    // An RX kick means new receive buffers: nothing is queued here, frames are dropped when none are free.
  }

  /** Frames the guest sent: route each through the switch. */
  private transmit(): void {
    const tx = this.tx;
    if (!tx) return;
    try {
      for (let c = tx.q.pop(); c; c = tx.q.pop()) {
        // Size first: a chain may describe up to 4 GiB, which must not become an allocation.
        if (c.readableBytes >= NET_HDR_SIZE && c.readableBytes - NET_HDR_SIZE <= ETH_MAX) {
          const frame = gather(c).subarray(NET_HDR_SIZE);
          for (const dst of this.sw.route(this.name, frame)) {
            this.sw.delivered(dst, frame.length, this.deliver(dst, frame), this.name);
          }
        } else {
          this.sw.route(this.name, new Uint8Array(0)); // counted as a malformed-frame drop
        }
        tx.q.pushUsed(c.head, 0);
      }
    } catch (e) {
      if (!(e instanceof QueueBroken)) throw e;
      this.log(`port ${this.name}: transmit queue broken: ${e.message}`);
      this.tx = null;
    }
    tx.notify();
  }

  /**
   * One interrupt for a burst: frames delivered while another port works through its transmit
   * queue are announced once, after that synchronous loop (a microtask), not once per frame.
   */
  private notifyRxSoon(rx: { notify: () => void }): void {
    if (this.rxNotifyQueued) return;
    this.rxNotifyQueued = true;
    queueMicrotask(() => {
      this.rxNotifyQueued = false;
      if (this.rx === rx) rx.notify();
    });
  }

  /** Puts a frame into the guest's receive buffers; false if it has none free (a drop). */
  receive(frame: Uint8Array): boolean {
    const rx = this.rx;
    if (!rx) return false;
    try {
      const hdr = this.hdr;
      const need = NET_HDR_SIZE + frame.length;
      const chains: DescriptorChain[] = [];
      let room = 0;
      while (room < need) {
        const c = rx.q.pop();
        if (!c) {
          rx.q.unpop(chains.length);
          return false;
        }
        chains.push(c);
        room += c.writableBytes;
      }
      this.hdrView.setUint16(10, chains.length, true); // num_buffers
      let sent = 0;
      chains.forEach((c, i) => {
        let n = 0;
        if (i === 0) n += scatter(c, hdr, 0);
        const part = frame.subarray(sent, sent + (c.writableBytes - n));
        n += scatter(c, part, n);
        sent += part.length;
        rx.q.pushUsed(c.head, n);
      });
      this.notifyRxSoon(rx);
      return true;
    } catch (e) {
      if (!(e instanceof QueueBroken)) throw e;
      this.log(`port ${this.name}: receive queue broken: ${e.message}`);
      this.rx = null;
      return false;
    }
  }
}
