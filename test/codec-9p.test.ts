// 9P2000.L codec: golden frames from real traffic (test/fixtures/9p/), each decoded, encoded and
// round-tripped; every frame fed to a FrameReader split at every byte offset; malformed frames;
// encoder validation; zero-copy helpers; dirents; and fast-check properties (decoders throw only
// DecodeError/ProtocolError on arbitrary bytes, arbitrary valid messages round-trip).
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import {
  DIRENT_HEADER_SIZE,
  DecodeError,
  Errno,
  FrameReader,
  HEADER_SIZE,
  LAYOUT,
  MAXWELEM,
  MessageType,
  NOTAG,
  ProtocolError,
  RREAD_HEADER_SIZE,
  TWRITE_HEADER_SIZE,
  allocRread,
  allocRreaddir,
  decodeDirents,
  decodeR,
  decodeT,
  encodeDirents,
  encodeR,
  encodeRreadHeader,
  encodeT,
  encodeTwriteHeader,
  encodedSize,
  finishRread,
  finishRreaddir,
  readHeader,
  writeDirents,
  type Dirent,
  type FieldKind,
  type Message,
  type MessageKind,
  type Qid,
  type Rmessage,
  type Tmessage,
} from '../src/codecs/9p/index.js';

// --- fixtures ----------------------------------------------------------------------------------

const FIXTURE_DIR = new URL('./fixtures/9p/', import.meta.url);
const FIXTURE_FILES = ['kernel-diod.txt', 'prism-diod.txt', 'spec.txt'] as const;

interface Fixture {
  file: string;
  line: number;
  kind: MessageKind;
  frame: Buffer;
  expected: Message;
  note: string;
}

type Json = Record<string, unknown>;

function qidFromJson(j: unknown): Qid {
  const q = j as Json;
  return { type: q['type'] as number, version: q['version'] as number, path: BigInt(q['path'] as string) };
}

/** Builds the expected message from a fixture's JSON (u64 as decimal strings, strings latin1, data hex). */
function fromJson(kind: MessageKind, j: Json): Message {
  const m: Json = { type: kind, tag: j['tag'] };
  const fields: readonly (readonly [string, FieldKind])[] = LAYOUT[kind];
  for (const [name, fk] of fields) {
    const v = j[name];
    assert.ok(v !== undefined, `fixture for ${kind} lacks ${name}`);
    switch (fk) {
      case 'u64':
        m[name] = BigInt(v as string);
        break;
      case 'str':
        m[name] = Buffer.from(v as string, 'latin1');
        break;
      case 'wnames':
        m[name] = (v as string[]).map((s) => Buffer.from(s, 'latin1'));
        break;
      case 'qid':
        m[name] = qidFromJson(v);
        break;
      case 'wqids':
        m[name] = (v as unknown[]).map(qidFromJson);
        break;
      case 'data':
        m[name] = Buffer.from(v as string, 'hex');
        break;
      default:
        m[name] = v;
    }
  }
  assert.equal(Object.keys(j).length, fields.length + 1, `fixture for ${kind} has extra fields`);
  return m as unknown as Message;
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
    if (l.trim() === '' || l.startsWith('#')) continue;
    const m = /^([TR][a-z]+) ([0-9a-f ]+)$/.exec(l);
    assert.ok(m, `${file}:${i + 1}: expected "<Kind> <hex>"`);
    const kind = m[1] as MessageKind;
    assert.ok(Object.hasOwn(LAYOUT, kind), `${file}:${i + 1}: unknown kind ${kind}`);
    const json = lines[i + 1] ?? '';
    assert.ok(json.startsWith('= '), `${file}:${i + 2}: expected "= <json>"`);
    out.push({
      file,
      line: i + 1,
      kind,
      frame: Buffer.from((m[2] as string).replace(/ /g, ''), 'hex'),
      expected: fromJson(kind, JSON.parse(json.slice(2)) as Json),
      note,
    });
    note = '';
    i++;
  }
  return out;
}

