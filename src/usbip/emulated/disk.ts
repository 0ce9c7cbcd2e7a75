// A SCSI direct-access logical unit (SBC-3) with 512-byte blocks on a BlockImage: it turns a CDB
// into a plan the transport carries out (no data, data to the host, data from the host) and keeps
// the sense data of the last failed command for REQUEST SENSE. Transport-independent: storage.ts
// runs it over USB Bulk-Only Transport; the tests run it on a MemoryImage.
//
// Sense handling follows Linux's f_mass_storage and SPC-4 5.11: a command that fails leaves its
// sense; the next command other than REQUEST SENSE clears it; REQUEST SENSE reports it (or NO
// SENSE) and clears it.
import { constants, type FileHandle, open } from 'node:fs/promises';
import { Asc, fixedSense, parseCdb, ScsiSenseError, type AscName, type ScsiCommand, type Sense } from './scsi.js';

export const BLOCK_SIZE = 512;

/** The bytes behind the disk. Offsets and lengths are always inside `size` (the disk checks). */
export interface BlockImage {
  /** Bytes; a positive multiple of BLOCK_SIZE. */
  readonly size: number;
  readonly readOnly: boolean;
  read(position: number, length: number): Promise<Buffer>;
  write(position: number, data: Buffer): Promise<void>;
  /** Makes written data durable (fdatasync). */
  sync(): Promise<void>;
  close(): Promise<void>;
}

/** A BlockImage on a regular file, with positioned reads and writes (pread/pwrite on the libuv pool). */
export class FileImage implements BlockImage {
  readonly #fh: FileHandle;
  private constructor(
    readonly path: string,
    readonly size: number,
    readonly readOnly: boolean,
    fh: FileHandle,
  ) {
    this.#fh = fh;
  }

  /** Opens a regular file whose size is a positive multiple of 512 (O_RDONLY for read-only). */
  static async open(path: string, readOnly: boolean): Promise<FileImage> {
    const fh = await open(path, readOnly ? constants.O_RDONLY : constants.O_RDWR);
    try {
      const st = await fh.stat();
      if (!st.isFile()) throw new RangeError(`${path} is not a regular file`);
      if (st.size === 0) throw new RangeError(`${path} is empty`);
      if (st.size % BLOCK_SIZE !== 0) {
        throw new RangeError(`${path} is ${st.size} bytes, not a multiple of ${BLOCK_SIZE} (truncate -s ${Math.ceil(st.size / BLOCK_SIZE) * BLOCK_SIZE} to pad it)`);
      }
      return new FileImage(path, st.size, readOnly, fh);
    } catch (e) {
      await fh.close();
      throw e;
    }
  }

  async read(position: number, length: number): Promise<Buffer> {
    const b = Buffer.allocUnsafe(length);
    for (let done = 0; done < length; ) {
      const { bytesRead } = await this.#fh.read(b, done, length - done, position + done);
      if (bytesRead === 0) throw new Error(`${this.path}: end of file at ${position + done} (the image shrank?)`);
      done += bytesRead;
    }
    return b;
  }

  async write(position: number, data: Buffer): Promise<void> {
    for (let done = 0; done < data.length; ) {
      const { bytesWritten } = await this.#fh.write(data, done, data.length - done, position + done);
      done += bytesWritten;
    }
  }

  sync(): Promise<void> {
    return this.#fh.datasync();
  }

  close(): Promise<void> {
    return this.#fh.close();
  }
}

/** A BlockImage in memory (tests, fuzzing). */
export class MemoryImage implements BlockImage {
  constructor(
    readonly bytes: Buffer,
    readonly readOnly = false,
  ) {
    if (bytes.length === 0 || bytes.length % BLOCK_SIZE !== 0) throw new RangeError(`image of ${bytes.length} bytes`);
  }
  get size(): number {
    return this.bytes.length;
  }
  read(position: number, length: number): Promise<Buffer> {
    return Promise.resolve(Buffer.from(this.bytes.subarray(position, position + length)));
  }
  write(position: number, data: Buffer): Promise<void> {
    data.copy(this.bytes, position);
    return Promise.resolve();
  }
  sync(): Promise<void> {
    return Promise.resolve();
  }
  close(): Promise<void> {
    return Promise.resolve();
  }
}

