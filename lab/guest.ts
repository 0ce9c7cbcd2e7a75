// Guest lab runner: boots the kernel and busybox initramfs that lab/setup.sh caches, under QEMU's
// software emulation (TCG), with a test script appended as a second cpio archive. The guest's /init
// runs the script as /test.sh, prints "PRISM-LAB-EXIT <rc>" and powers off; runGuest collects the
// serial console and returns that exit code.
import { spawn } from 'node:child_process';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { delimiter, join, resolve } from 'node:path';
import { StringDecoder } from 'node:string_decoder';
import { fileURLToPath } from 'node:url';
import { gzipSync } from 'node:zlib';

/** The first words of the error thrown when the lab is missing; tests fail with it. */
export const LAB_SETUP_HINT = 'guest lab not set up: run `bash lab/setup.sh` (as root)';

export const QEMU = 'qemu-system-x86_64';

/** Printed by the guest's /init: at its start, and with the script's exit code before power-off. */
export const INIT_MARKER = 'PRISM-LAB-INIT';
export const EXIT_MARKER = 'PRISM-LAB-EXIT';

export class LabNotSetUpError extends Error {
  override name = 'LabNotSetUpError';
}

export interface LabPaths {
  /** The cache directory (lab/cache or $PRISM_LAB_DIR). */
  dir: string;
  /** `uname -r` of the guest kernel, e.g. 6.1.0-56-amd64. */
  kernelVersion: string;
  /** What QEMU boots: the PVH-bootable vmlinux when setup could extract it, else the bzImage. */
  kernel: string;
  /** The base initramfs (gzip'd newc cpio). */
  initrd: string;
}

/** The default cache directory: $PRISM_LAB_DIR, else lab/cache next to this file. */
export function labDir(): string {
  const env = process.env['PRISM_LAB_DIR'];
  return env ? resolve(env) : fileURLToPath(new URL('./cache', import.meta.url));
}

function onPath(command: string): boolean {
  return (process.env['PATH'] ?? '').split(delimiter).some((d) => d !== '' && existsSync(join(d, command)));
}

/** Finds the cached kernel and initramfs; throws LabNotSetUpError (with LAB_SETUP_HINT) if absent. */
export function labPaths(dir: string = labDir()): LabPaths {
  const missing = (what: string): never => {
    throw new LabNotSetUpError(`${LAB_SETUP_HINT}; ${what}`);
  };
  let kernelVersion = '';
  try {
    kernelVersion = readFileSync(join(dir, 'current'), 'utf8').trim();
  } catch {
    missing(`no ${join(dir, 'current')}`);
  }
  if (kernelVersion === '') missing(`${join(dir, 'current')} is empty`);
  const kdir = join(dir, kernelVersion);
  const initrd = join(kdir, 'initramfs.cpio.gz');
  const vmlinux = join(kdir, 'vmlinux');
  const vmlinuz = join(kdir, 'vmlinuz');
  if (!existsSync(join(kdir, 'stamp')) || !existsSync(initrd)) missing(`no finished build in ${kdir}`);
  const kernel = existsSync(vmlinux) ? vmlinux : existsSync(vmlinuz) ? vmlinuz : missing(`no kernel in ${kdir}`);
  if (!onPath(QEMU)) missing(`${QEMU} is not on PATH`);
  return { dir, kernelVersion, kernel, initrd };
}

// --- newc cpio --------------------------------------------------------------------------------

export interface GuestFile {
  /** Absolute path in the guest, e.g. /etc/prism/config.json. Parent directories are created. */
  path: string;
  data: string | Uint8Array;
  /** Permission bits; default 0o644. */
  mode?: number;
}

const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;

function pad4(n: number): number {
  return (4 - (n % 4)) % 4;
}

function newcEntry(name: string, mode: number, data: Buffer, ino: number, nlink: number): Buffer[] {
  const nameBytes = Buffer.from(`${name}\0`, 'utf8');
  const fields = [ino, mode, 0, 0, nlink, 0, data.length, 0, 0, 0, 0, nameBytes.length, 0];
  const header = Buffer.from(`070701${fields.map((f) => f.toString(16).padStart(8, '0')).join('')}`, 'ascii');
  const parts: Buffer[] = [header, nameBytes, Buffer.alloc(pad4(header.length + nameBytes.length))];
  if (data.length > 0) parts.push(data, Buffer.alloc(pad4(data.length)));
  return parts;
}

/**
 * An uncompressed newc ("070701") cpio archive of the files, with entries for their parent
 * directories and the TRAILER!!! record; owner root, mtime 0.
 */
