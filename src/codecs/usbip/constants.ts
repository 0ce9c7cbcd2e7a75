// USB/IP wire constants, in one place. Source: Linux Documentation/usb/usbip_protocol.rst ("Message
// Format"), with drivers/usb/usbip/usbip_common.h (struct usbip_header), stub_rx.c / vhci_rx.c (what
// the kernel accepts) and tools/usb/usbip/src/usbip_network.h, libsrc/usbip_common.h (the
// operation messages, status codes) consulted where the text leaves things implicit. Everything on
// the wire is big-endian, except the 8-byte USB setup packet, which is copied as the device sees it
// (USB 2.0 §9.3: little-endian wValue, wIndex, wLength).

/** The protocol version of every operation message: v1.1.1 (usbip_protocol.rst "Protocol Version"). */
export const USBIP_VERSION = 0x0111;

/** The TCP port usbipd listens on by default. */
export const USBIP_PORT = 3240;

/** struct op_common: u16 version, u16 code, u32 status. */
export const OP_HEADER_SIZE = 8;

/** Operation codes (usbip_network.h): a request has bit 15 set, its reply the same low byte. */
export const OpCode = {
  REQ_DEVLIST: 0x8005,
  REP_DEVLIST: 0x0005,
  REQ_IMPORT: 0x8003,
  REP_IMPORT: 0x0003,
} as const;

/** op_common status (tools/usb/usbip/libsrc/usbip_common.h). OP_REP_IMPORT carries a device only with OK. */
export const OpStatus = {
  OK: 0x00,
  /** The device requested for import is not available (prism: refused by policy). */
  NA: 0x01,
  /** The device requested for import is busy (imported by someone else). */
  DEV_BUSY: 0x02,
  /** The device requested for import is in an error state. */
  DEV_ERR: 0x03,
  /** No such device. */
  NODEV: 0x04,
  /** Any other error (a malformed request). */
  ERROR: 0x05,
} as const;

/** SYSFS_PATH_MAX / SYSFS_BUS_ID_SIZE: the NUL-padded string fields of a device record. */
export const PATH_SIZE = 256;
export const BUSID_SIZE = 32;

/**
 * struct usbip_usb_device: path[256], busid[32], busnum u32, devnum u32, speed u32, idVendor u16,
 * idProduct u16, bcdDevice u16, bDeviceClass, bDeviceSubClass, bDeviceProtocol,
 * bConfigurationValue, bNumConfigurations, bNumInterfaces (u8 each) = 312 bytes (0x138).
 */
export const DEVICE_RECORD_SIZE = 312;

/** Byte offsets in a device record. */
export const DeviceOffset = {
  PATH: 0,
  BUSID: 0x100,
  BUSNUM: 0x120,
  DEVNUM: 0x124,
  SPEED: 0x128,
  ID_VENDOR: 0x12c,
  ID_PRODUCT: 0x12e,
  BCD_DEVICE: 0x130,
  DEVICE_CLASS: 0x132,
  DEVICE_SUBCLASS: 0x133,
  DEVICE_PROTOCOL: 0x134,
  CONFIGURATION_VALUE: 0x135,
  NUM_CONFIGURATIONS: 0x136,
  NUM_INTERFACES: 0x137,
} as const;

/** struct usbip_usb_interface: class, subclass, protocol, padding (u8 each). */
export const INTERFACE_RECORD_SIZE = 4;

/** OP_REP_DEVLIST: op_common then u32 ndev. */
export const DEVLIST_HEADER_SIZE = OP_HEADER_SIZE + 4;

/** OP_REQ_IMPORT: op_common then busid[32]. */
export const IMPORT_REQUEST_SIZE = OP_HEADER_SIZE + BUSID_SIZE;

/** struct usbip_header: usbip_header_basic (5 × u32) and a 28-byte union = 48 bytes. */
export const PDU_HEADER_SIZE = 48;

/** usbip_header_basic.command. */
export const Command = {
  CMD_SUBMIT: 0x0000_0001,
  CMD_UNLINK: 0x0000_0002,
  RET_SUBMIT: 0x0000_0003,
  RET_UNLINK: 0x0000_0004,
} as const;

export type CommandName = keyof typeof Command;

/** usbip_header_basic.direction. */
export const Direction = {
  OUT: 0,
  IN: 1,
} as const;

/** Byte offsets in a 48-byte PDU header. */
export const PduOffset = {
  COMMAND: 0,
  SEQNUM: 4,
  DEVID: 8,
  DIRECTION: 12,
  EP: 16,
  // CMD_SUBMIT
  TRANSFER_FLAGS: 20,
  TRANSFER_BUFFER_LENGTH: 24,
  START_FRAME: 28,
  NUMBER_OF_PACKETS: 32,
  INTERVAL: 36,
  SETUP: 40,
  // RET_SUBMIT
  STATUS: 20,
  ACTUAL_LENGTH: 24,
  ERROR_COUNT: 36,
  // CMD_UNLINK
  UNLINK_SEQNUM: 20,
} as const;

/** The 8-byte USB setup packet (USB 2.0 §9.3). */
export const SETUP_SIZE = 8;

/** struct usbip_iso_packet_descriptor: offset, length, actual_length, status (u32 each). */
export const ISO_DESCRIPTOR_SIZE = 16;

/** number_of_packets of a transfer that is not isochronous, as the spec writes it (Linux sends 0). */
export const NOT_ISO = -1;

/** Endpoint numbers are 4 bits (USB 2.0 §9.6.6); stub_rx.c get_pipe refuses anything above 15. */
export const MAX_ENDPOINT = 15;

/**
 * Default limits, checked while decoding. A transfer buffer above 16 MiB is far beyond what Linux
 * drivers submit (usb-storage's largest is a few MiB), and an OUT one must be buffered whole.
 * number_of_packets is bounded so that one header cannot make us read megabytes of descriptors;
 * 1024 is well above what Linux class drivers put in one URB (uvcvideo 32, snd-usb-audio 48).
 */
export const DEFAULT_MAX_TRANSFER_LENGTH = 16 * 1024 * 1024;
export const DEFAULT_MAX_ISO_PACKETS = 1024;
/** Most devices one OP_REP_DEVLIST may list (a client-side limit). */
export const DEFAULT_MAX_DEVICES = 1024;

/** Linux USB_DIR_IN in bmRequestType and in transfer_flags' URB_DIR_IN (0x200). */
export const USB_DIR_IN = 0x80;
export const URB_DIR_IN = 0x0200;
