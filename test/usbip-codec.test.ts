// USB/IP codec: golden messages (test/fixtures/usbip/spec.txt: hand-made from usbip_protocol.rst,
// plus the spec's own captured HID example; capture.txt: real traffic between Linux 6.1's usbip
// tool + vhci-hcd in a lab guest and prism's server, recorded by capture.mts), each decoded,
// encoded and round-tripped, and read by the stream readers split at every byte offset and one
// byte at a time; malformed messages (malformed.txt) with their reasons, both from the pure
// decoders and from the readers (framing lost vs one message refused); limits checked before the
// bytes arrive; encoder validation; the setup packet; fast-check properties.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import {
  Command, DEFAULT_MAX_ISO_PACKETS, DEFAULT_MAX_TRANSFER_LENGTH, DecodeError, OpCode, PDU_HEADER_SIZE, ProtocolError, ReplyReader, RequestReader,
  USBIP_VERSION, decodeReply, decodeRequest, decodeSetup, encode, encodeParts, encodeSetup, messageName,
  type CmdSubmit, type DeviceRecord, type IsoPacketDescriptor, type RetSubmit, type SubmitContext, type UsbipErrorReason, type UsbipMessage,
  type UsbipReply, type UsbipRequest,
} from '../src/codecs/usbip/index.js';

const FIXTURES = new URL('./fixtures/usbip/', import.meta.url);

// --- fixtures ----------------------------------------------------------------------------------

type Json = Record<string, unknown>;

interface Golden {
  where: string;
  side: 'C' | 'S';
  type: string;
  bytes: Buffer;
  message: UsbipMessage;
  request: SubmitContext | undefined;
}

const BUFFER_FIELDS = new Set(['setup', 'data']);

/** The JSON form of a message: Buffers as hex. */
function toJson(m: UsbipMessage): Json {
  return JSON.parse(JSON.stringify(m, (k, v: unknown) => (BUFFER_FIELDS.has(k) && v && typeof v === 'object' && (v as { type?: string }).type === 'Buffer' ? Buffer.from((v as { data: number[] }).data).toString('hex') : v))) as Json;
}

function fromJson(j: Json): UsbipMessage {
  const m: Json = { ...j };
  for (const k of BUFFER_FIELDS) if (typeof m[k] === 'string') m[k] = Buffer.from(m[k], 'hex');
  return m as unknown as UsbipMessage;
}

function loadGolden(file: string): Golden[] {
  const lines = readFileSync(new URL(file, FIXTURES), 'utf8').split('\n');
  const out: Golden[] = [];
  for (let i = 0; i < lines.length; i++) {
    const l = (lines[i] as string).trim();
    if (l === '' || l.startsWith('#') || l.startsWith('=')) continue;
    const [side, type, ...hex] = l.split(/\s+/);
    const next = (lines[i + 1] ?? '').trim();
    assert.ok(next.startsWith('= '), `${file}:${i + 1}: a message line must be followed by "= <json>"`);
    const { request, ...json } = JSON.parse(next.slice(2)) as Json & { request?: SubmitContext };
    assert.ok(side === 'C' || side === 'S', `${file}:${i + 1}: side ${side}`);
    out.push({ where: `${file}:${i + 1}`, side, type: type as string, bytes: Buffer.from(hex.join(''), 'hex'), message: fromJson(json), request });
  }
  return out;
}

const SPEC = loadGolden('spec.txt');
const CAPTURE = loadGolden('capture.txt');
const ALL = [...SPEC, ...CAPTURE];

interface Malformed {
  line: number;
  side: 'C' | 'S';
  reader: 'P' | 'D' | '-';
  reason: UsbipErrorReason;
  ctx: SubmitContext | undefined;
  bytes: Buffer;
  why: string;
}

