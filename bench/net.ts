// Throughput bench: prism's vhost-user net switch against DPDK's own vhost backend, in one run,
// interleaved (prism, DPDK, DPDK, prism, ...), reporting every round and the median.
//
//   prism side:  dpdk-testpmd txonly ─► a.sock ─ prism net switch (child process) ─ b.sock ─► dpdk-testpmd rxonly
//   DPDK side:   dpdk-testpmd txonly ─► a.sock ─ dpdk-testpmd net_vhost0/1, io forward ─ b.sock ─► dpdk-testpmd rxonly
//
// Both sides use the same pair of virtio_user frontends (one function runs them against any two
// sockets). The rate is the receiver's RX-packets delta over a steady window: the first --warmup
// seconds after the first frame reaches the receiver are discarded, the next --seconds are
// measured. CPU placement: sender on CPU 0, receiver on CPU 1 (each testpmd's main and forwarding
// lcore share its CPU); the backend under test (prism's node process, or DPDK's backend whose lcores
// may run on either CPU) gets what the two busy-polling frontends leave: 3 processes on 2 CPUs on
// both sides.
//
//   node --import tsx bench/net.ts [--quick] [--seconds N] [--warmup N] [--rounds N] [--sizes 64,1500] [--keep]
//
// Needs dpdk-testpmd (apt-get install --no-install-recommends dpdk-dev).
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { parseArgs } from 'node:util';
import type { PortStatus } from '../src/net/server.js';
import { REPO, cpuSeconds, machineBusySeconds, median, sleep } from './common.js';

const TESTPMD_INSTALL = 'apt-get install --no-install-recommends dpdk-dev';

// --- options -------------------------------------------------------------------------------------

const { values: opt } = parseArgs({
  options: {
    quick: { type: 'boolean', default: false },
    seconds: { type: 'string' },
    warmup: { type: 'string' },
    rounds: { type: 'string' },
    sizes: { type: 'string', default: '64,1500' },
    keep: { type: 'boolean', default: false },
    help: { type: 'boolean', short: 'h', default: false },
  },
});
if (opt.help) {
  process.stdout.write(
    'usage: node --import tsx bench/net.ts [--quick] [--seconds N] [--warmup N] [--rounds N] [--sizes 64,1500] [--keep]\n' +
      '  --quick        1 round, 2 s warm-up, 4 s window (smoke test)\n' +
      '  --seconds N    measured window per run (default 8)\n' +
      '  --warmup N     seconds discarded after the first frame reaches the receiver (default 3)\n' +
      '  --rounds N     interleaved rounds per side and size, median reported (default 2)\n' +
      '  --sizes LIST   frame sizes in bytes as testpmd --txpkts takes them (Ethernet frame without FCS; 42-2048)\n' +
      '  --keep         keep the temp dir (sockets, status.json) and print where it is\n',
  );
  process.exit(0);
}

function positive(name: string, v: string | undefined, dflt: number, integer: boolean): number {
  if (v === undefined) return dflt;
  const n = Number(v);
  if (!(n > 0) || (integer && !Number.isInteger(n))) throw new Error(`--${name} must be a positive ${integer ? 'integer' : 'number'}, got ${v}`);
  return n;
}

const quick = opt.quick;
const cfg = {
  seconds: positive('seconds', opt.seconds, quick ? 4 : 8, false),
  warmup: positive('warmup', opt.warmup, quick ? 2 : 3, false),
  rounds: positive('rounds', opt.rounds, quick ? 1 : 2, true),
  sizes: opt.sizes.split(',').map((s) => {
    const n = Number(s.trim());
    // testpmd's txonly needs Ethernet + IPv4 + UDP headers (42 B) and one mbuf (2048 B of data).
    if (!Number.isInteger(n) || n < 42 || n > 2048) throw new Error(`--sizes: ${JSON.stringify(s)} is not a frame size in 42..2048`);
    return n;
  }),
  startupMs: 60_000,
  firstFrameMs: 30_000,
};

/** Where each process runs (testpmd --lcores: lcore@cpuset; lcore 0 is the main one, 1 forwards). */
const LCORES = {
  sender: '0@0,1@0',
  receiver: '0@1,1@1',
  /** The DPDK backend floats over both CPUs, as the kernel lets prism's node process do. */
  dpdkBackend: '0@(0,1),1@(0,1)',
};

const log = (msg: string): void => {
  process.stderr.write(`[bench ${new Date().toISOString().slice(11, 19)}] ${msg}\n`);
};

// --- helpers -------------------------------------------------------------------------------------

