// Sequential-read bench of USB/IP mass storage through the Linux vhci-hcd in a lab guest (QEMU 7.2,
// Linux 6.1, TCG), two exporters in one guest boot, same image size and the same dd:
//
//   A. prism: `prism usbip serve --listen unix:UDS_3240 --device emulated:storage:IMG --allow busid=1-1`
//      on the host, behind a prism vsock device (`prism vsock serve`, guest CID 3); in the guest
//      socat turns TCP 127.0.0.1:PORT into VSOCK-CONNECT:2:3240 and the Linux `usbip attach`
//      imports 1-1 (as test/usbip-guest.test.ts does). Two rows: A with the test's socat exactly,
//      A' with `nodelay` and a 256 KiB buffer (Nagle on the bridge's TCP side stalls every URB);
//   B. the kernel path, all inside the same guest: a configfs mass-storage gadget on dummy_hcd
//      backed by an image in the guest's /tmp, bound to usbip-host (`usbip bind`), exported by the
//      Debian `usbipd` (copied in with its libraries) and imported over loopback TCP with
//      `usbip attach` into vhci-hcd.
//
// Each measurement attaches, runs `echo 3 > /proc/sys/vm/drop_caches; dd if=/dev/sdX of=/dev/null
// bs=1M count=N iflag=direct` on the disk vhci-hcd made, timed by the guest (/proc/uptime, 10 ms),
// and detaches; repetitions are interleaved (A A' B, then B A' A, ...), medians reported. The prism
// rows also give the CPU seconds (utime + stime, /proc/PID/stat) of the prism usbip server and of
// the vsock device during the dd.
//
//   node --import tsx bench/usbip.ts [--quick] [--mib N] [--reps N] [--keep]
//   npm run bench:usbip -- [options]
//
// Needs the guest lab (`bash lab/setup.sh`) and the host's /usr/sbin/usbipd (Debian usbip).
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { parseArgs } from 'node:util';
import { labPaths, runGuest, type GuestFile } from '../lab/guest.js';
import { REPO, alive, cpuSeconds, killAllNow, median, sleep, stopChild, track } from './common.js';

const MiB = 1024 * 1024;
const GUEST_CID = 3;
const PORT = 3240;
const TARGET_MBS = 40;
/** The guest's bridges from the usbip tool's TCP to vsock: exactly as test/usbip-guest.test.ts, and tuned (no Nagle, 256 KiB buffer). */
const SOCAT_PORT = { 'prism-test': PORT, 'prism-tuned': PORT + 2 } as const;
const KERNEL_PORT = PORT + 1;
const SOCAT = {
  'prism-test': `socat TCP-LISTEN:${SOCAT_PORT['prism-test']},bind=127.0.0.1,reuseaddr,fork VSOCK-CONNECT:2:${PORT}`,
  'prism-tuned': `socat -b 262144 TCP-LISTEN:${SOCAT_PORT['prism-tuned']},bind=127.0.0.1,reuseaddr,fork,nodelay VSOCK-CONNECT:2:${PORT}`,
} as const;
type PrismRow = keyof typeof SOCAT;
const PRISM_ROWS = Object.keys(SOCAT) as PrismRow[];

// --- options -------------------------------------------------------------------------------------

const { values: opt } = parseArgs({
  options: {
    quick: { type: 'boolean', default: false },
    mib: { type: 'string' },
    reps: { type: 'string' },
    keep: { type: 'boolean', default: false },
    help: { type: 'boolean', short: 'h', default: false },
  },
});
if (opt.help) {
  process.stdout.write(
    'usage: node --import tsx bench/usbip.ts [--quick] [--mib N] [--reps N] [--keep]\n' +
      '  --quick     16 MiB image and dd, 1 repetition (smoke test)\n' +
      '  --mib N     image size and dd count in MiB (default 64)\n' +
      '  --reps N    dd repetitions per exporter (median reported; default 3, quick 1)\n' +
      '  --keep      keep the work directory (logs, image, guest console)\n',
  );
  process.exit(0);
}
const quick = opt.quick;
const mib = opt.mib !== undefined ? Number(opt.mib) : quick ? 16 : 64;
if (!Number.isInteger(mib) || mib < 1 || mib > 256) throw new Error(`--mib must be 1..256, got ${opt.mib}`);
const reps = opt.reps !== undefined ? Number(opt.reps) : quick ? 1 : 3;
if (!Number.isInteger(reps) || reps < 1 || reps > 20) throw new Error(`--reps must be 1..20, got ${opt.reps}`);

