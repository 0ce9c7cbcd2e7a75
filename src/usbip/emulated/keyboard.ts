// emulated:keyboard[:TEXT] — a full-speed HID boot keyboard (HID 1.11: interface class 3, subclass
// 1 boot, protocol 1 keyboard) with one interrupt IN endpoint carrying 8-byte boot reports
// (appendix B.1: modifiers, reserved, six key usages). The report descriptor is the boot layout
// itself (appendix E.6), so report and boot protocol send the same bytes.
//
// type(text) queues a key-down and a key-up report per character of ASCII text on a US layout
// (HID Usage Tables 1.12 chapter 10, Keyboard/Keypad page 0x07), with left shift for capitals and
// shifted symbols. An interrupt IN URB completes with the next queued report, or waits until
// type() queues one (an unlink ends it with -ECONNRESET). TEXT from the spec is typed when the host
// first polls after each attach, i.e. once its HID driver is listening.
//
// Class requests (HID 1.11 section 7.2): GET_REPORT (input: the last report sent; output: the
// LEDs), SET_REPORT (output: the LED byte: num, caps, scroll, compose, kana lock), GET/SET_IDLE
// (recorded; reports go out only on change, as with idle 0, which is what Linux and Windows set),
// GET/SET_PROTOCOL. The HID and report descriptors come from GET_DESCRIPTOR on the interface.
import { DescriptorType, Recipient, RequestKind, type SetupPacket } from './ch9.js';
import { EmulatedDevice, type ControlAnswer, type DeviceLocation } from './control.js';
import type { DeviceSpec } from './descriptors.js';
import { UrbErrno, UsbSpeed } from '../device.js';

export const KEYBOARD_EP_IN = 0x81;
export const KEYBOARD_VENDOR_ID = 0x1209; // pid.codes test VID/PID, as for the storage device
export const KEYBOARD_PRODUCT_ID = 0x0002;
export const BOOT_REPORT_SIZE = 8;

/** HID class requests (HID 1.11 section 7.2). */
export const HidRequest = { GET_REPORT: 0x01, GET_IDLE: 0x02, GET_PROTOCOL: 0x03, SET_REPORT: 0x09, SET_IDLE: 0x0a, SET_PROTOCOL: 0x0b } as const;
/** Report types in the high byte of GET_REPORT/SET_REPORT's wValue. */
export const HidReportType = { INPUT: 1, OUTPUT: 2, FEATURE: 3 } as const;

/** Modifier bits of byte 0 of a boot report. */
export const Modifier = { LEFT_CTRL: 0x01, LEFT_SHIFT: 0x02, LEFT_ALT: 0x04, LEFT_GUI: 0x08, RIGHT_CTRL: 0x10, RIGHT_SHIFT: 0x20, RIGHT_ALT: 0x40, RIGHT_GUI: 0x80 } as const;

/** The boot keyboard report descriptor of HID 1.11 appendix E.6 (63 bytes). */
export const BOOT_KEYBOARD_REPORT_DESCRIPTOR = Buffer.from(
  [
    '05 01', // Usage Page (Generic Desktop)
    '09 06', // Usage (Keyboard)
    'a1 01', // Collection (Application)
    '05 07 19 e0 29 e7 15 00 25 01 75 01 95 08 81 02', //   modifiers: 8 bits, usages E0..E7
    '95 01 75 08 81 01', //   reserved byte (constant)
    '95 05 75 01 05 08 19 01 29 05 91 02', //   LEDs: 5 output bits, usages 1..5 of the LED page
    '95 01 75 03 91 01', //   LED padding
    '95 06 75 08 15 00 25 65 05 07 19 00 29 65 81 00', //   six key usages 0..0x65 (array)
    'c0', // End Collection
  ]
    .join(' ')
    .replace(/ /g, ''),
  'hex',
);

/** The HID descriptor (HID 1.11 section 6.2.1), placed after the interface descriptor. */
export function hidDescriptor(reportDescriptorLength: number): Buffer {
  const b = Buffer.alloc(9);
  b.writeUInt8(9, 0);
  b.writeUInt8(DescriptorType.HID, 1);
  b.writeUInt16LE(0x0111, 2); // bcdHID 1.11
  b.writeUInt8(0, 4); // bCountryCode: not localized
  b.writeUInt8(1, 5); // one class descriptor follows:
  b.writeUInt8(DescriptorType.HID_REPORT, 6);
  b.writeUInt16LE(reportDescriptorLength, 7);
  return b;
}

// --- US layout ---------------------------------------------------------------------------------------

interface Key {
  modifiers: number;
  usage: number;
}