function findTestpmd(): string | null {
  for (const dir of (process.env.PATH ?? '/usr/bin').split(':')) {
    const p = path.join(dir || '.', 'dpdk-testpmd');
    try {
      fs.accessSync(p, fs.constants.X_OK);
      return p;
    } catch {
      // not here
    }
  }
  return null;
}

/** DPDK's runtime directory for a --file-prefix (EAL creates it even with --no-shconf). */
function dpdkRuntimeDir(prefix: string): string {
  const base = process.getuid?.() === 0 ? '/var/run' : (process.env.XDG_RUNTIME_DIR ?? '/tmp');
  return path.join(base, 'dpdk', prefix);
}

// --- child processes (only these are ever killed) ------------------------------------------------

/** One testpmd "NIC statistics for port N" block, stamped when its last line arrived. */
interface PortSample {
  t: number;
  rxPackets: number;
  txPackets: number;
}

/** testpmd's final "Forward statistics for port N" block. */
interface ForwardTotals {
  rx: number;
  rxDropped: number;
  tx: number;
  txDropped: number;
}

const ESC = String.fromCharCode(27);
const ANSI = new RegExp(`${ESC}\\[[0-9;]*[A-Za-z]`, 'g');
const KEEP_LINES = 20_000;
const children = new Set<Proc>();

/** A child process whose output is kept as lines and parsed for testpmd's periodic statistics. */
class Proc {
  readonly child: ChildProcess;
  readonly lines: string[] = [];
  /** Periodic NIC statistics, per port index. */
  readonly samples: PortSample[][] = [];
  private statsPort: number | null = null;
  private statsRx = 0;

  constructor(
    readonly name: string,
    cmd: string,
    args: string[],
    opts: { cwd?: string; env?: NodeJS.ProcessEnv } = {},
  ) {
    this.child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], ...opts });
    children.add(this);
    this.child.once('exit', () => children.delete(this));
    this.child.once('error', (e) => this.lines.push(`[bench] cannot start ${cmd}: ${e.message}`));
    for (const stream of [this.child.stdout, this.child.stderr]) {
      let partial = '';
      stream?.setEncoding('utf8');
      stream?.on('data', (chunk: string) => {
        const parts = (partial + chunk).split('\n');
        partial = parts.pop() ?? '';
        for (const l of parts) this.onLine(l.replace(ANSI, ''));
      });
    }
  }

  get alive(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null && this.child.pid !== undefined;
  }

  get pid(): number {
    return this.child.pid ?? -1;
  }

  cpuSeconds(): number {
    return cpuSeconds(this.pid);
  }

  /** The latest periodic sample of a port. */
  last(port = 0): PortSample | undefined {
    const s = this.samples[port];
    return s?.[s.length - 1];
  }

  tail(n = 15): string {
    return this.lines.slice(-n).map((l) => `    ${l}`).join('\n');
  }

  private onLine(line: string): void {
    this.lines.push(line);
    if (this.lines.length > KEEP_LINES) this.lines.splice(0, this.lines.length - KEEP_LINES);
    const head = /NIC statistics for port (\d+)/.exec(line);
    if (head) {
      this.statsPort = Number(head[1]);
      return;
    }
    if (this.statsPort === null) return;
    const rx = /^\s*RX-packets:\s*(\d+)/.exec(line);
    if (rx) this.statsRx = Number(rx[1]);
    const tx = /^\s*TX-packets:\s*(\d+)/.exec(line);
    if (tx) {
      const port = this.statsPort;
      (this.samples[port] ??= []).push({ t: performance.now(), rxPackets: this.statsRx, txPackets: Number(tx[1]) });
      this.statsPort = null;
    }
  }

  /** Totals of testpmd's last "Forward statistics for port N" block (printed when it stops). */
  forwardTotals(port: number): ForwardTotals | undefined {
    const at = this.lines.findLastIndex((l) => l.includes(`Forward statistics for port ${port} `));
    if (at < 0) return undefined;
    const rx = /RX-packets:\s*(\d+)\s+RX-dropped:\s*(\d+)/.exec(this.lines[at + 1] ?? '');
    const tx = /TX-packets:\s*(\d+)\s+TX-dropped:\s*(\d+)/.exec(this.lines[at + 2] ?? '');
    if (!rx || !tx) return undefined;
    return { rx: Number(rx[1]), rxDropped: Number(rx[2]), tx: Number(tx[1]), txDropped: Number(tx[2]) };
  }

  /** Sends `signal`, SIGKILL after `graceMs`; resolves once the process is gone. */
  async stop(signal: NodeJS.Signals, graceMs = 10_000): Promise<void> {
    if (!this.alive) return;
    const exited = new Promise<void>((r) => this.child.once('exit', () => r()));
    this.child.kill(signal);
    const t = setTimeout(() => {
      log(`${this.name} did not stop on ${signal} within ${graceMs / 1000} s: SIGKILL`);
      this.child.kill('SIGKILL');
    }, graceMs);
    await exited;
    clearTimeout(t);
  }
}

