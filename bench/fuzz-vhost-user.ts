// Fuzz bench for the vhost-user codec: random and mutated inputs through decodeFrontend,
// decodeReply, decodeBackend (each with a plausible or random fd count) and a MessageReader fed in
// random chunks carrying random fds. A failure is any exception other than DecodeError /
// ProtocolError, a decoded message that does not re-encode to the exact input (decoding must be
// canonical; the IOTLB payload's padding and GET_VRING_BASE's num are the documented exceptions) or that decoded with an
// fd count its rules do not allow, a message from MessageReader with a wrong size field or too many
// fds, or an fd that MessageReader lost or handed out twice. Deterministic for a given --seed.
//
//   node --import tsx bench/fuzz-vhost-user.ts [--runs N] [--seed S]      (default 1e6 inputs, seed 1)
//
// Measured 2026-11-25 on the 2-core lab machine (load 3-4 from other jobs), Node 20: 1e6 inputs take
// 37-48 s (21 000-27 000 inputs/s; most of it is building the ~3.6 DecodeErrors per input, ~3 µs
// each even without a stack). Seeds 1-3, 1e6 inputs each: no failures.
import { readFileSync, readdirSync } from 'node:fs';
import {
  BackendRequest,
  DecodeError,
  FrontendRequest,
  HEADER_SIZE,
  MAX_FDS_PER_MESSAGE,
  MessageReader,
  ProtocolError,
  backendFdCount,
  decodeBackend,
  decodeFrontend,
  decodeReply,
  encodeBackend,
  encodeFrontend,
  encodeReply,
  frontendFdCount,
  frontendStrayFds,
  replyFdCount,
  type BackendMessage,
  type BackendReply,
  type FrontendMessage,
} from '../src/codecs/vhost-user/index.js';
import { fuzzArgs, xorshift32 } from './fuzz-common.js';

const { runs, seed, maxFailures } = fuzzArgs();
const { rnd, below, chance } = xorshift32(seed);

