// Throughput bench of prism's vhost-user-vsock device with a real guest (QEMU 7.2, Linux 6.1,
// TCG), side by side with the virtio-serial path the lab already uses, in one guest boot:
//
//   1. stream guest → host and host → guest, N MiB each way (socat in the guest, this process as the
//      host program): through prism's vsock device (guest CID 2 port 5000 → UDS_5000; host CONNECT
//      6000 on UDS) vs a raw virtio-serial port (the guest's /dev/vportNpM, this process on the
//      chardev socket);
//   2. the guest's kernel 9p client, dd write and read of M MiB bs=1M with cache=none, against one
//      `prism 9p serve` process listening on two Unix sockets: through vsock (the guest connects to
//      CID 2 port 564, prism's device reaches UDS_564, and the socket is handed to mount with
//      trans=fd, as LAB-FACTS describes) vs through the virtio-serial bridge (socat UNIX-LISTEN in the
//      guest bridged to a port, mount with trans=unix, as bench/9p.ts and test/ninep-kernel.test.ts).
//
// prism's vsock device (`prism vsock serve`) and 9P server (`prism 9p serve`) run as child
// processes, so their CPU time (utime + stime from /proc/PID/stat) is reported per row. Repetitions
// are interleaved (vsock first in even ones, virtio-serial first in odd ones); medians reported.
// Stream rows are timed by this process (first byte to last byte, or first write to the guest's
// end), 9P rows by the guest (/proc/uptime, 10 ms).
//
//   node --import tsx bench/vsock.ts [--quick] [--size MiB] [--reps N] [--json FILE] [--runner auto|dist|tsx] [--keep]
//   npm run bench:vsock -- [options]
//
// Needs the guest lab (`bash lab/setup.sh`).
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import type { Duplex } from 'node:stream';
import { parseArgs } from 'node:util';
import { labPaths, runGuest } from '../lab/guest.js';
import { dial, listen, type Listener } from '../src/transport/index.js';
import { REPO, alive, benchSession, cpuSeconds, distStale, fmt, median, sleep, stopChild, track } from './common.js';

const MiB = 1024 * 1024;
const GUEST_CID = 3;
const UP_PORT = 5000;
const DOWN_PORT = 6000;
const NINEP_PORT = 564;

// --- options -------------------------------------------------------------------------------------

const { values: opt } = parseArgs({
  options: {
    quick: { type: 'boolean', default: false },
    size: { type: 'string' },
    reps: { type: 'string' },
    json: { type: 'string' },
    runner: { type: 'string', default: 'auto' },
    keep: { type: 'boolean', default: false },
    help: { type: 'boolean', short: 'h', default: false },
  },
});
if (opt.help) {
  process.stdout.write(
    'usage: node --import tsx bench/vsock.ts [--quick] [--size MiB] [--reps N] [--json FILE] [--runner auto|dist|tsx] [--keep]\n' +
      '  --quick       32 MiB streams, 16 MiB dd, 1 repetition (smoke test)\n' +
      '  --size MiB    size of every transfer (default: 128 MiB streams, 64 MiB dd)\n' +
      '  --reps N      repetitions per row, interleaved (median reported; default 3, quick 1)\n' +
      '  --json FILE   also write every sample as JSON\n' +
      '  --runner      prism from dist/ or src/ through tsx (auto: dist/ when it is up to date)\n' +
      '  --keep        keep the work directory (logs, export)\n',
  );
  process.exit(0);
}
const quick = opt.quick;
const size = opt.size === undefined ? undefined : Number(opt.size);
if (size !== undefined && (!Number.isInteger(size) || size < 1 || size > 1024)) throw new Error(`--size must be 1..1024 MiB, got ${opt.size}`);
const cfg = {
  streamMiB: size ?? (quick ? 32 : 128),
  ddMiB: size ?? (quick ? 16 : 64),
  reps: opt.reps !== undefined ? Number(opt.reps) : quick ? 1 : 3,
  msize: MiB,
  socatBuffer: 65536,
};
if (!Number.isInteger(cfg.reps) || cfg.reps < 1) throw new Error(`--reps must be a positive integer, got ${opt.reps}`);
if (!['auto', 'dist', 'tsx'].includes(opt.runner)) throw new Error(`--runner must be auto, dist or tsx, got ${opt.runner}`);

