// `prism usbip serve`: export USB devices over USB/IP on any prism address, by policy; the
// importing side (`list`, `attach`, `detach`, `ports`) comes from usbip-import.ts.
//
// A --device SPEC is made into a device by the registry below, keyed by the text before the
// first ':'. Devices get bus IDs 1-1, 1-2, ... in the order given (busnum 1, devnum 2, 3, ...).
import { Command, InvalidArgumentError } from 'commander';
import { listen, type Listener } from '../transport/index.js';
import type { UsbDevice } from '../usbip/device.js';
import { EmulatedSpecError, createEmulated } from '../usbip/emulated/index.js';
import { PolicyError, UsbipPolicy, formatRule, parseRule, vidPidOf, type UsbipRule } from '../usbip/policy.js';
import { UsbipServer, type LogFn } from '../usbip/server.js';
import { UsageError } from './errors.js';
import { createLogger } from './log.js';
import { addImporterCommands } from './usbip-import.js';

/** Where a device sits on prism's virtual bus: what its record says to importers. */
export interface DeviceLocation {
  busid: string;
  busnum: number;
  devnum: number;
}

type DeviceFactory = (spec: string, location: DeviceLocation, log?: LogFn) => Promise<UsbDevice>;

/** Loads a device module only when a spec needs it (host: loads the libusb addon) and turns its spec errors into usage errors. */
function lazy<E extends Error>(load: () => Promise<{ open: (spec: string, location: DeviceLocation, opts: { log?: LogFn }) => Promise<UsbDevice>; SpecError: new (...a: never[]) => E }>): DeviceFactory {
  return async (spec, location, log) => {
    const { open, SpecError } = await load();
    try {
      return await open(spec, location, log === undefined ? {} : { log });
    } catch (e) {
      if (e instanceof SpecError) throw new UsageError(e.message);
      throw e;
    }
  };
}

/** kind → factory. */
export const DEVICE_KINDS: Readonly<Record<string, DeviceFactory>> = {
  /** emulated:storage:IMAGE[:ro][:hs|:ss], emulated:keyboard[:TEXT] (src/usbip/emulated). */
  emulated: async (spec, location) => {
    try {
      return await createEmulated(spec, location);
    } catch (e) {
      if (e instanceof EmulatedSpecError && e.reason !== 'image') throw new UsageError(e.message);
      throw e;
    }
  },
  /** host:VID:PID or host:BUS-PORT: a real device through libusb (src/usbip/host.ts). */
  host: lazy(async () => {
    const m = await import('../usbip/host.js');
    return { open: m.openHostDevice, SpecError: m.HostSpecError };
  }),
  /** kernel:BUSID: the kernel's usbip-host data path (src/usbip/kernel.ts). */
  kernel: lazy(async () => {
    const m = await import('../usbip/kernel.js');
    return { open: m.openKernelDevice, SpecError: m.KernelSpecError };
  }),
};

/** Makes the devices of the --device specs, in order, with bus IDs 1-1, 1-2, ... */
export async function createDevices(specs: readonly string[], log?: LogFn): Promise<UsbDevice[]> {
  if (specs.length > 254) throw new UsageError(`${specs.length} devices; at most 254`);
  const out: UsbDevice[] = [];
  try {
    for (const [i, spec] of specs.entries()) {
      const kind = spec.slice(0, spec.indexOf(':') >>> 0);
      const factory = Object.hasOwn(DEVICE_KINDS, kind) ? DEVICE_KINDS[kind] : undefined;
      if (factory === undefined) throw new UsageError(`--device ${spec}: unknown kind "${kind}" (known: ${Object.keys(DEVICE_KINDS).map((k) => `${k}:`).join(', ')})`);
      out.push(await factory(spec, { busid: `1-${i + 1}`, busnum: 1, devnum: i + 2 }, log));
    }
  } catch (e) {
    // A kernel: device made before a later spec failed goes back to its driver.
    await closeDevices(out, () => undefined);
    throw e;
  }
  return out;
}

/** Gives every device back (kernel: devices return to their host driver); failures are logged. */
async function closeDevices(devices: readonly UsbDevice[], warn: (busid: string, e: Error) => void): Promise<void> {
  const results = await Promise.allSettled(devices.map(async (d) => d.close?.()));
  results.forEach((r, i) => {
    if (r.status === 'rejected') warn(devices[i]?.info.busid ?? '?', r.reason as Error);
  });
}

function collect(v: string, previous: string[]): string[] {
  return [...previous, v];
}

function ruleArg(v: string, previous: UsbipRule[]): UsbipRule[] {
  try {
    return [...previous, parseRule(v)];
  } catch (e) {
    if (e instanceof PolicyError) throw new InvalidArgumentError(e.message);
    throw e;
  }
}

function intArg(min: number, max: number): (v: string) => number {
  return (v: string): number => {
    const n = /^[0-9]+$/.test(v) ? Number(v) : NaN;
    if (!Number.isSafeInteger(n) || n < min || n > max) throw new InvalidArgumentError(`must be an integer from ${min} to ${max}`);
    return n;
  };
}

interface ServeCli {
  listen: string[];
  device: string[];
  allow: UsbipRule[];
  maxConnections: number;
  maxConnectionsPerPeer: number;
  maxInflight: number;
}

