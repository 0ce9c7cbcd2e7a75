// vhost-user codec: golden messages from real traffic (QEMU 7.2 and DPDK 22.11, test/fixtures/
// vhost-user/) and hand-made ones from the spec, each decoded, encoded and round-tripped; every
// message fed to a MessageReader split at every byte offset, with its fds; fd attribution as Linux
// delivers SCM_RIGHTS; malformed messages; encoder validation; fd and reply rules; and fast-check
// properties (decoders throw only DecodeError/ProtocolError on arbitrary bytes, arbitrary valid
// messages round-trip, message streams in arbitrary reads come out whole with their fds).
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import {
  BackendRequest,
  DecodeError,
  FrontendRequest,
  HEADER_SIZE,
  MAX_CONFIG_SIZE,
  MAX_FDS_PER_MESSAGE,
  MAX_PAYLOAD_SIZE,
  MEMORY_BASELINE_NREGIONS,
  MessageReader,
  PayloadSize,
  ProtocolError,
  ProtocolFeature,
  REQUESTS_WITH_REPLY,
  VirtioFeature,
  VirtioNetFeature,
  backendFdCount,
  decodeBackend,
  decodeFrontend,
  decodeReply,
  encodeBackend,
  encodeFrontend,
  encodeReply,
  expectsReply,
  featureBits,
  featureMask,
  featureNames,
  frontendFdCount,
  frontendStrayFds,
  readHeader,
  replyFdCount,
  type BackendMessage,
  type BackendReply,
  type BackendRequestName,
  type DecodeErrorReason,
  type FrontendMessage,
  type FrontendRequestName,
  type MemoryRegion,
} from '../src/codecs/vhost-user/index.js';

// --- fixtures ----------------------------------------------------------------------------------

const FIXTURE_DIR = new URL('./fixtures/vhost-user/', import.meta.url);
const REAL_FILES = ['qemu-7.2.txt', 'dpdk-22.11.txt'] as const;
const FIXTURE_FILES = [...REAL_FILES, 'spec.txt'] as const;

type Kind = 'F' | 'R' | 'B';
type Decoded = FrontendMessage | BackendReply | BackendMessage;

interface Fixture {
  file: string;
  line: number;
  kind: Kind;
  /** The request named in the header (what a reply answers). */
  name: string;
  fds: number;
  bytes: Buffer;
  expected: Decoded;
  note: string;
}

/** JSON values of the fixtures: "0x…n" strings are u64 bigints, {"hex": "…"} objects Buffers. */
function revive(_key: string, v: unknown): unknown {
  if (typeof v === 'string' && /^0x[0-9a-f]+n$/.test(v)) return BigInt(v.slice(0, -1));
  if (typeof v === 'object' && v !== null && !Array.isArray(v)) {
    const keys = Object.keys(v);
    if (keys.length === 1 && keys[0] === 'hex') return Buffer.from((v as { hex: string }).hex, 'hex');
  }
  return v;
}

function loadFixtures(file: string): Fixture[] {
  const lines = readFileSync(new URL(file, FIXTURE_DIR), 'utf8').split('\n');
  const out: Fixture[] = [];
  let note = '';
  for (let i = 0; i < lines.length; i++) {
    const l = lines[i] as string;
    if (l.startsWith('# ')) {
      note = l.slice(2);
      continue;
    }
    if (l.trim() === '' || l.startsWith('#')) {
      note = '';
      continue;
    }
    const m = /^([FRB]) ([A-Z_]+) fds=(\d+) ([0-9a-f ]+)$/.exec(l);
    assert.ok(m, `${file}:${i + 1}: expected "<F|R|B> <REQUEST> fds=<n> <hex>"`);
    const json = lines[i + 1] ?? '';
    assert.ok(json.startsWith('= '), `${file}:${i + 2}: expected "= <json>"`);
    out.push({
      file,
      line: i + 1,
      kind: m[1] as Kind,
      name: m[2] as string,
      fds: Number(m[3]),
      bytes: Buffer.from((m[4] as string).replace(/ /g, ''), 'hex'),
      expected: JSON.parse(json.slice(2), revive) as Decoded,
      note,
    });
    note = '';
    i++;
  }
  return out;
}

const FIXTURES = FIXTURE_FILES.flatMap(loadFixtures);

function decode(kind: Kind, bytes: Buffer, fds: number): Decoded {
  return kind === 'F' ? decodeFrontend(bytes, fds) : kind === 'R' ? decodeReply(bytes, fds) : decodeBackend(bytes, fds);
}

function encode(kind: Kind, m: Decoded): Buffer {
  return kind === 'F' ? encodeFrontend(m as FrontendMessage) : kind === 'R' ? encodeReply(m as BackendReply) : encodeBackend(m as BackendMessage);
}

/** The fds a message takes by the rules (REM_MEM_REG may bring one more). */
function ruleFds(kind: Kind, m: Decoded): number {
  return kind === 'F' ? frontendFdCount(m as FrontendMessage) : kind === 'R' ? replyFdCount(m as BackendReply) : backendFdCount(m as BackendMessage);
}