function killAllNow(): void {
  for (const p of children) if (p.alive) p.child.kill('SIGKILL');
}

/**
 * Polls `check` until it returns a value; fails with the last lines of every watched process if
 * one of them exits first or `timeoutMs` passes.
 */
async function waitFor<T>(what: string, check: () => T | undefined, timeoutMs: number, watch: Proc[]): Promise<T> {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    const v = check();
    if (v !== undefined) return v;
    const dead = watch.find((p) => !p.alive);
    const why = dead ? `${dead.name} exited (${String(dead.child.exitCode ?? dead.child.signalCode)})` : performance.now() > deadline ? `timed out after ${timeoutMs / 1000} s` : null;
    if (why) {
      const tails = watch.map((p) => `  last lines of ${p.name} (pid ${p.pid}):\n${p.tail()}`).join('\n');
      throw new Error(`waiting for ${what}: ${why}\n${tails}`);
    }
    await sleep(100);
  }
}

/** Other dpdk-testpmd processes on the machine (not ours): they compete for the same 2 CPUs. */
function foreignTestpmds(): number[] {
  const ours = new Set([...children].map((p) => p.pid));
  const out: number[] = [];
  for (const e of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(e) || ours.has(Number(e))) continue;
    try {
      if (fs.readFileSync(`/proc/${e}/comm`, 'utf8').trim() === 'dpdk-testpmd') out.push(Number(e));
    } catch {
      // gone
    }
  }
  return out;
}

// --- testpmd -------------------------------------------------------------------------------------

let testpmdPath = '';
const prefixes: string[] = [];

function startTestpmd(name: string, lcores: string, vdevs: string[], appArgs: string[]): Proc {
  const prefix = `pnb${process.pid}x${prefixes.length}`;
  prefixes.push(prefix);
  const eal = ['--lcores', lcores, '--no-huge', '--no-shconf', '-m', '1024', '--no-pci', `--file-prefix=${prefix}`, ...vdevs.flatMap((v) => ['--vdev', v])];
  return new Proc(name, testpmdPath, [...eal, '--', ...appArgs, '--nb-cores=1', '--stats-period', '1']);
}

type Role = 'sender' | 'receiver';

function startFrontend(role: Role, sock: string, frameBytes: number): Proc {
  const mode = role === 'sender' ? ['--forward-mode=txonly', `--txpkts=${frameBytes}`] : ['--forward-mode=rxonly'];
  return startTestpmd(role, LCORES[role], [`net_virtio_user0,path=${sock},queues=1`], mode);
}

// --- the two backends ----------------------------------------------------------------------------

type Side = 'prism' | 'dpdk';
const SIDES: Side[] = ['prism', 'dpdk'];
const SIDE_NAME: Record<Side, string> = { prism: 'prism', dpdk: 'DPDK' };
type Port = 'a' | 'b';
const PORT_INDEX: Record<Port, number> = { a: 0, b: 1 };

/** What the frontends counted, from their final forward statistics. */
interface FrontendTotals {
  sent: number;
  sendRingFull: number;
  received: number;
}

interface Backend {
  readonly proc: Proc;
  socket(port: Port): string;
  /** Resolves once the backend listens on both sockets. */
  ready(): Promise<void>;
  /** Resolves once the backend has taken the frontend on `port` (rings set up, as far as it says). */
  portReady(port: Port, frontend: Proc): Promise<void>;
  /** Stops the backend; returns its own counters set against the frontends' (a sanity check). */
  stop(fe: FrontendTotals | undefined): Promise<string[]>;
}

function readStatus(dir: string): { ports: PortStatus[] } | undefined {
  try {
    return JSON.parse(fs.readFileSync(path.join(dir, 'status.json'), 'utf8')) as { ports: PortStatus[] };
  } catch {
    return undefined; // not written yet, or being replaced
  }
}

const count = (n: number): string => n.toLocaleString('en-US');
/** "N = M", or the difference (frames still in a ring when a frontend stopped). */
const versus = (a: number, b: number): string => `${count(a)} ${a === b ? '=' : `(${a > b ? '+' : '−'}${count(Math.abs(a - b))} in a ring at stop) ≈`} ${count(b)}`;