const FIXTURES = FIXTURE_FILES.flatMap(loadFixtures);

const isRequest = (kind: MessageKind): boolean => kind.startsWith('T');
const decode = (kind: MessageKind, frame: Buffer): Message => (isRequest(kind) ? decodeT(frame) : decodeR(frame));
const encode = (m: Message): Buffer => (isRequest(m.type) ? encodeT(m as Tmessage) : encodeR(m as Rmessage));

describe('9P fixtures', () => {
  it('cover every 9P2000.L message kind', () => {
    const seen = new Set(FIXTURES.map((f) => f.kind));
    const missing = (Object.keys(LAYOUT) as MessageKind[]).filter((k) => !seen.has(k));
    assert.deepEqual(missing, []);
    assert.equal(seen.size, Object.keys(MessageType).length - 1, 'every type number but Tlerror has a fixture');
  });

  it('real traffic covers all but Tauth, Rauth, Rgetlock, Rrenameat and Runlinkat', () => {
    const kernel = new Set(FIXTURES.filter((f) => f.file === 'kernel-diod.txt').map((f) => f.kind));
    const notSeen = (Object.keys(LAYOUT) as MessageKind[]).filter((k) => !kernel.has(k)).sort();
    assert.deepEqual(notSeen, ['Rauth', 'Rgetlock', 'Rrenameat', 'Runlinkat', 'Tauth']);
  });

  for (const fx of FIXTURES) {
    describe(`${fx.file}:${fx.line} ${fx.kind}${fx.note ? ` (${fx.note})` : ''}`, () => {
      it('decodes to the expected fields', () => {
        assert.deepStrictEqual(decode(fx.kind, fx.frame), fx.expected);
      });
      it('encodes from the fields to the same bytes', () => {
        assert.deepStrictEqual(encode(fx.expected), fx.frame);
        assert.equal(encodedSize(fx.expected), fx.frame.length);
      });
      it('round-trips', () => {
        const again = encode(decode(fx.kind, fx.frame));
        assert.deepStrictEqual(again, fx.frame);
        assert.deepStrictEqual(decode(fx.kind, again), fx.expected);
      });
    });
  }
});

// --- framing -----------------------------------------------------------------------------------