describe('vhost-user fixtures', () => {
  it('cover every front-end request, every back-end request and every typed reply', () => {
    const front = new Set(FIXTURES.filter((f) => f.kind === 'F').map((f) => f.name));
    assert.deepEqual(
      Object.keys(FrontendRequest).filter((n) => !front.has(n)),
      [],
    );
    const back = new Set(FIXTURES.filter((f) => f.kind === 'B').map((f) => f.name));
    assert.deepEqual(
      Object.keys(BackendRequest).filter((n) => !back.has(n)),
      [],
    );
    const replies = new Set(FIXTURES.filter((f) => f.kind === 'R').map((f) => f.expected.request));
    const replyKinds: BackendReply['request'][] = [
      'REPLY_ACK',
      'GET_FEATURES',
      'GET_PROTOCOL_FEATURES',
      'GET_QUEUE_NUM',
      'GET_MAX_MEM_SLOTS',
      'GET_STATUS',
      'GET_VRING_BASE',
      'GET_CONFIG',
      'GET_INFLIGHT_FD',
      'SET_LOG_BASE',
      'SET_DEVICE_STATE_FD',
      'POSTCOPY_ADVISE',
      'SET_MEM_TABLE',
      'ADD_MEM_REG',
    ];
    // GET_SHMEM_CONFIG's reply (2056 bytes) is checked below instead of in a fixture line.
    assert.deepEqual(
      replyKinds.filter((k) => !replies.has(k)),
      [],
    );
  });

  it('real traffic: QEMU 7.2 and DPDK 22.11 sent these requests, and DPDK answered these', () => {
    const real = FIXTURES.filter((f) => (REAL_FILES as readonly string[]).includes(f.file));
    const sent = (file: string): string[] => [...new Set(real.filter((f) => f.file === file && f.kind === 'F').map((f) => f.name))].sort();
    assert.deepEqual(sent('qemu-7.2.txt'), [
      'ADD_MEM_REG',
      'GET_CONFIG',
      'GET_FEATURES',
      'GET_MAX_MEM_SLOTS',
      'GET_PROTOCOL_FEATURES',
      'GET_QUEUE_NUM',
      'GET_STATUS',
      'GET_VRING_BASE',
      'NET_SET_MTU',
      'REM_MEM_REG',
      'SET_BACKEND_REQ_FD',
      'SET_FEATURES',
      'SET_LOG_BASE',
      'SET_MEM_TABLE',
      'SET_OWNER',
      'SET_PROTOCOL_FEATURES',
      'SET_STATUS',
      'SET_VRING_ADDR',
      'SET_VRING_BASE',
      'SET_VRING_CALL',
      'SET_VRING_ENABLE',
      'SET_VRING_ERR',
      'SET_VRING_KICK',
      'SET_VRING_NUM',
    ]);
    assert.deepEqual(sent('dpdk-22.11.txt'), [
      'GET_FEATURES',
      'GET_PROTOCOL_FEATURES',
      'GET_STATUS',
      'GET_VRING_BASE',
      'SET_FEATURES',
      'SET_MEM_TABLE',
      'SET_OWNER',
      'SET_PROTOCOL_FEATURES',
      'SET_STATUS',
      'SET_VRING_ADDR',
      'SET_VRING_BASE',
      'SET_VRING_CALL',
      'SET_VRING_ENABLE',
      'SET_VRING_KICK',
      'SET_VRING_NUM',
    ]);
    const answered = [...new Set(real.filter((f) => f.kind === 'R').map((f) => f.expected.request))].sort();
    assert.deepEqual(answered, ['GET_FEATURES', 'GET_PROTOCOL_FEATURES', 'GET_QUEUE_NUM', 'GET_STATUS', 'GET_VRING_BASE', 'REPLY_ACK', 'SET_LOG_BASE']);
  });

  it('real traffic: the features each side offered and acknowledged', () => {
    const find = (file: string, kind: Kind, name: string): Decoded => {
      const f = FIXTURES.find((x) => x.file === file && x.kind === kind && x.name === name);
      assert.ok(f, `${file} ${kind} ${name}`);
      return f.expected;
    };
    const features = (m: Decoded): bigint => (m as { features: bigint }).features;
    const dpdkOffer = features(find('dpdk-22.11.txt', 'R', 'GET_PROTOCOL_FEATURES'));
    assert.deepEqual(featureNames(dpdkOffer, ProtocolFeature), [
      'MQ',
      'LOG_SHMFD',
      'RARP',
      'REPLY_ACK',
      'NET_MTU',
      'BACKEND_REQ',
      'CRYPTO_SESSION',
      'BACKEND_SEND_FD',
      'HOST_NOTIFIER',
      'STATUS',
    ]);
    // QEMU acknowledges every protocol feature DPDK offers; DPDK's virtio_user keeps three.
    assert.equal(features(find('qemu-7.2.txt', 'F', 'SET_PROTOCOL_FEATURES')), dpdkOffer);
    assert.deepEqual(featureNames(features(find('dpdk-22.11.txt', 'F', 'SET_PROTOCOL_FEATURES')), ProtocolFeature), ['MQ', 'REPLY_ACK', 'STATUS']);
    const both = { ...VirtioNetFeature, ...VirtioFeature };
    assert.deepEqual(featureNames(features(find('dpdk-22.11.txt', 'F', 'SET_FEATURES')), both), [
      'MRG_RXBUF',
      'RING_INDIRECT_DESC',
      'PROTOCOL_FEATURES',
      'VERSION_1',
      'IN_ORDER',
    ]);
  });

  for (const fx of FIXTURES) {
    describe(`${fx.file}:${fx.line} ${fx.kind} ${fx.name}${fx.note ? ` (${fx.note})` : ''}`, () => {
      it('decodes to the expected fields', () => {
        assert.deepStrictEqual(decode(fx.kind, fx.bytes, fx.fds), fx.expected);
      });
      it('encodes from the fields to the same bytes, with the fd count the rules give', () => {
        assert.deepStrictEqual(encode(fx.kind, fx.expected), fx.bytes);
        const stray = fx.kind === 'F' ? frontendStrayFds(fx.expected as FrontendMessage) : 0;
        const want = ruleFds(fx.kind, fx.expected);
        assert.ok(fx.fds >= want && fx.fds <= want + stray, `fds ${fx.fds}, rule ${want}+${stray}`);
      });
      it('round-trips', () => {
        const again = encode(fx.kind, decode(fx.kind, fx.bytes, fx.fds));
        assert.deepStrictEqual(again, fx.bytes);
        assert.deepStrictEqual(decode(fx.kind, again, fx.fds), fx.expected);
      });
    });
  }
});

// --- framing -----------------------------------------------------------------------------------

/** The fd numbers a test pretends arrived: distinct, easy to recognize. */
function fakeFds(n: number, base = 100): number[] {
  return Array.from({ length: n }, (_, i) => base + i);
}

