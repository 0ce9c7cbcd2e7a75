// The emulated USB devices driven through submit() with hand-built URBs, no USB/IP in between:
// enumeration (descriptors parsed back with a small walker, golden bytes in
// fixtures/usbip-emulated/descriptors.txt), the standard requests, endpoint halts; the mass-storage
// device over Bulk-Only Transport as Linux's usb-storage drives it (CBW, data, CSW; clear a stalled
// endpoint and read the CSW again) on a temp image: INQUIRY, READ CAPACITY, a READ/WRITE round
// trip compared by sha256, :ro refusing writes with DATA PROTECT, invalid CBWs and Reset Recovery,
// the BOT thirteen-case disagreements, Get Max LUN; the SuperSpeed variant (:ss: a USB 3.0 device
// descriptor, endpoint companions, BOS, SET_SEL and SET_ISOCH_DELAY, 1 MiB commands); the keyboard
// typing "Hi!\n" and a pending interrupt URB ended by its signal; the CDB and CBW parsers on golden
// vectors and under fast-check (only their own errors), and a hostile host's random URB stream
// leaving the storage device serving.
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { readFileSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';
import fc from 'fast-check';
import { buildDescriptors } from '../src/usbip/emulated/descriptors.js';
import { CbwError, CswStatus, decodeCbw, decodeCsw, encodeCbw, type Cbw, type Csw } from '../src/usbip/emulated/bot.js';
import { Asc, parseCdb, ScsiSenseError, type AscName } from '../src/usbip/emulated/scsi.js';
import { MemoryImage, ScsiDisk } from '../src/usbip/emulated/disk.js';
import { StorageDevice, storageSpec, STORAGE_EP_IN, STORAGE_EP_OUT } from '../src/usbip/emulated/storage.js';
import { BOOT_KEYBOARD_REPORT_DESCRIPTOR, KeyboardDevice, keyboardSpec, reportsFor } from '../src/usbip/emulated/keyboard.js';
import { createEmulated, EmulatedSpecError, parseEmulatedSpec } from '../src/usbip/emulated/index.js';
import { setupPacket } from '../src/usbip/emulated/ch9.js';
import type { Urb, UrbResult, UsbDevice } from '../src/usbip/device.js';

const EPIPE = -32;
const ECONNRESET = -104;
const FIXTURES = new URL('./fixtures/usbip-emulated/', import.meta.url);
const LOCATION = { busid: '1-1', busnum: 1, devnum: 2 };

// --- URB helpers -------------------------------------------------------------------------------------

let seqnum = 0;

function makeUrb(u: Partial<Urb> & Pick<Urb, 'direction' | 'endpoint'>): Urb {
  return { seqnum: ++seqnum, transferFlags: 0, transferBufferLength: 0, setup: Buffer.alloc(8), data: Buffer.alloc(0), startFrame: 0, numberOfPackets: 0, interval: 0, isoPackets: [], ...u };
}

const setup = setupPacket;

/** One control transfer on endpoint 0, as usb_control_msg submits it. */
function control(dev: UsbDevice, bmRequestType: number, bRequest: number, wValue: number, wIndex: number, wLength: number, data?: Buffer): Promise<UrbResult> {
  const dirIn = (bmRequestType & 0x80) !== 0 && wLength > 0;
  return dev.submit(
    makeUrb({
      direction: dirIn ? 'in' : 'out',
      endpoint: 0,
      setup: setup(bmRequestType, bRequest, wValue, wIndex, wLength),
      transferBufferLength: wLength,
      data: dirIn ? Buffer.alloc(0) : (data ?? Buffer.alloc(wLength)),
    }),
    new AbortController().signal,
  );
}

function bulkOut(dev: UsbDevice, endpoint: number, data: Buffer, signal = new AbortController().signal): Promise<UrbResult> {
  return dev.submit(makeUrb({ direction: 'out', endpoint, transferBufferLength: data.length, data }), signal);
}

function bulkIn(dev: UsbDevice, endpoint: number, length: number, signal = new AbortController().signal, transferFlags = 0): Promise<UrbResult> {
  return dev.submit(makeUrb({ direction: 'in', endpoint, transferBufferLength: length, transferFlags }), signal);
}

const getDescriptor = (dev: UsbDevice, type: number, index: number, length: number, langId = 0): Promise<UrbResult> => control(dev, 0x80, 0x06, (type << 8) | index, langId, length);
const clearHalt = (dev: UsbDevice, address: number): Promise<UrbResult> => control(dev, 0x02, 0x01, 0, address, 0);
const endpointStatus = async (dev: UsbDevice, address: number): Promise<number> => (await control(dev, 0x82, 0x00, 0, address, 2)).data.readUInt16LE(0);

/** A promise that has not settled after a few turns of the event loop. */
async function stillPending(p: Promise<unknown>): Promise<boolean> {
  let settled = false;
  void p.then(
    () => (settled = true),
    () => (settled = true),
  );
  for (let i = 0; i < 5; i++) await new Promise((r) => setImmediate(r));
  return !settled;
}

// --- a descriptor walker -----------------------------------------------------------------------------

interface Walked {
  config: { totalLength: number; numInterfaces: number; value: number; attributes: number; maxPower: number };
  interfaces: { number: number; alternate: number; cls: number; subclass: number; protocol: number; extra: Buffer[]; endpoints: WalkedEndpoint[] }[];
}

interface WalkedEndpoint {
  address: number;
  attributes: number;
  maxPacketSize: number;
  interval: number;
  /** The SuperSpeed Endpoint Companion right after it, if any. */
  companion?: { maxBurst: number; attributes: number; bytesPerInterval: number };
}

/** Splits a configuration tree into its descriptors, checking every bLength and wTotalLength. */
function walkConfiguration(tree: Buffer, type = 0x02): Walked {
  assert.ok(tree.length >= 9, 'configuration descriptor is 9 bytes');
  assert.equal(tree[0], 9);
  assert.equal(tree[1], type);
  const totalLength = tree.readUInt16LE(2);
  assert.equal(totalLength, tree.length, 'wTotalLength covers the tree');
  const out: Walked = { config: { totalLength, numInterfaces: tree[4]!, value: tree[5]!, attributes: tree[7]!, maxPower: tree[8]! }, interfaces: [] };
  for (let at = 9; at < tree.length; ) {
    const len = tree[at]!;
    assert.ok(len >= 2 && at + len <= tree.length, `descriptor at ${at} has bLength ${len}`);
    const d = tree.subarray(at, at + len);
    const cur = out.interfaces.at(-1);
    if (d[1] === 0x04) {
      assert.equal(len, 9);
      out.interfaces.push({ number: d[2]!, alternate: d[3]!, cls: d[5]!, subclass: d[6]!, protocol: d[7]!, extra: [], endpoints: [] });
    } else if (d[1] === 0x05) {
      assert.equal(len, 7);
      assert.ok(cur, 'an endpoint follows an interface');
      cur.endpoints.push({ address: d[2]!, attributes: d[3]!, maxPacketSize: d.readUInt16LE(4), interval: d[6]! });
    } else if (d[1] === 0x30) {
      assert.equal(len, 6);
      const ep = cur?.endpoints.at(-1);
      assert.ok(ep && ep.companion === undefined && tree[at - 7] === 7 && tree[at - 6] === 0x05, 'a SuperSpeed companion follows its endpoint');
      ep.companion = { maxBurst: d[2]!, attributes: d[3]!, bytesPerInterval: d.readUInt16LE(4) };
    } else {
      assert.ok(cur, 'a class descriptor follows an interface');
      cur.extra.push(d);
    }
    at += len;
  }
  for (const itf of out.interfaces) assert.equal(itf.endpoints.length, tree[tree.indexOf(Buffer.from([9, 4, itf.number, itf.alternate])) + 4], 'bNumEndpoints');
  assert.equal(new Set(out.interfaces.map((i) => i.number)).size, out.config.numInterfaces, 'bNumInterfaces');
  return out;
}

function stringOf(d: Buffer): string {
  assert.equal(d[0], d.length);
  assert.equal(d[1], 0x03);
  return d.subarray(2).toString('utf16le');
}

function goldenDescriptors(): Map<string, Buffer> {
  const m = new Map<string, Buffer>();
  for (const line of readFileSync(new URL('descriptors.txt', FIXTURES), 'utf8').split('\n')) {
    if (line.trim() === '' || line.startsWith('#')) continue;
    const [name, ...hex] = line.trim().split(/\s+/);
    m.set(name!, Buffer.from(hex.join(''), 'hex'));
  }
  return m;
}

// --- a Bulk-Only host, as Linux's usb-storage drives it -------------------------------------------------

interface CommandResult {
  csw: Csw;
  data: Buffer;
  /** The data stage ended with a STALL (the host cleared it). */
  dataStalled: boolean;
  /** The first CSW read stalled (the host cleared it and read again). */
  cswStalled: boolean;
}

let tag = 0x1000;

async function command(dev: UsbDevice, cb: Buffer, opts: { in?: number; out?: Buffer; length?: number } = {}): Promise<CommandResult> {
  const t = ++tag;
  const direction: Cbw['direction'] = opts.in !== undefined ? 'in' : 'out';
  const length = opts.length ?? opts.in ?? opts.out?.length ?? 0;
  const sent = await bulkOut(dev, STORAGE_EP_OUT, encodeCbw({ tag: t, dataTransferLength: length, direction, lun: 0, cb }));
  assert.equal(sent.status, 0, 'the CBW is taken');
  let data: Buffer = Buffer.alloc(0);
  let dataStalled = false;
  if (opts.in !== undefined && length > 0) {
    const r = await bulkIn(dev, STORAGE_EP_IN, length);
    if (r.status === EPIPE) {
      dataStalled = true;
      assert.equal((await clearHalt(dev, STORAGE_EP_IN)).status, 0);
    } else {
      assert.equal(r.status, 0);
      data = r.data;
    }
  } else if (opts.out !== undefined && opts.out.length > 0) {
    const r = await bulkOut(dev, STORAGE_EP_OUT, opts.out);
    if (r.status === EPIPE) {
      dataStalled = true;
      assert.equal((await clearHalt(dev, STORAGE_EP_OUT)).status, 0);
    } else assert.equal(r.status, 0);
  }
  let r = await bulkIn(dev, STORAGE_EP_IN, 13);
  let cswStalled = false;
  if (r.status === EPIPE) {
    cswStalled = true;
    assert.equal((await clearHalt(dev, STORAGE_EP_IN)).status, 0);
    r = await bulkIn(dev, STORAGE_EP_IN, 13);
  }
  assert.equal(r.status, 0, 'the CSW is read');
  const csw = decodeCsw(r.data);
  assert.ok(csw, `a valid CSW: ${r.data.toString('hex')}`);
  assert.equal(csw.tag, t, 'the CSW echoes the tag');
  return { csw, data, dataStalled, cswStalled };
}

function cdb(...bytes: number[]): Buffer {
  return Buffer.from(bytes);
}
const INQUIRY_36 = cdb(0x12, 0, 0, 0, 36, 0);
const TEST_UNIT_READY = cdb(0, 0, 0, 0, 0, 0);
const REQUEST_SENSE = cdb(0x03, 0, 0, 0, 18, 0);
const READ_CAPACITY_10 = cdb(0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0);

function rw10(op: 0x28 | 0x2a, lba: number, blocks: number): Buffer {
  const b = Buffer.alloc(10);
  b[0] = op;
  b.writeUInt32BE(lba, 2);
  b.writeUInt16BE(blocks, 7);
  return b;
}

async function requestSense(dev: UsbDevice): Promise<{ key: number; asc: number; ascq: number }> {
  const r = await command(dev, REQUEST_SENSE, { in: 18 });
  assert.equal(r.csw.status, CswStatus.PASSED);
  assert.equal(r.data.length, 18);
  assert.equal(r.data[0], 0x70, 'fixed format, current');
  return { key: r.data[2]! & 0x0f, asc: r.data[12]!, ascq: r.data[13]! };
}

function senseOf(name: AscName): { key: number; asc: number; ascq: number } {
  return { ...Asc[name] };
}

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

// --- tests -------------------------------------------------------------------------------------------

let dir: string;
before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'prism-usbip-emulated-'));
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function imageFile(name: string, bytes: Buffer): Promise<string> {
  const path = join(dir, name);
  await writeFile(path, bytes);
  return path;
}