describe('FrameReader', () => {
  it('returns each fixture frame whole, wherever the stream is split', () => {
    let splits = 0;
    for (const fx of FIXTURES) {
      for (let at = 0; at <= fx.frame.length; at++) {
        const r = new FrameReader(1 << 20);
        r.push(fx.frame.subarray(0, at));
        if (at < fx.frame.length) assert.equal(r.next(), null, `${fx.kind} split at ${at}: no frame yet`);
        r.push(fx.frame.subarray(at));
        const got = r.next();
        assert.deepStrictEqual(got, fx.frame, `${fx.kind} split at ${at}`);
        assert.equal(r.next(), null);
        assert.equal(r.bufferedBytes, 0);
        assert.deepStrictEqual(decode(fx.kind, got), fx.expected);
        splits++;
      }
    }
    assert.ok(splits > 2000, `${splits} splits`);
  });

  it('splits a stream of every fixture fed one byte at a time', () => {
    const stream = Buffer.concat(FIXTURES.map((f) => f.frame));
    const r = new FrameReader(1 << 20);
    const got: Buffer[] = [];
    for (let i = 0; i < stream.length; i++) {
      r.push(stream.subarray(i, i + 1));
      for (let f = r.next(); f !== null; f = r.next()) got.push(f);
    }
    assert.deepStrictEqual(got, FIXTURES.map((f) => f.frame));
  });

  it('keeps the bytes after a frame for the next one', () => {
    const [a, b] = [FIXTURES[0], FIXTURES[1]] as [Fixture, Fixture];
    const r = new FrameReader(1 << 20);
    r.push(Buffer.concat([a.frame, b.frame.subarray(0, 3)]));
    assert.deepStrictEqual(r.next(), a.frame);
    assert.equal(r.next(), null);
    assert.equal(r.bufferedBytes, 3);
    r.push(b.frame.subarray(3));
    assert.deepStrictEqual(r.next(), b.frame);
  });

  it('returns a frame inside one chunk without copying it', () => {
    const frame = encodeT({ type: 'Tclunk', tag: 1, fid: 2 });
    const chunk = Buffer.concat([frame, frame]);
    const r = new FrameReader();
    r.push(chunk);
    const got = r.next();
    assert.ok(got);
    assert.equal(got.buffer, chunk.buffer);
    assert.equal(got.byteOffset, chunk.byteOffset);
  });

  it('throws ProtocolError on a size below the header size, from the first 4 bytes on', () => {
    for (const size of [0, 1, 6]) {
      const r = new FrameReader();
      const head = Buffer.alloc(4);
      head.writeUInt32LE(size);
      r.push(head);
      assert.throws(() => r.next(), (e: unknown) => e instanceof ProtocolError && e.code === 'ERR_9P_FRAMING' && e.size === size);
    }
  });

  it('throws ProtocolError on a size above the limit before the body arrives, and keeps throwing', () => {
    const r = new FrameReader(8192);
    const head = Buffer.alloc(4);
    head.writeUInt32LE(8193);
    r.push(head.subarray(0, 2));
    assert.equal(r.next(), null);
    r.push(head.subarray(2));
    assert.throws(() => r.next(), (e: unknown) => e instanceof ProtocolError && e.size === 8193 && e.maxSize === 8192);
    r.push(Buffer.alloc(8189));
    assert.throws(() => r.next(), ProtocolError);
  });

  it('returns the frames before a bad size field, then throws, and drops later bytes', () => {
    const good = encodeT({ type: 'Tclunk', tag: 1, fid: 2 });
    const bad = Buffer.from('03000000', 'hex');
    const r = new FrameReader();
    r.push(Buffer.concat([good, good, bad, good]));
    assert.deepStrictEqual(r.next(), good);
    assert.deepStrictEqual(r.next(), good);
    assert.throws(() => r.next(), ProtocolError);
    r.push(Buffer.alloc(4096));
    assert.equal(r.bufferedBytes, 0);
    assert.throws(() => r.next(), ProtocolError);
  });

  it('handles a peer trickling one byte per chunk in linear time', { timeout: 20_000 }, () => {
    const big = encodeR({ type: 'Rread', tag: 1, data: Buffer.alloc(256 * 1024, 0x5a) });
    const small = encodeT({ type: 'Tclunk', tag: 2, fid: 3 });
    const stream = Buffer.concat([big, ...Array.from({ length: 2000 }, () => small)]);
    const r = new FrameReader(big.length);
    for (let i = 0; i < stream.length; i++) r.push(stream.subarray(i, i + 1));
    assert.equal(r.bufferedBytes, stream.length);
    assert.deepStrictEqual(r.next(), big);
    let n = 0;
    for (let f = r.next(); f !== null; f = r.next()) n++;
    assert.equal(n, 2000);
    assert.equal(r.bufferedBytes, 0);
  });

  it('accepts frames up to the limit set by setMaxSize', () => {
    const r = new FrameReader(64);
    const big = encodeR({ type: 'Rread', tag: 1, data: Buffer.alloc(100, 7) });
    r.setMaxSize(big.length);
    assert.equal(r.maxSize, big.length);
    r.push(big);
    assert.deepStrictEqual(r.next(), big);
    assert.throws(() => r.setMaxSize(6), RangeError);
    assert.throws(() => new FrameReader(2 ** 32), RangeError);
  });

  it('never throws anything but ProtocolError, and only returns well-sized frames (fast-check)', () => {
    fc.assert(
      fc.property(fc.array(fc.uint8Array({ maxLength: 64 }), { maxLength: 20 }), fc.integer({ min: 7, max: 256 }), (chunks, max) => {
        const r = new FrameReader(max);
        try {
          for (const c of chunks) {
            r.push(Buffer.from(c));
            for (let f = r.next(); f !== null; f = r.next()) {
              assert.ok(f.length >= HEADER_SIZE && f.length <= max);
              assert.equal(f.readUInt32LE(0), f.length);
            }
          }
        } catch (e) {
          if (!(e instanceof ProtocolError)) throw e;
        }
      }),
      { numRuns: 5000 },
    );
  });

  it('readHeader reads size, type and tag', () => {
    assert.deepEqual(readHeader(encodeT({ type: 'Tflush', tag: 3, oldtag: 2 })), { size: 9, type: MessageType.Tflush, tag: 3 });
    assert.equal(readHeader(Buffer.alloc(6)), null);
  });
});

