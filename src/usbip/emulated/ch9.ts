// USB 2.0 chapter 9 numbers the emulated devices need (USB 2.0 spec tables 9-2 .. 9-6, and the
// SuperSpeed additions of USB 3.2 tables 9-4, 9-5, 9-14; Linux include/uapi/linux/usb/ch9.h), the
// HID class numbers (HID 1.11 section 7.1-7.2), and the setup packet reader. Pure data; no I/O.

/** bmRequestType bits 6..5 (USB 2.0 table 9-2). */
export const RequestKind = { STANDARD: 0, CLASS: 1, VENDOR: 2 } as const;
/** bmRequestType bits 4..0 (USB 2.0 table 9-2). */
export const Recipient = { DEVICE: 0, INTERFACE: 1, ENDPOINT: 2, OTHER: 3 } as const;

/** bRequest of the standard requests (USB 2.0 table 9-4). */
export const StandardRequest = {
  GET_STATUS: 0x00,
  CLEAR_FEATURE: 0x01,
  SET_FEATURE: 0x03,
  SET_ADDRESS: 0x05,
  GET_DESCRIPTOR: 0x06,
  SET_DESCRIPTOR: 0x07,
  GET_CONFIGURATION: 0x08,
  SET_CONFIGURATION: 0x09,
  GET_INTERFACE: 0x0a,
  SET_INTERFACE: 0x0b,
  SYNCH_FRAME: 0x0c,
  /** USB 3.2 table 9-4: U1/U2 exit latencies, sent only to a device whose BOS allows LPM. */
  SET_SEL: 0x30,
  /** USB 3.2 table 9-4: the hub delay, sent to every SuperSpeed device at enumeration. */
  SET_ISOCH_DELAY: 0x31,
} as const;

/** bDescriptorType (USB 2.0 table 9-5; HID 1.11 section 7.1). */
export const DescriptorType = {
  DEVICE: 0x01,
  CONFIGURATION: 0x02,
  STRING: 0x03,
  INTERFACE: 0x04,
  ENDPOINT: 0x05,
  DEVICE_QUALIFIER: 0x06,
  OTHER_SPEED_CONFIGURATION: 0x07,
  INTERFACE_POWER: 0x08,
  BOS: 0x0f,
  DEVICE_CAPABILITY: 0x10,
  SS_ENDPOINT_COMPANION: 0x30,
  HID: 0x21,
  HID_REPORT: 0x22,
} as const;

/** Feature selectors (USB 2.0 table 9-6). */
export const Feature = { ENDPOINT_HALT: 0, DEVICE_REMOTE_WAKEUP: 1, TEST_MODE: 2 } as const;

/** bDevCapabilityType of the BOS device capabilities (USB 3.2 table 9-14). */
export const DeviceCapability = { USB_2_0_EXTENSION: 0x02, SUPERSPEED_USB: 0x03 } as const;

/** bmAttributes bits 1..0 of an endpoint descriptor (USB 2.0 table 9-13). */
export const TransferType = { CONTROL: 0, ISOCHRONOUS: 1, BULK: 2, INTERRUPT: 3 } as const;

/** The direction bit of bEndpointAddress and of bmRequestType. */
export const DIR_IN = 0x80;

/** URB transfer_flags as usbip carries them (Linux include/linux/usb.h). */
export const URB_SHORT_NOT_OK = 0x0001;

/** The US English LANGID, the only language the emulated devices' strings are in. */
export const LANGID_EN_US = 0x0409;

/** The 8-byte setup packet of a control transfer (USB 2.0 section 9.3), little-endian fields. */
export interface SetupPacket {
  bmRequestType: number;
  bRequest: number;
  wValue: number;
  wIndex: number;
  wLength: number;
  /** bmRequestType bit 7: the direction of the data stage (meaningless when wLength is 0). */
  direction: 'in' | 'out';
  /** bmRequestType bits 6..5 (RequestKind; 3 is reserved). */
  kind: number;
  /** bmRequestType bits 4..0 (Recipient). */
  recipient: number;
}

/** Reads a setup packet; the caller has checked that there are 8 bytes. */
export function readSetup(b: Buffer): SetupPacket {
  const bmRequestType = b.readUInt8(0);
  return {
    bmRequestType,
    bRequest: b.readUInt8(1),
    wValue: b.readUInt16LE(2),
    wIndex: b.readUInt16LE(4),
    wLength: b.readUInt16LE(6),
    direction: (bmRequestType & DIR_IN) !== 0 ? 'in' : 'out',
    kind: (bmRequestType >> 5) & 3,
    recipient: bmRequestType & 0x1f,
  };
}

/** Builds a setup packet (tests and clients). */
export function setupPacket(bmRequestType: number, bRequest: number, wValue: number, wIndex: number, wLength: number): Buffer {
  const b = Buffer.alloc(8);
  b.writeUInt8(bmRequestType, 0);
  b.writeUInt8(bRequest, 1);
  b.writeUInt16LE(wValue, 2);
  b.writeUInt16LE(wIndex, 4);
  b.writeUInt16LE(wLength, 6);
  return b;
}
