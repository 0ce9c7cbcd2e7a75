// `prism 9p serve|ls|stat|cat|get|put`: the hardened 9P2000.L file server and
// a small client for scripts and tests.
import { Command, InvalidArgumentError } from 'commander';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { PassthroughFs } from '../fs/passthrough.js';
import { NinePServer } from '../9p/server.js';
import { NinePClient } from '../9p/client.js';
import { MIN_MSIZE } from '../9p/session.js';
import { ADDRESS_GRAMMAR, listen, parseAddress } from '../transport/index.js';
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
  return cmd;
}

