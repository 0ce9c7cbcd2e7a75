// The USB/IP server against a fake in-memory device, driven from the client side with prism's own
// codec over socketpairs (and once over a real Unix listener): device list and import by policy,
// control and bulk transfers both ways, ISO, completion order, unlink of running / answered /
// unknown URBs, several imports in a row on one stream (the virtio-serial case), a busy device,
// refusals with their log lines, and hostile input that costs only its own connection.
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { Duplex } from 'node:stream';
import { afterEach, describe, it } from 'node:test';
import {
  Command, OpStatus, PDU_HEADER_SIZE, ReplyReader, encode, encodeSetup,
  type CmdSubmit, type IsoPacketDescriptor, type OpRepDevlist, type OpRepImport, type RetSubmit, type RetUnlink, type SubmitContext, type UsbipReply, type UsbipRequest,
} from '../src/codecs/usbip/index.js';
import * as sys from '../src/sys/index.js';
import { dial, listen } from '../src/transport/index.js';
import type { Urb, UrbResult, UsbDevice, UsbDeviceInfo } from '../src/usbip/device.js';
import { UsbipPolicy, formatRule, parseRule, peerIdentity, PolicyError } from '../src/usbip/policy.js';
import { UsbipConfigError, UsbipServer, devidOf, retSubmitFor, type LogFn } from '../src/usbip/server.js';
import { DEVICE_KINDS, createDevices } from '../src/cli/usbip.js';
import { UsageError } from '../src/cli/errors.js';

// --- a fake device ------------------------------------------------------------------------------

const DEVICE_DESCRIPTOR = Buffer.from('12010002000000406b1d040100010102030 1'.replace(/ /g, ''), 'hex');

type Handler = (urb: Urb, signal: AbortSignal) => Promise<UrbResult> | UrbResult;

/**
 * Endpoint 0: GET_DESCRIPTOR(DEVICE) and any OUT request. Endpoint 1 IN: "hello". Endpoint 2 OUT:
 * keeps the data. Endpoint 3: held until release(seqnum) or aborted. Endpoint 5: ISO. Anything
 * else stalls (-EPIPE), as a device without that endpoint would.
 */
class FakeDevice implements UsbDevice {
  readonly info: UsbDeviceInfo;
  readonly submitted: Urb[] = [];
  readonly aborted: number[] = [];
  received = Buffer.alloc(0);
  attachedCount = 0;
  detachedCount = 0;
  override: Handler | null = null;
  private readonly held = new Map<number, (r: UrbResult) => void>();

  constructor(busid: string, devnum: number, extra: Partial<UsbDeviceInfo> = {}) {
    this.info = {
      busid, busnum: 1, devnum, speed: 3, idVendor: 0x1d6b, idProduct: 0x0104, bcdDevice: 0x0100, bDeviceClass: 0, bDeviceSubClass: 0, bDeviceProtocol: 0,
      bConfigurationValue: 1, bNumConfigurations: 1, interfaces: [{ bInterfaceClass: 8, bInterfaceSubClass: 6, bInterfaceProtocol: 0x50 }], ...extra,
    };
  }

  attached(): void {
    this.attachedCount++;
  }

  detached(): void {
    this.detachedCount++;
  }

  get holding(): number {
    return this.held.size;
  }

  release(seqnum: number, result: UrbResult = { status: 0, data: Buffer.from('late') }): void {
    const r = this.held.get(seqnum);
    assert.ok(r, `seqnum ${seqnum} is not held`);
    this.held.delete(seqnum);
    r(result);
  }

  async submit(urb: Urb, signal: AbortSignal): Promise<UrbResult> {
    this.submitted.push(urb);
    if (this.override) return this.override(urb, signal);
    switch (urb.endpoint) {
      case 0: {
        const req = urb.setup;
        if (urb.direction === 'in' && req[1] === 6 && req[3] === 1) return { status: 0, data: DEVICE_DESCRIPTOR.subarray(0, urb.transferBufferLength) };
        if (urb.direction === 'out') return { status: 0, data: Buffer.alloc(0) };
        return { status: -32, data: Buffer.alloc(0) };
      }
      case 1:
        return { status: 0, data: Buffer.from('hello').subarray(0, urb.transferBufferLength) };
      case 2:
        this.received = Buffer.concat([this.received, urb.data]);
        return { status: 0, data: Buffer.alloc(0) };
      case 3:
        return new Promise<UrbResult>((resolve) => {
          this.held.set(urb.seqnum, resolve);
          signal.addEventListener('abort', () => {
            this.aborted.push(urb.seqnum);
            this.held.delete(urb.seqnum);
            resolve({ status: -104, data: Buffer.alloc(0) });
          });
        });
      case 5: {
        // ISO: packet i gets i + 1 bytes of value i (IN), or takes what it was given (OUT).
        const packets = urb.isoPackets.map((p, i) => ({ ...p, actualLength: urb.direction === 'in' ? Math.min(i + 1, p.length) : p.length, status: 0 }));
        const data = urb.direction === 'in' ? Buffer.concat(packets.map((p, i) => Buffer.alloc(p.actualLength, i))) : Buffer.alloc(0);
        return { status: 0, data, isoPackets: packets };
      }
      default:
        return { status: -32, data: Buffer.alloc(0) };
    }
  }
}

// --- a client driven with the codec -------------------------------------------------------------

