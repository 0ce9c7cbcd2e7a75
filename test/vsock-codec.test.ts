// virtio-vsock codec: golden packets from a Linux 6.1 guest and prism's device
// (test/fixtures/vsock/linux-6.1.txt) and hand-made ones from the spec (spec.txt), each decoded,
// encoded and round-tripped, and decoded from a descriptor chain split at every byte offset (into
// two buffers, and into three around the header's end); malformed packets (malformed.txt) with
// their reasons; encoder validation; events and config space; the hybrid CONNECT/OK host side,
// also against prism's own client side (codecs/hvsock.ts); and fast-check properties.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import {
  CONFIG_SIZE, EVENT_SIZE, EventId, HEADER_SIZE, HandshakeError, MAX_CONNECT_LINE, MAX_PKT_PAYLOAD, Op, SocketType, VsockDecodeError,
  checkHeader, decodeConfig, decodeEvent, decodeHeader, decodePacket, describeHeader, encodeConfig, encodeEvent, encodeHeader, encodeOk, encodePacket,
  opName, parseConnect, type VsockDecodeReason, type VsockHeader,
} from '../src/codecs/vsock/index.js';
import { encodeConnect, parseReply } from '../src/codecs/hvsock.js';

const FIXTURES = new URL('./fixtures/vsock/', import.meta.url);

interface Fixture {
  file: string;
  line: number;
  kind: string;
  op: string;
  bytes: Buffer;
  header: VsockHeader;
  payload: Buffer;
}

function loadFixtures(file: string): Fixture[] {
  const lines = readFileSync(new URL(file, FIXTURES), 'utf8').split('\n');
  const out: Fixture[] = [];
  for (let i = 0; i < lines.length; i++) {
    const l = (lines[i] as string).trim();
    if (l === '' || l.startsWith('#') || l.startsWith('=')) continue;
    const [kind, op, ...hex] = l.split(/\s+/);
    const next = (lines[i + 1] ?? '').trim();
    assert.ok(next.startsWith('= '), `${file}:${i + 1}: a packet line must be followed by "= <json>"`);
    const { payload, ...header } = JSON.parse(next.slice(2)) as VsockHeader & { payload: string };
    out.push({ file, line: i + 1, kind: kind as string, op: op as string, bytes: Buffer.from(hex.join(''), 'hex'), header, payload: Buffer.from(payload, 'hex') });
  }
  return out;
}

const REAL = loadFixtures('linux-6.1.txt');
const SPEC = loadFixtures('spec.txt');
const ALL = [...REAL, ...SPEC];

interface Malformed {
  line: number;
  reason: VsockDecodeReason;
  bytes: Buffer;
  why: string;
}

