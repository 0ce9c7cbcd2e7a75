// `host:VID:PID` / `host:BUS-PORT` — a real USB device on this machine, through libusb (the `usb`
// npm package, loaded only when such a spec is given). This file finds and opens the device and
// makes its record; host/device.ts carries the URBs, host/rules.ts holds the pure parts.
//
// The record importers see keeps the location prism gives every device (busid 1-N on prism's
// virtual bus 1, devnum N+1), not the device's place on this machine: bus IDs then stay unique
// and stable across the devices of one server whatever their kind, an importer's `attach 1-2`
// keeps naming the same --device after the device is replugged into another port, and a guest
// learns nothing of the host's USB topology. The speed, descriptors and interfaces are the
// device's own; the host location is logged.
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import type { UsbDevice, UsbDeviceInfo } from './device.js';
import type { DeviceLocation } from './emulated/control.js';
import { HostUsbDevice, type Libusb, type LibusbDevice } from './host/device.js';
import { HostSpecError, LibusbError, hex4, locationName, parseHostSpec, speedOfDescriptor, speedOfSysfs, type HostSpec } from './host/rules.js';
import type { LogFn } from './server.js';

export { HostSpecError, parseHostSpec } from './host/rules.js';
export { HostUsbDevice } from './host/device.js';
export type { Libusb, LibusbDevice, LibusbTransfer } from './host/device.js';

export interface HostDeviceOptions {
  /** The libusb binding; default the `usb` package. */
  usb?: Libusb;
  /** Where sysfs is mounted (the device's speed is read there); default /sys. */
  sysfs?: string;
  /** Default: JSON lines on stderr like the rest of prism. */
  log?: LogFn;
}

/** The `usb` package (a CommonJS module with a native addon), as the slice host/device.ts uses. */
export function loadLibusb(): Libusb {
  const require = createRequire(import.meta.url);
  const usb = (require('usb') as typeof import('usb')).usb;
  return {
    getDeviceList: () => usb.getDeviceList(),
    transfer: (device, endpoint, type, timeoutMs, done) => new usb.Transfer(device as import('usb').Device, endpoint, type, timeoutMs, done),
  };
}

function describe(d: LibusbDevice): string {
  return `${locationName(d.busNumber, d.portNumbers ?? [])} ${hex4(d.deviceDescriptor.idVendor)}:${hex4(d.deviceDescriptor.idProduct)}`;
}

function matches(spec: HostSpec, d: LibusbDevice): boolean {
  if (spec.kind === 'vid-pid') return d.deviceDescriptor.idVendor === spec.idVendor && d.deviceDescriptor.idProduct === spec.idProduct;
  const ports = d.portNumbers ?? [];
  return d.busNumber === spec.bus && ports.length === spec.ports.length && ports.every((p, i) => p === spec.ports[i]);
}

/** Finds the one device `spec` names among `devices`; the errors list what is there. */
export function findHostDevice(spec: string, devices: readonly LibusbDevice[]): LibusbDevice {
  const parsed = parseHostSpec(spec);
  const found = devices.filter((d) => matches(parsed, d));
  const present = devices.filter((d) => (d.portNumbers ?? []).length > 0).map(describe);
  if (found.length === 0) {
    const what = present.length === 0 ? 'no USB devices are present (root hubs aside)' : `present: ${present.join(', ')}`;
    throw new HostSpecError(`--device ${spec}: no such USB device on this machine; ${what}. Use host:VID:PID or host:BUS-PORT of one of them (lsusb -t shows BUS-PORT).`, 'not-found');
  }
  if (found.length > 1) {
    const names = found.map((d) => locationName(d.busNumber, d.portNumbers ?? []));
    throw new HostSpecError(`--device ${spec}: ${found.length} devices match (${found.map(describe).join(', ')}); name one by its place: ${names.map((n) => `host:${n}`).join(' or ')}`, 'ambiguous');
  }
  return found[0] as LibusbDevice;
}

