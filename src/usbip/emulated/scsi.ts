// SCSI command descriptor blocks → typed commands, for the emulated USB disk. Pure: bytes in, a
// ScsiCommand or a ScsiSenseError (the sense a device server reports for that CDB) out; nothing
// here knows the disk's size or state, so every CDB can be fuzzed on its own. The commands are the
// ones Linux's sd + usb-storage send to a USB disk (drivers/scsi/sd.c, drivers/usb/storage/
// scsiglue.c: 36-byte INQUIRY, TEST UNIT READY, READ CAPACITY(10) before (16), MODE SENSE(6) of
// page 0x3f with 192 bytes, READ/WRITE(10), SYNCHRONIZE CACHE(10), PREVENT ALLOW MEDIUM REMOVAL,
// START STOP UNIT, REQUEST SENSE) plus the 6-, 12- and 16-byte READ/WRITE other hosts use.
// Field layouts cite SPC-4 (INQUIRY, REQUEST SENSE, MODE SENSE, TEST UNIT READY, PREVENT ALLOW)
// and SBC-3 (READ/WRITE, READ CAPACITY, SYNCHRONIZE CACHE, START STOP UNIT).
import { StacklessError } from '../../codecs/stackless-error.js';

/** Operation codes (SPC-4 annex D). */
export const Opcode = {
  TEST_UNIT_READY: 0x00,
  REQUEST_SENSE: 0x03,
  READ_6: 0x08,
  WRITE_6: 0x0a,
  INQUIRY: 0x12,
  MODE_SENSE_6: 0x1a,
  START_STOP_UNIT: 0x1b,
  PREVENT_ALLOW_MEDIUM_REMOVAL: 0x1e,
  READ_CAPACITY_10: 0x25,
  READ_10: 0x28,
  WRITE_10: 0x2a,
  SYNCHRONIZE_CACHE_10: 0x35,
  MODE_SENSE_10: 0x5a,
  READ_16: 0x88,
  WRITE_16: 0x8a,
  SYNCHRONIZE_CACHE_16: 0x91,
  SERVICE_ACTION_IN_16: 0x9e,
  READ_12: 0xa8,
  WRITE_12: 0xaa,
} as const;

/** SERVICE ACTION IN(16) service actions (SBC-3 5.16). */
export const ServiceActionIn = { READ_CAPACITY_16: 0x10 } as const;

/** Sense keys (SPC-4 table 48). */
export const SenseKey = {
  NO_SENSE: 0x0,
  RECOVERED_ERROR: 0x1,
  NOT_READY: 0x2,
  MEDIUM_ERROR: 0x3,
  HARDWARE_ERROR: 0x4,
  ILLEGAL_REQUEST: 0x5,
  UNIT_ATTENTION: 0x6,
  DATA_PROTECT: 0x7,
  ABORTED_COMMAND: 0xb,
} as const;

export interface Sense {
  key: number;
  asc: number;
  ascq: number;
}

/** The additional sense codes prism reports (SPC-4 table 49), by name. */
export const Asc = {
  NO_ADDITIONAL_SENSE_INFORMATION: { key: SenseKey.NO_SENSE, asc: 0x00, ascq: 0x00 },
  INVALID_COMMAND_OPERATION_CODE: { key: SenseKey.ILLEGAL_REQUEST, asc: 0x20, ascq: 0x00 },
  LOGICAL_BLOCK_ADDRESS_OUT_OF_RANGE: { key: SenseKey.ILLEGAL_REQUEST, asc: 0x21, ascq: 0x00 },
  INVALID_FIELD_IN_CDB: { key: SenseKey.ILLEGAL_REQUEST, asc: 0x24, ascq: 0x00 },
  SAVING_PARAMETERS_NOT_SUPPORTED: { key: SenseKey.ILLEGAL_REQUEST, asc: 0x39, ascq: 0x00 },
  MEDIUM_REMOVAL_PREVENTED: { key: SenseKey.ILLEGAL_REQUEST, asc: 0x53, ascq: 0x02 },
  WRITE_PROTECTED: { key: SenseKey.DATA_PROTECT, asc: 0x27, ascq: 0x00 },
  MEDIUM_NOT_PRESENT: { key: SenseKey.NOT_READY, asc: 0x3a, ascq: 0x00 },
  UNRECOVERED_READ_ERROR: { key: SenseKey.MEDIUM_ERROR, asc: 0x11, ascq: 0x00 },
  WRITE_ERROR: { key: SenseKey.MEDIUM_ERROR, asc: 0x0c, ascq: 0x00 },
  INTERNAL_TARGET_FAILURE: { key: SenseKey.HARDWARE_ERROR, asc: 0x44, ascq: 0x00 },
} as const satisfies Record<string, Sense>;

