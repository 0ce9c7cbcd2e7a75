// `prism 9p mount`, the pure part: the mount(8) command line that hands the Linux 9p client a
// connected socket with trans=fd (the way the kernel takes 9P over vsock), the checks on the
// user's -o options, and what a failed mount(8) means in words. No I/O here: the CLI dials,
// spawns mount(8) with the socket as its fd 3, and calls these.

/** The fd number the connection has in mount(8): stdio index 3, so rfdno=3,wfdno=3. */
export const MOUNT_FD = 3;
/** msize when -o gives none: the kernel's fd transport and prism's server both take 512 KiB. */
export const DEFAULT_MOUNT_MSIZE = 512 * 1024;
/** The Linux client refuses less (p9_client_create: "msize less than 4096"). */
export const MIN_MOUNT_MSIZE = 4096;
/** prism's own server agrees to at most this; the kernel clamps to its transport's limit anyway. */
export const MAX_MOUNT_MSIZE = 16 * 1024 * 1024;
export const MOUNT_VERSION = '9p2000.L';

/** A -o option prism refuses; the message says which and why. */
export class MountOptionError extends Error {
  override readonly name = 'MountOptionError';
}

type Check = (value: string | undefined, key: string) => void;

function fail(key: string, why: string): never {
  throw new MountOptionError(`-o ${key}: ${why}`);
}

const flag: Check = (value, key) => {
  if (value !== undefined) fail(key, `takes no value (write "${key}", not "${key}=${value}")`);
};

function needValue(value: string | undefined, key: string, what: string): string {
  if (value === undefined || value === '') fail(key, `needs a value: ${key}=${what}`);
  return value;
}

const uint: Check = (value, key) => {
  const v = needValue(value, key, 'N');
  if (!/^[0-9]{1,10}$/.test(v) || Number(v) > 0xffff_ffff) fail(key, `must be a decimal number up to 4294967295, got "${v}"`);
};

/** The kernel reads debug= with base 0: decimal, 0x hex (or 0 octal). */
const mask: Check = (value, key) => {
  const v = needValue(value, key, 'MASK');
  if (!/^(0[xX][0-9a-fA-F]{1,8}|[0-9]{1,10})$/.test(v)) fail(key, `must be a number (decimal or 0x hex), got "${v}"`);
};

/** Any text (aname may be empty: the server's default export). */
const text =
  (allowEmpty: boolean): Check =>
  (value, key) => {
    if (value === undefined || (!allowEmpty && value === '')) fail(key, `needs a value: ${key}=NAME`);
  };

const msize: Check = (value, key) => {
  uint(value, key);
  const n = Number(value);
  if (n < MIN_MOUNT_MSIZE || n > MAX_MOUNT_MSIZE) fail(key, `must be from ${MIN_MOUNT_MSIZE} to ${MAX_MOUNT_MSIZE} bytes, got ${n}`);
};

/** Linux 6.1 knows none|loose|fscache|mmap; 6.6 adds readahead|writeback and numeric flags. */
const CACHE_MODES = ['none', 'loose', 'fscache', 'mmap', 'readahead', 'writeback'];
const cache: Check = (value, key) => {
  const v = needValue(value, key, CACHE_MODES.join('|'));
  if (!CACHE_MODES.includes(v) && !/^(0[xX][0-9a-fA-F]{1,8}|[0-9]{1,10})$/.test(v)) fail(key, `must be one of ${CACHE_MODES.join(', ')} (or a number on Linux 6.6+), got "${v}"`);
};

const access: Check = (value, key) => {
  const v = needValue(value, key, 'user|any|client|UID');
  if (!['user', 'any', 'client'].includes(v) && !/^[0-9]{1,10}$/.test(v)) fail(key, `must be user, any, client or a numeric uid, got "${v}"`);
};

const version: Check = (value, key) => {
  if (value !== MOUNT_VERSION) fail(key, `prism mounts ${MOUNT_VERSION} only (the protocol its server speaks), got "${value ?? ''}"`);
};

/** The 9p filesystem's and client's own options (fs/9p/v9fs.c, net/9p/client.c). */
const NINEP_OPTIONS: Readonly<Record<string, Check>> = {
  msize,
  cache,
  access,
  aname: text(true),
  uname: text(false),
  cachetag: text(false),
  debug: mask,
  dfltuid: uint,
  dfltgid: uint,
  afid: uint,
  locktimeout: uint,
  nodevmap: flag,
  posixacl: flag,
  noextend: flag,
  ignoreqv: flag,
  fscache: flag,
  mmap: flag,
  version,
};

/** Options mount(8) turns into mount flags for every filesystem. */
const VFS_FLAGS = [
  'ro', 'rw', 'nosuid', 'suid', 'nodev', 'dev', 'noexec', 'exec', 'sync', 'async', 'dirsync', 'noatime', 'atime',
  'nodiratime', 'diratime', 'relatime', 'norelatime', 'strictatime', 'nostrictatime', 'lazytime', 'nolazytime', 'silent', 'loud',
];

/** Options prism itself sets from the connection it dialled. */
const SET_BY_PRISM: Readonly<Record<string, string>> = {
  trans: `prism sets trans=fd itself and hands the kernel the connection it dialled`,
  rfdno: `prism sets rfdno=${MOUNT_FD},wfdno=${MOUNT_FD} itself (the dialled connection is mount's fd ${MOUNT_FD})`,
  wfdno: `prism sets rfdno=${MOUNT_FD},wfdno=${MOUNT_FD} itself (the dialled connection is mount's fd ${MOUNT_FD})`,
  port: 'belongs to trans=tcp; give the server as the address instead, e.g. tcp:HOST:PORT',
  privport: 'belongs to trans=tcp; prism dials the address itself',
};