describe('MessageReader', () => {
  it('returns each fixture whole with its fds, wherever the stream is split', () => {
    let splits = 0;
    for (const fx of FIXTURES) {
      const fds = fakeFds(fx.fds);
      for (let at = 0; at <= fx.bytes.length; at++) {
        const r = new MessageReader();
        // fds ride on the first bytes of the message, as a sendmsg() of the whole message puts them.
        r.push(fx.bytes.subarray(0, at), at > 0 ? fds : []);
        if (at < fx.bytes.length) assert.equal(r.next(), null, `${fx.name} split at ${at}: nothing yet`);
        r.push(fx.bytes.subarray(at), at > 0 ? [] : fds);
        const got = r.next();
        assert.ok(got, `${fx.name} split at ${at}`);
        assert.deepStrictEqual(got.bytes, fx.bytes);
        assert.deepStrictEqual(got.fds, fds);
        assert.equal(r.next(), null);
        assert.equal(r.bufferedBytes, 0);
        assert.equal(r.bufferedFds, 0);
        assert.deepStrictEqual(decode(fx.kind, got.bytes, got.fds.length), fx.expected);
        splits++;
      }
    }
    assert.ok(splits > 3000, `${splits} splits`);
  });

  it('splits a stream of every fixture fed one byte at a time, each message with its fds', () => {
    const r = new MessageReader();
    const got: { bytes: Buffer; fds: number[] }[] = [];
    let base = 100;
    const want = FIXTURES.map((fx) => {
      const fds = fakeFds(fx.fds, base);
      base += fx.fds;
      return { bytes: fx.bytes, fds };
    });
    for (const w of want) {
      for (let i = 0; i < w.bytes.length; i++) {
        r.push(w.bytes.subarray(i, i + 1), i === 0 ? w.fds : []);
        for (let m = r.next(); m !== null; m = r.next()) got.push(m);
      }
    }
    assert.deepStrictEqual(got, want);
  });

  it('gives fds to the message holding the last byte of their chunk (Linux stream semantics)', () => {
    const a = encodeFrontend({ request: 'SET_OWNER', flags: { needReply: false } });
    const b = encodeFrontend({ request: 'SET_VRING_KICK', flags: { needReply: false }, index: 0, noFd: false });
    const r = new MessageReader();
    // recvmsg() may join the tail of A to the segment of B that carried the fd, and stops there.
    r.push(a.subarray(0, 5));
    r.push(Buffer.concat([a.subarray(5), b.subarray(0, 3)]), [7]);
    assert.deepStrictEqual(r.next(), { bytes: a, fds: [] });
    assert.equal(r.next(), null);
    r.push(b.subarray(3));
    assert.deepStrictEqual(r.next(), { bytes: b, fds: [7] });
  });

  it('keeps the bytes after a message for the next one, and returns a message inside one chunk without copying', () => {
    const a = encodeFrontend({ request: 'GET_FEATURES', flags: { needReply: false } });
    const b = encodeFrontend({ request: 'SET_FEATURES', flags: { needReply: false }, features: 1n << 32n });
    const chunk = Buffer.concat([a, b.subarray(0, 3)]);
    const r = new MessageReader();
    r.push(chunk);
    const got = r.next();
    assert.ok(got);
    assert.deepStrictEqual(got.bytes, a);
    assert.equal(got.bytes.buffer, chunk.buffer);
    assert.equal(r.next(), null);
    assert.equal(r.bufferedBytes, 3);
    r.push(b.subarray(3));
    assert.deepStrictEqual(r.next()?.bytes, b);
  });

  it('throws ProtocolError on a size above the limit as soon as the header is in, and keeps throwing', () => {
    const head = Buffer.from('010000000100000001100000', 'hex'); // size 4097
    const r = new MessageReader();
    r.push(head.subarray(0, 11));
    assert.equal(r.next(), null);
    r.push(head.subarray(11));
    assert.throws(
      () => r.next(),
      (e: unknown) => e instanceof ProtocolError && e.code === 'ERR_VHOST_USER_FRAMING' && e.reason === 'size' && e.size === 4097 && e.maxSize === MAX_PAYLOAD_SIZE,
    );
    r.push(Buffer.alloc(4097));
    assert.throws(() => r.next(), ProtocolError);
    // 4096 is fine, and so is a smaller limit set by the caller.
    const ok = new MessageReader();
    ok.push(Buffer.concat([Buffer.from('01000000010000000010000000', 'hex').subarray(0, 12), Buffer.alloc(4096)]));
    assert.equal(ok.next()?.bytes.length, HEADER_SIZE + 4096);
    const small = new MessageReader({ maxPayloadSize: 8 });
    small.push(encodeFrontend({ request: 'GET_CONFIG', flags: { needReply: false }, config: { offset: 0, flags: 0, data: Buffer.alloc(8) } }));
    assert.throws(() => small.next(), (e: unknown) => e instanceof ProtocolError && e.size === 20 && e.maxSize === 8);
    assert.throws(() => new MessageReader({ maxPayloadSize: -1 }), RangeError);
    assert.throws(() => new MessageReader({ maxFds: 254 }), RangeError);
  });

  it('throws ProtocolError when one message brings more than 8 fds, before it is complete', () => {
    const msg = encodeFrontend({ request: 'SET_MEM_TABLE', flags: { needReply: false }, regions: [] });
    const r = new MessageReader();
    r.push(msg.subarray(0, 2), fakeFds(5));
    assert.equal(r.next(), null);
    r.push(msg.subarray(2, 4), fakeFds(4, 200));
    assert.throws(() => r.next(), (e: unknown) => e instanceof ProtocolError && e.reason === 'fds');
    assert.throws(() => r.next(), ProtocolError);
    assert.deepStrictEqual(r.takeFds().sort(), [...fakeFds(5), ...fakeFds(4, 200)].sort());
    assert.equal(r.bufferedFds, 0);
    // Exactly MAX_FDS_PER_MESSAGE is fine.
    const r2 = new MessageReader();
    r2.push(msg, fakeFds(MAX_FDS_PER_MESSAGE));
    assert.equal(r2.next()?.fds.length, MAX_FDS_PER_MESSAGE);
    // A whole message with too many fds, and the caller gets them all back to close.
    const r3 = new MessageReader();
    r3.push(msg, fakeFds(MAX_FDS_PER_MESSAGE + 1));
    assert.throws(() => r3.next(), ProtocolError);
    assert.equal(r3.takeFds().length, MAX_FDS_PER_MESSAGE + 1);
  });

  it('throws ProtocolError for fds that came without bytes', () => {
    const r = new MessageReader();
    r.push(Buffer.alloc(0), [5]);
    assert.throws(() => r.next(), (e: unknown) => e instanceof ProtocolError && e.reason === 'fds');
    assert.deepStrictEqual(r.takeFds(), [5]);
    // After a whole message, fds with an empty chunk have no message either.
    const r2 = new MessageReader();
    r2.push(encodeFrontend({ request: 'SET_OWNER', flags: { needReply: false } }));
    assert.ok(r2.next());
    r2.push(Buffer.alloc(0), [6]);
    assert.throws(() => r2.next(), ProtocolError);
  });

  it('takeFds hands back the fds of a message still incomplete', () => {
    const r = new MessageReader();
    r.push(Buffer.from('0c000000', 'hex'), [9]);
    assert.equal(r.next(), null);
    assert.equal(r.bufferedFds, 1);
    assert.deepStrictEqual(r.takeFds(), [9]);
    assert.equal(r.bufferedFds, 0);
  });

  it('readHeader reads request, flags and size', () => {
    assert.deepEqual(readHeader(encodeFrontend({ request: 'SET_STATUS', flags: { needReply: true }, status: 15 })), { request: 39, flags: 9, size: 8 });
    assert.equal(readHeader(Buffer.alloc(11)), null);
  });

  it('never throws anything but ProtocolError, and only returns well-sized messages (fast-check)', () => {
    fc.assert(
      fc.property(
        fc.array(fc.tuple(fc.uint8Array({ maxLength: 64 }), fc.integer({ min: 0, max: 3 })), { maxLength: 20 }),
        fc.integer({ min: 0, max: 300 }),
        (chunks, max) => {
          const r = new MessageReader({ maxPayloadSize: max });
          let fd = 0;
          try {
            for (const [c, nfds] of chunks) {
              r.push(Buffer.from(c), fakeFds(nfds, (fd += nfds)));
              for (let m = r.next(); m !== null; m = r.next()) {
                assert.ok(m.bytes.length >= HEADER_SIZE && m.bytes.length <= HEADER_SIZE + max);
                assert.equal(m.bytes.readUInt32LE(8), m.bytes.length - HEADER_SIZE);
                assert.ok(m.fds.length <= MAX_FDS_PER_MESSAGE);
              }
            }
          } catch (e) {
            if (!(e instanceof ProtocolError)) throw e;
          }
        },
      ),
      { numRuns: 5000 },
    );
  });
});