function loadMalformed(): Malformed[] {
  const out: Malformed[] = [];
  readFileSync(new URL('malformed.txt', FIXTURES), 'utf8').split('\n').forEach((raw, i) => {
    if (raw.trim() === '' || raw.startsWith('#')) return;
    const [body = '', why = ''] = raw.split(/\s+#\s+/);
    const [reason, ...hex] = body.trim().split(/\s+/);
    out.push({ line: i + 1, reason: reason as VsockDecodeReason, bytes: Buffer.from(hex.join(''), 'hex'), why });
  });
  return out;
}

const MALFORMED = loadMalformed();

function splitAt(b: Buffer, ...cuts: number[]): Buffer[] {
  const parts: Buffer[] = [];
  let from = 0;
  for (const c of cuts) {
    parts.push(b.subarray(from, c));
    from = c;
  }
  parts.push(b.subarray(from));
  return parts;
}

describe('vsock codec: golden packets', () => {
  it('has real Linux 6.1 guest packets of every operation it sends, and spec-made ones for the rest', () => {
    const guestOps = new Set(REAL.filter((f) => f.kind === 'G').map((f) => f.op));
    assert.deepEqual([...guestOps].sort(), ['CREDIT_UPDATE', 'REQUEST', 'RESPONSE', 'RST', 'RW', 'SHUTDOWN']);
    const allOps = new Set(ALL.map((f) => f.op));
    assert.deepEqual([...allOps].sort(), Object.keys(Op).sort());
  });

  it('decodes every fixture to its recorded header and payload', () => {
    for (const f of ALL) {
      const p = decodePacket([f.bytes]);
      assert.deepEqual(p.header, f.header, `${f.file}:${f.line}`);
      assert.ok(p.payload.equals(f.payload), `${f.file}:${f.line} payload`);
      assert.equal(opName(p.header.op), f.op, `${f.file}:${f.line} op name`);
    }
  });

  it('encodes every fixture back to the same bytes', () => {
    for (const f of ALL) {
      const { len: _len, ...h } = f.header;
      assert.deepEqual(encodePacket(h, f.payload), f.bytes, `${f.file}:${f.line}`);
      const head = encodeHeader(f.header);
      assert.deepEqual(Buffer.from(head), f.bytes.subarray(0, HEADER_SIZE), `${f.file}:${f.line} header`);
    }
  });

  it('decodes every fixture the same wherever the descriptor chain splits it (two buffers, every offset)', () => {
    let splits = 0;
    for (const f of ALL) {
      for (let at = 0; at <= f.bytes.length; at++) {
        const p = decodePacket(splitAt(f.bytes, at));
        assert.deepEqual(p.header, f.header, `${f.file}:${f.line} split at ${at}`);
        assert.ok(p.payload.equals(f.payload), `${f.file}:${f.line} split at ${at}`);
        splits++;
      }
    }
    assert.ok(splits > 1000, `${splits} splits`);
  });

  it('decodes a packet in three buffers, every pair of cuts up to the payload, and in 1-byte buffers', () => {
    const f = REAL.find((x) => x.op === 'RW' && x.payload.length > 4) as Fixture;
    for (let a = 0; a <= HEADER_SIZE + 2; a++) {
      for (let b = a; b <= HEADER_SIZE + 2; b++) {
        const p = decodePacket(splitAt(f.bytes, a, b));
        assert.deepEqual(p.header, f.header, `cuts ${a},${b}`);
        assert.ok(p.payload.equals(f.payload), `cuts ${a},${b}`);
      }
    }
    const bytewise = [...f.bytes].map((x) => Buffer.from([x]));
    assert.ok(decodePacket(bytewise).payload.equals(f.payload));
  });

  it('copies the payload: changing the input afterwards (guest memory) does not change it', () => {
    const f = REAL.find((x) => x.op === 'RW') as Fixture;
    const input = Buffer.from(f.bytes);
    const p = decodePacket([input]);
    input.fill(0);
    assert.ok(p.payload.equals(f.payload));
  });

  it('describes a header in one line for logs', () => {
    const f = REAL[0] as Fixture;
    assert.equal(describeHeader(f.header), `REQUEST 3:${f.header.srcPort} -> 2:5000 len 0 buf 262144 fwd 0`);
    assert.match(describeHeader({ ...f.header, op: 99, type: 2, flags: 3 }), /^op99 .* flags 3 .* type 2$/);
  });
});

describe('vsock codec: malformed packets', () => {
  it('has a fixture for every reason but too-long (tested below with a small limit)', () => {
    assert.deepEqual([...new Set(MALFORMED.map((m) => m.reason))].sort(), ['cid', 'length', 'op', 'short', 'type']);
  });

  it('refuses each with a VsockDecodeError of its reason, carrying the header when there was one to read', () => {
    for (const m of MALFORMED) {
      assert.throws(
        () => decodePacket([m.bytes]),
        (e: unknown) => {
          assert.ok(e instanceof VsockDecodeError, `line ${m.line}`);
          assert.equal(e.code, 'ERR_VSOCK_DECODE');
          assert.equal(e.reason, m.reason, `line ${m.line} (${m.why}): ${e.message}`);
          if (m.reason === 'short' || m.reason === 'cid') assert.equal(e.header, undefined);
          else assert.deepEqual(e.header, decodeHeader(m.bytes), `line ${m.line}: the header rides along`);
          return true;
        },
        `line ${m.line}: ${m.why}`,
      );
    }
  });

  it('refuses the same wherever the bytes are split', () => {
    for (const m of MALFORMED) {
      for (let at = 0; at <= m.bytes.length; at++) {
        assert.throws(() => decodePacket(splitAt(m.bytes, at)), (e: unknown) => e instanceof VsockDecodeError && e.reason === m.reason, `line ${m.line} at ${at}`);
      }
    }
  });

  it('refuses a payload above the limit as too-long (64 KiB by default, Linux\'s largest packet)', () => {
    const big = encodePacket({ srcCid: 3, dstCid: 2, srcPort: 1, dstPort: 2, type: 1, op: Op.RW, flags: 0, bufAlloc: 0, fwdCnt: 0 }, Buffer.alloc(MAX_PKT_PAYLOAD + 1));
    assert.throws(() => decodePacket([big]), (e: unknown) => e instanceof VsockDecodeError && e.reason === 'too-long' && e.header?.len === MAX_PKT_PAYLOAD + 1);
    const max = big.subarray(0, big.length - 1);
    max.writeUInt32LE(MAX_PKT_PAYLOAD, 24);
    assert.equal(decodePacket([max]).payload.length, MAX_PKT_PAYLOAD);
    assert.throws(() => decodePacket([max], { maxPayload: 100 }), (e: unknown) => e instanceof VsockDecodeError && e.reason === 'too-long');
  });

  it('accepts SEQPACKET only when asked to (VIRTIO_VSOCK_F_SEQPACKET negotiated)', () => {
    const h: VsockHeader = { srcCid: 3, dstCid: 2, srcPort: 1, dstPort: 2, len: 0, type: SocketType.SEQPACKET, op: Op.REQUEST, flags: 0, bufAlloc: 0, fwdCnt: 0 };
    assert.throws(() => checkHeader(h, 0), (e: unknown) => e instanceof VsockDecodeError && e.reason === 'type');
    checkHeader(h, 0, { allowSeqpacket: true });
  });

  it('decodeHeader reads only the first 44 bytes and checks only their length and the CIDs', () => {
    const f = REAL[0] as Fixture;
    assert.deepEqual(decodeHeader(Buffer.concat([f.bytes, Buffer.from('trailing')])), f.header);
    assert.throws(() => decodeHeader(f.bytes.subarray(0, 43)), (e: unknown) => e instanceof VsockDecodeError && e.reason === 'short');
  });
});

describe('vsock codec: encoder validation, events, config', () => {
  const base: VsockHeader = { srcCid: 2, dstCid: 3, srcPort: 1, dstPort: 2, len: 0, type: 1, op: 1, flags: 0, bufAlloc: 0, fwdCnt: 0 };

  it('refuses out-of-range fields with a RangeError naming the field', () => {
    const bad: [keyof VsockHeader, number][] = [
      ['srcCid', 2 ** 32], ['dstCid', -1], ['srcPort', 1.5], ['dstPort', 2 ** 32], ['len', -1], ['type', 0x10000], ['op', -1], ['flags', 2 ** 33], ['bufAlloc', NaN], ['fwdCnt', 2 ** 32],
    ];
    for (const [field, value] of bad) {
      assert.throws(() => encodeHeader({ ...base, [field]: value }), (e: unknown) => e instanceof RangeError && e.message.includes(field), field);
    }
  });

  it('writes a header into a larger buffer at an offset, and refuses one with no room', () => {
    const out = Buffer.alloc(100, 0xee);
    encodeHeader(base, out, 10);
    assert.deepEqual(decodeHeader(out.subarray(10)), base);
    assert.equal(out[9], 0xee);
    assert.equal(out[54], 0xee);
    assert.throws(() => encodeHeader(base, Buffer.alloc(50), 10), RangeError);
  });

  it('encodes TRANSPORT_RESET as a 4-byte le32 event, and the config space as le64 guest_cid', () => {
    assert.equal(EVENT_SIZE, 4);
    assert.deepEqual([...encodeEvent(EventId.TRANSPORT_RESET)], [0, 0, 0, 0]);
    assert.equal(decodeEvent(encodeEvent(0x01020304)), 0x01020304);
    assert.equal(CONFIG_SIZE, 8);
    assert.deepEqual([...encodeConfig(3)], [3, 0, 0, 0, 0, 0, 0, 0]);
    assert.equal(decodeConfig(encodeConfig(0xfffffffe)), 0xfffffffen);
    assert.throws(() => encodeConfig(2 ** 32), RangeError);
    assert.throws(() => decodeEvent(Buffer.alloc(3)), RangeError);
  });
});

describe('vsock codec: the hybrid CONNECT/OK handshake, host end', () => {
  it('parses CONNECT lines as cloud-hypervisor accepts them, keeping the bytes after the newline', () => {
    const cases: [string, number, string][] = [
      ['CONNECT 1234\n', 1234, ''],
      ['connect 0\n', 0, ''],
      ['Connect\t7 \r\n', 7, ''],
      ['CONNECT  4294967295\nhello', 4294967295, 'hello'],
      ['CONNECT 5000\nCONNECT 6000\n', 5000, 'CONNECT 6000\n'],
    ];
    for (const [line, port, rest] of cases) {
      const r = parseConnect(Buffer.from(line, 'latin1'));
      assert.deepEqual(r.done && { port: r.port, rest: r.rest.toString('latin1') }, { port, rest }, JSON.stringify(line));
    }
  });

  it('waits for more at every split of a valid line, and answers once the newline is in', () => {
    const line = Buffer.from('CONNECT 1234\nDATA');
    for (let at = 0; at < 13; at++) assert.deepEqual(parseConnect(line.subarray(0, at)), { done: false }, `first ${at} bytes`);
    for (let at = 13; at <= line.length; at++) {
      const r = parseConnect(line.subarray(0, at));
      assert.ok(r.done);
      assert.equal(r.port, 1234);
      assert.equal(r.rest.toString(), 'DATA'.slice(0, at - 13));
    }
  });

  it('refuses what can never be a CONNECT line as soon as it shows, and over-long lines', () => {
    const bad = [
      'GET / HTTP/1.1\r\n', 'G', 'CONNECTX', 'CONNECT\n', 'CONNECT x\n', 'CONNECT -1\n', 'CONNECT 1 2\n', 'CONNECT 4294967296\n', 'CONNECT 12345678901\n',
      'OK 5\n', `CONNECT ${'0'.repeat(40)}`, `CONNECT ${' '.repeat(30)}1\n`,
    ];
    for (const b of bad) assert.throws(() => parseConnect(Buffer.from(b)), (e: unknown) => e instanceof HandshakeError && e.code === 'ERR_PRISM_HVSOCK_HANDSHAKE', JSON.stringify(b));
    assert.throws(() => parseConnect(Buffer.from(`CONNECT ${' '.repeat(MAX_CONNECT_LINE)}`)), HandshakeError);
  });

  it('agrees with prism\'s client side: encodeConnect → parseConnect, encodeOk → parseReply', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 0xffff_ffff }), fc.uint8Array({ maxLength: 16 }), (port, after) => {
        const c = parseConnect(Buffer.concat([encodeConnect(port), after]));
        assert.ok(c.done);
        assert.equal(c.port, port);
        assert.deepEqual([...c.rest], [...after]);
        const r = parseReply(Buffer.concat([encodeOk(port), after]));
        assert.ok(r.done);
        assert.equal(r.hostPort, port);
      }),
    );
    assert.throws(() => encodeOk(-1), RangeError);
  });
});

