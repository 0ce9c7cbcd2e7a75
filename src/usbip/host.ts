// `host:VID:PID` / `host:BUS-PORT` — a real USB device on this machine through libusb (the `usb`
// npm package). Being written; until then the spec is refused with a clear message.
import type { DeviceLocation } from './emulated/control.js';
import type { UsbDevice } from './device.js';

/** A `host:` spec that cannot make a device; the message names the spec and what to do. */
export class HostSpecError extends Error {
  override readonly name = 'HostSpecError';
  readonly code = 'ERR_USBIP_HOST_SPEC';
}

export function openHostDevice(spec: string, _location: DeviceLocation): Promise<UsbDevice> {
  return Promise.reject(new HostSpecError(`${spec}: host: (libusb) devices are not implemented yet (use emulated:storage:IMAGE or emulated:keyboard)`));
}