class Client {
  private readonly reader: ReplyReader;
  private readonly pending = new Map<number, SubmitContext>();
  private readonly replies: UsbipReply[] = [];
  private waiter: (() => void) | null = null;
  private seq = 100;
  ended = false;
  error: Error | null = null;
  devid = 0;

  constructor(readonly stream: Duplex) {
    this.reader = new ReplyReader((s) => this.pending.get(s));
    stream.on('data', (chunk: Buffer) => {
      this.reader.push(chunk);
      try {
        for (let m = this.reader.next(); m !== null; m = this.reader.next()) {
          if (m.type === 'RET_SUBMIT') this.pending.delete(m.seqnum);
          this.replies.push(m);
        }
      } catch (e) {
        this.error = e as Error;
        this.ended = true;
      }
      this.wake();
    });
    const done = (): void => {
      this.ended = true;
      this.wake();
    };
    stream.on('end', done);
    stream.on('close', done);
    stream.on('error', (e: Error) => {
      this.error = e;
      done();
    });
  }

  private wake(): void {
    const w = this.waiter;
    this.waiter = null;
    w?.();
  }

  send(m: UsbipRequest): void {
    if (m.type === 'CMD_SUBMIT') this.pending.set(m.seqnum, { direction: m.direction, transferBufferLength: m.transferBufferLength, numberOfPackets: m.numberOfPackets });
    this.stream.write(encode(m));
  }

  /** Writes bytes as they are; `expect` says what a RET_SUBMIT to them would answer. */
  writeRaw(b: Buffer, expect?: { seqnum: number } & SubmitContext): void {
    if (expect) this.pending.set(expect.seqnum, expect);
    this.stream.write(b);
  }

  async next(timeoutMs = 3000): Promise<UsbipReply> {
    const deadline = Date.now() + timeoutMs;
    while (this.replies.length === 0) {
      if (this.ended) throw new Error('the server closed the connection');
      const left = deadline - Date.now();
      if (left <= 0) throw new Error('no reply in time');
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.waiter = () => {
          clearTimeout(t);
          resolve();
        };
      });
    }
    return this.replies.shift() as UsbipReply;
  }

  /** Waits a little and checks nothing more arrived. */
  async nothing(ms = 100): Promise<void> {
    await new Promise((r) => setTimeout(r, ms));
    assert.deepEqual(this.replies.map((r) => `${r.type} ${'seqnum' in r ? r.seqnum : ''}`), []);
  }

  async waitEnd(timeoutMs = 3000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!this.ended) {
      if (Date.now() > deadline) throw new Error('the connection did not end');
      await new Promise((r) => setTimeout(r, 10));
    }
  }

  async devlist(): Promise<OpRepDevlist> {
    this.send({ type: 'OP_REQ_DEVLIST', status: 0 });
    const r = await this.next();
    assert.equal(r.type, 'OP_REP_DEVLIST');
    return r;
  }

  async import(busid: string): Promise<OpRepImport> {
    this.send({ type: 'OP_REQ_IMPORT', status: 0, busid });
    const r = await this.next();
    assert.equal(r.type, 'OP_REP_IMPORT');
    if (r.device) this.devid = devidOf(r.device);
    return r;
  }

  submit(fields: Partial<CmdSubmit> & Pick<CmdSubmit, 'direction' | 'ep'>): number {
    const seqnum = fields.seqnum ?? this.seq++;
    const length = fields.transferBufferLength ?? fields.data?.length ?? 0;
    this.send({
      type: 'CMD_SUBMIT', seqnum, devid: this.devid, transferFlags: fields.direction === 'in' ? 0x200 : 0, transferBufferLength: length, startFrame: 0,
      numberOfPackets: 0, interval: 0, setup: Buffer.alloc(8), data: Buffer.alloc(0), isoPackets: [], ...fields,
    });
    return seqnum;
  }

  unlink(target: number): number {
    const seqnum = this.seq++;
    this.send({ type: 'CMD_UNLINK', seqnum, devid: this.devid, unlinkSeqnum: target });
    return seqnum;
  }

  async ret(): Promise<RetSubmit> {
    const r = await this.next();
    assert.equal(r.type, 'RET_SUBMIT', JSON.stringify(r));
    return r;
  }
}

// --- harness ------------------------------------------------------------------------------------

interface LogLine {
  level: string;
  msg: string;
  fields: Record<string, unknown>;
}

const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

function setup(opts: { rules?: string[]; devices?: FakeDevice[]; maxInflight?: number; maxTransferLength?: number } = {}): {
  server: UsbipServer;
  devices: FakeDevice[];
  logs: LogLine[];
  connect: (peer?: string) => Client;
} {
  const devices = opts.devices ?? [new FakeDevice('1-1', 2), new FakeDevice('1-2', 3, { speed: 2, idProduct: 0x0105, interfaces: [{ bInterfaceClass: 3, bInterfaceSubClass: 1, bInterfaceProtocol: 1 }] })];
  const logs: LogLine[] = [];
  const log: LogFn = (level, msg, fields) => logs.push({ level, msg, fields: fields ?? {} });
  const server = new UsbipServer(devices, { policy: new UsbipPolicy(opts.rules ?? ['any']), log, maxInflight: opts.maxInflight, maxTransferLength: opts.maxTransferLength });
  cleanups.push(() => server.close());
  const connect = (peer = 'vsock:4:1035'): Client => {
    const [a, b] = sys.unixSocketPair();
    cleanups.push(() => {
      b.destroy();
    });
    server.accept({ stream: a, peer });
    return new Client(b);
  };
  return { server, devices, logs, connect };
}