describe('descriptors', () => {
  it('lay out as the golden bytes', () => {
    const golden = goldenDescriptors();
    const s = buildDescriptors(storageSpec('0123456789ABCDEF01234567'));
    const k = buildDescriptors(keyboardSpec());
    assert.deepEqual(s.device, golden.get('storage-device'));
    assert.deepEqual(s.configurations[0], golden.get('storage-configuration'));
    assert.deepEqual(s.qualifier, golden.get('storage-qualifier'));
    assert.deepEqual(s.otherSpeedConfigurations[0], golden.get('storage-other-speed'));
    assert.deepEqual(k.device, golden.get('keyboard-device'));
    assert.deepEqual(k.configurations[0], golden.get('keyboard-configuration'));
    assert.deepEqual(BOOT_KEYBOARD_REPORT_DESCRIPTOR, golden.get('keyboard-report'));
    assert.equal(k.qualifier, null, 'a full-speed-only device has no qualifier');
  });

  it('refuse specs a host would misread', () => {
    const spec = storageSpec('0123456789AB');
    const itf = spec.configurations[0]!.interfaces[0]!;
    assert.throws(() => buildDescriptors({ ...spec, maxPacketSize0: 12 }), RangeError);
    const ss = storageSpec('0123456789AB', undefined, 5);
    const ssItf = ss.configurations[0]!.interfaces[0]!;
    buildDescriptors(ss);
    assert.throws(() => buildDescriptors({ ...ss, maxPacketSize0: 64 }), /SuperSpeed device is not 9/);
    assert.throws(() => buildDescriptors({ ...ss, usbVersion: 0x0210 }), /below 0x0300/);
    const ssWith = (ep: (typeof ssItf.endpoints)[number]): typeof ss => ({ ...ss, configurations: [{ ...ss.configurations[0]!, interfaces: [{ ...ssItf, endpoints: [ep] }] }] });
    assert.throws(() => buildDescriptors(ssWith({ ...ssItf.endpoints[0]!, maxPacketSize: 512 })), /wMaxPacketSize 512/);
    assert.throws(() => buildDescriptors(ssWith({ ...ssItf.endpoints[0]!, superSpeed: { maxBurst: 16 } })), /bMaxBurst 16/);
    assert.throws(() => buildDescriptors({ ...spec, product: 'x'.repeat(127) }), RangeError);
    assert.throws(() => buildDescriptors({ ...spec, configurations: [{ ...spec.configurations[0]!, interfaces: [{ ...itf, endpoints: [itf.endpoints[0]!, itf.endpoints[0]!] }] }] }), /twice/);
    assert.throws(() => buildDescriptors({ ...spec, configurations: [{ ...spec.configurations[0]!, interfaces: [{ ...itf, number: 1 }] }] }), /interface numbers/);
  });
});