// --- malformed input ---------------------------------------------------------------------------

interface Malformed {
  dir: 'T' | 'R';
  errno: number;
  frame: Buffer;
  why: string;
}

const MALFORMED: Malformed[] = readFileSync(new URL('malformed.txt', FIXTURE_DIR), 'utf8')
  .split('\n')
  .filter((l) => /^[TR] /.test(l))
  .map((l) => {
    const m = /^([TR]) ([A-Z]+) ([0-9a-f ]+?)\s+# (.*)$/.exec(l);
    assert.ok(m, `bad malformed.txt line: ${l}`);
    const errno = Errno[m[2] as keyof typeof Errno];
    assert.ok(errno !== undefined, `unknown errno ${m[2]}`);
    return { dir: m[1] as 'T' | 'R', errno, frame: Buffer.from((m[3] as string).replace(/ /g, ''), 'hex'), why: m[4] as string };
  });

describe('malformed frames', () => {
  for (const bad of MALFORMED) {
    it(`${bad.dir}: ${bad.why} -> DecodeError ${bad.errno}`, () => {
      const tag = bad.frame.length >= HEADER_SIZE ? bad.frame.readUInt16LE(5) : NOTAG;
      assert.throws(
        () => (bad.dir === 'T' ? decodeT(bad.frame) : decodeR(bad.frame)),
        (e: unknown) => e instanceof DecodeError && e.code === 'ERR_9P_DECODE' && e.errno === bad.errno && e.tag === tag,
      );
    });
  }

  it('DecodeError carries a message, no stack frames, and leaves Error.stackTraceLimit alone', () => {
    const limit = Error.stackTraceLimit;
    let err: unknown;
    try {
      decodeT(Buffer.from('0b0000007801000300', 'hex'));
    } catch (e) {
      err = e;
    }
    assert.ok(err instanceof DecodeError && err instanceof Error);
    assert.match(err.message, /^9P frame size|^9P size field says 11 bytes but the frame has 9/);
    assert.equal(err.messageType, MessageType.Tclunk);
    assert.doesNotMatch(err.stack ?? '', /\n\s+at /);
    assert.equal(Error.stackTraceLimit, limit);
  });

  it('every fixture cut short or extended by one byte (size field adjusted) is a DecodeError with its tag', () => {
    for (const fx of FIXTURES) {
      const variants: Buffer[] = [Buffer.concat([fx.frame, Buffer.from([0])])];
      if (fx.frame.length > HEADER_SIZE) variants.push(Buffer.from(fx.frame.subarray(0, -1)));
      for (const v of variants) {
        v.writeUInt32LE(v.length, 0);
        assert.throws(
          () => decode(fx.kind, v),
          (e: unknown) => e instanceof DecodeError && e.errno === Errno.EPROTO && e.tag === fx.expected.tag,
          `${fx.file}:${fx.line} ${fx.kind} length ${v.length}`,
        );
      }
    }
  });

  it('decodeT and decodeR throw only DecodeError on arbitrary bytes (fast-check, 20 000 runs each)', () => {
    const onlyDecodeError = (f: (b: Buffer) => unknown) => (bytes: Uint8Array) => {
      try {
        f(Buffer.from(bytes));
      } catch (e) {
        if (!(e instanceof DecodeError)) throw e;
      }
    };
    // Raw bytes, and bytes behind a header whose size is right (so decoding reaches the body).
    const framed = fc
      .tuple(fc.integer({ min: 0, max: 255 }), fc.integer({ min: 0, max: 0xffff }), fc.uint8Array({ maxLength: 200 }))
      .map(([type, tag, body]) => {
        const b = Buffer.alloc(HEADER_SIZE + body.length);
        b.writeUInt32LE(b.length, 0);
        b[4] = type;
        b.writeUInt16LE(tag, 5);
        b.set(body, HEADER_SIZE);
        return new Uint8Array(b);
      });
    const input = fc.oneof(fc.uint8Array({ maxLength: 64 }), framed);
    fc.assert(fc.property(input, onlyDecodeError(decodeT)), { numRuns: 20_000 });
    fc.assert(fc.property(input, onlyDecodeError(decodeR)), { numRuns: 20_000 });
  });

  it('mutated real frames decode or throw DecodeError, and what decodes re-encodes to the same bytes (fast-check)', () => {
    const mutated = fc
      .tuple(
        fc.constantFrom(...FIXTURES),
        fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 4 }),
        fc.boolean(),
      )
      .map(([fx, edits, fixSize]) => {
        const b = Buffer.from(fx.frame);
        for (const [at, v] of edits) b[at % b.length] = v;
        if (fixSize) b.writeUInt32LE(b.length, 0);
        return b;
      });
    fc.assert(
      fc.property(mutated, (b) => {
        for (const f of [decodeT, decodeR]) {
          let m: Message;
          try {
            m = f(b);
          } catch (e) {
            if (e instanceof DecodeError) continue;
            throw e;
          }
          assert.deepStrictEqual(encode(m), b);
        }
      }),
      { numRuns: 10_000 },
    );
  });
});

