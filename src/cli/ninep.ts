// `prism 9p serve|ls|stat|cat|get|put|mount`: the hardened 9P2000.L file server,
// a small client for scripts and tests, and the kernel client's mount over any address.
import { Command, InvalidArgumentError } from 'commander';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { PassthroughFs } from '../fs/passthrough.js';
import { NinePServer } from '../9p/server.js';
import { NinePClient } from '../9p/client.js';
import { MIN_MSIZE } from '../9p/session.js';
import { MOUNT_FD, MountOptionError, buildMountOptions, explainMountFailure, mountArgs } from '../9p/mount.js';
import { ADDRESS_GRAMMAR, connectionFd, dial, formatAddress, listen, parseAddress } from '../transport/index.js';
import { socketInfo } from '../sys/index.js';
import { UsageError } from './errors.js';
import { createLogger } from './log.js';

const MAX_MSIZE = 16 * 1024 * 1024;

function msizeArg(v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < MIN_MSIZE || n > MAX_MSIZE) throw new InvalidArgumentError(`must be an integer from ${MIN_MSIZE} to ${MAX_MSIZE}`);
  return n;
}

function collect(value: string, previous: string[]): string[] {
  return [...previous, value];
}

function userArg(v: string): { uid: number; gid: number } {
  const m = /^(\d+)(?::(\d+))?$/.exec(v);
  if (!m?.[1]) throw new InvalidArgumentError('must be UID or UID:GID (numbers)');
  const uid = Number(m[1]);
  return { uid, gid: m[2] === undefined ? uid : Number(m[2]) };
}

interface ServeOptions {
  listen: string[];
  readOnly?: boolean;
  msize: number;
  maxConnections: number;
  maxFids: number;
  user?: { uid: number; gid: number };
}

async function serve(dir: string, opts: ServeOptions): Promise<void> {
  const log = createLogger();
  if (opts.listen.length === 0) throw new UsageError('give at least one --listen ADDRESS');
  const addrs = opts.listen.map((a) => parseAddress(a));
  const exportPath = path.resolve(dir);
  if (opts.user && process.getuid?.() !== 0) throw new UsageError('--user needs prism to be started as root (it drops to that user)');
  // Modes from clients are exact: the client applied its own umask already.
  process.umask(0);
  const pfs = await PassthroughFs.open(exportPath, { readOnly: opts.readOnly ?? false });
  const asRoot = process.getuid?.() === 0 && !opts.user;
  const server = new NinePServer(pfs, {
    exportPath,
    maxMsize: opts.msize,
    maxFids: opts.maxFids,
    maxConnections: opts.maxConnections,
    ownerFromClient: asRoot,
    log: (level, msg, fields) => log[level](fields ?? {}, msg),
  });
  try {
    for (const a of addrs) {
      const l = await listen(a);
      server.serve(l);
      log.info({ on: l.address, export: exportPath, readOnly: opts.readOnly ?? false, msize: opts.msize }, '9p server listening');
    }
  } catch (e) {
    await server.close();
    pfs.close();
    throw e;
  }
  if (opts.user) {
    // Listeners are bound; from here on every file operation runs as this user.
    process.setgroups?.([opts.user.gid]);
    process.setgid?.(opts.user.gid);
    process.setuid?.(opts.user.uid);
    log.info({ uid: opts.user.uid, gid: opts.user.gid }, 'dropped privileges');
  } else if (asRoot) {
    log.warn('running as root: clients act with root powers inside the export and new files get the client\'s uid/gid; use --user UID:GID to serve as one unprivileged user');
  }
  await new Promise<void>((resolve) => {
    const stop = (signal: NodeJS.Signals): void => {
      process.off('SIGINT', stop);
      process.off('SIGTERM', stop);
      log.info({ signal, connections: server.connectionCount }, '9p server stopping');
      void server.close().then(resolve);
    };
    process.on('SIGINT', stop);
    process.on('SIGTERM', stop);
  });
  pfs.close();
  log.info('9p server stopped');
}

interface ClientCliOptions { aname: string; msize: number }

async function withClient<T>(addr: string, opts: ClientCliOptions, fn: (c: NinePClient) => Promise<T>): Promise<T> {
  const c = await NinePClient.connect(addr, { aname: opts.aname, msize: opts.msize });
  try {
    return await fn(c);
  } finally {
    c.close();
  }
}

interface MountCliOptions {
  options?: string[];
  timeout: number;
}

function secondsArg(v: string): number {
  const n = Number(v);
  if (!Number.isFinite(n) || n <= 0 || n > 3600) throw new InvalidArgumentError('must be a number of seconds from 0 to 3600');
  return n;
}