/** The command as it was typed, for the top of the table. */
const commandLine = ((): string => {
  const args = process.argv.slice(2).join(' ');
  if (process.env['npm_lifecycle_event'] === 'bench:vsock') return `npm run bench:vsock${args ? ` -- ${args}` : ''}`;
  return `node --import tsx bench/vsock.ts${args ? ` ${args}` : ''}`;
})();

const log = (msg: string): void => {
  process.stderr.write(`[bench ${new Date().toISOString().slice(11, 19)}] ${msg}\n`);
};

// --- helpers -------------------------------------------------------------------------------------

/** Writes `mib` MiB (the same random MiB again and again) with back-pressure, then ends if asked. */
async function writeMiB(s: Duplex, chunk: Buffer, mib: number, end: boolean): Promise<void> {
  const failed = new Promise<never>((_, reject) => {
    s.once('error', reject);
    s.once('close', () => reject(new Error('the stream closed while writing')));
  });
  failed.catch(() => undefined);
  for (let i = 0; i < mib; i++) {
    if (!s.write(chunk)) await Promise.race([new Promise<void>((r) => s.once('drain', r)), failed]);
  }
  if (end) await Promise.race([new Promise<void>((r) => s.end(r)), failed]);
}

// --- processes we start (and only those are ever killed) -----------------------------------------

interface Proc {
  name: string;
  child: ChildProcess;
  pid: number;
  logPath: string;
}

function startPrism(name: string, args: string[], work: string, runner: 'dist' | 'tsx'): Proc {
  const logPath = path.join(work, `${name}.log`);
  const logFd = fs.openSync(logPath, 'w');
  let child: ChildProcess;
  try {
    const entry = runner === 'dist' ? [path.join(REPO, 'dist/src/cli/main.js')] : ['--import', 'tsx', path.join(REPO, 'src/cli/main.ts')];
    child = spawn(process.execPath, [...entry, ...args], { cwd: REPO, stdio: ['ignore', 'ignore', logFd], env: { ...process.env, PRISM_LOG_LEVEL: 'info' } });
  } finally {
    fs.closeSync(logFd);
  }
  track(child);
  if (child.pid === undefined) throw new Error(`cannot start ${name}`);
  return { name, child, pid: child.pid, logPath };
}

async function waitFor(p: Proc, ready: () => Promise<boolean> | boolean, what: string): Promise<void> {
  const deadline = Date.now() + 30_000;
  for (;;) {
    if (!alive(p.child)) throw new Error(`${p.name} exited at start (${String(p.child.exitCode ?? p.child.signalCode)}); log:\n${fs.readFileSync(p.logPath, 'utf8')}`);
    if (await ready()) return;
    if (Date.now() > deadline) throw new Error(`${p.name}: no ${what} within 30 s; log:\n${fs.readFileSync(p.logPath, 'utf8')}`);
    await sleep(50);
  }
}

function connects(sock: string): Promise<boolean> {
  return new Promise((resolve) => {
    const c = net.connect({ path: sock });
    c.once('connect', () => {
      c.destroy();
      resolve(true);
    });
    c.once('error', () => resolve(false));
  });
}

// --- results -------------------------------------------------------------------------------------

type PathName = 'vsock' | 'serial';
const PATHS: PathName[] = ['vsock', 'serial'];

interface Sample {
  /** MiB/s */
  value: number;
  /** CPU seconds of prism's processes (vsock device + 9P server) during the sample. */
  cpu: number;
  seconds: number;
}

interface Row {
  id: 'up' | 'down' | 'write' | 'read';
  label: string;
  samples: Record<PathName, Sample[]>;
  commands: Record<PathName, string>;
}

/** prism's CPU seconds so far (both processes). */
type CpuMeter = () => number;

// --- the guest -----------------------------------------------------------------------------------