describe('emulated storage at SuperSpeed (:ss)', () => {
  let dev: StorageDevice;
  before(() => {
    dev = new StorageDevice(new MemoryImage(Buffer.alloc(4 << 20)), { location: LOCATION, serial: '0123456789ABCDEF01234567', speed: 5 });
  });

  it('reports speed 5 and a USB 3.0 device descriptor with a 512-byte endpoint 0 (exponent 9)', async () => {
    assert.equal(dev.info.speed, 5);
    const d = (await getDescriptor(dev, 0x01, 0, 18)).data;
    assert.equal(d.readUInt16LE(2), 0x0300, 'bcdUSB');
    assert.equal(d[7], 9, 'bMaxPacketSize0');
  });

  it('has 1024-byte bulk endpoints, each followed by its companion (bursts of 16, no streams), and bMaxPower in 8 mA units', async () => {
    const head = (await getDescriptor(dev, 0x02, 0, 9)).data;
    const w = walkConfiguration((await getDescriptor(dev, 0x02, 0, head.readUInt16LE(2))).data);
    const companion = { maxBurst: 15, attributes: 0, bytesPerInterval: 0 };
    assert.deepEqual(w.interfaces[0]!.endpoints, [
      { address: 0x81, attributes: 2, maxPacketSize: 1024, interval: 0, companion },
      { address: 0x02, attributes: 2, maxPacketSize: 1024, interval: 0, companion },
    ]);
    assert.equal(w.config.maxPower, Math.ceil(100 / 8));
  });

  it('answers BOS (USB 2.0 extension, SuperSpeed capability with zero exit latencies: no LPM) and stalls the high-speed-only descriptors', async () => {
    const head = (await getDescriptor(dev, 0x0f, 0, 5)).data;
    assert.deepEqual([head[0], head[1], head[4]], [5, 0x0f, 2]);
    const bos = (await getDescriptor(dev, 0x0f, 0, head.readUInt16LE(2))).data;
    assert.equal(bos.length, 5 + 7 + 10);
    assert.deepEqual([...bos.subarray(5, 8)], [7, 0x10, 0x02], 'USB 2.0 extension');
    assert.deepEqual([...bos.subarray(12, 15)], [10, 0x10, 0x03], 'SuperSpeed USB');
    assert.equal(bos.readUInt16LE(16), 0x000e, 'full, high and 5 Gb/s');
    assert.deepEqual([bos[19], bos.readUInt16LE(20)], [0, 0], 'U1/U2 exit latencies zero');
    assert.equal((await getDescriptor(dev, 0x06, 0, 10)).status, EPIPE, 'no device_qualifier at SuperSpeed');
    assert.equal((await getDescriptor(dev, 0x07, 0, 255)).status, EPIPE, 'no other_speed_configuration');
  });

  it('accepts SET_ISOCH_DELAY and SET_SEL, which a high-speed device stalls', async () => {
    assert.equal((await control(dev, 0x00, 0x31, 40, 0, 0)).status, 0, 'SET_ISOCH_DELAY');
    assert.equal((await control(dev, 0x00, 0x30, 0, 0, 6, Buffer.alloc(6))).status, 0, 'SET_SEL');
    assert.equal((await control(dev, 0x00, 0x30, 0, 0, 5, Buffer.alloc(5))).status, EPIPE, 'SET_SEL is six bytes');
    const hs = new StorageDevice(new MemoryImage(Buffer.alloc(64 * 1024)), { location: LOCATION, serial: '0123456789AB' });
    assert.equal((await control(hs, 0x00, 0x31, 40, 0, 0)).status, EPIPE);
    assert.equal((await control(hs, 0x00, 0x30, 0, 0, 6, Buffer.alloc(6))).status, EPIPE);
  });

  it('moves 1 MiB per command (max_sectors 2048) and reads back what it wrote', async () => {
    const fresh = randomBytes(1 << 20);
    const w = await command(dev, rw10(0x2a, 8, 2048), { out: fresh });
    assert.deepEqual([w.csw.status, w.csw.residue], [CswStatus.PASSED, 0]);
    const r = await command(dev, rw10(0x28, 8, 2048), { in: fresh.length });
    assert.deepEqual([r.csw.status, r.csw.residue], [CswStatus.PASSED, 0]);
    assert.equal(sha(r.data), sha(fresh));
  });
});

describe('emulated device: enumeration and standard requests', () => {
  let dev: StorageDevice;
  before(() => {
    dev = new StorageDevice(new MemoryImage(Buffer.alloc(64 * 1024)), { location: LOCATION, serial: '0123456789ABCDEF01234567' });
  });

  it('answers the device descriptor, first 8 bytes then all 18, and reports the same in info', async () => {
    const head = await getDescriptor(dev, 0x01, 0, 8);
    assert.equal(head.status, 0);
    assert.equal(head.data.length, 8);
    assert.equal(head.data[7], 64, 'bMaxPacketSize0');
    const d = (await getDescriptor(dev, 0x01, 0, 18)).data;
    assert.equal(d.length, 18);
    assert.equal(d.readUInt16LE(8), dev.info.idVendor);
    assert.equal(d.readUInt16LE(10), dev.info.idProduct);
    assert.equal(d[17], 1, 'one configuration');
    assert.equal(dev.info.speed, 3, 'high speed');
    assert.deepEqual(dev.info.interfaces, [{ bInterfaceClass: 8, bInterfaceSubClass: 6, bInterfaceProtocol: 0x50 }]);
    assert.equal(dev.info.bConfigurationValue, 1, 'exported configured, like a device bound to usbip-host');
    assert.equal((await getDescriptor(dev, 0x01, 0, 255)).data.length, 18, 'never more than the descriptor');
  });

  it('answers the configuration in two steps (9 bytes, then wTotalLength) and the tree walks back', async () => {
    const head = (await getDescriptor(dev, 0x02, 0, 9)).data;
    assert.equal(head.length, 9);
    const total = head.readUInt16LE(2);
    const tree = (await getDescriptor(dev, 0x02, 0, total)).data;
    const w = walkConfiguration(tree);
    assert.equal(w.config.value, 1);
    assert.equal(w.interfaces.length, 1);
    const itf = w.interfaces[0]!;
    assert.deepEqual([itf.cls, itf.subclass, itf.protocol], [8, 6, 0x50]);
    assert.deepEqual(itf.endpoints, [
      { address: 0x81, attributes: 2, maxPacketSize: 512, interval: 0 },
      { address: 0x02, attributes: 2, maxPacketSize: 512, interval: 0 },
    ]);
    assert.equal((await getDescriptor(dev, 0x02, 1, 255)).status, EPIPE, 'no second configuration');
  });

  it('answers strings in UTF-16LE for LANGID 0x0409, and a serial of at least 12 hex digits', async () => {
    const langs = (await getDescriptor(dev, 0x03, 0, 255)).data;
    assert.deepEqual([...langs], [4, 3, 0x09, 0x04]);
    const d = (await getDescriptor(dev, 0x01, 0, 18)).data;
    assert.equal(stringOf((await getDescriptor(dev, 0x03, d[14]!, 255, 0x0409)).data), 'prism');
    assert.equal(stringOf((await getDescriptor(dev, 0x03, d[15]!, 255, 0x0409)).data), 'prism emulated storage');
    assert.match(stringOf((await getDescriptor(dev, 0x03, d[16]!, 255, 0x0409)).data), /^[0-9A-F]{12,}$/);
    const cut = await getDescriptor(dev, 0x03, d[15]!, 2, 0x0409);
    assert.deepEqual([...cut.data], [2 + 2 * 'prism emulated storage'.length, 3], 'wLength cuts a string');
    assert.equal((await getDescriptor(dev, 0x03, 9, 255, 0x0409)).status, EPIPE, 'no string 9');
    assert.equal((await getDescriptor(dev, 0x03, 1, 255, 0x0407)).status, EPIPE, 'no German');
  });

  it('answers device_qualifier and other_speed_configuration for a high-speed device', async () => {
    const q = (await getDescriptor(dev, 0x06, 0, 10)).data;
    assert.deepEqual([q[0], q[1], q.readUInt16LE(2), q[7], q[8]], [10, 6, 0x0200, 64, 1]);
    const other = (await getDescriptor(dev, 0x07, 0, 255)).data;
    const w = walkConfiguration(other, 0x07);
    assert.deepEqual(
      w.interfaces[0]!.endpoints.map((e) => e.maxPacketSize),
      [64, 64],
      'bulk endpoints are 64 bytes at full speed',
    );
    assert.equal((await getDescriptor(dev, 0x0f, 0, 5)).status, EPIPE, 'no BOS for bcdUSB 2.00');
  });

  it('answers GET_STATUS, GET/SET_CONFIGURATION, GET/SET_INTERFACE and SET_ADDRESS', async () => {
    assert.deepEqual([...(await control(dev, 0x80, 0x00, 0, 0, 2)).data], [0, 0], 'bus powered, no remote wakeup');
    assert.deepEqual([...(await control(dev, 0x81, 0x00, 0, 0, 2)).data], [0, 0]);
    assert.equal((await control(dev, 0x81, 0x00, 0, 1, 2)).status, EPIPE, 'no interface 1');
    assert.deepEqual([...(await control(dev, 0x80, 0x08, 0, 0, 1)).data], [1]);
    assert.equal((await control(dev, 0x00, 0x09, 0, 0, 0)).status, 0, 'SET_CONFIGURATION 0');
    assert.equal(dev.info.bConfigurationValue, 0);
    assert.equal((await bulkIn(dev, 1, 13)).status, EPIPE, 'no bulk endpoints while unconfigured');
    assert.equal((await control(dev, 0x81, 0x0a, 0, 0, 1)).status, EPIPE, 'no interface while unconfigured');
    assert.equal((await control(dev, 0x00, 0x09, 2, 0, 0)).status, EPIPE, 'no configuration 2');
    assert.equal((await control(dev, 0x00, 0x09, 1, 0, 0)).status, 0);
    assert.deepEqual([...(await control(dev, 0x80, 0x08, 0, 0, 1)).data], [1]);
    assert.deepEqual([...(await control(dev, 0x81, 0x0a, 0, 0, 1)).data], [0]);
    assert.equal((await control(dev, 0x01, 0x0b, 0, 0, 0)).status, 0, 'SET_INTERFACE 0/0');
    assert.equal((await control(dev, 0x01, 0x0b, 1, 0, 0)).status, EPIPE, 'no alternate setting 1');
    assert.equal((await control(dev, 0x00, 0x05, 7, 0, 0)).status, 0, 'SET_ADDRESS');
    assert.equal((await control(dev, 0x00, 0x03, 1, 0, 0)).status, 0, 'SET_FEATURE remote wakeup');
    assert.deepEqual([...(await control(dev, 0x80, 0x00, 0, 0, 2)).data], [2, 0]);
    assert.equal((await control(dev, 0x00, 0x01, 1, 0, 0)).status, 0, 'CLEAR_FEATURE remote wakeup');
  });

  it('stalls unknown, vendor and malformed requests', async () => {
    assert.equal((await control(dev, 0x80, 0x42, 0, 0, 4)).status, EPIPE, 'reserved standard request');
    assert.equal((await control(dev, 0xc0, 0x01, 0, 0, 4)).status, EPIPE, 'vendor request');
    assert.equal((await control(dev, 0x00, 0x07, 0x0100, 0, 0)).status, EPIPE, 'SET_DESCRIPTOR');
    assert.equal((await control(dev, 0x82, 0x0c, 0, 0x81, 2)).status, EPIPE, 'SYNCH_FRAME');
    assert.equal((await control(dev, 0x00, 0x03, 2, 0x0100, 0)).status, EPIPE, 'TEST_MODE');
    const r = await dev.submit(makeUrb({ direction: 'in', endpoint: 0, setup: Buffer.alloc(7), transferBufferLength: 0 }), new AbortController().signal);
    assert.equal(r.status, EPIPE, 'a setup packet of 7 bytes');
    const wrongWay = await dev.submit(makeUrb({ direction: 'out', endpoint: 0, setup: setup(0x80, 0x06, 0x0100, 0, 18), transferBufferLength: 18, data: Buffer.alloc(18) }), new AbortController().signal);
    assert.equal(wrongWay.status, EPIPE, 'a data stage against bmRequestType');
  });

  it('stalls URBs to endpoints it does not have and to the wrong direction', async () => {
    assert.equal((await bulkIn(dev, 3, 512)).status, EPIPE);
    assert.equal((await bulkOut(dev, 1, Buffer.alloc(31))).status, EPIPE, 'endpoint 1 is IN only');
    assert.equal((await bulkIn(dev, 2, 512)).status, EPIPE, 'endpoint 2 is OUT only');
    assert.equal((await bulkOut(dev, 15, Buffer.alloc(1))).status, EPIPE);
  });

  it('halts an endpoint with SET_FEATURE and clears it with CLEAR_FEATURE(ENDPOINT_HALT)', async () => {
    assert.equal((await control(dev, 0x02, 0x03, 0, 0x81, 0)).status, 0);
    assert.equal(await endpointStatus(dev, 0x81), 1);
    assert.equal((await bulkIn(dev, 1, 13)).status, EPIPE);
    assert.equal((await clearHalt(dev, 0x81)).status, 0);
    assert.equal(await endpointStatus(dev, 0x81), 0);
    assert.equal((await clearHalt(dev, 0x83)).status, EPIPE, 'no endpoint 0x83');
    assert.equal((await command(dev, TEST_UNIT_READY)).csw.status, CswStatus.PASSED, 'serving again');
  });
});