// --- malformed input ---------------------------------------------------------------------------

interface Malformed {
  kind: Kind;
  reason: DecodeErrorReason;
  fds: number;
  bytes: Buffer;
  why: string;
}

const MALFORMED: Malformed[] = readFileSync(new URL('malformed.txt', FIXTURE_DIR), 'utf8')
  .split('\n')
  .filter((l) => /^[FRB] /.test(l))
  .map((l) => {
    const m = /^([FRB]) (header|unknown-request|payload|fds) fds=(\d+) ([0-9a-f ]+?)\s+# (.*)$/.exec(l);
    assert.ok(m, `bad malformed.txt line: ${l}`);
    return {
      kind: m[1] as Kind,
      reason: m[2] as DecodeErrorReason,
      fds: Number(m[3]),
      bytes: Buffer.from((m[4] as string).replace(/ /g, ''), 'hex'),
      why: m[5] as string,
    };
  });

describe('malformed messages', () => {
  for (const bad of MALFORMED) {
    it(`${bad.kind}: ${bad.why} -> DecodeError ${bad.reason}`, () => {
      const header = readHeader(bad.bytes);
      assert.throws(
        () => decode(bad.kind, bad.bytes, bad.fds),
        (e: unknown) =>
          e instanceof DecodeError &&
          e.code === 'ERR_VHOST_USER_DECODE' &&
          e.reason === bad.reason &&
          e.request === header?.request &&
          e.needReply === (header !== null && (header.flags & 0x8) !== 0),
      );
    });
  }

  it('DecodeError carries a message and the request name, no stack frames, and leaves Error.stackTraceLimit alone', () => {
    const limit = Error.stackTraceLimit;
    let err: unknown;
    try {
      decodeFrontend(Buffer.from('1200000009000000080000000000000002000000', 'hex'));
    } catch (e) {
      err = e;
    }
    assert.ok(err instanceof DecodeError && err instanceof Error);
    assert.match(err.message, /SET_VRING_ENABLE: num 2/);
    assert.equal(err.requestName, 'SET_VRING_ENABLE');
    assert.equal(err.needReply, true);
    assert.doesNotMatch(err.stack ?? '', /\n\s+at /);
    assert.equal(Error.stackTraceLimit, limit);
  });

  it('every fixture cut short or extended by one byte (size field adjusted) is a payload DecodeError', () => {
    for (const fx of FIXTURES) {
      if (fx.name === 'CREATE_CRYPTO_SESSION') continue; // an opaque payload of any length
      const variants: Buffer[] = [Buffer.concat([fx.bytes, Buffer.from([0])])];
      if (fx.bytes.length > HEADER_SIZE) variants.push(Buffer.from(fx.bytes.subarray(0, -1)));
      for (const v of variants) {
        v.writeUInt32LE(v.length - HEADER_SIZE, 8);
        assert.throws(
          () => decode(fx.kind, v, fx.fds),
          (e: unknown) => e instanceof DecodeError && e.reason === 'payload' && e.request === fx.bytes.readUInt32LE(0),
          `${fx.file}:${fx.line} ${fx.name} length ${v.length}`,
        );
      }
    }
  });

  it('IOTLB padding is ignored (QEMU copies it from an uninitialized struct), so it does not round-trip', () => {
    const clean = encodeFrontend({
      request: 'IOTLB_MSG',
      flags: { needReply: true },
      iotlb: { iova: 0x1000n, size: 0x1000n, userspaceAddr: 0x7f00_0000_0000n, perm: 3, type: 2 },
    });
    const dirty = Buffer.from(clean);
    dirty.fill(0xa5, HEADER_SIZE + 26);
    assert.deepStrictEqual(decodeFrontend(dirty), decodeFrontend(clean));
    assert.deepStrictEqual(encodeFrontend(decodeFrontend(dirty)), clean);
  });

  it('GET_VRING_BASE ignores num (DPDK 22.11 virtio_user sends stack garbage there), so it does not round-trip', () => {
    const clean = encodeFrontend({ request: 'GET_VRING_BASE', flags: { needReply: false }, index: 1 });
    const dirty = Buffer.from(clean);
    dirty.writeUInt32LE(48184, HEADER_SIZE + 4); // the value DPDK sent in a prism test run
    assert.deepStrictEqual(decodeFrontend(dirty), decodeFrontend(clean));
    assert.deepStrictEqual(encodeFrontend(decodeFrontend(dirty)), clean);
  });

  it('decoders throw only DecodeError on arbitrary bytes (fast-check, 20 000 runs each)', () => {
    const onlyDecodeError = (f: (b: Buffer, fds: number) => unknown) => (bytes: Uint8Array, fds: number) => {
      try {
        f(Buffer.from(bytes), fds);
      } catch (e) {
        if (!(e instanceof DecodeError)) throw e;
      }
    };
    // Raw bytes, and payloads behind a right-sized header with a known or random request number and
    // version-1 flags (so decoding reaches the payload).
    const numbers = [...Object.values(FrontendRequest), ...Object.values(BackendRequest)];
    const framed = fc
      .tuple(
        fc.oneof(fc.constantFrom(...numbers), fc.integer({ min: 0, max: 0xffff_ffff })),
        fc.constantFrom(0x1, 0x5, 0x9, 0xd, 0x0, 0x11),
        fc.oneof(fc.uint8Array({ maxLength: 80 }), fc.uint8Array({ minLength: 260, maxLength: 300 })),
      )
      .map(([request, flags, payload]) => {
        const b = Buffer.alloc(HEADER_SIZE + payload.length);
        b.writeUInt32LE(request, 0);
        b.writeUInt32LE(flags, 4);
        b.writeUInt32LE(payload.length, 8);
        b.set(payload, HEADER_SIZE);
        return new Uint8Array(b);
      });
    const input = fc.oneof(fc.uint8Array({ maxLength: 64 }), framed);
    const fds = fc.integer({ min: 0, max: 9 });
    fc.assert(fc.property(input, fds, onlyDecodeError(decodeFrontend)), { numRuns: 20_000 });
    fc.assert(fc.property(input, fds, onlyDecodeError(decodeReply)), { numRuns: 20_000 });
    fc.assert(fc.property(input, fds, onlyDecodeError(decodeBackend)), { numRuns: 20_000 });
  });

  it('mutated real messages decode or throw DecodeError, and what decodes re-encodes to the same bytes (fast-check)', () => {
    const mutated = fc
      .tuple(
        fc.constantFrom(...FIXTURES),
        fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 4 }),
        fc.boolean(),
        fc.integer({ min: -1, max: 1 }),
      )
      .map(([fx, edits, fixSize, fdDelta]) => {
        const b = Buffer.from(fx.bytes);
        for (const [at, v] of edits) b[at % b.length] = v;
        if (fixSize) b.writeUInt32LE(b.length - HEADER_SIZE, 8);
        return { b, fds: Math.max(0, fx.fds + fdDelta) };
      });
    fc.assert(
      fc.property(mutated, ({ b, fds }) => {
        for (const kind of ['F', 'R', 'B'] as const) {
          let m: Decoded;
          try {
            m = decode(kind, b, fds);
          } catch (e) {
            if (e instanceof DecodeError) continue;
            throw e;
          }
          const want = Buffer.from(b);
          if (m.request === 'IOTLB_MSG') want.fill(0, HEADER_SIZE + 26); // padding is not kept
          if (kind === 'F' && m.request === 'GET_VRING_BASE') want.fill(0, HEADER_SIZE + 4); // num is not kept
          assert.deepStrictEqual(encode(kind, m), want);
        }
      }),
      { numRuns: 10_000 },
    );
  });
});

