// emulated:storage:IMAGE[:ro][:hs|:ss] — a USB mass-storage device speaking Bulk-Only Transport
// (USB MSC BOT 1.0) with the SCSI transparent command set (interface class 8, subclass 6, protocol
// 0x50) over a ScsiDisk on the image. One bulk IN and one bulk OUT endpoint: 512-byte packets at
// high speed, 1024-byte packets with bursts of 16 at SuperSpeed (usbip speed 5: vhci-hcd puts it on
// its USB 3 root hub). The speed matters to the importer's throughput: Linux's usb-storage lets
// a SuperSpeed device move 2048 sectors (1 MiB) per SCSI command, a high-speed one 240 (120 KiB)
// (drivers/usb/storage/scsiglue.c slave_configure), and every command costs three URB round
// trips (CBW, data, CSW).
//
// The transport is a state machine over the two endpoint queues (control.ts): a CBW arrives on bulk
// OUT, then the data stage (bulk IN or OUT), then the CSW on bulk IN; the device only takes an URB
// from the queue its current phase reads, so a URB the host sends out of turn stays pending, as a
// real device NAKs it. Host and device disagreeing about the data stage follows the thirteen cases
// of BOT section 6.7:
//   case 1/6/12  host and device agree: transfer, CSW with the command's status.
//   case 2/3     host expects no data, the device would move some: CSW phase error, no data.
//   case 4/5     host wants more IN data than the device has (a failed command has none): the device
//                sends what it has (a short packet ends it), STALLs bulk IN, and the CSW carries the
//                residue (Linux's usb-storage then clears the halt and reads the CSW).
//   case 7       the device has more than the host wants: it sends the host's length, CSW phase error.
//   case 8       host IN, device wants OUT: STALL bulk IN, CSW phase error.
//   case 9/10/11/13  host sends more than the device takes (a failed command takes nothing) or the
//                wrong way: the device accepts and discards the extra data (the recommended choice),
//                CSW with the residue; case 10 and 13 (the device wants more than the host sends)
//                are phase errors, and the command does not run (nothing is written).
// A CBW that is not valid or not meaningful (section 6.2) wedges both bulk endpoints until a
// Bulk-Only Mass Storage Reset (section 5.3.4 Reset Recovery): CLEAR_FEATURE alone does not lift it.
import { createHash } from 'node:crypto';
import { realpath } from 'node:fs/promises';
import { BotRequest, CbwError, CSW_SIZE, CswStatus, decodeCbw, encodeCsw, type Cbw, type CswStatusValue } from './bot.js';
import { Recipient, RequestKind, type SetupPacket } from './ch9.js';
import { EmulatedDevice, urbError, type ControlAnswer, type DeviceLocation, type PendingUrb } from './control.js';
import type { DeviceSpec } from './descriptors.js';
import { FileImage, ScsiDisk, type BlockImage, type DiskIdentity, type ScsiPlan } from './disk.js';
import { UrbErrno, UsbSpeed } from '../device.js';

export const STORAGE_EP_IN = 0x81;
export const STORAGE_EP_OUT = 0x02;
/** pid.codes' test VID/PID (https://pid.codes/1209/0001/): never a real product, so no host quirk applies. */
export const STORAGE_VENDOR_ID = 0x1209;
export const STORAGE_PRODUCT_ID = 0x0001;
/**
 * The most one bulk URB moves. Linux sends at most max_sectors (240 blocks, 120 KiB, for a
 * high-speed device, 2048 blocks, 1 MiB, at SuperSpeed) per command; a bigger IN URB from a hostile importer gets this much, which ends
 * the data stage like a short packet, so no URB makes the device allocate more.
 */
export const MAX_BULK_URB = 4 << 20;

type Phase =
  | { kind: 'command' }
  | { kind: 'data-in'; tag: number; hostLength: number; toSend: number; sent: number; status: CswStatusValue; read: (offset: number, length: number) => Promise<Buffer> }
  | {
      kind: 'data-out';
      tag: number;
      hostLength: number;
      received: number;
      /** Bytes of the data stage the command uses (the rest is discarded). */
      toTake: number;
      /** Bytes the command has taken (written) so far; the residue is hostLength minus this. */
      taken: number;
      status: CswStatusValue;
      write: ((offset: number, data: Buffer) => Promise<void>) | null;
      finish: (() => Promise<void>) | null;
    }
  | { kind: 'status'; csw: Buffer }
  | { kind: 'reset-needed'; why: string };