const commandLine = ((): string => {
  const args = process.argv.slice(2).join(' ');
  if (process.env['npm_lifecycle_event'] === 'bench:usbip') return `npm run bench:usbip${args ? ` -- ${args}` : ''}`;
  return `node --import tsx bench/usbip.ts${args ? ` ${args}` : ''}`;
})();

const log = (msg: string): void => {
  process.stderr.write(`[bench ${new Date().toISOString().slice(11, 19)}] ${msg}\n`);
};

// --- processes we start (only those are ever killed) ---------------------------------------------


interface Proc {
  name: string;
  child: ChildProcess;
  pid: number;
  logPath: string;
}

function startPrism(name: string, args: string[], work: string): Proc {
  const logPath = path.join(work, `${name}.log`);
  const logFd = fs.openSync(logPath, 'w');
  let child: ChildProcess;
  try {
    child = spawn(process.execPath, ['--import', 'tsx', path.join(REPO, 'src/cli/main.ts'), ...args], { cwd: REPO, stdio: ['ignore', 'ignore', logFd], env: { ...process.env, PRISM_LOG_LEVEL: 'info' } });
  } finally {
    fs.closeSync(logFd);
  }
  track(child);
  if (child.pid === undefined) throw new Error(`cannot start ${name}`);
  return { name, child, pid: child.pid, logPath };
}

async function waitForLog(p: Proc, text: string): Promise<void> {
  const deadline = Date.now() + 30_000;
  for (;;) {
    const l = fs.readFileSync(p.logPath, 'utf8');
    if (l.includes(text)) return;
    if (!alive(p.child)) throw new Error(`${p.name} exited at start (${String(p.child.exitCode ?? p.child.signalCode)}); log:\n${l}`);
    if (Date.now() > deadline) throw new Error(`${p.name}: no '${text}' within 30 s; log:\n${l}`);
    await sleep(50);
  }
}

/** usbipd and the shared libraries it needs (the same way lab/setup.sh copies usbip). */
function usbipdFiles(): GuestFile[] {
  const bin = '/usr/sbin/usbipd';
  if (!fs.existsSync(bin)) throw new Error(`${bin} is missing (apt-get install usbip)`);
  const libs = execFileSync('ldd', [bin], { encoding: 'utf8' })
    .split('\n')
    .map((l) => /=>\s*(\/\S+)/.exec(l)?.[1] ?? /^\s*(\/\S+)/.exec(l)?.[1])
    .filter((l): l is string => l !== undefined);
  return [bin, ...libs].map((p) => ({ path: p, data: fs.readFileSync(p), mode: 0o755 }));
}

// --- the guest -----------------------------------------------------------------------------------

const DD = (dev: string): string => `dd if=${dev} of=/dev/null bs=1M count=${mib} iflag=direct`;