// --- encoder checks ----------------------------------------------------------------------------

describe('encoders', () => {
  const clunk = { type: 'Tclunk', tag: 1, fid: 2 } as const;

  it('refuse integers out of range with RangeError', () => {
    for (const bad of [-1, 2 ** 32, 1.5, Number.NaN]) assert.throws(() => encodeT({ ...clunk, fid: bad }), RangeError, String(bad));
    assert.throws(() => encodeT({ ...clunk, tag: 0x10000 }), RangeError);
    assert.throws(() => encodeT({ type: 'Tflush', tag: 1, oldtag: 0x10000 }), RangeError);
    assert.throws(() => encodeR({ type: 'Rlock', tag: 1, status: 256 }), RangeError);
    assert.throws(() => encodeT({ type: 'Tgetattr', tag: 1, fid: 1, requestMask: 2n ** 64n }), RangeError);
    assert.throws(() => encodeT({ type: 'Tgetattr', tag: 1, fid: 1, requestMask: -1n }), RangeError);
    assert.throws(() => encodeR({ type: 'Rattach', tag: 1, qid: { type: 0x100, version: 0, path: 0n } }), RangeError);
  });

  it('refuse strings over 65535 bytes and walks over MAXWELEM elements', () => {
    const long = Buffer.alloc(0x10000);
    assert.throws(() => encodeR({ type: 'Rreadlink', tag: 1, target: long }), RangeError);
    assert.equal(encodeR({ type: 'Rreadlink', tag: 1, target: long.subarray(1) }).length, HEADER_SIZE + 2 + 0xffff);
    const names = Array.from({ length: MAXWELEM + 1 }, () => Buffer.from('a'));
    assert.throws(() => encodeT({ type: 'Twalk', tag: 1, fid: 1, newfid: 2, wnames: names }), RangeError);
    const qids = Array.from({ length: MAXWELEM + 1 }, () => ({ type: 0, version: 0, path: 0n }));
    assert.throws(() => encodeR({ type: 'Rwalk', tag: 1, wqids: qids }), RangeError);
    assert.throws(() => encodeT({ type: 'Tversion', tag: NOTAG, msize: 8192, version: '9P2000.Ł' }), RangeError);
  });

  it('refuse wrong JS types with TypeError', () => {
    assert.throws(() => encodeT({ type: 'Tgetattr', tag: 1, fid: 1, requestMask: 5 as unknown as bigint }), TypeError);
    assert.throws(() => encodeT({ type: 'Tmkdir', tag: 1, dfid: 1, name: 'x' as unknown as Buffer, mode: 0o755, gid: 0 }), TypeError);
    assert.throws(() => encodeT({ type: 'Rclunk', tag: 1 } as unknown as Tmessage), TypeError);
    assert.throws(() => encodeR({ type: 'Tclunk', tag: 1, fid: 1 } as unknown as Rmessage), TypeError);
    assert.throws(() => encodeR({ type: 'toString', tag: 1 } as unknown as Rmessage), TypeError);
  });

  it('encode the version string as latin1 bytes', () => {
    const f = encodeR({ type: 'Rversion', tag: NOTAG, msize: 65536, version: '9P2000.L' });
    assert.equal(f.subarray(13).toString('latin1'), '9P2000.L');
  });
});