describe('emulated storage: Bulk-Only Transport and SCSI', () => {
  const SIZE = 1024 * 1024;
  let content: Buffer;
  let path: string;
  let dev: StorageDevice;
  before(async () => {
    content = randomBytes(SIZE);
    path = await imageFile('disk.img', content);
    dev = (await createEmulated(`emulated:storage:${path}`, LOCATION)) as StorageDevice;
  });
  after(async () => {
    await dev.close();
  });

  it('answers Get Max LUN with 0 and stalls other class requests', async () => {
    const r = await control(dev, 0xa1, 0xfe, 0, 0, 1);
    assert.equal(r.status, 0);
    assert.deepEqual([...r.data], [0]);
    assert.equal((await control(dev, 0xa1, 0xfe, 0, 1, 1)).status, EPIPE, 'interface 1');
    assert.equal((await control(dev, 0xa1, 0x42, 0, 0, 1)).status, EPIPE, 'unknown class request');
  });

  it('answers INQUIRY with 36 bytes: a removable direct-access device', async () => {
    const r = await command(dev, INQUIRY_36, { in: 36 });
    assert.equal(r.csw.status, CswStatus.PASSED);
    assert.equal(r.csw.residue, 0);
    assert.equal(r.dataStalled || r.cswStalled, false, 'no stall when host and device agree');
    assert.equal(r.data.length, 36);
    assert.equal(r.data[0], 0x00, 'direct access');
    assert.equal(r.data[1], 0x80, 'removable');
    assert.equal(r.data[4], 31, 'additional length');
    assert.equal(r.data.subarray(8, 16).toString('ascii'), 'prism   ');
    assert.equal(r.data.subarray(16, 32).toString('ascii'), 'Emulated Disk   ');
  });

  it('answers the VPD pages 0x00, 0x80, 0x83 and refuses others with ILLEGAL REQUEST', async () => {
    const supported = await command(dev, cdb(0x12, 1, 0x00, 0, 255, 0), { in: 255 });
    assert.deepEqual([...supported.data], [0, 0, 0, 3, 0x00, 0x80, 0x83]);
    assert.equal(supported.csw.residue, 255 - 7);
    assert.ok(supported.cswStalled, 'a short data stage ends with a STALL (BOT case 5)');
    const serial = await command(dev, cdb(0x12, 1, 0x80, 0, 255, 0), { in: 255 });
    assert.match(serial.data.subarray(4).toString('ascii'), /^[0-9A-F]{24}$/);
    const id = await command(dev, cdb(0x12, 1, 0x83, 0, 255, 0), { in: 255 });
    assert.equal(id.data[1], 0x83);
    assert.equal(id.data[4]! & 0x0f, 2, 'ASCII designator');
    const none = await command(dev, cdb(0x12, 1, 0xb0, 0, 64, 0), { in: 64 });
    assert.equal(none.csw.status, CswStatus.FAILED);
    assert.equal(none.csw.residue, 64);
    assert.ok(none.dataStalled, 'no data: bulk IN stalls (BOT case 4)');
    assert.deepEqual(await requestSense(dev), senseOf('INVALID_FIELD_IN_CDB'));
  });

  it('is ready, and answers READ CAPACITY(10) and (16)', async () => {
    assert.equal((await command(dev, TEST_UNIT_READY)).csw.status, CswStatus.PASSED);
    const rc10 = await command(dev, READ_CAPACITY_10, { in: 8 });
    assert.equal(rc10.data.readUInt32BE(0), SIZE / 512 - 1, 'last LBA');
    assert.equal(rc10.data.readUInt32BE(4), 512);
    const rc16 = await command(dev, cdb(0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0), { in: 32 });
    assert.equal(rc16.csw.status, CswStatus.PASSED);
    assert.equal(rc16.data.readBigUInt64BE(0), BigInt(SIZE / 512 - 1));
    assert.equal(rc16.data.readUInt32BE(8), 512);
  });

  it('answers MODE SENSE(6) page 0x3f (192 bytes asked) without write protect, and the caching page', async () => {
    const all = await command(dev, cdb(0x1a, 0, 0x3f, 0, 192, 0), { in: 192 });
    assert.equal(all.csw.status, CswStatus.PASSED);
    assert.equal(all.data[0], all.data.length - 1, 'mode data length');
    assert.equal(all.data[2]! & 0x80, 0, 'not write-protected');
    assert.equal(all.csw.residue, 192 - all.data.length);
    const caching = await command(dev, cdb(0x5a, 0x08, 0x08, 0, 0, 0, 0, 0, 64, 0), { in: 64 });
    assert.equal(caching.data.readUInt16BE(0), caching.data.length - 2);
    assert.equal(caching.data[8], 0x08, 'page code');
    assert.equal(caching.data[10]! & 0x04, 0x04, 'WCE');
    const saved = await command(dev, cdb(0x1a, 0, 0xff, 0, 192, 0), { in: 192 });
    assert.equal(saved.csw.status, CswStatus.FAILED);
    assert.deepEqual(await requestSense(dev), senseOf('SAVING_PARAMETERS_NOT_SUPPORTED'));
  });

  it('reads what the image holds and writes what reads back (sha256), also through the file', async () => {
    const read = await command(dev, rw10(0x28, 0, 16), { in: 16 * 512 });
    assert.equal(read.csw.status, CswStatus.PASSED);
    assert.equal(sha(read.data), sha(content.subarray(0, 16 * 512)));

    const fresh = randomBytes(240 * 512); // Linux's largest write (max_sectors 240)
    const w = await command(dev, rw10(0x2a, 100, 240), { out: fresh });
    assert.equal(w.csw.status, CswStatus.PASSED);
    assert.equal(w.csw.residue, 0);
    const back = await command(dev, rw10(0x28, 100, 240), { in: fresh.length });
    assert.equal(sha(back.data), sha(fresh));
    const file = await readFile(path);
    assert.equal(sha(file.subarray(100 * 512, 340 * 512)), sha(fresh));
    assert.equal(sha(file.subarray(0, 100 * 512)), sha(content.subarray(0, 100 * 512)), 'the blocks before are untouched');
    assert.equal(sha(file.subarray(340 * 512)), sha(content.subarray(340 * 512)), 'the blocks after are untouched');
    assert.equal((await command(dev, cdb(0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0))).csw.status, CswStatus.PASSED, 'SYNCHRONIZE CACHE');
  });

  it('spreads a data stage over several URBs queued at once (a scatter-gather transfer)', async () => {
    const fresh = randomBytes(64 * 512);
    const t = ++tag;
    assert.equal((await bulkOut(dev, 2, encodeCbw({ tag: t, dataTransferLength: fresh.length, direction: 'out', lun: 0, cb: rw10(0x2a, 1000, 64) }))).status, 0);
    const outs = [0, 1, 2, 3].map((i) => bulkOut(dev, 2, fresh.subarray(i * 8192, (i + 1) * 8192)));
    const csw = bulkIn(dev, 1, 13); // queued before the data has all arrived
    assert.deepEqual(
      (await Promise.all(outs)).map((r) => [r.status, r.actualLength]),
      [0, 1, 2, 3].map(() => [0, 8192]),
    );
    assert.deepEqual(decodeCsw((await csw).data), { tag: t, residue: 0, status: 0 });

    const t2 = ++tag;
    assert.equal((await bulkOut(dev, 2, encodeCbw({ tag: t2, dataTransferLength: fresh.length, direction: 'in', lun: 0, cb: rw10(0x28, 1000, 64) }))).status, 0);
    const ins = [0, 1, 2, 3].map(() => bulkIn(dev, 1, 8192, undefined, 0x0001 /* URB_SHORT_NOT_OK */));
    const parts = await Promise.all(ins);
    assert.deepEqual(
      parts.map((r) => r.status),
      [0, 0, 0, 0],
    );
    assert.equal(sha(Buffer.concat(parts.map((r) => r.data))), sha(fresh), 'in order');
    assert.deepEqual(decodeCsw((await bulkIn(dev, 1, 13)).data), { tag: t2, residue: 0, status: 0 });
  });

  it('refuses an LBA beyond the disk with LOGICAL BLOCK ADDRESS OUT OF RANGE', async () => {
    const last = SIZE / 512;
    const r = await command(dev, rw10(0x28, last - 1, 2), { in: 1024 });
    assert.equal(r.csw.status, CswStatus.FAILED);
    assert.equal(r.csw.residue, 1024);
    assert.ok(r.dataStalled);
    assert.deepEqual(await requestSense(dev), senseOf('LOGICAL_BLOCK_ADDRESS_OUT_OF_RANGE'));
    const w = await command(dev, rw10(0x2a, last, 1), { out: Buffer.alloc(512) });
    assert.equal(w.csw.status, CswStatus.FAILED);
    assert.equal(w.csw.residue, 512, 'the data was taken and dropped (BOT case 9)');
    assert.deepEqual(await requestSense(dev), senseOf('LOGICAL_BLOCK_ADDRESS_OUT_OF_RANGE'));
    assert.equal((await command(dev, rw10(0x28, last - 1, 1), { in: 512 })).csw.status, CswStatus.PASSED, 'the last block reads');
  });

  it('refuses an unknown operation code with INVALID COMMAND OPERATION CODE', async () => {
    const r = await command(dev, cdb(0xa0, 0, 0, 0, 0, 0, 0, 0, 0, 16, 0, 0), { in: 16 }); // REPORT LUNS
    assert.equal(r.csw.status, CswStatus.FAILED);
    assert.deepEqual(await requestSense(dev), senseOf('INVALID_COMMAND_OPERATION_CODE'));
    assert.deepEqual(await requestSense(dev), senseOf('NO_ADDITIONAL_SENSE_INFORMATION'), 'REQUEST SENSE clears what it reported');
    const tur = await command(dev, cdb(0x4d, 0, 0, 0, 0, 0, 0, 0, 0, 0)); // LOG SENSE, no data stage
    assert.equal(tur.csw.status, CswStatus.FAILED);
    assert.equal((await command(dev, TEST_UNIT_READY)).csw.status, CswStatus.PASSED);
    assert.deepEqual(await requestSense(dev), senseOf('NO_ADDITIONAL_SENSE_INFORMATION'), 'the next command clears a sense');
  });

  it('follows the BOT disagreement cases: phase errors, residues, stalls', async () => {
    const noData = await command(dev, INQUIRY_36, { length: 0 }); // case 2
    assert.equal(noData.csw.status, CswStatus.PHASE_ERROR);
    const tooMuch = await command(dev, rw10(0x28, 0, 2), { in: 512 }); // case 7
    assert.equal(tooMuch.csw.status, CswStatus.PHASE_ERROR);
    assert.equal(tooMuch.data.length, 512);
    const wrongWay = await command(dev, rw10(0x2a, 0, 1), { in: 512 }); // case 8
    assert.equal(wrongWay.csw.status, CswStatus.PHASE_ERROR);
    assert.ok(wrongWay.dataStalled);
    const before = (await readFile(path)).subarray(0, 1024);
    const outForRead = await command(dev, rw10(0x28, 0, 1), { out: Buffer.alloc(512, 0xee) }); // case 10
    assert.equal(outForRead.csw.status, CswStatus.PHASE_ERROR);
    const short = await command(dev, rw10(0x2a, 0, 2), { out: Buffer.alloc(512, 0xee) }); // case 13
    assert.equal(short.csw.status, CswStatus.PHASE_ERROR);
    assert.deepEqual((await readFile(path)).subarray(0, 1024), before, 'a phase error writes nothing');
    const extra = await command(dev, rw10(0x2a, 0, 1), { out: before.subarray(0, 1024) }); // case 11
    assert.equal(extra.csw.status, CswStatus.PASSED);
    assert.equal(extra.csw.residue, 512);
    const tur = await command(dev, TEST_UNIT_READY, { in: 18 }); // case 4 with a good status
    assert.equal(tur.csw.status, CswStatus.PASSED);
    assert.equal(tur.csw.residue, 18);
    assert.ok(tur.dataStalled);
  });

  it('stalls both endpoints on an invalid CBW until Reset Recovery (CLEAR_FEATURE alone does not do)', async () => {
    for (const bad of [Buffer.alloc(30), Buffer.concat([Buffer.from('USBD'), Buffer.alloc(27)]), encodeCbw({ tag: 1, dataTransferLength: 0, direction: 'out', lun: 0, cb: TEST_UNIT_READY }).fill(0x20, 13, 14)]) {
      const r = await bulkOut(dev, 2, bad);
      assert.equal(r.status, 0, 'the bytes are taken');
      assert.equal(dev.phase, 'reset-needed');
      assert.ok(dev.lastCbwError instanceof CbwError);
      assert.equal((await bulkIn(dev, 1, 13)).status, EPIPE);
      assert.equal((await bulkOut(dev, 2, Buffer.alloc(31))).status, EPIPE);
      assert.equal((await clearHalt(dev, 0x81)).status, 0);
      assert.equal((await clearHalt(dev, 0x02)).status, 0);
      assert.equal(await endpointStatus(dev, 0x81), 1, 'still halted: wedged');
      assert.equal((await bulkIn(dev, 1, 13)).status, EPIPE);
      assert.equal((await control(dev, 0x21, 0xff, 0, 0, 0)).status, 0, 'Bulk-Only Mass Storage Reset');
      assert.equal(await endpointStatus(dev, 0x81), 1, 'the reset keeps the halts');
      assert.equal((await clearHalt(dev, 0x81)).status, 0);
      assert.equal((await clearHalt(dev, 0x02)).status, 0);
      assert.equal(await endpointStatus(dev, 0x02), 0);
      assert.equal((await command(dev, TEST_UNIT_READY)).csw.status, CswStatus.PASSED);
    }
  });

  it('recovers with Reset Recovery in the middle of a data stage', async () => {
    assert.equal((await bulkOut(dev, 2, encodeCbw({ tag: 9, dataTransferLength: 4096, direction: 'in', lun: 0, cb: rw10(0x28, 0, 8) }))).status, 0);
    assert.equal((await bulkIn(dev, 1, 512)).data.length, 512);
    assert.equal((await control(dev, 0x21, 0xff, 0, 0, 0)).status, 0);
    assert.equal((await control(dev, 0x21, 0xff, 1, 0, 0)).status, EPIPE, 'wValue must be 0');
    const r = await command(dev, INQUIRY_36, { in: 36 });
    assert.equal(r.csw.status, CswStatus.PASSED);
  });

  it('keeps a URB sent out of turn pending until its signal aborts it (-ECONNRESET)', async () => {
    const ac = new AbortController();
    const early = bulkIn(dev, 1, 13, ac.signal); // no CBW yet: nothing to send
    assert.ok(await stillPending(early));
    ac.abort();
    assert.equal((await early).status, ECONNRESET);
    assert.equal((await command(dev, TEST_UNIT_READY)).csw.status, CswStatus.PASSED, 'the aborted URB took nothing');
    const gone = new AbortController();
    gone.abort();
    assert.equal((await bulkIn(dev, 1, 13, gone.signal)).status, ECONNRESET, 'already aborted');
  });

  it('answers a short-buffer CSW read with -EOVERFLOW and ends a SHORT_NOT_OK short read with -EREMOTEIO', async () => {
    assert.equal((await bulkOut(dev, 2, encodeCbw({ tag: 77, dataTransferLength: 0, direction: 'out', lun: 0, cb: TEST_UNIT_READY }))).status, 0);
    assert.equal((await bulkIn(dev, 1, 12)).status, -75);
    assert.equal((await bulkOut(dev, 2, encodeCbw({ tag: 78, dataTransferLength: 64, direction: 'in', lun: 0, cb: INQUIRY_36 }))).status, 0);
    const r = await bulkIn(dev, 1, 64, undefined, 0x0001);
    assert.equal(r.status, -121);
    assert.equal(r.data.length, 36);
    assert.equal((await bulkIn(dev, 1, 13)).status, EPIPE, 'short, then stalled');
    await clearHalt(dev, 0x81);
    assert.deepEqual(decodeCsw((await bulkIn(dev, 1, 13)).data), { tag: 78, residue: 28, status: 0 });
  });

  it('ejects (START STOP UNIT) unless removal is prevented, and loads again', async () => {
    assert.equal((await command(dev, cdb(0x1e, 0, 0, 0, 1, 0))).csw.status, CswStatus.PASSED, 'PREVENT');
    assert.equal((await command(dev, cdb(0x1b, 0, 0, 0, 2, 0))).csw.status, CswStatus.FAILED);
    assert.deepEqual(await requestSense(dev), senseOf('MEDIUM_REMOVAL_PREVENTED'));
    assert.equal((await command(dev, cdb(0x1e, 0, 0, 0, 0, 0))).csw.status, CswStatus.PASSED, 'ALLOW');
    assert.equal((await command(dev, cdb(0x1b, 0, 0, 0, 2, 0))).csw.status, CswStatus.PASSED, 'eject');
    assert.equal((await command(dev, TEST_UNIT_READY)).csw.status, CswStatus.FAILED);
    assert.deepEqual(await requestSense(dev), senseOf('MEDIUM_NOT_PRESENT'));
    assert.equal((await command(dev, cdb(0x1b, 0, 0, 0, 3, 0))).csw.status, CswStatus.PASSED, 'load');
    assert.equal((await command(dev, TEST_UNIT_READY)).csw.status, CswStatus.PASSED);
  });

  it('starts over when the importer detaches', async () => {
    assert.equal((await bulkOut(dev, 2, Buffer.alloc(3))).status, 0);
    assert.equal(dev.phase, 'reset-needed');
    dev.detached();
    assert.equal(dev.phase, 'command');
    assert.equal(await endpointStatus(dev, 0x81), 0);
    assert.equal((await command(dev, TEST_UNIT_READY)).csw.status, CswStatus.PASSED);
  });
});

