// `kernel:BUSID` — a real USB device of this machine exported through the kernel's own usbip-host
// driver (the data path usbipd and Qubes' USB proxy use): prism reads the device record from sysfs,
// binds the device to usbip-host, and on each allowed import gives the kernel the connected socket
// through usbip_sockfd. The kernel's stub_rx/stub_tx threads then speak URBs on that socket; prism
// never sees one, and only watches usbip_status to learn when the importer has let go.
//
// The steps follow the usbip tools (tools/usb/usbip): the record as read_usb_device() and
// read_usb_interface() read it (libsrc/usbip_common.c), binding as `usbip bind` does it
// (src/usbip_bind.c: unbind the current driver, "add BUSID" to match_busid, BUSID to bind), the
// hand-off as usbipd's usbip_host_export_device() (the fd number into usbip_sockfd, then the
// reply), giving it back as `usbip unbind` (BUSID to usbip-host's unbind, "del BUSID", BUSID to
// rebind). Every sysfs path is relative to an injectable root so tests can use a directory.
//
// The device is bound when it is opened (`prism usbip serve` start), not at the first import:
// a missing module, a wrong bus ID or a non-root user shows at start instead of as a refused
// attach in some guest; the host's own drivers let go of the device once for the server's
// lifetime (as with `usbip bind` + usbipd), not each time an importer comes and goes; and
// match_busid keeps it with usbip-host if it re-enumerates (a reset after each detach).
//
// What the kernel holds (drivers/usb/usbip/stub_dev.c, usbip_sockfd_store): sockfd_lookup() on
// the writing process's fd table takes a reference to the socket's file, dropped by sockfd_put()
// in stub_shutdown_connection() after kernel_sock_shutdown(SHUT_RDWR) when the connection ends.
// So the server closes its own fd after the reply (never shutdown(): that would end the kernel's
// connection too), and usbip_status goes from 2 (used) back to 1 (available) once the importer
// detaches and the device has been reset.
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { DeviceLocation } from './emulated/control.js';
import { DeviceUnavailableError, UsbSpeed, type AdoptedConnection, type Urb, type UrbResult, type UsbDevice, type UsbDeviceInfo, type UsbInterfaceInfo } from './device.js';
import type { LogFn } from './server.js';

/** A `kernel:` spec that cannot make a device; the message names the spec and what to do. */
export class KernelSpecError extends Error {
  override readonly name = 'KernelSpecError';
  readonly code = 'ERR_USBIP_KERNEL_SPEC';
}

/** A sysfs read or write that failed; the message names the path and what to do. */
export class KernelDeviceError extends Error {
  override readonly name = 'KernelDeviceError';
  readonly code = 'ERR_USBIP_KERNEL';
  constructor(message: string, readonly path: string, options?: ErrorOptions) {
    super(message, options);
  }
}

/** usbip_device_status (drivers/usb/usbip/usbip_common.h) as usbip_status shows it. */
export const SdevStatus = { AVAILABLE: 1, USED: 2, ERROR: 3 } as const;

const DEVICES = 'bus/usb/devices';
const USBIP_HOST = 'bus/usb/drivers/usbip-host';

/** A bus ID of a device (not an interface, not a root hub): bus-port[.port]... as in /sys/bus/usb/devices. */
const BUSID = /^[1-9][0-9]{0,2}-[1-9][0-9]{0,2}(\.[1-9][0-9]{0,2}){0,6}$/;

/** The sysfs `speed` strings (drivers/usb/core/sysfs.c speed_show) → USB_SPEED_*. */
const SPEEDS: Readonly<Record<string, number>> = {
  '1.5': UsbSpeed.LOW,
  '12': UsbSpeed.FULL,
  '480': UsbSpeed.HIGH,
  '53.3-480': UsbSpeed.WIRELESS,
  '5000': UsbSpeed.SUPER,
  '10000': UsbSpeed.SUPER_PLUS,
  '20000': UsbSpeed.SUPER_PLUS, // SuperSpeed+ gen 2x2: usbip has no code of its own for it
};

/** What an errno from sysfs means for the person running prism. */
function hintFor(code: string | undefined, missing: string): string {
  switch (code) {
    case 'EACCES':
    case 'EPERM':
      return 'run prism as root (sysfs USB files belong to root)';
    case 'ENOENT':
      return missing;
    default:
      return 'the kernel refused it (see dmesg)';
  }
}

/**
 * The sysfs files prism touches, under `root` (default /sys). Reads and writes are synchronous:
 * sysfs attributes answer at once, and the hand-off must not give the event loop a turn between
 * writing usbip_sockfd and replying (server.ts).
 */