export type AscName = keyof typeof Asc;

/**
 * A command the device server refuses: CHECK CONDITION with this sense. The one error the parser
 * throws, for any bytes. No stack: a host can make the device build one per command it sends.
 */
export class ScsiSenseError extends StacklessError {
  override readonly name = 'ScsiSenseError';
  readonly code = 'ERR_SCSI_CHECK_CONDITION';
  readonly senseName: AscName;
  readonly sense: Sense;
  /** The operation code of the refused CDB (-1 for an empty CDB). */
  readonly opcode: number;
  constructor(senseName: AscName, opcode: number, detail: string, cause?: unknown) {
    super(`${senseName.replace(/_/g, ' ')}: ${detail}`, cause === undefined ? undefined : { cause });
    this.senseName = senseName;
    this.sense = Asc[senseName];
    this.opcode = opcode;
  }
}

/** MODE SENSE page control (SPC-4 table 98). */
export type PageControl = 'current' | 'changeable' | 'default' | 'saved';
const pageControls: readonly PageControl[] = ['current', 'changeable', 'default', 'saved'];

export type ScsiCommand =
  | { op: 'test-unit-ready' }
  | { op: 'request-sense'; descriptorFormat: boolean; allocationLength: number }
  | { op: 'inquiry'; vpd: boolean; page: number; allocationLength: number }
  | { op: 'mode-sense'; cdbLength: 6 | 10; disableBlockDescriptors: boolean; longLba: boolean; pageControl: PageControl; page: number; subpage: number; allocationLength: number }
  | { op: 'start-stop-unit'; immediate: boolean; powerCondition: number; loadEject: boolean; start: boolean }
  | { op: 'prevent-allow-medium-removal'; prevent: boolean }
  | { op: 'read-capacity-10' }
  | { op: 'read-capacity-16'; allocationLength: number }
  | { op: 'read'; cdbLength: 6 | 10 | 12 | 16; lba: number; blocks: number; fua: boolean }
  | { op: 'write'; cdbLength: 6 | 10 | 12 | 16; lba: number; blocks: number; fua: boolean }
  | { op: 'synchronize-cache'; cdbLength: 10 | 16; immediate: boolean; lba: number; blocks: number };

export type ScsiOp = ScsiCommand['op'];

/**
 * The largest LBA + block count a command may carry. File offsets are JavaScript numbers, so no
 * image prism serves reaches 2^53 blocks; a larger address is out of range for every device, and
 * refusing it here keeps every number in a ScsiCommand exact.
 */
export const MAX_LBA_END = Number.MAX_SAFE_INTEGER;

const knownOpcodes: ReadonlySet<number> = new Set(Object.values(Opcode));

/** The CDB length of each operation code group (SPC-4 4.2.5.1). Groups 3 and 6/7 are reserved/vendor. */
function cdbLengthOf(opcode: number): number {
  switch (opcode >> 5) {
    case 0:
      return 6;
    case 1:
    case 2:
      return 10;
    case 4:
      return 16;
    case 5:
      return 12;
    default:
      return 0;
  }
}

function invalidField(opcode: number, what: string): ScsiSenseError {
  return new ScsiSenseError('INVALID_FIELD_IN_CDB', opcode, what);
}