describe('emulated storage: read-only', () => {
  it('refuses WRITE with DATA PROTECT / WRITE PROTECTED, keeps the image, and says WP in MODE SENSE', async () => {
    const content = randomBytes(128 * 1024);
    const path = await imageFile('ro.img', content);
    const dev = (await createEmulated(`emulated:storage:${path}:ro`, LOCATION)) as StorageDevice;
    try {
      assert.equal(dev.disk.readOnly, true);
      const w = await command(dev, rw10(0x2a, 0, 1), { out: Buffer.alloc(512, 0x55) });
      assert.equal(w.csw.status, CswStatus.FAILED);
      assert.equal(w.csw.residue, 512);
      assert.deepEqual(await requestSense(dev), senseOf('WRITE_PROTECTED'));
      assert.equal(senseOf('WRITE_PROTECTED').key, 0x7, 'DATA PROTECT');
      const ms = await command(dev, cdb(0x1a, 0, 0x3f, 0, 192, 0), { in: 192 });
      assert.equal(ms.data[2]! & 0x80, 0x80, 'WP');
      assert.equal(sha(await readFile(path)), sha(content));
      const r = await command(dev, rw10(0x28, 0, 4), { in: 2048 });
      assert.equal(sha(r.data), sha(content.subarray(0, 2048)), 'reads work');
    } finally {
      await dev.close();
    }
  });
});