async function runServe(opts: ServeCli): Promise<void> {
  const log = createLogger();
  if (opts.listen.length === 0) throw new UsageError('give at least one --listen ADDR');
  if (opts.device.length === 0) throw new UsageError('give at least one --device SPEC');
  const logFn: LogFn = (level, msg, fields) => log[level](fields ?? {}, msg);
  const devices = await createDevices(opts.device, logFn);
  const closeAll = (): Promise<void> => closeDevices(devices, (busid, e) => log.warn({ busid, error: e.message }, 'usbip device could not be given back'));
  let server: UsbipServer;
  try {
    server = new UsbipServer(devices, {
      policy: new UsbipPolicy(opts.allow),
      maxConnections: opts.maxConnections,
      maxConnectionsPerPeer: opts.maxConnectionsPerPeer,
      maxInflight: opts.maxInflight,
      log: logFn,
    });
  } catch (e) {
    await closeAll();
    throw e;
  }
  const listeners: Listener[] = [];
  try {
    for (const a of opts.listen) listeners.push(await listen(a));
  } catch (e) {
    await Promise.all(listeners.map((l) => l.close()));
    await closeAll();
    throw e;
  }
  for (const l of listeners) {
    l.on('error', (e) => log.warn({ listen: l.address, error: e.message }, 'usbip listener error'));
    server.serve(l);
  }
  if (opts.allow.length === 0) log.warn({}, 'no --allow rule: every import will be refused (default deny)');
  log.info(
    {
      listen: listeners.map((l) => l.address),
      devices: devices.map((d, i) => ({ busid: d.info.busid, vidPid: vidPidOf(d.info), speed: d.info.speed, spec: opts.device[i] })),
      allow: opts.allow.map(formatRule),
    },
    'usbip server ready',
  );
  await new Promise<void>((resolve) => {
    const stop = (signal: NodeJS.Signals): void => {
      process.off('SIGINT', stop);
      process.off('SIGTERM', stop);
      log.info({ signal }, 'usbip server stopping');
      void server.close().then(closeAll).then(resolve);
    };
    process.on('SIGINT', stop);
    process.on('SIGTERM', stop);
  });
  log.info({}, 'usbip server stopped');
}

export function usbipCommand(): Command {
  const cmd = new Command('usbip').description('USB/IP: export USB devices (serve), import them into the local vhci-hcd (list, attach, detach, ports)');
  cmd
    .command('serve')
    .description('export devices over USB/IP on every --listen address, to the importers --allow lets in')
    .option('--listen <addr>', 'an address to serve (repeatable): vsock:any:3240, hvsock:UDS:3240, unix:PATH, tcp:HOST:PORT, fd:N', collect, [])
    .option('--device <spec>', 'a device to export (repeatable): emulated:storage:IMAGE[:ro][:hs|:ss], emulated:keyboard[:TEXT], host:VID:PID, host:BUS-PORT, kernel:BUSID', collect, [])
    .option('--allow <rule>', 'let importers in (repeatable; default deny): KEY=VALUE,... with peer, busid, vidpid, class; or "any"', ruleArg, [])
    .option('--max-connections <n>', 'most connections at once', intArg(1, 65536), 64)
    .option('--max-connections-per-peer <n>', 'most connections at once from one peer (address without port)', intArg(1, 65536), 16)
    .option('--max-inflight <n>', 'most URBs running per connection', intArg(1, 65536), 64)
    .addHelpText(
      'after',
      `
Devices get bus IDs 1-1, 1-2, ... in the order of --device (what \`usbip list -r\` and
\`prism usbip list\` show, and what an importer names to attach).
  emulated:storage:IMAGE[:ro][:hs|:ss]
                                USB mass storage (bulk-only, SCSI) on an image file; SuperSpeed
                                by default (1 MiB per SCSI command), :hs for high speed
  emulated:keyboard[:TEXT]      HID boot keyboard that types TEXT
  host:VID:PID | host:BUS-PORT  a device of this machine through libusb, taken from its drivers while imported
  kernel:BUSID                  a device of this machine (bus ID as in /sys/bus/usb/devices, e.g. 2-1.3)
                                through the kernel's usbip-host, as usbipd does: bound to usbip-host at
                                start and given back to its driver at exit; it keeps its real bus ID
                                (needs root and \`modprobe usbip-host\`)

Rules (an import is allowed if every condition of some rule holds):
  peer=vsock:4          the VM with CID 4 (vsock peers are named vsock:CID:PORT; a rule matches up to a colon)
  peer=tcp:127.0.0.1    any port from that address; unix: and hvsock: peers are the socket's own address
  busid=1-1  vidpid=1d6b:0104 (or 1d6b:*)  class=8 (the device's class or any interface's)
e.g. --allow peer=vsock:4,busid=1-1 --allow vidpid=1d6b:*,class=3
A refused import is answered with status 1 and logged with the rule that would allow it; an
importer only lists the devices it may import.

Several imports may follow one another on one connection (a guest bridging a virtio-serial port
never closes it): an OP_REQ_* after URB traffic ends the previous import.`,
    )
    .action((opts: ServeCli) => runServe(opts));
  addImporterCommands(cmd);
  return cmd;
}