function prismBackend(dir: string): Backend {
  const args = ['--import', 'tsx', path.join(REPO, 'src/cli/main.ts'), 'net', 'switch', '--dir', dir, '--port', 'a', '--port', 'b', '--allow', 'a=b'];
  const proc = new Proc('prism switch', process.execPath, args, { cwd: REPO, env: { ...process.env, PRISM_LOG_LEVEL: 'info' } });
  const socket = (p: Port): string => path.join(dir, `${p}.sock`);
  return {
    proc,
    socket,
    ready: async () => {
      await waitFor('the switch to listen', () => (proc.lines.some((l) => l.includes('switch running')) ? true : undefined), cfg.startupMs, [proc]);
    },
    portReady: async (port, frontend) => {
      const connected = (): true | undefined => (readStatus(dir)?.ports.find((p) => p.name === port)?.connected ? true : undefined);
      await waitFor(`port ${port} to show connected in status.json`, connected, cfg.startupMs, [proc, frontend]);
    },
    stop: async (fe) => {
      await proc.stop('SIGTERM'); // the switch writes status.json once more as it closes
      const ports = readStatus(dir)?.ports;
      if (!ports) return ['status.json: missing'];
      const lines = ports.map((p) => `status.json port ${p.name}: rx ${count(p.rxPackets)} pkts, tx ${count(p.txPackets)} pkts, drops ${count(p.drops)}`);
      const a = ports.find((p) => p.name === 'a');
      const b = ports.find((p) => p.name === 'b');
      if (fe && a && b) {
        lines.push(
          `sent by the sender ${versus(fe.sent, a.rxPackets)} port a rx; port b tx ${versus(b.txPackets, fe.received)} received; ` +
            `switch drops ${(a.drops / Math.max(1, a.rxPackets) * 100).toFixed(1)}% of a rx (b had no free receive buffer)`,
        );
      }
      return lines;
    },
  };
}

function dpdkBackend(dir: string): Backend {
  const socket = (p: Port): string => path.join(dir, `${p}.sock`);
  const vdevs = (['a', 'b'] as Port[]).map((p) => `net_vhost${PORT_INDEX[p]},iface=${socket(p)},queues=1`);
  const proc = startTestpmd('DPDK vhost backend', LCORES.dpdkBackend, vdevs, ['--forward-mode=io']);
  return {
    proc,
    socket,
    ready: async () => {
      const listening = (): true | undefined => (proc.last(1) && fs.existsSync(socket('a')) && fs.existsSync(socket('b')) ? true : undefined);
      await waitFor('the DPDK backend to listen', listening, cfg.startupMs, [proc]);
    },
    portReady: async (port, frontend) => {
      const up = `Port ${PORT_INDEX[port]}: link state change event`;
      await waitFor(`the DPDK backend's port ${port} link to come up`, () => (proc.lines.some((l) => l.includes(up)) ? true : undefined), cfg.startupMs, [proc, frontend]);
    },
    stop: async (fe) => {
      await proc.stop('SIGINT');
      const a = proc.forwardTotals(PORT_INDEX.a);
      const b = proc.forwardTotals(PORT_INDEX.b);
      if (!a || !b) return ['backend forward statistics: missing'];
      const lines = [`backend port a: rx ${count(a.rx)} pkts; port b: tx ${count(b.tx)} pkts, tx-dropped ${count(b.txDropped)} (b had no free receive buffer)`];
      if (fe) lines.push(`sent by the sender ${versus(fe.sent, a.rx)} port a rx; port b tx ${versus(b.tx, fe.received)} received`);
      return lines;
    },
  };
}

// --- one run: a frontend pair against a backend ---------------------------------------------------

/** Per wall second over the window: CPU seconds, and write syscalls (a frontend's ring kicks are eventfd writes). */
interface Usage {
  backend: number;
  sender: number;
  receiver: number;
  /** Everything else on the machine (other people's processes included), in CPUs. */
  others: number;
  senderWrites: number;
  receiverWrites: number;
}

interface RunResult {
  side: Side;
  size: number;
  round: number;
  rxPps: number;
  txPps: number;
  /** Frames the sender got into its ring that never reached the receiver, over the window. */
  drop: number;
  usage: Usage;
  /** Share of the window the backend's busiest thread spent on each CPU. */
  placement: number[];
  checks: string[];
  foreign: number;
}

