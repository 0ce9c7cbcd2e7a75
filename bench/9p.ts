// Throughput and CPU bench: prism's 9P server against diod (the reference 9P2000.L server), both
// serving the same directory over Unix sockets, measured in one run and interleaved
// (prism, diod, diod, prism, ...), reporting the median of N repetitions:
//
//   1. sequential read of one large file with diodcat (diod's own client) at msize 64 KiB and 1 MiB;
//   2. the Linux kernel 9p client in a lab guest: dd write and read through a cache=none mount
//      (trans=unix over a virtio-serial port bridged by socat in the guest), timed by the guest;
//   3. a metadata loop with prism's NinePClient: walk + getattr + clunk of existing small files,
//      one and 16 operations in flight.
//
// Every row also reports each server's CPU seconds (utime + stime of the server process, all
// threads, from /proc/PID/stat before and after). prism runs as a child process: the built
// dist/src/cli/main.js when it is up to date with src/, else src/cli/main.ts through tsx.
//
//   node --import tsx bench/9p.ts [--quick] [--reps N] [--json FILE] [--no-guest] [--runner auto|dist|tsx] [--dir DIR] [--keep]
//
// Needs diod, diodcat and (for row 2) the guest lab (`bash lab/setup.sh`).
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { createHash, randomFillSync } from 'node:crypto';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { parseArgs } from 'node:util';
import { NinePClient } from '../src/9p/client.js';
import { labPaths, runGuest } from '../lab/guest.js';
import { REPO, alive, benchSession, CLK_TCK, cpuSeconds, distStale, fmt, machineBusySeconds, median, sleep, track } from './common.js';

const MiB = 1024 * 1024;

// --- options -------------------------------------------------------------------------------------

const { values: opt } = parseArgs({
  options: {
    quick: { type: 'boolean', default: false },
    reps: { type: 'string' },
    json: { type: 'string' },
    'no-guest': { type: 'boolean', default: false },
    runner: { type: 'string', default: 'auto' },
    dir: { type: 'string' },
    keep: { type: 'boolean', default: false },
    only: { type: 'string' },
    'prism-node-args': { type: 'string' },
    help: { type: 'boolean', short: 'h', default: false },
  },
});
if (opt.help) {
  process.stdout.write(
    'usage: node --import tsx bench/9p.ts [--quick] [--reps N] [--json FILE] [--no-guest] [--only diodcat,guest,meta]\n' +
      '                                     [--runner auto|dist|tsx] [--prism-node-args ARGS] [--dir DIR] [--keep]\n' +
      '  --quick             small sizes and 2 repetitions (smoke test)\n' +
      '  --reps N            repetitions per row (median reported; default 5, quick 2)\n' +
      '  --json FILE         also write every sample as JSON\n' +
      '  --only LIST         run only these rows (diodcat, guest, meta); --no-guest skips the guest\n' +
      '  --runner            prism from dist/ or src/ through tsx (auto: dist/ when it is up to date)\n' +
      '  --prism-node-args   extra node options for the prism server, e.g. --prism-node-args="--cpu-prof --cpu-prof-dir=/tmp/prof"\n' +
      '  --dir DIR           where the export is made (default /dev/shm, else the temp dir); --keep keeps it\n',
  );
  process.exit(0);
}
const quick = opt.quick;
const cfg = {
  bigMiB: quick ? 32 : 256,
  smallFiles: quick ? 2000 : 4000,
  reps: opt.reps !== undefined ? Number(opt.reps) : quick ? 2 : 5,
  metaOps: quick ? 2000 : 20_000,
  metaWarmup: quick ? 500 : 2000,
  metaDepths: [1, 16],
  guestMiB: quick ? 32 : 128,
  readMsizes: [64 * 1024, MiB],
  guestMsize: MiB,
  serverMsize: MiB,
};
if (!Number.isInteger(cfg.reps) || cfg.reps < 1) throw new Error(`--reps must be a positive integer, got ${opt.reps}`);
if (!['auto', 'dist', 'tsx'].includes(opt.runner)) throw new Error(`--runner must be auto, dist or tsx, got ${opt.runner}`);
const ROW_KINDS = ['diodcat', 'guest', 'meta'] as const;
const only = new Set(opt.only === undefined ? ROW_KINDS : opt.only.split(',').map((k) => k.trim()));
for (const k of only) if (!(ROW_KINDS as readonly string[]).includes(k)) throw new Error(`--only: unknown row kind ${JSON.stringify(k)} (${ROW_KINDS.join(', ')})`);
if (opt['no-guest']) only.delete('guest');
const prismNodeArgs = opt['prism-node-args']?.split(/\s+/).filter((a) => a !== '') ?? [];