function guestScript(): string {
  return `
fail() { echo "@@FAIL $*"; }
up() { cut -d' ' -f1 /proc/uptime; }
mkdir -p /var/run
# Waits for a new sd disk (not in "$1") and prints its name.
newdisk() {
  i=0
  while [ $i -lt 300 ]; do
    for d in /sys/block/sd*; do
      [ -e "$d" ] || continue
      n=\${d##*/}
      case " $1 " in *" $n "*) continue ;; esac
      [ -b /dev/$n ] && [ "$(cat $d/size)" != 0 ] && { echo $n; return 0; }
    done
    i=$((i+1)); usleep 100000
  done
  return 1
}
disks() { ls /sys/block | grep '^sd' | tr '\\n' ' '; }
# One measurement: $1 row, $2 repetition, $3 TCP port, $4 busid. Attach, dd, detach.
onerow() {
  before=$(disks)
  usbip --tcp-port $3 attach -r 127.0.0.1 -b $4 || { fail "$1: usbip attach (rep $2)"; return; }
  if d=$(newdisk "$before"); then
    echo "@@DISK $1 $d $(cat /sys/block/$d/size) $(cat /sys/block/$d/queue/max_sectors_kb)"
    echo 3 > /proc/sys/vm/drop_caches
    echo "@@BEGIN $1 $2"; t0=$(up)
    out=$(${DD('/dev/$d')} 2>&1) || fail "$1: dd: $out"
    t1=$(up)
    echo "@@END $1 $2 $t0 $t1 $(echo "$out" | sed -n 's/^\\([0-9]*\\)+0 records in$/\\1/p')"
    echo "$out" | sed "s/^/@@DD $1 /"
  else
    fail "$1: no disk after attach (rep $2)"; d=
  fi
  p=$(usbip port 2>/dev/null | sed -n 's/^Port \\([0-9]*\\): <Port in Use>.*/\\1/p' | head -n1)
  [ -n "$p" ] && { usbip detach -p $p >/dev/null || fail "$1: detach port $p"; }
  i=0; while [ -n "$d" ] && [ -e /sys/block/$d ] && [ $i -lt 50 ]; do i=$((i+1)); usleep 100000; done
  sleep 1
}
waitlist() { # $1 row, $2 port
  i=0; until usbip --tcp-port $2 list -r 127.0.0.1 > /tmp/list 2>&1; do i=$((i+1)); [ $i -gt 20 ] && break; usleep 500000; done
  sed "s/^/@@LIST $1 /" /tmp/list
}

# ---- A, A': prism over vsock, one guest socat bridge each ----
${PRISM_ROWS.map((r) => `${SOCAT[r]} &\nwaitlist ${r} ${SOCAT_PORT[r]}`).join('\n')}

# ---- B: kernel usbip-host exporting a configfs gadget on dummy_hcd, usbipd on ${KERNEL_PORT} ----
busid=
kernel() {
  dd if=/dev/zero of=/tmp/gadget.img bs=1M count=${mib} 2>/dev/null || { fail "kernel: cannot make /tmp/gadget.img"; return; }
  grep -q ' /sys/kernel/config ' /proc/mounts || mount -t configfs none /sys/kernel/config || { fail "kernel: mount configfs"; return; }
  g=/sys/kernel/config/usb_gadget/g
  mkdir -p $g || { fail "kernel: mkdir gadget"; return; }
  echo 0x1d6b > $g/idVendor; echo 0x0104 > $g/idProduct
  mkdir -p $g/strings/0x409
  echo prism-bench > $g/strings/0x409/serialnumber; echo prism > $g/strings/0x409/manufacturer; echo gadget-storage > $g/strings/0x409/product
  mkdir -p $g/configs/c.1 $g/functions/mass_storage.0
  echo /tmp/gadget.img > $g/functions/mass_storage.0/lun.0/file || { fail "kernel: lun file"; return; }
  ln -s $g/functions/mass_storage.0 $g/configs/c.1/ || { fail "kernel: link function"; return; }
  udc=$(ls /sys/class/udc | head -n1)
  echo "@@B-UDC $udc"
  echo "$udc" > $g/UDC || { fail "kernel: bind UDC"; return; }
  b=
  i=0
  while [ -z "$b" ] && [ $i -lt 100 ]; do
    for d in /sys/bus/usb/devices/*-*; do
      case \${d##*/} in *:*) continue ;; esac
      [ "$(cat $d/idVendor 2>/dev/null)" = 1d6b ] && [ "$(cat $d/idProduct 2>/dev/null)" = 0104 ] && readlink -f $d | grep -q dummy_hcd && b=\${d##*/}
    done
    i=$((i+1)); usleep 100000
  done
  [ -n "$b" ] || { fail "kernel: gadget not enumerated on dummy_hcd"; return; }
  echo "@@B-BUSID $b $(readlink -f /sys/bus/usb/devices/$b)"
  usleep 500000
  usbip bind -b $b || { fail "kernel: usbip bind"; return; }
  usbipd -4 -D -t ${KERNEL_PORT} || { fail "kernel: usbipd"; return; }
  waitlist kernel ${KERNEL_PORT}
  busid=$b
}
kernel

# ---- the measurements, interleaved: rows in order in odd repetitions, reversed in even ones ----
r=1
while [ $r -le ${reps} ]; do
  if [ $((r % 2)) = 1 ]; then rows="${[...PRISM_ROWS, 'kernel'].join(' ')}"; else rows="${['kernel', ...[...PRISM_ROWS].reverse()].join(' ')}"; fi
  for row in $rows; do
    case $row in
${PRISM_ROWS.map((r) => `      ${r}) onerow ${r} $r ${SOCAT_PORT[r]} 1-1 ;;`).join('\n')}
      kernel) [ -n "$busid" ] && onerow kernel $r ${KERNEL_PORT} $busid ;;
    esac
  done
  r=$((r+1))
done
exit 0
`;
}

