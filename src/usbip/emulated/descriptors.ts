// Emulated devices declare their descriptors as data (DeviceSpec); buildDescriptors() lays them out
// as the bytes GET_DESCRIPTOR returns (USB 2.0 section 9.6): the device descriptor, each
// configuration with its whole tree (configuration, then per interface: the interface, its class
// descriptors, its endpoints), the string table, and for high-speed devices the device_qualifier
// and other_speed_configuration descriptors describing full-speed operation (section 9.6.2, 9.6.4).
// A SuperSpeed device (USB 3.2 section 9.6) has instead a SuperSpeed Endpoint Companion after each
// endpoint (9.6.7), a BOS descriptor with the USB 2.0 Extension and SuperSpeed USB capabilities
// (9.6.2), bMaxPacketSize0 as an exponent (9: 512 bytes), bMaxPower in 8 mA units, and neither a
// device_qualifier nor other-speed configurations (a device operating at SuperSpeed stalls them).
// A spec that would produce descriptors a host could misread (duplicate endpoint, string too long,
// tree over 64 KiB ...) is a programming error and throws a RangeError.
import { DescriptorType, DeviceCapability, DIR_IN, TransferType } from './ch9.js';
import { UsbSpeed } from '../device.js';

export type EndpointKind = 'bulk' | 'interrupt' | 'isochronous';

export interface EndpointSpec {
  /** bEndpointAddress: number 1..15, with DIR_IN (0x80) for IN endpoints. */
  address: number;
  kind: EndpointKind;
  maxPacketSize: number;
  /** bInterval as the descriptor carries it (ms at full speed; 2^(n-1) microframes at high speed for interrupt). */
  interval: number;
  /** wMaxPacketSize / bInterval in the other-speed (full-speed) configuration of a high-speed device; defaults below. */
  fullSpeed?: { maxPacketSize: number; interval: number };
  /** The SuperSpeed Endpoint Companion of a SuperSpeed device's endpoint (USB 3.2 table 9-27); default all zero. */
  superSpeed?: { maxBurst: number; attributes?: number; bytesPerInterval?: number };
}

export interface InterfaceSpec {
  number: number;
  alternateSetting: number;
  interfaceClass: number;
  interfaceSubClass: number;
  interfaceProtocol: number;
  name?: string;
  /** Class-specific descriptors placed after the interface descriptor (e.g. the HID descriptor). */
  classDescriptors?: Buffer[];
  endpoints: EndpointSpec[];
}

export interface ConfigurationSpec {
  value: number;
  name?: string;
  selfPowered?: boolean;
  remoteWakeup?: boolean;
  maxPowerMilliamps: number;
  interfaces: InterfaceSpec[];
}

export interface DeviceSpec {
  /** USB_SPEED_* the device runs at (UsbSpeed.FULL, HIGH or SUPER for the emulated devices). */
  speed: number;
  /** bcdUSB, e.g. 0x0200; at least 0x0300 for a SuperSpeed device (Linux warm-resets one below). */
  usbVersion: number;
  deviceClass: number;
  deviceSubClass: number;
  deviceProtocol: number;
  /** 8, 16, 32 or 64; for a SuperSpeed device the exponent 9 (512 bytes). */
  maxPacketSize0: number;
  idVendor: number;
  idProduct: number;
  bcdDevice: number;
  manufacturer?: string;
  product?: string;
  serialNumber?: string;
  configurations: ConfigurationSpec[];
}

export interface DescriptorSet {
  readonly spec: DeviceSpec;
  readonly device: Buffer;
  /** Full configuration trees, by descriptor index (not by bConfigurationValue). */
  readonly configurations: readonly Buffer[];
  /** For a high-speed device: the same trees as OTHER_SPEED_CONFIGURATION at full speed; else empty. */
  readonly otherSpeedConfigurations: readonly Buffer[];
  /** For a high-speed device; null otherwise (a full-speed-only device stalls the request). */
  readonly qualifier: Buffer | null;
  /** String descriptors by index; index 0 is the LANGID list. */
  readonly strings: readonly Buffer[];
  /** The BOS descriptor with its device capabilities, for a SuperSpeed device; else null (the request stalls). */
  readonly bos: Buffer | null;
}

const MAX_STRING_CHARS = 126; // bLength is one byte: 2 + 2 * 126 = 254