describe('vsock codec: properties', () => {
  const header = fc.record({
    srcCid: fc.integer({ min: 0, max: 0xffff_ffff }),
    dstCid: fc.integer({ min: 0, max: 0xffff_ffff }),
    srcPort: fc.integer({ min: 0, max: 0xffff_ffff }),
    dstPort: fc.integer({ min: 0, max: 0xffff_ffff }),
    type: fc.constant(SocketType.STREAM),
    op: fc.integer({ min: 1, max: 7 }),
    flags: fc.integer({ min: 0, max: 0xffff_ffff }),
    bufAlloc: fc.integer({ min: 0, max: 0xffff_ffff }),
    fwdCnt: fc.integer({ min: 0, max: 0xffff_ffff }),
  });

  it('round-trips any valid packet, however the chain splits it', () => {
    fc.assert(
      fc.property(header, fc.uint8Array({ maxLength: 300 }), fc.array(fc.nat(), { maxLength: 4 }), (h, data, cuts) => {
        const payload = h.op === Op.RW ? Buffer.from(data) : Buffer.alloc(0);
        const bytes = encodePacket(h, payload);
        const at = cuts.map((c) => c % (bytes.length + 1)).sort((a, b) => a - b);
        const p = decodePacket(splitAt(bytes, ...at));
        assert.deepEqual(p.header, { ...h, len: payload.length });
        assert.ok(p.payload.equals(payload));
      }),
      { numRuns: 2000 },
    );
  });

  it('on arbitrary bytes either decodes or throws a VsockDecodeError, never anything else', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 120 }), fc.nat(), (bytes, cut) => {
        const b = Buffer.from(bytes);
        try {
          decodePacket(splitAt(b, cut % (b.length + 1)));
        } catch (e) {
          assert.ok(e instanceof VsockDecodeError, String(e));
        }
      }),
      { numRuns: 5000 },
    );
  });

  it('on arbitrary headers (any type, op, len) decodes only what the rules allow', () => {
    fc.assert(
      fc.property(header, fc.integer({ min: 0, max: 0xffff }), fc.integer({ min: 0, max: 0xffff }), fc.integer({ min: 0, max: 8 }), fc.integer({ min: 0, max: 8 }), (h, type, op, len, extra) => {
        const bytes = Buffer.concat([encodeHeader({ ...h, type, op, len }), Buffer.alloc(extra)]);
        const ok = type === 1 && op >= 1 && op <= 7 && len === extra && (op === Op.RW || len === 0);
        let decoded = false;
        try {
          decodePacket([bytes]);
          decoded = true;
        } catch (e) {
          assert.ok(e instanceof VsockDecodeError);
        }
        assert.equal(decoded, ok);
      }),
      { numRuns: 3000 },
    );
  });

  it('parseConnect never throws anything but HandshakeError and never reads past the first newline', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 48 }), (bytes) => {
        const b = Buffer.from(bytes);
        try {
          const r = parseConnect(b);
          if (r.done) assert.equal(r.rest.length, b.length - b.indexOf(0x0a) - 1);
        } catch (e) {
          assert.ok(e instanceof HandshakeError);
        }
      }),
      { numRuns: 3000 },
    );
  });
});