// --- seeds: every golden and malformed message ---------------------------------------------------
interface Seed {
  bytes: Buffer;
  fds: number;
}
const fixtureDir = new URL('../test/fixtures/vhost-user/', import.meta.url);
const seeds: Seed[] = [];
for (const name of readdirSync(fixtureDir).filter((n) => n.endsWith('.txt'))) {
  for (const line of readFileSync(new URL(name, fixtureDir), 'utf8').split('\n')) {
    const m = /^[FRB] [a-zA-Z_-]+ fds=(\d+) ([0-9a-f ]+?)(\s+#.*)?$/.exec(line);
    if (m?.[2]) seeds.push({ bytes: Buffer.from(m[2].replace(/ /g, ''), 'hex'), fds: Number(m[1]) });
  }
}
if (seeds.length === 0) throw new Error(`no seed messages in ${fixtureDir.pathname}`);
const knownRequests = [...new Set([...Object.values(FrontendRequest), ...Object.values(BackendRequest)])] as number[];
const flagValues = [0x1, 0x1, 0x9, 0x5, 0x0, 0x2, 0xd, 0x11, 0x8000_0001];
const interesting32 = [0, 1, 2, 8, 9, 12, 0xff, 0x100, 0x101, 0x7fff_ffff, 0x8000_0000, 0xffff_fffe, 0xffff_ffff];
const interesting64 = [0n, 1n, 0x100n, 0x1000n, 0xffn, 0x1ffn, 0xffffn, 0x1_0000n, 1n << 63n, (1n << 64n) - 0x1000n, (1n << 64n) - 1n];

function randomBytes(n: number): Buffer {
  const b = Buffer.allocUnsafe(n);
  for (let i = 0; i < n; i++) b[i] = rnd() & 0xff;
  return b;
}

function setSize(b: Buffer): Buffer {
  if (b.length >= HEADER_SIZE) b.writeUInt32LE(b.length - HEADER_SIZE, 8);
  return b;
}

function framedRandom(): Buffer {
  const sizes = [0, 8, 16, 20, 24, 32, 40, 72, 268, 2056];
  const n = chance(0.7) ? (sizes[below(sizes.length)] as number) : below(300);
  const b = randomBytes(HEADER_SIZE + n);
  b.writeUInt32LE(chance(0.9) ? (knownRequests[below(knownRequests.length)] as number) : rnd(), 0);
  b.writeUInt32LE(flagValues[below(flagValues.length)] as number, 4);
  if (chance(0.5)) b.fill(0, HEADER_SIZE, HEADER_SIZE + below(n + 1)); // zeros pass more checks
  return setSize(b);
}

function mutate(src: Buffer): Buffer {
  let b = Buffer.from(src);
  const edits = 1 + below(4);
  for (let e = 0; e < edits; e++) {
    switch (below(9)) {
      case 0: // flip a bit
        if (b.length > 0) b[below(b.length)]! ^= 1 << below(8);
        break;
      case 1: // set a byte
        if (b.length > 0) b[below(b.length)] = [0, 0xff, 0x7f, 0x80, 1, rnd() & 0xff][below(6)] as number;
        break;
      case 2: // overwrite a u32 with a boundary value (counts, indices, sizes)
        if (b.length >= 4) b.writeUInt32LE(interesting32[below(interesting32.length)] as number, below(b.length - 3));
        break;
      case 3: // overwrite an aligned u64 of the payload (addresses, sizes, features)
        if (b.length >= HEADER_SIZE + 8) b.writeBigUInt64LE(interesting64[below(interesting64.length)] as bigint, HEADER_SIZE + 8 * below((b.length - HEADER_SIZE) >> 3));
        break;
      case 4: // truncate
        b = b.subarray(0, below(b.length + 1));
        break;
      case 5: // extend
        b = Buffer.concat([b, chance(0.5) ? Buffer.alloc(1 + below(40)) : randomBytes(1 + below(40))]);
        break;
      case 6: // splice with another seed
        {
          const other = (seeds[below(seeds.length)] as Seed).bytes;
          b = Buffer.concat([b.subarray(0, below(b.length + 1)), other.subarray(below(other.length + 1))]);
        }
        break;
      case 7: // change the request number
        if (b.length >= 4) b.writeUInt32LE(knownRequests[below(knownRequests.length)] as number, 0);
        break;
      case 8: // change the flags
        if (b.length >= 8) b.writeUInt32LE(flagValues[below(flagValues.length)] as number, 4);
        break;
    }
  }
  return chance(0.8) ? setSize(b) : b;
}

function nextInput(): Seed {
  const r = below(10);
  if (r < 1) return { bytes: randomBytes(below(48)), fds: below(3) };
  if (r < 3) return { bytes: framedRandom(), fds: below(3) };
  const s = seeds[below(seeds.length)] as Seed;
  return { bytes: mutate(s.bytes), fds: s.fds };
}

// --- the checks ----------------------------------------------------------------------------------
const counts = { frontend: 0, reply: 0, backend: 0, decodeError: 0, protocolError: 0, messages: 0, fds: 0 };
const reasons = new Map<string, number>();
let failures = 0;

function fail(what: string, input: Buffer, err: unknown): void {
  failures++;
  console.log(`FAILURE ${failures}: ${what}\n  input ${input.toString('hex')}\n  ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
}

type Kind = 'frontend' | 'reply' | 'backend';
const decoders: Record<Kind, (b: Buffer, fds: number) => FrontendMessage | BackendReply | BackendMessage> = {
  frontend: decodeFrontend,
  reply: decodeReply,
  backend: decodeBackend,
};

function tryDecode(input: Buffer, fds: number, kind: Kind): void {
  let m: FrontendMessage | BackendReply | BackendMessage;
  try {
    m = decoders[kind](input, fds);
  } catch (e) {
    if (e instanceof DecodeError) {
      counts.decodeError++;
      reasons.set(e.reason, (reasons.get(e.reason) ?? 0) + 1);
      return;
    }
    fail(`decode ${kind} threw a non-DecodeError`, input, e);
    return;
  }
  counts[kind]++;
  try {
    let again: Buffer;
    let want: number;
    let stray = 0;
    if (kind === 'frontend') {
      again = encodeFrontend(m as FrontendMessage);
      want = frontendFdCount(m as FrontendMessage);
      stray = frontendStrayFds(m as FrontendMessage);
    } else if (kind === 'reply') {
      again = encodeReply(m as BackendReply);
      want = replyFdCount(m as BackendReply);
    } else {
      again = encodeBackend(m as BackendMessage);
      want = backendFdCount(m as BackendMessage);
    }
    const expected = Buffer.from(input);
    if (m.request === 'IOTLB_MSG') expected.fill(0, HEADER_SIZE + 26); // padding is not kept
    if (kind === 'frontend' && m.request === 'GET_VRING_BASE') expected.fill(0, HEADER_SIZE + 4); // num is ignored (DPDK sends garbage)
    if (!again.equals(expected)) fail(`${kind} ${m.request} re-encodes to different bytes: ${again.toString('hex')}`, input, null);
    if (fds < want || fds > want + stray) fail(`${kind} ${m.request} decoded with ${fds} fds; its rule says ${want}+${stray}`, input, null);
  } catch (e) {
    fail(`${kind} ${m.request} decoded but does not re-encode`, input, e);
  }
}

/** Feeds the input in random chunks, some with fds; every fd must come back exactly once. */
function readStream(input: Buffer): void {
  const reader = new MessageReader(chance(0.8) ? {} : { maxPayloadSize: below(300) });
  let nextFd = 1000;
  const pushed: number[] = [];
  const returned: number[] = [];
  const push = (chunk: Buffer): void => {
    const fds: number[] = [];
    if (chance(0.2)) for (let k = below(MAX_FDS_PER_MESSAGE + 2); k > 0; k--) fds.push(nextFd++);
    pushed.push(...fds);
    reader.push(chunk, fds);
    for (let m = reader.next(); m !== null; m = reader.next()) {
      counts.messages++;
      counts.fds += m.fds.length;
      returned.push(...m.fds);
      if (m.bytes.length < HEADER_SIZE || m.bytes.readUInt32LE(8) !== m.bytes.length - HEADER_SIZE || m.bytes.length > HEADER_SIZE + reader.maxPayloadSize) {
        fail(`MessageReader returned a bad message of ${m.bytes.length} bytes`, input, null);
      }
      if (m.fds.length > MAX_FDS_PER_MESSAGE) fail(`MessageReader returned a message with ${m.fds.length} fds`, input, null);
      tryDecode(m.bytes, m.fds.length, 'frontend');
    }
  };
  try {
    for (let at = 0; at < input.length; ) {
      const n = 1 + below(input.length - at);
      push(input.subarray(at, at + n));
      at += n;
    }
    if (chance(0.05)) push(Buffer.alloc(0)); // fds with no bytes, at the end of the stream
  } catch (e) {
    if (e instanceof ProtocolError) counts.protocolError++;
    else fail('MessageReader threw a non-ProtocolError', input, e);
  }
  returned.push(...reader.takeFds());
  if (returned.length !== pushed.length || returned.sort((a, b) => a - b).some((f, i) => f !== pushed[i])) {
    fail(`MessageReader lost or duplicated fds: pushed ${pushed.length}, got back ${returned.length}`, input, null);
  }
}

// --- run ---------------------------------------------------------------------------------------
console.log(`fuzzing the vhost-user codec: ${runs} inputs, seed ${seed}, ${seeds.length} seed messages`);
const started = performance.now();
let lastReport = started;
for (let i = 1; i <= runs && failures < maxFailures; i++) {
  const { bytes, fds } = nextInput();
  const nfds = chance(0.7) ? fds : below(10);
  tryDecode(bytes, nfds, 'frontend');
  tryDecode(bytes, nfds, 'reply');
  tryDecode(bytes, nfds, 'backend');
  readStream(bytes);
  if ((i & 0xffff) === 0 && performance.now() - lastReport > 5000) {
    lastReport = performance.now();
    console.log(`  ${i} inputs, ${Math.round(i / ((lastReport - started) / 1000))}/s`);
  }
}
const seconds = (performance.now() - started) / 1000;
const reasonList = [...reasons].sort((a, b) => b[1] - a[1]).map(([r, n]) => `${r}:${n}`).join(' ');
console.log(
  `${runs} inputs in ${seconds.toFixed(1)} s = ${Math.round(runs / seconds)} inputs/s ` +
    `(each through decodeFrontend, decodeReply, decodeBackend and a MessageReader in random chunks with random fds)`,
);
console.log(
  `decoded as front-end request ${counts.frontend}, as reply ${counts.reply}, as back-end request ${counts.backend}, ` +
    `DecodeError ${counts.decodeError} (${reasonList}), messages from MessageReader ${counts.messages} with ${counts.fds} fds, ` +
    `ProtocolError ${counts.protocolError}`,
);
console.log(failures === 0 ? 'no failures' : `${failures} FAILURES`);
process.exitCode = failures === 0 ? 0 : 1;