export class Sysfs {
  constructor(readonly root = '/sys') {}

  path(rel: string): string {
    return path.join(this.root, rel);
  }

  exists(rel: string): boolean {
    return fs.existsSync(this.path(rel));
  }

  /** An attribute's text without its trailing newline. */
  read(rel: string, missing = 'the file does not exist'): string {
    const p = this.path(rel);
    try {
      return fs.readFileSync(p, 'latin1').replace(/\n$/, '');
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      throw new KernelDeviceError(`cannot read ${p}: ${code ?? (e as Error).message}: ${hintFor(code, missing)}`, p, { cause: e });
    }
  }

  /**
   * Writes `text` in one write(2), as sysfs needs: opened write-only without O_CREAT (a missing
   * attribute is an error, never a new file) or O_TRUNC.
   */
  write(rel: string, text: string, missing = 'the file does not exist'): void {
    const p = this.path(rel);
    const data = Buffer.from(text, 'latin1');
    let fd: number | undefined;
    try {
      fd = fs.openSync(p, fs.constants.O_WRONLY);
      const n = fs.writeSync(fd, data, 0, data.length, null);
      if (n !== data.length) throw Object.assign(new Error(`short write (${n} of ${data.length} bytes)`), { code: 'EIO' });
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      throw new KernelDeviceError(`cannot write ${JSON.stringify(text)} to ${p}: ${code ?? (e as Error).message}: ${hintFor(code, missing)}`, p, { cause: e });
    } finally {
      if (fd !== undefined) fs.closeSync(fd);
    }
  }

  /** The name of the driver a device is bound to (its `driver` link), or null. */
  driverOf(busid: string): string | null {
    let target: string;
    try {
      target = fs.readlinkSync(this.path(`${DEVICES}/${busid}/driver`));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw new KernelDeviceError(`cannot read ${this.path(`${DEVICES}/${busid}/driver`)}: ${(e as Error).message}`, this.path(`${DEVICES}/${busid}/driver`), { cause: e });
    }
    const name = path.basename(target);
    // The name goes into paths we write to: only a plain driver name will do.
    if (!/^[\w.:+-]{1,64}$/.test(name)) throw new KernelDeviceError(`${this.path(`${DEVICES}/${busid}/driver`)} points to ${JSON.stringify(target)}, not a driver`, this.path(`${DEVICES}/${busid}/driver`));
    return name;
  }
}

// --- the device record ----------------------------------------------------------------------------

function attr(sysfs: Sysfs, dir: string, name: string, pattern: RegExp, parse: (s: string) => number, max: number): number {
  const text = sysfs.read(`${dir}/${name}`);
  if (!pattern.test(text)) throw new KernelDeviceError(`${sysfs.path(`${dir}/${name}`)}: unexpected value ${JSON.stringify(text)}`, sysfs.path(`${dir}/${name}`));
  const v = parse(text);
  if (!Number.isInteger(v) || v < 0 || v > max) throw new KernelDeviceError(`${sysfs.path(`${dir}/${name}`)}: ${v} is out of range 0..${max}`, sysfs.path(`${dir}/${name}`));
  return v;
}

const hex = (s: string): number => parseInt(s, 16);
const dec = (s: string): number => (s.trim() === '' ? 0 : parseInt(s, 10));
const HEX2 = /^[0-9a-fA-F]{2}$/;
const HEX4 = /^[0-9a-fA-F]{4}$/;
const DEC = /^[0-9]{1,5}$/;
/** bConfigurationValue and bNumInterfaces are empty while the device is unconfigured (usbip_common.c accepts that too). */
const DEC_OR_EMPTY = /^ *[0-9]{0,3}$/;

/** Checks a bus ID from a spec: a device's, the form /sys/bus/usb/devices uses. */
export function checkBusid(busid: string): void {
  if (!BUSID.test(busid)) {
    throw new KernelSpecError(`bus ID ${JSON.stringify(busid)} is not a USB device's (like 1-1 or 2-1.3, as listed in /sys/bus/usb/devices; not an interface like 1-1:1.0 nor a root hub like usb1)`);
  }
}

/**
 * The device record of `busid` as usbipd reads it from sysfs. The interfaces are those of the
 * active configuration (none while unconfigured, as after binding to usbip-host: the importer
 * chooses the configuration).
 */
