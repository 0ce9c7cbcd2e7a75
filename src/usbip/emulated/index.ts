// The `emulated:` device sources of `prism usbip serve --device SPEC`:
//   emulated:storage:IMAGE[:ro|:rw][:hs|:ss]
//                                 USB mass storage (Bulk-Only, SCSI) on an image file, read-only with :ro;
//                                 SuperSpeed (:ss, the default: Linux moves 1 MiB per SCSI command
//                                 instead of 120 KiB) or high speed (:hs, for importers whose vhci
//                                 has no SuperSpeed ports)
//   emulated:keyboard[:TEXT]      HID boot keyboard; TEXT (escapes \n \r \t \b \e \\ \:) is typed when the host first polls
// IMAGE is everything between "emulated:storage:" and the optional final ":hs"/":ss" and, before
// it, ":ro"/":rw" (so a path may hold colons, but one ending in one of those four needs explicit
// options after it, e.g. IMAGE:rw:hs).
import { KeyboardDevice } from './keyboard.js';
import { StorageDevice, type StorageSpeed } from './storage.js';
import type { DeviceLocation } from './control.js';
import { UsbSpeed, type UsbDevice } from '../device.js';

export { EmulatedDevice, type ControlAnswer, type DeviceLocation, type PendingUrb } from './control.js';
export { KeyboardDevice, reportsFor } from './keyboard.js';
export { StorageDevice, type StorageSpeed } from './storage.js';
export { FileImage, MemoryImage, ScsiDisk, type BlockImage } from './disk.js';
export { parseCdb, ScsiSenseError, type ScsiCommand } from './scsi.js';
export { CbwError, decodeCbw, encodeCbw, encodeCsw, decodeCsw } from './bot.js';

export type EmulatedSpecErrorReason = 'syntax' | 'image' | 'text';

/** A `emulated:` spec that cannot make a device; the message names the spec. */
export class EmulatedSpecError extends Error {
  override readonly name = 'EmulatedSpecError';
  readonly code = 'ERR_USBIP_EMULATED_SPEC';
  readonly spec: string;
  /** 'syntax': not a spec of a known kind; 'image': the storage image cannot be used; 'text': the keyboard cannot type TEXT. */
  readonly reason: EmulatedSpecErrorReason;
  constructor(spec: string, reason: EmulatedSpecErrorReason, message: string, cause?: unknown) {
    super(`${spec}: ${message}`, cause === undefined ? undefined : { cause });
    this.spec = spec;
    this.reason = reason;
  }
}

const USAGE = 'expected emulated:storage:IMAGE[:ro][:hs|:ss] or emulated:keyboard[:TEXT]';

export type EmulatedSpec = { kind: 'storage'; image: string; readOnly: boolean; speed: StorageSpeed } | { kind: 'keyboard'; text: string };

/** Parses a spec without touching the file system. Throws EmulatedSpecError. */
export function parseEmulatedSpec(spec: string): EmulatedSpec {
  const m = /^emulated:([a-z]+)(?::(.*))?$/s.exec(spec);
  if (m === null) throw new EmulatedSpecError(spec, 'syntax', USAGE);
  const kind = m[1]!;
  const rest = m[2];
  switch (kind) {
    case 'storage': {
      if (rest === undefined || rest === '') throw new EmulatedSpecError(spec, 'syntax', `no image file (${USAGE})`);
      let image = rest;
      let readOnly = false;
      // SuperSpeed by default: usb-storage then moves 1 MiB per command instead of 120 KiB, so
      // about 8.5 times fewer URB round trips per byte over USB/IP (bench:usbip: 18.9 vs 14.9 MB/s).
      let speed: StorageSpeed = UsbSpeed.SUPER;
      if (image.endsWith(':ss')) {
        image = image.slice(0, -3);
      } else if (image.endsWith(':hs')) {
        image = image.slice(0, -3);
        speed = UsbSpeed.HIGH;
      }
      if (image.endsWith(':ro')) {
        image = image.slice(0, -3);
        readOnly = true;
      } else if (image.endsWith(':rw')) {
        image = image.slice(0, -3);
      }
      if (image === '') throw new EmulatedSpecError(spec, 'syntax', `no image file (${USAGE})`);
      return { kind: 'storage', image, readOnly, speed };
    }
    case 'keyboard':
      return { kind: 'keyboard', text: unescapeText(spec, rest ?? '') };
    default:
      throw new EmulatedSpecError(spec, 'syntax', `unknown emulated device "${kind}" (${USAGE})`);
  }
}

function unescapeText(spec: string, text: string): string {
  const escapes: Record<string, string> = { n: '\n', r: '\r', t: '\t', b: '\b', e: '\x1b', '\\': '\\', ':': ':' };
  return text.replace(/\\(.?)/gs, (_all, c: string) => {
    const v = escapes[c];
    if (v === undefined) throw new EmulatedSpecError(spec, 'text', `unknown escape "\\${c}" in the text (known: \\n \\r \\t \\b \\e \\\\ \\:)`);
    return v;
  });
}

/** Makes the device a `emulated:` spec describes (opening the image for storage). Throws EmulatedSpecError. */
export async function createEmulated(spec: string, opts: DeviceLocation): Promise<UsbDevice> {
  const parsed = parseEmulatedSpec(spec);
  if (parsed.kind === 'keyboard') {
    try {
      return new KeyboardDevice(opts, parsed.text);
    } catch (e) {
      throw new EmulatedSpecError(spec, 'text', e instanceof Error ? e.message : String(e), e);
    }
  }
  try {
    return await StorageDevice.open(parsed.image, parsed.readOnly, opts, parsed.speed);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    let why: string;
    if (code === 'ENOENT') why = `image ${parsed.image} does not exist`;
    else if (code === 'EISDIR') why = `${parsed.image} is not a regular file (a directory)`;
    else if (code === 'EACCES' || code === 'EROFS' || code === 'EPERM') why = `cannot open image ${parsed.image} ${parsed.readOnly ? 'read-only' : 'read-write (add :ro?)'}: ${code}`;
    else why = e instanceof Error ? e.message : String(e);
    throw new EmulatedSpecError(spec, 'image', why, e);
  }
}