const GET_DEVICE_DESCRIPTOR = encodeSetup({ bmRequestType: 0x80, bRequest: 6, wValue: 0x0100, wIndex: 0, wLength: 18 });
const SET_CONFIGURATION = encodeSetup({ bmRequestType: 0, bRequest: 9, wValue: 1, wIndex: 0, wLength: 0 });

// --- tests --------------------------------------------------------------------------------------

describe('usbip server: listing and importing', () => {
  it('lists the devices with their interface records', async () => {
    const { connect } = setup();
    const c = connect();
    const list = await c.devlist();
    assert.equal(list.status, 0);
    assert.deepEqual(list.devices.map((d) => [d.device.busid, d.device.devnum, d.device.speed, d.device.bNumInterfaces, d.interfaces[0]?.bInterfaceClass]), [['1-1', 2, 3, 1, 8], ['1-2', 3, 2, 1, 3]]);
    assert.equal(list.devices[0]?.device.path, '/sys/devices/prism/usbip/1-1');
    // A second list on the same stream (usbip list, then attach, through one virtio-serial port).
    assert.equal((await c.devlist()).devices.length, 2);
  });

  it('imports a device: status 0 and its record; attached() is called; the server says who has it', async () => {
    const { connect, devices, server } = setup();
    const c = connect();
    const r = await c.import('1-1');
    assert.equal(r.status, OpStatus.OK);
    assert.equal(r.device?.busid, '1-1');
    assert.equal(r.device?.idVendor, 0x1d6b);
    assert.equal(devices[0]?.attachedCount, 1);
    assert.deepEqual(server.status().devices.map((d) => [d.busid, d.importedBy]), [['1-1', 'vsock:4:1035'], ['1-2', null]]);
  });

  it('answers an unknown busid with status 4 (ST_NODEV)', async () => {
    const { connect } = setup();
    const r = await connect().import('9-9');
    assert.equal(r.status, OpStatus.NODEV);
    assert.equal(r.device, null);
  });

  it('refuses a second importer while the device is busy (status 2), and lets it in once the first one leaves', async () => {
    const { connect, devices, logs } = setup();
    const first = connect('vsock:4:1035');
    assert.equal((await first.import('1-1')).status, OpStatus.OK);
    const second = connect('vsock:5:1035');
    assert.equal((await second.import('1-1')).status, OpStatus.DEV_BUSY);
    assert.ok(logs.some((l) => l.msg.includes('busy') && l.fields.importedBy === 'vsock:4:1035'));
    // The first importer vanishes (EOF): its device is released.
    first.stream.end();
    await first.waitEnd();
    await waitFor(() => devices[0]?.detachedCount === 1);
    assert.equal((await second.import('1-1')).status, OpStatus.OK);
    assert.equal(devices[0]?.attachedCount, 2);
  });
});

describe('usbip server: policy', () => {
  it('lists only what the peer may import, and refuses the rest with status 1 and a log line saying which rule would allow it', async () => {
    const { connect, logs } = setup({ rules: ['peer=vsock:4,busid=1-1', 'peer=vsock:5,class=3'] });
    const four = connect('vsock:4:1035');
    assert.deepEqual((await four.devlist()).devices.map((d) => d.device.busid), ['1-1']);
    const r = await four.import('1-2');
    assert.equal(r.status, OpStatus.NA);
    const line = logs.find((l) => l.msg === 'usbip import refused by policy');
    assert.ok(line, JSON.stringify(logs));
    assert.equal(line.level, 'warn');
    assert.equal(line.fields.peer, 'vsock:4:1035');
    assert.equal(line.fields.busid, '1-2');
    assert.equal(line.fields.vidPid, '1d6b:0105');
    assert.equal(line.fields.wouldAllow, '--allow peer=vsock:4,busid=1-2');
    assert.equal((await four.import('1-1')).status, OpStatus.OK);
    const five = connect('vsock:5:2000');
    assert.deepEqual((await five.devlist()).devices.map((d) => d.device.busid), ['1-2']);
    const fortyTwo = connect('vsock:42:1035');
    assert.deepEqual((await fortyTwo.devlist()).devices, [], 'vsock:4 does not match CID 42');
    assert.equal((await fortyTwo.import('1-1')).status, OpStatus.NA);
  });

  it('denies everything by default', async () => {
    const { connect } = setup({ rules: [] });
    const c = connect();
    assert.deepEqual((await c.devlist()).devices, []);
    assert.equal((await c.import('1-1')).status, OpStatus.NA);
  });

  it('parses and formats rules; matches peers up to a colon, VID:PID (with *), classes of the device or an interface', () => {
    assert.deepEqual(parseRule('peer=vsock:4,busid=1-1'), { peer: 'vsock:4', busid: '1-1' });
    assert.deepEqual(parseRule('vidpid=1D6B:0104'), { vidPid: '1d6b:0104' });
    assert.deepEqual(parseRule('class=0x08'), { class: 8 });
    assert.deepEqual(parseRule('any'), {});
    assert.equal(formatRule(parseRule('busid=1-1,peer=tcp:[::1],vidpid=1d6b:*,class=3')), 'peer=tcp:[::1],busid=1-1,vidpid=1d6b:*,class=3');
    for (const bad of ['', 'peer', 'busid=', 'vidpid=1d6b', 'vidpid=1d6b:10000', 'class=256', 'class=x', 'color=red', 'busid=1,busid=2']) {
      assert.throws(() => parseRule(bad), PolicyError, bad);
    }
    const info = new FakeDevice('1-2', 3, { idProduct: 0x0105, interfaces: [{ bInterfaceClass: 3, bInterfaceSubClass: 1, bInterfaceProtocol: 1 }] }).info;
    const p = (rule: string, peer = 'vsock:4:1035'): boolean => new UsbipPolicy([rule]).allows(peer, info);
    assert.ok(p('peer=vsock:4'));
    assert.ok(!p('peer=vsock:4', 'vsock:40:1035'));
    assert.ok(p('peer=tcp:127.0.0.1', 'tcp:127.0.0.1:5000'));
    assert.ok(p('peer=unix:/run/vm4.sock', 'unix:/run/vm4.sock'));
    assert.ok(!p('peer=unix:/run/vm4', 'unix:/run/vm4.sock'));
    assert.ok(p('vidpid=1d6b:*'));
    assert.ok(!p('vidpid=1d6b:0104'));
    assert.ok(p('class=3'), 'the interface class');
    assert.ok(!p('class=8'));
    assert.equal(peerIdentity('vsock:4:1035'), 'vsock:4');
    assert.equal(peerIdentity('tcp:[::1]:5000'), 'tcp:[::1]');
    assert.equal(peerIdentity('unix:/run/x.sock'), 'unix:/run/x.sock');
  });
});

