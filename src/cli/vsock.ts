// `prism vsock serve`: a guest's virtio-vsock device (vhost-user) with cloud-hypervisor's hybrid
// host side: guest → CID 2 port P reaches UDS_P; host programs reach guest port P through UDS with
// `CONNECT P\n` (answered `OK <port>\n`).
import { Command, InvalidArgumentError } from 'commander';
import * as path from 'node:path';
import { MAX_GUEST_CID, MIN_GUEST_CID } from '../codecs/vsock/index.js';
import { VsockServer, type VsockAllow } from '../vsock/server.js';
import { UsageError } from './errors.js';
import { createLogger } from './log.js';

function intArg(min: number, max: number): (v: string) => number {
  return (v: string): number => {
    const n = /^[0-9]+$/.test(v) ? Number(v) : NaN;
    if (!Number.isSafeInteger(n) || n < min || n > max) throw new InvalidArgumentError(`must be an integer from ${min} to ${max}`);
    return n;
  };
}

function peerArg(v: string, previous: Record<number, string>): Record<number, string> {
  const m = /^([0-9]+)=(.+)$/.exec(v);
  const cid = Number(m?.[1]);
  if (!m?.[2] || !Number.isSafeInteger(cid) || cid < MIN_GUEST_CID || cid > MAX_GUEST_CID) {
    throw new InvalidArgumentError(`must be CID=UDS: another VM's CID (${MIN_GUEST_CID}..${MAX_GUEST_CID}) and its hybrid socket`);
  }
  if (previous[cid] !== undefined) throw new InvalidArgumentError(`CID ${cid} is given twice`);
  return { ...previous, [cid]: path.resolve(m[2]) };
}

function allowArg(v: string, previous: VsockAllow[]): VsockAllow[] {
  const m = /^([0-9]+):([0-9]+):([0-9]+|\*)$/.exec(v);
  if (!m?.[1] || !m[2] || !m[3]) throw new InvalidArgumentError('must be FROM_CID:TO_CID:PORT (PORT may be *)');
  const port = m[3] === '*' ? '*' : Number(m[3]);
  if (port !== '*' && port > 0xffff_ffff) throw new InvalidArgumentError('the port must fit in 32 bits');
  return [...previous, { from: Number(m[1]), to: Number(m[2]), port }];
}

interface ServeCli {
  connect?: boolean;
  peer: Record<number, string>;
  allow: VsockAllow[];
  socket: string;
  cid: number;
  uds: string;
  bufAlloc: number;
  maxConnections: number;
  maxPending: number;
}

async function runServe(opts: ServeCli): Promise<void> {
  const log = createLogger();
  const socket = path.resolve(opts.socket);
  const uds = path.resolve(opts.uds);
  if (socket === uds) throw new UsageError('--socket (for the VMM) and --uds (for host programs) must be different paths');
  let server: VsockServer;
  try {
    server = new VsockServer({
      socket,
      connect: opts.connect === true,
      peers: opts.peer,
      allow: opts.allow,
      cid: opts.cid,
      uds,
      device: { bufAlloc: opts.bufAlloc, maxConnections: opts.maxConnections, maxPendingRequests: opts.maxPending },
      log: (level, msg, fields) => log[level](fields ?? {}, msg),
    });
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
  await server.start();
  log.info({ socket, mode: opts.connect ? 'connect' : 'listen', cid: opts.cid, uds, guestToHost: `${uds}_<port>`, peers: opts.peer, allow: opts.allow.map((a) => `${a.from}:${a.to}:${a.port}`) }, 'vsock device ready');
  await new Promise<void>((resolve) => {
    const stop = (signal: NodeJS.Signals): void => {
      process.off('SIGINT', stop);
      process.off('SIGTERM', stop);
      log.info({ signal }, 'vsock device stopping');
      void server.close().then(resolve);
    };
    process.on('SIGINT', stop);
    process.on('SIGTERM', stop);
  });
  log.info({ counters: server.status().counters }, 'vsock device stopped');
}

export function vsockCommand(): Command {
  const cmd = new Command('vsock').description("a guest's virtio-vsock device (vhost-user) with a hybrid-vsock host side");
  cmd
    .command('serve')
    .description('serve one guest: SOCKET for its VMM, UDS (+ UDS_<port>) for host programs')
    .requiredOption('--socket <path>', 'the vhost-user socket the VMM connects to (or listens on, with --connect)')
    .option('--connect', 'client mode: the VMM listens on SOCKET (QEMU server=on); prism connects and reconnects')
    .option('--peer <cid=uds>', "another VM's CID and its hybrid socket (repeatable)", peerArg, {})
    .option('--allow <from:to:port>', 'let this guest (FROM) connect to peer CID TO on PORT or * (repeatable; default deny)', allowArg, [])
    .requiredOption('--cid <n>', `the guest's CID (${MIN_GUEST_CID}..${MAX_GUEST_CID})`, intArg(MIN_GUEST_CID, MAX_GUEST_CID))
    .requiredOption('--uds <path>', 'the hybrid socket: host programs connect here; guest connections to port P go to <path>_P')
    .option('--buf-alloc <bytes>', 'per-connection buffer for guest data (credit)', intArg(4096, 64 * 1024 * 1024), 256 * 1024)
    .option('--max-connections <n>', 'most connections at once', intArg(1, 65536), 256)
    .option('--max-pending <n>', 'most connections being set up at once', intArg(1, 65536), 32)
    .addHelpText(
      'after',
      `
Hybrid vsock, as cloud-hypervisor and Firecracker serve it (tools written for them work unchanged):
  guest -> host:  the guest connects to CID 2 port P; prism connects to the Unix socket UDS_P
                  (the guest gets a connection reset if nothing listens there)
  host -> guest:  connect to UDS, write "CONNECT P\\n", read "OK <host port>\\n", then the stream is
                  the connection (closed without an answer if the guest does not accept)
QEMU (guest RAM must be shared memory):
  -object memory-backend-memfd,id=mem,size=512M,share=on -machine memory-backend=mem
  -chardev socket,id=vs,path=SOCKET -device vhost-user-vsock-pci,chardev=vs
The guest's CID comes from the device's config space (--cid).
VM to VM (default deny): with --peer 4=/run/vm4.vsock --allow 3:4:5000, guest 3's connection to
CID 4 port 5000 goes through "CONNECT 5000" on VM 4's hybrid socket (VM 4 sees it come from CID 2);
anything not allowed gets a connection reset and a log line. Other CIDs are refused.`,
    )
    .action((opts: ServeCli) => runServe(opts));
  return cmd;
}