// --- what decoded messages hold on to ----------------------------------------------------------

describe('decoded buffers', () => {
  it('data aliases the frame; strings are copies', () => {
    const frame = encodeT({ type: 'Twrite', tag: 1, fid: 1, offset: 0n, data: Buffer.from('abc') });
    const m = decodeT(frame);
    assert.equal(m.type, 'Twrite');
    frame[frame.length - 1] = 0x7a;
    assert.equal(m.type === 'Twrite' && m.data.toString(), 'abz');
    const walk = encodeT({ type: 'Twalk', tag: 1, fid: 1, newfid: 2, wnames: [Buffer.from('abc')] });
    const w = decodeT(walk);
    walk[walk.length - 1] = 0x7a;
    assert.equal(w.type === 'Twalk' && w.wnames[0]?.toString(), 'abc');
  });
});

// --- zero-copy helpers -------------------------------------------------------------------------

describe('zero-copy data path', () => {
  it('allocRread + finishRread make the same frame as encodeR, with data inside the frame', () => {
    const { frame, data } = allocRread(7, 100);
    assert.equal(data.buffer, frame.buffer);
    assert.equal(data.length, 100);
    const n = data.write('hello, 9p\n');
    const out = finishRread(frame, n);
    assert.deepStrictEqual(out, encodeR({ type: 'Rread', tag: 7, data: Buffer.from('hello, 9p\n') }));
    assert.deepStrictEqual(decodeR(out), { type: 'Rread', tag: 7, data: Buffer.from('hello, 9p\n') });
  });

  it('finishRread refuses a count beyond the allocation and a frame it did not allocate', () => {
    const { frame } = allocRread(1, 10);
    assert.throws(() => finishRread(frame, 11), RangeError);
    assert.throws(() => finishRread(encodeR({ type: 'Rclunk', tag: 1 }), 0), TypeError);
    assert.throws(() => allocRread(0x10000, 1), RangeError);
    assert.equal(finishRread(frame, 0).length, RREAD_HEADER_SIZE);
  });

  it('allocRreaddir + writeDirents + finishRreaddir equal encodeR of encodeDirents', () => {
    const entries = direntsOfFixture();
    const { frame, data } = allocRreaddir(3, 200);
    const { count, bytes } = writeDirents(entries, data);
    assert.equal(count, entries.length);
    const out = finishRreaddir(frame, bytes);
    assert.deepStrictEqual(out, encodeR({ type: 'Rreaddir', tag: 3, data: encodeDirents(entries, 200).data }));
  });

  it('encodeRreadHeader and encodeTwriteHeader prefix their data exactly like the full encoders', () => {
    const data = Buffer.from('payload');
    assert.deepStrictEqual(Buffer.concat([encodeRreadHeader(4, data.length), data]), encodeR({ type: 'Rread', tag: 4, data }));
    const tw = encodeTwriteHeader(5, 6, 2n ** 40n, data.length);
    assert.equal(tw.length, TWRITE_HEADER_SIZE);
    assert.deepStrictEqual(Buffer.concat([tw, data]), encodeT({ type: 'Twrite', tag: 5, fid: 6, offset: 2n ** 40n, data }));
    assert.throws(() => encodeTwriteHeader(5, 6, -1n, 1), RangeError);
  });
});

