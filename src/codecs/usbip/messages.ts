// USB/IP messages as plain objects, discriminated by `type` (the name usbip_protocol.rst gives
// them). Two families share one stream:
// - operation messages (OP_REQ_* / OP_REP_*): an 8-byte op_common header (version 0x0111, code,
//   status) and a body; a client lists devices or imports one with them;
// - URB PDUs (USBIP_CMD_* / USBIP_RET_*): a 48-byte struct usbip_header, then for CMD_SUBMIT OUT
//   and RET_SUBMIT IN the transfer buffer, then for isochronous transfers the packet descriptors.
// The first four bytes tell them apart: a PDU starts with its command (0x00000001-4), an operation
// with the version (0x0111).
//
// Conventions:
// - Numbers the kernel declares signed (status, start_frame, number_of_packets, interval,
//   error_count, an ISO packet's status) are signed 32-bit here; everything else is unsigned.
// - Fields a message's sender "shall set to 0" are not kept when they carry nothing: the devid,
//   direction and ep of RET_SUBMIT / RET_UNLINK (a server sends 0), the direction and ep of
//   CMD_UNLINK, the padding of CMD_UNLINK / RET_UNLINK / RET_SUBMIT and of interface records. The
//   encoder writes zeros; the decoder does not look at them (Linux does not either), so those
//   bytes are the one place where decoding is not canonical.
// - Byte arrays (setup packet, transfer buffer) are Buffers; a decoded one may share memory with
//   the bytes it was decoded from.

/** struct usbip_usb_device (usbip_protocol.rst OP_REP_DEVLIST / OP_REP_IMPORT). */
export interface DeviceRecord {
  /** The device's sysfs path on the exporting host (≤ 255 bytes, NUL-padded on the wire). */
  path: string;
  /** Bus ID, e.g. "3-2" (≤ 31 bytes); what OP_REQ_IMPORT names. */
  busid: string;
  busnum: number;
  devnum: number;
  /** USB_SPEED_* (1 low, 2 full, 3 high, 5 super). */
  speed: number;
  idVendor: number;
  idProduct: number;
  bcdDevice: number;
  bDeviceClass: number;
  bDeviceSubClass: number;
  bDeviceProtocol: number;
  bConfigurationValue: number;
  bNumConfigurations: number;
  /** In OP_REP_DEVLIST, the number of interface records that follow (= interfaces.length). */
  bNumInterfaces: number;
}

/** struct usbip_usb_interface (the padding byte is not kept). */
export interface InterfaceRecord {
  bInterfaceClass: number;
  bInterfaceSubClass: number;
  bInterfaceProtocol: number;
}

export interface DevlistEntry {
  device: DeviceRecord;
  /** device.bNumInterfaces records. */
  interfaces: InterfaceRecord[];
}

/** OP_REQ_DEVLIST: op_common only ("status: unused, shall be set to 0", kept as sent). */
export interface OpReqDevlist {
  type: 'OP_REQ_DEVLIST';
  status: number;
}

/** OP_REQ_IMPORT: op_common, busid[32]. */
export interface OpReqImport {
  type: 'OP_REQ_IMPORT';
  status: number;
  busid: string;
}

/** OP_REP_DEVLIST: op_common, u32 ndev, then each device record with its interface records. */
export interface OpRepDevlist {
  type: 'OP_REP_DEVLIST';
  /** 0; with any other status the reply ends after op_common (and `devices` is empty). */
  status: number;
  devices: DevlistEntry[];
}

/** OP_REP_IMPORT: op_common, then the device record if status is 0 ("otherwise the reply ends"). */
export interface OpRepImport {
  type: 'OP_REP_IMPORT';
  /** OpStatus: 0 OK, 1 not available, 2 busy, 3 device error, 4 no such device, 5 error. */
  status: number;
  /** Present exactly when status is 0. */
  device: DeviceRecord | null;
}