function u64(cdb: Buffer, at: number, opcode: number, blocks: number): number {
  const hi = cdb.readUInt32BE(at);
  const lo = cdb.readUInt32BE(at + 4);
  // hi < 2^21 keeps hi * 2^32 + lo below 2^53.
  if (hi >= 0x20_0000 || hi * 0x1_0000_0000 + lo + blocks > MAX_LBA_END) {
    throw new ScsiSenseError('LOGICAL_BLOCK_ADDRESS_OUT_OF_RANGE', opcode, `LBA 0x${hi.toString(16)}${lo.toString(16).padStart(8, '0')} is beyond any device`);
  }
  return hi * 0x1_0000_0000 + lo;
}

/**
 * Parses one CDB (as carried in a CBW: `cdb` is its bCBWCBLength bytes). Throws only
 * ScsiSenseError: INVALID COMMAND OPERATION CODE for an operation this device server does not
 * implement (or an empty CDB), INVALID FIELD IN CDB for a CDB shorter than its operation's length,
 * a reserved or unsupported field value, or NACA set in the CONTROL byte.
 */
export function parseCdb(cdb: Buffer): ScsiCommand {
  if (cdb.length === 0) throw new ScsiSenseError('INVALID_COMMAND_OPERATION_CODE', -1, 'empty CDB');
  const opcode = cdb.readUInt8(0);
  const need = cdbLengthOf(opcode);
  if (!knownOpcodes.has(opcode) || need === 0) throw new ScsiSenseError('INVALID_COMMAND_OPERATION_CODE', opcode, `operation code 0x${opcode.toString(16).padStart(2, '0')}`);
  if (cdb.length < need) throw invalidField(opcode, `${cdb.length}-byte CDB for a ${need}-byte command`);
  // CONTROL byte (SAM-5 5.2): NACA (bit 2) asks for ACA handling, which this server does not do.
  if ((cdb.readUInt8(need - 1) & 0x04) !== 0) throw invalidField(opcode, 'NACA set in CONTROL');
  const b1 = cdb.readUInt8(1);
  switch (opcode) {
    case Opcode.TEST_UNIT_READY:
      return { op: 'test-unit-ready' };
    case Opcode.REQUEST_SENSE:
      return { op: 'request-sense', descriptorFormat: (b1 & 0x01) !== 0, allocationLength: cdb.readUInt8(4) };
    case Opcode.INQUIRY: {
      // SPC-4 6.6: EVPD is bit 0; bit 1 was CMDDT (obsolete, must be zero now).
      if ((b1 & 0x02) !== 0) throw invalidField(opcode, 'CMDDT set');
      const vpd = (b1 & 0x01) !== 0;
      const page = cdb.readUInt8(2);
      if (!vpd && page !== 0) throw invalidField(opcode, `page code 0x${page.toString(16)} without EVPD`);
      return { op: 'inquiry', vpd, page, allocationLength: cdb.readUInt16BE(3) };
    }
    case Opcode.MODE_SENSE_6:
    case Opcode.MODE_SENSE_10: {
      const six = opcode === Opcode.MODE_SENSE_6;
      const b2 = cdb.readUInt8(2);
      return {
        op: 'mode-sense',
        cdbLength: six ? 6 : 10,
        disableBlockDescriptors: (b1 & 0x08) !== 0,
        longLba: !six && (b1 & 0x10) !== 0,
        pageControl: pageControls[b2 >> 6] as PageControl,
        page: b2 & 0x3f,
        subpage: cdb.readUInt8(3),
        allocationLength: six ? cdb.readUInt8(4) : cdb.readUInt16BE(7),
      };
    }
    case Opcode.START_STOP_UNIT: {
      const b4 = cdb.readUInt8(4);
      return { op: 'start-stop-unit', immediate: (b1 & 0x01) !== 0, powerCondition: b4 >> 4, loadEject: (b4 & 0x02) !== 0, start: (b4 & 0x01) !== 0 };
    }
    case Opcode.PREVENT_ALLOW_MEDIUM_REMOVAL: {
      // SPC-4 6.13: 00b allowed, 01b prevented; 10b and 11b are obsolete.
      const prevent = cdb.readUInt8(4) & 0x03;
      if (prevent > 1) throw invalidField(opcode, `PREVENT ${prevent}`);
      return { op: 'prevent-allow-medium-removal', prevent: prevent === 1 };
    }
    case Opcode.READ_CAPACITY_10:
      // SBC-3 5.15: with PMI zero the LOGICAL BLOCK ADDRESS field must be zero.
      if ((cdb.readUInt8(8) & 0x01) === 0 && cdb.readUInt32BE(2) !== 0) throw invalidField(opcode, 'LBA without PMI');
      return { op: 'read-capacity-10' };
    case Opcode.SERVICE_ACTION_IN_16: {
      const action = b1 & 0x1f;
      if (action !== ServiceActionIn.READ_CAPACITY_16) throw invalidField(opcode, `service action 0x${action.toString(16)}`);
      if ((cdb.readUInt8(14) & 0x01) === 0 && (cdb.readUInt32BE(2) !== 0 || cdb.readUInt32BE(6) !== 0)) throw invalidField(opcode, 'LBA without PMI');
      return { op: 'read-capacity-16', allocationLength: cdb.readUInt32BE(10) };
    }
    case Opcode.READ_6:
    case Opcode.WRITE_6: {
      // SBC-3 5.7/5.36: 21-bit LBA; a TRANSFER LENGTH of 0 means 256 blocks.
      const lba = cdb.readUIntBE(1, 3) & 0x1f_ffff;
      const n = cdb.readUInt8(4);
      return { op: opcode === Opcode.READ_6 ? 'read' : 'write', cdbLength: 6, lba, blocks: n === 0 ? 256 : n, fua: false };
    }
    case Opcode.READ_10:
    case Opcode.WRITE_10:
    case Opcode.READ_12:
    case Opcode.WRITE_12:
    case Opcode.READ_16:
    case Opcode.WRITE_16: {
      const read = opcode === Opcode.READ_10 || opcode === Opcode.READ_12 || opcode === Opcode.READ_16;
      // RDPROTECT/WRPROTECT (bits 7..5): this device has no protection information (SBC-3 5.8).
      if ((b1 & 0xe0) !== 0) throw invalidField(opcode, `${read ? 'RD' : 'WR'}PROTECT ${b1 >> 5} without protection information`);
      const fua = (b1 & 0x08) !== 0;
      const cdbLength = need as 10 | 12 | 16;
      let lba: number;
      let blocks: number;
      if (cdbLength === 10) {
        lba = cdb.readUInt32BE(2);
        blocks = cdb.readUInt16BE(7);
      } else if (cdbLength === 12) {
        lba = cdb.readUInt32BE(2);
        blocks = cdb.readUInt32BE(6);
      } else {
        blocks = cdb.readUInt32BE(10);
        lba = u64(cdb, 2, opcode, blocks);
      }
      return { op: read ? 'read' : 'write', cdbLength, lba, blocks, fua };
    }
    case Opcode.SYNCHRONIZE_CACHE_10:
      return { op: 'synchronize-cache', cdbLength: 10, immediate: (b1 & 0x02) !== 0, lba: cdb.readUInt32BE(2), blocks: cdb.readUInt16BE(7) };
    case Opcode.SYNCHRONIZE_CACHE_16: {
      const blocks = cdb.readUInt32BE(10);
      return { op: 'synchronize-cache', cdbLength: 16, immediate: (b1 & 0x02) !== 0, lba: u64(cdb, 2, opcode, blocks), blocks };
    }
    default:
      throw new ScsiSenseError('INVALID_COMMAND_OPERATION_CODE', opcode, `operation code 0x${opcode.toString(16).padStart(2, '0')}`);
  }
}

/** Fixed-format sense data, 18 bytes (SPC-4 4.5.3): response code 70h (current error). */
export function fixedSense(s: Sense): Buffer {
  const b = Buffer.alloc(18);
  b.writeUInt8(0x70, 0);
  b.writeUInt8(s.key & 0x0f, 2);
  b.writeUInt8(10, 7); // ADDITIONAL SENSE LENGTH: bytes 8..17
  b.writeUInt8(s.asc, 12);
  b.writeUInt8(s.ascq, 13);
  return b;
}
