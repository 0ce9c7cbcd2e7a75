// `kernel:BUSID` — the kernel's own usbip-host data path (Qubes-style). Being written; until then
// the spec is refused with a clear message.
import type { DeviceLocation } from './emulated/control.js';
import type { UsbDevice } from './device.js';

/** A `kernel:` spec that cannot make a device; the message names the spec and what to do. */
export class KernelSpecError extends Error {
  override readonly name = 'KernelSpecError';
  readonly code = 'ERR_USBIP_KERNEL_SPEC';
}

export function openKernelDevice(spec: string, _location: DeviceLocation): Promise<UsbDevice> {
  return Promise.reject(new KernelSpecError(`${spec}: kernel: (usbip-host) devices are not implemented yet (use emulated:storage:IMAGE or emulated:keyboard)`));
}