/** Rate of a counter between the first samples at or after t0 and t1 (per second). */
function rate(samples: PortSample[] | undefined, t0: number, t1: number, key: 'rxPackets' | 'txPackets'): number {
  const s0 = samples?.find((s) => s.t >= t0);
  const s1 = samples?.find((s) => s.t >= t1);
  if (!s0 || !s1 || s1.t <= s0.t) return NaN;
  return ((s1[key] - s0[key]) * 1000) / (s1.t - s0.t);
}

/** Write syscalls of a process so far (/proc/PID/io syscw); NaN once it is gone. */
function writeSyscalls(pid: number): number {
  try {
    return Number(/^syscw:\s*(\d+)/m.exec(fs.readFileSync(`/proc/${pid}/io`, 'utf8'))?.[1] ?? NaN);
  } catch {
    return NaN;
  }
}

interface Snapshot {
  wall: number;
  cpu: [backend: number, sender: number, receiver: number];
  writes: [sender: number, receiver: number];
  machine: number;
  self: number;
}

function snapshot(backend: Proc, sender: Proc, receiver: Proc): Snapshot {
  const u = process.cpuUsage();
  return {
    wall: performance.now(),
    cpu: [backend.cpuSeconds(), sender.cpuSeconds(), receiver.cpuSeconds()],
    writes: [writeSyscalls(sender.pid), writeSyscalls(receiver.pid)],
    machine: machineBusySeconds(),
    self: (u.user + u.system) / 1e6,
  };
}

function usage(a: Snapshot, b: Snapshot): Usage {
  const wall = (b.wall - a.wall) / 1000;
  const per = (x: number, y: number): number => (y - x) / wall;
  const [backend, sender, receiver] = [per(a.cpu[0], b.cpu[0]), per(a.cpu[1], b.cpu[1]), per(a.cpu[2], b.cpu[2])];
  const others = Math.max(0, per(a.machine, b.machine) - per(a.self, b.self) - backend - sender - receiver);
  return { backend, sender, receiver, others, senderWrites: per(a.writes[0], b.writes[0]), receiverWrites: per(a.writes[1], b.writes[1]) };
}

/** The CPU the busiest thread of a process (its data path) last ran on, from /proc/PID/task/TID/stat. */
function busiestThreadCpu(pid: number): number | undefined {
  let best: { cpu: number; time: number } | undefined;
  try {
    for (const tid of fs.readdirSync(`/proc/${pid}/task`)) {
      const stat = fs.readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8');
      const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' '); // rest[i] is field i + 3
      const time = Number(rest[11]) + Number(rest[12]);
      if (!best || time > best.time) best = { cpu: Number(rest[36]), time };
    }
  } catch {
    return undefined; // gone
  }
  return best?.cpu;
}

/** Samples every 100 ms which CPU the backend's data path is on; the returned function stops and gives the share per CPU. */
function samplePlacement(pid: number): () => number[] {
  const counts: number[] = os.cpus().map(() => 0);
  const timer = setInterval(() => {
    const cpu = busiestThreadCpu(pid);
    if (cpu !== undefined) counts[cpu] = (counts[cpu] ?? 0) + 1;
  }, 100);
  return () => {
    clearInterval(timer);
    const n = counts.reduce((a, b) => a + b, 0);
    return counts.map((c) => (n > 0 ? c / n : NaN));
  };
}

interface PairResult {
  rxPps: number;
  txPps: number;
  usage: Usage;
  /** Share of the window the backend's busiest thread spent on each CPU. */
  placement: number[];
  totals: FrontendTotals | undefined;
}

/**
 * Starts the receiver on b.sock, then the sender on a.sock, waits for frames to flow, measures the
 * window, and stops both (sender first, so the frames in flight can land).
 */