export function readDeviceInfo(sysfs: Sysfs, busid: string): UsbDeviceInfo {
  checkBusid(busid);
  const dir = `${DEVICES}/${busid}`;
  if (!sysfs.exists(dir)) {
    throw new KernelSpecError(`no USB device ${busid}: ${sysfs.path(dir)} does not exist (ls ${sysfs.path(DEVICES)} lists this machine's devices; in a VM, is the controller passed through?)`);
  }
  const a = (name: string, pattern: RegExp, parse: (s: string) => number, max: number): number => attr(sysfs, dir, name, pattern, parse, max);
  const busnum = a('busnum', DEC, dec, 0xffff);
  if (String(busnum) !== busid.slice(0, busid.indexOf('-'))) throw new KernelDeviceError(`${sysfs.path(`${dir}/busnum`)} says bus ${busnum}, the bus ID says otherwise`, sysfs.path(`${dir}/busnum`));
  const speedText = sysfs.read(`${dir}/speed`);
  const speed = SPEEDS[speedText];
  if (speed === undefined) throw new KernelDeviceError(`${sysfs.path(`${dir}/speed`)}: unknown speed ${JSON.stringify(speedText)}`, sysfs.path(`${dir}/speed`));
  const bConfigurationValue = a('bConfigurationValue', DEC_OR_EMPTY, dec, 0xff);
  const numInterfaces = a('bNumInterfaces', DEC_OR_EMPTY, dec, 32);
  const interfaces: UsbInterfaceInfo[] = [];
  for (let i = 0; i < numInterfaces; i++) {
    const idir = `${DEVICES}/${busid}:${bConfigurationValue}.${i}`;
    const ia = (name: string): number => attr(sysfs, idir, name, HEX2, hex, 0xff);
    interfaces.push({ bInterfaceClass: ia('bInterfaceClass'), bInterfaceSubClass: ia('bInterfaceSubClass'), bInterfaceProtocol: ia('bInterfaceProtocol') });
  }
  return {
    busid,
    busnum,
    devnum: a('devnum', DEC, dec, 0xffff),
    speed,
    idVendor: a('idVendor', HEX4, hex, 0xffff),
    idProduct: a('idProduct', HEX4, hex, 0xffff),
    bcdDevice: a('bcdDevice', HEX4, hex, 0xffff),
    bDeviceClass: a('bDeviceClass', HEX2, hex, 0xff),
    bDeviceSubClass: a('bDeviceSubClass', HEX2, hex, 0xff),
    bDeviceProtocol: a('bDeviceProtocol', HEX2, hex, 0xff),
    bConfigurationValue,
    bNumConfigurations: a('bNumConfigurations', DEC, dec, 0xff),
    interfaces,
  };
}

// --- the device -----------------------------------------------------------------------------------

export interface KernelDeviceOptions {
  /** The sysfs mount (default /sys); tests give a directory. */
  sysfs?: string | Sysfs;
  /** How often usbip_status is read while an importer has the device (default 500 ms). */
  pollMs?: number;
  /** Where binding and giving back are told (the server logs imports and releases). */
  log?: LogFn;
}

const USB_CLASS_HUB = 0x09;

/** A device of this machine exported by usbip-host. */
export class KernelDevice implements UsbDevice {
  /** The record, read before binding (while configured, so importers and policy see its interfaces). */
  readonly info: UsbDeviceInfo;
  private readonly sysfs: Sysfs;
  private readonly pollMs: number;
  private readonly dir: string;
  /** We bound it (and so give it back on close); false if it was bound to usbip-host already. */
  private boundByUs = false;
  private closed = false;
  /** The import the kernel is serving, until usbip_status says it is over. */
  private watch: { timer: NodeJS.Timeout; settle: (why: string) => void } | null = null;

  /** Reads the record and binds the device to usbip-host. */
  static open(busid: string, opts: KernelDeviceOptions = {}): KernelDevice {
    const sysfs = typeof opts.sysfs === 'object' ? opts.sysfs : new Sysfs(opts.sysfs);
    const d = new KernelDevice(busid, sysfs, readDeviceInfo(sysfs, busid), opts.pollMs ?? 500, opts.log ?? (() => undefined));
    d.bind();
    return d;
  }

  private constructor(readonly busid: string, sysfs: Sysfs, info: UsbDeviceInfo, pollMs: number, private readonly log: LogFn) {
    this.sysfs = sysfs;
    this.info = info;
    this.pollMs = pollMs;
    this.dir = `${DEVICES}/${busid}`;
  }

  /** True if the device was bound to usbip-host by us (false: it already was). */
  get bound(): boolean {
    return this.boundByUs;
  }