/** struct usbip_iso_packet_descriptor. */
export interface IsoPacketDescriptor {
  /** Where the packet sits in the (unpacked) transfer buffer. */
  offset: number;
  /** Its expected length. */
  length: number;
  actualLength: number;
  /** Signed: 0 or a negative errno. */
  status: number;
}

/** USBIP_CMD_SUBMIT: submit an URB. */
export interface CmdSubmit {
  type: 'CMD_SUBMIT';
  seqnum: number;
  /** (busnum << 16) | devnum of the imported device. */
  devid: number;
  direction: 'in' | 'out';
  /** Endpoint number 0..15, without the direction bit. */
  ep: number;
  /** URB transfer_flags (URB_SHORT_NOT_OK, URB_ZERO_PACKET, URB_DIR_IN, ...), passed through. */
  transferFlags: number;
  transferBufferLength: number;
  startFrame: number;
  /** ISO packets; -1 (the spec's 0xffffffff) or 0 (what Linux sends) for other transfers. */
  numberOfPackets: number;
  interval: number;
  /** 8 bytes; zeros unless this is a control transfer. */
  setup: Buffer;
  /** OUT: transferBufferLength bytes; IN: empty. */
  data: Buffer;
  /** max(numberOfPackets, 0) descriptors, in order inside the transfer buffer. */
  isoPackets: IsoPacketDescriptor[];
}

/** USBIP_CMD_UNLINK: cancel the CMD_SUBMIT numbered unlinkSeqnum. */
export interface CmdUnlink {
  type: 'CMD_UNLINK';
  seqnum: number;
  devid: number;
  unlinkSeqnum: number;
}

/** USBIP_RET_SUBMIT: the result of the CMD_SUBMIT with the same seqnum. */
export interface RetSubmit {
  type: 'RET_SUBMIT';
  seqnum: number;
  /** 0 or a negative errno (-EPIPE for a stall, ...). */
  status: number;
  /** Bytes transferred (IN: the length of `data`; for ISO, the sum of the packets' actualLength). */
  actualLength: number;
  startFrame: number;
  numberOfPackets: number;
  errorCount: number;
  /** IN: actualLength bytes (ISO: packed, each packet's actualLength bytes in turn); OUT: empty. */
  data: Buffer;
  isoPackets: IsoPacketDescriptor[];
}

/** USBIP_RET_UNLINK: -ECONNRESET if the URB was cancelled, 0 if it had already completed. */
export interface RetUnlink {
  type: 'RET_UNLINK';
  seqnum: number;
  status: number;
}

/** What a client sends and a server reads. */
export type UsbipRequest = OpReqDevlist | OpReqImport | CmdSubmit | CmdUnlink;
/** What a server sends and a client reads. */
export type UsbipReply = OpRepDevlist | OpRepImport | RetSubmit | RetUnlink;
export type UsbipMessage = UsbipRequest | UsbipReply;

/**
 * What a client remembers of a CMD_SUBMIT it sent, to read the RET_SUBMIT: a server sets the
 * reply's direction to 0 whatever the transfer was, so only the request says whether data follows.
 */
export interface SubmitContext {
  direction: 'in' | 'out';
  transferBufferLength: number;
  numberOfPackets: number;
}

/** The USB setup packet (USB 2.0 §9.3), little-endian on the wire. */
export interface SetupPacket {
  bmRequestType: number;
  bRequest: number;
  wValue: number;
  wIndex: number;
  wLength: number;
}

/** Limits a decoder enforces; the defaults are in constants.ts. */
export interface DecodeLimits {
  /** Largest transfer_buffer_length (and actual_length) accepted; default 16 MiB. */
  maxTransferLength?: number;
  /** Largest number_of_packets accepted; default 1024. */
  maxIsoPackets?: number;
  /** Most devices in one OP_REP_DEVLIST; default 1024. */
  maxDevices?: number;
}
