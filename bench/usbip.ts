// Sequential-read bench of USB/IP mass storage through the Linux vhci-hcd in a lab guest (QEMU 7.2,
// Linux 6.1, TCG), prism's exporter and the kernel's in one guest boot, same image size and the
// same dd. Rows:
//
//   A   prism, the test's bridge: on the host `prism usbip serve --listen unix:UDS_3240 --device
//       emulated:storage:IMG:hs --device emulated:storage:IMG:ss --allow busid=1-1 --allow busid=1-2`
//       behind a prism vsock device (`prism vsock serve`, guest CID 3); in the guest socat turns TCP
//       127.0.0.1:PORT into VSOCK-CONNECT:2:3240 and the Linux `usbip attach` imports 1-1 (high
//       speed), exactly as test/usbip-guest.test.ts does;
//   A'  the same with socat `nodelay` and a 256 KiB buffer (Nagle on the bridge's TCP side stalls
//       every URB);
//   C   the user's path: `prism usbip attach vsock:2:3240 1-1` run in the guest (the host's node and
//       this checkout over a read-only 9p root, chrooted, as test/helpers/lab.ts runHostNode does):
//       vhci-hcd gets the AF_VSOCK socket itself, no bridge; the device at high speed;
//   C'  the same for 1-2, the same image exported as a SuperSpeed device (:ss: usb-storage then
//       moves 1 MiB per SCSI command instead of 120 KiB);
//   B   the kernel path, all inside the guest: a configfs mass-storage gadget (max_speed high-speed)
//       on dummy_hcd backed by an image in the guest's /tmp, bound to usbip-host (`usbip bind`),
//       exported by the Debian `usbipd` (copied in with its libraries) and imported over loopback
//       TCP with `usbip attach` into vhci-hcd;
//   B'  the same with a second gadget (max_speed super-speed, same image) on a second dummy_hcd
//       instance: the guest reloads dummy_hcd with is_super_speed=1 num=2 before making the
//       gadgets (if that fails, B runs on the boot's high-speed dummy_hcd and B' is not measured).
//
// Each measurement attaches, runs `echo 3 > /proc/sys/vm/drop_caches; dd if=/dev/sdX of=/dev/null
// bs=1M count=N iflag=direct` on the disk vhci-hcd made, timed by the guest (/proc/uptime, 10 ms),
// and detaches; repetitions are interleaved (rows in order, then reversed, ...), medians reported.
// The prism rows also give the CPU seconds (utime + stime, /proc/PID/stat) of the prism usbip
// server and of the vsock device during the dd, and every row the disk's max_sectors_kb and
// max_hw_sectors_kb (the most one SCSI command moves).
//
// The guest's CPU share and interrupts during each dd are reported too, and the vsock device logs
// per connection what it sent and what the guest answered (packets, CREDIT_UPDATEs, credit stalls):
// together they say whether a row waits on the host or on the guest.
//
// Where the time goes (2026-11-25, shared 2-CPU host, TCG): in the guest. Every byte crosses the
// guest kernel once more than on real hardware: prism's over virtio-vsock, whose Linux 6.1 driver
// receives in 4 KiB buffers (≈ 20 000 packets per 64 MiB) and, behind vhci-hcd's reader, answers
// almost every packet with a CREDIT_UPDATE (it sends one whenever the reader empties its queue);
// the kernel's over loopback TCP. The kernel rows keep the guest 94-97 % busy at 14-15 MB/s; prism
// over vsock keeps it 80-84 % busy and the host's two prism processes use ≈ 0.4-0.5 CPU s each per
// 64 MiB (a quarter of the vsock device's active time is the eventfd write of its interrupts). The
// socat bridge of the tests (A) costs 8x: Nagle on its TCP side delays each URB's reply; even tuned
// (A') it copies every byte twice more in the guest. SuperSpeed (C') lets usb-storage send 1 MiB
// per SCSI command instead of 120 KiB (max_sectors_kb 1024), a ninth of the URB round trips, and
// the guest answers with half the CREDIT_UPDATEs; its 1 MiB replies exceed the guest socket's
// 256 KiB vsock buffer, so at that size the device waits for credit about once per command
// (46-64 credit stalls per 64 MiB). `prism usbip attach` now sets the socket's
// SO_VM_SOCKETS_BUFFER_SIZE (--vsock-buffer, default 2 MiB): the stalls go to 0, but the rate does
// not measurably change, since the guest's CPU is the limit (2026-11-25, `--rows
// prism-attach-hs,prism-attach-ss --vsock-buffer 0,2M,4M`, median of 3 interleaved, one boot:
// C 15.6 / 14.0 / 17.6, C' 16.9 / 17.0 / 17.0 MB/s; single runs spread 11.6-20.5).
// UAS (several commands in flight) was not tried.
//
// Last run (`npm run bench:usbip`, 64 MiB, median of 3, one boot, host shared with other guests):
//   A 1.9, A' 9.8, C 14.9, C' 18.9 MB/s; B 13.6, B' 14.9 MB/s. Before this bench had rows C and C'
//   (and before :ss existed) the best prism row was A', 7.3-10.4 MB/s in earlier runs.
//
//   node --import tsx bench/usbip.ts [--quick] [--mib N] [--reps N] [--rows ID,...] [--vsock-buffer B,...] [--keep]
//   npm run bench:usbip -- [options]
//   PRISM_BENCH_NODE_ARGS='--cpu-prof --cpu-prof-dir=DIR' adds node options to the host's prism processes.
//
// Needs the guest lab (`bash lab/setup.sh`) and the host's /usr/sbin/usbipd (Debian usbip).
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { parseArgs } from 'node:util';
import { labPaths, runGuest, type GuestFile } from '../lab/guest.js';
import { REPO, alive, benchSession, cpuSeconds, distStale, median, sleep, track } from './common.js';