export function newcArchive(files: readonly GuestFile[]): Buffer {
  const dirs = new Set<string>();
  const entries: { name: string; mode: number; data: Buffer }[] = [];
  for (const f of files) {
    const name = f.path.replace(/^\/+/, '');
    if (name === '' || name.split('/').some((c) => c === '' || c === '.' || c === '..')) {
      throw new Error(`guest file path must be absolute and normalized: ${JSON.stringify(f.path)}`);
    }
    const comps = name.split('/');
    for (let i = 1; i < comps.length; i++) dirs.add(comps.slice(0, i).join('/'));
    const data = typeof f.data === 'string' ? Buffer.from(f.data, 'utf8') : Buffer.from(f.data);
    entries.push({ name, mode: S_IFREG | ((f.mode ?? 0o644) & 0o7777), data });
  }
  const parts: Buffer[] = [];
  let ino = 1;
  for (const d of [...dirs].sort()) parts.push(...newcEntry(d, S_IFDIR | 0o755, Buffer.alloc(0), ino++, 2));
  for (const e of entries) parts.push(...newcEntry(e.name, e.mode, e.data, ino++, 1));
  parts.push(...newcEntry('TRAILER!!!', 0, Buffer.alloc(0), 0, 1));
  return Buffer.concat(parts);
}

// --- guest script helpers ------------------------------------------------------------------------

/**
 * Shell functions prepended to every test script:
 *   vport NAME [TRIES]  prints /dev/vportNpM of the virtio-serial port named NAME, waiting up to
 *                       TRIES x 50 ms (default 100) for it to appear; fails if it never does.
 * A virtio port opens once: open it read-write on one descriptor (exec 3<>"$(vport NAME)").
 */
export const GUEST_PRELUDE = `vport() {
  _vp_n=0
  while [ "$_vp_n" -lt "\${2:-100}" ]; do
    for _vp_f in /sys/class/virtio-ports/*/name; do
      [ -r "$_vp_f" ] && [ "$(cat "$_vp_f")" = "$1" ] || continue
      _vp_d=\${_vp_f%/name}
      _vp_d=/dev/\${_vp_d##*/}
      if [ -c "$_vp_d" ]; then echo "$_vp_d"; return 0; fi
    done
    _vp_n=$((_vp_n + 1))
    usleep 50000
  done
  echo "vport: no virtio-serial port named '$1'" >&2
  return 1
}
`;

// --- runGuest ------------------------------------------------------------------------------------

export interface SerialPort {
  /** The port's name in the guest (/sys/class/virtio-ports/vportNpM/name). */
  name: string;
  /** Host Unix socket path. */
  path: string;
  /**
   * false (default): the host test listens and QEMU connects at start (QEMU fails if nobody listens).
   * true: QEMU listens (wait=off); guest writes block until the host connects.
   */
  server?: boolean;
}

/**
 * A vhost-user device whose backend listens on `socket` (QEMU connects), or with `server`, connects to it. These need the guest RAM
 * in shared memory, which runGuest then sets up. vhost-user-vsock has no guest-CID property: the
 * guest's CID comes from the backend's config space (GET_CONFIG).
 */
export type VhostUserDevice = (
  | {
      kind: 'net';
      socket: string;
      mac?: string;
      /** MSI-X vectors; default 0 (with MSI-X, QEMU 7.2 under TCG segfaults when the guest starts it). */
      vectors?: number;
    }
  | { kind: 'vsock'; socket: string; vectors?: number }
  | { kind: 'fs'; socket: string; tag: string; queueSize?: number; vectors?: number }
) & {
  /** QEMU listens on `socket` (server=on) and the backend connects: the backend's client mode. */
  server?: boolean;
};

export interface GuestOptions {
  /** Shell text run as /test.sh (busybox sh) after GUEST_PRELUDE; its exit status is the result. */
  script: string;
  /** More files for the appended archive. */
  files?: GuestFile[];
  serialPorts?: SerialPort[];
  vhostUser?: VhostUserDevice[];
  /** Put guest RAM in a shared memfd even without vhostUser (e.g. for devices in extraArgs). */
  sharedMemory?: boolean;
  /** QEMU -cpu model; default max. */
  cpu?: string;
  /** Guest RAM; default 512. */
  memoryMiB?: number;
  /** Appended to the kernel command line. */
  append?: string;
  /** Appended to QEMU's arguments. */
  extraArgs?: string[];
  /**
   * Let the guest reboot: QEMU runs without -no-reboot, so `reboot -f` boots the same kernel and
   * initramfs again and /test.sh runs a second time (it must learn which run it is from outside).
   * Default false: a reboot ends QEMU. With it, a kernel panic (panic=-1) reboots until timeoutMs.
   */
  reboot?: boolean;
  /** Wall-clock limit; default 120 s. On expiry QEMU is killed and timedOut is true. */
  timeoutMs?: number;
  /** Aborting kills QEMU and rejects with an AbortError. */
  signal?: AbortSignal;
  /** Called with console text as it arrives (raw, with the serial line's \r\n). */
  onConsole?: (text: string) => void;
  /** Also write the console to this file. */
  consoleLog?: string;
  /** Lab paths; default labPaths(). */
  lab?: LabPaths;
}