function hasControlCharacter(s: string): boolean {
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x20 || c === 0x7f) return true;
  }
  return false;
}

export interface MountOption {
  key: string;
  /** undefined for a flag ("nodevmap"), the text after the first "=" otherwise (may be ""). */
  value: string | undefined;
}

/**
 * Splits and checks the -o lists (comma-separated, each -o may be given more than once) into
 * options in the order given. Refuses unknown options (the kernel would silently ignore a typo),
 * bad values, options prism sets itself, a version other than 9p2000.L, and an option given twice.
 */
export function parseMountOptions(lists: readonly string[]): MountOption[] {
  const out: MountOption[] = [];
  const seen = new Set<string>();
  for (const list of lists) {
    for (const item of list.split(',')) {
      if (item === '') continue; // "a,,b" or a trailing comma
      if (hasControlCharacter(item)) throw new MountOptionError(`-o ${JSON.stringify(item)}: control characters are not allowed in mount options`);
      const eq = item.indexOf('=');
      const key = eq < 0 ? item : item.slice(0, eq);
      const value = eq < 0 ? undefined : item.slice(eq + 1);
      const why = SET_BY_PRISM[key];
      if (why) fail(key, why);
      const check = NINEP_OPTIONS[key];
      if (check) check(value, key);
      else if (VFS_FLAGS.includes(key)) flag(value, key);
      else
        throw new MountOptionError(
          `-o ${key}: not a 9p mount option prism knows (9p: ${Object.keys(NINEP_OPTIONS).join(', ')}; and the generic ${VFS_FLAGS.join(', ')})`,
        );
      if (seen.has(key)) fail(key, 'given twice');
      seen.add(key);
      out.push({ key, value });
    }
  }
  return out;
}

/**
 * The -o string for mount(8): trans=fd,rfdno=FD,wfdno=FD,version=9p2000.L,msize=…, then the
 * user's options in their order (a user msize replaces the default; version=9p2000.L is not
 * repeated). Throws MountOptionError for a refused option.
 */
export function buildMountOptions(lists: readonly string[], fd: number = MOUNT_FD): string {
  if (!Number.isInteger(fd) || fd < 0) throw new RangeError(`fd must be a non-negative integer, got ${fd}`);
  const user = parseMountOptions(lists);
  const parts = [`trans=fd`, `rfdno=${fd}`, `wfdno=${fd}`, `version=${MOUNT_VERSION}`];
  if (!user.some((o) => o.key === 'msize')) parts.push(`msize=${DEFAULT_MOUNT_MSIZE}`);
  for (const o of user) {
    if (o.key === 'version') continue;
    parts.push(o.value === undefined ? o.key : `${o.key}=${o.value}`);
  }
  return parts.join(',');
}

/** mount(8)'s arguments (util-linux and busybox take the same): -t 9p -o OPTIONS SOURCE MOUNTPOINT. */
export function mountArgs(source: string, mountpoint: string, options: string): string[] {
  return ['-t', '9p', '-o', options, source, mountpoint];
}

export interface MountFailure {
  /** The address as given (canonical). */
  address: string;
  mountpoint: string;
  /** mount(8)'s exit status, null if it was killed. */
  status: number | null;
  signal?: string | null;
  /** What mount(8) wrote on stdout and stderr. */
  output: string;
  /** prism stopped mount(8) after this many seconds (the server never answered). */
  timedOutAfterSec?: number;
  /** Whether prism runs as root (uid 0): permission errors then come from the server. */
  isRoot: boolean;
}

/** One line: what failed on which address and mountpoint, the likely cause, what to do, and mount's words. */
export function explainMountFailure(f: MountFailure): string {
  const what = `cannot mount ${f.address} on ${f.mountpoint}`;
  const said = f.output.trim().replace(/\s*\n\s*/g, ' / ');
  const quoted = said === '' ? '' : ` (mount said: ${said})`;
  if (f.timedOutAfterSec !== undefined) {
    return `${what}: the server did not complete the 9P handshake within ${f.timedOutAfterSec} s, so prism stopped mount; is a 9P2000.L server listening there?${quoted}`;
  }
  const hint = ((): string => {
    if (/unknown filesystem type|No such device|ENODEV/i.test(said)) return 'the kernel has no 9p filesystem: load it with `modprobe 9p 9pnet_fd` (as root)';
    if (/Protocol not supported|EPROTONOSUPPORT/i.test(said)) return "the kernel's 9p fd transport is not loaded: `modprobe 9pnet_fd` (as root)";
    if (/must be superuser|only root|Operation not permitted|EPERM/i.test(said) || (!f.isRoot && /Permission denied|EACCES/i.test(said))) {
      return 'permission denied: mounting needs root (CAP_SYS_ADMIN); run prism 9p mount as root';
    }
    if (/Permission denied|EACCES|Connection refused/i.test(said)) return 'the server refused the attach: check aname=, uname=, access= and the export\'s permissions for the server\'s user';
    if (/No such file or directory|ENOENT/i.test(said)) return 'the server has no such export: check aname=';
    if (/Invalid argument|EINVAL/i.test(said)) return 'the kernel refused the options or the server\'s answer: check -o (dmesg says more)';
    if (/Input\/output error|EIO|Connection reset|Broken pipe|ECONNRESET|EPIPE/i.test(said)) return 'the connection failed during the 9P handshake: is a 9P2000.L server listening there?';
    if (/already mounted|busy|EBUSY/i.test(said)) return `${f.mountpoint} is busy or already mounted: umount it first`;
    return f.status === null ? `mount was killed by ${f.signal ?? 'a signal'}` : `mount exited with status ${f.status}`;
  })();
  return `${what}: ${hint}${quoted}`;
}