// --- encoder checks ----------------------------------------------------------------------------

describe('encoders', () => {
  const noReply = { needReply: false };

  it('set version 1, NEED_REPLY on request and REPLY on replies', () => {
    assert.equal(encodeFrontend({ request: 'SET_OWNER', flags: noReply }).readUInt32LE(4), 0x1);
    assert.equal(encodeFrontend({ request: 'SET_OWNER', flags: { needReply: true } }).readUInt32LE(4), 0x9);
    assert.equal(encodeReply({ request: 'GET_FEATURES', features: 0n }).readUInt32LE(4), 0x5);
    assert.equal(encodeBackend({ request: 'CONFIG_CHANGE_MSG', flags: { needReply: true } }).readUInt32LE(4), 0x9);
  });

  it('encode the replies a back-end sends', () => {
    const hex = (r: BackendReply): string => encodeReply(r).toString('hex');
    assert.equal(hex({ request: 'GET_FEATURES', features: featureMask(VirtioFeature.VERSION_1, VirtioFeature.PROTOCOL_FEATURES) }), '010000000500000008000000' + '0000004001000000');
    assert.equal(hex({ request: 'GET_PROTOCOL_FEATURES', features: 0x10009n }), '0f0000000500000008000000' + '0900010000000000');
    assert.equal(hex({ request: 'GET_QUEUE_NUM', queueNum: 1n }), '110000000500000008000000' + '0100000000000000');
    assert.equal(hex({ request: 'GET_MAX_MEM_SLOTS', maxMemSlots: 509n }), '240000000500000008000000' + 'fd01000000000000');
    assert.equal(hex({ request: 'GET_STATUS', status: 15 }), '280000000500000008000000' + '0f00000000000000');
    assert.equal(hex({ request: 'GET_VRING_BASE', index: 1, num: 9 }), '0b0000000500000008000000' + '0100000009000000');
    assert.equal(hex({ request: 'REPLY_ACK', ackedRequest: 'SET_MEM_TABLE', status: 0n }), '050000000500000008000000' + '0000000000000000');
    // Refusing a request the codec could not decode: the ack carries its raw number.
    assert.equal(hex({ request: 'REPLY_ACK', ackedRequest: 99, status: 1n }), '630000000500000008000000' + '0100000000000000');
  });

  it('encode and decode the 2056-byte GET_SHMEM_CONFIG reply', () => {
    const reply: BackendReply = { request: 'GET_SHMEM_CONFIG', memorySizes: [0x20_0000n, 0n, 0x1000n] };
    const b = encodeReply(reply);
    assert.equal(b.length, HEADER_SIZE + PayloadSize.SHMEM_CONFIG);
    assert.equal(b.readUInt32LE(HEADER_SIZE), 3);
    assert.deepStrictEqual(decodeReply(b), reply);
    b[b.length - 1] = 1; // a size beyond num regions
    assert.throws(() => decodeReply(b), (e: unknown) => e instanceof DecodeError && e.reason === 'payload');
    assert.throws(() => encodeReply({ request: 'GET_SHMEM_CONFIG', memorySizes: new Array<bigint>(257).fill(0n) }), RangeError);
  });

  it('refuse values that do not fit their field or a protocol limit with RangeError', () => {
    const region: MemoryRegion = { guestPhysAddr: 0n, memorySize: 0x1000n, userspaceAddr: 0n, mmapOffset: 0n };
    assert.throws(() => encodeFrontend({ request: 'SET_FEATURES', flags: noReply, features: 1n << 64n }), RangeError);
    assert.throws(() => encodeFrontend({ request: 'SET_FEATURES', flags: noReply, features: -1n }), RangeError);
    assert.throws(() => encodeFrontend({ request: 'SET_VRING_NUM', flags: noReply, index: 2 ** 32, num: 1 }), RangeError);
    assert.throws(() => encodeFrontend({ request: 'SET_VRING_NUM', flags: noReply, index: 1.5, num: 1 }), RangeError);
    assert.throws(() => encodeFrontend({ request: 'SET_VRING_KICK', flags: noReply, index: 256, noFd: false }), RangeError);
    assert.throws(() => encodeFrontend({ request: 'SET_MEM_TABLE', flags: noReply, regions: new Array<MemoryRegion>(9).fill(region) }), RangeError);
    assert.throws(
      () => encodeFrontend({ request: 'SET_CONFIG', flags: noReply, config: { offset: 0, flags: 0, data: Buffer.alloc(MAX_CONFIG_SIZE + 1) } }),
      RangeError,
    );
    assert.throws(() => encodeFrontend({ request: 'NET_SET_MTU', flags: noReply, mtu: 65536 }), RangeError);
    assert.throws(() => encodeFrontend({ request: 'SET_STATUS', flags: noReply, status: 256 }), RangeError);
    assert.throws(() => encodeFrontend({ request: 'SEND_RARP', flags: noReply, mac: '52:54:00:12:34' }), RangeError);
    assert.throws(() => encodeFrontend({ request: 'SEND_RARP', flags: noReply, mac: '52:54:00:12:34:5G' }), RangeError);
    assert.throws(() => encodeFrontend({ request: 'GET_SHARED_OBJECT', flags: noReply, uuid: 'not-a-uuid' }), RangeError);
    assert.throws(() => encodeFrontend({ request: 'CREATE_CRYPTO_SESSION', flags: noReply, payload: Buffer.alloc(MAX_PAYLOAD_SIZE + 1) }), RangeError);
    assert.throws(() => encodeReply({ request: 'SET_DEVICE_STATE_FD', error: 1, noFd: false }), RangeError);
    assert.throws(() => encodeReply({ request: 'REPLY_ACK', ackedRequest: 2 ** 32, status: 0n }), RangeError);
  });

  it('refuse wrong JS types with TypeError', () => {
    assert.throws(() => encodeFrontend({ request: 'SET_FEATURES', flags: noReply, features: 5 as unknown as bigint }), TypeError);
    assert.throws(() => encodeFrontend({ request: 'SET_OWNER' } as unknown as FrontendMessage), TypeError);
    assert.throws(() => encodeFrontend({ request: 'SET_OWNER', flags: { needReply: 1 } } as unknown as FrontendMessage), TypeError);
    assert.throws(() => encodeFrontend({ request: 'NOPE', flags: noReply } as unknown as FrontendMessage), TypeError);
    assert.throws(() => encodeFrontend({ request: 'toString', flags: noReply } as unknown as FrontendMessage), TypeError);
    assert.throws(() => encodeFrontend({ request: 'SET_CONFIG', flags: noReply, config: { offset: 0, flags: 0, data: 'x' } } as unknown as FrontendMessage), TypeError);
    assert.throws(() => encodeFrontend({ request: 'SET_VRING_ADDR', flags: noReply, addr: null } as unknown as FrontendMessage), TypeError);
    assert.throws(() => encodeReply({ request: 'CONFIG_CHANGE_MSG' } as unknown as BackendReply), TypeError);
    assert.throws(() => encodeReply({ request: 'REPLY_ACK', ackedRequest: 'NOPE', status: 0n } as unknown as BackendReply), TypeError);
    assert.throws(() => encodeBackend({ request: 'GET_FEATURES', flags: noReply } as unknown as BackendMessage), TypeError);
    assert.throws(() => decodeFrontend('0100' as unknown as Buffer), TypeError);
    assert.throws(() => decodeFrontend(Buffer.alloc(12), -1), TypeError);
  });

  it('encode what decoders refuse (zero-size and overlapping regions), so tests can build such messages', () => {
    const zero: MemoryRegion = { guestPhysAddr: 0n, memorySize: 0n, userspaceAddr: 0n, mmapOffset: 0n };
    const b = encodeFrontend({ request: 'ADD_MEM_REG', flags: noReply, region: zero });
    assert.throws(() => decodeFrontend(b, 1), (e: unknown) => e instanceof DecodeError && e.reason === 'payload');
  });
});