const log = (msg: string): void => {
  process.stderr.write(`[bench ${new Date().toISOString().slice(11, 19)}] ${msg}\n`);
};

// --- helpers -------------------------------------------------------------------------------------

/** CPU seconds of this process and of the children it has reaped (diodcat, QEMU). */
function selfAndReapedSeconds(): number {
  const stat = fs.readFileSync('/proc/self/stat', 'utf8');
  const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(rest[11]) + Number(rest[12]) + Number(rest[13]) + Number(rest[14])) / CLK_TCK;
}

// --- processes we start (and only those are ever killed) -----------------------------------------

// --- servers -------------------------------------------------------------------------------------

type ServerName = 'prism' | 'diod';
const SERVERS: ServerName[] = ['prism', 'diod'];

interface Server {
  name: ServerName;
  child: ChildProcess;
  pid: number;
  sock: string;
  logPath: string;
}

async function waitForSocket(s: { name: string; child: ChildProcess; sock: string; logPath: string }): Promise<void> {
  const deadline = Date.now() + 30_000;
  for (;;) {
    if (!alive(s.child)) throw new Error(`${s.name} exited at start (${String(s.child.exitCode ?? s.child.signalCode)}); log:\n${fs.readFileSync(s.logPath, 'utf8')}`);
    const ok = await new Promise<boolean>((resolve) => {
      const c = net.connect({ path: s.sock });
      c.once('connect', () => {
        c.destroy();
        resolve(true);
      });
      c.once('error', () => resolve(false));
    });
    if (ok) return;
    if (Date.now() > deadline) throw new Error(`${s.name} did not listen on ${s.sock} within 30 s`);
    await sleep(50);
  }
}

function startServer(name: ServerName, exportDir: string, work: string, runner: 'dist' | 'tsx'): Server {
  const sock = path.join(work, `${name}.sock`);
  const logPath = path.join(work, `${name}.log`);
  const logFd = fs.openSync(logPath, 'w');
  let child: ChildProcess;
  try {
    if (name === 'prism') {
      const entry = runner === 'dist' ? [path.join(REPO, 'dist/src/cli/main.js')] : ['--import', 'tsx', path.join(REPO, 'src/cli/main.ts')];
      const args = [...entry, '9p', 'serve', exportDir, '--listen', `unix:${sock}`, '--msize', String(cfg.serverMsize)];
      child = spawn(process.execPath, [...prismNodeArgs, ...args], { cwd: REPO, stdio: ['ignore', 'ignore', logFd], env: { ...process.env, PRISM_LOG_LEVEL: 'warn' } });
    } else {
      child = spawn('diod', ['-f', '-n', '-c', '/dev/null', '-L', 'stderr', '-l', sock, '-e', exportDir], { stdio: ['ignore', 'ignore', logFd] });
    }
  } finally {
    fs.closeSync(logFd);
  }
  track(child);
  if (child.pid === undefined) throw new Error(`cannot start ${name}`);
  return { name, child, pid: child.pid, sock, logPath };
}

// --- the export ----------------------------------------------------------------------------------