/** The device's USB_SPEED_*: sysfs says, else a guess from its descriptor. */
function speedOf(d: LibusbDevice, sysfs: string, log: LogFn): number {
  const name = locationName(d.busNumber, d.portNumbers ?? []);
  try {
    const s = speedOfSysfs(readFileSync(`${sysfs}/bus/usb/devices/${name}/speed`, 'utf8'));
    if (s !== null) return s;
  } catch {
    // Not Linux sysfs, or not mounted: fall through.
  }
  const guess = speedOfDescriptor(d.deviceDescriptor.bcdUSB, d.deviceDescriptor.bMaxPacketSize0);
  log('warn', 'host usb device speed not found in sysfs; guessed from its descriptor', { device: name, speed: guess });
  return guess;
}

export function hostDeviceInfo(d: LibusbDevice, location: DeviceLocation, speed: number): UsbDeviceInfo {
  const dd = d.deviceDescriptor;
  const config = d.configDescriptor;
  return {
    busid: location.busid,
    busnum: location.busnum,
    devnum: location.devnum,
    speed,
    idVendor: dd.idVendor,
    idProduct: dd.idProduct,
    bcdDevice: dd.bcdDevice,
    bDeviceClass: dd.bDeviceClass,
    bDeviceSubClass: dd.bDeviceSubClass,
    bDeviceProtocol: dd.bDeviceProtocol,
    bConfigurationValue: config?.bConfigurationValue ?? 0,
    bNumConfigurations: dd.bNumConfigurations,
    // Each interface as its alternate setting 0 describes it (usbip-host's record does the same
    // from sysfs before anyone selected another).
    interfaces: (config?.interfaces ?? []).map((alts) => alts.find((a) => a.bAlternateSetting === 0) ?? alts[0]).filter((a) => a !== undefined).map((a) => ({
      bInterfaceClass: a.bInterfaceClass,
      bInterfaceSubClass: a.bInterfaceSubClass,
      bInterfaceProtocol: a.bInterfaceProtocol,
    })),
  };
}

/** Finds, opens and describes the device `spec` names; HostSpecError says why it cannot. */
export function openHostDevice(spec: string, location: DeviceLocation, opts: HostDeviceOptions = {}): Promise<UsbDevice> {
  // A throw in the executor rejects the promise.
  return new Promise((resolve) => resolve(openNow(spec, location, opts)));
}

function openNow(spec: string, location: DeviceLocation, opts: HostDeviceOptions): UsbDevice {
  parseHostSpec(spec);
  const log: LogFn = opts.log ?? (() => undefined);
  let lib: Libusb;
  let devices: LibusbDevice[];
  try {
    lib = opts.usb ?? loadLibusb();
    devices = lib.getDeviceList();
  } catch (e) {
    throw new HostSpecError(`--device ${spec}: libusb cannot list this machine's USB devices (${(e as Error).message}); is usbfs (/dev/bus/usb) there?`, 'open', { cause: e });
  }
  const d = findHostDevice(spec, devices);
  const name = locationName(d.busNumber, d.portNumbers ?? []);
  const node = `/dev/bus/usb/${String(d.busNumber).padStart(3, '0')}/${String(d.deviceAddress).padStart(3, '0')}`;
  try {
    d.open(false);
  } catch (e) {
    const errno = (e as { errno?: number }).errno;
    if (errno === LibusbError.ACCESS) {
      const { idVendor, idProduct } = d.deviceDescriptor;
      throw new HostSpecError(
        `--device ${spec}: no permission to open ${describe(d)} (${node}); run prism as root, or give its user the device with a udev rule such as ` +
          `SUBSYSTEM=="usb", ATTR{idVendor}=="${hex4(idVendor)}", ATTR{idProduct}=="${hex4(idProduct)}", MODE="0660", GROUP="prism"`,
        'access',
        { cause: e },
      );
    }
    throw new HostSpecError(`--device ${spec}: libusb cannot open ${describe(d)} (${node}): ${(e as Error).message}`, 'open', { cause: e });
  }
  // Opened to learn now whether we may; the device is held again only while imported (host/device.ts).
  d.close();
  const info = hostDeviceInfo(d, location, speedOf(d, opts.sysfs ?? '/sys', log));
  log('info', 'host usb device opened', { spec, device: name, node, busid: info.busid, speed: info.speed, interfaces: info.interfaces.length });
  return new HostUsbDevice(lib, d, info, name, log);
}