// --- rules -------------------------------------------------------------------------------------

describe('fd and reply rules', () => {
  it('say how many fds each front-end message takes', () => {
    const f = { needReply: false };
    const region: MemoryRegion = { guestPhysAddr: 0n, memorySize: 1n, userspaceAddr: 0n, mmapOffset: 0n };
    assert.equal(frontendFdCount({ request: 'SET_MEM_TABLE', flags: f, regions: [region, { ...region, guestPhysAddr: 1n, userspaceAddr: 1n }] }), 2);
    assert.equal(frontendFdCount({ request: 'SET_VRING_KICK', flags: f, index: 0, noFd: false }), 1);
    assert.equal(frontendFdCount({ request: 'SET_VRING_CALL', flags: f, index: 0, noFd: true }), 0);
    for (const request of ['SET_LOG_FD', 'SET_BACKEND_REQ_FD', 'GPU_SET_SOCKET'] as const) assert.equal(frontendFdCount({ request, flags: f }), 1);
    assert.equal(frontendFdCount({ request: 'ADD_MEM_REG', flags: f, region }), 1);
    assert.equal(frontendFdCount({ request: 'REM_MEM_REG', flags: f, region }), 0);
    assert.equal(frontendStrayFds({ request: 'REM_MEM_REG', flags: f, region }), 1);
    assert.equal(frontendFdCount({ request: 'GET_FEATURES', flags: f }), 0);
  });

  it('say which requests are answered', () => {
    assert.equal(expectsReply({ request: 'GET_FEATURES', flags: { needReply: false } }), true);
    assert.equal(expectsReply({ request: 'GET_VRING_BASE', flags: { needReply: false }, index: 0 }), true);
    assert.equal(expectsReply({ request: 'SET_OWNER', flags: { needReply: false } }), false);
    assert.equal(expectsReply({ request: 'SET_OWNER', flags: { needReply: true } }), true);
    for (const r of REQUESTS_WITH_REPLY) assert.ok(Object.hasOwn(FrontendRequest, r));
    assert.equal(replyFdCount({ request: 'GET_INFLIGHT_FD', inflight: { mmapSize: 1n, mmapOffset: 0n, numQueues: 1, queueSize: 1 } }), 1);
    assert.equal(replyFdCount({ request: 'SET_DEVICE_STATE_FD', error: 0, noFd: true }), 0);
    assert.equal(replyFdCount({ request: 'REPLY_ACK', ackedRequest: 'SET_OWNER', status: 0n }), 0);
  });
});

describe('constants', () => {
  it('request numbers are unique and the limits agree with the payload sizes', () => {
    assert.equal(new Set(Object.values(FrontendRequest)).size, Object.keys(FrontendRequest).length);
    assert.equal(new Set(Object.values(BackendRequest)).size, Object.keys(BackendRequest).length);
    assert.equal(new Set(Object.values(ProtocolFeature)).size, Object.keys(ProtocolFeature).length);
    const table = PayloadSize.MEMORY_TABLE_HEADER + MEMORY_BASELINE_NREGIONS * PayloadSize.MEMORY_REGION;
    for (const largest of [table, PayloadSize.CONFIG_HEADER + MAX_CONFIG_SIZE, PayloadSize.SHMEM_CONFIG]) assert.ok(largest <= MAX_PAYLOAD_SIZE);
    assert.equal(MAX_FDS_PER_MESSAGE, MEMORY_BASELINE_NREGIONS);
  });

  it('featureMask, featureBits and featureNames convert between bits and u64 masks', () => {
    assert.equal(featureMask(0, 3, 16), 0x10009n);
    assert.equal(featureMask(63), 1n << 63n);
    assert.deepEqual(featureBits(0x1_0000_0009n), [0, 3, 32]);
    assert.deepEqual(featureNames(0x10009n | (1n << 40n), ProtocolFeature), ['MQ', 'REPLY_ACK', 'STATUS', 'bit 40']);
    assert.throws(() => featureMask(64), RangeError);
  });
});

// --- round trip of arbitrary valid messages ----------------------------------------------------

