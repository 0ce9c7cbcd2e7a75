// A real USB device of this machine as a UsbDevice, through libusb (the `usb` npm package's
// legacy API). The device is held only while an importer has it, the way Qubes' USB VM hands a
// device to usbip-host on attach and back to its own drivers on detach:
// - attached(): the device is opened, each interface of the active configuration loses its kernel
//   driver (remembered) and is claimed;
// - detached(): every transfer still running is cancelled, and once they have all completed the
//   interfaces are released, the drivers we took them from attached again and the device closed
//   (an open node-usb device keeps the process alive, and the next import opens it afresh).
// URBs become libusb transfers on the same endpoint, with no timeout (an importer that gives up
// unlinks, and the AbortSignal cancels the transfer). Control requests that change what the
// exporting host's USB core keeps (configuration, alternate settings, halts) are carried out with
// the matching libusb call instead (rules.ts, classifyControl). Isochronous endpoints are refused
// with -EINVAL: node-usb's Transfer has no ISO packet descriptors (it allocates none), so an ISO
// transfer cannot be expressed. A device that goes away completes what was running with
// -ESHUTDOWN and every later URB with -ENODEV; nothing of it reaches the server as an exception.
import { UrbErrno, type IsoPacket, type Urb, type UrbResult, type UsbDevice, type UsbDeviceInfo } from '../device.js';
import { TransferType } from '../emulated/ch9.js';
import type { LogFn } from '../server.js';
import { LibusbError, LibusbTransferStatus, classifyControl, urbStatusOfLibusbError, urbStatusOfTransfer } from './rules.js';

// --- the slice of node-usb this device uses (test/usbip-host.test.ts fakes it) ----------------------

export interface LibusbEndpointDescriptor { bEndpointAddress: number; bmAttributes: number; wMaxPacketSize: number }
export interface LibusbInterfaceDescriptor {
  bInterfaceNumber: number; bAlternateSetting: number;
  bInterfaceClass: number; bInterfaceSubClass: number; bInterfaceProtocol: number;
  endpoints: LibusbEndpointDescriptor[];
}
export interface LibusbConfigDescriptor { bConfigurationValue: number; interfaces: LibusbInterfaceDescriptor[][] }
export interface LibusbDeviceDescriptor {
  bcdUSB: number; bDeviceClass: number; bDeviceSubClass: number; bDeviceProtocol: number; bMaxPacketSize0: number;
  idVendor: number; idProduct: number; bcdDevice: number; bNumConfigurations: number;
}
/** What a synchronous libusb call throws and a transfer callback gets: `errno` is a libusb_error or a libusb_transfer_status. */
export interface LibusbFailure { errno?: number; message: string }
type Done = (error?: LibusbFailure) => void;

/**
 * usb.Device. The device uses node-usb's bindings (the `__` methods, one libusb call each) rather
 * than its Interface objects, which address interfaces and alternate settings by array index
 * where libusb wants their numbers.
 */
export interface LibusbDevice {
  readonly busNumber: number;
  readonly deviceAddress: number;
  readonly portNumbers: number[] | undefined;
  readonly deviceDescriptor: LibusbDeviceDescriptor;
  /** The active configuration; undefined when the device is unconfigured. */
  readonly configDescriptor: LibusbConfigDescriptor | undefined;
  open(defaultConfig?: boolean): void;
  close(): void;
  __isKernelDriverActive(interfaceNumber: number): boolean;
  __detachKernelDriver(interfaceNumber: number): void;
  __attachKernelDriver(interfaceNumber: number): void;
  __claimInterface(interfaceNumber: number): void;
  __releaseInterface(interfaceNumber: number, done: Done): void;
  __setInterface(interfaceNumber: number, altSetting: number, done: Done): void;
  __clearHalt(endpoint: number, done: Done): void;
  __setConfiguration(value: number, done: Done): void;
}

/** usb.Transfer. */
export interface LibusbTransfer {
  submit(buffer: Buffer): unknown;
  /** True if it was pending (its callback will say CANCELLED), false if it was not. */
  cancel(): boolean;
}

