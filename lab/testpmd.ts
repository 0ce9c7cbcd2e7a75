// DPDK's testpmd as a guest-less vhost-user peer: `net_virtio_user` ports are
// frontends (what a VM's virtio-net driver would be, in a process), and
// `net_vhost` ports make testpmd a backend (the reference switch for
// bench/net). No hugepages (--no-huge), no PCI, no shared config, so several
// run side by side as ordinary processes. See ../shared/LAB-FACTS.md.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';

export const TESTPMD = 'dpdk-testpmd';

/** Throws, saying how to install it, when dpdk-testpmd is not on PATH. */
export function requireTestpmd(): void {
  const r = spawnSync(TESTPMD, ['--version'], { stdio: 'ignore' });
  if (r.error) throw new Error(`${TESTPMD} not found (${r.error.message}): run \`bash lab/setup.sh\` or \`apt-get install --no-install-recommends dpdk-dev\``);
}

export type ForwardMode = 'txonly' | 'rxonly' | 'io';

export interface TestpmdOptions {
  /** Unique per process (DPDK's --file-prefix). */
  name: string;
  /** --vdev arguments, e.g. `net_virtio_user0,path=SOCK,queues=1`. */
  vdevs: string[];
  forwardMode: ForwardMode;
  /** The CPU both of testpmd's lcores (main and forwarding) run on. */
  cpu: number;
  /** Frame length for txonly (testpmd --txpkts: the frame without its 4-byte CRC). */
  frameBytes?: number;
  statsPeriodS?: number;
  extraArgs?: string[];
}

export interface PortStats {
  rxPackets: number;
  txPackets: number;
  rxPps: number;
  txPps: number;
}

export interface TestpmdResult {
  /** Final per-port forward statistics, by port number. */
  ports: { rxPackets: number; txPackets: number; txDropped: number }[];
  output: string;
  exitCode: number | null;
}

/** virtio_user frontend port on a vhost-user socket; `server` makes testpmd listen (prism connects). */
export function virtioUser(index: number, socket: string, server = false): string {
  return `net_virtio_user${index},path=${socket},queues=1${server ? ',server=1' : ''}`;
}

/** net_vhost backend port on a vhost-user socket (testpmd listens). */
export function vhostBackend(index: number, socket: string): string {
  return `net_vhost${index},iface=${socket},queues=1`;
}

// testpmd clears the screen before each stats block.
const ANSI_ESCAPE = new RegExp(String.raw`\u001b\[[0-9;]*[A-Za-z]`, 'g');
const STATS_BLOCK = /NIC statistics for port (\d+)[^]*?RX-packets:\s+(\d+)[^]*?TX-packets:\s+(\d+)[^]*?Rx-pps:\s+(\d+)[^]*?Tx-pps:\s+(\d+)/g;
const FINAL_BLOCK = /Forward statistics for port (\d+)[^]*?RX-packets:\s+(\d+)[^]*?TX-packets:\s+(\d+)\s+TX-dropped:\s+(\d+)/g;

export class Testpmd {
  readonly child: ChildProcess;
  private out = '';
  private readonly exited: Promise<number | null>;
  private readonly listeners = new Set<() => void>();

  constructor(readonly opts: TestpmdOptions) {
    const args = [
      '--lcores', `0@${opts.cpu},1@${opts.cpu}`,
      '--no-huge', '--no-shconf', '-m', '1024', '--no-pci', `--file-prefix=${opts.name}`,
      ...opts.vdevs.flatMap((v) => ['--vdev', v]),
      '--',
      `--forward-mode=${opts.forwardMode}`, '--nb-cores=1', '--stats-period', String(opts.statsPeriodS ?? 1),
      ...(opts.frameBytes === undefined ? [] : [`--txpkts=${opts.frameBytes}`]),
      ...(opts.extraArgs ?? []),
    ];
    this.child = spawn(TESTPMD, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    const take = (b: Buffer): void => {
      this.out += b.toString('latin1');
      // Keep the head (start-up) and a tail big enough for several stats blocks.
      if (this.out.length > 4_000_000) this.out = this.out.slice(0, 20_000) + this.out.slice(-200_000);
      for (const l of this.listeners) l();
    };
    this.child.stdout?.on('data', take);
    this.child.stderr?.on('data', take);
    this.exited = new Promise((resolve) => {
      this.child.on('error', (e) => {
        this.out += `\n[spawn error: ${e.message}]\n`;
        resolve(null);
      });
      this.child.on('exit', (code) => resolve(code));
    });
  }

  get output(): string {
    return this.out;
  }

  /** The last lines of output, for assertion messages. */
  tail(lines = 30): string {
    return `testpmd ${this.opts.name}:\n${this.out.replace(ANSI_ESCAPE, '').split('\n').slice(-lines).join('\n')}`;
  }

  /** Resolves when `re` appears in the output; rejects on exit or after timeoutMs. */
  waitFor(re: RegExp, timeoutMs = 30_000): Promise<void> {
    return new Promise((resolve, reject) => {
      const done = (err?: Error): void => {
        clearTimeout(timer);
        this.listeners.delete(check);
        if (err) reject(err);
        else resolve();
      };
      const check = (): void => {
        if (re.test(this.out)) done();
      };
      const timer = setTimeout(() => done(new Error(`timed out after ${timeoutMs} ms waiting for ${re}\n${this.tail()}`)), timeoutMs);
      this.listeners.add(check);
      void this.exited.then((code) => done(new Error(`exited (${code}) before ${re} appeared\n${this.tail()}`)));
      check();
    });
  }

  /** Forwarding has started on every port. */
  started(timeoutMs = 30_000): Promise<void> {
    return this.waitFor(/start packet forwarding/, timeoutMs);
  }

  /** The most recent periodic statistics of a port, or null before the first. */
  latest(port = 0): PortStats | null {
    let last: PortStats | null = null;
    for (const m of this.out.matchAll(STATS_BLOCK)) {
      if (Number(m[1]) === port) last = { rxPackets: Number(m[2]), txPackets: Number(m[3]), rxPps: Number(m[4]), txPps: Number(m[5]) };
    }
    return last;
  }

  /** Stops forwarding (SIGINT, as Ctrl-C) and returns the final statistics; SIGKILL after graceMs. */
  async stop(graceMs = 10_000): Promise<TestpmdResult> {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill('SIGINT');
    const timer = setTimeout(() => this.child.kill('SIGKILL'), graceMs);
    const exitCode = await this.exited;
    clearTimeout(timer);
    const ports: TestpmdResult['ports'] = [];
    for (const m of this.out.matchAll(FINAL_BLOCK)) {
      ports[Number(m[1])] = { rxPackets: Number(m[2]), txPackets: Number(m[3]), txDropped: Number(m[4]) };
    }
    return { ports, output: this.out, exitCode };
  }

  /** Kills the process without waiting for statistics (cleanup paths). */
  kill(): void {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill('SIGKILL');
  }
}