describe('emulated storage: a hostile importer', () => {
  it('leaves the device serving after any stream of URBs, with every URB answered or ended by its signal', async () => {
    const image = new MemoryImage(Buffer.alloc(64 * 1024));
    const dev = new StorageDevice(image, { location: LOCATION, serial: '0123456789AB' });
    const cbwArb = fc.record({
      tag: fc.nat(),
      dataTransferLength: fc.oneof(fc.constantFrom(0, 13, 18, 36, 512, 4096, 65536), fc.nat()),
      direction: fc.constantFrom<'in' | 'out'>('in', 'out'),
      lun: fc.constant(0),
      cb: fc.oneof(
        fc.constantFrom(INQUIRY_36, TEST_UNIT_READY, REQUEST_SENSE, READ_CAPACITY_10, rw10(0x28, 0, 8), rw10(0x2a, 120, 8), rw10(0x28, 200, 1)),
        fc.uint8Array({ minLength: 1, maxLength: 16 }).map((a) => Buffer.from(a)),
      ),
    });
    const step = fc.oneof(
      cbwArb.map((c) => ({ kind: 'cbw' as const, bytes: encodeCbw(c) })),
      fc.uint8Array({ maxLength: 40 }).map((a) => ({ kind: 'out' as const, bytes: Buffer.from(a) })),
      fc.integer({ min: 0, max: 70000 }).map((n) => ({ kind: 'in' as const, n })),
      fc.constantFrom(0x81, 0x02).map((ep) => ({ kind: 'clear' as const, ep })),
      fc.constant({ kind: 'reset' as const }),
    );
    await fc.assert(
      fc.asyncProperty(fc.array(step, { maxLength: 25 }), async (steps) => {
        const controllers: AbortController[] = [];
        const pending: Promise<UrbResult>[] = [];
        for (const s of steps) {
          const ac = new AbortController();
          controllers.push(ac);
          if (s.kind === 'cbw' || s.kind === 'out') pending.push(bulkOut(dev, 2, s.bytes, ac.signal));
          else if (s.kind === 'in') pending.push(bulkIn(dev, 1, s.n, ac.signal));
          else if (s.kind === 'clear') await clearHalt(dev, s.ep);
          else await control(dev, 0x21, 0xff, 0, 0, 0);
          await new Promise((r) => setImmediate(r));
        }
        for (const ac of controllers) ac.abort(); // the session ends
        for (const r of await Promise.all(pending)) {
          assert.ok(r.status === 0 || r.status < 0);
          assert.ok(r.data.length <= 70000);
        }
        // Reset Recovery, then the device serves.
        assert.equal((await control(dev, 0x21, 0xff, 0, 0, 0)).status, 0);
        await clearHalt(dev, 0x81);
        await clearHalt(dev, 0x02);
        const inq = await command(dev, INQUIRY_36, { in: 36 });
        assert.equal(inq.csw.status, CswStatus.PASSED);
      }),
      { numRuns: 150 },
    );
  });
});