interface Dataset {
  exportDir: string;
  bigName: string;
  bigBytes: number;
  bigSha256: string;
  smallNames: string[];
  smallSizes: number[];
}

function prepareExport(work: string): Dataset {
  const exportDir = path.join(work, 'export');
  fs.mkdirSync(path.join(exportDir, 'small'), { recursive: true, mode: 0o755 });
  fs.chmodSync(exportDir, 0o755);
  fs.chmodSync(path.join(exportDir, 'small'), 0o755);
  const bigName = 'big.bin';
  const chunk = Buffer.allocUnsafe(MiB);
  const hash = createHash('sha256');
  const fd = fs.openSync(path.join(exportDir, bigName), 'w', 0o644);
  try {
    for (let i = 0; i < cfg.bigMiB; i++) {
      randomFillSync(chunk);
      hash.update(chunk);
      fs.writeSync(fd, chunk);
    }
  } finally {
    fs.closeSync(fd);
  }
  const smallNames: string[] = [];
  const smallSizes: number[] = [];
  for (let i = 0; i < cfg.smallFiles; i++) {
    const name = `small/f${String(i).padStart(5, '0')}`;
    const size = 64 + ((i * 2654435761) % 4033); // 64 B .. 4 KiB, deterministic
    fs.writeFileSync(path.join(exportDir, name), chunk.subarray(0, size), { mode: 0o644 });
    smallNames.push(name);
    smallSizes.push(size);
  }
  return { exportDir, bigName, bigBytes: cfg.bigMiB * MiB, bigSha256: hash.digest('hex'), smallNames, smallSizes };
}

// --- results -------------------------------------------------------------------------------------

interface Sample {
  value: number;
  cpu: number;
}

interface Row {
  id: string;
  label: string;
  unit: string;
  samples: Record<ServerName, Sample[]>;
  note: string[];
}

const rows: Row[] = [];

function newRow(id: string, label: string, unit: string): Row {
  const r: Row = { id, label, unit, samples: { prism: [], diod: [] }, note: [] };
  rows.push(r);
  return r;
}

/** prism, diod in even repetitions and diod, prism in odd ones (a drifting machine hits both). */
function order(rep: number): ServerName[] {
  return rep % 2 === 0 ? SERVERS : [...SERVERS].reverse();
}

// --- row 1: diodcat ------------------------------------------------------------------------------

function diodcat(s: Server, ds: Dataset, msize: number, verify: boolean): Promise<{ seconds: number; sha256?: string; bytes?: number }> {
  return new Promise((resolve, reject) => {
    const args = ['-s', s.sock, '-a', ds.exportDir, '-m', String(msize), ds.bigName];
    const started = performance.now();
    const child = track(spawn('diodcat', args, { stdio: ['ignore', verify ? 'pipe' : 'ignore', 'pipe'] }));
    let stderr = '';
    child.stderr?.setEncoding('utf8');
    child.stderr?.on('data', (t: string) => (stderr += t));
    const hash = createHash('sha256');
    let bytes = 0;
    child.stdout?.on('data', (b: Buffer) => {
      hash.update(b);
      bytes += b.length;
    });
    child.once('error', reject);
    child.once('close', (code, sig) => {
      const seconds = (performance.now() - started) / 1000;
      if (code !== 0) reject(new Error(`diodcat against ${s.name} (msize ${msize}) failed: ${String(code ?? sig)} ${stderr.trim()}`));
      else resolve(verify ? { seconds, sha256: hash.digest('hex'), bytes } : { seconds });
    });
  });
}

async function negotiatedMsize(s: Server, ds: Dataset, want: number): Promise<number> {
  const c = await NinePClient.connect(`unix:${s.sock}`, { aname: ds.exportDir, msize: want });
  const m = c.msize;
  c.close();
  return m;
}