function guestScript(): string {
  const seq = Array.from({ length: cfg.reps }, (_, rep) => (rep % 2 === 0 ? PATHS : [...PATHS].reverse()).map((p) => `${p}:${rep + 1}`).join(' ')).join(' ');
  const streamBytes = cfg.streamMiB * MiB;
  const b = cfg.socatBuffer;
  return `
fail() { echo "@@FAIL $*"; exit 1; }
up() { cut -d' ' -f1 /proc/uptime; }
dd if=/dev/zero of=/tmp/up bs=1M count=${cfg.streamMiB} 2>/dev/null || fail "cannot make /tmp/up"
raw=$(vport raw) || fail "no virtio-serial port raw"
exec 3<>"$raw"
socat -b 1048576 UNIX-LISTEN:/run/9p.sock GOPEN:"$(vport p9)" &
i=0; while [ ! -S /run/9p.sock ]; do i=$((i+1)); [ $i -gt 250 ] && fail "no socat socket for 9p"; usleep 20000; done
mkdir -p /mnt/serial /mnt/vsock
mount -t 9p -o trans=unix,version=9p2000.L,msize=${cfg.msize},cache=none /run/9p.sock /mnt/serial || fail "mount over virtio-serial"
cat > /tmp/m.sh <<EOF
#!/bin/sh
exec mount -t 9p -o trans=fd,rfdno=0,wfdno=1,version=9p2000.L,msize=${cfg.msize},cache=none none /mnt/vsock
EOF
chmod 755 /tmp/m.sh
socat VSOCK-CONNECT:2:${NINEP_PORT} EXEC:/tmp/m.sh,nofork || fail "mount over vsock"
for p in vsock serial; do
  echo "@@MSIZE $p $(grep " /mnt/$p " /proc/mounts | sed -n 's/.*msize=\\([0-9]*\\).*/\\1/p')"
done
for s in ${seq}; do
  p=\${s%:*}; rep=\${s#*:}
  # stream guest -> host
  echo "@@UP $p $rep"
  if [ $p = vsock ]; then
    socat -u -b ${b} OPEN:/tmp/up VSOCK-CONNECT:2:${UP_PORT} || fail "stream up over vsock"
  else
    cat /tmp/up >&3 || fail "stream up over virtio-serial"
  fi
  dd bs=1 count=1 of=/dev/null <&3 2>/dev/null  # the host's go-ahead, once it has every byte
  # stream host -> guest
  if [ $p = vsock ]; then
    socat -u -b ${b} VSOCK-LISTEN:${DOWN_PORT} CREATE:/tmp/down &
    echo "@@DOWN-READY $p $rep"
    wait $! || fail "stream down over vsock"
  else
    echo "@@DOWN-READY $p $rep"
    dd bs=${b} count=${streamBytes} iflag=count_bytes,fullblock of=/tmp/down <&3 2>/dev/null || fail "stream down over virtio-serial"
  fi
  echo "@@DOWN-DONE $p $rep $(wc -c < /tmp/down)"
  rm -f /tmp/down
  # 9P
  f=/mnt/$p/bench-$p.bin
  echo "@@BEGIN write $p $rep"; t0=$(up)
  dd if=/dev/zero of=$f bs=1M count=${cfg.ddMiB} 2>/dev/null || fail "dd write over $p"
  t1=$(up); echo "@@END write $p $rep $t0 $t1"
  echo "@@BEGIN read $p $rep"; t0=$(up)
  r=$(dd if=$f of=/dev/null bs=1M 2>&1) || fail "dd read over $p: $r"
  t1=$(up); echo "@@END read $p $rep $t0 $t1 $(echo "$r" | sed -n 's/^\\([0-9]*\\)+0 records in$/\\1/p')"
  rm -f $f
done
for p in vsock serial; do umount /mnt/$p || fail "umount $p"; done
exit 0
`;
}

interface HostEnds {
  /** The chardev connection of the raw virtio-serial port. */
  raw: net.Socket | null;
  up: Listener;
}

