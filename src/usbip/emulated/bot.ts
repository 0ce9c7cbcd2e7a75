// USB Mass Storage Class Bulk-Only Transport 1.0 wrappers: the 31-byte Command Block Wrapper the
// host sends on bulk OUT (section 5.1) and the 13-byte Command Status Wrapper the device answers on
// bulk IN (section 5.2). Pure; little-endian fields. decodeCbw throws only CbwError.
import { StacklessError } from '../../codecs/stackless-error.js';

export const CBW_SIZE = 31;
export const CSW_SIZE = 13;
/** 'USBC' and 'USBS' read as little-endian u32. */
export const CBW_SIGNATURE = 0x43425355;
export const CSW_SIGNATURE = 0x53425355;
/** bmCBWFlags bit 7: data from the device to the host. */
export const CBW_FLAG_IN = 0x80;

/** bCSWStatus (section 5.2, table 5.3). */
export const CswStatus = { PASSED: 0, FAILED: 1, PHASE_ERROR: 2 } as const;
export type CswStatusValue = (typeof CswStatus)[keyof typeof CswStatus];

/** The class-specific requests on endpoint 0 (section 3.1, 3.2). */
export const BotRequest = { GET_MAX_LUN: 0xfe, RESET: 0xff } as const;

export interface Cbw {
  tag: number;
  /** dCBWDataTransferLength: bytes the host expects to move in the data stage (0: none). */
  dataTransferLength: number;
  /** bmCBWFlags bit 7; meaningless when dataTransferLength is 0. */
  direction: 'in' | 'out';
  lun: number;
  /** The command block: CBWCB's first bCBWCBLength bytes (1..16). */
  cb: Buffer;
}

export interface Csw {
  tag: number;
  residue: number;
  status: number;
}

/**
 * - 'length', 'signature': the CBW is not valid (section 6.2.1); the device must STALL and wait for
 *   a Reset Recovery.
 * - 'flags', 'lun', 'cb-length': valid but not meaningful (section 6.2.2: reserved bits set, a LUN
 *   the device does not have, bCBWCBLength outside 1..16).
 */
export type CbwErrorReason = 'length' | 'signature' | 'flags' | 'lun' | 'cb-length';

export class CbwError extends StacklessError {
  override readonly name = 'CbwError';
  readonly code = 'ERR_USB_MSC_CBW';
  readonly reason: CbwErrorReason;
  /** Whether the CBW was valid (only its contents were not meaningful). */
  readonly valid: boolean;
  constructor(reason: CbwErrorReason, message: string) {
    super(message);
    this.reason = reason;
    this.valid = reason !== 'length' && reason !== 'signature';
  }
}

/** Decodes a CBW from the bytes of one bulk OUT transfer; `maxLun` is what Get Max LUN answers. */
export function decodeCbw(b: Buffer, maxLun = 0): Cbw {
  if (b.length !== CBW_SIZE) throw new CbwError('length', `CBW of ${b.length} bytes, not ${CBW_SIZE}`);
  const signature = b.readUInt32LE(0);
  if (signature !== CBW_SIGNATURE) throw new CbwError('signature', `CBW signature 0x${signature.toString(16).padStart(8, '0')}`);
  const flags = b.readUInt8(12);
  if ((flags & ~CBW_FLAG_IN) !== 0) throw new CbwError('flags', `reserved bmCBWFlags bits in 0x${flags.toString(16)}`);
  const lunByte = b.readUInt8(13);
  if ((lunByte & 0xf0) !== 0 || lunByte > maxLun) throw new CbwError('lun', `LUN byte 0x${lunByte.toString(16)} (max LUN ${maxLun})`);
  const cbLength = b.readUInt8(14);
  if (cbLength < 1 || cbLength > 16) throw new CbwError('cb-length', `bCBWCBLength byte 0x${cbLength.toString(16)}`);
  return {
    tag: b.readUInt32LE(4),
    dataTransferLength: b.readUInt32LE(8),
    direction: (flags & CBW_FLAG_IN) !== 0 ? 'in' : 'out',
    lun: lunByte,
    cb: Buffer.from(b.subarray(15, 15 + cbLength)),
  };
}

/** Encodes a CBW (tests, fuzzing, clients); CBWCB bytes past cb are zero. */
export function encodeCbw(c: Cbw): Buffer {
  if (c.cb.length < 1 || c.cb.length > 16) throw new RangeError(`CBWCB of ${c.cb.length} bytes`);
  const b = Buffer.alloc(CBW_SIZE);
  b.writeUInt32LE(CBW_SIGNATURE, 0);
  b.writeUInt32LE(c.tag >>> 0, 4);
  b.writeUInt32LE(c.dataTransferLength >>> 0, 8);
  b.writeUInt8(c.direction === 'in' ? CBW_FLAG_IN : 0, 12);
  b.writeUInt8(c.lun & 0x0f, 13);
  b.writeUInt8(c.cb.length, 14);
  c.cb.copy(b, 15);
  return b;
}

export function encodeCsw(c: Csw): Buffer {
  const b = Buffer.alloc(CSW_SIZE);
  b.writeUInt32LE(CSW_SIGNATURE, 0);
  b.writeUInt32LE(c.tag >>> 0, 4);
  b.writeUInt32LE(c.residue >>> 0, 8);
  b.writeUInt8(c.status, 12);
  return b;
}

/** Decodes a CSW (tests and clients); null when it is not a valid CSW (section 6.3.1). */
export function decodeCsw(b: Buffer): Csw | null {
  if (b.length !== CSW_SIZE || b.readUInt32LE(0) !== CSW_SIGNATURE) return null;
  return { tag: b.readUInt32LE(4), residue: b.readUInt32LE(8), status: b.readUInt8(12) };
}