const US_LAYOUT: ReadonlyMap<string, Key> = (() => {
  const m = new Map<string, Key>();
  const plain = (ch: string, usage: number): void => void m.set(ch, { modifiers: 0, usage });
  const shifted = (ch: string, usage: number): void => void m.set(ch, { modifiers: Modifier.LEFT_SHIFT, usage });
  for (let i = 0; i < 26; i++) {
    plain(String.fromCharCode(0x61 + i), 0x04 + i); // a..z: usages 0x04..0x1d
    shifted(String.fromCharCode(0x41 + i), 0x04 + i);
  }
  '1234567890'.split('').forEach((d, i) => plain(d, 0x1e + i)); // 1..9 are 0x1e..0x26, 0 is 0x27
  '!@#$%^&*()'.split('').forEach((s, i) => shifted(s, 0x1e + i));
  plain('\n', 0x28); // Enter
  plain('\r', 0x28);
  plain('\x1b', 0x29); // Escape
  plain('\b', 0x2a); // Backspace
  plain('\t', 0x2b);
  plain(' ', 0x2c);
  const pairs: [string, string, number][] = [
    ['-', '_', 0x2d],
    ['=', '+', 0x2e],
    ['[', '{', 0x2f],
    [']', '}', 0x30],
    ['\\', '|', 0x31],
    [';', ':', 0x33],
    ["'", '"', 0x34],
    ['`', '~', 0x35],
    [',', '<', 0x36],
    ['.', '>', 0x37],
    ['/', '?', 0x38],
  ];
  for (const [p, s, usage] of pairs) {
    plain(p, usage);
    shifted(s, usage);
  }
  return m;
})();

/** The key (usage and modifiers) that types `ch` on a US layout, or undefined. */
export function keyFor(ch: string): Key | undefined {
  return US_LAYOUT.get(ch);
}

export function bootReport(modifiers: number, ...usages: number[]): Buffer {
  const b = Buffer.alloc(BOOT_REPORT_SIZE);
  b.writeUInt8(modifiers, 0);
  usages.slice(0, 6).forEach((u, i) => b.writeUInt8(u, 2 + i));
  return b;
}

const KEYS_UP = bootReport(0);

/** Key-down/key-up report pairs typing `text`; a RangeError names the first character a US keyboard cannot type. */
export function reportsFor(text: string): Buffer[] {
  const out: Buffer[] = [];
  // "\r\n" is one Enter.
  const chars = [...text.replace(/\r\n/g, '\n')];
  chars.forEach((ch, i) => {
    const key = keyFor(ch);
    if (key === undefined) {
      const code = ch.codePointAt(0) ?? 0;
      throw new RangeError(`cannot type ${JSON.stringify(ch)} (U+${code.toString(16).padStart(4, '0')}) at position ${i}: the keyboard types printable ASCII, \\n, \\t, \\b and \\e on a US layout`);
    }
    out.push(bootReport(key.modifiers, key.usage), KEYS_UP);
  });
  return out;
}

export function keyboardSpec(): DeviceSpec {
  return {
    speed: UsbSpeed.FULL,
    usbVersion: 0x0200,
    deviceClass: 0,
    deviceSubClass: 0,
    deviceProtocol: 0,
    maxPacketSize0: 64,
    idVendor: KEYBOARD_VENDOR_ID,
    idProduct: KEYBOARD_PRODUCT_ID,
    bcdDevice: 0x0100,
    manufacturer: 'prism',
    product: 'prism emulated keyboard',
    configurations: [
      {
        value: 1,
        maxPowerMilliamps: 100,
        interfaces: [
          {
            number: 0,
            alternateSetting: 0,
            interfaceClass: 0x03, // HID
            interfaceSubClass: 0x01, // boot interface
            interfaceProtocol: 0x01, // keyboard
            classDescriptors: [hidDescriptor(BOOT_KEYBOARD_REPORT_DESCRIPTOR.length)],
            endpoints: [{ address: KEYBOARD_EP_IN, kind: 'interrupt', maxPacketSize: BOOT_REPORT_SIZE, interval: 10 }],
          },
        ],
      },
    ],
  };
}

/** How long after the host's first poll the spec text is typed (see the constructor). */
export const TYPE_DELAY_MS = 2000;

/** At most this many reports wait at once (a 64 KiB text); type() refuses more. */
export const MAX_QUEUED_REPORTS = 2 * 65536;

export class KeyboardDevice extends EmulatedDevice {
  readonly #text: string;
  #textDue = true;
  #reports: Buffer[] = [];
  #head = 0;
  /** The last report sent (what GET_REPORT(input) answers). */
  #current = KEYS_UP;
  #leds = 0;
  #protocol = 1; // report protocol after reset (HID 1.11 section 7.2.6)
  #idle = 0;

  #typeTimer: NodeJS.Timeout | null = null;