const MiB = 1024 * 1024;
const GUEST_CID = 3;
const PORT = 3240;
const TARGET_MBS = 40;
const KERNEL_PORT = PORT + 1;
/** The exported devices: the same image at high speed and at SuperSpeed. */
const BUSID = { hs: '1-1', ss: '1-2' } as const;

/** The guest's bridges from the usbip tool's TCP to vsock: exactly as test/usbip-guest.test.ts, and tuned (no Nagle, 256 KiB buffer). */
const SOCAT = {
  'prism-test': { port: PORT, command: `socat TCP-LISTEN:${PORT},bind=127.0.0.1,reuseaddr,fork VSOCK-CONNECT:2:${PORT}` },
  'prism-tuned': { port: PORT + 2, command: `socat -b 262144 TCP-LISTEN:${PORT + 2},bind=127.0.0.1,reuseaddr,fork,nodelay VSOCK-CONNECT:2:${PORT}` },
} as const;

interface RowDef {
  id: string;
  label: string;
  prism: boolean;
  /** Guest shell that attaches the row's device (for kernel rows, $busid_hs / $busid_ss name it). */
  attach: string;
}

const ALL_ROWS: RowDef[] = [
  { id: 'prism-test', label: 'A  prism serve, hs; guest socat as in the test + usbip attach', prism: true, attach: `usbip --tcp-port ${SOCAT['prism-test'].port} attach -r 127.0.0.1 -b ${BUSID.hs}` },
  { id: 'prism-tuned', label: "A' prism serve, hs; guest socat nodelay -b 256K + usbip attach", prism: true, attach: `usbip --tcp-port ${SOCAT['prism-tuned'].port} attach -r 127.0.0.1 -b ${BUSID.hs}` },
  { id: 'prism-attach-hs', label: 'C  prism serve, hs; guest prism usbip attach vsock:2:3240', prism: true, attach: `hostnode usbip attach vsock:2:${PORT} ${BUSID.hs}` },
  { id: 'prism-attach-ss', label: "C' prism serve, ss; guest prism usbip attach vsock:2:3240", prism: true, attach: `hostnode usbip attach vsock:2:${PORT} ${BUSID.ss}` },
  { id: 'kernel', label: 'B  kernel usbip-host, hs gadget; usbipd, loopback TCP', prism: false, attach: `[ -n "$busid_hs" ] && usbip --tcp-port ${KERNEL_PORT} attach -r 127.0.0.1 -b $busid_hs` },
  { id: 'kernel-ss', label: "B' kernel usbip-host, ss gadget; usbipd, loopback TCP", prism: false, attach: `[ -n "$busid_ss" ] && usbip --tcp-port ${KERNEL_PORT} attach -r 127.0.0.1 -b $busid_ss` },
];