async function runBench(work: string, uds: string, serialSock: string, rawSock: string, cpu: CpuMeter, rows: Record<Row['id'], Row>, notes: string[], signal: AbortSignal): Promise<void> {
  const lab = labPaths();
  const chunk = randomBytes(MiB);
  const streamBytes = cfg.streamMiB * MiB;
  const failures: string[] = [];
  const fail = (why: string): void => {
    failures.push(why);
    log(`error: ${why}`);
  };

  // The raw virtio-serial port: QEMU connects at start; this process is the host program.
  const rawServer = net.createServer({ allowHalfOpen: true });
  await new Promise<void>((resolve, reject) => {
    rawServer.once('error', reject);
    rawServer.listen(rawSock, resolve);
  });
  const ends: HostEnds = { raw: null, up: await listen(`hvsock:${uds}:${UP_PORT}`) };

  // What the host expects next on each stream, and when it started.
  let upExpect: { path: PathName; rep: string; got: number; t0: number; cpu0: number } | null = null;
  const record = (row: Row, p: PathName, seconds: number, cpu0: number, mib: number): void => {
    const value = mib / seconds;
    row.samples[p].push({ value, cpu: cpu() - cpu0, seconds });
    log(`${row.label} via ${p}: ${value.toFixed(1)} MiB/s`);
  };
  const upData = (p: PathName, n: number): void => {
    const e = upExpect;
    if (!e || e.path !== p) {
      fail(`${n} unexpected bytes on the ${p} stream`);
      return;
    }
    if (e.got === 0) e.t0 = performance.now();
    e.got += n;
    if (e.got > streamBytes) fail(`the guest sent ${e.got} bytes over ${p}, more than ${streamBytes}`);
    if (e.got === streamBytes) {
      record(rows.up, p, (performance.now() - e.t0) / 1000, e.cpu0, cfg.streamMiB);
      upExpect = null;
      ends.raw?.write('k'); // go ahead
    }
  };
  rawServer.on('connection', (s: net.Socket) => {
    if (ends.raw) {
      fail('a second connection on the raw virtio-serial port');
      s.destroy();
      return;
    }
    ends.raw = s;
    s.on('data', (d: Buffer) => upData('serial', d.length));
    s.on('error', (e) => fail(`raw virtio-serial port: ${e.message}`));
  });
  ends.up.on('connection', ({ stream }) => {
    stream.on('data', (d: Buffer) => upData('vsock', d.length));
    stream.on('end', () => stream.end());
    stream.on('error', (e: Error) => fail(`vsock stream up: ${e.message}`));
  });

  let down: { path: PathName; rep: string; t0: number; cpu0: number; work: Promise<void> } | null = null;
  const downReady = (p: PathName, rep: string): void => {
    const d = { path: p, rep, t0: 0, cpu0: 0, work: Promise.resolve() };
    if (p === 'vsock') {
      d.work = (async () => {
        let s: Duplex | undefined;
        for (let attempt = 1; !s; attempt++) {
          try {
            s = await dial(`hvsock:${uds}:${DOWN_PORT}`, { timeoutMs: 20_000 });
          } catch (e) {
            if (attempt >= 40) throw e;
            await sleep(100); // socat prints its marker before it listens
          }
        }
        const ended = new Promise<void>((resolve) => s.once('end', resolve));
        s.resume();
        d.cpu0 = cpu();
        d.t0 = performance.now();
        await writeMiB(s, chunk, cfg.streamMiB, true);
        await ended; // the guest closes once it has written every byte to its file
        record(rows.down, 'vsock', (performance.now() - d.t0) / 1000, d.cpu0, cfg.streamMiB);
        s.destroy();
      })().catch((e: Error) => fail(`vsock stream down: ${e.message}`));
    } else {
      const raw = ends.raw;
      if (!raw) {
        fail('QEMU never connected the raw virtio-serial port');
        return;
      }
      d.cpu0 = cpu();
      d.t0 = performance.now();
      d.work = writeMiB(raw, chunk, cfg.streamMiB, false).catch((e: Error) => fail(`virtio-serial stream down: ${e.message}`));
    }
    down = d;
  };
  const downDone = async (p: PathName, rep: string, bytes: number): Promise<void> => {
    const d = down;
    if (!d || d.path !== p || d.rep !== rep) {
      fail(`@@DOWN-DONE ${p} ${rep} without a transfer`);
      return;
    }
    if (bytes !== streamBytes) fail(`the guest received ${bytes} bytes over ${p}, expected ${streamBytes}`);
    if (p === 'serial') record(rows.down, 'serial', (performance.now() - d.t0) / 1000, d.cpu0, cfg.streamMiB);
    await d.work;
    down = null;
  };

  const cpuAt = new Map<string, number>();
  const msizes: Partial<Record<PathName, number>> = {};
  const onLine = (line: string): void => {
    const w = line.trim().split(/\s+/);
    switch (w[0]) {
      case '@@FAIL':
        fail(line.trim());
        break;
      case '@@MSIZE':
        msizes[w[1] as PathName] = Number(w[2]);
        break;
      case '@@UP':
        upExpect = { path: w[1] as PathName, rep: w[2] as string, got: 0, t0: 0, cpu0: cpu() };
        break;
      case '@@DOWN-READY':
        downReady(w[1] as PathName, w[2] as string);
        break;
      case '@@DOWN-DONE':
        void downDone(w[1] as PathName, w[2] as string, Number(w[3]));
        break;
      case '@@BEGIN':
        cpuAt.set(`${w[1]} ${w[2]} ${w[3]}`, cpu());
        break;
      case '@@END': {
        const [, kind, p, rep, t0, t1, records] = w as [string, 'write' | 'read', PathName, string, string, string, string | undefined];
        const seconds = Number(t1) - Number(t0);
        if (kind === 'read' && Number(records) !== cfg.ddMiB) fail(`the guest read ${records} MiB records over ${p}, expected ${cfg.ddMiB}`);
        record(rows[kind], p, seconds, cpuAt.get(`${kind} ${p} ${rep}`) ?? NaN, cfg.ddMiB);
        break;
      }
    }
  };

  let pending = '';
  log(`guest: booting (${cfg.reps} repetitions: ${cfg.streamMiB} MiB streams each way, ${cfg.ddMiB} MiB dd write + read, per path)`);
  try {
    const r = await runGuest({
      lab,
      script: guestScript(),
      memoryMiB: Math.max(512, 2 * cfg.streamMiB + 384),
      vhostUser: [{ kind: 'vsock', socket: path.join(work, 'vu.sock') }],
      serialPorts: [
        { name: 'p9', path: serialSock },
        { name: 'raw', path: rawSock },
      ],
      timeoutMs: 120_000 + cfg.reps * 2 * (4 * cfg.streamMiB + 4 * cfg.ddMiB) * 1000, // 1 MiB/s would still finish
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
    if (failures.length > 0 || r.exitCode !== 0) {
      const tail = r.console.trimEnd().split('\n').slice(-30).join('\n');
      throw new Error(`guest run failed: ${failures[0] ?? `exit ${String(r.exitCode)}, timedOut ${String(r.timedOut)}`}\n${tail}\n${r.stderr}`);
    }
    notes.push(`9P msize negotiated: vsock ${msizes.vsock ?? '?'}, virtio-serial ${msizes.serial ?? '?'} (asked ${cfg.msize})`);
    log(`guest: done in ${(r.durationMs / 1000).toFixed(1)} s (boot to /init ${((r.initMs ?? 0) / 1000).toFixed(1)} s)`);
  } finally {
    ends.raw?.destroy();
    await ends.up.close();
    await new Promise<void>((resolve) => rawServer.close(() => resolve()));
  }
}

// --- output --------------------------------------------------------------------------------------

function summary(row: Row): { vsock: number; serial: number; ratio: number; vsockCpu: number; serialCpu: number } {
  const vsock = median(row.samples.vsock.map((s) => s.value));
  const serial = median(row.samples.serial.map((s) => s.value));
  return {
    vsock,
    serial,
    ratio: vsock / serial,
    vsockCpu: median(row.samples.vsock.map((s) => s.cpu)),
    serialCpu: median(row.samples.serial.map((s) => s.cpu)),
  };
}

function table(rows: Row[]): string {
  const head = ['row', 'unit', 'vsock', 'virtio-serial', 'vsock/serial', 'prism CPU s (vsock)', 'prism CPU s (serial)'];
  const body = rows.map((r) => {
    const s = summary(r);
    return [r.label, 'MiB/s', fmt(s.vsock), fmt(s.serial), `${s.ratio.toFixed(2)}${s.ratio < 1 ? ' <' : ''}`, s.vsockCpu.toFixed(2), s.serialCpu.toFixed(2)];
  });
  const widths = head.map((h, i) => Math.max(h.length, ...body.map((b) => (b[i] as string).length)));
  const line = (cells: string[]): string => `| ${cells.map((c, i) => (i === 0 ? c.padEnd(widths[i] as number) : c.padStart(widths[i] as number))).join(' | ')} |`;
  const sep = `|${widths.map((w, i) => (i === 0 ? `:${'-'.repeat(w + 1)}` : `${'-'.repeat(w + 1)}:`)).join('|')}|`;
  return [line(head), sep, ...body.map(line)].join('\n');
}

// --- main ----------------------------------------------------------------------------------------

async function main(): Promise<void> {
  const t0 = performance.now();
  const stale = distStale();
  const runner: 'dist' | 'tsx' = opt.runner === 'auto' ? (stale === null ? 'dist' : 'tsx') : (opt.runner as 'dist' | 'tsx');
  if (runner === 'dist' && stale !== null) log(`warning: --runner dist although ${stale}`);
  log(`prism runs from ${runner === 'dist' ? 'dist/ (built)' : `src/ through tsx${stale ? ` (${stale}; \`npm run build\` to use dist/)` : ''}`}`);
  labPaths(); // fail early, with the set-up hint, when the lab is missing

  const base = fs.existsSync('/dev/shm') ? '/dev/shm' : os.tmpdir();
  const work = fs.mkdtempSync(path.join(base, 'prism-bench-vsock-'));
  fs.chmodSync(work, 0o755);
  const exportDir = path.join(work, 'export');
  fs.mkdirSync(exportDir, { mode: 0o755 });
  const uds = path.join(work, 'hv.sock');
  const serialSock = path.join(work, 'p9.sock');
  const rawSock = path.join(work, 'raw.sock');
  const session = benchSession(work, opt.keep, log);
  const procs: Proc[] = [];
  const mk = (id: Row['id'], label: string, commands: Record<PathName, string>): Row => ({ id, label, samples: { vsock: [], serial: [] }, commands });
  const b = cfg.socatBuffer;
  const rows: Record<Row['id'], Row> = {
    up: mk('up', `stream guest → host, ${cfg.streamMiB} MiB`, {
      vsock: `socat -u -b ${b} OPEN:/tmp/up VSOCK-CONNECT:2:${UP_PORT}  (host: listen hvsock:UDS:${UP_PORT}, i.e. UDS_${UP_PORT})`,
      serial: 'cat /tmp/up >&3  (fd 3 = /dev/vportNpM; host: the chardev socket)',
    }),
    down: mk('down', `stream host → guest, ${cfg.streamMiB} MiB`, {
      vsock: `socat -u -b ${b} VSOCK-LISTEN:${DOWN_PORT} CREATE:/tmp/down  (host: dial hvsock:UDS:${DOWN_PORT}, CONNECT ${DOWN_PORT})`,
      serial: `dd bs=${b} count=${cfg.streamMiB * MiB} iflag=count_bytes,fullblock of=/tmp/down <&3`,
    }),
    write: mk('write', `9P dd write ${cfg.ddMiB} MiB, bs=1M, cache=none`, {
      vsock: `dd if=/dev/zero of=/mnt/vsock/f bs=1M count=${cfg.ddMiB}  (mounted by: socat VSOCK-CONNECT:2:${NINEP_PORT} EXEC:/tmp/m.sh,nofork; m.sh: mount -t 9p -o trans=fd,rfdno=0,wfdno=1,version=9p2000.L,msize=${cfg.msize},cache=none none /mnt/vsock)`,
      serial: `dd if=/dev/zero of=/mnt/serial/f bs=1M count=${cfg.ddMiB}  (mounted by: socat -b 1048576 UNIX-LISTEN:/run/9p.sock GOPEN:/dev/vportNpM & mount -t 9p -o trans=unix,version=9p2000.L,msize=${cfg.msize},cache=none /run/9p.sock /mnt/serial)`,
    }),
    read: mk('read', `9P dd read ${cfg.ddMiB} MiB, bs=1M, cache=none`, {
      vsock: 'dd if=/mnt/vsock/f of=/dev/null bs=1M',
      serial: 'dd if=/mnt/serial/f of=/dev/null bs=1M',
    }),
  };
  const notes: string[] = [];
  try {
    const vsock = startPrism('vsock', ['vsock', 'serve', '--socket', path.join(work, 'vu.sock'), '--cid', String(GUEST_CID), '--uds', uds], work, runner);
    procs.push(vsock);
    const ninep = startPrism('9p', ['9p', 'serve', exportDir, '--listen', `unix:${uds}_${NINEP_PORT}`, '--listen', `unix:${serialSock}`, '--msize', String(cfg.msize)], work, runner);
    procs.push(ninep);
    await waitFor(vsock, () => fs.readFileSync(vsock.logPath, 'utf8').includes('vsock device ready'), "'vsock device ready'");
    await waitFor(ninep, () => connects(serialSock), `listener on ${serialSock}`);
    log(`prism up: vsock device pid ${vsock.pid}, 9P server pid ${ninep.pid}; work dir ${work}`);
    const load0 = fs.readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ');
    if (Number(load0.split(' ')[0]) > 0.5) log(`warning: the machine is busy (load ${load0}): expect noisy numbers`);
    const cpu: CpuMeter = () => cpuSeconds(vsock.pid) + cpuSeconds(ninep.pid);

    await runBench(work, uds, serialSock, rawSock, cpu, rows, notes, session.signal);

    for (const p of procs) if (!alive(p.child)) throw new Error(`${p.name} died during the bench; log:\n${fs.readFileSync(p.logPath, 'utf8')}`);
    await stopChild(vsock.child);
    // The device's own account: connections and drops, from its last log line.
    const stopped = fs
      .readFileSync(vsock.logPath, 'utf8')
      .trim()
      .split('\n')
      .map((l) => {
        try {
          return JSON.parse(l) as { msg?: string; counters?: { connectionsOpened: number; connectionsRefused: number; drops: Record<string, number> } };
        } catch {
          return {};
        }
      })
      .find((l) => l.msg === 'vsock device stopped');
    if (stopped?.counters) {
      const drops = Object.entries(stopped.counters.drops).filter(([, n]) => n > 0);
      notes.push(
        `vsock device: ${stopped.counters.connectionsOpened} connections opened, ${stopped.counters.connectionsRefused} refused (the bench's dial before socat listens), ` +
          `drops: ${drops.length === 0 ? 'none' : drops.map(([k, n]) => `${k} ${n}`).join(', ')}`,
      );
    }
    const load1 = fs.readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ');
    const elapsed = (performance.now() - t0) / 1000;
    const list = Object.values(rows);
    const header = [
      `$ ${commandLine}`,
      `prism vsock device vs virtio-serial — ${quick ? 'quick' : 'full'} run, median of ${cfg.reps} interleaved repetition${cfg.reps === 1 ? '' : 's'}, ${elapsed.toFixed(0)} s`,
      `guest: QEMU TCG, 1 vCPU, Linux ${labPaths().kernelVersion}; host: ${os.cpus().length} CPUs (${os.cpus()[0]?.model ?? '?'}), Linux ${os.release()}, node ${process.version}, prism from ${runner}; load ${load0} -> ${load1}`,
    ].join('\n');
    const legend = [
      '- vsock: prism vsock serve (vhost-user-vsock-pci, hybrid host side); virtio-serial: a QEMU virtserialport on a Unix socket.',
      '- stream rows: this process is the host program; timed on the host (first byte to last byte; host → guest: first write to the guest having it all).',
      '- 9P rows: one prism 9p serve process listening on UDS_564 (vsock) and on the port\'s socket (virtio-serial); timed in the guest (/proc/uptime).',
      '- prism CPU s: median per repetition of utime + stime of the vsock device and 9P server processes together (the virtio-serial path runs no prism process for streams).',
      ...list.flatMap((r) => PATHS.map((p) => `- ${r.label}, ${p === 'vsock' ? 'vsock' : 'virtio-serial'}: ${r.commands[p]}`)),
      ...notes.map((n) => `- ${n}`),
    ];
    process.stdout.write(`\n${header}\n\n${table(list)}\n\n${legend.join('\n')}\n`);
    if (opt.json) {
      const out = {
        date: new Date().toISOString(),
        command: commandLine,
        quick,
        config: cfg,
        host: { cpus: os.cpus().length, model: os.cpus()[0]?.model, kernel: os.release(), node: process.version },
        runner,
        elapsedSeconds: elapsed,
        loadavg: { start: load0, end: load1 },
        notes,
        rows: list.map((r) => ({ id: r.id, label: r.label, unit: 'MiB/s', ...summary(r), commands: r.commands, samples: r.samples })),
      };
      fs.writeFileSync(opt.json, `${JSON.stringify(out, null, 2)}\n`);
      log(`wrote ${opt.json}`);
    }
  } finally {
    await session.end(procs.map((p) => p.child));
  }
}

await main();