function loadMalformed(): Malformed[] {
  const out: Malformed[] = [];
  readFileSync(new URL('malformed.txt', FIXTURES), 'utf8').split('\n').forEach((raw, i) => {
    if (raw.trim() === '' || raw.startsWith('#')) return;
    const [body = '', why = ''] = raw.split(/\s+#\s+/);
    const words = body.trim().split(/\s+/);
    const [side, reader, reason] = words;
    let ctx: SubmitContext | undefined;
    let hex = words.slice(3);
    if (hex[0]?.startsWith('ctx=')) {
      const [direction, length, packets] = hex[0].slice(4).split(':');
      ctx = { direction: direction as 'in' | 'out', transferBufferLength: Number(length), numberOfPackets: Number(packets) };
      hex = hex.slice(1);
    }
    out.push({ line: i + 1, side: side as 'C' | 'S', reader: reader as 'P' | 'D' | '-', reason: reason as UsbipErrorReason, ctx, bytes: Buffer.from(hex.join(''), 'hex'), why });
  });
  return out;
}

const MALFORMED = loadMalformed();

function decodeGolden(g: Golden): UsbipMessage {
  return g.side === 'C' ? decodeRequest(g.bytes) : decodeReply(g.bytes, g.request);
}

/** A reader for a fixture's side; the client's knows every golden request's context by seqnum. */
function readerFor(side: 'C' | 'S', contexts: Map<number, SubmitContext> = new Map()): RequestReader | ReplyReader {
  return side === 'C' ? new RequestReader() : new ReplyReader((s) => contexts.get(s));
}

function drain(r: RequestReader | ReplyReader): UsbipMessage[] {
  const out: UsbipMessage[] = [];
  for (let m = r.next(); m !== null; m = r.next()) out.push(m);
  return out;
}

// --- golden ------------------------------------------------------------------------------------

describe('usbip codec: golden messages', () => {
  it('has every message type, the spec example and a fixture for ISO both ways', () => {
    const types = new Set(ALL.map((g) => g.type));
    assert.deepEqual([...types].sort(), ['CMD_SUBMIT', 'CMD_UNLINK', 'OP_REP_DEVLIST', 'OP_REP_IMPORT', 'OP_REQ_DEVLIST', 'OP_REQ_IMPORT', 'RET_SUBMIT', 'RET_UNLINK']);
    for (const g of ALL) assert.equal(g.type, (g.message as { type: string }).type, g.where);
    const iso = ALL.filter((g) => g.type === 'CMD_SUBMIT' && (g.message as CmdSubmit).numberOfPackets > 0);
    assert.deepEqual(iso.map((g) => (g.message as CmdSubmit).direction).sort(), ['in', 'out']);
  });

  it('has real traffic from the Linux client: both operations and control, bulk and interrupt URBs', () => {
    const real = new Set(CAPTURE.filter((g) => g.side === 'C').map((g) => (g.message.type === 'CMD_SUBMIT' ? `ep${g.message.ep} ${g.message.direction}` : g.type)));
    for (const k of ['OP_REQ_DEVLIST', 'OP_REQ_IMPORT', 'ep0 in', 'ep0 out', 'ep1 in', 'ep2 out']) assert.ok(real.has(k), `capture.txt has ${k}`);
    // Linux sends number_of_packets 0 (not the spec's 0xffffffff) for transfers that are not ISO.
    for (const g of CAPTURE.filter((x) => x.type === 'CMD_SUBMIT')) assert.equal((g.message as CmdSubmit).numberOfPackets, 0, g.where);
  });

  it('decodes every fixture to its recorded message', () => {
    for (const g of ALL) assert.deepEqual(toJson(decodeGolden(g)), toJson(g.message), g.where);
  });

  it('encodes every fixture back to the same bytes, and encodeParts joins to them', () => {
    for (const g of ALL) {
      assert.deepEqual(encode(g.message), g.bytes, g.where);
      assert.deepEqual(Buffer.concat(encodeParts(g.message)), g.bytes, g.where);
    }
  });

  it('round-trips every fixture: decode(encode(decode(bytes))) is the same message', () => {
    for (const g of ALL) {
      const m = decodeGolden(g);
      const again = g.side === 'C' ? decodeRequest(encode(m)) : decodeReply(encode(m), g.request);
      assert.deepEqual(toJson(again), toJson(m), g.where);
    }
  });

  it('does not copy the transfer buffer when encoding (a server writes the parts with one writev)', () => {
    const data = Buffer.from('payload bytes');
    const m: RetSubmit = { type: 'RET_SUBMIT', seqnum: 1, status: 0, actualLength: data.length, startFrame: 0, numberOfPackets: 0, errorCount: 0, data, isoPackets: [] };
    const parts = encodeParts(m);
    assert.equal(parts.length, 2);
    assert.equal(parts[1], data);
    assert.equal((parts[0] as Buffer).length, PDU_HEADER_SIZE);
  });

  it('reads every fixture the same wherever the stream splits it (two chunks, every offset)', () => {
    let splits = 0;
    for (const g of ALL) {
      const contexts = new Map(g.request ? [[(g.message as RetSubmit).seqnum, g.request]] : []);
      for (let at = 0; at <= g.bytes.length; at++) {
        const r = readerFor(g.side, contexts);
        r.push(g.bytes.subarray(0, at));
        const early = drain(r);
        r.push(g.bytes.subarray(at));
        const got = [...early, ...drain(r)];
        assert.equal(got.length, 1, `${g.where} split at ${at}`);
        assert.deepEqual(toJson(got[0] as UsbipMessage), toJson(g.message), `${g.where} split at ${at}`);
        assert.equal(r.bufferedBytes, 0);
        splits++;
      }
    }
    assert.ok(splits > 2500, `${splits} splits`);
  });

  it('reads all fixtures of a side back to back, one byte at a time, in order', () => {
    for (const side of ['C', 'S'] as const) {
      const mine = ALL.filter((g) => g.side === side && !(g.type === 'RET_SUBMIT' && ALL.some((o) => o !== g && o.request && (o.message as RetSubmit).seqnum === (g.message as RetSubmit).seqnum)));
      const contexts = new Map(mine.filter((g) => g.request).map((g) => [(g.message as RetSubmit).seqnum, g.request as SubmitContext]));
      const r = readerFor(side, contexts);
      const got: UsbipMessage[] = [];
      for (const b of Buffer.concat(mine.map((g) => g.bytes))) {
        r.push(Buffer.from([b]));
        got.push(...drain(r));
      }
      assert.deepEqual(got.map(toJson), mine.map((g) => toJson(g.message)), side);
    }
  });

  it('says how many bytes the message at the front still needs once its header is in', () => {
    const g = ALL.find((x) => x.type === 'CMD_SUBMIT' && (x.message as CmdSubmit).direction === 'out' && (x.message as CmdSubmit).data.length > 0) as Golden;
    const r = new RequestReader();
    r.push(g.bytes.subarray(0, 10));
    assert.equal(r.next(), null);
    assert.equal(r.missingBytes, 0, 'not known before the header is in');
    r.push(g.bytes.subarray(10, PDU_HEADER_SIZE));
    assert.equal(r.next(), null);
    assert.equal(r.missingBytes, g.bytes.length - PDU_HEADER_SIZE);
  });

  it('names messages for logs', () => {
    assert.equal(messageName(Command.CMD_SUBMIT), 'CMD_SUBMIT');
    assert.equal(messageName(OpCode.REQ_IMPORT), 'OP_REQ_IMPORT');
    assert.equal(messageName(0x8007), '0x00008007');
  });
});

// --- malformed ---------------------------------------------------------------------------------

describe('usbip codec: malformed messages', () => {
  it('has fixtures for every reason, for both sides', () => {
    const reasons = [...new Set(MALFORMED.map((m) => m.reason))].sort();
    assert.deepEqual(reasons, ['command', 'direction', 'endpoint', 'iso', 'length', 'seqnum', 'short', 'string', 'too-long', 'version']);
    assert.ok(MALFORMED.some((m) => m.side === 'S' && m.reader === 'D'));
  });

  it('refuses each from the pure decoder with a DecodeError of its reason (and the seqnum when readable)', () => {
    for (const m of MALFORMED) {
      assert.throws(
        () => (m.side === 'C' ? decodeRequest(m.bytes) : decodeReply(m.bytes, m.ctx)),
        (e: unknown) => {
          assert.ok(e instanceof DecodeError, `line ${m.line}: ${String(e)}`);
          assert.equal(e.code, 'ERR_USBIP_DECODE');
          assert.equal(e.reason, m.reason, `line ${m.line} (${m.why}): ${e.message}`);
          assert.equal(e.stack?.split('\n').length, 1, 'no stack trace');
          const command = m.bytes.length >= 4 ? m.bytes.readUInt32BE(0) : 0;
          if (m.bytes.length >= PDU_HEADER_SIZE && command >= 1 && command <= 4 && m.reason !== 'command') assert.equal(e.seqnum, m.bytes.readUInt32BE(4), `line ${m.line} seqnum`);
          return true;
        },
        `line ${m.line}: ${m.why}`,
      );
    }
  });

  it('the readers: ProtocolError when the stream cannot be framed, DecodeError for one bad message, nothing for short ones', () => {
    for (const m of MALFORMED) {
      const r = m.side === 'C' ? new RequestReader() : new ReplyReader(() => m.ctx);
      r.push(m.bytes);
      if (m.reader === '-') {
        if (m.reason === 'short') assert.equal(r.next(), null, `line ${m.line}`);
        else {
          assert.notEqual(r.next(), null, `line ${m.line}: the message comes out`);
          assert.ok(r.bufferedBytes > 0, `line ${m.line}: the rest waits`);
        }
        continue;
      }
      const want = m.reader === 'P' ? ProtocolError : DecodeError;
      assert.throws(() => r.next(), (e: unknown) => e instanceof want && e.reason === m.reason, `line ${m.line}: ${m.why}`);
      if (m.reader === 'P') {
        assert.throws(() => r.next(), ProtocolError, `line ${m.line}: and on every later call`);
      } else {
        assert.equal(r.bufferedBytes, 0, `line ${m.line}: the bad message is consumed`);
        assert.equal(r.next(), null);
      }
    }
  });

  it('the readers refuse the same wherever the bytes are split', () => {
    for (const m of MALFORMED.filter((x) => x.reader !== '-')) {
      for (let at = 0; at <= m.bytes.length; at++) {
        const r = m.side === 'C' ? new RequestReader() : new ReplyReader(() => m.ctx);
        const want = m.reader === 'P' ? ProtocolError : DecodeError;
        let thrown: unknown = null;
        try {
          r.push(m.bytes.subarray(0, at));
          drain(r);
          r.push(m.bytes.subarray(at));
          drain(r);
        } catch (e) {
          thrown = e;
        }
        assert.ok(thrown instanceof want && thrown.reason === m.reason, `line ${m.line} split at ${at}: ${String(thrown)}`);
      }
    }
  });

  it('after a DecodeError the reader goes on with the next message', () => {
    const bad = MALFORMED.find((m) => m.side === 'C' && m.reader === 'D' && m.reason === 'endpoint' && m.bytes.length > PDU_HEADER_SIZE) as Malformed;
    const good = SPEC.filter((g) => g.side === 'C');
    const r = new RequestReader();
    r.push(Buffer.concat([bad.bytes, ...good.map((g) => g.bytes)]));
    assert.throws(() => r.next(), (e: unknown) => e instanceof DecodeError && e.seqnum === bad.bytes.readUInt32BE(4));
    assert.deepEqual(drain(r).map(toJson), good.map((g) => toJson(g.message)));
  });

  it('refuses an OUT transfer above the limit as soon as its header is in, before any data', () => {
    const r = new RequestReader({ maxTransferLength: 1000 });
    const m: CmdSubmit = { ...submit('out', 1001), data: Buffer.alloc(1001) };
    const bytes = encode(m);
    r.push(bytes.subarray(0, PDU_HEADER_SIZE));
    assert.throws(() => r.next(), (e: unknown) => e instanceof ProtocolError && e.reason === 'too-long' && e.seqnum === 7 && e.code === 'ERR_USBIP_FRAMING');
    const ok = new RequestReader({ maxTransferLength: 1000 });
    ok.push(encode({ ...submit('out', 1000), data: Buffer.alloc(1000, 1) }));
    assert.equal((ok.next() as CmdSubmit).data.length, 1000);
    assert.equal(DEFAULT_MAX_TRANSFER_LENGTH, 16 * 1024 * 1024);
  });

  it('refuses more ISO packets than the limit before reading their descriptors', () => {
    const r = new RequestReader({ maxIsoPackets: 2 });
    const bytes = encode(isoSubmit('in', 30, [0, 10, 20].map((offset) => ({ offset, length: 10, actualLength: 0, status: 0 }))));
    r.push(bytes.subarray(0, PDU_HEADER_SIZE));
    assert.throws(() => r.next(), (e: unknown) => e instanceof ProtocolError && e.reason === 'iso');
    assert.equal(DEFAULT_MAX_ISO_PACKETS, 1024);
  });

  it('refuses limits that are not integers in range', () => {
    assert.throws(() => new RequestReader({ maxTransferLength: -1 }), RangeError);
    assert.throws(() => new RequestReader({ maxTransferLength: 2 ** 31 }), RangeError);
    assert.throws(() => new ReplyReader(() => undefined, { maxDevices: 1.5 }), RangeError);
  });

  it('a client-side reader refuses a device list longer than its limit', () => {
    const r = new ReplyReader(() => undefined, { maxDevices: 1 });
    const dev = device('1-1');
    r.push(encode({ type: 'OP_REP_DEVLIST', status: 0, devices: [{ device: dev, interfaces: [] }, { device: { ...dev, busid: '1-2' }, interfaces: [] }] }));
    assert.throws(() => r.next(), (e: unknown) => e instanceof ProtocolError && e.reason === 'too-long');
  });
});

// --- encoder, setup ----------------------------------------------------------------------------

function submit(direction: 'in' | 'out', length: number): CmdSubmit {
  return {
    type: 'CMD_SUBMIT', seqnum: 7, devid: 0x10002, direction, ep: 1, transferFlags: 0, transferBufferLength: length, startFrame: 0, numberOfPackets: 0,
    interval: 0, setup: Buffer.alloc(8), data: direction === 'out' ? Buffer.alloc(length) : Buffer.alloc(0), isoPackets: [],
  };
}

function isoSubmit(direction: 'in' | 'out', length: number, isoPackets: IsoPacketDescriptor[]): CmdSubmit {
  return { ...submit(direction, length), numberOfPackets: isoPackets.length, isoPackets };
}

function device(busid: string): DeviceRecord {
  return {
    path: `/sys/devices/prism/${busid}`, busid, busnum: 1, devnum: 2, speed: 3, idVendor: 0x1d6b, idProduct: 0x0104, bcdDevice: 0x0100,
    bDeviceClass: 0, bDeviceSubClass: 0, bDeviceProtocol: 0, bConfigurationValue: 1, bNumConfigurations: 1, bNumInterfaces: 0,
  };
}

describe('usbip codec: encoder validation and the setup packet', () => {
  it('refuses fields out of range and lengths that contradict each other', () => {
    const bad: [string, () => unknown][] = [
      ['seqnum above u32', () => encode({ ...submit('in', 0), seqnum: 2 ** 32 })],
      ['negative seqnum', () => encode({ ...submit('in', 0), seqnum: -1 })],
      ['fractional devid', () => encode({ ...submit('in', 0), devid: 1.5 })],
      ['endpoint 16', () => encode({ ...submit('in', 0), ep: 16 })],
      ['OUT data shorter than the length', () => encode({ ...submit('out', 4), data: Buffer.alloc(3) })],
      ['IN with data', () => encode({ ...submit('in', 4), data: Buffer.alloc(4) })],
      ['a 7-byte setup', () => encode({ ...submit('in', 0), setup: Buffer.alloc(7) })],
      ['number_of_packets -2', () => encode({ ...submit('in', 0), numberOfPackets: -2 })],
      ['descriptors not matching the count', () => encode({ ...submit('in', 10), numberOfPackets: 2, isoPackets: [{ offset: 0, length: 1, actualLength: 0, status: 0 }] })],
      ['RET_SUBMIT data not matching actual_length', () => encode({ type: 'RET_SUBMIT', seqnum: 1, status: 0, actualLength: 3, startFrame: 0, numberOfPackets: 0, errorCount: 0, data: Buffer.alloc(2), isoPackets: [] })],
      ['status above s32', () => encode({ type: 'RET_UNLINK', seqnum: 1, status: 2 ** 31 })],
      ['a busid of 32 chars', () => encode({ type: 'OP_REQ_IMPORT', status: 0, busid: 'x'.repeat(32) })],
      ['a busid with a NUL', () => encode({ type: 'OP_REQ_IMPORT', status: 0, busid: '1-1\0' })],
      ['a path with U+0100', () => encode({ type: 'OP_REP_IMPORT', status: 0, device: { ...device('1-1'), path: '/\u0100' } })],
      ['import OK without a device', () => encode({ type: 'OP_REP_IMPORT', status: 0, device: null })],
      ['import refused with a device', () => encode({ type: 'OP_REP_IMPORT', status: 1, device: device('1-1') })],
      ['a devlist whose bNumInterfaces lies', () => encode({ type: 'OP_REP_DEVLIST', status: 0, devices: [{ device: { ...device('1-1'), bNumInterfaces: 1 }, interfaces: [] }] })],
      ['a failed devlist with devices', () => encode({ type: 'OP_REP_DEVLIST', status: 5, devices: [{ device: device('1-1'), interfaces: [] }] })],
      ['idVendor above u16', () => encode({ type: 'OP_REP_IMPORT', status: 0, device: { ...device('1-1'), idVendor: 0x10000 } })],
      ['an unknown type', () => encode({ type: 'OP_REQ_DEVINFO' } as unknown as UsbipMessage)],
    ];
    for (const [what, f] of bad) assert.throws(f, (e: unknown) => e instanceof RangeError || e instanceof TypeError, what);
  });

  it('writes version 0x0111 in every operation message', () => {
    for (const g of ALL.filter((x) => x.type.startsWith('OP_'))) assert.equal(encode(g.message).readUInt16BE(0), USBIP_VERSION, g.where);
  });

  it('reads and writes the setup packet little-endian (USB 2.0 §9.3)', () => {
    const s = { bmRequestType: 0x80, bRequest: 6, wValue: 0x0100, wIndex: 0x0409, wLength: 0x0012 };
    const b = encodeSetup(s);
    assert.equal(b.toString('hex'), '8006000109041200');
    assert.deepEqual(decodeSetup(b), s);
    assert.deepEqual(decodeSetup(new Uint8Array([0x21, 0x09, 0x00, 0x02, 0x00, 0x00, 0x01, 0x00])), { bmRequestType: 0x21, bRequest: 9, wValue: 0x0200, wIndex: 0, wLength: 1 });
    assert.throws(() => decodeSetup(Buffer.alloc(7)), RangeError);
    assert.throws(() => encodeSetup({ ...s, wLength: 0x10000 }), RangeError);
  });
});

// --- properties --------------------------------------------------------------------------------

const u32 = fc.integer({ min: 0, max: 0xffff_ffff });
const s32 = fc.integer({ min: -0x8000_0000, max: 0x7fff_ffff });
const u8 = fc.integer({ min: 0, max: 0xff });
const u16 = fc.integer({ min: 0, max: 0xffff });
const latin1 = (max: number): fc.Arbitrary<string> => fc.array(fc.integer({ min: 1, max: 0xff }), { maxLength: max }).map((cs) => String.fromCharCode(...cs));

const deviceArb: fc.Arbitrary<DeviceRecord> = fc.record({
  path: latin1(255), busid: latin1(31), busnum: u32, devnum: u32, speed: u32, idVendor: u16, idProduct: u16, bcdDevice: u16,
  bDeviceClass: u8, bDeviceSubClass: u8, bDeviceProtocol: u8, bConfigurationValue: u8, bNumConfigurations: u8, bNumInterfaces: u8,
});

/** ISO packets in order inside a buffer: gaps and lengths drawn, the buffer as long as they need. */
const isoArb = (withActual: boolean): fc.Arbitrary<{ length: number; packets: IsoPacketDescriptor[] }> =>
  fc.array(fc.record({ gap: fc.nat(20), length: fc.nat(40), fill: fc.nat(40), status: s32 }), { minLength: 1, maxLength: 8 }).chain((ps) =>
    fc.nat(20).map((tail) => {
      let at = 0;
      const packets = ps.map((p) => {
        const offset = at + p.gap;
        at = offset + p.length;
        return { offset, length: p.length, actualLength: withActual ? Math.min(p.fill, p.length) : p.fill, status: p.status };
      });
      return { length: at + tail, packets };
    }),
  );

const requestArb: fc.Arbitrary<UsbipRequest> = fc.oneof(
  fc.record({ type: fc.constant('OP_REQ_DEVLIST' as const), status: u32 }),
  fc.record({ type: fc.constant('OP_REQ_IMPORT' as const), status: u32, busid: latin1(31) }),
  fc.record({ type: fc.constant('CMD_UNLINK' as const), seqnum: u32, devid: u32, unlinkSeqnum: u32 }),
  fc
    .record({
      seqnum: u32, devid: u32, direction: fc.constantFrom('in' as const, 'out' as const), ep: fc.integer({ min: 0, max: 15 }), transferFlags: u32,
      startFrame: s32, interval: s32, setup: fc.uint8Array({ minLength: 8, maxLength: 8 }), iso: fc.option(isoArb(false)), plain: fc.nat(300), none: fc.constantFrom(0, -1),
    })
    .map((r): CmdSubmit => {
      const length = r.iso ? r.iso.length : r.plain;
      return {
        type: 'CMD_SUBMIT', seqnum: r.seqnum, devid: r.devid, direction: r.direction, ep: r.ep, transferFlags: r.transferFlags, transferBufferLength: length,
        startFrame: r.startFrame, numberOfPackets: r.iso ? r.iso.packets.length : r.none, interval: r.interval, setup: Buffer.from(r.setup),
        data: r.direction === 'out' ? Buffer.alloc(length, 0x5a) : Buffer.alloc(0), isoPackets: r.iso ? r.iso.packets : [],
      };
    }),
);

/** A reply with the request context a client would have for it. */
const replyArb: fc.Arbitrary<{ reply: UsbipReply; ctx?: SubmitContext }> = fc.oneof(
  fc.record({ reply: fc.record({ type: fc.constant('RET_UNLINK' as const), seqnum: u32, status: s32 }) }),
  fc.record({ reply: fc.record({ type: fc.constant('OP_REP_IMPORT' as const), status: fc.constant(0), device: deviceArb }) }),
  fc.record({ reply: fc.record({ type: fc.constant('OP_REP_IMPORT' as const), status: fc.integer({ min: 1, max: 0xffff_ffff }), device: fc.constant(null) }) }),
  fc.record({
    reply: fc.array(deviceArb.chain((d) => fc.array(fc.record({ bInterfaceClass: u8, bInterfaceSubClass: u8, bInterfaceProtocol: u8 }), { minLength: d.bNumInterfaces % 4, maxLength: d.bNumInterfaces % 4 }).map((interfaces) => ({ device: { ...d, bNumInterfaces: interfaces.length }, interfaces }))), { maxLength: 3 }).map((devices) => ({
      type: 'OP_REP_DEVLIST' as const, status: 0, devices,
    })),
  }),
  fc
    .record({ seqnum: u32, direction: fc.constantFrom('in' as const, 'out' as const), status: s32, startFrame: s32, errorCount: s32, iso: fc.option(isoArb(true)), plain: fc.nat(300), short: fc.nat(300), none: fc.constantFrom(0, -1) })
    .map((r) => {
      const length = r.iso ? r.iso.length : r.plain;
      const actual = r.iso ? r.iso.packets.reduce((n, p) => n + p.actualLength, 0) : Math.min(r.short, length);
      const reply: RetSubmit = {
        type: 'RET_SUBMIT', seqnum: r.seqnum, status: r.status, actualLength: actual, startFrame: r.startFrame, numberOfPackets: r.iso ? r.iso.packets.length : r.none,
        errorCount: r.errorCount, data: r.direction === 'in' ? Buffer.alloc(actual, 0xa5) : Buffer.alloc(0), isoPackets: r.iso ? r.iso.packets : [],
      };
      return { reply, ctx: { direction: r.direction, transferBufferLength: length, numberOfPackets: r.iso ? r.iso.packets.length : 0 } };
    }),
);

/** Splits bytes into chunks at the given (sorted, deduplicated) cut points. */
function chunks(b: Buffer, cuts: number[]): Buffer[] {
  const points = [...new Set(cuts.map((c) => c % (b.length + 1)))].sort((x, y) => x - y);
  const out: Buffer[] = [];
  let from = 0;
  for (const p of points) {
    out.push(b.subarray(from, p));
    from = p;
  }
  out.push(b.subarray(from));
  return out;
}

describe('usbip codec: properties', () => {
  it('every valid request survives encode, then a RequestReader fed in random chunks', () => {
    fc.assert(
      fc.property(fc.array(requestArb, { minLength: 1, maxLength: 5 }), fc.array(fc.nat(), { maxLength: 6 }), (msgs, cuts) => {
        const r = new RequestReader();
        const got: UsbipMessage[] = [];
        for (const c of chunks(Buffer.concat(msgs.map(encode)), cuts)) {
          r.push(c);
          got.push(...drain(r));
        }
        assert.deepEqual(got.map(toJson), msgs.map(toJson));
        assert.equal(r.bufferedBytes, 0);
      }),
      { numRuns: 300 },
    );
  });

  it('every valid reply survives encode, then a ReplyReader (with its request context) in random chunks', () => {
    fc.assert(
      fc.property(replyArb, fc.array(fc.nat(), { maxLength: 6 }), ({ reply, ctx }, cuts) => {
        const r = new ReplyReader(() => ctx);
        const got: UsbipMessage[] = [];
        for (const c of chunks(encode(reply), cuts)) {
          r.push(c);
          got.push(...drain(r));
        }
        assert.deepEqual(got.map(toJson), [toJson(reply)]);
        assert.deepEqual(toJson(decodeReply(encode(reply), ctx)), toJson(reply));
      }),
      { numRuns: 300 },
    );
  });

  it('decoding is canonical: whatever decodes re-encodes to the same bytes (padding aside)', () => {
    const seeds = ALL.filter((g) => g.side === 'C').map((g) => g.bytes);
    fc.assert(
      fc.property(fc.constantFrom(...seeds), fc.array(fc.tuple(fc.nat(), u8), { maxLength: 4 }), (seed, edits) => {
        const b = Buffer.from(seed);
        for (const [at, v] of edits) b[at % b.length] = v;
        let m: UsbipRequest;
        try {
          m = decodeRequest(b);
        } catch (e) {
          assert.ok(e instanceof DecodeError, String(e));
          return;
        }
        const expected = Buffer.from(b);
        const command = b.readUInt32BE(0);
        if (command === Command.CMD_UNLINK) expected.fill(0, 12, 20).fill(0, 24, 48); // direction, ep, padding
        if (m.type === 'OP_REQ_IMPORT') expected.fill(0, 8 + m.busid.length); // after the busid's NUL
        assert.deepEqual(encode(m), expected);
      }),
      { numRuns: 2000 },
    );
  });

  it('arbitrary bytes make the decoders and readers throw only their own errors', () => {
    const headers = ALL.map((g) => g.bytes.subarray(0, Math.min(g.bytes.length, PDU_HEADER_SIZE)));
    fc.assert(
      fc.property(fc.oneof(fc.uint8Array({ maxLength: 120 }), fc.tuple(fc.constantFrom(...headers), fc.uint8Array({ maxLength: 80 })).map(([h, t]) => Buffer.concat([h, t]))), fc.array(fc.nat(), { maxLength: 4 }), (raw, cuts) => {
        const b = Buffer.from(raw);
        const own = (e: unknown): boolean => e instanceof DecodeError || e instanceof ProtocolError;
        for (const f of [() => decodeRequest(b), () => decodeReply(b), () => decodeReply(b, { direction: 'in', transferBufferLength: 64, numberOfPackets: 2 })]) {
          try {
            f();
          } catch (e) {
            assert.ok(e instanceof DecodeError, String(e));
          }
        }
        for (const r of [new RequestReader(), new ReplyReader(() => ({ direction: 'in', transferBufferLength: 100, numberOfPackets: 0 }))]) {
          try {
            for (const c of chunks(b, cuts)) {
              r.push(c);
              for (;;) {
                try {
                  if (r.next() === null) break;
                } catch (e) {
                  if (!(e instanceof DecodeError)) throw e;
                }
              }
            }
          } catch (e) {
            assert.ok(own(e), String(e));
          }
        }
      }),
      { numRuns: 2000 },
    );
  });
});
