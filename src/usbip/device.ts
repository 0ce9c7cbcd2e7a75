// The one interface every exported USB device implements, whatever its source (emulated, libusb,
// the kernel's usbip-host): the USB/IP server (server.ts) hands it URBs and sends back what it
// answers. Nothing here knows the wire format; the server does the translation and the checks:
// - it only calls submit() on an imported device, with `endpoint` 0..15, `setup` 8 bytes, `data`
//   exactly transferBufferLength bytes for OUT (empty for IN), ISO packet descriptors that lie in
//   order inside the transfer buffer, and for endpoint 0 a setup packet whose wLength equals
//   transferBufferLength (usb_submit_urb's rule);
// - it checks what comes back: IN data longer than transferBufferLength is cut (status -EOVERFLOW),
//   OUT `actualLength` defaults to transferBufferLength when status is 0 (else 0), ISO results must
//   have one descriptor per requested packet with actualLength sums matching (ISO IN data is packed:
//   each packet's actualLength bytes one after the other, as usbip sends it); a device that throws
//   or breaks these rules costs that URB an error status (-EIO, or -ECONNRESET once unlinked),
//   never the session.
// A device sees one importer at a time: attached() before the first submit() of a session,
// detached() after its last (URBs still running then have had their signal aborted).
//
// A device whose data path is the kernel's own (kernel.ts: usbip-host) has adoptConnection()
// instead: on an allowed import the server hands it the connection's socket fd, and from then on
// neither reads nor writes that socket except for the OP_REP_IMPORT (the kernel's stub_rx/stub_tx
// threads speak URBs on it); submit() is never called.

export interface UsbInterfaceInfo { bInterfaceClass: number; bInterfaceSubClass: number; bInterfaceProtocol: number }
export interface UsbDeviceInfo {
  busid: string; busnum: number; devnum: number; speed: number; // USB_SPEED_* as in usbip (1 low, 2 full, 3 high, 5 super)
  idVendor: number; idProduct: number; bcdDevice: number;
  bDeviceClass: number; bDeviceSubClass: number; bDeviceProtocol: number;
  bConfigurationValue: number; bNumConfigurations: number;
  interfaces: UsbInterfaceInfo[];
}
export interface IsoPacket { offset: number; length: number; actualLength: number; status: number }
export interface Urb {
  seqnum: number; direction: 'in' | 'out'; endpoint: number; // 0..15, without the direction bit
  transferFlags: number; transferBufferLength: number;
  setup: Buffer;            // 8 bytes (meaningful on endpoint 0)
  data: Buffer;             // OUT data (length transferBufferLength); empty for IN
  startFrame: number; numberOfPackets: number; interval: number; isoPackets: IsoPacket[];
}
export interface UrbResult { status: number; /* 0 or a negative Linux errno, e.g. -32 EPIPE stall */ data: Buffer; /* IN data */ actualLength?: number; /* OUT: bytes taken; default data.length for IN */ errorCount?: number; isoPackets?: IsoPacket[] }
export interface UsbDevice {
  readonly info: UsbDeviceInfo;
  /** Handles one URB; the signal aborts on CMD_UNLINK or when the session ends. */
  submit(urb: Urb, signal: AbortSignal): Promise<UrbResult>;
  /** An importer attached (OP_REQ_IMPORT succeeded) / detached or vanished. */
  attached?(): void;
  detached?(): void;
  /**
   * Takes the connected socket `fd` of an allowed import (the kernel takes its own reference; the
   * caller closes its fd after the reply). Throws DeviceUnavailableError when the device cannot be
   * imported now. The result's `released` resolves, with why, once the device is free again.
   */
  adoptConnection?(fd: number): AdoptedConnection;
  /** Gives the device back when the server stops (a kernel: device returns to its host driver). */
  close?(): Promise<void>;
  /**
   * Resolves, with why, once the device is gone for good (a host: device unplugged): the server
   * ends its import by closing the connection, as usbip-host does when its device disconnects
   * (vhci-hcd then frees the port by itself), and lists and imports it no more. Never settles for
   * a device that cannot vanish.
   */
  readonly vanished?: Promise<string>;
}

export interface AdoptedConnection {
  /** Resolves, with why, when the importer has let go (it detached, or the device went away). */
  readonly released: Promise<string>;
}

/** adoptConnection() refused: `busy` (someone has it: OP_REP_IMPORT status 2) or `error` (status 3). */
export class DeviceUnavailableError extends Error {
  override readonly name = 'DeviceUnavailableError';
  readonly code = 'ERR_USBIP_DEVICE_UNAVAILABLE';
  constructor(message: string, readonly reason: 'busy' | 'error', options?: ErrorOptions) {
    super(message, options);
  }
}

/** USB_SPEED_* (include/uapi/linux/usb/ch9.h), as usbip carries them. */
export const UsbSpeed = {
  UNKNOWN: 0,
  LOW: 1,
  FULL: 2,
  HIGH: 3,
  WIRELESS: 4,
  SUPER: 5,
  SUPER_PLUS: 6,
} as const;

/** Linux errnos a device commonly answers with (negated in UrbResult.status). */
export const UrbErrno = {
  ENOENT: 2,
  EIO: 5,
  ENODEV: 19,
  EINVAL: 22,
  EPIPE: 32,
  EBADR: 53,
  EOVERFLOW: 75,
  EPROTO: 71,
  EMSGSIZE: 90,
  ECONNRESET: 104,
  ESHUTDOWN: 108,
  ETIMEDOUT: 110,
  EREMOTEIO: 121,
} as const;