// --- main ----------------------------------------------------------------------------------------

type Exporter = PrismRow | 'kernel';

interface Sample {
  seconds: number;
  bytes: number;
  cpuServer?: number;
  cpuVsock?: number;
}

async function main(): Promise<void> {
  const lab = labPaths();
  const t0 = performance.now();
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'prism-bench-usbip-'));
  const onSignal = (): void => {
    killAllNow();
    if (!opt.keep) fs.rmSync(work, { recursive: true, force: true });
    process.exit(130);
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  const procs: Proc[] = [];
  try {
    const image = path.join(work, 'disk.img');
    {
      const fd = fs.openSync(image, 'w');
      const chunk = Buffer.alloc(MiB);
      for (let i = 0; i < mib; i++) fs.writeSync(fd, chunk);
      fs.closeSync(fd);
    }
    const uds = path.join(work, 'vsock.sock');
    const vu = path.join(work, 'vu.sock');
    const vsock = startPrism('vsock', ['vsock', 'serve', '--socket', vu, '--cid', String(GUEST_CID), '--uds', uds], work);
    procs.push(vsock);
    const server = startPrism('usbip', ['usbip', 'serve', '--listen', `unix:${uds}_${PORT}`, '--device', `emulated:storage:${image}`, '--allow', 'busid=1-1'], work);
    procs.push(server);
    await waitForLog(vsock, 'vsock device ready');
    await waitForLog(server, 'usbip server ready');
    log(`prism up: vsock device pid ${vsock.pid}, usbip server pid ${server.pid}; work dir ${work}`);
    const load0 = fs.readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ');

    const samples: Record<Exporter, Sample[]> = { 'prism-test': [], 'prism-tuned': [], kernel: [] };
    let cpu0: { server: number; vsock: number } | null = null;
    let pending = '';
    const isPrism = (w: string): w is PrismRow => (PRISM_ROWS as string[]).includes(w);
    const onLine = (line: string): void => {
      const b = /^@@BEGIN ([\w-]+) (\d+)/.exec(line);
      if (b?.[1] !== undefined && isPrism(b[1])) cpu0 = { server: cpuSeconds(server.pid), vsock: cpuSeconds(vsock.pid) };
      const e = /^@@END ([\w-]+) (\d+) ([\d.]+) ([\d.]+) (\d*)/.exec(line);
      if (e) {
        const who = e[1] as Exporter;
        const s: Sample = { seconds: Number(e[4]) - Number(e[3]), bytes: Number(e[5] || 0) * MiB }; // whole 1 MiB records read
        if (isPrism(who) && cpu0) {
          s.cpuServer = cpuSeconds(server.pid) - cpu0.server;
          s.cpuVsock = cpuSeconds(vsock.pid) - cpu0.vsock;
        }
        samples[who]?.push(s);
        log(`${who} #${e[2]}: ${s.bytes} bytes in ${s.seconds.toFixed(2)} s = ${(s.bytes / s.seconds / 1e6).toFixed(1)} MB/s`);
      }
      if (line.startsWith('@@FAIL')) log(line);
    };
    const g = await runGuest({
      script: guestScript(),
      files: usbipdFiles(),
      vhostUser: [{ kind: 'vsock', socket: vu }],
      memoryMiB: 1024,
      timeoutMs: 600_000,
      consoleLog: path.join(work, 'console.log'),
      onConsole: (text) => {
        pending += text.replace(/\r/g, '');
        const lines = pending.split('\n');
        pending = lines.pop() ?? '';
        for (const l of lines) onLine(l);
      },
    });
    if (g.exitCode !== 0) log(`guest: exit ${String(g.exitCode)} timedOut=${String(g.timedOut)}\n${g.console.split('\n').slice(-40).join('\n')}`);
    for (const p of procs) if (!alive(p.child)) throw new Error(`${p.name} died during the bench; log:\n${fs.readFileSync(p.logPath, 'utf8')}`);
    const fails = [...g.console.matchAll(/^@@FAIL (.*)$/gm)].map((m) => m[1] ?? '');
    const field = (name: string): string | undefined => new RegExp(`^@@${name} (.*)$`, 'm').exec(g.console)?.[1]?.trim();

    // --- the table ---
    const expectBytes = mib * MiB;
    const okSamples = (xs: Sample[]): Sample[] => xs.filter((s) => s.bytes === expectBytes && s.seconds > 0);
    const rateOf = (w: Exporter): number => {
      const xs = okSamples(samples[w]);
      return xs.length ? median(xs.map((s) => s.bytes / s.seconds / 1e6)) : NaN;
    };
    const fmt = (n: number): string => (Number.isFinite(n) ? n.toFixed(1) : '-');
    const label: Record<Exporter, string> = {
      'prism-test': 'A  prism usbip serve, vsock; guest socat as in the test',
      'prism-tuned': "A' prism usbip serve, vsock; guest socat nodelay -b 256K",
      kernel: 'B  kernel usbip-host + usbipd, loopback TCP',
    };
    const failPrefix: Record<Exporter, string> = { 'prism-test': 'prism-test:', 'prism-tuned': 'prism-tuned:', kernel: 'kernel:' };
    const order: Exporter[] = [...PRISM_ROWS, 'kernel'];
    const header = ['exporter', 'MB/s', 'MiB/s', 'seconds', 'prism CPU s (server + vsock dev)', 'disk (sectors, max_sectors_kb)'];
    const rows: string[][] = order.map((w) => {
      const xs = okSamples(samples[w]);
      if (xs.length === 0) return [label[w], `not measured: ${fails.filter((f) => f.startsWith(failPrefix[w])).join('; ') || 'no complete dd result (see the console log, --keep)'}`];
      const r = rateOf(w);
      const disk = field(`DISK ${w}`)?.split(' ');
      return [
        label[w],
        fmt(r),
        fmt(r / 1.048576),
        fmt(median(xs.map((s) => s.seconds))),
        isPrism(w) ? `${median(xs.map((s) => s.cpuServer ?? NaN)).toFixed(2)} + ${median(xs.map((s) => s.cpuVsock ?? NaN)).toFixed(2)}` : '-',
        disk ? `${disk[0]} (${disk[1]}, ${disk[2]})` : '-',
      ];
    });
    const full = [header, ...rows.filter((r) => r.length === header.length)];
    const widths = header.map((_, i) => Math.max(...full.map((r) => (r[i] ?? '').length)));
    const table = [header, ...rows]
      .map((r) => (r.length !== header.length ? `${(r[0] ?? '').padEnd(widths[0] ?? 0)}  ${r[1] ?? ''}` : r.map((c, i) => (i === 0 ? c.padEnd(widths[i] ?? 0) : c.padStart(widths[i] ?? 0))).join('  ')))
      .join('\n');
    const kernelRate = rateOf('kernel');
    const verdicts = PRISM_ROWS.flatMap((w) => {
      const r = rateOf(w);
      const t40 = Number.isFinite(r) ? (r >= TARGET_MBS ? 'met' : 'not met') : 'unknown';
      const tk = Number.isFinite(r) && Number.isFinite(kernelRate) ? `${r >= kernelRate ? 'met' : 'not met'} (ratio ${(r / kernelRate).toFixed(2)})` : 'unknown';
      return [`${label[w].split(' ')[0]}: target ≥ ${TARGET_MBS} MB/s: ${t40} (${fmt(r)} MB/s); target ≥ the kernel path (${fmt(kernelRate)} MB/s): ${tk}`];
    });
    const load1 = fs.readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ');
    const elapsed = (performance.now() - t0) / 1000;
    const busid = field('B-BUSID')?.split(' ')[0] ?? 'BUSID';
    const out = [
      '',
      `$ ${commandLine}`,
      `USB/IP mass-storage sequential read through vhci-hcd: prism vs the kernel's usbip-host — ${mib} MiB image, median of ${reps} dd${reps === 1 ? '' : 's'} per row, one guest boot, ${elapsed.toFixed(0)} s`,
      `guest: QEMU TCG, 1 vCPU, 1 GiB, Linux ${lab.kernelVersion}; host: ${os.cpus().length} CPUs (${os.cpus()[0]?.model ?? '?'}), Linux ${os.release()}, node ${process.version}, prism from src/ via tsx; load ${load0} -> ${load1}`,
      '',
      table,
      '',
      ...verdicts,
      '',
      `- every row, in the guest: echo 3 > /proc/sys/vm/drop_caches; ${DD('/dev/sdX')}   (timed with /proc/uptime; MB = 10^6 bytes)`,
      `- A, A' host: prism vsock serve --socket VU --cid ${GUEST_CID} --uds UDS; prism usbip serve --listen unix:UDS_${PORT} --device emulated:storage:IMG --allow busid=1-1  (IMG: ${mib} MiB of zeros)`,
      ...PRISM_ROWS.map((w) => `- ${label[w].split(' ')[0]} guest: ${SOCAT[w]} & usbip --tcp-port ${SOCAT_PORT[w]} attach -r 127.0.0.1 -b 1-1`),
      `- B guest: configfs gadget g (1d6b:0104, mass_storage.0 lun.0 file=/tmp/gadget.img, ${mib} MiB of zeros on tmpfs) on ${field('B-UDC') ?? 'dummy_udc.0'} (busid ${busid}); usbip bind -b ${busid}; usbipd -4 -D -t ${KERNEL_PORT}; usbip --tcp-port ${KERNEL_PORT} attach -r 127.0.0.1 -b ${busid}`,
      '- prism CPU s: utime + stime (/proc/PID/stat) of the prism usbip server and of the vsock device process during the dd (median).',
      ...fails.map((f) => `- guest error: ${f}`),
    ];
    process.stdout.write(`${out.join('\n')}\n`);
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    await Promise.all(procs.map((p) => stopChild(p.child)));
    killAllNow();
    if (opt.keep) log(`kept ${work}`);
    else fs.rmSync(work, { recursive: true, force: true });
  }
}

await main();