/** A string descriptor: UTF-16LE text (USB 2.0 section 9.6.7). */
export function stringDescriptor(text: string): Buffer {
  const body = Buffer.from(text, 'utf16le');
  if (body.length > 2 * MAX_STRING_CHARS) throw new RangeError(`USB string "${text.slice(0, 20)}..." is longer than ${MAX_STRING_CHARS} UTF-16 units`);
  const b = Buffer.alloc(2 + body.length);
  b.writeUInt8(b.length, 0);
  b.writeUInt8(DescriptorType.STRING, 1);
  body.copy(b, 2);
  return b;
}

/** String descriptor 0: the LANGIDs the device supports. */
export function langIdDescriptor(langIds: readonly number[]): Buffer {
  const b = Buffer.alloc(2 + 2 * langIds.length);
  b.writeUInt8(b.length, 0);
  b.writeUInt8(DescriptorType.STRING, 1);
  langIds.forEach((id, i) => b.writeUInt16LE(id, 2 + 2 * i));
  return b;
}

const kindBits: Record<EndpointKind, number> = { isochronous: TransferType.ISOCHRONOUS, bulk: TransferType.BULK, interrupt: TransferType.INTERRUPT };

function u8(name: string, v: number): number {
  if (!Number.isInteger(v) || v < 0 || v > 0xff) throw new RangeError(`${name} ${v} is not a byte`);
  return v;
}

function u16(name: string, v: number): number {
  if (!Number.isInteger(v) || v < 0 || v > 0xffff) throw new RangeError(`${name} ${v} is not a 16-bit value`);
  return v;
}

class StringTable {
  readonly strings: Buffer[] = [langIdDescriptor([0x0409])];
  readonly #index = new Map<string, number>();
  /** The index of `text` (0 for none), adding it on first use. */
  add(text: string | undefined): number {
    if (text === undefined || text === '') return 0;
    let i = this.#index.get(text);
    if (i === undefined) {
      i = this.strings.length;
      if (i > 0xff) throw new RangeError('more than 255 strings');
      this.strings.push(stringDescriptor(text));
      this.#index.set(text, i);
    }
    return i;
  }
}

function endpointDescriptor(ep: EndpointSpec, otherSpeed: boolean, superSpeed: boolean): Buffer {
  let { maxPacketSize, interval } = ep;
  if (otherSpeed) {
    if (ep.fullSpeed) ({ maxPacketSize, interval } = ep.fullSpeed);
    else if (ep.kind === 'bulk') maxPacketSize = Math.min(maxPacketSize, 64);
    else if (ep.kind === 'interrupt') {
      maxPacketSize = Math.min(maxPacketSize, 64);
      // High-speed bInterval n means 2^(n-1) microframes; full speed counts milliseconds.
      interval = Math.min(255, Math.max(1, Math.round(2 ** (interval - 1) / 8)));
    }
  }
  const b = Buffer.alloc(7);
  b.writeUInt8(7, 0);
  b.writeUInt8(DescriptorType.ENDPOINT, 1);
  b.writeUInt8(u8('bEndpointAddress', ep.address), 2);
  b.writeUInt8(kindBits[ep.kind], 3);
  b.writeUInt16LE(u16('wMaxPacketSize', maxPacketSize), 4);
  b.writeUInt8(u8('bInterval', interval), 6);
  if (!superSpeed) return b;
  // USB 3.2 section 9.6.6: SuperSpeed bulk endpoints have 1024-byte packets, the others at most 1024.
  if (ep.kind === 'bulk' ? maxPacketSize !== 1024 : maxPacketSize > 1024) throw new RangeError(`SuperSpeed ${ep.kind} endpoint 0x${ep.address.toString(16)}: wMaxPacketSize ${maxPacketSize}`);
  const ss = ep.superSpeed ?? { maxBurst: 0 };
  if (!Number.isInteger(ss.maxBurst) || ss.maxBurst < 0 || ss.maxBurst > 15) throw new RangeError(`bMaxBurst ${ss.maxBurst} is not 0..15`);
  const companion = Buffer.alloc(6);
  companion.writeUInt8(6, 0);
  companion.writeUInt8(DescriptorType.SS_ENDPOINT_COMPANION, 1);
  companion.writeUInt8(ss.maxBurst, 2);
  companion.writeUInt8(u8('bmAttributes', ss.attributes ?? 0), 3); // bulk: MaxStreams 0 (no streams)
  companion.writeUInt16LE(u16('wBytesPerInterval', ss.bytesPerInterval ?? 0), 4);
  return Buffer.concat([b, companion]);
}

