// The inter-VM Ethernet switch: MAC learning, flooding limited to allowed
// peers, default deny. Pure logic (no I/O): ports hand it frames, it says
// where they go. Policy:
// - Ports named in an `allow` pair (A=B) may exchange frames, both ways
//   (a conversation needs replies).
// - The uplink port (the net VM) may exchange frames with every port.
// - Any other pair is denied: a unicast frame to a MAC learned on a denied
//   port is dropped, and broadcast/multicast/unknown unicast is flooded only
//   to allowed peers.
// - Learning is bounded: at most `maxMacsPerPort` addresses per port and
//   `maxMacs` in all, each forgotten after `ageMs` without traffic, so a
//   guest sending from random source MACs cannot grow the table.

export interface PortCounters {
  rxPackets: number;
  rxBytes: number;
  txPackets: number;
  txBytes: number;
  /** Frames from this port dropped: denied by policy, malformed, or the destination had no room. */
  drops: number;
}

export interface SwitchOptions {
  allow?: [string, string][];
  uplink?: string;
  maxMacs?: number;
  maxMacsPerPort?: number;
  ageMs?: number;
  now?: () => number;
}

interface MacEntry {
  port: string;
  seen: number;
}

export const ETH_HEADER = 14;
export const ETH_MIN = 14;
export const ETH_MAX = 65535 + ETH_HEADER;

function macKey(frame: Uint8Array, offset: number): number {
  // 48 bits fit exactly in a JS number.
  return (
    ((frame[offset] ?? 0) * 2 ** 40) + ((frame[offset + 1] ?? 0) * 2 ** 32) + ((frame[offset + 2] ?? 0) * 2 ** 24) +
    ((frame[offset + 3] ?? 0) << 16 | (frame[offset + 4] ?? 0) << 8 | (frame[offset + 5] ?? 0))
  );
}

const isMulticast = (frame: Uint8Array, offset: number): boolean => ((frame[offset] ?? 0) & 1) === 1;

export function formatMac(key: number): string {
  const parts: string[] = [];
  for (let i = 5; i >= 0; i--) parts.push((Math.floor(key / 2 ** (8 * i)) & 0xff).toString(16).padStart(2, '0'));
  return parts.join(':');
}

export class Switch {
  private readonly ports = new Map<string, PortCounters>();
  private readonly peers = new Map<string, Set<string>>();
  private readonly macs = new Map<number, MacEntry>();
  private readonly macsPerPort = new Map<string, number>();
  readonly uplink: string | undefined;
  private readonly maxMacs: number;
  private readonly maxMacsPerPort: number;
  private readonly ageMs: number;
  private readonly now: () => number;

  constructor(portNames: string[], opts: SwitchOptions = {}) {
    for (const p of portNames) {
      if (this.ports.has(p)) throw new Error(`port ${JSON.stringify(p)} is named twice`);
      this.ports.set(p, { rxPackets: 0, rxBytes: 0, txPackets: 0, txBytes: 0, drops: 0 });
      this.peers.set(p, new Set());
      this.macsPerPort.set(p, 0);
    }
    this.uplink = opts.uplink;
    if (this.uplink !== undefined && !this.ports.has(this.uplink)) throw new Error(`--uplink ${this.uplink} is not one of the ports`);
    for (const [a, b] of opts.allow ?? []) {
      for (const p of [a, b]) if (!this.ports.has(p)) throw new Error(`--allow ${a}=${b}: ${p} is not one of the ports`);
      if (a === b) throw new Error(`--allow ${a}=${b}: a port always reaches itself`);
      this.peers.get(a)?.add(b);
      this.peers.get(b)?.add(a);
    }
    if (this.uplink !== undefined) {
      for (const p of this.ports.keys()) {
        if (p === this.uplink) continue;
        this.peers.get(p)?.add(this.uplink);
        this.peers.get(this.uplink)?.add(p);
      }
    }
    this.maxMacs = opts.maxMacs ?? 4096;
    this.maxMacsPerPort = opts.maxMacsPerPort ?? 64;
    this.ageMs = opts.ageMs ?? 300_000;
    this.now = opts.now ?? Date.now;
  }

  portNames(): string[] {
    return [...this.ports.keys()];
  }

  counters(port: string): PortCounters | undefined {
    return this.ports.get(port);
  }

  /** May `a` send to `b`? */
  allowed(a: string, b: string): boolean {
    return this.peers.get(a)?.has(b) ?? false;
  }

  /** The learned MAC table (for status output). */
  macTable(): { mac: string; port: string; ageMs: number }[] {
    const t = this.now();
    return [...this.macs].map(([k, e]) => ({ mac: formatMac(k), port: e.port, ageMs: t - e.seen }));
  }

  private learn(port: string, src: number, t: number): void {
    const e = this.macs.get(src);
    if (e) {
      if (e.port !== port) {
        this.macsPerPort.set(e.port, (this.macsPerPort.get(e.port) ?? 1) - 1);
        if ((this.macsPerPort.get(port) ?? 0) >= this.maxMacsPerPort) {
          this.macs.delete(src);
          return;
        }
        e.port = port;
        this.macsPerPort.set(port, (this.macsPerPort.get(port) ?? 0) + 1);
      }
      e.seen = t;
      return;
    }
    if ((this.macsPerPort.get(port) ?? 0) >= this.maxMacsPerPort) return;
    if (this.macs.size >= this.maxMacs) this.expire(t);
    if (this.macs.size >= this.maxMacs) return;
    this.macs.set(src, { port, seen: t });
    this.macsPerPort.set(port, (this.macsPerPort.get(port) ?? 0) + 1);
  }

  /** Forgets entries older than the ageing time. */
  expire(t = this.now()): void {
    for (const [k, e] of this.macs) {
      if (t - e.seen > this.ageMs) {
        this.macs.delete(k);
        this.macsPerPort.set(e.port, (this.macsPerPort.get(e.port) ?? 1) - 1);
      }
    }
  }

  /**
   * Where a frame from `port` goes: the ports to deliver it to (possibly none).
   * `frame` starts at the Ethernet header (no virtio-net header).
   */
  route(port: string, frame: Uint8Array): string[] {
    const c = this.ports.get(port);
    if (!c) throw new Error(`unknown port ${port}`);
    c.rxPackets++;
    c.rxBytes += frame.length;
    if (frame.length < ETH_MIN || frame.length > ETH_MAX) {
      c.drops++;
      return [];
    }
    const t = this.now();
    if (!isMulticast(frame, 6)) this.learn(port, macKey(frame, 6), t);
    const allowedPeers = this.peers.get(port) ?? new Set<string>();
    if (!isMulticast(frame, 0)) {
      const e = this.macs.get(macKey(frame, 0));
      if (e && t - e.seen <= this.ageMs) {
        if (e.port === port) return []; // it is on the sender's own segment
        if (!allowedPeers.has(e.port)) {
          c.drops++;
          return [];
        }
        return [e.port];
      }
    }
    // Broadcast, multicast or unknown unicast: flood to allowed peers only. A frame
    // that may go nowhere is a policy drop.
    if (allowedPeers.size === 0) c.drops++;
    return [...allowedPeers];
  }

  /** Records a delivery (or a failed one) on the destination port's counters. */
  delivered(port: string, bytes: number, ok: boolean, from?: string): void {
    const c = this.ports.get(port);
    if (!c) return;
    if (ok) {
      c.txPackets++;
      c.txBytes += bytes;
    } else if (from !== undefined) {
      const src = this.ports.get(from);
      if (src) src.drops++;
    }
  }
}