describe('usbip server: URBs', () => {
  it('carries control IN and OUT transfers on endpoint 0', async () => {
    const { connect, devices } = setup();
    const c = connect();
    await c.import('1-1');
    const s1 = c.submit({ direction: 'in', ep: 0, transferBufferLength: 18, setup: GET_DEVICE_DESCRIPTOR });
    const r1 = await c.ret();
    assert.equal(r1.seqnum, s1);
    assert.equal(r1.status, 0);
    assert.equal(r1.actualLength, 18);
    assert.deepEqual(r1.data, DEVICE_DESCRIPTOR);
    c.submit({ direction: 'out', ep: 0, setup: SET_CONFIGURATION });
    const r2 = await c.ret();
    assert.deepEqual([r2.status, r2.actualLength, r2.data.length], [0, 0, 0]);
    assert.deepEqual(devices[0]?.submitted.map((u) => [u.endpoint, u.direction, u.setup.toString('hex')]), [
      [0, 'in', '8006000100001200'],
      [0, 'out', '0009010000000000'],
    ]);
  });

  it('carries bulk OUT data to the device and bulk IN data back (short reads included)', async () => {
    const { connect, devices } = setup();
    const c = connect();
    await c.import('1-1');
    const cbw = Buffer.from('55534243070000002400000080000612000000240000000000000000000000', 'hex');
    c.submit({ direction: 'out', ep: 2, data: cbw });
    const out = await c.ret();
    assert.deepEqual([out.status, out.actualLength, out.data.length], [0, 31, 0]);
    assert.deepEqual(devices[0]?.received, cbw);
    c.submit({ direction: 'in', ep: 1, transferBufferLength: 512 });
    const inn = await c.ret();
    assert.deepEqual([inn.status, inn.actualLength, inn.data.toString()], [0, 5, 'hello']);
    const big = Buffer.alloc(3 * 1024 * 1024, 0x5a);
    c.submit({ direction: 'out', ep: 2, data: big });
    assert.equal((await c.ret()).actualLength, big.length);
    assert.equal(devices[0]?.received.length, 31 + big.length);
  });

  it('answers in order of completion, not of submission', async () => {
    const { connect, devices } = setup();
    const c = connect();
    await c.import('1-1');
    const held = c.submit({ direction: 'in', ep: 3, transferBufferLength: 64 });
    const quick = c.submit({ direction: 'in', ep: 1, transferBufferLength: 64 });
    assert.equal((await c.ret()).seqnum, quick);
    await waitFor(() => devices[0]?.holding === 1);
    devices[0]?.release(held, { status: 0, data: Buffer.from('late') });
    const r = await c.ret();
    assert.deepEqual([r.seqnum, r.data.toString()], [held, 'late']);
  });

  it('unlinks a running URB: its signal aborts, RET_UNLINK says -ECONNRESET, and no RET_SUBMIT follows', async () => {
    const { connect, devices } = setup();
    const c = connect();
    await c.import('1-1');
    const held = c.submit({ direction: 'in', ep: 3, transferBufferLength: 64 });
    await waitFor(() => devices[0]?.holding === 1);
    const u = c.unlink(held);
    const r = (await c.next()) as RetUnlink;
    assert.deepEqual([r.type, r.seqnum, r.status], ['RET_UNLINK', u, -104]);
    assert.deepEqual(devices[0]?.aborted, [held]);
    await c.nothing();
    // The session goes on.
    c.submit({ direction: 'in', ep: 1, transferBufferLength: 2 });
    assert.equal((await c.ret()).data.toString(), 'he');
  });

  it('drops the result of an unlinked URB even when the device ignores the signal and answers later', async () => {
    const { connect, devices } = setup();
    const c = connect();
    await c.import('1-1');
    let resolveLate: (r: UrbResult) => void = () => undefined;
    (devices[0] as FakeDevice).override = () => new Promise((resolve) => (resolveLate = resolve));
    const s = c.submit({ direction: 'in', ep: 1, transferBufferLength: 8 });
    await waitFor(() => devices[0]?.submitted.length === 1);
    c.unlink(s);
    assert.equal(((await c.next()) as RetUnlink).status, -104);
    resolveLate({ status: 0, data: Buffer.from('too late') });
    await c.nothing();
  });

  it('answers 0 to an unlink of an answered URB and of a seqnum never seen', async () => {
    const { connect } = setup();
    const c = connect();
    await c.import('1-1');
    const done = c.submit({ direction: 'in', ep: 1, transferBufferLength: 5 });
    await c.ret();
    const u1 = c.unlink(done);
    assert.deepEqual(await c.next(), { type: 'RET_UNLINK', seqnum: u1, status: 0 });
    const u2 = c.unlink(0xdead);
    assert.deepEqual(await c.next(), { type: 'RET_UNLINK', seqnum: u2, status: 0 });
  });

  it('passes an endpoint the device lacks to the device (which stalls) and carries on', async () => {
    const { connect } = setup();
    const c = connect();
    await c.import('1-1');
    c.submit({ direction: 'in', ep: 9, transferBufferLength: 8 });
    assert.equal((await c.ret()).status, -32);
    c.submit({ direction: 'in', ep: 1, transferBufferLength: 5 });
    assert.equal((await c.ret()).status, 0);
  });

  it('turns a device that throws or answers nonsense into an error status for that URB', async () => {
    const { connect, devices } = setup();
    const c = connect();
    await c.import('1-1');
    const d = devices[0] as FakeDevice;
    d.override = () => {
      throw new Error('device bug');
    };
    c.submit({ direction: 'in', ep: 1, transferBufferLength: 8 });
    assert.equal((await c.ret()).status, -5);
    d.override = () => ({ status: 0, data: Buffer.alloc(20, 1) });
    c.submit({ direction: 'in', ep: 1, transferBufferLength: 8 });
    const cut = await c.ret();
    assert.deepEqual([cut.status, cut.actualLength, cut.data.length], [-75, 8, 8]);
    d.override = () => ({ status: 5, data: Buffer.alloc(0) });
    c.submit({ direction: 'in', ep: 1, transferBufferLength: 8 });
    assert.equal((await c.ret()).status, -5);
    d.override = () => ({ status: 0, data: Buffer.alloc(0), actualLength: 100 });
    c.submit({ direction: 'out', ep: 2, data: Buffer.alloc(10) });
    assert.deepEqual([(await c.ret()).status], [-5]);
    d.override = () => null as unknown as UrbResult;
    c.submit({ direction: 'in', ep: 1, transferBufferLength: 8 });
    assert.equal((await c.ret()).status, -5);
  });

  it('carries isochronous transfers: descriptors in, packed data and descriptors out', async () => {
    const { connect } = setup();
    const c = connect();
    await c.import('1-1');
    const isoPackets: IsoPacketDescriptor[] = [0, 1, 2].map((i) => ({ offset: i * 16, length: 16, actualLength: 0, status: -18 }));
    c.submit({ direction: 'in', ep: 5, transferBufferLength: 48, numberOfPackets: 3, isoPackets });
    const r = await c.ret();
    assert.equal(r.status, 0);
    assert.equal(r.numberOfPackets, 3);
    assert.equal(r.actualLength, 6);
    assert.deepEqual(r.data, Buffer.from([0, 1, 1, 2, 2, 2]));
    assert.deepEqual(r.isoPackets.map((p) => [p.offset, p.length, p.actualLength, p.status]), [[0, 16, 1, 0], [16, 16, 2, 0], [32, 16, 3, 0]]);
    c.submit({ direction: 'out', ep: 5, data: Buffer.alloc(32, 7), numberOfPackets: 2, isoPackets: isoPackets.slice(0, 2) });
    const o = await c.ret();
    assert.deepEqual([o.actualLength, o.data.length, o.isoPackets.map((p) => p.actualLength)], [32, 0, [16, 16]]);
  });

  it('pauses reading at the in-flight limit and resumes when URBs complete', async () => {
    const { connect, devices } = setup({ maxInflight: 2 });
    const c = connect();
    await c.import('1-1');
    const s = [1, 2, 3].map(() => c.submit({ direction: 'in', ep: 3, transferBufferLength: 8 }));
    await waitFor(() => devices[0]?.holding === 2);
    await new Promise((r) => setTimeout(r, 50));
    assert.equal(devices[0]?.submitted.length, 2, 'the third waits in the socket');
    devices[0]?.release(s[0] as number);
    assert.equal((await c.ret()).seqnum, s[0]);
    await waitFor(() => devices[0]?.holding === 2);
    devices[0]?.release(s[1] as number);
    devices[0]?.release(s[2] as number);
    assert.deepEqual([(await c.ret()).seqnum, (await c.ret()).seqnum].sort(), [s[1], s[2]]);
  });
});

