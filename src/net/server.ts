// The switch as a service: one vhost-user socket per port (DIR/NAME.sock,
// where the VMM connects), one backend per connection, frames routed by the
// Switch's policy. A VMM that reconnects (QEMU reconnect=1, a restarted VM)
// replaces its port's previous connection. Counters are written to
// DIR/status.json once a second for `prism net status`.
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as sys from '../sys/index.js';
import { VhostUserBackend, type BackendLog } from '../vhost/backend.js';
import { NetPort } from './port.js';
import { Switch, type SwitchOptions } from './switch.js';

export interface NetSwitchOptions extends SwitchOptions {
  dir: string;
  ports: string[];
  log?: BackendLog;
  /** How often status.json is rewritten (ms); 0 disables it. */
  statusIntervalMs?: number;
}

export interface PortStatus {
  name: string;
  socket: string;
  connected: boolean;
  rxPackets: number;
  rxBytes: number;
  txPackets: number;
  txBytes: number;
  drops: number;
}

const PORT_NAME = /^[A-Za-z0-9_.-]{1,64}$/;

export class NetSwitchServer {
  readonly sw: Switch;
  private readonly ports = new Map<string, NetPort>();
  private readonly listeners: sys.FdListener[] = [];
  private readonly backends = new Map<string, VhostUserBackend>();
  private readonly streams = new Map<string, sys.FdSocket>();
  private timer: NodeJS.Timeout | null = null;
  private readonly log: BackendLog;

  constructor(private readonly opts: NetSwitchOptions) {
    for (const p of opts.ports) {
      if (!PORT_NAME.test(p)) throw new Error(`port name ${JSON.stringify(p)} must be 1-64 letters, digits, '.', '_' or '-' (it names DIR/NAME.sock)`);
    }
    this.sw = new Switch(opts.ports, opts);
    this.log = opts.log ?? (() => undefined);
    const deliver = (port: string, frame: Uint8Array): boolean => this.ports.get(port)?.receive(frame) ?? false;
    for (const p of opts.ports) this.ports.set(p, new NetPort(p, this.sw, deliver, (m) => this.log('warn', m)));
  }

  socketPath(port: string): string {
    return path.join(this.opts.dir, `${port}.sock`);
  }

  /** Creates DIR/NAME.sock for every port and starts accepting VMMs. */
  start(): void {
    if (!fs.existsSync(this.opts.dir)) throw new Error(`the directory ${this.opts.dir} does not exist: create it first`);
    for (const name of this.ports.keys()) {
      const sock = this.socketPath(name);
      // A socket file left by an earlier switch (no one can be listening: we own DIR) is replaced.
      if (fs.existsSync(sock) && fs.lstatSync(sock).isSocket()) fs.rmSync(sock);
      const l = sys.listenUnix(sock);
      this.listeners.push(l);
      l.on('connection', (s: sys.FdSocket) => this.attach(name, s));
      l.on('error', (e: Error) => this.log('warn', `port ${name}: accept failed: ${e.message}`));
    }
    const every = this.opts.statusIntervalMs ?? 1000;
    if (every > 0) {
      this.writeStatus();
      this.timer = setInterval(() => this.writeStatus(), every);
      this.timer.unref();
    }
  }

  private attach(name: string, s: sys.FdSocket): void {
    const old = this.streams.get(name);
    if (old) {
      this.log('info', `port ${name}: a new VMM connection replaces the old one`);
      old.destroy();
    }
    const port = this.ports.get(name) as NetPort;
    const be = new VhostUserBackend(s, port, (level, msg, fields) => this.log(level, `port ${name}: ${msg}`, fields));
    this.streams.set(name, s);
    this.backends.set(name, be);
    this.log('info', `port ${name}: VMM connected`);
    void be.finished.then(() => {
      if (this.backends.get(name) === be) {
        this.backends.delete(name);
        this.streams.delete(name);
      }
    });
  }

  status(): PortStatus[] {
    return [...this.ports.keys()].map((name) => {
      const c = this.sw.counters(name);
      return {
        name,
        socket: this.socketPath(name),
        connected: this.backends.has(name),
        rxPackets: c?.rxPackets ?? 0,
        rxBytes: c?.rxBytes ?? 0,
        txPackets: c?.txPackets ?? 0,
        txBytes: c?.txBytes ?? 0,
        drops: c?.drops ?? 0,
      };
    });
  }

  private writeStatus(): void {
    const file = path.join(this.opts.dir, 'status.json');
    const tmp = `${file}.tmp`;
    try {
      fs.writeFileSync(tmp, JSON.stringify({ pid: process.pid, time: new Date().toISOString(), uplink: this.sw.uplink ?? null, ports: this.status() }));
      fs.renameSync(tmp, file);
    } catch (e) {
      this.log('warn', `cannot write ${file}: ${(e as Error).message}`);
    }
  }

  async close(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    for (const l of this.listeners) l.close();
    for (const name of this.ports.keys()) fs.rmSync(this.socketPath(name), { force: true });
    const all = [...this.backends.values()];
    for (const s of this.streams.values()) s.destroy();
    await Promise.all(all.map((b) => b.finished));
    this.writeStatus();
  }
}
