// The pure parts of the libusb device (host.ts): the `host:` spec grammar, libusb's transfer
// statuses and error codes as the Linux errnos a URB completes with, the sysfs speed as USB_SPEED_*,
// and which control requests the exporter must carry out itself instead of passing them through.
// No I/O; unit-tested in test/usbip-host.test.ts.
import { decodeSetup } from '../../codecs/usbip/index.js';
import { UrbErrno, UsbSpeed } from '../device.js';
import { Feature, Recipient, StandardRequest } from '../emulated/ch9.js';

/** A `host:` spec that cannot make a device; the message names the spec, what was found and what to do. */
export class HostSpecError extends Error {
  override readonly name = 'HostSpecError';
  readonly code = 'ERR_USBIP_HOST_SPEC';
  constructor(
    message: string,
    /** syntax: the spec is malformed; not-found / ambiguous: no device or several match; access: no
     * permission to open it; open: libusb could not open or read it. */
    readonly reason: 'syntax' | 'not-found' | 'ambiguous' | 'access' | 'open',
    options?: ErrorOptions,
  ) {
    super(message, options);
  }
}

export type HostSpec =
  | { kind: 'vid-pid'; idVendor: number; idProduct: number }
  /** The kernel's BUS-PORT[.PORT...] name (/sys/bus/usb/devices), libusb's bus number and port numbers. */
  | { kind: 'location'; bus: number; ports: number[] };

/** USB allows 7 tiers below the root; libusb_get_port_numbers reports at most 7 ports. */
const MAX_PORT_DEPTH = 7;

/** Parses `host:VID:PID` (1-4 hex digits each) or `host:BUS-PORT[.PORT...]` (decimal, 1-255 each). */
export function parseHostSpec(spec: string): HostSpec {
  const usage = 'give host:VID:PID (hex, e.g. host:1d6b:0104) or host:BUS-PORT (e.g. host:1-1, host:2-1.3, as in /sys/bus/usb/devices)';
  const vp = /^host:([0-9a-fA-F]{1,4}):([0-9a-fA-F]{1,4})$/.exec(spec);
  if (vp !== null) return { kind: 'vid-pid', idVendor: parseInt(vp[1] as string, 16), idProduct: parseInt(vp[2] as string, 16) };
  const loc = /^host:([0-9]{1,3})-([0-9]{1,3}(?:\.[0-9]{1,3})*)$/.exec(spec);
  if (loc !== null) {
    const bus = Number(loc[1]);
    const ports = (loc[2] as string).split('.').map(Number);
    if (bus < 1 || bus > 255 || ports.some((p) => p < 1 || p > 255)) throw new HostSpecError(`--device ${spec}: bus and port numbers are 1-255; ${usage}`, 'syntax');
    if (ports.length > MAX_PORT_DEPTH) throw new HostSpecError(`--device ${spec}: ${ports.length} ports deep; USB has at most ${MAX_PORT_DEPTH} tiers of hubs`, 'syntax');
    return { kind: 'location', bus, ports };
  }
  throw new HostSpecError(`--device ${spec}: not a host: spec; ${usage}`, 'syntax');
}

/** A device's kernel name: BUS-PORT[.PORT...], or usbBUS for a root hub (no ports). */
export function locationName(bus: number, ports: readonly number[]): string {
  return ports.length === 0 ? `usb${bus}` : `${bus}-${ports.join('.')}`;
}

export function hex4(n: number): string {
  return n.toString(16).padStart(4, '0');
}

/** libusb_transfer_status (libusb.h), the `errno` node-usb puts on a transfer callback's error. */
export const LibusbTransferStatus = { COMPLETED: 0, ERROR: 1, TIMED_OUT: 2, CANCELLED: 3, STALL: 4, NO_DEVICE: 5, OVERFLOW: 6 } as const;

/** libusb_error (libusb.h), the `errno` node-usb puts on what a synchronous call throws. */
export const LibusbError = {
  IO: -1, INVALID_PARAM: -2, ACCESS: -3, NO_DEVICE: -4, NOT_FOUND: -5, BUSY: -6, TIMEOUT: -7, OVERFLOW: -8, PIPE: -9, INTERRUPTED: -10, NO_MEM: -11, NOT_SUPPORTED: -12, OTHER: -99,
} as const;

/**
 * The URB status (0 or a negative errno) for a libusb transfer status, as a Linux host controller
 * would have completed the URB (Documentation/driver-api/usb/error-codes.rst):
 * STALL → -EPIPE, TIMED_OUT → -ETIMEDOUT, OVERFLOW → -EOVERFLOW (babble), CANCELLED → -ECONNRESET
 * (an unlinked URB), NO_DEVICE → -ESHUTDOWN (a URB in flight when its device went away), ERROR
 * (libusb's bucket for usbfs' EPROTO, EILSEQ, ETIME, ECOMM, ENOSR) → -EPROTO.
 */
export function urbStatusOfTransfer(status: number): number {
  switch (status) {
    case LibusbTransferStatus.COMPLETED: return 0;
    case LibusbTransferStatus.STALL: return -UrbErrno.EPIPE;
    case LibusbTransferStatus.TIMED_OUT: return -UrbErrno.ETIMEDOUT;
    case LibusbTransferStatus.OVERFLOW: return -UrbErrno.EOVERFLOW;
    case LibusbTransferStatus.CANCELLED: return -UrbErrno.ECONNRESET;
    case LibusbTransferStatus.NO_DEVICE: return -UrbErrno.ESHUTDOWN;
    default: return -UrbErrno.EPROTO;
  }
}