// --- options -------------------------------------------------------------------------------------

const { values: opt } = parseArgs({
  options: {
    quick: { type: 'boolean', default: false },
    mib: { type: 'string' },
    reps: { type: 'string' },
    keep: { type: 'boolean', default: false },
    rows: { type: 'string' },
    'vsock-buffer': { type: 'string' },
    help: { type: 'boolean', short: 'h', default: false },
  },
});
if (opt.help) {
  process.stdout.write(
    'usage: node --import tsx bench/usbip.ts [--quick] [--mib N] [--reps N] [--rows ID,...] [--vsock-buffer B,...] [--keep]\n' +
      '  --quick     16 MiB image and dd, 1 repetition (smoke test)\n' +
      '  --mib N     image size and dd count in MiB (default 64)\n' +
      '  --reps N    dd repetitions per exporter (median reported; default 3, quick 1)\n' +
      `  --rows IDS  only these rows (comma-separated; default all: ${ALL_ROWS.map((r) => r.id).join(',')})\n` +
      '  --vsock-buffer B,...  run each C/C\' row once per value of `prism usbip attach --vsock-buffer B`\n' +
      '              (0 = the socket\'s default 256 KiB, e.g. 0,2M,4M), interleaved; rows are named ID@B\n' +
      '  --keep      keep the work directory (logs, image, guest console)\n',
  );
  process.exit(0);
}
const quick = opt.quick;
const mib = opt.mib !== undefined ? Number(opt.mib) : quick ? 16 : 64;
if (!Number.isInteger(mib) || mib < 1 || mib > 256) throw new Error(`--mib must be 1..256, got ${opt.mib}`);
const ROWS = ((): RowDef[] => {
  if (opt.rows === undefined) return ALL_ROWS;
  const ids = opt.rows.split(',').map((w) => w.trim());
  for (const id of ids) if (!ALL_ROWS.some((r) => r.id === id)) throw new Error(`--rows: no row ${id} (rows: ${ALL_ROWS.map((r) => r.id).join(', ')})`);
  return ALL_ROWS.filter((r) => ids.includes(r.id));
})().flatMap((r): RowDef[] => {
  // --vsock-buffer: the guest-side `prism usbip attach` rows once per buffer size.
  if (opt['vsock-buffer'] === undefined || !r.attach.startsWith('hostnode usbip attach ')) return [r];
  return opt['vsock-buffer'].split(',').map((w) => w.trim()).map((b) => {
    if (!/^[0-9]+[KMkm]?$/.test(b)) throw new Error(`--vsock-buffer: ${b} is not a size (N, NK or NM)`);
    const [short, ...rest] = r.label.split(' ');
    return { ...r, id: `${r.id}@${b}`, label: [`${short}@${b}`, ...rest].join(' '), attach: r.attach.replace('hostnode usbip attach ', `hostnode usbip attach --vsock-buffer ${b} `) };
  });
});
const ROW_IDS = ROWS.map((r) => r.id);
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

/** Extra node options for the host's prism processes, e.g. PRISM_BENCH_NODE_ARGS='--cpu-prof --cpu-prof-dir=/tmp/p'. */
const HOST_NODE_ARGS = (process.env['PRISM_BENCH_NODE_ARGS'] ?? '').split(' ').filter((w) => w !== '');