export interface DiskIdentity {
  /** T10 vendor identification, up to 8 ASCII characters. */
  vendor: string;
  /** Up to 16 ASCII characters. */
  product: string;
  /** Up to 4 ASCII characters. */
  revision: string;
  /** Unit serial number (VPD page 0x80), ASCII. */
  serial: string;
  /** Whether INQUIRY says the medium is removable (USB sticks do). */
  removable: boolean;
}

/**
 * What the transport carries out for a command. Plans throw only ScsiSenseError (the disk has
 * recorded the sense by then); `length` is what the device intends to move (SBC's "Di"/"Do").
 */
export type ScsiPlan =
  | { direction: 'none'; run: () => Promise<void> }
  | { direction: 'in'; length: number; read: (offset: number, length: number) => Promise<Buffer> }
  | { direction: 'out'; length: number; write: (offset: number, data: Buffer) => Promise<void>; finish: () => Promise<void> };

/** VPD pages this disk has (SPC-4 7.8). */
const VPD_SUPPORTED = 0x00;
const VPD_SERIAL = 0x80;
const VPD_IDENTIFICATION = 0x83;
const MODE_PAGE_CACHING = 0x08;
const MODE_PAGE_ALL = 0x3f;

function ascii(s: string, width: number): Buffer {
  const clean = s.replace(/[^\x20-\x7e]/g, '?').slice(0, width);
  return Buffer.from(clean.padEnd(width, ' '), 'ascii');
}

function cut(b: Buffer, allocationLength: number): Buffer {
  return b.length > allocationLength ? b.subarray(0, allocationLength) : b;
}

function staticIn(data: Buffer): ScsiPlan {
  return { direction: 'in', length: data.length, read: (offset, length) => Promise.resolve(data.subarray(offset, offset + length)) };
}

const NOTHING: ScsiPlan = { direction: 'none', run: () => Promise.resolve() };

export class ScsiDisk {
  readonly blocks: number;
  #sense: Sense | null = null;
  #prevent = false;
  #loaded = true;

  constructor(
    readonly image: BlockImage,
    readonly identity: DiskIdentity,
  ) {
    if (image.size <= 0 || image.size % BLOCK_SIZE !== 0) throw new RangeError(`image of ${image.size} bytes is not a positive multiple of ${BLOCK_SIZE}`);
    this.blocks = image.size / BLOCK_SIZE;
  }

  get readOnly(): boolean {
    return this.image.readOnly;
  }

  /** The sense REQUEST SENSE would report now (null: none). */
  get sense(): Sense | null {
    return this.#sense;
  }

  get loaded(): boolean {
    return this.#loaded;
  }

  /** Back to power-on state (the importer left): no sense, no prevent, medium loaded. */
  reset(): void {
    this.#sense = null;
    this.#prevent = false;
    this.#loaded = true;
  }

  /**
   * The plan for one CDB. Throws only ScsiSenseError, after recording its sense (a CDB the parser
   * refuses, an LBA beyond the disk, a write to a read-only disk, no medium ...).
   */
  prepare(cdb: Buffer): ScsiPlan {
    try {
      const cmd = parseCdb(cdb);
      if (cmd.op !== 'request-sense') this.#sense = null;
      return this.#plan(cmd, cdb.readUInt8(0));
    } catch (e) {
      throw this.fail(e);
    }
  }

  /** Records the sense for a failure and returns it as a ScsiSenseError (anything else is an internal target failure). */
  fail(e: unknown, otherwise: AscName = 'INTERNAL_TARGET_FAILURE'): ScsiSenseError {
    const err = e instanceof ScsiSenseError ? e : new ScsiSenseError(otherwise, -1, e instanceof Error ? e.message : String(e), e);
    this.#sense = err.sense;
    return err;
  }

  #needMedium(opcode: number): void {
    if (!this.#loaded) throw new ScsiSenseError('MEDIUM_NOT_PRESENT', opcode, 'medium ejected');
  }