export interface GuestResult {
  /** The script's exit code from the EXIT marker; null if the guest never printed it. */
  exitCode: number | null;
  /** The serial console, with \r\n turned into \n. */
  console: string;
  /** Wall time from spawning QEMU to its exit. */
  durationMs: number;
  /** Wall time from spawning QEMU to the INIT marker (boot to /init); null if never seen. */
  initMs: number | null;
  timedOut: boolean;
  /** QEMU's own exit: code (0 after the guest powers off) or the signal that ended it. */
  qemuExitCode: number | null;
  qemuSignal: NodeJS.Signals | null;
  /** QEMU's stderr (errors such as a socket it could not connect to). */
  stderr: string;
  /** The full QEMU command line. */
  args: string[];
}

export const DEFAULT_TIMEOUT_MS = 120_000;
export const DEFAULT_MEMORY_MIB = 512;
const BASE_APPEND = 'console=ttyS0 panic=-1 quiet';

let baseCache: { path: string; mtimeMs: number; size: number; data: Buffer } | undefined;

async function baseInitrd(path: string): Promise<Buffer> {
  const st = statSync(path);
  if (baseCache?.path !== path || baseCache.mtimeMs !== st.mtimeMs || baseCache.size !== st.size) {
    baseCache = { path, mtimeMs: st.mtimeMs, size: st.size, data: await readFile(path) };
  }
  return baseCache.data;
}

/**
 * QEMU's socket chardev. As a server it either starts at once (`wait=off`: virtio-serial ports) or,
 * for vhost-user devices, waits for the backend before realizing devices (`wait=on`): a
 * vhost-user-vsock-pci realized with no backend fails ("vhost_backend_init failed").
 */
function chardevSocket(id: string, path: string, server: 'no' | 'nowait' | 'wait'): string {
  if (path.includes(',')) throw new Error(`socket path must not contain a comma: ${path}`);
  return `socket,id=${id},path=${path}${server === 'no' ? '' : `,server=on,wait=${server === 'wait' ? 'on' : 'off'}`}`;
}

/** QEMU's arguments for the given options (exported for tests and debugging). */
export function qemuArgs(opts: GuestOptions, lab: LabPaths, initrd: string): string[] {
  const mem = opts.memoryMiB ?? DEFAULT_MEMORY_MIB;
  const vhost = opts.vhostUser ?? [];
  const shared = vhost.length > 0 || opts.sharedMemory === true;
  const append = opts.append ? `${BASE_APPEND} ${opts.append}` : BASE_APPEND;
  const args = ['-nodefaults', '-no-user-config', '-display', 'none', ...(opts.reboot === true ? [] : ['-no-reboot'])];
  args.push('-accel', 'tcg', '-cpu', opts.cpu ?? 'max', '-smp', '1', '-m', `${mem}M`);
  if (shared) {
    args.push('-object', `memory-backend-memfd,id=mem,size=${mem}M,share=on`);
    args.push('-machine', 'pc,memory-backend=mem');
  } else {
    args.push('-machine', 'pc');
  }
  args.push('-kernel', lab.kernel, '-initrd', initrd, '-append', append, '-serial', 'stdio');

  const ports = opts.serialPorts ?? [];
  if (ports.length > 0) {
    args.push('-device', 'virtio-serial-pci,id=vser0');
    ports.forEach((p, i) => {
      if (!/^[A-Za-z0-9._-]+$/.test(p.name)) throw new Error(`bad virtio-serial port name: ${p.name}`);
      args.push('-chardev', chardevSocket(`vport${i}`, p.path, p.server === true ? 'nowait' : 'no'));
      args.push('-device', `virtserialport,bus=vser0.0,chardev=vport${i},name=${p.name}`);
    });
  }
  vhost.forEach((d, i) => {
    const chr = `vu${i}`;
    args.push('-chardev', chardevSocket(chr, d.socket, d.server === true ? 'wait' : 'no'));
    const vectors = (v: number | undefined): string => (v === undefined ? '' : `,vectors=${v}`);
    switch (d.kind) {
      case 'net':
        if (d.mac !== undefined && !/^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$/.test(d.mac)) throw new Error(`bad MAC: ${d.mac}`);
        args.push('-netdev', `vhost-user,id=vunet${i},chardev=${chr}`);
        args.push('-device', `virtio-net-pci,netdev=vunet${i}${vectors(d.vectors ?? 0)}${d.mac ? `,mac=${d.mac}` : ''}`);
        break;
      case 'vsock':
        args.push('-device', `vhost-user-vsock-pci,chardev=${chr}${vectors(d.vectors)}`);
        break;
      case 'fs':
        if (!/^[A-Za-z0-9._-]+$/.test(d.tag)) throw new Error(`bad virtio-fs tag: ${d.tag}`);
        args.push(
          '-device',
          `vhost-user-fs-pci,chardev=${chr},tag=${d.tag}${d.queueSize ? `,queue-size=${d.queueSize}` : ''}${vectors(d.vectors)}`,
        );
        break;
    }
  });
  args.push(...(opts.extraArgs ?? []));
  return args;
}