async function runFrontendPair(backend: Backend, frameBytes: number): Promise<PairResult> {
  const receiver = startFrontend('receiver', backend.socket('b'), frameBytes);
  let sender: Proc | undefined;
  try {
    await waitFor('the receiver to start forwarding', () => receiver.last(), cfg.startupMs, [receiver, backend.proc]);
    await backend.portReady('b', receiver);
    const tx = startFrontend('sender', backend.socket('a'), frameBytes);
    sender = tx;
    const all = [backend.proc, receiver, tx];
    await waitFor('the sender to start forwarding', () => tx.last(), cfg.startupMs, all);
    await backend.portReady('a', tx);
    const first = await waitFor('the first frame at the receiver', () => receiver.samples[0]?.find((s) => s.rxPackets > 0), cfg.firstFrameMs, all);
    const t0 = first.t + cfg.warmup * 1000;
    const t1 = t0 + cfg.seconds * 1000;
    await sleep(Math.max(0, t0 - performance.now()));
    const s0 = snapshot(backend.proc, tx, receiver);
    const placement = samplePlacement(backend.proc.pid);
    const done = (): true | undefined => ((receiver.last()?.t ?? 0) >= t1 && (tx.last()?.t ?? 0) >= t1 ? true : undefined);
    await waitFor('the end of the measured window', done, cfg.seconds * 1000 + 20_000, all);
    const s1 = snapshot(backend.proc, tx, receiver);
    const onCpu = placement();
    await tx.stop('SIGINT');
    await sleep(300);
    await receiver.stop('SIGINT');
    const sent = tx.forwardTotals(0);
    const got = receiver.forwardTotals(0);
    return {
      rxPps: rate(receiver.samples[0], t0, t1, 'rxPackets'),
      txPps: rate(tx.samples[0], t0, t1, 'txPackets'),
      usage: usage(s0, s1),
      placement: onCpu,
      totals: sent && got ? { sent: sent.tx, sendRingFull: sent.txDropped, received: got.rx } : undefined,
    };
  } finally {
    await sender?.stop('SIGKILL');
    await receiver.stop('SIGKILL');
  }
}

async function runOnce(work: string, side: Side, size: number, round: number): Promise<RunResult> {
  const dir = fs.mkdtempSync(path.join(work, `${side}-${size}-`));
  const foreign = foreignTestpmds().length;
  const backend = side === 'prism' ? prismBackend(dir) : dpdkBackend(dir);
  let pair: PairResult | undefined;
  let checks: string[];
  try {
    await backend.ready();
    pair = await runFrontendPair(backend, size);
  } finally {
    checks = await backend.stop(pair?.totals);
  }
  if (pair.totals && pair.totals.sendRingFull > 0) {
    checks.push(`sender: ${count(pair.totals.sendRingFull)} frames found a full ring and were not sent (back-pressure, not loss)`);
  }
  const drop = pair.txPps > 0 ? 1 - pair.rxPps / pair.txPps : NaN;
  return { side, size, round, rxPps: pair.rxPps, txPps: pair.txPps, drop, usage: pair.usage, placement: pair.placement, checks, foreign };
}

// --- output --------------------------------------------------------------------------------------

/** x with `digits` decimals, '-' when there is no figure (a failed run). */
const fixed = (x: number, digits: number): string => (Number.isNaN(x) ? '-' : x.toFixed(digits));
const mpps = (pps: number): string => fixed(pps / 1e6, 3);
const gbits = (pps: number, size: number): number => (pps * size * 8) / 1e9;
const pct = (x: number): string => (Number.isNaN(x) ? '-' : `${(x * 100).toFixed(1)}%`);

/** Two lines per run: the rates, then where the backend ran and what everything cost. */
function runLines(r: RunResult): string {
  const u = r.usage;
  const backendName = r.side === 'prism' ? 'switch' : 'backend';
  // Every frame the sender got into its ring is taken by the backend (delivered or dropped).
  const perFrame = r.txPps > 0 ? ` = ${((u.backend / r.txPps) * 1e6).toFixed(2)} µs/frame taken` : '';
  const k = (x: number): string => `${(x / 1000).toFixed(0)}k`;
  const rates = `round ${r.round + 1}  ${String(r.size).padStart(4)} B  ${SIDE_NAME[r.side].padEnd(5)}  rx ${mpps(r.rxPps)} Mpps (${gbits(r.rxPps, r.size).toFixed(2)} Gbit/s)  tx ${mpps(r.txPps)} Mpps  drop ${pct(r.drop)}`;
  const costs =
    `    ${backendName} on ${r.placement.map((x, cpu) => `CPU ${cpu} ${pct(x)}`).join(', ')} | CPU/s: ${backendName} ${u.backend.toFixed(2)}${perFrame}, ` +
    `sender ${u.sender.toFixed(2)}, receiver ${u.receiver.toFixed(2)}, others ${u.others.toFixed(2)} | write syscalls/s: sender ${k(u.senderWrites)}, receiver ${k(u.receiverWrites)}` +
    (r.foreign > 0 ? ` | ${r.foreign} foreign testpmd running` : '');
  return `${rates}\n${costs}`;
}