describe('usbip server: several imports on one stream (virtio-serial never shows EOF)', () => {
  it('an OP_REQ_IMPORT in URB mode ends the import: running URBs aborted, device released, then the new import', async () => {
    const { connect, devices, server } = setup();
    const c = connect();
    await c.import('1-1');
    const held = c.submit({ direction: 'in', ep: 3, transferBufferLength: 8 });
    await waitFor(() => devices[0]?.holding === 1);
    const again = await c.import('1-1');
    assert.equal(again.status, OpStatus.OK);
    assert.deepEqual(devices[0]?.aborted, [held]);
    assert.equal(devices[0]?.detachedCount, 1);
    assert.equal(devices[0]?.attachedCount, 2);
    await c.nothing(); // the aborted URB of the old import is not answered
    c.submit({ direction: 'in', ep: 1, transferBufferLength: 5 });
    assert.equal((await c.ret()).data.toString(), 'hello');
    // Detach, list, import the other device, all on the same stream.
    assert.equal((await c.devlist()).devices.length, 2);
    assert.equal(devices[0]?.detachedCount, 2);
    assert.equal(server.status().devices[0]?.importedBy, null);
    assert.equal((await c.import('1-2')).status, OpStatus.OK);
    c.submit({ direction: 'in', ep: 0, transferBufferLength: 18, setup: GET_DEVICE_DESCRIPTOR });
    assert.equal((await c.ret()).actualLength, 18);
    assert.equal(devices[1]?.submitted.length, 1);
  });

  it('a second session can use the device the first one had, on another stream, once the OP_REQ arrives', async () => {
    const { connect } = setup();
    const a = connect('vsock:4:1');
    await a.import('1-1');
    const b = connect('vsock:5:1');
    assert.equal((await b.import('1-1')).status, OpStatus.DEV_BUSY);
    await a.devlist(); // a detaches without EOF
    assert.equal((await b.import('1-1')).status, OpStatus.OK);
  });
});