function abortError(signal: AbortSignal): Error {
  const err = new Error('guest run aborted', { cause: signal.reason });
  err.name = 'AbortError';
  return err;
}

/** Boots the guest, runs opts.script as /test.sh and returns its exit code and the console. */
export async function runGuest(opts: GuestOptions): Promise<GuestResult> {
  const { signal } = opts;
  if (signal?.aborted) throw abortError(signal);
  const lab = opts.lab ?? labPaths();
  const timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;

  const script = `#!/bin/sh\n${GUEST_PRELUDE}\n${opts.script}\n`;
  const archive = gzipSync(newcArchive([{ path: '/test.sh', data: script, mode: 0o755 }, ...(opts.files ?? [])]));
  const base = await baseInitrd(lab.initrd);

  const work = await mkdtemp(join(tmpdir(), 'prism-lab-'));
  try {
    const initrd = join(work, 'initrd');
    // The kernel unpacks concatenated archives; align the second one to 4 bytes (zeros are skipped).
    await writeFile(initrd, Buffer.concat([base, Buffer.alloc(pad4(base.length)), archive]));
    const args = qemuArgs(opts, lab, initrd);
    return await spawnQemu(args, timeoutMs, opts);
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

function spawnQemu(args: string[], timeoutMs: number, opts: GuestOptions): Promise<GuestResult> {
  const { signal, onConsole } = opts;
  return new Promise<GuestResult>((resolvePromise, reject) => {
    const started = performance.now();
    const child = spawn(QEMU, args, { stdio: ['pipe', 'pipe', 'pipe'] });
    const decoder = new StringDecoder('utf8');
    let raw = '';
    let stderr = '';
    let initMs: number | null = null;
    let timedOut = false;
    let aborted = false;
    let spawnError: Error | undefined;

    const kill = (): void => {
      if (child.pid !== undefined && child.exitCode === null && child.signalCode === null) {
        try {
          process.kill(child.pid, 'SIGKILL');
        } catch {
          // already gone
        }
      }
    };
    const timer = setTimeout(() => {
      timedOut = true;
      kill();
    }, timeoutMs);
    const onAbort = (): void => {
      aborted = true;
      kill();
    };
    signal?.addEventListener('abort', onAbort, { once: true });

    const take = (text: string): void => {
      if (text === '') return;
      raw += text;
      if (initMs === null && raw.includes(INIT_MARKER)) initMs = performance.now() - started;
      onConsole?.(text);
    };
    child.stdout.on('data', (chunk: Buffer) => take(decoder.write(chunk)));
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (text: string) => {
      stderr += text;
    });
    child.stdin.on('error', () => {
      // QEMU exited; nothing is written to its stdin anyway
    });
    child.on('error', (err) => {
      spawnError = err;
      if (child.pid === undefined) {
        // spawn itself failed: there will be no process to wait for
        clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
        const hint = (err as NodeJS.ErrnoException).code === 'ENOENT' ? ` (${LAB_SETUP_HINT})` : '';
        reject(new Error(`cannot run ${QEMU}: ${err.message}${hint}`, { cause: err }));
      }
    });
    child.on('close', (code, sig) => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
      take(decoder.end());
      const durationMs = performance.now() - started;
      const finish = (): void => {
        if (spawnError) {
          reject(new Error(`${QEMU} failed: ${spawnError.message}`, { cause: spawnError }));
          return;
        }
        if (aborted && signal) {
          reject(abortError(signal));
          return;
        }
        const text = raw.replace(/\r\n/g, '\n');
        const exits = [...text.matchAll(new RegExp(`${EXIT_MARKER} (\\d+)\\b`, 'g'))];
        const last = exits.at(-1)?.[1];
        resolvePromise({
          exitCode: last === undefined ? null : Number(last),
          console: text,
          durationMs,
          initMs,
          timedOut,
          qemuExitCode: code,
          qemuSignal: sig,
          stderr,
          args,
        });
      };
      if (opts.consoleLog) {
        writeFile(opts.consoleLog, raw).then(finish, (err: unknown) => {
          reject(err instanceof Error ? err : new Error(String(err)));
        });
      } else {
        finish();
      }
    });
  });
}