  /**
   * `text` is typed `typeDelayMs` after the host first polls, after each attach; it is checked
   * here. The delay lets the importer's programs open the new input device first: the kernel's own
   * console keyboard handler opens every keyboard at once, so text typed on the very first poll
   * would reach only it.
   */
  constructor(
    location: DeviceLocation,
    text = '',
    private readonly typeDelayMs = TYPE_DELAY_MS,
  ) {
    super(keyboardSpec(), location);
    if (reportsFor(text).length > MAX_QUEUED_REPORTS) throw new RangeError(`a text of ${text.length} characters is more than the keyboard queues (${MAX_QUEUED_REPORTS / 2})`);
    this.#text = text;
  }

  /** The LED byte the host last set (bit 0 num lock, 1 caps lock, 2 scroll lock, 3 compose, 4 kana). */
  get leds(): number {
    return this.#leds;
  }

  /** 0 boot protocol, 1 report protocol. */
  get protocol(): number {
    return this.#protocol;
  }

  /** SET_IDLE's duration for report 0, in 4 ms units (0: only on change). */
  get idle(): number {
    return this.#idle;
  }

  /** Reports queued and not yet sent. */
  get pendingReports(): number {
    return this.#reports.length - this.#head;
  }

  /** Queues the key presses typing `text` (all or nothing: an untypeable character throws a RangeError first). */
  type(text: string): void {
    const reports = reportsFor(text);
    if (this.pendingReports + reports.length > MAX_QUEUED_REPORTS) throw new RangeError(`typing ${text.length} more characters would queue over ${MAX_QUEUED_REPORTS} reports`);
    if (this.#head > 1024 && this.#head * 2 > this.#reports.length) {
      this.#reports = this.#reports.slice(this.#head);
      this.#head = 0;
    }
    for (const r of reports) this.#reports.push(r);
    this.#deliver();
  }

  override detached(): void {
    super.detached();
    this.#reports = [];
    this.#head = 0;
    this.#current = KEYS_UP;
    this.#leds = 0;
    this.#textDue = true;
    if (this.#typeTimer) clearTimeout(this.#typeTimer);
    this.#typeTimer = null;
  }

  protected override deviceReset(): void {
    this.#protocol = 1;
    this.#idle = 0;
  }

  protected override urbQueued(_address: number): void {
    if (this.#textDue) {
      this.#textDue = false;
      if (this.#text !== '') {
        this.#typeTimer = setTimeout(() => {
          this.#typeTimer = null;
          this.type(this.#text);
        }, this.typeDelayMs);
      }
    }
    this.#deliver();
  }

  #deliver(): void {
    while (this.#head < this.#reports.length) {
      const p = this.takeUrb(KEYBOARD_EP_IN);
      if (p === undefined) return;
      const report = this.#reports[this.#head++]!;
      this.#current = report;
      const room = p.urb.transferBufferLength;
      // A buffer smaller than the packet the device sends is babble (-EOVERFLOW).
      if (room < report.length) p.complete({ status: -UrbErrno.EOVERFLOW, data: report.subarray(0, room) });
      else p.complete({ status: 0, data: report });
    }
  }

  protected override interfaceDescriptor(interfaceNumber: number, type: number, index: number): Buffer | null {
    if (interfaceNumber !== 0 || index !== 0) return null;
    if (type === DescriptorType.HID_REPORT) return BOOT_KEYBOARD_REPORT_DESCRIPTOR;
    if (type === DescriptorType.HID) return hidDescriptor(BOOT_KEYBOARD_REPORT_DESCRIPTOR.length);
    return null;
  }

  protected override controlRequest(s: SetupPacket, data: Buffer): ControlAnswer {
    if (s.kind !== RequestKind.CLASS || s.recipient !== Recipient.INTERFACE || s.wIndex !== 0) return null;
    const reportType = s.wValue >> 8;
    const reportId = s.wValue & 0xff;
    switch (s.bRequest) {
      case HidRequest.GET_REPORT:
        if (s.direction !== 'in' || reportId !== 0) return null;
        if (reportType === HidReportType.INPUT) return this.#current;
        if (reportType === HidReportType.OUTPUT) return Buffer.from([this.#leds]);
        return null;
      case HidRequest.SET_REPORT:
        if (s.direction !== 'out' || reportId !== 0 || reportType !== HidReportType.OUTPUT || data.length < 1) return null;
        this.#leds = data.readUInt8(0) & 0x1f;
        return true;
      case HidRequest.GET_IDLE:
        return s.direction === 'in' && (s.wValue & 0xff00) === 0 ? Buffer.from([this.#idle]) : null;
      case HidRequest.SET_IDLE:
        if (s.direction !== 'out' || s.wLength !== 0) return null;
        if (reportId === 0) this.#idle = s.wValue >> 8;
        return true;
      case HidRequest.GET_PROTOCOL:
        return s.direction === 'in' && s.wValue === 0 ? Buffer.from([this.#protocol]) : null;
      case HidRequest.SET_PROTOCOL:
        if (s.direction !== 'out' || s.wLength !== 0 || s.wValue > 1) return null;
        this.#protocol = s.wValue;
        return true;
      default:
        return null;
    }
  }
}