describe('emulated keyboard', () => {
  const poll = (dev: UsbDevice, signal?: AbortSignal): Promise<UrbResult> => bulkIn(dev, 1, 8, signal);

  it('enumerates as a HID boot keyboard with its report descriptor on the interface', async () => {
    const dev = new KeyboardDevice(LOCATION);
    assert.equal(dev.info.speed, 2, 'full speed');
    assert.deepEqual(dev.info.interfaces, [{ bInterfaceClass: 3, bInterfaceSubClass: 1, bInterfaceProtocol: 1 }]);
    const total = (await getDescriptor(dev, 0x02, 0, 9)).data.readUInt16LE(2);
    const w = walkConfiguration((await getDescriptor(dev, 0x02, 0, total)).data);
    const itf = w.interfaces[0]!;
    assert.deepEqual([itf.cls, itf.subclass, itf.protocol], [3, 1, 1]);
    assert.equal(itf.extra.length, 1);
    const hid = itf.extra[0]!;
    assert.equal(hid[1], 0x21);
    assert.equal(hid[6], 0x22);
    assert.equal(hid.readUInt16LE(7), 63);
    assert.deepEqual(itf.endpoints, [{ address: 0x81, attributes: 3, maxPacketSize: 8, interval: 10 }]);
    const report = await control(dev, 0x81, 0x06, 0x2200, 0, 63 + 64); // usbhid asks for wDescriptorLength (+ slack)
    assert.equal(report.status, 0);
    assert.deepEqual(report.data, BOOT_KEYBOARD_REPORT_DESCRIPTOR);
    assert.deepEqual((await control(dev, 0x81, 0x06, 0x2100, 0, 9)).data, hid);
    assert.equal((await control(dev, 0x81, 0x06, 0x2200, 1, 63)).status, EPIPE, 'no interface 1');
    assert.equal((await getDescriptor(dev, 0x06, 0, 10)).status, EPIPE, 'a full-speed device has no device_qualifier');
  });

  it('answers SET_IDLE, SET_PROTOCOL, SET_REPORT (LEDs) and their GETs', async () => {
    const dev = new KeyboardDevice(LOCATION);
    assert.equal((await control(dev, 0x21, 0x0a, 0, 0, 0)).status, 0, 'SET_IDLE 0');
    assert.deepEqual([...(await control(dev, 0xa1, 0x02, 0, 0, 1)).data], [0]);
    assert.equal((await control(dev, 0x21, 0x0a, 0x7d00, 0, 0)).status, 0, 'SET_IDLE 500 ms');
    assert.equal(dev.idle, 0x7d);
    assert.equal((await control(dev, 0x21, 0x0b, 0, 0, 0)).status, 0, 'SET_PROTOCOL boot');
    assert.deepEqual([...(await control(dev, 0xa1, 0x03, 0, 0, 1)).data], [0]);
    assert.equal((await control(dev, 0x21, 0x0b, 2, 0, 0)).status, EPIPE, 'protocol 2');
    assert.equal((await control(dev, 0x21, 0x09, 0x0200, 0, 1, Buffer.from([0x02]))).status, 0, 'SET_REPORT caps lock');
    assert.equal(dev.leds, 0x02);
    assert.deepEqual([...(await control(dev, 0xa1, 0x01, 0x0200, 0, 1)).data], [0x02]);
    assert.deepEqual([...(await control(dev, 0xa1, 0x01, 0x0100, 0, 8)).data], [0, 0, 0, 0, 0, 0, 0, 0], 'GET_REPORT input: nothing pressed');
    assert.equal((await control(dev, 0x21, 0x09, 0x0300, 0, 1, Buffer.from([1]))).status, EPIPE, 'no feature report');
  });

  it('types "Hi!\\n": key-down and key-up reports with shift for H and !', async () => {
    const dev = new KeyboardDevice(LOCATION);
    dev.type('Hi!\n');
    const got: number[][] = [];
    for (let i = 0; i < 8; i++) {
      const r = await poll(dev);
      assert.equal(r.status, 0);
      got.push([...r.data]);
    }
    const up = [0, 0, 0, 0, 0, 0, 0, 0];
    assert.deepEqual(got, [
      [0x02, 0, 0x0b, 0, 0, 0, 0, 0], // H: left shift + h
      up,
      [0x00, 0, 0x0c, 0, 0, 0, 0, 0], // i
      up,
      [0x02, 0, 0x1e, 0, 0, 0, 0, 0], // !: left shift + 1
      up,
      [0x00, 0, 0x28, 0, 0, 0, 0, 0], // Enter
      up,
    ]);
    assert.equal(dev.pendingReports, 0);
  });

  it('keeps an interrupt URB pending until a report exists, and ends it with -ECONNRESET when aborted', async () => {
    const dev = new KeyboardDevice(LOCATION);
    const ac = new AbortController();
    const first = poll(dev, ac.signal);
    assert.ok(await stillPending(first));
    ac.abort();
    assert.deepEqual(await first, { status: ECONNRESET, data: Buffer.alloc(0) });
    const second = poll(dev);
    assert.ok(await stillPending(second));
    dev.type('a');
    assert.deepEqual([...(await second).data], [0, 0, 0x04, 0, 0, 0, 0, 0], 'a report completes the waiting URB');
    assert.deepEqual([...(await poll(dev)).data], [0, 0, 0, 0, 0, 0, 0, 0]);
  });

  it('types the spec text shortly after the host first polls, after each attach', async () => {
    const dev = (await createEmulated('emulated:keyboard:ok\\n', LOCATION)) as KeyboardDevice;
    assert.equal(dev.pendingReports, 0, 'nothing before the host polls');
    const usages: number[] = [];
    for (let i = 0; i < 6; i++) usages.push((await poll(dev)).data[2]!);
    assert.deepEqual(usages, [0x12, 0, 0x0e, 0, 0x28, 0]);
    const ac = new AbortController();
    const idle = poll(dev, ac.signal);
    assert.ok(await stillPending(idle), 'typed once');
    ac.abort();
    await idle;
    dev.detached();
    assert.equal((await poll(dev)).data[2], 0x12, 'typed again for the next importer');
  });

  it('refuses text a US keyboard cannot type, naming the character', () => {
    const dev = new KeyboardDevice(LOCATION);
    assert.throws(() => dev.type('café'), /cannot type "é" \(U\+00e9\) at position 3/);
    assert.equal(dev.pendingReports, 0, 'all or nothing');
    assert.equal(reportsFor('\r\n').length, 2, 'CR LF is one Enter');
    assert.equal(reportsFor('~`|\\').length, 8);
  });
});