async function benchDiodcat(servers: Record<ServerName, Server>, ds: Dataset): Promise<void> {
  for (const msize of cfg.readMsizes) {
    const label = `diodcat read ${cfg.bigMiB} MiB, msize ${msize / 1024} KiB`;
    const row = newRow(`diodcat-read-${msize}`, label, 'MB/s');
    const got: Record<ServerName, number> = { prism: 0, diod: 0 };
    for (const n of SERVERS) got[n] = await negotiatedMsize(servers[n], ds, msize);
    row.note.push(`negotiated msize: prism ${got.prism}, diod ${got.diod}${got.diod < msize ? ' (diod caps msize at 64 KiB)' : ''}`);
    // Warm-up and check: every byte through each server once.
    for (const n of SERVERS) {
      const r = await diodcat(servers[n], ds, msize, true);
      if (r.bytes !== ds.bigBytes || r.sha256 !== ds.bigSha256) throw new Error(`diodcat through ${n} returned ${r.bytes} bytes with a different sha256`);
    }
    for (let rep = 0; rep < cfg.reps; rep++) {
      for (const n of order(rep)) {
        const s = servers[n];
        const c0 = cpuSeconds(s.pid);
        const { seconds } = await diodcat(s, ds, msize, false);
        const cpu = cpuSeconds(s.pid) - c0;
        row.samples[n].push({ value: ds.bigBytes / 1e6 / seconds, cpu });
      }
      log(`${label}: rep ${rep + 1}/${cfg.reps}`);
    }
  }
}

// --- row 3: metadata loop ------------------------------------------------------------------------

async function metaLoop(c: NinePClient, ds: Dataset, ops: number, depth: number, start: number): Promise<void> {
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < ops) {
      const i = (start + next++) % ds.smallNames.length;
      const a = await c.stat(ds.smallNames[i] as string);
      if (a.size !== BigInt(ds.smallSizes[i] as number)) throw new Error(`stat ${ds.smallNames[i]}: size ${a.size}, expected ${ds.smallSizes[i]}`);
    }
  };
  await Promise.all(Array.from({ length: depth }, worker));
}

async function benchMeta(servers: Record<ServerName, Server>, ds: Dataset): Promise<void> {
  const clients: Partial<Record<ServerName, NinePClient>> = {};
  try {
    for (const n of SERVERS) clients[n] = await NinePClient.connect(`unix:${servers[n].sock}`, { aname: ds.exportDir, msize: 65536 });
    let cursor = 0;
    for (const depth of cfg.metaDepths) {
      const label = `walk+getattr+clunk, ${depth} in flight`;
      const row = newRow(`meta-depth-${depth}`, label, 'ops/s');
      row.note.push(`${cfg.metaOps} ops per repetition (1 op = 3 RPCs), NinePClient over a Unix socket`);
      for (const n of SERVERS) await metaLoop(clients[n] as NinePClient, ds, cfg.metaWarmup, depth, 0);
      for (let rep = 0; rep < cfg.reps; rep++) {
        for (const n of order(rep)) {
          const s = servers[n];
          const c0 = cpuSeconds(s.pid);
          const t0 = performance.now();
          await metaLoop(clients[n] as NinePClient, ds, cfg.metaOps, depth, cursor);
          const seconds = (performance.now() - t0) / 1000;
          row.samples[n].push({ value: cfg.metaOps / seconds, cpu: cpuSeconds(s.pid) - c0 });
        }
        cursor += cfg.metaOps;
        log(`${label}: rep ${rep + 1}/${cfg.reps}`);
      }
    }
  } finally {
    for (const c of Object.values(clients)) c.close();
  }
}

// --- row 2: the Linux kernel client in a guest ---------------------------------------------------