  #checkRange(opcode: number, lba: number, blocks: number): void {
    // An LBA past the last block is out of range even for a zero-length transfer (SBC-3 4.5).
    if (lba + Math.max(blocks, 1) > this.blocks) {
      throw new ScsiSenseError('LOGICAL_BLOCK_ADDRESS_OUT_OF_RANGE', opcode, `LBA ${lba} + ${blocks} blocks > ${this.blocks}`);
    }
  }

  #plan(cmd: ScsiCommand, opcode: number): ScsiPlan {
    switch (cmd.op) {
      case 'test-unit-ready':
        this.#needMedium(opcode);
        return NOTHING;
      case 'request-sense': {
        // SPC-4 6.39: descriptor format is optional; a server without it refuses DESC=1.
        if (cmd.descriptorFormat) throw new ScsiSenseError('INVALID_FIELD_IN_CDB', opcode, 'descriptor-format sense is not supported');
        const data = fixedSense(this.#sense ?? Asc.NO_ADDITIONAL_SENSE_INFORMATION);
        this.#sense = null;
        return staticIn(cut(data, cmd.allocationLength));
      }
      case 'inquiry':
        return staticIn(cut(cmd.vpd ? this.#vpdPage(cmd.page, opcode) : this.#standardInquiry(), cmd.allocationLength));
      case 'mode-sense':
        return staticIn(cut(this.#modeSense(cmd, opcode), cmd.allocationLength));
      case 'start-stop-unit':
        if (cmd.loadEject && cmd.powerCondition === 0) {
          if (!cmd.start && this.#prevent) throw new ScsiSenseError('MEDIUM_REMOVAL_PREVENTED', opcode, 'eject while removal is prevented');
          this.#loaded = cmd.start;
        }
        return NOTHING;
      case 'prevent-allow-medium-removal':
        this.#prevent = cmd.prevent;
        return NOTHING;
      case 'read-capacity-10': {
        this.#needMedium(opcode);
        const b = Buffer.alloc(8);
        // SBC-3 5.15: a last LBA beyond 32 bits reads FFFFFFFFh, telling the host to use (16).
        b.writeUInt32BE(Math.min(this.blocks - 1, 0xffff_ffff), 0);
        b.writeUInt32BE(BLOCK_SIZE, 4);
        return staticIn(b);
      }
      case 'read-capacity-16': {
        this.#needMedium(opcode);
        const b = Buffer.alloc(32); // SBC-3 5.16: no protection, one logical block per physical block, no provisioning
        b.writeUInt32BE(Math.floor((this.blocks - 1) / 0x1_0000_0000), 0);
        b.writeUInt32BE((this.blocks - 1) % 0x1_0000_0000, 4);
        b.writeUInt32BE(BLOCK_SIZE, 8);
        return staticIn(cut(b, cmd.allocationLength));
      }
      case 'read': {
        this.#needMedium(opcode);
        this.#checkRange(opcode, cmd.lba, cmd.blocks);
        const base = cmd.lba * BLOCK_SIZE;
        return {
          direction: 'in',
          length: cmd.blocks * BLOCK_SIZE,
          read: async (offset, length) => {
            try {
              return await this.image.read(base + offset, length);
            } catch (e) {
              throw this.fail(e, 'UNRECOVERED_READ_ERROR');
            }
          },
        };
      }
      case 'write': {
        this.#needMedium(opcode);
        if (this.readOnly) throw new ScsiSenseError('WRITE_PROTECTED', opcode, 'the disk is read-only');
        this.#checkRange(opcode, cmd.lba, cmd.blocks);
        const base = cmd.lba * BLOCK_SIZE;
        const fua = cmd.fua;
        return {
          direction: 'out',
          length: cmd.blocks * BLOCK_SIZE,
          write: async (offset, data) => {
            try {
              await this.image.write(base + offset, data);
            } catch (e) {
              throw this.fail(e, 'WRITE_ERROR');
            }
          },
          // FUA: the data must be on the medium before the command completes (SBC-3 5.40).
          finish: async () => {
            if (!fua) return;
            try {
              await this.image.sync();
            } catch (e) {
              throw this.fail(e, 'WRITE_ERROR');
            }
          },
        };
      }
      case 'synchronize-cache':
        this.#needMedium(opcode);
        // NUMBER OF LOGICAL BLOCKS 0 means "to the last block" (SBC-3 5.22).
        this.#checkRange(opcode, cmd.lba, cmd.blocks === 0 ? 1 : cmd.blocks);
        return {
          direction: 'none',
          run: async () => {
            try {
              await this.image.sync();
            } catch (e) {
              throw this.fail(e, 'WRITE_ERROR');
            }
          },
        };
    }
  }

  /** Standard INQUIRY data, 36 bytes (SPC-4 6.6.2): an SPC-2 direct-access device, like most USB disks. */
  #standardInquiry(): Buffer {
    const b = Buffer.alloc(36);
    b.writeUInt8(0x00, 0); // peripheral qualifier 0 (connected), device type 0 (direct access block device)
    b.writeUInt8(this.identity.removable ? 0x80 : 0x00, 1);
    b.writeUInt8(0x04, 2); // VERSION: SPC-2 (so Linux sd starts with READ CAPACITY(10))
    b.writeUInt8(0x02, 3); // RESPONSE DATA FORMAT 2
    b.writeUInt8(36 - 5, 4); // ADDITIONAL LENGTH
    ascii(this.identity.vendor, 8).copy(b, 8);
    ascii(this.identity.product, 16).copy(b, 16);
    ascii(this.identity.revision, 4).copy(b, 32);
    return b;
  }

  #vpdPage(page: number, opcode: number): Buffer {
    const header = (code: number, body: Buffer): Buffer => {
      const b = Buffer.alloc(4 + body.length);
      b.writeUInt8(code, 1);
      b.writeUInt16BE(body.length, 2);
      body.copy(b, 4);
      return b;
    };
    switch (page) {
      case VPD_SUPPORTED:
        return header(VPD_SUPPORTED, Buffer.from([VPD_SUPPORTED, VPD_SERIAL, VPD_IDENTIFICATION]));
      case VPD_SERIAL:
        return header(VPD_SERIAL, ascii(this.identity.serial, Math.min(this.identity.serial.length, 252)));
      case VPD_IDENTIFICATION: {
        // One designator (SPC-4 7.8.6.4): T10 vendor ID based, ASCII, naming the logical unit by
        // vendor + product + serial.
        const id = Buffer.concat([ascii(this.identity.vendor, 8), ascii(this.identity.product, 16), ascii(this.identity.serial, Math.min(this.identity.serial.length, 200))]);
        const designator = Buffer.alloc(4 + id.length);
        designator.writeUInt8(0x02, 0); // code set ASCII
        designator.writeUInt8(0x01, 1); // association: logical unit; type 1: T10 vendor ID
        designator.writeUInt8(id.length, 3);
        id.copy(designator, 4);
        return header(VPD_IDENTIFICATION, designator);
      }
      default:
        throw new ScsiSenseError('INVALID_FIELD_IN_CDB', opcode, `VPD page 0x${page.toString(16)}`);
    }
  }

  /** MODE SENSE(6)/(10) (SPC-4 6.11, 6.12) with the caching page (SBC-3 6.4.5) and no block descriptors. */
  #modeSense(cmd: Extract<ScsiCommand, { op: 'mode-sense' }>, opcode: number): Buffer {
    if (cmd.pageControl === 'saved') throw new ScsiSenseError('SAVING_PARAMETERS_NOT_SUPPORTED', opcode, 'saved mode pages');
    const allSubpages = cmd.subpage === 0xff;
    if (cmd.subpage !== 0 && !(allSubpages && cmd.page === MODE_PAGE_ALL)) throw new ScsiSenseError('INVALID_FIELD_IN_CDB', opcode, `mode subpage 0x${cmd.subpage.toString(16)}`);
    if (cmd.page !== MODE_PAGE_CACHING && cmd.page !== MODE_PAGE_ALL) throw new ScsiSenseError('INVALID_FIELD_IN_CDB', opcode, `mode page 0x${cmd.page.toString(16)}`);
    const caching = Buffer.alloc(20);
    caching.writeUInt8(MODE_PAGE_CACHING, 0); // PS 0: not savable
    caching.writeUInt8(caching.length - 2, 1);
    // WCE: writes land in the host's page cache and reach the image's medium on SYNCHRONIZE
    // CACHE (fdatasync). Nothing is changeable, so the "changeable" mask is all zeros.
    if (cmd.pageControl !== 'changeable' && !this.readOnly) caching.writeUInt8(0x04, 2);
    const pages = caching;
    // Device-specific parameter (SBC-3 6.4.1): WP bit 7 for a read-only disk.
    const wp = this.readOnly ? 0x80 : 0x00;
    if (cmd.cdbLength === 6) {
      const head = Buffer.alloc(4);
      head.writeUInt8(head.length + pages.length - 1, 0); // MODE DATA LENGTH excludes itself
      head.writeUInt8(wp, 2);
      return Buffer.concat([head, pages]);
    }
    const head = Buffer.alloc(8);
    head.writeUInt16BE(head.length + pages.length - 2, 0);
    head.writeUInt8(wp, 3);
    return Buffer.concat([head, pages]);
  }
}