const EBUSY = 16;
const ENOMEM = 12;
const EINTR = 4;
const EACCES = 13;

/**
 * The URB status for a libusb_error thrown while submitting (the URB never reached the device) or
 * returned by a request the exporter carries out itself (set configuration, set interface, clear
 * halt): NO_DEVICE → -ENODEV (what usb_submit_urb says for a device that is gone), NOT_FOUND →
 * -ENOENT (no such endpoint or interface in the current configuration), PIPE → -EPIPE, BUSY →
 * -EBUSY, and so on; anything else → -EIO.
 */
export function urbStatusOfLibusbError(errno: number): number {
  switch (errno) {
    case LibusbError.NO_DEVICE: return -UrbErrno.ENODEV;
    case LibusbError.NOT_FOUND: return -UrbErrno.ENOENT;
    case LibusbError.PIPE: return -UrbErrno.EPIPE;
    case LibusbError.BUSY: return -EBUSY;
    case LibusbError.TIMEOUT: return -UrbErrno.ETIMEDOUT;
    case LibusbError.OVERFLOW: return -UrbErrno.EOVERFLOW;
    case LibusbError.INVALID_PARAM: return -UrbErrno.EINVAL;
    case LibusbError.NOT_SUPPORTED: return -UrbErrno.EINVAL;
    case LibusbError.NO_MEM: return -ENOMEM;
    case LibusbError.INTERRUPTED: return -EINTR;
    case LibusbError.ACCESS: return -EACCES;
    default: return -UrbErrno.EIO;
  }
}

/**
 * USB_SPEED_* for the kernel's sysfs `speed` attribute (Mb/s: 1.5, 12, 480, 5000, 10000, 20000;
 * "53.3-480" for wireless USB), as usbip's own host tool reads it (read_attr_speed); null if unknown.
 */
export function speedOfSysfs(text: string): number | null {
  switch (text.trim()) {
    case '1.5': return UsbSpeed.LOW;
    case '12': return UsbSpeed.FULL;
    case '480': return UsbSpeed.HIGH;
    case '53.3-480': return UsbSpeed.WIRELESS;
    case '5000': return UsbSpeed.SUPER;
    case '10000':
    case '20000': return UsbSpeed.SUPER_PLUS;
    default: return null;
  }
}

/**
 * A guess at USB_SPEED_* from the device descriptor, for when sysfs does not say: bcdUSB 3.x means
 * SuperSpeed (a USB 3 device on a USB 2 port would in truth run at high speed), 2.x with a
 * 64-byte endpoint 0 high speed, anything else full speed (low-speed devices have an 8-byte ep0
 * but so have some full-speed ones).
 */
export function speedOfDescriptor(bcdUSB: number, bMaxPacketSize0: number): number {
  if (bcdUSB >= 0x0300) return UsbSpeed.SUPER;
  if (bcdUSB >= 0x0200 && bMaxPacketSize0 === 64) return UsbSpeed.HIGH;
  return UsbSpeed.FULL;
}

/**
 * What the exporter does with a control request on endpoint 0. The standard requests that change
 * state the exporting host's USB core keeps — the configuration, an interface's alternate setting,
 * an endpoint's halt (and data toggle) — are carried out through libusb the way usbip-host's
 * stub_rx.c carries them out through the USB core (tweak_special_requests), so that the host's
 * controller and the device agree; they are not sent raw. SET_ADDRESS belongs to the exporting
 * host's controller (vhci-hcd never forwards it) and a port reset is the importer's own business
 * (vhci-hcd resets its port locally): both are refused.
 */
export type ControlAction =
  | { kind: 'set-configuration'; value: number }
  | { kind: 'set-interface'; interfaceNumber: number; altSetting: number }
  | { kind: 'clear-halt'; endpoint: number }
  | { kind: 'refuse'; why: string }
  | { kind: 'pass' };

/** SET_FEATURE(PORT_RESET) to a hub port (USB 2.0 table 11-15 and 11-17): stub_rx.c's is_reset_device_cmd. */
const USB_RT_PORT = 0x23;
const USB_PORT_FEAT_RESET = 4;

/** Classifies an 8-byte setup packet (stub_rx.c's is_*_cmd tests, which compare bmRequestType exactly). */
export function classifyControl(setup: Uint8Array): ControlAction {
  const s = decodeSetup(setup);
  const std = (recipient: number): boolean => s.bmRequestType === recipient; // host-to-device, standard
  if (s.bRequest === StandardRequest.CLEAR_FEATURE && std(Recipient.ENDPOINT) && s.wValue === Feature.ENDPOINT_HALT) {
    return { kind: 'clear-halt', endpoint: s.wIndex & 0x8f };
  }
  if (s.bRequest === StandardRequest.SET_INTERFACE && std(Recipient.INTERFACE)) {
    return { kind: 'set-interface', interfaceNumber: s.wIndex & 0xff, altSetting: s.wValue & 0xff };
  }
  if (s.bRequest === StandardRequest.SET_CONFIGURATION && std(Recipient.DEVICE)) {
    return { kind: 'set-configuration', value: s.wValue & 0xff };
  }
  if (s.bRequest === StandardRequest.SET_ADDRESS && std(Recipient.DEVICE)) {
    return { kind: 'refuse', why: 'SET_ADDRESS belongs to the exporting host' };
  }
  if (s.bRequest === StandardRequest.SET_FEATURE && s.bmRequestType === USB_RT_PORT && s.wValue === USB_PORT_FEAT_RESET) {
    return { kind: 'refuse', why: 'a port reset is not forwarded (vhci-hcd resets its port itself)' };
  }
  return { kind: 'pass' };
}