describe('usbip server: hostile input', () => {
  it('answers a malformed CMD_SUBMIT with an error status and carries on', async () => {
    const { connect, devices } = setup();
    const c = connect();
    await c.import('1-1');
    const bad = encode({ type: 'CMD_SUBMIT', seqnum: 500, devid: c.devid, direction: 'in', ep: 1, transferFlags: 0, transferBufferLength: 8, startFrame: 0, numberOfPackets: 0, interval: 0, setup: Buffer.alloc(8), data: Buffer.alloc(0), isoPackets: [] });
    bad.writeUInt32BE(16, 16); // endpoint 16
    c.writeRaw(bad, { seqnum: 500, direction: 'in', transferBufferLength: 8, numberOfPackets: 0 });
    const r = await c.ret();
    assert.deepEqual([r.seqnum, r.status], [500, -22]);
    // ISO descriptors that overlap.
    c.submit({ seqnum: 501, direction: 'in', ep: 5, transferBufferLength: 32, numberOfPackets: 2, isoPackets: [{ offset: 0, length: 20, actualLength: 0, status: 0 }, { offset: 10, length: 10, actualLength: 0, status: 0 }] });
    assert.deepEqual([(await c.ret()).seqnum], [501]);
    // An IN transfer above the limit.
    c.submit({ seqnum: 502, direction: 'in', ep: 1, transferBufferLength: 0x7fff_ffff });
    const big = await c.ret();
    assert.deepEqual([big.seqnum, big.status], [502, -90]);
    // A devid that is not the imported device's.
    c.submit({ seqnum: 503, direction: 'in', ep: 1, transferBufferLength: 8, devid: 0x0009_0009 });
    assert.deepEqual([(await c.ret()).status], [-19]);
    // A control transfer whose setup packet contradicts its length or direction.
    c.submit({ seqnum: 504, direction: 'in', ep: 0, transferBufferLength: 64, setup: GET_DEVICE_DESCRIPTOR });
    assert.equal((await c.ret()).status, -22);
    c.submit({ seqnum: 505, direction: 'out', ep: 0, data: Buffer.alloc(18), setup: GET_DEVICE_DESCRIPTOR });
    assert.equal((await c.ret()).status, -22);
    // A seqnum that is still running.
    c.submit({ seqnum: 506, direction: 'in', ep: 3, transferBufferLength: 8 });
    await waitFor(() => devices[0]?.holding === 1);
    c.submit({ seqnum: 506, direction: 'in', ep: 1, transferBufferLength: 8 });
    assert.deepEqual([(await c.ret()).status], [-22]);
    assert.deepEqual(devices[0]?.submitted.map((u) => u.seqnum), [506], 'none of the bad ones reached the device');
    c.submit({ direction: 'in', ep: 1, transferBufferLength: 5 });
    assert.equal((await c.ret()).data.toString(), 'hello');
  });

  it('answers a busid without its NUL with status 5 and stays in operation mode', async () => {
    const { connect } = setup();
    const c = connect();
    c.writeRaw(Buffer.concat([Buffer.from('0111800300000000', 'hex'), Buffer.alloc(32, 0x31)]));
    const r = await c.next();
    assert.deepEqual([r.type, (r as OpRepImport).status], ['OP_REP_IMPORT', OpStatus.ERROR]);
    assert.equal((await c.import('1-1')).status, 0);
  });

  for (const [what, bytes] of [
    ['garbage', Buffer.from('GET / HTTP/1.1\r\n\r\n')],
    ['a wrong protocol version', Buffer.from('0106800500000000', 'hex')],
    ['a URB before any import', encode({ type: 'CMD_UNLINK', seqnum: 1, devid: 0, unlinkSeqnum: 0 })],
  ] as const) {
    it(`closes only the connection that sent ${what}; the others carry on`, async () => {
      const { connect, server } = setup();
      const good = connect('vsock:4:1');
      await good.import('1-1');
      const bad = connect('vsock:6:1');
      bad.writeRaw(bytes);
      await bad.waitEnd();
      await waitFor(() => server.connectionCount === 1);
      good.submit({ direction: 'in', ep: 1, transferBufferLength: 5 });
      assert.equal((await good.ret()).status, 0);
    });
  }

  it('closes a connection whose OUT transfer is above the limit before reading its data, and releases the device', async () => {
    const { connect, devices } = setup({ maxTransferLength: 1024 });
    const c = connect();
    await c.import('1-1');
    const header = Buffer.alloc(PDU_HEADER_SIZE);
    header.writeUInt32BE(Command.CMD_SUBMIT, 0);
    header.writeUInt32BE(1, 4);
    header.writeUInt32BE(c.devid, 8);
    header.writeUInt32BE(2, 16);
    header.writeUInt32BE(0xffff_fff0, 24); // a "negative" length
    c.writeRaw(header);
    await c.waitEnd();
    await waitFor(() => devices[0]?.detachedCount === 1);
  });

  it('closes a connection whose ISO packet count overflows', async () => {
    const { connect, devices } = setup();
    const c = connect();
    await c.import('1-1');
    const header = encode({ type: 'CMD_SUBMIT', seqnum: 1, devid: c.devid, direction: 'in', ep: 5, transferFlags: 0, transferBufferLength: 0, startFrame: 0, numberOfPackets: 0, interval: 0, setup: Buffer.alloc(8), data: Buffer.alloc(0), isoPackets: [] });
    header.writeInt32BE(0x7fff_ffff, 32);
    c.writeRaw(header);
    await c.waitEnd();
    await waitFor(() => devices[0]?.detachedCount === 1);
  });

  it('survives a client that vanishes mid-transfer: running URBs are aborted and the device released', async () => {
    const { connect, devices, server } = setup();
    const c = connect();
    await c.import('1-1');
    c.submit({ direction: 'in', ep: 3, transferBufferLength: 8 });
    await waitFor(() => devices[0]?.holding === 1);
    // Half an OUT transfer, then the socket is gone.
    c.writeRaw(encode({ type: 'CMD_SUBMIT', seqnum: 9, devid: c.devid, direction: 'out', ep: 2, transferFlags: 0, transferBufferLength: 100, startFrame: 0, numberOfPackets: 0, interval: 0, setup: Buffer.alloc(8), data: Buffer.alloc(100), isoPackets: [] }).subarray(0, 80));
    c.stream.destroy();
    await waitFor(() => devices[0]?.detachedCount === 1 && server.connectionCount === 0);
    assert.equal(devices[0]?.aborted.length, 1);
    assert.equal(devices[0]?.received.length, 0);
  });
});