function markdownTable(head: string[], body: string[][]): string {
  const widths = head.map((h, i) => Math.max(h.length, ...body.map((b) => (b[i] ?? '').length)));
  const line = (cells: string[]): string => `| ${cells.map((c, i) => (i === 0 ? c.padEnd(widths[i] as number) : c.padStart(widths[i] as number))).join(' | ')} |`;
  const sep = `|${widths.map((w, i) => (i === 0 ? `:${'-'.repeat(w + 1)}` : `${'-'.repeat(w + 1)}:`)).join('|')}|`;
  return [line(head), sep, ...body.map(line)].join('\n');
}

interface SizeSummary {
  size: number;
  rx: Record<Side, number>;
  tx: Record<Side, number>;
  drop: Record<Side, number>;
  backendCpu: Record<Side, number>;
  /** Backend CPU seconds per frame it took from the sender, in µs. */
  perFrameUs: Record<Side, number>;
}

function summarize(results: RunResult[]): SizeSummary[] {
  return cfg.sizes.map((size) => {
    const of = (side: Side, f: (r: RunResult) => number): number => median(results.filter((r) => r.size === size && r.side === side).map(f));
    const per = (f: (r: RunResult) => number): Record<Side, number> => ({ prism: of('prism', f), dpdk: of('dpdk', f) });
    return { size, rx: per((r) => r.rxPps), tx: per((r) => r.txPps), drop: per((r) => r.drop), backendCpu: per((r) => r.usage.backend), perFrameUs: per((r) => (r.usage.backend / r.txPps) * 1e6) };
  });
}

function report(results: RunResult[]): string {
  const sums = summarize(results);
  const main = markdownTable(
    ['size', 'prism rx Mpps', 'DPDK rx Mpps', 'ratio', 'prism Gbit/s', 'DPDK Gbit/s'],
    sums.map((s) => [`${s.size} B`, mpps(s.rx.prism), mpps(s.rx.dpdk), fixed(s.rx.prism / s.rx.dpdk, 2), fixed(gbits(s.rx.prism, s.size), 2), fixed(gbits(s.rx.dpdk, s.size), 2)]),
  );
  const side = markdownTable(
    ['size', 'prism tx Mpps', 'DPDK tx Mpps', 'prism drop', 'DPDK drop', 'switch CPU/s', 'DPDK CPU/s', 'switch µs/frame', 'DPDK µs/frame'],
    sums.map((s) => [
      `${s.size} B`, mpps(s.tx.prism), mpps(s.tx.dpdk), pct(s.drop.prism), pct(s.drop.dpdk),
      fixed(s.backendCpu.prism, 2), fixed(s.backendCpu.dpdk, 2), fixed(s.perFrameUs.prism, 2), fixed(s.perFrameUs.dpdk, 2),
    ]),
  );
  const verdict = (x: number, goal: number, unit: string): string =>
    Number.isNaN(x) ? 'no data (every run of this row failed)' : `${x.toFixed(2)}${unit} — ${x >= goal ? 'met' : 'NOT met'}`;
  const targets = sums.map((s) => `- ${s.size} B: prism ≥ 0.5× DPDK pps: ${verdict(s.rx.prism / s.rx.dpdk, 0.5, '×')}`);
  const big = sums.find((s) => s.size === 1500);
  if (big) targets.push(`- 1500 B: prism ≥ 10 Gbit/s: ${verdict(gbits(big.rx.prism, 1500), 10, ' Gbit/s')}`);
  return [
    'medians:',
    main,
    '',
    'sender, drops and backend CPU (medians):',
    side,
    '',
    'targets:',
    ...targets,
    '',
    '- size: testpmd --txpkts, the Ethernet frame as it sits in the virtio buffer (14 B header + IPv4 + UDP + payload), without FCS',
    '  (virtio carries none) and without the 12 B virtio-net header; a 64 B row is a 68 B frame on a wire.',
    '- rx Mpps: the receiver\'s RX-packets delta over the window; Gbit/s = rx pps × size × 8 (no FCS, preamble or gap).',
    '- ratio: prism / DPDK rx rate (> 1: prism is faster). tx Mpps: frames the sender got into its ring; drop = 1 − rx/tx',
    '  (frames the backend took but could not place: the receiver\'s ring had no free buffer).',
    '- µs/frame: backend CPU time per frame it took from the sender (delivered or dropped). DPDK\'s backend busy-polls, so its',
    '  figure includes spinning on empty rings (an upper bound); prism\'s switch sleeps when idle, so its figure is work.',
    '- CPU/s: CPU seconds per wall second over the window, of the prism switch process or of the DPDK backend (all threads);',
    '  "others" is the rest of the machine (other people\'s processes included). "on CPU n": share of 100 ms samples in which',
    '  the backend\'s busiest thread last ran on CPU n (the sender has CPU 0, the receiver CPU 1).',
    '- write syscalls/s: a virtio_user frontend kicks its backend (an eventfd write) unless the backend asks it not to',
    '  (VRING_USED_F_NO_NOTIFY / event index); DPDK\'s backend polls and suppresses kicks.',
  ].join('\n');
}