// --- dirents -----------------------------------------------------------------------------------

function direntsOfFixture(): Dirent[] {
  const fx = FIXTURES.find((f) => f.kind === 'Rreaddir' && f.expected.type === 'Rreaddir' && f.expected.data.length > 0);
  assert.ok(fx && fx.expected.type === 'Rreaddir');
  return decodeDirents(fx.expected.data);
}

describe('dirents', () => {
  it('decode the real Rreaddir: ".", "hello.txt", ".." with ext4 cookies, the last at the end cookie', () => {
    const d = direntsOfFixture();
    assert.deepEqual(
      d.map((e) => e.name.toString()),
      ['.', 'hello.txt', '..'],
    );
    assert.deepEqual(
      d.map((e) => e.type),
      [4, 8, 4],
    );
    assert.equal(d.at(-1)?.offset, 0x7fff_ffff_ffff_ffffn);
    assert.equal(d[0]?.qid.type, 0x80);
  });

  it('encode back to the same bytes, and only whole entries that fit', () => {
    const fx = FIXTURES.find((f) => f.kind === 'Rreaddir' && f.expected.type === 'Rreaddir' && f.expected.data.length > 0);
    assert.ok(fx && fx.expected.type === 'Rreaddir');
    const bytes = fx.expected.data;
    const entries = decodeDirents(bytes);
    assert.deepStrictEqual(encodeDirents(entries, bytes.length), { count: 3, data: bytes });
    assert.equal(encodeDirents(entries, bytes.length - 1).count, 2);
    assert.equal(encodeDirents(entries, DIRENT_HEADER_SIZE).count, 0);
    assert.equal(encodeDirents(entries, DIRENT_HEADER_SIZE + 1).count, 1);
    assert.equal(encodeDirents([], 100).data.length, 0);
  });

  it('refuse an entry cut short with DecodeError (EPROTO, the given tag)', () => {
    const bytes = encodeDirents(direntsOfFixture(), 1000).data;
    // The first entry is "." (25 bytes): cut inside its header, inside its name, inside the last entry.
    for (const cut of [1, DIRENT_HEADER_SIZE - 1, DIRENT_HEADER_SIZE, bytes.length - 1]) {
      assert.throws(
        () => decodeDirents(bytes.subarray(0, cut), 9),
        (e: unknown) => e instanceof DecodeError && e.errno === Errno.EPROTO && e.tag === 9,
      );
    }
  });

  it('never exceed maxBytes and decode to the packed prefix (fast-check)', () => {
    const dirent = fc
      .record({
        qid: qidArb,
        offset: u64Arb,
        type: fc.integer({ min: 0, max: 255 }),
        name: fc.uint8Array({ maxLength: 40 }).map((a) => Buffer.from(a)),
      })
      .map((d): Dirent => ({ ...d }));
    fc.assert(
      fc.property(fc.array(dirent, { maxLength: 20 }), fc.integer({ min: 0, max: 600 }), (entries, max) => {
        const { count, data } = encodeDirents(entries, max);
        assert.ok(data.length <= max);
        assert.deepStrictEqual(decodeDirents(data), entries.slice(0, count));
        if (count < entries.length) assert.ok(data.length + DIRENT_HEADER_SIZE + (entries[count]?.name.length ?? 0) > max);
      }),
      { numRuns: 2000 },
    );
  });

  it('decodeDirents throws only DecodeError on arbitrary bytes (fast-check)', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 200 }), (a) => {
        try {
          decodeDirents(Buffer.from(a));
        } catch (e) {
          if (!(e instanceof DecodeError)) throw e;
        }
      }),
      { numRuns: 5000 },
    );
  });
});