/**
 * Dials ADDR and mounts it with the kernel's 9p client on that connection: mount(8) gets the
 * socket as its fd 3 and `-o trans=fd,rfdno=3,wfdno=3`. Once mount(2) returns, the kernel holds
 * the socket; prism keeps no part of it and exits.
 */
async function mount(addr: string, mountpoint: string, opts: MountCliOptions): Promise<void> {
  const log = createLogger();
  let options: string;
  try {
    options = buildMountOptions(opts.options ?? []);
  } catch (e) {
    throw e instanceof MountOptionError ? new UsageError(e.message) : e;
  }
  const source = formatAddress(parseAddress(addr));
  const target = path.resolve(mountpoint);
  let st: fs.Stats;
  try {
    st = fs.statSync(target);
  } catch (e) {
    const code = (e as { code?: string }).code;
    if (code === 'ENOENT') throw new UsageError(`the mountpoint ${target} does not exist: create it first (mkdir -p ${target})`);
    throw new UsageError(`cannot use ${target} as the mountpoint: ${code ?? String(e)}`);
  }
  if (!st.isDirectory()) throw new UsageError(`the mountpoint ${target} is not a directory`);

  const timeoutMs = opts.timeout * 1000;
  const stream = await dial(source, { timeoutMs });
  let fd: number | null;
  try {
    fd = connectionFd(stream);
    if (fd === null) throw new Error(`cannot mount ${source}: its connection is not a kernel socket that prism can hand to the 9p client (trans=fd)`);
    const info = socketInfo(fd);
    if (info.type !== 'stream' || info.listening) throw new Error(`cannot mount ${source}: its fd ${fd} is not a connected stream socket`);
    // A 9P server waits for the client's Tversion; bytes before it mean this is no 9P server.
    if (stream.readableLength > 0) {
      throw new Error(`cannot mount ${source} on ${target}: the server sent ${stream.readableLength} bytes before the client spoke; a 9P2000.L server waits for Tversion`);
    }
  } catch (e) {
    stream.destroy();
    throw e;
  }
  log.debug({ address: source, fd, mountpoint: target, options }, 'running mount');
  const child = spawn('mount', mountArgs(source, target, options), { stdio: ['ignore', 'pipe', 'pipe', fd] });
  // mount has its own copy of the connection (or failed to start). Ours goes now, before the
  // server's first answer can arrive: Node would otherwise read it instead of the kernel.
  stream.destroy();
  let output = '';
  child.stdout?.setEncoding('utf8').on('data', (t: string) => (output += t));
  child.stderr?.setEncoding('utf8').on('data', (t: string) => (output += t));
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    child.kill('SIGKILL');
  }, timeoutMs);
  const [status, signal] = await new Promise<[number | null, NodeJS.Signals | null]>((resolve, reject) => {
    child.once('error', (e: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      const why = e.code === 'ENOENT' ? 'there is no mount program on PATH: install util-linux (mount) or busybox' : `cannot run mount: ${e.message}`;
      reject(new Error(`cannot mount ${source} on ${target}: ${why}`));
    });
    child.once('close', (code, sig) => {
      clearTimeout(timer);
      resolve([code, sig]);
    });
  });
  if (status !== 0 || timedOut) {
    throw new Error(
      explainMountFailure({
        address: source,
        mountpoint: target,
        status,
        signal,
        output,
        isRoot: process.getuid?.() === 0,
        ...(timedOut ? { timedOutAfterSec: opts.timeout } : {}),
      }),
    );
  }
  log.info({ address: source, mountpoint: target, options }, '9p mounted');
}

const TYPE_CHAR: Record<number, string> = { 4: 'd', 10: 'l', 8: '-', 1: 'p', 2: 'c', 6: 'b', 12: 's' };