// --- main ----------------------------------------------------------------------------------------

function gitState(): string {
  try {
    const head = execFileSync('git', ['-C', REPO, 'rev-parse', '--short', 'HEAD'], { encoding: 'utf8' }).trim();
    const dirty = execFileSync('git', ['-C', REPO, 'status', '--porcelain', '--', 'src'], { encoding: 'utf8' }).trim();
    return dirty ? `${head} + uncommitted changes under src/` : head;
  } catch {
    return 'unknown commit';
  }
}

async function main(): Promise<void> {
  const found = findTestpmd();
  if (!found) {
    process.stderr.write(`dpdk-testpmd is not installed: it comes with DPDK's dev package on Debian 12:\n  ${TESTPMD_INSTALL}\n`);
    process.exit(1);
  }
  testpmdPath = found;
  const t0 = performance.now();
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'prism-bench-net-'));
  const cleanup = (): void => {
    for (const p of prefixes) fs.rmSync(dpdkRuntimeDir(p), { recursive: true, force: true });
    if (opt.keep) log(`kept ${work}`);
    else fs.rmSync(work, { recursive: true, force: true });
  };
  const onSignal = (): void => {
    killAllNow();
    cleanup();
    process.exit(130);
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  const foreign = foreignTestpmds();
  if (foreign.length > 0) log(`warning: ${foreign.length} other dpdk-testpmd process(es) running (pids ${foreign.join(', ')}): expect noisy numbers`);
  const load0 = fs.readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ');
  const results: RunResult[] = [];
  const failures: string[] = [];
  try {
    for (let round = 0; round < cfg.rounds; round++) {
      // prism first in even rounds, DPDK first in odd ones: a drifting machine hits both.
      const order = round % 2 === 0 ? SIDES : [...SIDES].reverse();
      for (const size of cfg.sizes) {
        for (const side of order) {
          log(`round ${round + 1}/${cfg.rounds}: ${SIDE_NAME[side]}, ${size} B frames`);
          try {
            const r = await runOnce(work, side, size, round);
            results.push(r);
            for (const l of runLines(r).split('\n')) log(l);
            for (const c of r.checks) log(`  ${c}`);
          } catch (e) {
            // One failed run (a frontend that never came up, a backend that died) costs that run only.
            failures.push(`round ${round + 1} ${size} B ${SIDE_NAME[side]}: ${(e as Error).message.split('\n')[0] ?? ''}`);
            log(`run failed: ${(e as Error).message}`);
          }
        }
      }
    }
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    killAllNow();
    cleanup();
  }
  const load1 = fs.readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ');
  const cpus = os.cpus();
  const header = [
    `prism net switch vs DPDK vhost backend (testpmd io forward) — ${quick ? 'quick' : 'full'} run, ${cfg.rounds} interleaved round(s), ` +
      `${cfg.warmup} s warm-up + ${cfg.seconds} s window each, ${((performance.now() - t0) / 1000).toFixed(0)} s`,
    `${cpus.length} CPUs (${cpus[0]?.model ?? '?'}), Linux ${os.release()}, node ${process.version}, prism ${gitState()} (src/ through tsx), ${testpmdPath}; load ${load0} -> ${load1}`,
    `traffic: testpmd virtio_user txonly on a.sock (lcores ${LCORES.sender}: CPU 0) -> backend -> testpmd virtio_user rxonly on b.sock (lcores ${LCORES.receiver}: CPU 1)`,
    `backend: prism = \`prism net switch --port a --port b --allow a=b\` (node child, not pinned); DPDK = testpmd net_vhost0/1 io forward (lcores ${LCORES.dpdkBackend}: ` +
      'either CPU). Both backends get what the two busy-polling frontends leave.',
  ].join('\n');
  process.stdout.write(`\n${header}\n\nrounds:\n${results.map(runLines).join('\n')}\n\n${report(results)}\n`);
  if (failures.length > 0) {
    process.stdout.write(`\n${failures.length} run(s) failed (left out of the medians; details above):\n${failures.map((f) => `- ${f}`).join('\n')}\n`);
    process.exitCode = 1;
  }
}

await main();