describe('usbip server: a device that vanishes (unplugged)', () => {
  it('ends the import that holds it (URBs aborted, stream closed), lists it no more and refuses to import it', async () => {
    const gone = new FakeDevice('1-1', 2);
    let unplug!: (why: string) => void;
    Object.assign(gone, { vanished: new Promise<string>((resolve) => (unplug = resolve)) });
    const { connect, devices, server, logs } = setup({ devices: [gone, new FakeDevice('1-2', 3)] });
    const c = connect();
    assert.equal((await c.import('1-1')).status, OpStatus.OK);
    c.submit({ direction: 'in', ep: 3, transferBufferLength: 8 });
    await waitFor(() => devices[0]?.holding === 1);
    unplug('1-3 is gone from this machine (unplugged?)');
    await c.waitEnd();
    await waitFor(() => devices[0]?.detachedCount === 1 && server.connectionCount === 0);
    assert.equal(devices[0]?.aborted.length, 1, 'the running URB was aborted');
    const released = logs.find((l) => l.msg === 'usbip device released');
    assert.match(String(released?.fields.why), /the device is gone: 1-3 is gone/);
    assert.ok(logs.some((l) => l.level === 'warn' && l.msg.startsWith('usbip device gone') && l.fields.importedBy === 'vsock:4:1035'));
    const other = connect();
    assert.deepEqual((await other.devlist()).devices.map((d) => d.device.busid), ['1-2']);
    assert.equal((await other.import('1-1')).status, OpStatus.NODEV);
    assert.ok(logs.some((l) => l.msg === 'usbip import refused: the device is gone'));
    assert.equal((await connect().import('1-2')).status, OpStatus.OK, 'the other device carries on');
  });
});