/**
 * The BOS descriptor (USB 3.2 section 9.6.2) of a SuperSpeed device: the USB 2.0 Extension
 * (LPM, as 9.6.2.1 requires of a SuperSpeed device) and the SuperSpeed USB capability. The U1/U2
 * exit latencies are zero, which tells Linux not to enable link power management (hub.c
 * usb_device_supports_lpm), so no SET_SEL or U1/U2 feature requests follow.
 */
function bosDescriptor(): Buffer {
  const usb2 = Buffer.alloc(7);
  usb2.writeUInt8(7, 0);
  usb2.writeUInt8(DescriptorType.DEVICE_CAPABILITY, 1);
  usb2.writeUInt8(DeviceCapability.USB_2_0_EXTENSION, 2);
  usb2.writeUInt32LE(0x02, 3); // bmAttributes: LPM
  const ss = Buffer.alloc(10);
  ss.writeUInt8(10, 0);
  ss.writeUInt8(DescriptorType.DEVICE_CAPABILITY, 1);
  ss.writeUInt8(DeviceCapability.SUPERSPEED_USB, 2);
  ss.writeUInt8(0, 3); // bmAttributes: no LTM
  ss.writeUInt16LE(0x000e, 4); // wSpeedsSupported: full, high and 5 Gb/s
  ss.writeUInt8(1, 6); // bFunctionalitySupport: all of it from full speed up
  ss.writeUInt8(0, 7); // bU1DevExitLat
  ss.writeUInt16LE(0, 8); // wU2DevExitLat
  const head = Buffer.alloc(5);
  head.writeUInt8(5, 0);
  head.writeUInt8(DescriptorType.BOS, 1);
  head.writeUInt16LE(head.length + usb2.length + ss.length, 2);
  head.writeUInt8(2, 4); // bNumDeviceCaps
  return Buffer.concat([head, usb2, ss]);
}

function configurationTree(c: ConfigurationSpec, strings: StringTable, otherSpeed: boolean, superSpeed: boolean): Buffer {
  const parts: Buffer[] = [];
  const interfaceNumbers = new Set<number>();
  for (const itf of c.interfaces) {
    interfaceNumbers.add(u8('bInterfaceNumber', itf.number));
    const seen = new Set<number>();
    for (const ep of itf.endpoints) {
      const n = ep.address & 0x7f;
      if (n < 1 || n > 15 || (ep.address & 0x70) !== 0) throw new RangeError(`endpoint address 0x${ep.address.toString(16)} is not 0x01..0x0f or 0x81..0x8f`);
      if (seen.has(ep.address)) throw new RangeError(`endpoint 0x${ep.address.toString(16)} declared twice in interface ${itf.number}`);
      seen.add(ep.address);
    }
    const head = Buffer.alloc(9);
    head.writeUInt8(9, 0);
    head.writeUInt8(DescriptorType.INTERFACE, 1);
    head.writeUInt8(itf.number, 2);
    head.writeUInt8(u8('bAlternateSetting', itf.alternateSetting), 3);
    head.writeUInt8(u8('bNumEndpoints', itf.endpoints.length), 4);
    head.writeUInt8(u8('bInterfaceClass', itf.interfaceClass), 5);
    head.writeUInt8(u8('bInterfaceSubClass', itf.interfaceSubClass), 6);
    head.writeUInt8(u8('bInterfaceProtocol', itf.interfaceProtocol), 7);
    head.writeUInt8(strings.add(itf.name), 8);
    parts.push(head, ...(itf.classDescriptors ?? []), ...itf.endpoints.map((ep) => endpointDescriptor(ep, otherSpeed, superSpeed)));
  }
  for (let i = 0; i < interfaceNumbers.size; i++) {
    if (!interfaceNumbers.has(i)) throw new RangeError(`configuration ${c.value}: interface numbers must be 0..${interfaceNumbers.size - 1}`);
  }
  const head = Buffer.alloc(9);
  const total = 9 + parts.reduce((n, p) => n + p.length, 0);
  head.writeUInt8(9, 0);
  head.writeUInt8(otherSpeed ? DescriptorType.OTHER_SPEED_CONFIGURATION : DescriptorType.CONFIGURATION, 1);
  head.writeUInt16LE(u16('wTotalLength', total), 2);
  head.writeUInt8(interfaceNumbers.size, 4);
  head.writeUInt8(u8('bConfigurationValue', c.value), 5);
  head.writeUInt8(strings.add(c.name), 6);
  // Bit 7 is reserved and must be one (USB 2.0 table 9-10).
  head.writeUInt8(0x80 | (c.selfPowered ? 0x40 : 0) | (c.remoteWakeup ? 0x20 : 0), 7);
  // 2 mA units, 8 mA at SuperSpeed (USB 3.2 table 9-22).
  head.writeUInt8(u8('bMaxPower', Math.ceil(c.maxPowerMilliamps / (superSpeed ? 8 : 2))), 8);
  return Buffer.concat([head, ...parts], total);
}