  /** usbip_bind.c bind_device(): refuse hubs and vhci's own devices, unbind, add to match_busid, bind. */
  private bind(): void {
    const { sysfs, busid } = this;
    if (this.info.bDeviceClass === USB_CLASS_HUB) throw new KernelSpecError(`${busid} is a hub: usbip-host does not export hubs (export the devices behind it)`);
    // A device that vhci-hcd made from an import cannot be exported again (usbip bind: "bind loop").
    const real = fs.realpathSync(sysfs.path(this.dir));
    if (real.includes('/vhci_hcd')) throw new KernelSpecError(`${busid} is itself imported through vhci-hcd (${real}): exporting it again would loop`);
    const loadModule = 'load the module: modprobe usbip-host';
    if (!sysfs.exists(USBIP_HOST)) throw new KernelDeviceError(`${sysfs.path(USBIP_HOST)} does not exist: ${loadModule}`, sysfs.path(USBIP_HOST));
    const driver = sysfs.driverOf(busid);
    if (driver === 'usbip-host') {
      this.checkAvailable('at start');
      this.log('info', 'kernel usb device already bound to usbip-host: used as it is, left bound at exit', { busid });
      return; // exported already (an earlier prism or `usbip bind`): used as it is, left as it was
    }
    if (driver !== null) sysfs.write(`bus/usb/drivers/${driver}/unbind`, busid, `${busid} is no longer bound to ${driver}`);
    sysfs.write(`${USBIP_HOST}/match_busid`, `add ${busid}`, loadModule);
    try {
      sysfs.write(`${USBIP_HOST}/bind`, busid, loadModule);
    } catch (e) {
      // As usbip bind does: take it out of the table again, and let the host's drivers have it back.
      this.tryAll([() => sysfs.write(`${USBIP_HOST}/match_busid`, `del ${busid}`), () => sysfs.write('bus/usb/drivers_probe', busid)]);
      throw e;
    }
    this.boundByUs = true;
    this.checkAvailable('after binding');
    this.log('info', 'kernel usb device bound to usbip-host', { busid, takenFrom: driver });
  }

  private checkAvailable(when: string): void {
    const s = this.status();
    if (s !== SdevStatus.AVAILABLE) {
      throw new KernelDeviceError(`${this.sysfs.path(`${this.dir}/usbip_status`)} is ${s} ${when}, not 1 (available): ${s === SdevStatus.USED ? 'another usbipd or prism has exported it to an importer' : 'usbip-host has the device in an error state'}`, this.sysfs.path(`${this.dir}/usbip_status`));
    }
  }

  /** usbip_status: 1 available, 2 used by an importer, 3 error. */
  status(): number {
    const rel = `${this.dir}/usbip_status`;
    const text = this.sysfs.read(rel, `${this.busid} is not bound to usbip-host (unplugged, or unbound by someone else?)`);
    if (!/^[0-9]{1,3}$/.test(text)) throw new KernelDeviceError(`${this.sysfs.path(rel)}: unexpected value ${JSON.stringify(text)}`, this.sysfs.path(rel));
    return Number(text);
  }

  /**
   * usbipd's usbip_host_export_device(): checks the device is available and writes the socket's
   * fd number to usbip_sockfd, where the kernel takes its own reference (sockfd_lookup) and starts
   * stub_rx/stub_tx on it. The caller then replies and closes its fd.
   */
  adoptConnection(fd: number): AdoptedConnection {
    if (!Number.isInteger(fd) || fd < 0) throw new RangeError(`fd ${fd} is not a file descriptor`);
    if (this.closed) throw new DeviceUnavailableError(`${this.busid}: the server is stopping`, 'error');
    if (this.watch !== null) throw new DeviceUnavailableError(`${this.busid} is imported already`, 'busy');
    let status: number;
    let devnum: number;
    try {
      status = this.status();
      devnum = Number(this.sysfs.read(`${this.dir}/devnum`));
    } catch (e) {
      throw new DeviceUnavailableError((e as Error).message, 'error', { cause: e });
    }
    if (status === SdevStatus.USED) throw new DeviceUnavailableError(`${this.busid} is in use (usbip_status 2): another importer has it`, 'busy');
    if (status !== SdevStatus.AVAILABLE) throw new DeviceUnavailableError(`${this.busid}: usbip_status is ${status}, not 1 (available)`, 'error');
    // stub_rx refuses every CMD_SUBMIT whose devid is not the device's current one: a device that
    // re-enumerated (unplugged and back) no longer matches the record we export.
    if (devnum !== this.info.devnum) throw new DeviceUnavailableError(`${this.busid} re-enumerated (devnum ${this.info.devnum} → ${devnum}): restart prism usbip serve to export it again`, 'error');
    try {
      this.sysfs.write(`${this.dir}/usbip_sockfd`, `${fd}\n`, `${this.busid} is not bound to usbip-host`);
    } catch (e) {
      throw new DeviceUnavailableError((e as Error).message, 'error', { cause: e });
    }
    return { released: this.watchRelease() };
  }

