// `prism usbip list|attach|detach|ports`: the importing side, where the kernel's vhci-hcd takes
// the device. `attach` works over any prism address (vsock from an app VM to the USB VM, hvsock,
// unix, tcp) because vhci takes the connected socket's fd, not a host name.
import type { Command } from 'commander';
import { InvalidArgumentError } from 'commander';
import { attachDevice, listDevices } from '../usbip/importer.js';
import { VdevStatus, Vhci } from '../usbip/vhci.js';
import { createLogger } from './log.js';

const hex4 = (n: number): string => n.toString(16).padStart(4, '0');

function portArg(v: string): number {
  const n = /^[0-9]+$/.test(v) ? Number(v) : NaN;
  if (!Number.isSafeInteger(n) || n > 65535) throw new InvalidArgumentError('must be a vhci port number (see `prism usbip ports`)');
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

async function attach(addr: string, busid: string): Promise<void> {
  const log = createLogger();
  const r = await attachDevice(addr, busid);
  log.info({ from: addr, busid, port: r.port, device: `${hex4(r.device.idVendor)}:${hex4(r.device.idProduct)}` }, 'usbip device attached');
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
    .action((addr: string, busid: string) => attach(addr, busid));
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
