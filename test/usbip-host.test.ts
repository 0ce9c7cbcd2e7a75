// The libusb device (`host:` specs, src/usbip/host.ts and host/*) without USB hardware: the spec
// grammar, libusb statuses and errors as Linux errnos, the sysfs speed, which control requests the
// exporter carries out itself; then the device over a fake of the slice of node-usb it uses —
// finding and opening (not found, ambiguous, no permission), its record, interfaces taken from
// their kernel drivers on attach and given back on detach, bulk IN/OUT and control transfers,
// SET_CONFIGURATION / SET_INTERFACE / CLEAR_FEATURE(HALT) mapped to libusb calls, an unlink
// cancelling the pending libusb transfer, and an unplugged device failing URBs without throwing.
// The real device is tested in test/usbip-host-guest.test.ts.
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { mkdtempSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import type { Urb, UrbResult, UsbDevice } from '../src/usbip/device.js';
import {
  HostSpecError, findHostDevice, hostDeviceInfo, openHostDevice,
  type Libusb, type LibusbDevice, type LibusbTransfer,
} from '../src/usbip/host.js';
import type { LibusbConfigDescriptor, LibusbFailure } from '../src/usbip/host/device.js';
import {
  LibusbError, LibusbTransferStatus, classifyControl, parseHostSpec, speedOfDescriptor, speedOfSysfs, urbStatusOfLibusbError, urbStatusOfTransfer,
} from '../src/usbip/host/rules.js';
import type { LogFn } from '../src/usbip/server.js';
import { setupPacket } from '../src/usbip/emulated/ch9.js';

const E = { ENOENT: -2, EIO: -5, ENODEV: -19, EINVAL: -22, EPIPE: -32, EPROTO: -71, EOVERFLOW: -75, ECONNRESET: -104, ESHUTDOWN: -108, ETIMEDOUT: -110, EREMOTEIO: -121, EBUSY: -16 };
const LOCATION = { busid: '1-1', busnum: 1, devnum: 2 };

const setup = setupPacket;

let seq = 0;
function urb(u: Partial<Urb> & Pick<Urb, 'direction' | 'endpoint'>): Urb {
  return { seqnum: ++seq, transferFlags: 0, transferBufferLength: 0, setup: Buffer.alloc(8), data: Buffer.alloc(0), startFrame: 0, numberOfPackets: 0, interval: 0, isoPackets: [], ...u };
}

describe('host: spec grammar', () => {
  it('parses VID:PID in hex and BUS-PORT[.PORT] in decimal', () => {
    assert.deepEqual(parseHostSpec('host:1d6b:0104'), { kind: 'vid-pid', idVendor: 0x1d6b, idProduct: 0x0104 });
    assert.deepEqual(parseHostSpec('host:46D:C52B'), { kind: 'vid-pid', idVendor: 0x046d, idProduct: 0xc52b });
    assert.deepEqual(parseHostSpec('host:1-1'), { kind: 'location', bus: 1, ports: [1] });
    assert.deepEqual(parseHostSpec('host:2-1.3.4'), { kind: 'location', bus: 2, ports: [1, 3, 4] });
  });

  it('refuses malformed specs with a HostSpecError that shows both forms', () => {
    for (const bad of ['host:', 'host:1d6b', 'host:1d6b:01044', 'host:xyz:0104', 'host:0-1', 'host:1-0', 'host:256-1', 'host:1-1.', 'host:1-1.2.3.4.5.6.7.8', 'host:1-1:2', 'hosts:1-1', 'host: 1-1']) {
      assert.throws(() => parseHostSpec(bad), (e: unknown) => e instanceof HostSpecError && e.reason === 'syntax' && e.message.includes(bad), bad);
    }
    assert.throws(() => parseHostSpec('host:foo'), /host:VID:PID .*host:BUS-PORT/);
  });
});

describe('libusb results as URB statuses', () => {
  it('maps transfer statuses the way a Linux host controller completes URBs', () => {
    const S = LibusbTransferStatus;
    assert.equal(urbStatusOfTransfer(S.COMPLETED), 0);
    assert.equal(urbStatusOfTransfer(S.STALL), E.EPIPE);
    assert.equal(urbStatusOfTransfer(S.TIMED_OUT), E.ETIMEDOUT);
    assert.equal(urbStatusOfTransfer(S.OVERFLOW), E.EOVERFLOW);
    assert.equal(urbStatusOfTransfer(S.CANCELLED), E.ECONNRESET);
    assert.equal(urbStatusOfTransfer(S.NO_DEVICE), E.ESHUTDOWN);
    assert.equal(urbStatusOfTransfer(S.ERROR), E.EPROTO);
    assert.equal(urbStatusOfTransfer(42), E.EPROTO);
  });

  it('maps libusb errors of calls and submissions', () => {
    assert.equal(urbStatusOfLibusbError(LibusbError.NO_DEVICE), E.ENODEV);
    assert.equal(urbStatusOfLibusbError(LibusbError.NOT_FOUND), E.ENOENT);
    assert.equal(urbStatusOfLibusbError(LibusbError.PIPE), E.EPIPE);
    assert.equal(urbStatusOfLibusbError(LibusbError.BUSY), E.EBUSY);
    assert.equal(urbStatusOfLibusbError(LibusbError.INVALID_PARAM), E.EINVAL);
    assert.equal(urbStatusOfLibusbError(LibusbError.IO), E.EIO);
    assert.equal(urbStatusOfLibusbError(LibusbError.OTHER), E.EIO);
  });

  it('uses the numbers node-usb exports', () => {
    const usb = (createRequire(import.meta.url)('usb') as typeof import('usb')).usb;
    assert.deepEqual(
      [usb.LIBUSB_TRANSFER_COMPLETED, usb.LIBUSB_TRANSFER_ERROR, usb.LIBUSB_TRANSFER_TIMED_OUT, usb.LIBUSB_TRANSFER_CANCELLED, usb.LIBUSB_TRANSFER_STALL, usb.LIBUSB_TRANSFER_NO_DEVICE, usb.LIBUSB_TRANSFER_OVERFLOW],
      Object.values(LibusbTransferStatus),
    );
    assert.deepEqual(
      [usb.LIBUSB_ERROR_IO, usb.LIBUSB_ERROR_INVALID_PARAM, usb.LIBUSB_ERROR_ACCESS, usb.LIBUSB_ERROR_NO_DEVICE, usb.LIBUSB_ERROR_NOT_FOUND, usb.LIBUSB_ERROR_BUSY, usb.LIBUSB_ERROR_TIMEOUT, usb.LIBUSB_ERROR_OVERFLOW, usb.LIBUSB_ERROR_PIPE, usb.LIBUSB_ERROR_INTERRUPTED, usb.LIBUSB_ERROR_NO_MEM, usb.LIBUSB_ERROR_NOT_SUPPORTED, usb.LIBUSB_ERROR_OTHER],
      Object.values(LibusbError),
    );
  });

  it('reads the speed from sysfs and guesses it from the descriptor otherwise', () => {
    assert.deepEqual(['1.5', '12', '480\n', '5000', '10000', '20000', '53.3-480', 'fast'].map(speedOfSysfs), [1, 2, 3, 5, 6, 6, 4, null]);
    assert.equal(speedOfDescriptor(0x0320, 9), 5);
    assert.equal(speedOfDescriptor(0x0200, 64), 3);
    assert.equal(speedOfDescriptor(0x0110, 64), 2);
  });
});

describe('control requests the exporter carries out itself (stub_rx.c)', () => {
  it('SET_CONFIGURATION, SET_INTERFACE and CLEAR_FEATURE(ENDPOINT_HALT) become libusb calls', () => {
    assert.deepEqual(classifyControl(setup(0x00, 9, 2, 0, 0)), { kind: 'set-configuration', value: 2 });
    assert.deepEqual(classifyControl(setup(0x01, 11, 1, 3, 0)), { kind: 'set-interface', interfaceNumber: 3, altSetting: 1 });
    assert.deepEqual(classifyControl(setup(0x02, 1, 0, 0x81, 0)), { kind: 'clear-halt', endpoint: 0x81 });
    assert.deepEqual(classifyControl(setup(0x02, 1, 0, 0x02, 0)), { kind: 'clear-halt', endpoint: 0x02 });
  });

  it('SET_ADDRESS and a port reset are refused; everything else passes through', () => {
    assert.equal(classifyControl(setup(0x00, 5, 7, 0, 0)).kind, 'refuse');
    assert.equal(classifyControl(setup(0x23, 3, 4, 1, 0)).kind, 'refuse');
    for (const s of [
      setup(0x80, 6, 0x0100, 0, 18), // GET_DESCRIPTOR(DEVICE)
      setup(0x02, 1, 1, 0x81, 0), // CLEAR_FEATURE(endpoint, not HALT)
      setup(0x00, 1, 1, 0, 0), // CLEAR_FEATURE(DEVICE_REMOTE_WAKEUP)
      setup(0x21, 0xff, 0, 0, 0), // Bulk-Only Mass Storage Reset (class)
      setup(0xa1, 0xfe, 0, 0, 1), // Get Max LUN (class)
      setup(0x41, 9, 1, 0, 0), // vendor request with SET_CONFIGURATION's number
      setup(0x23, 3, 8, 1, 0), // SET_FEATURE(PORT_POWER)
    ]) {
      assert.deepEqual(classifyControl(s), { kind: 'pass' }, s.toString('hex'));
    }
  });
});

// --- a fake of node-usb ------------------------------------------------------------------------------

type Done = (error?: LibusbFailure) => void;
const fail = (errno: number, message = `libusb ${errno}`): LibusbFailure & Error => Object.assign(new Error(message), { errno });

class FakeTransfer implements LibusbTransfer {
  buffer: Buffer | null = null;
  pending = false;
  cancelCalls = 0;
  constructor(
    readonly endpoint: number,
    readonly type: number,
    private readonly done: (error: LibusbFailure | undefined, buffer: Buffer, actual: number) => void,
    private readonly owner: FakeDevice,
  ) {}

  submit(buffer: Buffer): this {
    if (this.owner.submitError !== null) throw fail(this.owner.submitError);
    this.buffer = buffer;
    this.pending = true;
    this.owner.transfers.push(this);
    return this;
  }

  cancel(): boolean {
    this.cancelCalls++;
    if (!this.pending) return false;
    setImmediate(() => this.finish(LibusbTransferStatus.CANCELLED, 0));
    return true;
  }

  /** Completes it as libusb would, later (node-usb calls back from its completion queue). */
  complete(status: number, inData?: Buffer, actual?: number): void {
    if (inData !== undefined) inData.copy(this.buffer as Buffer, this.endpoint === 0 ? 8 : 0);
    setImmediate(() => this.finish(status, actual ?? inData?.length ?? (this.buffer as Buffer).length));
  }

  private finish(status: number, actual: number): void {
    if (!this.pending) return;
    this.pending = false;
    this.done(status === 0 ? undefined : fail(status), this.buffer as Buffer, actual);
  }
}

const STORAGE_CONFIG: LibusbConfigDescriptor = {
  bConfigurationValue: 1,
  interfaces: [[
    { bInterfaceNumber: 0, bAlternateSetting: 0, bInterfaceClass: 8, bInterfaceSubClass: 6, bInterfaceProtocol: 0x50, endpoints: [{ bEndpointAddress: 0x81, bmAttributes: 2, wMaxPacketSize: 512 }, { bEndpointAddress: 0x02, bmAttributes: 2, wMaxPacketSize: 512 }] },
    { bInterfaceNumber: 0, bAlternateSetting: 1, bInterfaceClass: 8, bInterfaceSubClass: 6, bInterfaceProtocol: 0x50, endpoints: [{ bEndpointAddress: 0x83, bmAttributes: 1, wMaxPacketSize: 1024 }] },
  ]],
};

class FakeDevice implements LibusbDevice {
  calls: string[] = [];
  transfers: FakeTransfer[] = [];
  kernelDriver = new Set<number>([0]);
  opened = false;
  openError: number | null = null;
  submitError: number | null = null;
  callError: number | null = null;
  config: LibusbConfigDescriptor | undefined = STORAGE_CONFIG;
  deviceDescriptor = { bcdUSB: 0x0200, bDeviceClass: 0, bDeviceSubClass: 0, bDeviceProtocol: 0, bMaxPacketSize0: 64, idVendor: 0x1d6b, idProduct: 0x0104, bcdDevice: 0x0610, bNumConfigurations: 1 };

  constructor(readonly busNumber: number, readonly portNumbers: number[] | undefined, readonly deviceAddress = 2, ids?: [number, number]) {
    if (ids !== undefined) this.deviceDescriptor = { ...this.deviceDescriptor, idVendor: ids[0], idProduct: ids[1] };
  }

  get configDescriptor(): LibusbConfigDescriptor | undefined {
    return this.config;
  }

  open(defaultConfig?: boolean): void {
    this.calls.push(`open(${String(defaultConfig)})`);
    if (this.openError !== null) throw fail(this.openError);
    this.opened = true;
  }

  close(): void {
    this.calls.push('close');
    if (this.transfers.some((t) => t.pending)) throw new Error("Can't close device with a pending request");
    this.opened = false;
  }

  private later(what: string, done: Done): void {
    this.calls.push(what);
    const e = this.callError;
    setImmediate(() => done(e === null ? undefined : fail(e)));
  }

  __isKernelDriverActive(n: number): boolean {
    return this.kernelDriver.has(n);
  }

  __detachKernelDriver(n: number): void {
    this.calls.push(`detach(${n})`);
    this.kernelDriver.delete(n);
  }

  __attachKernelDriver(n: number): void {
    this.calls.push(`attach(${n})`);
    this.kernelDriver.add(n);
  }

  __claimInterface(n: number): void {
    this.calls.push(`claim(${n})`);
    if (this.kernelDriver.has(n)) throw fail(LibusbError.BUSY);
  }

  __releaseInterface(n: number, done: Done): void {
    this.later(`release(${n})`, done);
  }

  __setInterface(n: number, alt: number, done: Done): void {
    this.later(`setInterface(${n},${alt})`, done);
  }

  __clearHalt(ep: number, done: Done): void {
    this.later(`clearHalt(0x${ep.toString(16)})`, done);
  }

  __setConfiguration(v: number, done: Done): void {
    this.later(`setConfiguration(${v})`, done);
  }

  /** The last transfer submitted, once it is. */
  async nextTransfer(count: number): Promise<FakeTransfer> {
    for (let i = 0; i < 100 && this.transfers.length < count; i++) await new Promise((r) => setImmediate(r));
    assert.ok(this.transfers.length >= count, `transfer #${count} submitted`);
    return this.transfers[count - 1] as FakeTransfer;
  }
}

function fakeUsb(devices: FakeDevice[]): Libusb {
  return {
    getDeviceList: () => devices,
    transfer: (device, endpoint, type, _timeout, done) => new FakeTransfer(endpoint, type, done, device as FakeDevice),
  };
}

const quiet: LogFn = () => undefined;
const settle = (): Promise<void> => new Promise((r) => setTimeout(r, 5));

const dirs: string[] = [];
after(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

/** A sysfs tree with one device's speed. */
function sysfs(name: string, speed: string): string {
  const root = mkdtempSync(join(tmpdir(), 'prism-host-sysfs-'));
  dirs.push(root);
  mkdirSync(join(root, 'bus/usb/devices', name), { recursive: true });
  writeFileSync(join(root, 'bus/usb/devices', name, 'speed'), `${speed}\n`);
  return root;
}

async function openFake(dev: FakeDevice, spec = 'host:1d6b:0104', extra: FakeDevice[] = []): Promise<UsbDevice> {
  return openHostDevice(spec, LOCATION, { usb: fakeUsb([new FakeDevice(3, undefined, 1, [0x1d6b, 2]), dev, ...extra]), sysfs: sysfs('3-1', '480'), log: quiet });
}

describe('finding and opening a host device', () => {
  it('finds by VID:PID or by BUS-PORT; a VID:PID several devices share is refused with their BUS-PORT', () => {
    const a = new FakeDevice(3, [1]);
    const b = new FakeDevice(3, [2, 4], 5);
    assert.equal(findHostDevice('host:3-2.4', [a, b]), b);
    assert.equal(findHostDevice('host:3-1', [a, b]), a);
    assert.throws(() => findHostDevice('host:1d6b:0104', [a, b]), (e: unknown) => e instanceof HostSpecError && e.reason === 'ambiguous' && /host:3-1 or host:3-2\.4/.test(e.message));
    assert.equal(findHostDevice('host:1d6b:0104', [a]), a);
  });

  it('a device that is not there: the error lists what is (without root hubs)', () => {
    const devices = [new FakeDevice(1, undefined, 1, [0x1d6b, 2]), new FakeDevice(3, [1], 2, [0x046d, 0xc52b])];
    assert.throws(() => findHostDevice('host:1234:5678', devices), (e: unknown) => e instanceof HostSpecError && e.reason === 'not-found' && /present: 3-1 046d:c52b\./.test(e.message) && !e.message.includes('usb1'));
    assert.throws(() => findHostDevice('host:9-9', []), /no USB devices are present/);
  });

  it('no permission: says to run as root or add a udev rule', async () => {
    const d = new FakeDevice(3, [1]);
    d.openError = LibusbError.ACCESS;
    await assert.rejects(openFake(d), (e: unknown) => e instanceof HostSpecError && e.reason === 'access' && /\/dev\/bus\/usb\/003\/002.*root.*udev rule.*ATTR\{idVendor\}=="1d6b"/.test(e.message));
  });

  it('makes the record from the descriptors, sysfs speed and the location it is given; the device is closed until imported', async () => {
    const d = new FakeDevice(3, [1]);
    const dev = await openFake(d);
    assert.deepEqual(dev.info, {
      busid: '1-1', busnum: 1, devnum: 2, speed: 3, idVendor: 0x1d6b, idProduct: 0x0104, bcdDevice: 0x0610,
      bDeviceClass: 0, bDeviceSubClass: 0, bDeviceProtocol: 0, bConfigurationValue: 1, bNumConfigurations: 1,
      interfaces: [{ bInterfaceClass: 8, bInterfaceSubClass: 6, bInterfaceProtocol: 0x50 }],
    });
    assert.deepEqual(d.calls, ['open(false)', 'close']);
    const unconfigured = new FakeDevice(3, [1]);
    unconfigured.config = undefined;
    const u = hostDeviceInfo(unconfigured, LOCATION, 2);
    assert.deepEqual([u.bConfigurationValue, u.interfaces, u.speed], [0, [], 2]);
  });
});

describe('the host device under an importer (fake libusb)', () => {
  async function imported(): Promise<{ d: FakeDevice; dev: UsbDevice }> {
    const d = new FakeDevice(3, [1]);
    const dev = await openFake(d);
    d.calls = [];
    dev.attached?.();
    return { d, dev };
  }

  it('attach takes the interface from its kernel driver and claims it; detach releases, gives it back and closes', async () => {
    const { d, dev } = await imported();
    await settle();
    assert.deepEqual(d.calls, ['open(false)', 'detach(0)', 'claim(0)']);
    dev.detached?.();
    await settle();
    assert.deepEqual(d.calls.slice(3), ['release(0)', 'attach(0)', 'close']);
    assert.ok(d.kernelDriver.has(0));
    assert.equal(d.opened, false);
  });

  it('bulk IN and OUT become libusb transfers on the endpoint; short reads honour URB_SHORT_NOT_OK', async () => {
    const { d, dev } = await imported();
    const pIn = dev.submit(urb({ direction: 'in', endpoint: 1, transferBufferLength: 13 }), new AbortController().signal);
    const tIn = await d.nextTransfer(1);
    assert.deepEqual([tIn.endpoint, tIn.type, tIn.buffer?.length], [0x81, 2, 13]);
    tIn.complete(0, Buffer.from('USBS-csw-13by'));
    assert.deepEqual(await pIn, { status: 0, data: Buffer.from('USBS-csw-13by') });

    const out = Buffer.from('USBC-cbw-31-bytes..............');
    const pOut = dev.submit(urb({ direction: 'out', endpoint: 2, transferBufferLength: out.length, data: out }), new AbortController().signal);
    const tOut = await d.nextTransfer(2);
    assert.deepEqual([tOut.endpoint, tOut.type, tOut.buffer], [0x02, 2, out]);
    tOut.complete(0);
    assert.deepEqual(await pOut, { status: 0, data: Buffer.alloc(0), actualLength: 31 });

    const pShort = dev.submit(urb({ direction: 'in', endpoint: 1, transferBufferLength: 512, transferFlags: 0x0001 }), new AbortController().signal);
    (await d.nextTransfer(3)).complete(0, Buffer.from('abc'));
    const short = await pShort;
    assert.deepEqual([short.status, short.data.toString()], [E.EREMOTEIO, 'abc']);
  });

  it('a stalled transfer answers -EPIPE, and CLEAR_FEATURE(ENDPOINT_HALT) is a libusb clear halt, not a raw request', async () => {
    const { d, dev } = await imported();
    const p = dev.submit(urb({ direction: 'in', endpoint: 1, transferBufferLength: 13 }), new AbortController().signal);
    (await d.nextTransfer(1)).complete(LibusbTransferStatus.STALL, Buffer.alloc(0));
    assert.equal((await p).status, E.EPIPE);
    const r = await dev.submit(urb({ direction: 'out', endpoint: 0, setup: setup(0x02, 1, 0, 0x81, 0) }), new AbortController().signal);
    assert.equal(r.status, 0);
    assert.ok(d.calls.includes('clearHalt(0x81)'));
    assert.equal(d.transfers.length, 1, 'no control transfer went to the device');
  });

  it('a passed-through control request carries the setup packet and returns the data stage', async () => {
    const { d, dev } = await imported();
    const p = dev.submit(urb({ direction: 'in', endpoint: 0, setup: setup(0x80, 6, 0x0100, 0, 18), transferBufferLength: 18 }), new AbortController().signal);
    const t = await d.nextTransfer(1);
    assert.deepEqual([t.endpoint, t.type, t.buffer?.subarray(0, 8).toString('hex')], [0, 0, '8006000100001200']);
    t.complete(0, Buffer.from('120100020000004000', 'hex'), 9);
    const r = await p;
    assert.deepEqual([r.status, r.data.toString('hex')], [0, '120100020000004000']);

    const pOut = dev.submit(urb({ direction: 'out', endpoint: 0, setup: setup(0x21, 0x09, 0x0200, 0, 2), transferBufferLength: 2, data: Buffer.from([1, 2]) }), new AbortController().signal);
    const tOut = await d.nextTransfer(2);
    assert.equal(tOut.buffer?.toString('hex'), '2109000200000200' + '0102');
    tOut.complete(0, undefined, 2);
    assert.deepEqual(await pOut, { status: 0, data: Buffer.alloc(0), actualLength: 2 });
  });

  it('SET_CONFIGURATION to the active value touches nothing; SET_INTERFACE is libusb set interface and changes the endpoints', async () => {
    const { d, dev } = await imported();
    assert.equal((await dev.submit(urb({ direction: 'out', endpoint: 0, setup: setup(0x00, 9, 1, 0, 0) }), new AbortController().signal)).status, 0);
    assert.deepEqual(d.calls, ['open(false)', 'detach(0)', 'claim(0)']);
    assert.equal((await dev.submit(urb({ direction: 'out', endpoint: 0, setup: setup(0x01, 11, 1, 0, 0) }), new AbortController().signal)).status, 0);
    assert.ok(d.calls.includes('setInterface(0,1)'));
    // Alternate setting 1 has only ISO endpoint 0x83: bulk 0x81 is gone, and ISO is refused.
    assert.equal((await dev.submit(urb({ direction: 'in', endpoint: 1, transferBufferLength: 8 }), new AbortController().signal)).status, E.ENOENT);
    const iso = await dev.submit(urb({ direction: 'in', endpoint: 3, transferBufferLength: 8, numberOfPackets: 1, isoPackets: [{ offset: 0, length: 8, actualLength: 0, status: 0 }] }), new AbortController().signal);
    assert.deepEqual([iso.status, iso.isoPackets?.[0]?.status], [E.EINVAL, E.EINVAL]);
    // Setting the active configuration again puts the interface back in alternate setting 0.
    assert.equal((await dev.submit(urb({ direction: 'out', endpoint: 0, setup: setup(0x00, 9, 1, 0, 0) }), new AbortController().signal)).status, 0);
    assert.equal(d.calls.at(-1), 'setInterface(0,0)');
  });

  it('SET_CONFIGURATION to another value releases, sets it through libusb and claims again', async () => {
    const { d, dev } = await imported();
    await settle();
    d.calls = [];
    d.kernelDriver.add(0); // the kernel probes its drivers on the new configuration's interfaces
    assert.equal((await dev.submit(urb({ direction: 'out', endpoint: 0, setup: setup(0x00, 9, 2, 0, 0) }), new AbortController().signal)).status, 0);
    assert.deepEqual(d.calls, ['release(0)', 'setConfiguration(2)', 'detach(0)', 'claim(0)']);
  });

  it('SET_ADDRESS and a port reset are refused with -EPIPE without reaching the device', async () => {
    const { d, dev } = await imported();
    for (const s of [setup(0x00, 5, 9, 0, 0), setup(0x23, 3, 4, 1, 0)]) {
      assert.equal((await dev.submit(urb({ direction: 'out', endpoint: 0, setup: s }), new AbortController().signal)).status, E.EPIPE);
    }
    assert.equal(d.transfers.length, 0);
  });

  it('an unlink cancels the pending libusb transfer; the URB ends -ECONNRESET', async () => {
    const { d, dev } = await imported();
    const ac = new AbortController();
    const p = dev.submit(urb({ direction: 'in', endpoint: 1, transferBufferLength: 512 }), ac.signal);
    const t = await d.nextTransfer(1);
    assert.equal(t.pending, true);
    ac.abort(new Error('usbip CMD_UNLINK'));
    assert.equal(t.cancelCalls, 1);
    const r: UrbResult = await p;
    assert.equal(r.status, E.ECONNRESET);
    assert.equal(t.pending, false);
  });

  it('detach cancels what is running and releases only once it has completed', async () => {
    const { d, dev } = await imported();
    const p = dev.submit(urb({ direction: 'in', endpoint: 1, transferBufferLength: 512 }), new AbortController().signal);
    const t = await d.nextTransfer(1);
    dev.detached?.();
    assert.equal(t.cancelCalls, 1);
    assert.equal((await p).status, E.ECONNRESET);
    await settle();
    assert.deepEqual(d.calls.slice(3), ['release(0)', 'attach(0)', 'close']);
  });

  it('an unplugged device: running URBs end -ESHUTDOWN, later ones -ENODEV, nothing throws; detach does not touch it', async () => {
    const { d, dev } = await imported();
    const p = dev.submit(urb({ direction: 'in', endpoint: 1, transferBufferLength: 512 }), new AbortController().signal);
    (await d.nextTransfer(1)).complete(LibusbTransferStatus.NO_DEVICE, Buffer.alloc(0));
    assert.equal((await p).status, E.ESHUTDOWN);
    d.submitError = LibusbError.NO_DEVICE;
    assert.equal((await dev.submit(urb({ direction: 'out', endpoint: 2, transferBufferLength: 1, data: Buffer.alloc(1) }), new AbortController().signal)).status, E.ENODEV);
    assert.equal((await dev.submit(urb({ direction: 'in', endpoint: 0, setup: setup(0x80, 6, 0x0100, 0, 18), transferBufferLength: 18 }), new AbortController().signal)).status, E.ENODEV);
    dev.detached?.();
    await settle();
    assert.deepEqual(d.calls.slice(3), ['close']);
  });

  it('a device that cannot be opened at import answers -ENODEV', async () => {
    const d = new FakeDevice(3, [1]);
    const dev = await openFake(d);
    d.openError = LibusbError.NO_DEVICE;
    dev.attached?.();
    assert.equal((await dev.submit(urb({ direction: 'in', endpoint: 1, transferBufferLength: 8 }), new AbortController().signal)).status, E.ENODEV);
  });

  it('URB_ZERO_PACKET on an OUT of whole packets sends a zero-length transfer after it', async () => {
    const { d, dev } = await imported();
    const data = Buffer.alloc(1024, 7);
    const p = dev.submit(urb({ direction: 'out', endpoint: 2, transferBufferLength: 1024, data, transferFlags: 0x0040 }), new AbortController().signal);
    (await d.nextTransfer(1)).complete(0);
    const zlp = await d.nextTransfer(2);
    assert.equal(zlp.buffer?.length, 0);
    zlp.complete(0);
    assert.deepEqual(await p, { status: 0, data: Buffer.alloc(0), actualLength: 1024 });
  });
});