async function benchGuest(servers: Record<ServerName, Server>, ds: Dataset, signal: AbortSignal): Promise<void> {
  const lab = labPaths(); // throws with the set-up hint when the lab is missing
  const mib = cfg.guestMiB;
  const write = newRow('guest-dd-write', `guest dd write ${mib} MiB (kernel 9p, cache=none)`, 'MB/s');
  const read = newRow('guest-dd-read', `guest dd read ${mib} MiB (kernel 9p, cache=none)`, 'MB/s');
  const reps = cfg.reps;
  const seq = Array.from({ length: reps }, (_, rep) => order(rep).map((n) => `${n}:${rep + 1}`).join(' ')).join(' ');
  const script = `
fail() { echo "@@FAIL $*"; exit 1; }
up() { cut -d' ' -f1 /proc/uptime; }
for s in prism diod; do
  socat -b 1048576 UNIX-LISTEN:/run/$s.sock GOPEN:"$(vport $s)" &
done
for s in prism diod; do
  i=0; while [ ! -S /run/$s.sock ]; do i=$((i+1)); [ $i -gt 250 ] && fail "no socat socket for $s"; usleep 20000; done
  mkdir -p /mnt/$s
  mount -t 9p -o trans=unix,version=9p2000.L,msize=${cfg.guestMsize},cache=none,aname=${ds.exportDir} /run/$s.sock /mnt/$s || fail "mount $s"
  echo "@@MSIZE $s $(grep " /mnt/$s " /proc/mounts | sed -n 's/.*msize=\\([0-9]*\\).*/\\1/p')"
done
for p in ${seq}; do
  s=\${p%:*}; rep=\${p#*:}
  f=/mnt/$s/guest-$s.bin
  echo "@@BEGIN write $s $rep"; t0=$(up)
  dd if=/dev/zero of=$f bs=1M count=${mib} 2>/dev/null || fail "dd write $s"
  t1=$(up); echo "@@END write $s $rep $t0 $t1"
  echo "@@BEGIN read $s $rep"; t0=$(up)
  r=$(dd if=$f of=/dev/null bs=1M 2>&1) || fail "dd read $s: $r"
  t1=$(up); echo "@@END read $s $rep $t0 $t1 $(echo "$r" | sed -n 's/^\\([0-9]*\\)+0 records in$/\\1/p')"
done
for s in prism diod; do rm -f /mnt/$s/guest-$s.bin; umount /mnt/$s || fail "umount $s"; done
exit 0
`;
  const cpuAt = new Map<string, number>();
  const msizes: Partial<Record<ServerName, number>> = {};
  let pending = '';
  let failure: string | null = null;
  const onLine = (line: string): void => {
    const w = line.trim().split(/\s+/);
    if (w[0] === '@@MSIZE') msizes[w[1] as ServerName] = Number(w[2]);
    else if (w[0] === '@@FAIL') failure = line.trim();
    else if (w[0] === '@@BEGIN' || w[0] === '@@END') {
      const [, kind, name, rep] = w as [string, 'write' | 'read', ServerName, string];
      const key = `${kind} ${name} ${rep}`;
      const s = servers[name];
      if (w[0] === '@@BEGIN') {
        cpuAt.set(key, cpuSeconds(s.pid));
        return;
      }
      const cpu = cpuSeconds(s.pid) - (cpuAt.get(key) ?? NaN);
      const seconds = Number(w[5]) - Number(w[4]);
      if (kind === 'read' && Number(w[6]) !== mib) failure = `guest read ${w[6]} MiB records through ${name}, expected ${mib}`;
      (kind === 'write' ? write : read).samples[name].push({ value: (mib * MiB) / 1e6 / seconds, cpu });
      log(`guest ${key}: ${((mib * MiB) / 1e6 / seconds).toFixed(1)} MB/s`);
    }
  };
  log(`guest: booting (${reps} repetitions of ${mib} MiB write + read per server)`);
  const r = await runGuest({
    lab,
    script,
    serialPorts: SERVERS.map((n) => ({ name: n, path: servers[n].sock })),
    timeoutMs: 120_000 + reps * 2 * 2 * mib * 1000, // generous: 1 MiB/s would still finish
    signal,
    onConsole: (t) => {
      pending += t;
      let nl: number;
      while ((nl = pending.indexOf('\n')) >= 0) {
        onLine(pending.slice(0, nl).replace(/\r$/, ''));
        pending = pending.slice(nl + 1);
      }
    },
  });
  if (failure !== null || r.exitCode !== 0) {
    const tail = r.console.trimEnd().split('\n').slice(-30).join('\n');
    throw new Error(`guest run failed: ${failure ?? `exit ${String(r.exitCode)}, timedOut ${String(r.timedOut)}`}\n${tail}\n${r.stderr}`);
  }
  for (const row of [write, read]) {
    row.note.push(`negotiated msize: prism ${msizes.prism ?? '?'}, diod ${msizes.diod ?? '?'} (asked ${cfg.guestMsize}); MB/s from the guest's /proc/uptime (10 ms)`);
  }
  log(`guest: done in ${(r.durationMs / 1000).toFixed(1)} s (boot to /init ${((r.initMs ?? 0) / 1000).toFixed(1)} s)`);
}

