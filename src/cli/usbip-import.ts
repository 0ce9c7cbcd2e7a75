// `prism usbip list|attach|detach|ports`: the importing side, where the kernel's vhci-hcd takes
// the device. `attach` works over any prism address (vsock from an app VM to the USB VM, hvsock,
// unix, tcp) because vhci takes the connected socket's fd, not a host name.
import type { Command } from 'commander';
import { InvalidArgumentError } from 'commander';
import { DEFAULT_VSOCK_BUFFER, VSOCK_BUFFER_MAX, VSOCK_BUFFER_MIN, attachDevice, listDevices } from '../usbip/importer.js';
import { VdevStatus, Vhci } from '../usbip/vhci.js';
import { createLogger } from './log.js';

const hex4 = (n: number): string => n.toString(16).padStart(4, '0');

function portArg(v: string): number {
  const n = /^[0-9]+$/.test(v) ? Number(v) : NaN;
  if (!Number.isSafeInteger(n) || n > 65535) throw new InvalidArgumentError('must be a vhci port number (see `prism usbip ports`)');
  return n;
}

function vsockBufferArg(v: string): number {
  const m = /^([0-9]+)([KM]?)$/i.exec(v.trim());
  const n = m ? Number(m[1]) * ({ '': 1, K: 1024, M: 1024 * 1024 } as Record<string, number>)[(m[2] ?? '').toUpperCase()]! : NaN;
  if (!Number.isSafeInteger(n) || (n !== 0 && (n < VSOCK_BUFFER_MIN || n > VSOCK_BUFFER_MAX))) {
    throw new InvalidArgumentError(`must be 0 (keep the default) or ${VSOCK_BUFFER_MIN / 1024}K..${VSOCK_BUFFER_MAX / (1024 * 1024)}M bytes (a K or M suffix is allowed)`);
  }
  return n;
}

async function list(addr: string, opts: { json?: boolean }): Promise<void> {
  const devices = await listDevices(addr);
  if (opts.json) {
    process.stdout.write(`${JSON.stringify(devices)}\n`);
    return;
  }
  if (devices.length === 0) process.stdout.write(`${addr} exports no device this importer may see\n`);
  for (const { device: d, interfaces } of devices) {
    const ifs = interfaces.map((i) => `${i.bInterfaceClass.toString(16).padStart(2, '0')}/${i.bInterfaceSubClass.toString(16).padStart(2, '0')}/${i.bInterfaceProtocol.toString(16).padStart(2, '0')}`);
    process.stdout.write(`${d.busid}: ${hex4(d.idVendor)}:${hex4(d.idProduct)} speed ${d.speed} interfaces ${ifs.join(' ')}  ${d.path}\n`);
  }
}

async function attach(addr: string, busid: string, opts: { vsockBuffer: number }): Promise<void> {
  const log = createLogger();
  const r = await attachDevice(addr, busid, { vsockBuffer: opts.vsockBuffer, warn: (message) => log.warn({ from: addr, busid }, message) });
  log.info({ from: addr, busid, port: r.port, device: `${hex4(r.device.idVendor)}:${hex4(r.device.idProduct)}`, vsockBuffer: r.vsockBuffer ?? undefined }, 'usbip device attached');
  process.stdout.write(`attached ${busid} from ${addr} on vhci port ${r.port}\n`);
}

function ports(opts: { json?: boolean }): void {
  const used = new Vhci().ports().filter((p) => p.status !== VdevStatus.NULL);
  if (opts.json) {
    process.stdout.write(`${JSON.stringify(used)}\n`);
    return;
  }
  if (used.length === 0) process.stdout.write('no device is attached to vhci\n');
  for (const p of used) process.stdout.write(`port ${p.port} (${p.hub}): devid ${p.devid.toString(16)} speed ${p.speed} local ${p.localBusid}\n`);
}

export function addImporterCommands(cmd: Command): void {
  cmd
    .command('list')
    .description('the devices a USB/IP server at ADDR exports to this importer')
    .argument('<addr>', 'server address (vsock:CID:PORT, hvsock:UDS:PORT, unix:PATH, tcp:HOST:PORT)')
    .option('--json', 'print JSON')
    .action((addr: string, opts: { json?: boolean }) => list(addr, opts));
  cmd
    .command('attach')
    .description('import BUSID from ADDR and attach it to the local vhci-hcd (needs root and the vhci-hcd module)')
    .argument('<addr>', 'server address')
    .argument('<busid>', 'the bus ID shown by `prism usbip list`')
    .option(
      '--vsock-buffer <bytes>',
      'for a vsock ADDR: the socket\'s receive buffer (SO_VM_SOCKETS_BUFFER_SIZE) before vhci-hcd takes it; ' +
        `Linux's 256K default stalls SuperSpeed storage once per 1 MiB command. ${VSOCK_BUFFER_MIN / 1024}K..${VSOCK_BUFFER_MAX / (1024 * 1024)}M, K/M suffix ok, 0 keeps the default; ` +
        'a refusal is only a warning',
      vsockBufferArg,
      DEFAULT_VSOCK_BUFFER,
    )
    .action((addr: string, busid: string, opts: { vsockBuffer: number }) => attach(addr, busid, opts));
  cmd
    .command('detach')
    .description('detach the device on a vhci port')
    .argument('<port>', 'the port shown by `prism usbip ports`', portArg)
    .action((port: number) => {
      new Vhci().detach(port);
      process.stdout.write(`detached vhci port ${port}\n`);
    });
  cmd
    .command('ports')
    .description('devices attached to the local vhci-hcd')
    .option('--json', 'print JSON')
    .action((opts: { json?: boolean }) => ports(opts));
}