// --- round trip of arbitrary valid messages ----------------------------------------------------

const u64Arb = fc.bigInt({ min: 0n, max: 2n ** 64n - 1n });
// fast-check records have a null prototype; spread them into plain objects like the decoder makes.
const qidArb = fc
  .record({ type: fc.integer({ min: 0, max: 255 }), version: fc.integer({ min: 0, max: 0xffff_ffff }), path: u64Arb })
  .map((q): Qid => ({ ...q }));
const bytesArb = (max: number) => fc.uint8Array({ maxLength: max }).map((a) => Buffer.from(a));

const FIELD_ARB: Record<FieldKind, fc.Arbitrary<unknown>> = {
  u8: fc.integer({ min: 0, max: 0xff }),
  u16: fc.integer({ min: 0, max: 0xffff }),
  u32: fc.integer({ min: 0, max: 0xffff_ffff }),
  u64: u64Arb,
  str: bytesArb(40),
  version: fc.string({ unit: fc.integer({ min: 0, max: 0xff }).map((c) => String.fromCharCode(c)), maxLength: 20 }),
  qid: qidArb,
  wnames: fc.array(bytesArb(12), { maxLength: MAXWELEM }),
  wqids: fc.array(qidArb, { maxLength: MAXWELEM }),
  data: bytesArb(300),
};

/** An arbitrary valid message of one kind, field by field from its wire layout. */
function messageArb(kind: MessageKind): fc.Arbitrary<Message> {
  const fields: readonly (readonly [string, FieldKind])[] = LAYOUT[kind];
  const shape: Record<string, fc.Arbitrary<unknown>> = { tag: FIELD_ARB.u16 };
  for (const [name, fk] of fields) shape[name] = FIELD_ARB[fk];
  return fc.record(shape).map((r) => ({ type: kind, ...r }) as unknown as Message);
}

const anyMessage = fc.oneof(...(Object.keys(LAYOUT) as MessageKind[]).map(messageArb));

describe('round trip of arbitrary messages (fast-check)', () => {
  for (const kind of Object.keys(LAYOUT) as MessageKind[]) {
    it(`${kind}`, () => {
      fc.assert(
        fc.property(messageArb(kind), (m) => {
          const frame = encode(m);
          assert.equal(frame.length, encodedSize(m));
          assert.equal(frame.readUInt32LE(0), frame.length);
          assert.deepStrictEqual(decode(kind, frame), m);
        }),
        { numRuns: 200 },
      );
    });
  }

  it('a stream of arbitrary messages in arbitrary chunks comes out of FrameReader whole and in order', () => {
    fc.assert(
      fc.property(fc.array(anyMessage, { minLength: 1, maxLength: 8 }), fc.array(fc.integer({ min: 1, max: 97 }), { minLength: 1 }), (msgs, cuts) => {
        const stream = Buffer.concat(msgs.map(encode));
        const r = new FrameReader(1 << 20);
        const out: Message[] = [];
        for (let at = 0, i = 0; at < stream.length; i++) {
          const n = cuts[i % cuts.length] as number;
          r.push(stream.subarray(at, at + n));
          at += n;
          for (let f = r.next(); f !== null; f = r.next()) out.push(decode(msgs[out.length]?.type ?? 'Tclunk', f));
        }
        assert.deepStrictEqual(out, msgs);
      }),
      { numRuns: 1000 },
    );
  });
});