export interface StorageOptions {
  location: DeviceLocation;
  /** USB iSerialNumber and SCSI unit serial; at least 12 hex digits (BOT 4.1.1). */
  serial: string;
  product?: string;
  /** UsbSpeed.HIGH (the default) or UsbSpeed.SUPER. */
  speed?: StorageSpeed;
}

export type StorageSpeed = typeof UsbSpeed.HIGH | typeof UsbSpeed.SUPER;

export function storageSpec(serial: string, product = 'prism emulated storage', speed: StorageSpeed = UsbSpeed.HIGH): DeviceSpec {
  const superSpeed = speed === UsbSpeed.SUPER;
  const packet = superSpeed ? 1024 : 512;
  // bMaxBurst 15: 16 packets per burst, what SuperSpeed disks commonly declare.
  const companion = superSpeed ? { superSpeed: { maxBurst: 15 } } : {};
  return {
    speed,
    usbVersion: superSpeed ? 0x0300 : 0x0200,
    deviceClass: 0, // per interface
    deviceSubClass: 0,
    deviceProtocol: 0,
    maxPacketSize0: superSpeed ? 9 : 64,
    idVendor: STORAGE_VENDOR_ID,
    idProduct: STORAGE_PRODUCT_ID,
    bcdDevice: 0x0100,
    manufacturer: 'prism',
    product,
    serialNumber: serial,
    configurations: [
      {
        value: 1,
        maxPowerMilliamps: 100,
        interfaces: [
          {
            number: 0,
            alternateSetting: 0,
            interfaceClass: 0x08, // mass storage
            interfaceSubClass: 0x06, // SCSI transparent command set
            interfaceProtocol: 0x50, // Bulk-Only Transport
            endpoints: [
              { address: STORAGE_EP_IN, kind: 'bulk', maxPacketSize: packet, interval: 0, ...companion },
              { address: STORAGE_EP_OUT, kind: 'bulk', maxPacketSize: packet, interval: 0, ...companion },
            ],
          },
        ],
      },
    ],
  };
}

export class StorageDevice extends EmulatedDevice {
  readonly disk: ScsiDisk;
  #phase: Phase = { kind: 'command' };
  #busy = false;
  /** Bumped by every reset; a step that finds it changed after an await leaves the new state alone. */
  #generation = 0;
  /** Why the device last wedged its endpoints (a CBW error), for logs and tests. */
  lastCbwError: CbwError | null = null;

  constructor(image: BlockImage, opts: StorageOptions) {
    super(storageSpec(opts.serial, opts.product, opts.speed), opts.location);
    const identity: DiskIdentity = { vendor: 'prism', product: 'Emulated Disk', revision: '0100', serial: opts.serial, removable: true };
    this.disk = new ScsiDisk(image, identity);
  }

  /** Opens IMAGE (O_RDONLY when readOnly) and builds the device; the serial derives from the image's real path. */
  static async open(path: string, readOnly: boolean, location: DeviceLocation, speed: StorageSpeed = UsbSpeed.HIGH): Promise<StorageDevice> {
    const image = await FileImage.open(path, readOnly);
    const serial = createHash('sha256').update(await realpath(path)).digest('hex').slice(0, 24).toUpperCase();
    return new StorageDevice(image, { location, serial, speed });
  }

  /** The BOT phase, for tests and logs. */
  get phase(): Phase['kind'] {
    return this.#phase.kind;
  }

  close(): Promise<void> {
    return this.disk.image.close();
  }

  override detached(): void {
    super.detached(); // calls deviceReset()
    this.disk.reset();
    // Linux's usb-storage assumes a write-through cache (scsiglue.c sets skip_ms_page_8), so it
    // may never send SYNCHRONIZE CACHE: make what the importer wrote durable when it leaves. A
    // failure here has no one to report to; the next SYNCHRONIZE CACHE would.
    this.disk.image.sync().catch(() => {});
  }

  // --- endpoint 0: the class requests (BOT section 3) ------------------------------------------------

