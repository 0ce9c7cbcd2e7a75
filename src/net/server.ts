// The switch as a service: one vhost-user endpoint per port, frames routed by
// the Switch's policy. A port either listens on DIR/NAME.sock (the VMM
// connects) or, in client mode, connects to a socket the VMM listens on (QEMU
// `server=on`); either way a VMM that reconnects gets its port back and the
// other ports carry on (src/vhost/endpoint.ts). Counters and the features
// each port negotiated are written to DIR/status.json once a second for
// `prism net status`.
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { BackendLog } from '../vhost/backend.js';
import { VhostUserEndpoint } from '../vhost/endpoint.js';
import { NetPort } from './port.js';
import { Switch, type SwitchOptions } from './switch.js';

export interface NetSwitchOptions extends SwitchOptions {
  dir: string;
  ports: string[];
  /** Ports served in client mode: port name → the socket its VMM listens on. */
  connect?: Record<string, string>;
  log?: BackendLog;
  /** How often status.json is rewritten (ms); 0 disables it. */
  statusIntervalMs?: number;
  /** Client mode: delay between connection attempts (ms). */
  retryMs?: number;
}

export interface PortStatus {
  name: string;
  socket: string;
  mode: 'listen' | 'connect';
  connected: boolean;
  /** VMM connections so far. */
  sessions: number;
  /** What the live connection negotiated (empty when not connected). */
  features: string[];
  protocolFeatures: string[];
  rxPackets: number;
  rxBytes: number;
  txPackets: number;
  txBytes: number;
  drops: number;
}

const PORT_NAME = /^[A-Za-z0-9_.-]{1,64}$/;

export class NetSwitchServer {
  readonly sw: Switch;
  private readonly endpoints = new Map<string, VhostUserEndpoint>();
  private timer: NodeJS.Timeout | null = null;
  private readonly log: BackendLog;

  constructor(private readonly opts: NetSwitchOptions) {
    for (const p of opts.ports) {
      if (!PORT_NAME.test(p)) throw new Error(`port name ${JSON.stringify(p)} must be 1-64 letters, digits, '.', '_' or '-' (it names DIR/NAME.sock)`);
    }
    for (const p of Object.keys(opts.connect ?? {})) {
      if (!opts.ports.includes(p)) throw new Error(`client-mode port ${JSON.stringify(p)} is not one of the switch's ports`);
    }
    this.sw = new Switch(opts.ports, opts);
    this.log = opts.log ?? (() => undefined);
    const ports = new Map<string, NetPort>();
    const deliver = (port: string, frame: Uint8Array): boolean => ports.get(port)?.receive(frame) ?? false;
    for (const name of opts.ports) {
      const port = new NetPort(name, this.sw, deliver, (m) => this.log('warn', `port ${name}: ${m}`));
      ports.set(name, port);
      const target = opts.connect?.[name];
      const log: BackendLog = (level, msg, fields) => this.log(level, `port ${name}: ${msg}`, fields);
      const ep = new VhostUserEndpoint(
        target === undefined ? { path: this.socketPath(name), mode: 'listen', log } : { path: target, mode: 'connect', log, retryMs: opts.retryMs },
        port,
      );
      this.endpoints.set(name, ep);
    }
  }

  /** The vhost-user socket of a port: DIR/NAME.sock, or the VMM's socket in client mode. */
  socketPath(port: string): string {
    return this.opts.connect?.[port] ?? path.join(this.opts.dir, `${port}.sock`);
  }

  /** Creates DIR/NAME.sock for every listening port, starts connecting the client-mode ones. */
  start(): void {
    if (!fs.existsSync(this.opts.dir)) throw new Error(`the directory ${this.opts.dir} does not exist: create it first`);
    for (const ep of this.endpoints.values()) ep.start();
    const every = this.opts.statusIntervalMs ?? 1000;
    if (every > 0) {
      this.writeStatus();
      this.timer = setInterval(() => this.writeStatus(), every);
      this.timer.unref();
    }
  }

  status(): PortStatus[] {
    return [...this.endpoints].map(([name, ep]) => {
      const c = this.sw.counters(name);
      const neg = ep.backend?.negotiated() ?? { features: [], protocolFeatures: [] };
      return {
        name,
        socket: ep.path,
        mode: ep.mode,
        connected: ep.backend !== null,
        sessions: ep.sessions,
        ...neg,
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
    await Promise.all([...this.endpoints.values()].map((ep) => ep.close()));
    this.writeStatus();
  }
}
