// The one entry point tests use for the guest lab (lab/guest.ts). Tests that need a guest call
// requireLab() first: without the lab they fail with the set-up instructions, they never skip.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { labPaths, runGuest, type GuestOptions, type GuestResult, type LabPaths } from '../../lab/guest.js';

export {
  DEFAULT_TIMEOUT_MS,
  EXIT_MARKER,
  GUEST_PRELUDE,
  INIT_MARKER,
  LAB_SETUP_HINT,
  LabNotSetUpError,
  labDir,
  labPaths,
  newcArchive,
  qemuArgs,
  runGuest,
} from '../../lab/guest.js';
export type { GuestFile, GuestOptions, GuestResult, LabPaths, SerialPort, VhostUserDevice } from '../../lab/guest.js';

/** The lab's paths; throws LabNotSetUpError ("guest lab not set up: run `bash lab/setup.sh` ...") if missing. */
export function requireLab(): LabPaths {
  return labPaths();
}

/** The last lines of a guest run, for assertion messages. */
export function guestTail(result: GuestResult, lines = 40): string {
  const consoleTail = result.console.trimEnd().split('\n').slice(-lines).join('\n');
  const stderr = result.stderr.trim();
  return [
    `exitCode=${String(result.exitCode)} timedOut=${String(result.timedOut)} qemu=${String(result.qemuExitCode ?? result.qemuSignal)} ${Math.round(result.durationMs)} ms`,
    '--- console (tail) ---',
    consoleTail,
    ...(stderr ? ['--- qemu stderr ---', stderr] : []),
  ].join('\n');
}

/** Asserts the guest script exited with `code`, showing the console tail otherwise. */
export function assertGuestExit(result: GuestResult, code: number): void {
  assert.equal(result.exitCode, code, `guest script exit code\n${guestTail(result)}`);
}

/** Quotes a word for the guest's sh. */
export function shellQuote(word: string): string {
  return `'${word.replace(/'/g, `'\\''`)}'`;
}

/** The repository root (this checkout), the default working directory of runHostNode. */
export const REPO_ROOT = fileURLToPath(new URL('../..', import.meta.url)).replace(/\/$/, '');

export interface HostNodeOptions extends Omit<GuestOptions, 'script'> {
  /** node's arguments, e.g. ['--import', 'tsx', 'test/fixtures/x.mts']. */
  args: string[];
  /** Working directory, a host path; default REPO_ROOT. */
  cwd?: string;
  /** Shell run in the guest (outside the chroot) before node starts. */
  before?: string;
  /** Shell run in the guest (outside the chroot) after node exits; the result is still node's. */
  after?: string;
}

/** Exit codes of runHostNode's guest script when it fails before node runs. */
export const HOST_NODE_SETUP_EXIT = { mount9p: 120, noMountPoint: 121, mountSpecial: 122 } as const;

/**
 * Runs the host's own node (process.execPath) inside a lab guest: QEMU shares the host's root
 * filesystem read-only over virtio-9p, the guest mounts it at /host with its own proc, sysfs,
 * devtmpfs and a tmpfs /tmp (tsx's cache lands there), and chroots into it with a clean
 * environment (HOME=/tmp). Tests thereby run this checkout, native addon included, on the guest
 * kernel. The result's exit code is node's. Default guest RAM 1024 MiB.
 */
export function runHostNode(opts: HostNodeOptions): Promise<GuestResult> {
  const { args, cwd = REPO_ROOT, before = '', after = '', ...guest } = opts;
  const tag = 'hostroot';
  const command = ['cd', shellQuote(cwd), '&&', 'exec', ...[process.execPath, ...args].map(shellQuote)].join(' ');
  const e = HOST_NODE_SETUP_EXIT;
  // The fresh tmpfs on /tmp hides the host's /tmp; a checkout that lives there (CI clones may)
  // is bound back into place from the host's view kept at /run/hosttmp.
  const rel = cwd.startsWith('/tmp/') ? cwd.slice('/tmp/'.length) : null;
  const keepUnderTmp = rel === null ? '' : `mkdir -p /host/tmp/${shellQuote(rel)} && mount -o bind /run/hosttmp/${shellQuote(rel)} /host/tmp/${shellQuote(rel)} || { echo "host-node: cannot keep ${cwd} visible"; exit ${e.mountSpecial}; }`;
  const script = `mkdir -p /host
mount -t 9p -o trans=virtio,version=9p2000.L,cache=loose,msize=524288,ro ${tag} /host || { echo "host-node: cannot mount the host root (9p tag ${tag})"; exit ${e.mount9p}; }
for d in proc sys dev tmp; do [ -d "/host/$d" ] || { echo "host-node: the host has no /$d"; exit ${e.noMountPoint}; }; done
mkdir -p /run/hosttmp && mount -o bind /host/tmp /run/hosttmp \
  && mount -t proc proc /host/proc && mount -t sysfs sysfs /host/sys && mount -t devtmpfs devtmpfs /host/dev \
  && mount -t tmpfs -o mode=1777 tmpfs /host/tmp || { echo "host-node: cannot mount proc, sys, dev, tmp"; exit ${e.mountSpecial}; }
${keepUnderTmp}
${before}
echo "host-node: start $(cut -d' ' -f1 /proc/uptime)"
chroot /host /usr/bin/env -i PATH=/usr/local/bin:/usr/bin:/bin HOME=/tmp TMPDIR=/tmp LANG=C.UTF-8 /bin/sh -c ${shellQuote(command)}
rc=$?
echo "host-node: exit $rc $(cut -d' ' -f1 /proc/uptime)"
${after}
exit $rc`;
  return runGuest({
    memoryMiB: 1024,
    ...guest,
    script,
    extraArgs: [...(guest.extraArgs ?? []), '-virtfs', `local,path=/,mount_tag=${tag},security_model=none,readonly=on,multidevs=remap`],
  });
}

/**
 * Makes `dir`/`name`, an ext4 image of `size` (mkfs.ext4 syntax, e.g. '32M') holding `files`
 * (name → content) at its root, for tests that give a guest a disk; returns its path.
 */
export function makeExt4Image(dir: string, name: string, size: string, files: Readonly<Record<string, string | Uint8Array>>): string {
  const content = mkdtempSync(join(dir, 'content-'));
  for (const [file, data] of Object.entries(files)) writeFileSync(join(content, file), data);
  const image = join(dir, name);
  execFileSync('mkfs.ext4', ['-q', '-F', '-d', content, image, size]);
  rmSync(content, { recursive: true, force: true });
  return image;
}