  /** Resolves when usbip_status leaves 2 (used): the importer detached, or the device went away. */
  private watchRelease(): Promise<string> {
    return new Promise<string>((resolve) => {
      const settle = (why: string): void => {
        if (this.watch === null) return;
        clearInterval(this.watch.timer);
        this.watch = null;
        resolve(why);
      };
      const timer = setInterval(() => {
        let s: number;
        try {
          s = this.status();
        } catch (e) {
          settle(`the device went away: ${(e as Error).message}`);
          return;
        }
        if (s === SdevStatus.AVAILABLE) settle('the importer detached (usbip_status is 1 again)');
        else if (s !== SdevStatus.USED) settle(`usbip-host reports usbip_status ${s} (error)`);
      }, this.pollMs);
      this.watch = { timer, settle };
    });
  }

  submit(_urb: Urb, _signal: AbortSignal): Promise<UrbResult> {
    // The server hands the socket to the kernel instead (adoptConnection); nothing calls this.
    return Promise.reject(new Error(`${this.busid}: URBs of a kernel: device go through usbip-host, not prism`));
  }

  /**
   * usbip_unbind.c unbind_device(): BUSID to usbip-host's unbind (which also ends an import: the
   * kernel shuts its socket down), "del BUSID" from match_busid, BUSID to rebind so the host's
   * drivers probe it again (drivers_probe if rebind is refused). Only if we bound it.
   */
  close(): Promise<void> {
    if (this.closed) return Promise.resolve();
    this.closed = true;
    this.watch?.settle('the server stopped');
    if (!this.boundByUs) return Promise.resolve();
    const { sysfs, busid } = this;
    const errors: Error[] = [];
    const step = (fn: () => void): void => {
      try {
        fn();
      } catch (e) {
        errors.push(e as Error);
      }
    };
    step(() => {
      if (sysfs.driverOf(busid) === 'usbip-host') sysfs.write(`${USBIP_HOST}/unbind`, busid);
    });
    step(() => sysfs.write(`${USBIP_HOST}/match_busid`, `del ${busid}`));
    step(() => {
      try {
        sysfs.write(`${USBIP_HOST}/rebind`, busid);
      } catch {
        sysfs.write('bus/usb/drivers_probe', busid, `${busid} is gone (unplugged?)`);
      }
    });
    if (errors.length === 0) this.log('info', 'kernel usb device given back to the host\'s drivers', { busid, driver: sysfs.driverOf(busid) });
    if (errors.length > 0) {
      const first = errors[0] as KernelDeviceError;
      return Promise.reject(new KernelDeviceError(`giving ${busid} back to the host's drivers: ${errors.map((e) => e.message).join('; ')}`, first.path ?? sysfs.path(USBIP_HOST), { cause: first }));
    }
    return Promise.resolve();
  }

  private tryAll(steps: (() => void)[]): void {
    for (const s of steps) {
      try {
        s();
      } catch {
        // best effort while undoing a failed bind; the bind error is what gets reported
      }
    }
  }
}

/** Parses `kernel:BUSID`. */
export function parseKernelSpec(spec: string): string {
  const m = /^kernel:(.*)$/.exec(spec);
  if (!m) throw new KernelSpecError(`--device ${spec}: a kernel device is kernel:BUSID (like kernel:1-1)`);
  const busid = m[1] as string;
  try {
    checkBusid(busid);
  } catch (e) {
    throw new KernelSpecError(`--device ${spec}: ${(e as Error).message}`);
  }
  return busid;
}

/**
 * Opens `kernel:BUSID`. The device keeps its real bus ID, busnum and devnum (not `location`):
 * usbip-host checks every CMD_SUBMIT's devid against the real ones.
 */
export async function openKernelDevice(spec: string, _location: DeviceLocation, opts: KernelDeviceOptions = {}): Promise<UsbDevice> {
  await Promise.resolve(); // a spec error is a rejection, as for the other kinds
  const busid = parseKernelSpec(spec);
  try {
    return KernelDevice.open(busid, opts);
  } catch (e) {
    if (e instanceof KernelSpecError) throw new KernelSpecError(`--device ${spec}: ${e.message}`, { cause: e });
    throw e;
  }
}
