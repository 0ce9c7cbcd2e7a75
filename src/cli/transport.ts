// `prism transport check|relay`: the address grammar from the command line,
// and a forwarder between any two address kinds (e.g. expose a VM's hybrid
// vsock port as a Unix socket).
import { Command, InvalidArgumentError } from 'commander';
import type { Duplex } from 'node:stream';
import { ADDRESS_GRAMMAR, dial, formatAddress, listen, parseAddress, type Connection, type Listener } from '../transport/index.js';
import { createLogger } from './log.js';

function positiveInt(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1 || n > 1_000_000) throw new InvalidArgumentError('must be an integer from 1 to 1000000');
  return n;
}

function collect(value: string, previous: string[]): string[] {
  return [...previous, value];
}

/** Copies both ways until both sides finished; resolves with the byte counts. */
export function splice(a: Duplex, b: Duplex): Promise<{ aToB: number; bToA: number; error?: Error }> {
  return new Promise((resolve) => {
    let aToB = 0;
    let bToA = 0;
    let ended = 0;
    let done = false;
    const finish = (error?: Error): void => {
      if (done) return;
      done = true;
      a.destroy();
      b.destroy();
      resolve({ aToB, bToA, ...(error ? { error } : {}) });
    };
    a.on('data', (d: Buffer) => (aToB += d.length));
    b.on('data', (d: Buffer) => (bToA += d.length));
    const onEnd = (): void => {
      if (++ended === 2) finish();
    };
    // end: true carries a half-close across (a's EOF becomes b's shutdown(SHUT_WR)).
    a.pipe(b).on('finish', onEnd);
    b.pipe(a).on('finish', onEnd);
    a.once('error', finish);
    b.once('error', finish);
    a.once('close', () => setImmediate(() => finish()));
    b.once('close', () => setImmediate(() => finish()));
  });
}

interface RelayOptions {
  listen: string[];
  to: string;
  maxConnections: number;
  connectTimeout: number;
}

async function relay(opts: RelayOptions): Promise<void> {
  const log = createLogger();
  const target = formatAddress(parseAddress(opts.to));
  const addrs = opts.listen.map((a) => parseAddress(a));
  const listeners: Listener[] = [];
  const live = new Set<Duplex>();
  let nextId = 1;
  const onConnection = (listener: Listener, c: Connection): void => {
    const id = nextId++;
    c.stream.on('error', () => undefined); // reported by splice below
    if (live.size >= opts.maxConnections) {
      log.warn({ id, peer: c.peer, on: listener.address, max: opts.maxConnections }, 'connection refused: too many connections');
      c.stream.destroy();
      return;
    }
    live.add(c.stream);
    log.info({ id, peer: c.peer, on: listener.address, to: target }, 'connection accepted');
    dial(target, { timeoutMs: opts.connectTimeout })
      .then(async (upstream) => {
        live.add(upstream);
        const r = await splice(c.stream, upstream);
        live.delete(upstream);
        log.info({ id, bytesIn: r.aToB, bytesOut: r.bToA, ...(r.error ? { error: r.error.message } : {}) }, 'connection closed');
      })
      .catch((e: Error) => {
        log.warn({ id, error: e.message }, 'connection dropped: upstream unreachable');
        c.stream.destroy();
      })
      .finally(() => live.delete(c.stream));
  };
  try {
    for (const a of addrs) {
      const l = await listen(a);
      listeners.push(l);
      l.on('connection', (c) => onConnection(l, c));
      l.on('error', (e) => log.error({ on: l.address, error: e.message }, 'listener error'));
      log.info({ on: l.address, to: target }, 'relay listening');
    }
  } catch (e) {
    await Promise.all(listeners.map((l) => l.close()));
    throw e;
  }
  await new Promise<void>((resolve) => {
    const stop = (signal: NodeJS.Signals): void => {
      log.info({ signal, open: live.size }, 'relay stopping');
      process.off('SIGINT', stop);
      process.off('SIGTERM', stop);
      void Promise.all(listeners.map((l) => l.close())).then(() => {
        for (const s of live) s.destroy();
        resolve();
      });
    };
    process.on('SIGINT', stop);
    process.on('SIGTERM', stop);
  });
  log.info('relay stopped');
}

export function transportCommand(): Command {
  const cmd = new Command('transport').description('prism addresses: check them, relay between them').addHelpText('after', `\nAddresses:\n${ADDRESS_GRAMMAR}\n`);
  cmd
    .command('check')
    .description('parse addresses and print them in canonical form (exit 2 if any is bad)')
    .argument('<address...>', 'addresses to check')
    .option('--json', 'print the parsed form as JSON lines')
    .action((addresses: string[], opts: { json?: boolean }) => {
      for (const a of addresses) {
        const parsed = parseAddress(a);
        process.stdout.write(opts.json ? `${JSON.stringify(parsed)}\n` : `${formatAddress(parsed)}\n`);
      }
    });
  cmd
    .command('relay')
    .description('accept on one or more addresses and forward each connection to another address')
    .requiredOption('--listen <address>', 'where to accept connections (repeatable)', collect, [])
    .requiredOption('--to <address>', 'where to forward each connection')
    .option('--max-connections <n>', 'refuse connections beyond this many at once', positiveInt, 64)
    .option('--connect-timeout <ms>', 'give up dialing --to after this long', positiveInt, 10_000)
    .addHelpText('after', `\nLogs JSON lines on stderr; stops cleanly on SIGINT/SIGTERM.\n\nAddresses:\n${ADDRESS_GRAMMAR}\n`)
    .action((opts: { listen: string[]; to: string; maxConnections: number; connectTimeout: number }) => relay(opts));
  return cmd;
}