export function buildDescriptors(spec: DeviceSpec): DescriptorSet {
  if (spec.configurations.length === 0) throw new RangeError('a device needs a configuration');
  const values = new Set(spec.configurations.map((c) => c.value));
  if (values.size !== spec.configurations.length || values.has(0)) throw new RangeError('bConfigurationValue must be unique and non-zero');
  const superSpeed = spec.speed >= UsbSpeed.SUPER;
  if (superSpeed) {
    if (spec.maxPacketSize0 !== 9) throw new RangeError(`bMaxPacketSize0 ${spec.maxPacketSize0} of a SuperSpeed device is not 9 (512 bytes)`);
    if (spec.usbVersion < 0x0300) throw new RangeError(`bcdUSB 0x${spec.usbVersion.toString(16)} of a SuperSpeed device is below 0x0300`);
  } else if (![8, 16, 32, 64].includes(spec.maxPacketSize0)) throw new RangeError(`bMaxPacketSize0 ${spec.maxPacketSize0} is not 8, 16, 32 or 64`);
  const strings = new StringTable();
  const device = Buffer.alloc(18);
  device.writeUInt8(18, 0);
  device.writeUInt8(DescriptorType.DEVICE, 1);
  device.writeUInt16LE(u16('bcdUSB', spec.usbVersion), 2);
  device.writeUInt8(u8('bDeviceClass', spec.deviceClass), 4);
  device.writeUInt8(u8('bDeviceSubClass', spec.deviceSubClass), 5);
  device.writeUInt8(u8('bDeviceProtocol', spec.deviceProtocol), 6);
  device.writeUInt8(spec.maxPacketSize0, 7);
  device.writeUInt16LE(u16('idVendor', spec.idVendor), 8);
  device.writeUInt16LE(u16('idProduct', spec.idProduct), 10);
  device.writeUInt16LE(u16('bcdDevice', spec.bcdDevice), 12);
  device.writeUInt8(strings.add(spec.manufacturer), 14);
  device.writeUInt8(strings.add(spec.product), 15);
  device.writeUInt8(strings.add(spec.serialNumber), 16);
  device.writeUInt8(u8('bNumConfigurations', spec.configurations.length), 17);
  const configurations = spec.configurations.map((c) => configurationTree(c, strings, false, superSpeed));
  const highSpeed = spec.speed === UsbSpeed.HIGH;
  let qualifier: Buffer | null = null;
  let otherSpeedConfigurations: Buffer[] = [];
  if (highSpeed) {
    // USB 2.0 section 9.6.2: the fields a device would have at the other speed.
    qualifier = Buffer.alloc(10);
    qualifier.writeUInt8(10, 0);
    qualifier.writeUInt8(DescriptorType.DEVICE_QUALIFIER, 1);
    qualifier.writeUInt16LE(spec.usbVersion, 2);
    qualifier.writeUInt8(spec.deviceClass, 4);
    qualifier.writeUInt8(spec.deviceSubClass, 5);
    qualifier.writeUInt8(spec.deviceProtocol, 6);
    qualifier.writeUInt8(spec.maxPacketSize0, 7);
    qualifier.writeUInt8(spec.configurations.length, 8);
    otherSpeedConfigurations = spec.configurations.map((c) => configurationTree(c, strings, true, false));
  }
  const bos = superSpeed ? bosDescriptor() : null;
  return { spec, device, configurations, otherSpeedConfigurations, qualifier, strings: strings.strings, bos };
}

/** True for an IN endpoint address. */
export function isIn(address: number): boolean {
  return (address & DIR_IN) !== 0;
}