describe('usbip server: configuration, listeners, shutdown', () => {
  it('refuses devices with duplicate busids or devids, and bad busids', () => {
    assert.throws(() => new UsbipServer([new FakeDevice('1-1', 2), new FakeDevice('1-1', 3)]), UsbipConfigError);
    assert.throws(() => new UsbipServer([new FakeDevice('1-1', 2), new FakeDevice('1-2', 2)]), UsbipConfigError);
    assert.throws(() => new UsbipServer([new FakeDevice('a b', 2)]), UsbipConfigError);
    assert.throws(() => new UsbipServer([new FakeDevice('x'.repeat(32), 2)]), UsbipConfigError);
    assert.throws(() => new UsbipServer([new FakeDevice('1-1', 0x10000)]), UsbipConfigError);
    assert.throws(() => new UsbipServer([], { maxInflight: 0 }), UsbipConfigError);
  });

  it('limits connections from one peer, not from the others', () => {
    const server = new UsbipServer([new FakeDevice('1-1', 2)], { policy: new UsbipPolicy(['any']), maxConnectionsPerPeer: 2 });
    cleanups.push(() => server.close());
    const pairs = [1, 2, 3, 4].map(() => sys.unixSocketPair());
    cleanups.push(() => pairs.forEach(([, b]) => b.destroy()));
    const accepted = pairs.map(([a], i) => server.accept({ stream: a, peer: i < 3 ? `vsock:4:${1000 + i}` : 'vsock:5:1000' }));
    assert.deepEqual(accepted.map((c) => c !== null), [true, true, false, true]);
    assert.equal(server.connectionCount, 3);
  });

  it('frees a connection slot when the client leaves, even if the device never answers its aborted URBs', async () => {
    const device = new FakeDevice('1-1', 2);
    device.override = () => new Promise<UrbResult>(() => undefined); // ignores the signal, forever
    const server = new UsbipServer([device], { policy: new UsbipPolicy(['any']), maxConnectionsPerPeer: 1 });
    const [a, b] = sys.unixSocketPair();
    server.accept({ stream: a, peer: 'vsock:4:1' });
    const c = new Client(b);
    await c.import('1-1');
    c.submit({ direction: 'in', ep: 1, transferBufferLength: 8 });
    await waitFor(() => device.submitted.length === 1);
    b.destroy();
    await waitFor(() => server.connectionCount === 0);
    const [a2, b2] = sys.unixSocketPair();
    cleanups.push(() => {
      b2.destroy();
    });
    assert.notEqual(server.accept({ stream: a2, peer: 'vsock:4:2' }), null);
    assert.equal((await new Client(b2).import('1-1')).status, OpStatus.OK, 'and the device is free');
    await server.close(); // gives up on the URB that never settles after 2 s
  });

  it('serves a Unix listener; the peer is the socket address', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'prism-usbip-'));
    cleanups.push(() => fs.rmSync(dir, { recursive: true, force: true }));
    const sock = `unix:${path.join(dir, 'usbip.sock')}`;
    const device = new FakeDevice('1-1', 2);
    const server = new UsbipServer([device], { policy: new UsbipPolicy([`peer=${sock}`]) });
    server.serve(await listen(sock));
    cleanups.push(() => server.close());
    const stream = await dial(sock);
    cleanups.push(() => {
      stream.destroy();
    });
    const c = new Client(stream);
    assert.equal((await c.import('1-1')).status, 0);
    c.submit({ direction: 'in', ep: 1, transferBufferLength: 64 });
    assert.equal((await c.ret()).data.toString(), 'hello');
  });

  it('close() ends every connection, aborts running URBs and releases devices', async () => {
    const { connect, devices, server } = setup();
    const c = connect();
    await c.import('1-1');
    c.submit({ direction: 'in', ep: 3, transferBufferLength: 8 });
    await waitFor(() => devices[0]?.holding === 1);
    await server.close();
    await c.waitEnd();
    assert.equal(devices[0]?.detachedCount, 1);
    assert.equal(devices[0]?.aborted.length, 1);
    assert.equal(server.connectionCount, 0);
  });

  it('prism usbip serve makes devices from specs: bus IDs 1-1, 1-2 in order; unknown and planned kinds say so, a missing kernel: device is named', async () => {
    assert.deepEqual(Object.keys(DEVICE_KINDS).sort(), ['emulated', 'host', 'kernel']);
    const devices = await createDevices(['emulated:keyboard:hi', 'emulated:keyboard']);
    assert.deepEqual(devices.map((d) => [d.info.busid, d.info.busnum, d.info.devnum]), [['1-1', 1, 2], ['1-2', 1, 3]]);
    assert.doesNotThrow(() => new UsbipServer(devices));
    await assert.rejects(createDevices(['usb:1-1']), (e: unknown) => e instanceof UsageError && /unknown kind "usb"/.test(e.message));
    await assert.rejects(createDevices(['nocolon']), (e: unknown) => e instanceof UsageError && /unknown kind/.test(e.message));
    await assert.rejects(createDevices(['host:ffff:fffe']), (e: unknown) => e instanceof UsageError && /--device host:ffff:fffe: no such USB device on this machine/.test(e.message));
    // kernel: reads sysfs: a bus ID this machine does not have is refused, naming where it looked.
    await assert.rejects(createDevices(['kernel:999-9']), (e: unknown) => e instanceof UsageError && /no USB device 999-9: \/sys\/bus\/usb\/devices\/999-9 does not exist/.test(e.message));
    await assert.rejects(createDevices(['kernel:1-1:1.0']), (e: unknown) => e instanceof UsageError && /not a USB device's/.test(e.message));
    await assert.rejects(createDevices(['emulated:printer']), UsageError);
  });

  it('retSubmitFor echoes the request fields a reply carries', () => {
    const m: CmdSubmit = { type: 'CMD_SUBMIT', seqnum: 7, devid: 1, direction: 'in', ep: 1, transferFlags: 0, transferBufferLength: 4, startFrame: 12, numberOfPackets: -1, interval: 0, setup: Buffer.alloc(8), data: Buffer.alloc(0), isoPackets: [] };
    const { ret, problem } = retSubmitFor(m, { status: 0, data: Buffer.from('ab'), errorCount: 0 });
    assert.equal(problem, null);
    assert.deepEqual([ret.seqnum, ret.startFrame, ret.numberOfPackets, ret.actualLength], [7, 12, -1, 2]);
  });
});

async function waitFor(cond: () => boolean, timeoutMs = 3000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 5));
  }
}