  protected override controlRequest(s: SetupPacket, _data: Buffer): ControlAnswer {
    if (s.kind !== RequestKind.CLASS || s.recipient !== Recipient.INTERFACE || s.wIndex !== 0 || s.wValue !== 0) return null;
    switch (s.bRequest) {
      case BotRequest.RESET:
        if (s.direction !== 'out' || s.wLength !== 0) return null;
        this.#reset();
        // Reset Recovery goes on with CLEAR_FEATURE(HALT) on both endpoints (section 5.3.4); the
        // halts themselves survive the reset.
        this.unwedge(STORAGE_EP_IN);
        this.unwedge(STORAGE_EP_OUT);
        this.#pump();
        return true;
      case BotRequest.GET_MAX_LUN:
        return s.direction === 'in' && s.wLength >= 1 ? Buffer.from([0]) : null;
      default:
        return null;
    }
  }

  protected override deviceReset(): void {
    this.#reset();
  }

  protected override urbQueued(_address: number): void {
    this.#pump();
  }

  protected override haltCleared(_address: number): void {
    this.#pump();
  }

  #reset(): void {
    this.#generation++;
    this.#busy = false;
    this.#phase = { kind: 'command' };
  }

  // --- the state machine ---------------------------------------------------------------------------

  #pump(): void {
    if (this.#busy) return;
    const phase = this.#phase;
    let address: number;
    if (phase.kind === 'command' || phase.kind === 'data-out') address = STORAGE_EP_OUT;
    else if (phase.kind === 'data-in' || phase.kind === 'status') address = STORAGE_EP_IN;
    else return; // reset-needed: both endpoints are wedged
    const p = this.takeUrb(address);
    if (p === undefined) return;
    this.#busy = true;
    const gen = this.#generation;
    this.#step(p, phase, gen)
      .catch((e: unknown) => {
        // A bug, not the host's fault: answer this URB with -EIO and stall until Reset Recovery
        // (BOT 6.6.2, internal device error).
        p.complete(urbError(UrbErrno.EIO));
        if (gen === this.#generation) this.#wedge(`internal error: ${e instanceof Error ? e.message : String(e)}`);
      })
      .finally(() => {
        if (gen !== this.#generation) return;
        this.#busy = false;
        this.#pump();
      });
  }

  async #step(p: PendingUrb, phase: Phase, gen: number): Promise<void> {
    switch (phase.kind) {
      case 'command':
        return this.#command(p, gen);
      case 'data-in':
        return this.#dataIn(p, phase, gen);
      case 'data-out':
        return this.#dataOut(p, phase, gen);
      case 'status':
        this.#phase = { kind: 'command' };
        if (p.urb.transferBufferLength < CSW_SIZE) p.complete({ status: -UrbErrno.EOVERFLOW, data: phase.csw.subarray(0, p.urb.transferBufferLength) });
        else p.complete({ status: 0, data: phase.csw });
        return;
      case 'reset-needed':
        p.complete(urbError(UrbErrno.EPIPE));
        return;
    }
  }

  #wedge(why: string): void {
    this.#phase = { kind: 'reset-needed', why };
    this.wedge(STORAGE_EP_IN);
    this.wedge(STORAGE_EP_OUT);
  }

  #csw(tag: number, residue: number, status: CswStatusValue): void {
    this.#phase = { kind: 'status', csw: encodeCsw({ tag, residue, status }) };
  }

  #discard(cbw: Cbw, status: CswStatusValue): void {
    this.#phase = { kind: 'data-out', tag: cbw.tag, hostLength: cbw.dataTransferLength, received: 0, toTake: 0, taken: 0, status, write: null, finish: null };
  }

  async #command(p: PendingUrb, gen: number): Promise<void> {
    const bytes = p.urb.data;
    p.complete({ status: 0, data: Buffer.alloc(0), actualLength: bytes.length });
    let cbw: Cbw;
    try {
      cbw = decodeCbw(bytes, 0);
    } catch (e) {
      if (!(e instanceof CbwError)) throw e;
      this.lastCbwError = e;
      this.#wedge(e.message);
      return;
    }
    const H = cbw.dataTransferLength;
    const hostDir = H === 0 ? 'none' : cbw.direction;
    let plan: ScsiPlan | null;
    try {
      plan = this.disk.prepare(cbw.cb);
    } catch {
      plan = null; // CHECK CONDITION; the disk keeps the sense for REQUEST SENSE
    }
    if (plan !== null && plan.direction !== 'none' && plan.length === 0) plan = { direction: 'none', run: () => Promise.resolve() };

    if (plan === null || plan.direction === 'none') {
      let status: CswStatusValue = plan === null ? CswStatus.FAILED : CswStatus.PASSED;
      if (plan !== null) {
        try {
          await plan.run();
        } catch {
          status = CswStatus.FAILED;
        }
        if (gen !== this.#generation) return;
      }
      if (hostDir === 'none') this.#csw(cbw.tag, 0, status); // case 1
      else if (hostDir === 'in') {
        this.#csw(cbw.tag, H, status); // case 4
        this.halt(STORAGE_EP_IN);
      } else this.#discard(cbw, status); // case 9
      return;
    }
    const D = plan.length;
    if (hostDir === 'none') {
      this.#csw(cbw.tag, 0, CswStatus.PHASE_ERROR); // cases 2, 3
    } else if (hostDir === 'in') {
      if (plan.direction === 'out') {
        this.#csw(cbw.tag, H, CswStatus.PHASE_ERROR); // case 8
        this.halt(STORAGE_EP_IN);
      } else {
        // cases 5, 6, 7
        this.#phase = { kind: 'data-in', tag: cbw.tag, hostLength: H, toSend: Math.min(D, H), sent: 0, status: D > H ? CswStatus.PHASE_ERROR : CswStatus.PASSED, read: plan.read };
      }
    } else if (plan.direction === 'in' || D > H) {
      this.#discard(cbw, CswStatus.PHASE_ERROR); // cases 10, 13: the command does not run
    } else {
      // cases 11, 12
      this.#phase = { kind: 'data-out', tag: cbw.tag, hostLength: H, received: 0, toTake: D, taken: 0, status: CswStatus.PASSED, write: plan.write, finish: plan.finish };
    }
  }

  async #dataIn(p: PendingUrb, phase: Extract<Phase, { kind: 'data-in' }>, gen: number): Promise<void> {
    const want = p.urb.transferBufferLength;
    const n = Math.min(want, phase.toSend - phase.sent, MAX_BULK_URB);
    let data: Buffer = Buffer.alloc(0);
    let failed = false;
    if (n > 0) {
      try {
        data = await phase.read(phase.sent, n);
      } catch {
        failed = true; // the disk has recorded MEDIUM ERROR; end the data stage here
        data = Buffer.alloc(0);
      }
    }
    p.complete({ status: 0, data });
    if (gen !== this.#generation) return;
    phase.sent += data.length;
    if (failed && phase.status === CswStatus.PASSED) phase.status = CswStatus.FAILED;
    if (!failed && data.length === want && phase.sent < phase.toSend) return; // more to come
    // The data stage is over: all sent, a short packet, or a failure.
    this.#csw(phase.tag, phase.hostLength - phase.sent, phase.status);
    if (phase.sent < phase.hostLength) this.halt(STORAGE_EP_IN); // cases 4/5: less than the host asked for
  }

  async #dataOut(p: PendingUrb, phase: Extract<Phase, { kind: 'data-out' }>, gen: number): Promise<void> {
    const data = p.urb.data;
    const accept = Math.min(data.length, phase.hostLength - phase.received);
    const use = Math.max(0, Math.min(accept, phase.toTake - phase.received));
    if (use > 0 && phase.write !== null && phase.status === CswStatus.PASSED) {
      try {
        await phase.write(phase.received, data.subarray(0, use));
        phase.taken += use;
      } catch {
        phase.status = CswStatus.FAILED; // WRITE ERROR recorded; keep accepting (and dropping) the rest
      }
    }
    p.complete({ status: 0, data: Buffer.alloc(0), actualLength: accept });
    if (gen !== this.#generation) return;
    phase.received += accept;
    if (phase.received < phase.hostLength) return;
    if (phase.finish !== null && phase.status === CswStatus.PASSED) {
      try {
        await phase.finish();
      } catch {
        phase.status = CswStatus.FAILED;
      }
      if (gen !== this.#generation) return;
    }
    this.#csw(phase.tag, phase.hostLength - phase.taken, phase.status);
  }
}