const u64 = fc.bigInt({ min: 0n, max: 2n ** 64n - 1n });
const u32 = fc.integer({ min: 0, max: 0xffff_ffff });
const u16 = fc.integer({ min: 0, max: 0xffff });
const flagsArb = fc.boolean().map((needReply) => ({ needReply }));
const bytesArb = (min: number, max: number) => fc.uint8Array({ minLength: min, maxLength: max }).map((a) => Buffer.from(a));
const uuidArb = fc.uint8Array({ minLength: 16, maxLength: 16 }).map((a) => {
  const h = Buffer.from(a).toString('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
});

/** A valid region inside slot `slot` of 16 disjoint 2^60-byte windows, so regions never overlap or wrap. */
const regionIn = (slot: number, userSlot: number): fc.Arbitrary<MemoryRegion> =>
  fc
    .record({ start: fc.bigInt({ min: 0n, max: 2n ** 59n }), size: fc.bigInt({ min: 1n, max: 2n ** 59n }), user: fc.bigInt({ min: 0n, max: 2n ** 59n }), off: fc.bigInt({ min: 0n, max: 2n ** 63n }) })
    .map(({ start, size, user, off }) => ({
      guestPhysAddr: (BigInt(slot) << 60n) + start,
      memorySize: size,
      userspaceAddr: (BigInt(userSlot) << 60n) + user,
      mmapOffset: off,
    }));
const regionArb = fc.tuple(fc.integer({ min: 0, max: 14 }), fc.integer({ min: 0, max: 14 })).chain(([s, u]) => regionIn(s, u));
const regionsArb = fc
  .shuffledSubarray([...Array(15).keys()], { maxLength: MEMORY_BASELINE_NREGIONS })
  .chain((slots) => {
    const userSlots = [...slots].reverse();
    return fc.tuple(...slots.map((s, i) => regionIn(s, userSlots[i] as number)));
  })
  .map((rs) => [...rs]);
const configArb = fc.integer({ min: 1, max: MAX_CONFIG_SIZE }).chain((len) =>
  fc.record({ offset: fc.integer({ min: 0, max: MAX_CONFIG_SIZE - len }), flags: u32, data: bytesArb(len, len) }).map((c) => ({ ...c })),
);
const inflightArb = fc
  .record({ mmapSize: fc.bigInt({ min: 1n, max: 2n ** 62n }), mmapOffset: fc.bigInt({ min: 0n, max: 2n ** 62n }), numQueues: fc.integer({ min: 1, max: 0xffff }), queueSize: fc.integer({ min: 1, max: 0xffff }) })
  .map((d) => ({ ...d }));
const iotlbArb = fc
  .record({ iova: u64, size: u64, userspaceAddr: u64, perm: fc.integer({ min: 0, max: 3 }), type: fc.integer({ min: 1, max: 4 }) })
  .map((m) => ({ ...m }));
const vringIndex = fc.integer({ min: 0, max: 255 });
const macArb = fc.uint8Array({ minLength: 6, maxLength: 6 }).map((a) => [...a].map((x) => x.toString(16).padStart(2, '0')).join(':'));

function frontendArb(request: FrontendRequestName): fc.Arbitrary<FrontendMessage> {
  const msg = <T extends object>(fields: fc.Arbitrary<T>): fc.Arbitrary<FrontendMessage> =>
    fc.tuple(flagsArb, fields).map(([flags, f]) => ({ request, flags, ...f }) as unknown as FrontendMessage);
  const none = fc.constant({});
  switch (request) {
    case 'SET_FEATURES':
    case 'SET_PROTOCOL_FEATURES':
      return msg(u64.map((features) => ({ features })));
    case 'CLOSE_CRYPTO_SESSION':
      return msg(u64.map((sessionId) => ({ sessionId })));
    case 'SET_MEM_TABLE':
      return msg(regionsArb.map((regions) => ({ regions })));
    case 'SET_LOG_BASE':
      return msg(fc.record({ mmapSize: fc.bigInt({ min: 1n, max: 2n ** 62n }), mmapOffset: fc.bigInt({ min: 0n, max: 2n ** 62n }) }).map((l) => ({ ...l })));
    case 'SET_VRING_NUM':
    case 'SET_VRING_BASE':
      return msg(fc.record({ index: u32, num: u32 }).map((s) => ({ ...s })));
    case 'GET_VRING_BASE':
    case 'VRING_KICK':
      return msg(u32.map((index) => ({ index })));
    case 'SET_VRING_ENABLE':
      return msg(fc.record({ index: u32, enable: fc.boolean() }).map((s) => ({ ...s })));
    case 'SET_VRING_ENDIAN':
      return msg(fc.record({ index: u32, bigEndian: fc.boolean() }).map((s) => ({ ...s })));
    case 'SET_VRING_ADDR':
      return msg(
        fc
          .record({ index: u32, flags: u32, descUserAddr: u64, usedUserAddr: u64, availUserAddr: u64, logGuestAddr: u64 })
          .map((addr) => ({ addr: { ...addr } })),
      );
    case 'SET_VRING_KICK':
    case 'SET_VRING_CALL':
    case 'SET_VRING_ERR':
      return msg(fc.record({ index: vringIndex, noFd: fc.boolean() }).map((s) => ({ ...s })));
    case 'SEND_RARP':
      return msg(macArb.map((mac) => ({ mac })));
    case 'NET_SET_MTU':
      return msg(u16.map((mtu) => ({ mtu })));
    case 'SET_STATUS':
      return msg(fc.integer({ min: 0, max: 255 }).map((status) => ({ status })));
    case 'IOTLB_MSG':
      return msg(iotlbArb.map((iotlb) => ({ iotlb })));
    case 'GET_CONFIG':
    case 'SET_CONFIG':
      return msg(configArb.map((config) => ({ config })));
    case 'CREATE_CRYPTO_SESSION':
      return msg(bytesArb(1, 700).map((payload) => ({ payload })));
    case 'GET_INFLIGHT_FD':
    case 'SET_INFLIGHT_FD':
      return msg(inflightArb.map((inflight) => ({ inflight })));
    case 'ADD_MEM_REG':
    case 'REM_MEM_REG':
      return msg(regionArb.map((region) => ({ region })));
    case 'GET_SHARED_OBJECT':
      return msg(uuidArb.map((uuid) => ({ uuid })));
    case 'SET_DEVICE_STATE_FD':
      return msg(fc.record({ direction: u32, phase: u32 }).map((s) => ({ ...s })));
    default:
      return msg(none);
  }
}

const replyArb: fc.Arbitrary<BackendReply> = fc.oneof(
  fc.tuple(fc.constantFrom<FrontendRequestName>('SET_OWNER', 'SET_VRING_NUM', 'SET_FEATURES', 'SET_STATUS', 'IOTLB_MSG', 'CHECK_DEVICE_STATE'), u64).map(
    ([ackedRequest, status]): BackendReply => ({ request: 'REPLY_ACK', ackedRequest, status }),
  ),
  u64.map((features): BackendReply => ({ request: 'GET_FEATURES', features })),
  u64.map((features): BackendReply => ({ request: 'GET_PROTOCOL_FEATURES', features })),
  u64.map((queueNum): BackendReply => ({ request: 'GET_QUEUE_NUM', queueNum })),
  u64.map((maxMemSlots): BackendReply => ({ request: 'GET_MAX_MEM_SLOTS', maxMemSlots })),
  fc.integer({ min: 0, max: 255 }).map((status): BackendReply => ({ request: 'GET_STATUS', status })),
  fc.tuple(u32, u32).map(([index, num]): BackendReply => ({ request: 'GET_VRING_BASE', index, num })),
  fc.option(configArb, { nil: null }).map((config): BackendReply => ({ request: 'GET_CONFIG', config })),
  inflightArb.map((inflight): BackendReply => ({ request: 'GET_INFLIGHT_FD', inflight })),
  fc
    .option(fc.record({ mmapSize: fc.bigInt({ min: 1n, max: 2n ** 62n }), mmapOffset: fc.bigInt({ min: 0n, max: 2n ** 62n }) }), { nil: null })
    .map((log): BackendReply => ({ request: 'SET_LOG_BASE', log: log && { ...log } })),
  fc
    .oneof(fc.constant({ error: 0, noFd: false }), fc.integer({ min: 0, max: 255 }).map((error) => ({ error, noFd: true })))
    .map((r): BackendReply => ({ request: 'SET_DEVICE_STATE_FD', ...r })),
  fc.constant<BackendReply>({ request: 'POSTCOPY_ADVISE' }),
  regionsArb.filter((r) => r.length > 0).map((regions): BackendReply => ({ request: 'SET_MEM_TABLE', regions })),
  regionArb.map((region): BackendReply => ({ request: 'ADD_MEM_REG', region })),
  fc.array(u64, { maxLength: 256 }).map((memorySizes): BackendReply => ({ request: 'GET_SHMEM_CONFIG', memorySizes })),
);

function backendArb(request: BackendRequestName): fc.Arbitrary<BackendMessage> {
  const msg = <T extends object>(fields: fc.Arbitrary<T>): fc.Arbitrary<BackendMessage> =>
    fc.tuple(flagsArb, fields).map(([flags, f]) => ({ request, flags, ...f }) as unknown as BackendMessage);
  switch (request) {
    case 'IOTLB_MSG':
      return msg(iotlbArb.map((iotlb) => ({ iotlb })));
    case 'CONFIG_CHANGE_MSG':
      return msg(fc.constant({}));
    case 'VRING_HOST_NOTIFIER_MSG':
      return msg(fc.record({ index: vringIndex, noFd: fc.boolean(), size: u64, offset: u64 }).map((s) => ({ ...s })));
    case 'VRING_CALL':
    case 'VRING_ERR':
      return msg(u32.map((index) => ({ index })));
    case 'SHARED_OBJECT_ADD':
    case 'SHARED_OBJECT_REMOVE':
    case 'SHARED_OBJECT_LOOKUP':
      return msg(uuidArb.map((uuid) => ({ uuid })));
    case 'SHMEM_MAP':
    case 'SHMEM_UNMAP':
      return msg(
        fc
          .record({
            shmid: fc.integer({ min: 0, max: 255 }),
            fdOffset: fc.bigInt({ min: 0n, max: 2n ** 62n }),
            shmOffset: fc.bigInt({ min: 0n, max: 2n ** 62n }),
            len: fc.bigInt({ min: 1n, max: 2n ** 62n }),
            flags: u64,
          })
          .map((mapping) => ({ mapping: { ...mapping } })),
      );
  }
}

const anyFrontend = fc.oneof(...(Object.keys(FrontendRequest) as FrontendRequestName[]).map(frontendArb));

describe('round trip of arbitrary messages (fast-check)', () => {
  for (const request of Object.keys(FrontendRequest) as FrontendRequestName[]) {
    it(`front-end ${request}`, () => {
      fc.assert(
        fc.property(frontendArb(request), (m) => {
          const b = encodeFrontend(m);
          assert.equal(b.readUInt32LE(8), b.length - HEADER_SIZE);
          assert.deepStrictEqual(decodeFrontend(b, frontendFdCount(m)), m);
        }),
        { numRuns: 200 },
      );
    });
  }

  it('back-end replies', () => {
    fc.assert(
      fc.property(replyArb, (r) => {
        assert.deepStrictEqual(decodeReply(encodeReply(r), replyFdCount(r)), r);
      }),
      { numRuns: 3000 },
    );
  });

  for (const request of Object.keys(BackendRequest) as BackendRequestName[]) {
    it(`back-end ${request}`, () => {
      fc.assert(
        fc.property(backendArb(request), (m) => {
          assert.deepStrictEqual(decodeBackend(encodeBackend(m), backendFdCount(m)), m);
        }),
        { numRuns: 200 },
      );
    });
  }

  it('a stream of arbitrary messages in arbitrary reads comes out of MessageReader whole, in order, with its fds', () => {
    fc.assert(
      fc.property(fc.array(anyFrontend, { minLength: 1, maxLength: 8 }), fc.array(fc.integer({ min: 1, max: 97 }), { minLength: 1 }), (msgs, cuts) => {
        // One sendmsg per message with its fds, read back the way Linux does: a read may join bytes
        // of several messages, but a read that reaches a message carrying fds takes them and stops
        // inside or at the end of that message.
        let nextFd = 100;
        const sent = msgs.map((m) => ({ bytes: encodeFrontend(m), fds: fakeFds(frontendFdCount(m), (nextFd += 10)) }));
        const starts: number[] = [];
        let total = 0;
        for (const s of sent) {
          starts.push(total);
          total += s.bytes.length;
        }
        const stream = Buffer.concat(sent.map((s) => s.bytes));
        const r = new MessageReader();
        const out: FrontendMessage[] = [];
        let delivered = -1;
        for (let at = 0, i = 0; at < total; i++) {
          let end = Math.min(total, at + (cuts[i % cuts.length] as number));
          let fds: number[] = [];
          for (let k = delivered + 1; k < sent.length && (starts[k] as number) < end; k++) {
            const s = sent[k] as { bytes: Buffer; fds: number[] };
            delivered = k;
            if (s.fds.length > 0) {
              fds = s.fds;
              end = Math.min(end, (starts[k] as number) + s.bytes.length);
              break;
            }
          }
          r.push(stream.subarray(at, end), fds);
          at = end;
          for (let got = r.next(); got !== null; got = r.next()) {
            const want = sent[out.length];
            assert.ok(want);
            assert.deepStrictEqual(got.fds, want.fds);
            out.push(decodeFrontend(got.bytes, got.fds.length));
          }
        }
        assert.deepStrictEqual(out, msgs);
        assert.equal(r.bufferedFds, 0);
      }),
      { numRuns: 1000 },
    );
  });
});