// --- output --------------------------------------------------------------------------------------

function summary(row: Row): { prism: number; diod: number; ratio: number; prismCpu: number; diodCpu: number } {
  const prism = median(row.samples.prism.map((s) => s.value));
  const diod = median(row.samples.diod.map((s) => s.value));
  return {
    prism,
    diod,
    ratio: prism / diod,
    prismCpu: median(row.samples.prism.map((s) => s.cpu)),
    diodCpu: median(row.samples.diod.map((s) => s.cpu)),
  };
}

function table(): string {
  const head = ['row', 'unit', 'prism', 'diod', 'prism/diod', 'prism CPU s', 'diod CPU s'];
  const body = rows.map((r) => {
    const s = summary(r);
    return [r.label, r.unit, fmt(s.prism), fmt(s.diod), `${s.ratio.toFixed(2)}${s.ratio < 1 ? ' <' : ''}`, s.prismCpu.toFixed(2), s.diodCpu.toFixed(2)];
  });
  const widths = head.map((h, i) => Math.max(h.length, ...body.map((b) => (b[i] as string).length)));
  const line = (cells: string[]): string => `| ${cells.map((c, i) => (i === 0 ? c.padEnd(widths[i] as number) : c.padStart(widths[i] as number))).join(' | ')} |`;
  const sep = `|${widths.map((w, i) => (i === 0 ? `:${'-'.repeat(w + 1)}` : `${'-'.repeat(w + 1)}:`)).join('|')}|`;
  const notes = rows.flatMap((r) => r.note.map((n) => `- ${r.label}: ${n}`));
  const legend = [
    '- prism/diod: ratio of the medians (> 1: prism is faster); "<" marks a row prism loses.',
    '- CPU s: median per repetition of the server process\'s utime + stime (all its threads), from /proc/PID/stat.',
  ];
  return [line(head), sep, ...body.map(line), '', ...legend, ...notes].join('\n');
}

// --- main ----------------------------------------------------------------------------------------