export function ninepCommand(): Command {
  const cmd = new Command('9p').description('hardened 9P2000.L file server and client').addHelpText('after', `\nAddresses:\n${ADDRESS_GRAMMAR}\n`);
  cmd
    .command('serve')
    .description('serve DIR over 9P2000.L, every path confined by the kernel (openat2 RESOLVE_BENEATH|NO_XDEV|NO_MAGICLINKS)')
    .argument('<dir>', 'the directory to export')
    .option('--listen <address>', 'where to accept clients (repeatable)', collect, [])
    .option('--read-only', 'refuse every write with EROFS')
    .option('--msize <bytes>', 'largest message size to agree to', msizeArg, 1024 * 1024)
    .option('--max-connections <n>', 'most clients at once', (v) => Number(v), 256)
    .option('--max-fids <n>', 'most fids per connection', (v) => Number(v), 4096)
    .option('--user <uid[:gid]>', 'when started as root: drop to this user after binding', userArg)
    .addHelpText(
      'after',
      `
Runs as the user that starts it; every client acts with that user's rights. Started as root
without --user, new files get the attaching client's uid and the requested gid. Logs JSON lines
on stderr; stops cleanly on SIGINT/SIGTERM. aname "", "/" or the export's absolute path attach to
the export root.`,
    )
    .action((dir: string, opts: ServeOptions) => serve(dir, opts));

  const clientOpts = (c: Command): Command =>
    c.option('--aname <name>', 'attach name', '').option('--msize <bytes>', 'message size to ask for', msizeArg, 1024 * 1024);

  clientOpts(cmd.command('ls').description('list a directory').argument('<address>').argument('[path]', 'directory in the export', '/')).action(
    (addr: string, p: string, opts: ClientCliOptions) =>
      withClient(addr, opts, async (c) => {
        const entries = await c.list(p);
        for (const e of entries) if (e.name !== '.' && e.name !== '..') process.stdout.write(`${TYPE_CHAR[e.type] ?? '?'} ${e.name}\n`);
      }),
  );
  clientOpts(cmd.command('stat').description('print the attributes of a path as JSON').argument('<address>').argument('<path>')).action(
    (addr: string, p: string, opts: ClientCliOptions) =>
      withClient(addr, opts, async (c) => {
        const a = await c.stat(p);
        const out = {
          mode: `0${(a.mode & 0o7777).toString(8)}`, type: (a.mode >>> 12) & 0xf, uid: a.uid, gid: a.gid, size: a.size.toString(), nlink: a.nlink.toString(),
          mtime: Number(a.mtimeSec), qid: { type: a.qid.type, path: a.qid.path.toString() },
        };
        process.stdout.write(`${JSON.stringify(out)}\n`);
      }),
  );
  clientOpts(cmd.command('cat').description('write a file to stdout').argument('<address>').argument('<path>')).action(
    (addr: string, p: string, opts: ClientCliOptions) =>
      withClient(addr, opts, async (c) => {
        await c.read(p, (chunk) => new Promise<void>((resolve, reject) => process.stdout.write(chunk, (e) => (e ? reject(e) : resolve()))));
      }),
  );
  clientOpts(cmd.command('get').description('copy a file from the export to a local file').argument('<address>').argument('<path>').argument('<local>')).action(
    (addr: string, p: string, local: string, opts: ClientCliOptions) =>
      withClient(addr, opts, async (c) => {
        const out = fs.createWriteStream(local);
        await c.read(p, (chunk) => new Promise<void>((resolve, reject) => out.write(chunk, (e) => (e ? reject(e) : resolve()))));
        await new Promise<void>((resolve, reject) => out.end((e?: Error | null) => (e ? reject(e) : resolve())));
      }),
  );
  clientOpts(cmd.command('put').description('copy a local file (or - for stdin) into the export').argument('<address>').argument('<local>').argument('<path>')).action(
    (addr: string, local: string, p: string, opts: ClientCliOptions) =>
      withClient(addr, opts, async (c) => {
        const src = local === '-' ? process.stdin : fs.createReadStream(local);
        await c.write(p, src as AsyncIterable<Buffer>);
      }),
  );
  cmd
    .command('mount')
    .description('mount a 9P2000.L server with the kernel 9p client on the connection prism dials (trans=fd)')
    .argument('<address>', 'where the server is: vsock:CID:PORT, hvsock:UDS:PORT, unix:PATH, tcp:HOST:PORT or fd:N')
    .argument('<mountpoint>', 'an existing directory')
    .option('-o, --options <list>', '9p mount options, comma-separated (repeatable): msize, cache, aname, uname, access, debug, ro, ...', (v: string, prev: string[] | undefined) => [...(prev ?? []), v])
    .option('--timeout <seconds>', 'give up connecting, and stop mount if the server does not answer, after this long', secondsArg, 30)
    .addHelpText(
      'after',
      `
Runs mount(8) (util-linux or busybox) as
  mount -t 9p -o trans=fd,rfdno=${MOUNT_FD},wfdno=${MOUNT_FD},version=9p2000.L,msize=524288,OPTIONS ADDRESS MOUNTPOINT
with the dialled socket as its fd ${MOUNT_FD}; the kernel keeps the socket and prism exits. Needs root
and the 9p and 9pnet_fd modules (modprobe 9p 9pnet_fd). trans, rfdno, wfdno, port and privport
are prism's to set; version can only be 9p2000.L. Unmount with umount MOUNTPOINT.`,
    )
    .action((addr: string, mountpoint: string, opts: MountCliOptions) => mount(addr, mountpoint, opts));
  return cmd;
}