/** The module: its device list and `new usb.Transfer(device, endpoint, type, timeout, callback)`. */
export interface Libusb {
  getDeviceList(): LibusbDevice[];
  transfer(device: LibusbDevice, endpoint: number, type: number, timeoutMs: number, done: (error: LibusbFailure | undefined, buffer: Buffer, actualLength: number) => void): LibusbTransfer;
}

// ---------------------------------------------------------------------------------------------------

/** Linux URB transfer_flags (include/linux/usb.h) the device honours. */
const URB_SHORT_NOT_OK = 0x0001;
const URB_ZERO_PACKET = 0x0040;
const SETUP_SIZE = 8;

interface EndpointInfo { type: number; maxPacketSize: number; interfaceNumber: number }
interface TransferOutcome { status: number; actual: number }

function errnoOf(e: unknown): number | undefined {
  const n = (e as { errno?: unknown } | null)?.errno;
  return typeof n === 'number' ? n : undefined;
}

function messageOf(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

export class HostUsbDevice implements UsbDevice {
  /** Endpoint address (with the direction bit) → what it is, in the current configuration and alternate settings. */
  private endpoints = new Map<number, EndpointInfo>();
  /** Interface number → its current alternate setting (0 unless SET_INTERFACE said otherwise). */
  private readonly alts = new Map<number, number>();
  private readonly claimed = new Set<number>();
  /** Interfaces whose kernel driver we detached, to attach again when the importer lets go. */
  private readonly driversTaken = new Set<number>();
  private readonly running = new Set<LibusbTransfer>();
  private idleWaiters: (() => void)[] = [];
  /** Attach, detach and configuration changes, one after the other; URBs wait for the last. */
  private chain: Promise<unknown> = Promise.resolve();
  private gone = false;
  private isOpen = false;
  private vanish: (why: string) => void = () => undefined;
  /** Settles when libusb reports the device gone (LIBUSB_ERROR_NO_DEVICE): the server ends its import. */
  readonly vanished = new Promise<string>((resolve) => (this.vanish = resolve));

  constructor(
    private readonly lib: Libusb,
    private readonly dev: LibusbDevice,
    readonly info: UsbDeviceInfo,
    /** The device's kernel name on this machine (BUS-PORT), for logs. */
    readonly hostName: string,
    private readonly log: LogFn,
  ) {
    this.rebuildEndpoints();
  }

  attached(): void {
    // A failure is logged by serially(); the URBs then meet what is left.
    this.serially(() => {
      this.open();
      this.take();
    }).catch(() => undefined);
  }

  detached(): void {
    for (const t of this.running) this.cancel(t);
    this.serially(() => this.giveBack()).catch(() => undefined);
  }

  /** Gives the device back (as detached() does) and resolves once it is: for a server that stops. */
  async close(): Promise<void> {
    for (const t of this.running) this.cancel(t);
    await this.serially(() => this.giveBack()).catch(() => undefined);
  }

  async submit(urb: Urb, signal: AbortSignal): Promise<UrbResult> {
    await this.chain;
    if (signal.aborted) return this.fail(urb, -UrbErrno.ECONNRESET);
    if (this.gone) return this.fail(urb, -UrbErrno.ENODEV);
    if (urb.endpoint === 0) return this.control(urb, signal);
    const address = urb.endpoint | (urb.direction === 'in' ? 0x80 : 0);
    const ep = this.endpoints.get(address);
    // usb_submit_urb's answer for an endpoint the current configuration and settings do not have.
    if (ep === undefined) return this.fail(urb, -UrbErrno.ENOENT);
    if (ep.type === TransferType.ISOCHRONOUS || ep.type === TransferType.CONTROL) return this.fail(urb, -UrbErrno.EINVAL);
    if (urb.direction === 'in') {
      const buffer = Buffer.alloc(urb.transferBufferLength);
      const r = await this.transfer(address, ep.type, buffer, signal);
      let status = r.status;
      if (status === 0 && (urb.transferFlags & URB_SHORT_NOT_OK) !== 0 && r.actual < urb.transferBufferLength) status = -UrbErrno.EREMOTEIO;
      return { status, data: buffer.subarray(0, r.actual) };
    }
    const r = await this.transfer(address, ep.type, urb.data, signal);
    // libusb's ADD_ZERO_PACKET flag is not reachable through node-usb: the terminating
    // zero-length packet URB_ZERO_PACKET asks for is a transfer of its own.
    const n = urb.data.length;
    if (r.status === 0 && (urb.transferFlags & URB_ZERO_PACKET) !== 0 && n > 0 && ep.maxPacketSize > 0 && n % ep.maxPacketSize === 0) {
      const zlp = await this.transfer(address, ep.type, Buffer.alloc(0), signal);
      return { status: zlp.status, data: Buffer.alloc(0), actualLength: r.actual };
    }
    return { status: r.status, data: Buffer.alloc(0), actualLength: r.actual };
  }

  // --- endpoint 0 --------------------------------------------------------------------------------

  private async control(urb: Urb, signal: AbortSignal): Promise<UrbResult> {
    const action = classifyControl(urb.setup);
    const none = Buffer.alloc(0);
    switch (action.kind) {
      case 'set-configuration':
        return { status: await this.serially(() => this.setConfiguration(action.value)), data: none };
      case 'set-interface':
        return { status: await this.serially(() => this.setInterface(action.interfaceNumber, action.altSetting)), data: none };
      case 'clear-halt': {
        const status = await this.call((done) => this.dev.__clearHalt(action.endpoint, done));
        this.log('debug', 'host usb clear halt', { device: this.hostName, endpoint: action.endpoint, status });
        return { status, data: none };
      }
      case 'refuse':
        this.log('info', 'host usb control request refused', { device: this.hostName, setup: urb.setup.toString('hex'), why: action.why });
        return { status: -UrbErrno.EPIPE, data: none };
      case 'pass':
        break;
    }
    const buffer = Buffer.alloc(SETUP_SIZE + urb.transferBufferLength);
    urb.setup.copy(buffer, 0, 0, SETUP_SIZE);
    if (urb.direction === 'out') urb.data.copy(buffer, SETUP_SIZE);
    const r = await this.transfer(0, TransferType.CONTROL, buffer, signal);
    // libusb counts the data stage only (actual_length excludes the setup packet).
    const actual = Math.min(r.actual, urb.transferBufferLength);
    if (urb.direction === 'in') return { status: r.status, data: buffer.subarray(SETUP_SIZE, SETUP_SIZE + actual) };
    return { status: r.status, data: none, actualLength: actual };
  }

  private async setConfiguration(value: number): Promise<number> {
    const current = this.dev.configDescriptor?.bConfigurationValue ?? 0;
    if (value === current) {
      // The importer's USB core sets the configuration it enumerated; the device is in it already.
      // Re-selecting it through usbfs would need every interface released (and the kernel's
      // drivers would probe them again), so only what SET_CONFIGURATION resets that the importer
      // relies on is redone: every interface back to alternate setting 0.
      let status = 0;
      for (const [n, alt] of this.alts) {
        if (alt === 0) continue;
        const s = await this.call((done) => this.dev.__setInterface(n, 0, done));
        if (s === 0) this.alts.set(n, 0);
        else status ||= s;
      }
      this.rebuildEndpoints();
      return status;
    }
    await this.stopTransfers();
    await this.releaseAll();
    const status = await this.call((done) => this.dev.__setConfiguration(value, done));
    this.log('info', 'host usb set configuration', { device: this.hostName, from: current, to: value, status });
    this.alts.clear();
    // usb_set_configuration probed the kernel's drivers on the new interfaces: take them again.
    this.take();
    return status;
  }

  private async setInterface(interfaceNumber: number, altSetting: number): Promise<number> {
    const status = await this.call((done) => this.dev.__setInterface(interfaceNumber, altSetting, done));
    this.log('debug', 'host usb set interface', { device: this.hostName, interface: interfaceNumber, altSetting, status });
    if (status === 0) {
      this.alts.set(interfaceNumber, altSetting);
      this.rebuildEndpoints();
    }
    return status;
  }

  // --- claiming ----------------------------------------------------------------------------------

  private interfaceNumbers(): number[] {
    const config = this.dev.configDescriptor;
    if (config === undefined) return [];
    return config.interfaces.map((alts) => alts[0]?.bInterfaceNumber).filter((n): n is number => n !== undefined);
  }

  /** Takes every interface of the active configuration from its kernel driver and claims it. */
  private take(): void {
    if (this.gone) return;
    for (const n of this.interfaceNumbers()) {
      if (this.claimed.has(n)) continue;
      try {
        if (this.dev.__isKernelDriverActive(n)) {
          this.dev.__detachKernelDriver(n);
          this.driversTaken.add(n);
          this.log('info', 'host usb interface taken from its kernel driver', { device: this.hostName, interface: n });
        }
        this.dev.__claimInterface(n);
        this.claimed.add(n);
        this.alts.set(n, this.alts.get(n) ?? 0);
      } catch (e) {
        this.noteFailure(errnoOf(e));
        // Its URBs will fail (usbfs refuses an interface another driver holds) with that error.
        this.log('warn', 'host usb interface cannot be claimed', { device: this.hostName, interface: n, error: messageOf(e) });
      }
    }
    this.rebuildEndpoints();
  }

  /** Cancels what is running, releases the interfaces and gives them back to their kernel drivers. */
  private async giveBack(): Promise<void> {
    await this.stopTransfers();
    await this.releaseAll();
    for (const n of this.driversTaken) {
      if (this.gone) break;
      try {
        this.dev.__attachKernelDriver(n);
        this.log('info', 'host usb interface given back to its kernel driver', { device: this.hostName, interface: n });
      } catch (e) {
        this.noteFailure(errnoOf(e));
        this.log('warn', 'host usb interface not given back to its kernel driver', { device: this.hostName, interface: n, error: messageOf(e) });
      }
    }
    this.driversTaken.clear();
    this.alts.clear();
    this.rebuildEndpoints();
    this.closeHandle();
  }

  private open(): void {
    if (this.isOpen) return;
    try {
      this.dev.open(false);
      this.isOpen = true;
      this.gone = false;
    } catch (e) {
      this.noteFailure(errnoOf(e));
      this.gone = true;
      this.log('warn', 'host usb device cannot be opened: its URBs fail with ENODEV', { device: this.hostName, error: messageOf(e) });
    }
  }

  private closeHandle(): void {
    if (!this.isOpen) return;
    this.isOpen = false;
    try {
      this.dev.close();
    } catch (e) {
      this.log('warn', 'host usb device not closed', { device: this.hostName, error: messageOf(e) });
    }
  }

  private async releaseAll(): Promise<void> {
    for (const n of [...this.claimed]) {
      this.claimed.delete(n);
      if (this.gone) continue;
      const status = await this.call((done) => this.dev.__releaseInterface(n, done));
      if (status !== 0) this.log('warn', 'host usb interface release failed', { device: this.hostName, interface: n, status });
    }
  }

  private rebuildEndpoints(): void {
    const map = new Map<number, EndpointInfo>();
    for (const alts of this.dev.configDescriptor?.interfaces ?? []) {
      const n = alts[0]?.bInterfaceNumber;
      if (n === undefined) continue;
      const want = this.alts.get(n) ?? 0;
      const d = alts.find((a) => a.bAlternateSetting === want) ?? alts[0];
      for (const e of d?.endpoints ?? []) {
        map.set(e.bEndpointAddress & 0x8f, { type: e.bmAttributes & 0x03, maxPacketSize: e.wMaxPacketSize & 0x7ff, interfaceNumber: n });
      }
    }
    this.endpoints = map;
  }

  // --- transfers ---------------------------------------------------------------------------------

  /** One libusb transfer; the signal cancels it. Never rejects. */
  private transfer(endpoint: number, type: number, buffer: Buffer, signal: AbortSignal): Promise<TransferOutcome> {
    return new Promise((resolve) => {
      let t: LibusbTransfer | undefined;
      let settled = false;
      const onAbort = (): void => {
        if (t !== undefined) this.cancel(t);
      };
      const finish = (outcome: TransferOutcome): void => {
        if (settled) return;
        settled = true;
        signal.removeEventListener('abort', onAbort);
        if (t !== undefined && this.running.delete(t) && this.running.size === 0) this.wakeIdle();
        resolve(outcome);
      };
      try {
        t = this.lib.transfer(this.dev, endpoint, type, 0, (error, _buffer, actualLength) => {
          const code = error === undefined ? LibusbTransferStatus.COMPLETED : (error.errno ?? LibusbTransferStatus.ERROR);
          if (code === LibusbTransferStatus.NO_DEVICE) this.noteGone();
          finish({ status: urbStatusOfTransfer(code), actual: actualLength >>> 0 });
        });
        t.submit(buffer);
      } catch (e) {
        const errno = errnoOf(e);
        this.noteFailure(errno);
        this.log('debug', 'host usb transfer not submitted', { device: this.hostName, endpoint, error: messageOf(e) });
        t = undefined;
        finish({ status: errno === undefined ? (this.gone ? -UrbErrno.ENODEV : -UrbErrno.EIO) : urbStatusOfLibusbError(errno), actual: 0 });
        return;
      }
      if (settled) return;
      this.running.add(t);
      if (signal.aborted) onAbort();
      else signal.addEventListener('abort', onAbort, { once: true });
    });
  }

  private cancel(t: LibusbTransfer): void {
    try {
      t.cancel();
    } catch {
      // Gone or finishing: its callback comes all the same.
    }
  }

  /** Cancels every running transfer and waits for their callbacks. */
  private stopTransfers(): Promise<void> {
    for (const t of this.running) this.cancel(t);
    if (this.running.size === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  private wakeIdle(): void {
    const w = this.idleWaiters;
    this.idleWaiters = [];
    for (const f of w) f();
  }

  /** An asynchronous libusb call with a callback, as a URB status. */
  private call(start: (done: Done) => void): Promise<number> {
    if (this.gone) return Promise.resolve(-UrbErrno.ENODEV);
    return new Promise((resolve) => {
      try {
        start((error) => {
          this.noteFailure(error?.errno);
          resolve(error === undefined ? 0 : urbStatusOfLibusbError(error.errno ?? LibusbError.OTHER));
        });
      } catch (e) {
        this.noteFailure(errnoOf(e));
        resolve(urbStatusOfLibusbError(errnoOf(e) ?? LibusbError.OTHER));
      }
    });
  }

  /** Runs `op` after every earlier attach, detach or configuration change. */
  private serially<T>(op: () => T | Promise<T>): Promise<T> {
    const next = this.chain.then(op);
    this.chain = next.catch((e: unknown) => this.log('warn', 'host usb device operation failed', { device: this.hostName, error: messageOf(e) }));
    return next;
  }

  private noteFailure(errno: number | undefined): void {
    if (errno === LibusbError.NO_DEVICE) this.noteGone();
  }

  private noteGone(): void {
    if (this.gone) return;
    this.gone = true;
    this.claimed.clear();
    this.log('warn', 'host usb device is gone (unplugged?): its import ends and it is listed no more; restart prism once it is back', { device: this.hostName, busid: this.info.busid });
    this.vanish(`${this.hostName} is gone from this machine (unplugged?)`);
  }

  private fail(urb: Urb, status: number): UrbResult {
    const isoPackets: IsoPacket[] = urb.isoPackets.map((p) => ({ ...p, actualLength: 0, status }));
    return { status, data: Buffer.alloc(0), ...(urb.numberOfPackets > 0 ? { isoPackets, errorCount: urb.numberOfPackets } : {}) };
  }
}
