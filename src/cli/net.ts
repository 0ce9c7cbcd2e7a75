// `prism net switch|status`: the inter-VM switch served as vhost-user-net ports.
import { Command, InvalidArgumentError } from 'commander';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { NetSwitchServer, type PortStatus } from '../net/server.js';
import { UsageError } from './errors.js';
import { createLogger } from './log.js';

function collect(value: string, previous: string[]): string[] {
  return [...previous, value];
}

function pairArg(v: string, previous: [string, string][]): [string, string][] {
  const m = /^([^=]+)=([^=]+)$/.exec(v);
  if (!m?.[1] || !m[2]) throw new InvalidArgumentError('must be A=B (two port names)');
  return [...previous, [m[1], m[2]]];
}

function connectArg(v: string, previous: [string, string][]): [string, string][] {
  const m = /^([^=]+)=(.+)$/.exec(v);
  if (!m?.[1] || !m[2]) throw new InvalidArgumentError('must be NAME=SOCKET (a port name and the socket its VMM listens on)');
  return [...previous, [m[1], m[2]]];
}

interface SwitchCli { dir: string; port: string[]; connect: [string, string][]; allow: [string, string][]; uplink?: string }

async function runSwitch(opts: SwitchCli): Promise<void> {
  const log = createLogger();
  const ports = [...opts.port, ...opts.connect.map(([name]) => name)];
  if (ports.length === 0) throw new UsageError('give at least one --port NAME or --connect NAME=SOCKET');
  const dup = ports.find((p, i) => ports.indexOf(p) !== i);
  if (dup !== undefined) throw new UsageError(`port ${dup} is given twice`);
  let server: NetSwitchServer;
  try {
    server = new NetSwitchServer({
      dir: path.resolve(opts.dir),
      ports,
      connect: Object.fromEntries(opts.connect.map(([name, sock]) => [name, path.resolve(sock)])),
      allow: opts.allow,
      ...(opts.uplink ? { uplink: opts.uplink } : {}),
      log: (level, msg, fields) => log[level](fields ?? {}, msg),
    });
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
  server.start();
  for (const p of opts.port) log.info({ port: p, socket: server.socketPath(p) }, 'port listening');
  for (const [p] of opts.connect) log.info({ port: p, socket: server.socketPath(p) }, 'port connecting to its VMM (client mode)');
  log.info({ allow: opts.allow.map(([a, b]) => `${a}=${b}`), uplink: opts.uplink ?? null }, 'switch running (default deny)');
  await new Promise<void>((resolve) => {
    const stop = (signal: NodeJS.Signals): void => {
      process.off('SIGINT', stop);
      process.off('SIGTERM', stop);
      log.info({ signal }, 'switch stopping');
      void server.close().then(resolve);
    };
    process.on('SIGINT', stop);
    process.on('SIGTERM', stop);
  });
  log.info('switch stopped');
}

function showStatus(dir: string, json: boolean): void {
  const file = path.join(dir, 'status.json');
  let data: { pid: number; time: string; uplink: string | null; ports: PortStatus[] };
  try {
    data = JSON.parse(fs.readFileSync(file, 'utf8')) as typeof data;
  } catch (e) {
    throw new Error(`cannot read ${file}: ${(e as Error).message} (is \`prism net switch --dir ${dir}\` running?)`, { cause: e });
  }
  if (json) {
    process.stdout.write(`${JSON.stringify(data)}\n`);
    return;
  }
  const rows = data.ports.map((p) =>
    [p.name, p.connected ? 'up' : 'down', p.mode, p.sessions, p.rxPackets, p.rxBytes, p.txPackets, p.txBytes, p.drops].map(String),
  );
  const head = ['port', 'vmm', 'mode', 'sessions', 'rx pkts', 'rx bytes', 'tx pkts', 'tx bytes', 'drops'];
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (r: string[]): string => r.map((c, i) => c.padEnd(widths[i] ?? 0)).join('  ').trimEnd();
  const features = data.ports
    .filter((p) => p.connected)
    .map((p) => `${p.name}: features ${p.features.join(' ') || '-'}; protocol ${p.protocolFeatures.join(' ') || '-'}\n`)
    .join('');
  process.stdout.write(`switch pid ${data.pid}, ${data.time}${data.uplink ? `, uplink ${data.uplink}` : ''}\n${line(head)}\n${rows.map(line).join('\n')}\n${features}`);
}

export function netCommand(): Command {
  const cmd = new Command('net').description('the inter-VM network switch (vhost-user-net ports)');
  cmd
    .command('switch')
    .description('serve a switch with one vhost-user-net socket per port: DIR/NAME.sock')
    .requiredOption('--dir <dir>', 'directory for the port sockets and status.json')
    .option('--port <name>', 'a port (repeatable)', collect, [])
    .option('--connect <name=socket>', 'a port in client mode: prism connects to SOCKET, where its VMM listens (QEMU server=on), and reconnects (repeatable)', connectArg, [])
    .option('--allow <a=b>', 'let ports a and b exchange frames (repeatable; both ways)', pairArg, [])
    .option('--uplink <name>', 'the port every other port may reach (the net VM)')
    .addHelpText(
      'after',
      `
Default deny: frames go between two ports only if --allow names them, or one is the uplink.
No checksum/TSO offloads are offered to guests. QEMU: -chardev socket,id=c,path=DIR/NAME.sock
-netdev vhost-user,id=n,chardev=c -device virtio-net-pci,netdev=n (guest RAM must be shared memory).
Client mode (--connect NAME=SOCKET): QEMU -chardev socket,id=c,path=SOCKET,server=on; prism connects,
and reconnects whenever that QEMU restarts.`,
    )
    .action((opts: SwitchCli) => runSwitch(opts));
  cmd
    .command('status')
    .description('per-port counters of a running switch')
    .requiredOption('--dir <dir>', 'the switch directory')
    .option('--json', 'print JSON')
    .action((opts: { dir: string; json?: boolean }) => showStatus(opts.dir, opts.json ?? false));
  return cmd;
}