function startPrism(name: string, args: string[], work: string): Proc {
  const logPath = path.join(work, `${name}.log`);
  const logFd = fs.openSync(logPath, 'w');
  let child: ChildProcess;
  try {
    child = spawn(process.execPath, [...HOST_NODE_ARGS, '--import', 'tsx', path.join(REPO, 'src/cli/main.ts'), ...args], { cwd: REPO, stdio: ['ignore', 'ignore', logFd], env: { ...process.env, PRISM_LOG_LEVEL: 'info' } });
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

/** Quotes a word for the guest's sh. */
const q = (w: string): string => `'${w.replace(/'/g, `'\\''`)}'`;

/** How the guest runs prism: the host's node on this checkout (dist/ when current, else src/ via tsx). */
function prismCommand(): string[] {
  return distStale() === null ? [process.execPath, 'dist/src/cli/main.js'] : [process.execPath, '--import', 'tsx', 'src/cli/main.ts'];
}

/**
 * The host's root read-only at /host over virtio-9p with the guest's own proc, sys, dev and a
 * tmpfs /tmp, and `hostnode ARGS` running prism ARGS chrooted there: runHostNode's recipe
 * (test/helpers/lab.ts), but as a shell function the script can call many times.
 */
function hostRootPrelude(): string {
  const rel = REPO.startsWith('/tmp/') ? REPO.slice('/tmp/'.length) : null;
  const keep = rel === null ? '' : `mkdir -p /host/tmp/${q(rel)} && mount -o bind /run/hosttmp/${q(rel)} /host/tmp/${q(rel)} || fail "hostroot: cannot keep ${REPO} visible"`;
  const command = `cd ${q(REPO)} && exec ${prismCommand().map(q).join(' ')}`;
  return `mkdir -p /host /run/hosttmp
mount -t 9p -o trans=virtio,version=9p2000.L,cache=loose,msize=524288,ro ${HOSTROOT_TAG} /host || fail "hostroot: cannot mount the host root"
mount -o bind /host/tmp /run/hosttmp && mount -t proc proc /host/proc && mount -t sysfs sysfs /host/sys \
  && mount -t devtmpfs devtmpfs /host/dev && mount -t tmpfs -o mode=1777 tmpfs /host/tmp || fail "hostroot: cannot mount proc, sys, dev, tmp"
${keep}
hostnode() { chroot /host /usr/bin/env -i PATH=/usr/local/bin:/usr/bin:/bin HOME=/tmp TMPDIR=/tmp LANG=C.UTF-8 /bin/sh -c ${q(command)}' "$@"' prism "$@"; }`;
}

const HOSTROOT_TAG = 'hostroot';

function guestScript(): string {
  const order = ROW_IDS.join(' ');
  const reversed = [...ROW_IDS].reverse().join(' ');
  return `
fail() { echo "@@FAIL $*"; }
up() { cut -d' ' -f1 /proc/uptime; }
# The guest's busy and idle jiffies (/proc/stat) and its interrupts (/proc/interrupts, all lines), comma-separated.
guestcpu() {
  set -- $(head -n1 /proc/stat)
  n=$(awk 'NR > 1 { for (i = 2; i <= NF && $i ~ /^[0-9]+$/; i++) t += $i } END { print t + 0 }' /proc/interrupts)
  echo "$(($2 + $3 + $4 + $7 + $8 + $9)),$(($5 + $6)),$n"
}
mkdir -p /var/run
${hostRootPrelude()}
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
# One measurement: $1 row, $2 repetition; the row's attach command follows. Attach, dd, detach.
onerow() {
  row=$1; rep=$2; shift 2
  before=$(disks)
  out=$(eval "$*" 2>&1) || { fail "$row: attach (rep $rep): $(echo "$out" | tail -n 3 | tr '\\n' ' ')"; return; }
  if d=$(newdisk "$before"); then
    q=/sys/block/$d/queue
    echo "@@DISK $row $d $(cat /sys/block/$d/size) $(cat $q/max_sectors_kb) $(cat $q/max_hw_sectors_kb) $(usbip port 2>/dev/null | grep -o '[A-Za-z]* Speed([0-9]*Mbps)' | head -n1 | tr -d ' ')"
    echo 3 > /proc/sys/vm/drop_caches
    echo "@@BEGIN $row $rep"; s0=$(guestcpu); t0=$(up)
    out=$(${DD('/dev/$d')} 2>&1) || fail "$row: dd: $out"
    t1=$(up); s1=$(guestcpu)
    echo "@@END $row $rep $t0 $t1 $(echo "$out" | sed -n 's/^\\([0-9]*\\)+0 records in$/\\1/p')"
    echo "@@GUEST $row $rep $s0 $s1"
    echo "$out" | sed "s/^/@@DD $row /"
  else
    fail "$row: no disk after attach (rep $rep)"; d=
  fi
  p=$(usbip port 2>/dev/null | sed -n 's/^Port \\([0-9]*\\): <Port in Use>.*/\\1/p' | head -n1)
  [ -n "$p" ] && { usbip detach -p $p >/dev/null || fail "$row: detach port $p"; }
  i=0; while [ -n "$d" ] && [ -e /sys/block/$d ] && [ $i -lt 50 ]; do i=$((i+1)); usleep 100000; done
  sleep 1
}
waitlist() { # $1 row, $2 port
  i=0; until usbip --tcp-port $2 list -r 127.0.0.1 > /tmp/list 2>&1; do i=$((i+1)); [ $i -gt 20 ] && break; usleep 500000; done
  sed "s/^/@@LIST $1 /" /tmp/list
}

# ---- A, A': prism over vsock, one guest socat bridge each (C, C' need none) ----
${Object.entries(SOCAT).map(([id, b]) => `${b.command} &\nwaitlist ${id} ${b.port}`).join('\n')}

# ---- B, B': kernel usbip-host exporting configfs gadgets on dummy_hcd, usbipd on ${KERNEL_PORT} ----
# dummy_hcd came up at boot as one high-speed instance; two instances that can do SuperSpeed give
# each gadget its own UDC, and a gadget's max_speed picks the root hub it lands on.
busid_hs=; busid_ss=
udcs=1
if rmmod dummy_hcd 2>/dev/null && modprobe dummy_hcd is_super_speed=1 num=2; then udcs=2
else fail "kernel-ss: cannot reload dummy_hcd with is_super_speed=1 num=2"; lsmod | grep -q '^dummy_hcd' || modprobe dummy_hcd; fi
echo "@@B-UDCS $(ls /sys/class/udc | tr '\\n' ' ')"
gadget() { # $1 name, $2 idProduct, $3 max_speed, $4 UDC; prints the busid usbip-host got
  g=/sys/kernel/config/usb_gadget/$1
  mkdir -p $g || { fail "$1: mkdir gadget"; return 1; }
  echo 0x1d6b > $g/idVendor; echo $2 > $g/idProduct
  echo $3 > $g/max_speed || fail "$1: max_speed $3"
  mkdir -p $g/strings/0x409
  echo prism-bench-$1 > $g/strings/0x409/serialnumber; echo prism > $g/strings/0x409/manufacturer; echo gadget-storage > $g/strings/0x409/product
  mkdir -p $g/configs/c.1 $g/functions/mass_storage.0
  echo /tmp/gadget.img > $g/functions/mass_storage.0/lun.0/file || { fail "$1: lun file"; return 1; }
  ln -s $g/functions/mass_storage.0 $g/configs/c.1/ || { fail "$1: link function"; return 1; }
  echo "$4" > $g/UDC || { fail "$1: bind UDC $4"; return 1; }
  b=
  i=0
  while [ -z "$b" ] && [ $i -lt 100 ]; do
    for d in /sys/bus/usb/devices/*-*; do
      case \${d##*/} in *:*) continue ;; esac
      [ "$(cat $d/idVendor 2>/dev/null)" = 1d6b ] && [ "$(cat $d/idProduct 2>/dev/null)" = \${2#0x} ] && readlink -f $d | grep -q dummy_hcd && b=\${d##*/}
    done
    i=$((i+1)); usleep 100000
  done
  [ -n "$b" ] || { fail "$1: gadget not enumerated on dummy_hcd"; return 1; }
  echo "@@B-BUSID $1 $b $(cat /sys/bus/usb/devices/$b/speed) $(readlink -f /sys/bus/usb/devices/$b)" >&2
  usleep 500000
  usbip bind -b $b >&2 || { fail "$1: usbip bind"; return 1; }
  echo $b
}
kernel() {
  dd if=/dev/zero of=/tmp/gadget.img bs=1M count=${mib} 2>/dev/null || { fail "kernel: cannot make /tmp/gadget.img"; return; }
  grep -q ' /sys/kernel/config ' /proc/mounts || mount -t configfs none /sys/kernel/config || { fail "kernel: mount configfs"; return; }
  busid_hs=$(gadget kernel 0x0104 high-speed "$(ls /sys/class/udc | sed -n 1p)")
  [ $udcs = 2 ] && busid_ss=$(gadget kernel-ss 0x0105 super-speed "$(ls /sys/class/udc | sed -n 2p)")
  usbipd -4 -D -t ${KERNEL_PORT} || { fail "kernel: usbipd"; busid_hs=; busid_ss=; return; }
  waitlist kernel ${KERNEL_PORT}
}
kernel

# ---- the measurements, interleaved: rows in order in odd repetitions, reversed in even ones ----
r=1
while [ $r -le ${reps} ]; do
  if [ $((r % 2)) = 1 ]; then rows="${order}"; else rows="${reversed}"; fi
  for row in $rows; do
    case $row in
${ROWS.map((r) => `      ${r.id}) onerow ${r.id} $r ${q(r.attach)} ;;`).join('\n')}
    esac
  done
  r=$((r+1))
done
exit 0
`;
}

// --- main ----------------------------------------------------------------------------------------

interface Sample {
  seconds: number;
  bytes: number;
  cpuServer?: number;
  cpuVsock?: number;
  /** The guest's busy share of its CPU during the dd (/proc/stat: user nice system irq softirq steal vs idle iowait). */
  guestBusy?: number;
  /** Interrupts the guest took during the dd (/proc/interrupts, all sources). */
  guestIrqs?: number;
}

async function main(): Promise<void> {
  const lab = labPaths();
  const t0 = performance.now();
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'prism-bench-usbip-'));
  const session = benchSession(work, opt.keep, log);
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
    const serveArgs = ['usbip', 'serve', '--listen', `unix:${uds}_${PORT}`, '--device', `emulated:storage:${image}:hs`, '--device', `emulated:storage:${image}:ss`, '--allow', `busid=${BUSID.hs}`, '--allow', `busid=${BUSID.ss}`];
    const server = startPrism('usbip', serveArgs, work);
    procs.push(server);
    await waitForLog(vsock, 'vsock device ready');
    await waitForLog(server, 'usbip server ready');
    log(`prism up: vsock device pid ${vsock.pid}, usbip server pid ${server.pid}; work dir ${work}`);
    const load0 = fs.readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ');

    const samples = new Map<string, Sample[]>(ROW_IDS.map((id) => [id, []]));
    let cpu0: { server: number; vsock: number } | null = null;
    let pending = '';
    const isPrism = (w: string): boolean => ROWS.some((r) => r.id === w && r.prism);
    const onLine = (line: string): void => {
      const b = /^@@BEGIN ([\w@-]+) (\d+)/.exec(line);
      if (b?.[1] !== undefined && isPrism(b[1])) cpu0 = { server: cpuSeconds(server.pid), vsock: cpuSeconds(vsock.pid) };
      const e = /^@@END ([\w@-]+) (\d+) ([\d.]+) ([\d.]+) (\d*)/.exec(line);
      if (e) {
        const who = e[1] ?? '';
        const s: Sample = { seconds: Number(e[4]) - Number(e[3]), bytes: Number(e[5] || 0) * MiB }; // whole 1 MiB records read
        if (isPrism(who) && cpu0) {
          s.cpuServer = cpuSeconds(server.pid) - cpu0.server;
          s.cpuVsock = cpuSeconds(vsock.pid) - cpu0.vsock;
        }
        samples.get(who)?.push(s);
        log(`${who} #${e[2]}: ${s.bytes} bytes in ${s.seconds.toFixed(2)} s = ${(s.bytes / s.seconds / 1e6).toFixed(1)} MB/s`);
      }
      const gc = /^@@GUEST ([\w@-]+) (\d+) (\d+),(\d+),(\d+) (\d+),(\d+),(\d+)/.exec(line);
      if (gc) {
        const s = samples.get(gc[1] ?? '')?.at(-1);
        const [b0, i0, n0, b1, i1, n1] = gc.slice(3).map(Number) as [number, number, number, number, number, number];
        if (s && b1 >= b0 && i1 >= i0 && b1 + i1 > b0 + i0) {
          s.guestBusy = (b1 - b0) / (b1 - b0 + i1 - i0);
          s.guestIrqs = n1 - n0;
        }
      }
      if (line.startsWith('@@FAIL')) log(line);
    };
    const g = await runGuest({
      script: guestScript(),
      files: usbipdFiles(),
      vhostUser: [{ kind: 'vsock', socket: vu }],
      memoryMiB: 1024,
      timeoutMs: 1_500_000,
      signal: session.signal, // Ctrl-C stops QEMU too
      extraArgs: ['-virtfs', `local,path=/,mount_tag=${HOSTROOT_TAG},security_model=none,readonly=on,multidevs=remap`],
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
    const rateOf = (w: string): number => {
      const xs = okSamples(samples.get(w) ?? []);
      return xs.length ? median(xs.map((s) => s.bytes / s.seconds / 1e6)) : NaN;
    };
    const fmt = (n: number): string => (Number.isFinite(n) ? n.toFixed(1) : '-');
    const header = ['exporter', 'MB/s', 'MiB/s', 'seconds', 'prism CPU s (server + vsock dev)', 'guest busy', 'guest irq/MiB', 'disk: sectors, max_sectors_kb / hw, speed'];
    const rows: string[][] = ROWS.map(({ id, label, prism }) => {
      const xs = okSamples(samples.get(id) ?? []);
      if (xs.length === 0) return [label, `not measured: ${fails.filter((f) => f.startsWith(`${id}:`)).join('; ') || 'no complete dd result (see the console log, --keep)'}`];
      const r = rateOf(id);
      const disk = field(`DISK ${id}`)?.split(' ');
      return [
        label,
        fmt(r),
        fmt(r / 1.048576),
        fmt(median(xs.map((s) => s.seconds))),
        prism ? `${median(xs.map((s) => s.cpuServer ?? NaN)).toFixed(2)} + ${median(xs.map((s) => s.cpuVsock ?? NaN)).toFixed(2)}` : '-',
        `${fmt(100 * median(xs.map((s) => s.guestBusy ?? NaN)))} %`,
        fmt(median(xs.map((s) => (s.guestIrqs ?? NaN) / mib))),
        disk ? `${disk[0]}: ${disk[1]}, ${disk[2]} / ${disk[3]}, ${disk[4] ?? '?'}` : '-',
      ];
    });
    const full = [header, ...rows.filter((r) => r.length === header.length)];
    const widths = header.map((_, i) => Math.max(...full.map((r) => (r[i] ?? '').length)));
    const table = [header, ...rows]
      .map((r) => (r.length !== header.length ? `${(r[0] ?? '').padEnd(widths[0] ?? 0)}  ${r[1] ?? ''}` : r.map((c, i) => (i === 0 ? c.padEnd(widths[i] ?? 0) : c.padStart(widths[i] ?? 0))).join('  ')))
      .join('\n');
    // The kernel path to beat is its best row (SuperSpeed when dummy_hcd could do it).
    const kernelRates = ROWS.filter((r) => !r.prism).map((r) => rateOf(r.id)).filter(Number.isFinite);
    const kernelRate = kernelRates.length ? Math.max(...kernelRates) : NaN;
    const verdicts = ROWS.filter((r) => r.prism).map(({ id, label }) => {
      const r = rateOf(id);
      const t40 = Number.isFinite(r) ? (r >= TARGET_MBS ? 'met' : 'not met') : 'unknown';
      const tk = Number.isFinite(r) && Number.isFinite(kernelRate) ? `${r >= kernelRate ? 'met' : 'not met'} (ratio ${(r / kernelRate).toFixed(2)})` : 'unknown';
      return `${label.split(' ')[0]}: target ≥ ${TARGET_MBS} MB/s: ${t40} (${fmt(r)} MB/s); target ≥ the best kernel row (${fmt(kernelRate)} MB/s): ${tk}`;
    });
    const load1 = fs.readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ');
    const elapsed = (performance.now() - t0) / 1000;
    const gadgets = [...g.console.matchAll(/^@@B-BUSID (\S+) (\S+) (\S+)/gm)].map((m) => `${m[1] ?? '?'} busid ${m[2] ?? '?'} at ${m[3] ?? '?'} Mb/s`);
    const out = [
      '',
      `$ ${commandLine}`,
      `USB/IP mass-storage sequential read through vhci-hcd: prism vs the kernel's usbip-host — ${mib} MiB image, median of ${reps} dd${reps === 1 ? '' : 's'} per row, one guest boot, ${elapsed.toFixed(0)} s`,
      `guest: QEMU TCG, 1 vCPU, 1 GiB, Linux ${lab.kernelVersion}; host: ${os.cpus().length} CPUs (${os.cpus()[0]?.model ?? '?'}), Linux ${os.release()}, node ${process.version}, prism from src/ via tsx (in the guest: ${prismCommand().slice(1).join(' ')}); load ${load0} -> ${load1}`,
      '',
      table,
      '',
      ...verdicts,
      '',
      `- every row, in the guest: echo 3 > /proc/sys/vm/drop_caches; ${DD('/dev/sdX')}   (timed with /proc/uptime; MB = 10^6 bytes)`,
      `- A, A', C, C' host: prism vsock serve --socket VU --cid ${GUEST_CID} --uds UDS; prism ${serveArgs.join(' ').replaceAll(image, 'IMG').replaceAll(uds, 'UDS')}  (IMG: ${mib} MiB of zeros)`,
      ...Object.entries(SOCAT).flatMap(([id, bridge]) => {
        const row = ROWS.find((r) => r.id === id);
        return row ? [`- ${row.label.split(' ')[0]} guest: ${bridge.command} &`] : [];
      }),
      ...ROWS.map((r) => `- ${r.label.split(' ')[0]} guest attach: ${r.attach.replace(/^hostnode /, 'prism ')}`),
      `- B, B' guest: rmmod dummy_hcd; modprobe dummy_hcd is_super_speed=1 num=2 (UDCs: ${field('B-UDCS') ?? '?'}); configfs gadgets 1d6b:0104 max_speed=high-speed and 1d6b:0105 max_speed=super-speed, mass_storage.0 lun.0 file=/tmp/gadget.img (${mib} MiB of zeros on tmpfs): ${gadgets.join('; ') || 'none'}; usbip bind -b BUSID; usbipd -4 -D -t ${KERNEL_PORT}`,
      '- prism CPU s: utime + stime (/proc/PID/stat) of the prism usbip server and of the vsock device process during the dd (median).',
      '- guest busy: the guest vCPU\'s non-idle share during the dd (/proc/stat); guest irq/MiB: its interrupts (all of /proc/interrupts) per MiB read (medians).',
      ...fails.map((f) => `- guest error: ${f}`),
    ];
    process.stdout.write(`${out.join('\n')}\n`);
  } finally {
    await session.end(procs.map((p) => p.child));
  }
}

await main();