describe('createEmulated', () => {
  it('parses specs', () => {
    assert.deepEqual(parseEmulatedSpec('emulated:storage:/a/b.img'), { kind: 'storage', image: '/a/b.img', readOnly: false, speed: 5 });
    assert.deepEqual(parseEmulatedSpec('emulated:storage:/a/b.img:ro'), { kind: 'storage', image: '/a/b.img', readOnly: true, speed: 5 });
    assert.deepEqual(parseEmulatedSpec('emulated:storage:c:d.img:rw'), { kind: 'storage', image: 'c:d.img', readOnly: false, speed: 5 });
    assert.deepEqual(parseEmulatedSpec('emulated:storage:/a/b.img:ss'), { kind: 'storage', image: '/a/b.img', readOnly: false, speed: 5 });
    assert.deepEqual(parseEmulatedSpec('emulated:storage:/a/b.img:ro:ss'), { kind: 'storage', image: '/a/b.img', readOnly: true, speed: 5 });
    assert.deepEqual(parseEmulatedSpec('emulated:storage:/a/b.img:hs'), { kind: 'storage', image: '/a/b.img', readOnly: false, speed: 3 });
    assert.deepEqual(parseEmulatedSpec('emulated:storage:/a/x:ss:rw:hs'), { kind: 'storage', image: '/a/x:ss', readOnly: false, speed: 3 }, 'explicit options keep a path that ends like one');
    assert.deepEqual(parseEmulatedSpec('emulated:storage:/a/x:ro:rw'), { kind: 'storage', image: '/a/x:ro', readOnly: false, speed: 5 });
    assert.deepEqual(parseEmulatedSpec('emulated:keyboard'), { kind: 'keyboard', text: '' });
    assert.deepEqual(parseEmulatedSpec('emulated:keyboard:a:b\\n\\t\\\\\\:'), { kind: 'keyboard', text: 'a:b\n\t\\:' });
  });

  it('refuses bad specs with errors naming the spec', async () => {
    const cases: [string, RegExp][] = [
      ['emulated:printer', /^emulated:printer: unknown emulated device "printer"/],
      ['emulated:', /^emulated:: expected emulated:storage:IMAGE\[:ro\]\[:hs\|:ss\] or emulated:keyboard\[:TEXT\]/],
      ['emulated:storage::ss', /no image file/],
      ['host:1-2', /^host:1-2: expected/],
      ['emulated:storage', /no image file/],
      ['emulated:storage::ro', /no image file/],
      ['emulated:keyboard:\\q', /unknown escape "\\q"/],
      ['emulated:keyboard:naïve', /^emulated:keyboard:naïve: cannot type "ï"/],
      [`emulated:storage:${tmpdir()}/prism-no-such-image.img`, /does not exist/],
    ];
    for (const [spec, re] of cases) {
      await assert.rejects(createEmulated(spec, LOCATION), (e: unknown) => {
        assert.ok(e instanceof EmulatedSpecError, spec);
        assert.equal(e.code, 'ERR_USBIP_EMULATED_SPEC');
        assert.equal(e.spec, spec);
        assert.match(e.message, re);
        return true;
      });
    }
  });

  it('refuses an image whose size is not a multiple of 512, an empty one, and a directory', async () => {
    const odd = await imageFile('odd.img', Buffer.alloc(1000));
    await assert.rejects(createEmulated(`emulated:storage:${odd}`, LOCATION), /1000 bytes, not a multiple of 512/);
    const empty = await imageFile('empty.img', Buffer.alloc(0));
    await assert.rejects(createEmulated(`emulated:storage:${empty}`, LOCATION), /is empty/);
    await assert.rejects(createEmulated(`emulated:storage:${dir}`, LOCATION), /not a regular file/);
  });
});

// --- the parsers ---------------------------------------------------------------------------------------

interface Vector {
  line: number;
  hex: string;
  bytes: Buffer;
  expect: { ok: unknown } | { error: string };
}

function loadVectors(file: string): Vector[] {
  const out: Vector[] = [];
  readFileSync(new URL(file, FIXTURES), 'utf8')
    .split('\n')
    .forEach((raw, i) => {
      const line = raw.replace(/\s+#.*$/, '').trim();
      if (line === '' || line.startsWith('#')) return;
      const m = /^([0-9a-f ]+?)\s+([=!])\s+(.*)$/.exec(line);
      assert.ok(m, `${file}:${i + 1}: HEX = JSON or HEX ! NAME`);
      const hex = m[1]!.replace(/ /g, '');
      out.push({ line: i + 1, hex, bytes: Buffer.from(hex, 'hex'), expect: m[2] === '=' ? { ok: JSON.parse(m[3]!) } : { error: m[3]! } });
    });
  return out;
}

describe('SCSI CDB parser', () => {
  const vectors = loadVectors('cdbs.txt');

  it('parses the golden CDBs (Linux sd + usb-storage and the spec) and refuses the bad ones with their sense', () => {
    assert.ok(vectors.length > 50);
    for (const v of vectors) {
      if ('ok' in v.expect) assert.deepEqual(parseCdb(v.bytes), v.expect.ok, `cdbs.txt:${v.line}`);
      else {
        const name = v.expect.error;
        assert.throws(
          () => parseCdb(v.bytes),
          (e: unknown) => e instanceof ScsiSenseError && e.senseName === name && e.code === 'ERR_SCSI_CHECK_CONDITION',
          `cdbs.txt:${v.line}`,
        );
      }
    }
    assert.throws(() => parseCdb(Buffer.alloc(0)), (e: unknown) => e instanceof ScsiSenseError && e.senseName === 'INVALID_COMMAND_OPERATION_CODE');
  });

  it('throws only ScsiSenseError on any bytes, and what it returns is exact', () => {
    const known = [0x00, 0x03, 0x08, 0x0a, 0x12, 0x1a, 0x1b, 0x1e, 0x25, 0x28, 0x2a, 0x35, 0x5a, 0x88, 0x8a, 0x91, 0x9e, 0xa8, 0xaa];
    const arb = fc.oneof(
      fc.uint8Array({ maxLength: 20 }),
      fc.tuple(fc.constantFrom(...known), fc.uint8Array({ maxLength: 17 })).map(([op, rest]) => Uint8Array.from([op, ...rest])),
    );
    fc.assert(
      fc.property(arb, (a) => {
        try {
          const cmd = parseCdb(Buffer.from(a));
          if (cmd.op === 'read' || cmd.op === 'write' || cmd.op === 'synchronize-cache') {
            assert.ok(Number.isSafeInteger(cmd.lba) && cmd.lba >= 0 && Number.isSafeInteger(cmd.lba + cmd.blocks));
          }
        } catch (e) {
          if (!(e instanceof ScsiSenseError)) throw e;
          assert.ok(e.sense === Asc[e.senseName]);
        }
      }),
      { numRuns: 20000 },
    );
  });

  it('as the disk runs it: prepare() throws only ScsiSenseError and records its sense', () => {
    const disk = new ScsiDisk(new MemoryImage(Buffer.alloc(8192)), { vendor: 'v', product: 'p', revision: 'r', serial: '0123456789AB', removable: true });
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 17 }), (a) => {
        try {
          const plan = disk.prepare(Buffer.from(a));
          if (plan.direction !== 'none') assert.ok(Number.isSafeInteger(plan.length) && plan.length >= 0);
        } catch (e) {
          if (!(e instanceof ScsiSenseError)) throw e;
          assert.deepEqual(disk.sense, e.sense);
        }
      }),
      { numRuns: 20000 },
    );
  });
});

describe('CBW parser', () => {
  const vectors = loadVectors('cbws.txt');

  it('decodes the golden CBWs, encodes them back, and refuses the bad ones with their reason', () => {
    for (const v of vectors) {
      if ('ok' in v.expect) {
        const want = v.expect.ok as Omit<Cbw, 'cb'> & { cb: string };
        const got = decodeCbw(v.bytes);
        assert.deepEqual({ ...got, cb: got.cb.toString('hex') }, want, `cbws.txt:${v.line}`);
        const canonical = Buffer.from(v.bytes);
        canonical.fill(0, 15 + got.cb.length);
        assert.deepEqual(encodeCbw(got), canonical, `cbws.txt:${v.line} re-encodes`);
      } else {
        const reason = v.expect.error;
        assert.throws(
          () => decodeCbw(v.bytes),
          (e: unknown) => e instanceof CbwError && e.reason === reason && e.valid === !['length', 'signature'].includes(reason),
          `cbws.txt:${v.line}`,
        );
      }
    }
  });

  it('throws only CbwError on any bytes, and what it decodes re-encodes to the same CBW', () => {
    const arb = fc.oneof(
      fc.uint8Array({ maxLength: 40 }),
      fc.uint8Array({ minLength: 31, maxLength: 31 }).map((a) => {
        const b = Buffer.from(a);
        b.writeUInt32LE(0x43425355, 0);
        return b;
      }),
      fc.record({ flags: fc.constantFrom(0, 0x80, 0x81, 0x40), lun: fc.constantFrom(0, 1, 0x10), len: fc.integer({ min: 0, max: 0x1f }), rest: fc.uint8Array({ minLength: 31, maxLength: 31 }) }).map(({ flags, lun, len, rest }) => {
        const b = Buffer.from(rest);
        b.writeUInt32LE(0x43425355, 0);
        b[12] = flags;
        b[13] = lun;
        b[14] = len;
        return b;
      }),
    );
    fc.assert(
      fc.property(arb, (a) => {
        const b = Buffer.from(a);
        let c: Cbw;
        try {
          c = decodeCbw(b);
        } catch (e) {
          if (!(e instanceof CbwError)) throw e;
          return;
        }
        const canonical = Buffer.from(b);
        canonical.fill(0, 15 + c.cb.length);
        assert.deepEqual(encodeCbw(c), canonical);
      }),
      { numRuns: 20000 },
    );
  });
});