async function main(): Promise<void> {
  const t0 = performance.now();
  const stale = distStale();
  const runner: 'dist' | 'tsx' = opt.runner === 'auto' ? (stale === null ? 'dist' : 'tsx') : (opt.runner as 'dist' | 'tsx');
  if (runner === 'dist' && stale !== null) log(`warning: --runner dist although ${stale}`);
  log(`prism runs from ${runner === 'dist' ? 'dist/ (built)' : `src/ through tsx${stale ? ` (${stale}; \`npm run build\` to use dist/)` : ''}`}`);
  for (const tool of ['diod', 'diodcat']) {
    try {
      execFileSync('sh', ['-c', `command -v ${tool}`], { stdio: 'ignore' });
    } catch {
      throw new Error(`${tool} is not installed (apt-get install diod, or bash lab/setup.sh)`);
    }
  }
  if (only.has('guest')) labPaths(); // fail before the long parts when the lab is missing

  const base = opt.dir ?? (fs.existsSync('/dev/shm') ? '/dev/shm' : os.tmpdir());
  const work = fs.mkdtempSync(path.join(base, 'prism-bench-'));
  fs.chmodSync(work, 0o755); // diod squashes to the attaching user: the export must be traversable
  const session = benchSession(work, opt.keep, log);
  const servers: Partial<Record<ServerName, Server>> = {};
  try {
    log(`preparing ${work}: ${cfg.bigMiB} MiB random file, ${cfg.smallFiles} small files`);
    const ds = prepareExport(work);
    for (const n of SERVERS) servers[n] = startServer(n, ds.exportDir, work, runner);
    for (const n of SERVERS) await waitForSocket(servers[n] as Server);
    const all = servers as Record<ServerName, Server>;
    log(`servers up: prism pid ${all.prism.pid}, diod pid ${all.diod.pid}`);
    const load0 = fs.readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ');
    if (Number(load0.split(' ')[0]) > 0.5) log(`warning: the machine is busy (load ${load0}): expect noisy numbers`);
    const busy0 = machineBusySeconds();
    const ours0 = selfAndReapedSeconds() + cpuSeconds(all.prism.pid) + cpuSeconds(all.diod.pid);
    const wall0 = performance.now();

    if (only.has('diodcat')) await benchDiodcat(all, ds);
    if (only.has('guest')) await benchGuest(all, ds, session.signal);
    if (only.has('meta')) await benchMeta(all, ds);

    for (const n of SERVERS) if (!alive(all[n].child)) throw new Error(`${n} died during the bench; log:\n${fs.readFileSync(all[n].logPath, 'utf8')}`);
    // What the rest of the machine used meanwhile: busy time minus the servers, this process and
    // its reaped children (diodcat, QEMU). Other work on a 2-CPU box is the main source of noise.
    const ours = selfAndReapedSeconds() + cpuSeconds(all.prism.pid) + cpuSeconds(all.diod.pid) - ours0;
    const measuredWall = (performance.now() - wall0) / 1000;
    const otherShare = Math.max(0, machineBusySeconds() - busy0 - ours) / (measuredWall * os.cpus().length);
    const load1 = fs.readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ');
    const elapsed = (performance.now() - t0) / 1000;
    const header = [
      `prism 9p vs diod — ${quick ? 'quick' : 'full'} run, median of ${cfg.reps} interleaved repetitions, ${elapsed.toFixed(0)} s`,
      `${os.cpus().length} CPUs (${os.cpus()[0]?.model ?? '?'}), Linux ${os.release()}, node ${process.version}, prism from ${runner}, export on ${base}`,
      `other processes used ${(otherShare * 100).toFixed(0)}% of the machine during the measurements (load ${load0} -> ${load1})`,
    ].join('\n');
    process.stdout.write(`\n${header}\n\n${table()}\n`);
    if (opt.json) {
      const out = {
        date: new Date().toISOString(),
        quick,
        config: cfg,
        host: { cpus: os.cpus().length, model: os.cpus()[0]?.model, kernel: os.release(), node: process.version },
        runner,
        exportBase: base,
        elapsedSeconds: elapsed,
        otherLoadShare: otherShare,
        loadavg: { start: load0, end: load1 },
        rows: rows.map((r) => ({ id: r.id, label: r.label, unit: r.unit, ...summary(r), notes: r.note, samples: r.samples })),
      };
      fs.writeFileSync(opt.json, `${JSON.stringify(out, null, 2)}\n`);
      log(`wrote ${opt.json}`);
    }
  } finally {
    await session.end(Object.values(servers).map((s) => s.child)); // and any diodcat still running after an error
  }
}

await main();
