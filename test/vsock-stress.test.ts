// prism's vhost-user-vsock device under stress, with QEMU 7.2 and a Linux 6.1 guest (TCG), host
// side through prism's own `hvsock:` transport as in test/vsock-qemu.test.ts. One guest boot per
// scenario:
// - 256 MiB guest → host under credit flow control: the host program stops reading for a moment
//   every 64 MiB, so the guest runs out of credit again and again; every byte arrives in order
//   (sha256 against the stream the host knows the guest sends) and the device never holds more
//   than one buffer of credit (256 KiB) for the connection.
// - readers that stop: the guest's reader of a 32 MiB host → guest stream and the host's reader of
//   a 32 MiB guest → host stream both stop for 8 s; meanwhile a third connection carries 1 MiB
//   each way to the end; both stalled transfers then complete intact, and what prism holds for
//   them stays within the credit and the pause threshold (and the process's live memory stays flat).
// - a guest reboot mid-stream (QEMU without -no-reboot): the guest streams to the host and runs
//   `reboot -f`; the host's end of that stream ends when the rebooted driver restarts the rings;
//   the second boot's script (it asks the host which boot it is) moves 1 MiB each way on a
//   guest-initiated and on a host-initiated connection, then powers off.
//
// Streams whose content the host must check are made of a 1 MiB random block the host puts into the
// guest's initramfs (/data/blk), sent N times, each copy preceded by a 16-byte header with its index
// (`printf '%015d\n' i`): the host computes the exact stream the guest sends, so one sha256 over what
// arrived checks every byte and the order of the blocks, without the guest hashing hundreds of MiB
// under TCG (its sha256sum does ~13 MiB/s).
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { Duplex } from 'node:stream';
import { after, before, describe, it } from 'node:test';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { dial, listen, type Listener } from '../src/transport/index.js';
import { VsockServer } from '../src/vsock/server.js';
import { guestTail, requireLab, runGuest, type GuestResult } from './helpers/lab.js';

const GUEST_CID = 3;
const MIB = 1 << 20;
const KIB = 1024;
const BUF_ALLOC = 256 * KIB; // the device's default credit per connection
const HOST_QUEUE_LIMIT = 64 * KIB; // host bytes queued before the host socket is paused
const GUEST_TIMEOUT_MS = 180_000;

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

// Live memory (after a full GC) rather than RSS, which garbage not yet collected makes noisy.
setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;
function liveBytes(): number {
  gc();
  const m = process.memoryUsage();
  return m.heapUsed + m.external;
}
const sha256 = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

/** The header before block i, as the guest's `printf '%015d\n' $i` writes it. */
function header(i: number): Buffer {
  return Buffer.from(`${String(i).padStart(15, '0')}\n`, 'ascii');
}

/** Guest shell: `count` blocks of header + /data/blk on stdout. */
function guestBlocks(count: number | 'forever'): string {
  const cond = count === 'forever' ? ':' : `[ $i -lt ${count} ]`;
  return `i=0; while ${cond}; do printf '%015d\\n' $i; cat /data/blk; i=$((i+1)); done`;
}

function blocksSize(blk: Buffer, count: number): number {
  return count * (16 + blk.length);
}

function blocksSha(blk: Buffer, count: number): string {
  const h = createHash('sha256');
  for (let i = 0; i < count; i++) h.update(header(i)).update(blk);
  return h.digest('hex');
}

/** Checks a stream of blocks piece by piece as it arrives: how far it is a correct prefix. */
class PrefixCheck {
  private offset = 0;
  private mismatchAt: number | null = null;
  constructor(private readonly blk: Buffer) {}
  private byteAt(pos: number): number {
    const per = 16 + this.blk.length;
    const i = Math.floor(pos / per);
    const off = pos % per;
    return off < 16 ? (header(i)[off] as number) : (this.blk[off - 16] as number);
  }
  update(d: Buffer): void {
    if (this.mismatchAt === null) {
      for (let k = 0; k < d.length; k++) {
        if (d[k] !== this.byteAt(this.offset + k)) {
          this.mismatchAt = this.offset + k;
          break;
        }
      }
    }
    this.offset += d.length;
  }
  get bytes(): number {
    return this.offset;
  }
  /** Offset of the first wrong byte, or null. */
  get firstMismatch(): number | null {
    return this.mismatchAt;
  }
}

/** Writes `count` blocks with back-pressure (never more than the socket takes), then ends. */
async function writeBlocks(s: Duplex, blk: Buffer, count: number, onAcked: (bytes: number) => void): Promise<void> {
  let acked = 0;
  const closed = new Promise<never>((_, reject) => {
    s.once('error', reject);
    s.once('close', () => reject(new Error(`the stream closed after ${acked} bytes`)));
  });
  closed.catch(() => undefined);
  const drained = (): Promise<void> => Promise.race([new Promise<void>((r) => s.once('drain', r)), closed]);
  for (let i = 0; i < count; i++) {
    for (const part of [header(i), blk]) {
      const ok = s.write(part, (err) => {
        if (err) return;
        acked += part.length;
        onAcked(acked);
      });
      if (!ok) await drained();
    }
  }
  await Promise.race([new Promise<void>((r) => s.end(r)), closed]);
}

/** Calls `onLine` for each console line (without \r) as it arrives. */
function lineReader(onLine: (line: string) => void): (text: string) => void {
  let pending = '';
  return (t: string) => {
    pending += t;
    let nl: number;
    while ((nl = pending.indexOf('\n')) >= 0) {
      onLine(pending.slice(0, nl).replace(/\r$/, ''));
      pending = pending.slice(nl + 1);
    }
  };
}

function marker(r: GuestResult, name: string): string[] {
  const m = new RegExp(`^${name} (.*)$`, 'm').exec(r.console);
  assert.ok(m?.[1] !== undefined, `no ${name} line from the guest\n${guestTail(r)}`);
  return m[1].trim().split(/\s+/);
}

/** Dials a guest port, retrying while the guest's listener is not up yet (socat prints first). */
async function dialGuest(uds: string, port: number): Promise<Duplex> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await dial(`hvsock:${uds}:${port}`, { timeoutMs: 20_000 });
    } catch (e) {
      if (attempt >= 40) throw e;
      await sleep(250);
    }
  }
}

/** Writes `send` and reads to the end, both at once; resolves with what was read. */
function exchange(s: Duplex, send: Buffer): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const got: Buffer[] = [];
    s.on('data', (d: Buffer) => got.push(d));
    s.on('end', () => resolve(Buffer.concat(got)));
    s.on('error', reject);
    s.end(send);
  });
}

/** Peaks of what the device holds per connection, sampled every 10 ms. */
class Sampler {
  maxUnforwarded = 0;
  maxQueuedToGuest = 0;
  maxRss = 0;
  samples = 0;
  private readonly timer: NodeJS.Timeout;
  constructor(private readonly server: VsockServer) {
    this.timer = setInterval(() => this.sample(), 10);
  }
  sample(): void {
    this.samples++;
    for (const c of this.server.device.connections()) {
      this.maxUnforwarded = Math.max(this.maxUnforwarded, c.unforwarded);
      this.maxQueuedToGuest = Math.max(this.maxQueuedToGuest, c.queuedToGuest);
    }
    this.maxRss = Math.max(this.maxRss, process.memoryUsage.rss());
  }
  stop(): void {
    clearInterval(this.timer);
    this.sample();
  }
}

interface LogLine {
  level: string;
  msg: string;
  fields?: Record<string, unknown>;
}

async function startServer(dir: string, logs: LogLine[]): Promise<VsockServer> {
  const server = new VsockServer({
    socket: path.join(dir, 'vu.sock'),
    cid: GUEST_CID,
    uds: path.join(dir, 'hv.sock'),
    log: (level, msg, fields) => logs.push({ level, msg, ...(fields ? { fields } : {}) }),
  });
  await server.start();
  return server;
}

/** Every drop counter is zero except the kinds named. */
function assertNoDrops(server: VsockServer, except: string[] = []): void {
  const drops = { ...server.status().counters.drops } as Record<string, number>;
  for (const k of except) drops[k] = 0;
  assert.deepEqual(Object.entries(drops).filter(([, n]) => n > 0), [], `unexpected drops: ${JSON.stringify(server.status().counters.drops)}`);
}

function closedLogs(logs: LogLine[]): Record<string, unknown>[] {
  return logs.filter((l) => l.msg === 'vsock connection closed').map((l) => l.fields ?? {});
}

// --- 1: 256 MiB guest → host -------------------------------------------------------------------

describe('vsock stress: 256 MiB guest → host under credit flow control', () => {
  const BLOCKS = 256;
  const PAUSE_EVERY = 64 * MIB;
  const PAUSE_MS = 500;
  const PORT = 5000;
  let dir: string;
  let server: VsockServer;
  let listener: Listener | undefined;
  const logs: LogLine[] = [];

  before(async () => {
    requireLab();
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'prism-vsock-stress-'));
    server = await startServer(dir, logs);
  });

  after(async () => {
    await listener?.close();
    await server?.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('every byte of 256 MiB arrives in order; the device holds at most buf_alloc (256 KiB) for the host program; no violation, no drop', async (t) => {
    const blk = randomBytes(MIB);
    const total = blocksSize(blk, BLOCKS);
    const uds = path.join(dir, 'hv.sock');
    let result!: (r: { bytes: number; sha: string; ms: number; pauses: number }) => void;
    const received = new Promise<{ bytes: number; sha: string; ms: number; pauses: number }>((r) => (result = r));
    /** Bytes the device took from the guest during each pause of the host program. */
    const takenDuringPause: number[] = [];
    listener = await listen(`hvsock:${uds}:${PORT}`);
    listener.on('connection', ({ stream }) => {
      const h = createHash('sha256');
      const t0 = performance.now();
      let n = 0;
      let pauses = 0;
      let nextPause = PAUSE_EVERY;
      stream.on('data', (d: Buffer) => {
        h.update(d);
        n += d.length;
        // A host program that stops reading now and then: the guest must wait for credit.
        if (n >= nextPause && n < total) {
          nextPause += PAUSE_EVERY;
          pauses++;
          stream.pause();
          const before = server.device.counters.bytesFromGuest;
          setTimeout(() => {
            takenDuringPause.push(server.device.counters.bytesFromGuest - before);
            stream.resume();
          }, PAUSE_MS);
        }
      });
      stream.on('end', () => {
        result({ bytes: n, sha: h.digest('hex'), ms: performance.now() - t0, pauses });
        stream.end();
      });
    });
    const sampler = new Sampler(server);
    const guest = await runGuest({
      script: `
echo "BLK $(sha256sum /data/blk | cut -d' ' -f1)"
${guestBlocks(BLOCKS)} | socat -u -b 65536 - VSOCK-CONNECT:2:${PORT}; echo "UP-RC $?"`,
      files: [{ path: '/data/blk', data: blk }],
      vhostUser: [{ kind: 'vsock', socket: path.join(dir, 'vu.sock') }],
      timeoutMs: GUEST_TIMEOUT_MS,
    });
    sampler.stop();
    assert.equal(guest.exitCode, 0, guestTail(guest));
    assert.deepEqual(marker(guest, 'BLK'), [sha256(blk)], 'the guest has the block the host made');
    assert.deepEqual(marker(guest, 'UP-RC'), ['0'], guestTail(guest));
    const r = await received;
    assert.equal(r.bytes, total, 'bytes the host program received');
    assert.equal(r.sha, blocksSha(blk, BLOCKS), 'sha256 of what arrived equals that of the stream the guest sent');
    assert.ok(r.pauses >= 3, `the host program paused ${r.pauses} times`);

    // Credit: the guest never had more than buf_alloc unforwarded, and while the host program did not
    // read, the guest stopped: the device took only what the Unix socket's buffer and the credit
    // hold (at ~25 MiB/s the guest would have sent ~12 MiB in 500 ms).
    assert.ok(sampler.maxUnforwarded <= BUF_ALLOC, `the device held ${sampler.maxUnforwarded} bytes for the host program (credit ${BUF_ALLOC})`);
    // prism sends CREDIT_UPDATE when the guest's view of free space falls below half of buf_alloc,
    // so after a stall the guest has between half and all of its credit left to send (measured: 128 KiB).
    assert.ok(sampler.maxUnforwarded >= BUF_ALLOC / 4, `with the host program paused the credit ran down: at most ${sampler.maxUnforwarded} bytes held`);
    assert.equal(takenDuringPause.length, r.pauses);
    for (const n of takenDuringPause) assert.ok(n <= MIB, `the device took ${n} bytes from the guest during a ${PAUSE_MS} ms pause of the host program: ${takenDuringPause.join(', ')}`);
    const c = server.status().counters;
    assert.equal(c.drops.violation, 0, 'the guest never sent beyond its credit');
    assertNoDrops(server);
    assert.equal(c.bytesFromGuest, total);
    assert.equal(c.connectionsOpened, 1);
    assert.equal(c.resetsSent, 1, 'one RST: the answer to the guest closing its socket');
    const closed = closedLogs(logs);
    assert.equal(closed.length, 1, JSON.stringify(logs));
    const conn = closed[0] as { bytesFromGuest: number; creditUpdatesSent: number; reason: string };
    assert.equal(conn.bytesFromGuest, total);
    assert.equal(conn.reason, 'guest-shutdown', 'the guest closed the stream normally');
    assert.ok(conn.creditUpdatesSent > 0, 'prism told the guest about freed buffer space');
    assert.deepEqual(server.status().connections, []);
    t.diagnostic(
      `256 MiB + headers in ${(r.ms / 1000).toFixed(1)} s (${(total / MIB / (r.ms / 1000)).toFixed(1)} MiB/s incl. ${r.pauses} x ${PAUSE_MS} ms pauses); ` +
        `peak held ${sampler.maxUnforwarded} bytes; taken during the pauses ${takenDuringPause.join(', ')} bytes; ${conn.creditUpdatesSent} credit updates; ${sampler.samples} samples`,
    );
  });
});

// --- 2: readers that stop ------------------------------------------------------------------------

describe('vsock stress: receivers that stop reading for 8 s, another connection meanwhile', () => {
  const BLOCKS = 32;
  const STALL_S = 8;
  const UP_PORT = 5000;
  const SIDE_PORT = 5001;
  const DOWN_PORT = 6000;
  let dir: string;
  let server: VsockServer;
  const listeners: Listener[] = [];
  const logs: LogLine[] = [];

  before(async () => {
    requireLab();
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'prism-vsock-stall-'));
    server = await startServer(dir, logs);
  });

  after(async () => {
    for (const l of listeners) await l.close();
    await server?.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('both stalled 32 MiB streams complete intact, a 1 MiB exchange completes during the stall, prism holds at most credit + pause threshold', async (t) => {
    const blk = randomBytes(MIB);
    const total = blocksSize(blk, BLOCKS);
    const uds = path.join(dir, 'hv.sock');
    const sideDown = randomBytes(MIB);
    let t0 = 0;
    const since = (): number => Math.round(performance.now() - t0);

    // guest → host, 32 MiB: the host program reads 1 MiB, then stops for 8 s.
    const up = { check: new PrefixCheck(blk), stalled: false, resumedAt: 0, endedAt: 0 };
    let upDone!: () => void;
    const upEnded = new Promise<void>((r) => (upDone = r));
    const upListener = await listen(`hvsock:${uds}:${UP_PORT}`);
    listeners.push(upListener);
    upListener.on('connection', ({ stream }) => {
      stream.on('data', (d: Buffer) => {
        up.check.update(d);
        if (!up.stalled && up.check.bytes >= MIB) {
          up.stalled = true;
          stream.pause();
          setTimeout(() => {
            up.resumedAt = since();
            stream.resume();
          }, STALL_S * 1000);
        }
      });
      stream.on('end', () => {
        up.endedAt = since();
        stream.end();
        upDone();
      });
    });

    // host → guest, 32 MiB: the guest's reader sleeps 8 s before reading.
    const down = { acked: 0, done: null as Promise<void> | null };

    // The other connection: 1 MiB each way, while both are stalled.
    interface Side { at: number; got: Buffer; upReceived: number; downAcked: number; live: number; conns: ReturnType<VsockServer['device']['connections']> }
    let sideDone!: (s: Side) => void;
    const side = new Promise<Side>((r) => (sideDone = r));
    const sideListener = await listen(`hvsock:${uds}:${SIDE_PORT}`);
    listeners.push(sideListener);
    sideListener.on('connection', ({ stream }) => {
      void exchange(stream, sideDown).then((got) =>
        sideDone({ at: since(), got, upReceived: up.check.bytes, downAcked: down.acked, live: liveBytes(), conns: server.device.connections() }),
      );
    });

    let rssBefore = 0;
    let liveBefore = 0;
    let sampler: Sampler | undefined;
    let started = false;
    const guest = await runGuest({
      script: `
up() { cut -d' ' -f1 /proc/uptime; }
dd if=/dev/urandom of=/tmp/side bs=1024 count=1024 2>/dev/null
echo "SIDE-SENT $(sha256sum /tmp/side | cut -d' ' -f1) $(wc -c < /tmp/side)"
socat -u -b 65536 VSOCK-LISTEN:${DOWN_PORT} STDOUT | (sleep ${STALL_S}; echo "DOWN-RESUME $(up)"; cat > /tmp/down) &
echo LISTENING
${guestBlocks(BLOCKS)} | socat -u -b 65536 - VSOCK-CONNECT:2:${UP_PORT} &
sleep 2
echo "SIDE-START $(up)"
socat -t 30 -b 65536 OPEN:/tmp/side!!CREATE:/tmp/sideback VSOCK-CONNECT:2:${SIDE_PORT}; echo "SIDE-RC $? $(up)"
echo "SIDE-GOT $(sha256sum /tmp/sideback | cut -d' ' -f1) $(wc -c < /tmp/sideback)"
wait
echo "DOWN-GOT $(sha256sum /tmp/down | cut -d' ' -f1) $(wc -c < /tmp/down)"`,
      files: [{ path: '/data/blk', data: blk }],
      vhostUser: [{ kind: 'vsock', socket: path.join(dir, 'vu.sock') }],
      timeoutMs: GUEST_TIMEOUT_MS,
      onConsole: lineReader((line) => {
        if (started || line !== 'LISTENING') return;
        started = true;
        t0 = performance.now();
        liveBefore = liveBytes();
        rssBefore = process.memoryUsage.rss();
        sampler = new Sampler(server);
        down.done = (async () => {
          const s = await dialGuest(uds, DOWN_PORT);
          s.resume(); // the guest sends nothing back
          await writeBlocks(s, blk, BLOCKS, (n) => (down.acked = n));
        })();
      }),
    });
    sampler?.stop();
    assert.equal(guest.exitCode, 0, guestTail(guest));
    assert.ok(down.done, 'the guest listened');
    await down.done;
    await upEnded;
    const s = await side;

    // The other connection completed while both readers were stopped.
    assert.deepEqual(marker(guest, 'SIDE-RC').slice(0, 1), ['0'], guestTail(guest));
    const [sideSha, sideBytes] = marker(guest, 'SIDE-SENT');
    assert.deepEqual(marker(guest, 'SIDE-GOT'), [sha256(sideDown), String(MIB)], 'the guest got the host side of the exchange');
    assert.equal(String(s.got.length), sideBytes);
    assert.equal(sha256(s.got), sideSha, 'the host got the guest side of the exchange');
    const sideEndUptime = Number(marker(guest, 'SIDE-RC')[1]);
    const downResumeUptime = Number(marker(guest, 'DOWN-RESUME')[0]);
    assert.ok(sideEndUptime < downResumeUptime, `the exchange ended (guest uptime ${sideEndUptime}) before the guest's reader resumed (${downResumeUptime})`);
    assert.ok(s.at < up.resumedAt, `the exchange ended (${s.at} ms) before the host's reader resumed (${up.resumedAt} ms)`);
    assert.ok(s.upReceived < total && s.downAcked < total, `both big streams were stalled then: up ${s.upReceived}, down ${s.downAcked} of ${total}`);
    const stalledConns = s.conns.filter((c) => c.local === `2:${UP_PORT}` || c.initiator === 'host');
    assert.equal(stalledConns.length, 2, `both stalled connections were open: ${JSON.stringify(s.conns)}`);

    // Both complete, every byte in order.
    assert.equal(up.check.bytes, total, 'guest → host bytes');
    assert.equal(up.check.firstMismatch, null, `guest → host: first wrong byte at ${up.check.firstMismatch}`);
    assert.deepEqual(marker(guest, 'DOWN-GOT'), [blocksSha(blk, BLOCKS), String(total)], 'host → guest: what the guest got');

    // What prism held meanwhile: within the credit one way and the pause threshold (+ one read) the other.
    const maxRead = 64 * KIB;
    assert.ok(sampler, 'sampled');
    assert.ok(sampler.maxUnforwarded <= BUF_ALLOC, `held for the stalled host program: ${sampler.maxUnforwarded} bytes`);
    assert.ok(sampler.maxQueuedToGuest <= HOST_QUEUE_LIMIT + maxRead, `held for the stalled guest: ${sampler.maxQueuedToGuest} bytes`);
    // Had prism read the host's stream without bound, its 32 MiB would be in this process by now.
    const liveGrowth = s.live - liveBefore;
    assert.ok(liveGrowth < 8 * MIB, `live memory grew by ${(liveGrowth / MIB).toFixed(1)} MiB while 2 x 32 MiB waited for stalled readers`);
    const rssGrowth = sampler.maxRss - rssBefore;
    const c = server.status().counters;
    assert.equal(c.drops.violation, 0);
    assertNoDrops(server);
    assert.equal(c.bytesFromGuest, total + MIB);
    assert.equal(c.bytesToGuest, total + MIB);
    const closed = closedLogs(logs) as { initiator: string; creditStalls: number; creditRequestsSent: number }[];
    const downConn = closed.find((x) => x.initiator === 'host');
    assert.ok(downConn && downConn.creditStalls > 0, `the stalled guest's credit ran out and prism waited: ${JSON.stringify(downConn)}`);
    assert.deepEqual(server.status().connections, []);
    t.diagnostic(
      `exchange done at ${s.at} ms, host reader resumed at ${up.resumedAt} ms, up ended at ${up.endedAt} ms; ` +
        `held at most ${sampler.maxUnforwarded} B for the host, ${sampler.maxQueuedToGuest} B for the guest; live memory +${(liveGrowth / MIB).toFixed(1)} MiB during the stall (RSS peak +${(rssGrowth / MIB).toFixed(1)} MiB); ` +
        `host→guest credit stalls ${downConn.creditStalls}; guest ${Math.round(guest.durationMs)} ms`,
    );
  });
});

// --- 3: a guest reboot mid-stream ----------------------------------------------------------------

describe('vsock stress: a guest reboots in the middle of a stream', () => {
  const PHASE_PORT = 7000;
  const STREAM_PORT = 5000;
  const AFTER_PORT = 5002;
  const LISTEN_PORT = 6000;
  let dir: string;
  let server: VsockServer;
  const listeners: Listener[] = [];
  const logs: LogLine[] = [];

  before(async () => {
    requireLab();
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'prism-vsock-reboot-'));
    server = await startServer(dir, logs);
  });

  after(async () => {
    for (const l of listeners) await l.close();
    await server?.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('the interrupted stream ends on the host, the rebooted driver works: 1 MiB each way on new connections both directions', async (t) => {
    const blk = randomBytes(MIB);
    const uds = path.join(dir, 'hv.sock');
    let t0 = performance.now();
    const since = (): number => Math.round(performance.now() - t0);
    const at: Record<string, number> = {};

    // Which boot is it: the guest asks, the host counts.
    let boots = 0;
    const phase = await listen(`hvsock:${uds}:${PHASE_PORT}`);
    listeners.push(phase);
    phase.on('connection', ({ stream }) => {
      boots++;
      stream.resume();
      stream.end(`${boots}\n`);
    });

    // The stream the reboot interrupts.
    const stream1 = { check: new PrefixCheck(blk), how: '' as string, atReboot: 0, countersAtPhase2: null as null | ReturnType<VsockServer['status']>['counters'] };
    let stream1Ended!: () => void;
    const stream1Done = new Promise<void>((r) => (stream1Ended = r));
    const sl = await listen(`hvsock:${uds}:${STREAM_PORT}`);
    listeners.push(sl);
    sl.on('connection', ({ stream }) => {
      at['stream-open'] = since();
      // Whichever comes first: EOF (a Unix socket has no reset, so a dropped connection reads as
      // EOF unless data was left unread), an error, or the close.
      const ended = (how: string): void => {
        if (stream1.how !== '') return;
        stream1.how = how;
        at['stream-ended'] = since();
        stream1Ended();
        stream.destroy();
      };
      stream.on('data', (d: Buffer) => stream1.check.update(d));
      stream.on('end', () => ended('end'));
      stream.on('error', (e: NodeJS.ErrnoException) => ended(`error ${e.code ?? e.message}`));
      stream.on('close', () => ended('close'));
    });

    // After the reboot: 1 MiB each way, guest-initiated.
    const afterDown = randomBytes(MIB);
    let afterGot!: (b: Buffer) => void;
    const afterUp = new Promise<Buffer>((r) => (afterGot = r));
    const al = await listen(`hvsock:${uds}:${AFTER_PORT}`);
    listeners.push(al);
    al.on('connection', ({ stream }) => void exchange(stream, afterDown).then(afterGot));

    // After the reboot: 1 MiB each way, host-initiated.
    const hostDown = randomBytes(MIB);
    let hostWork: Promise<Buffer> | null = null;

    const guest = await runGuest({
      reboot: true,
      script: `
up() { cut -d' ' -f1 /proc/uptime; }
phase=$(socat -u VSOCK-CONNECT:2:${PHASE_PORT} STDOUT)
echo "PHASE $phase $(up)"
if [ "$phase" = 1 ]; then
  ${guestBlocks('forever')} | socat -u -b 65536 - VSOCK-CONNECT:2:${STREAM_PORT} &
  sleep 2
  echo "REBOOTING $(up)"
  reboot -f
  sleep 30
  echo "reboot -f did not reboot"
  exit 1
fi
[ "$phase" = 2 ] || { echo "unexpected phase '$phase'"; exit 1; }
dd if=/dev/urandom of=/tmp/a bs=1024 count=1024 2>/dev/null
echo "A-SENT $(sha256sum /tmp/a | cut -d' ' -f1) $(wc -c < /tmp/a)"
socat -t 30 -b 65536 OPEN:/tmp/a!!CREATE:/tmp/b VSOCK-CONNECT:2:${AFTER_PORT}; echo "A-RC $?"
echo "A-GOT $(sha256sum /tmp/b | cut -d' ' -f1) $(wc -c < /tmp/b)"
socat -t 30 -b 65536 VSOCK-LISTEN:${LISTEN_PORT} OPEN:/tmp/a!!CREATE:/tmp/h &
echo LISTENING
wait $!; echo "L-RC $?"
echo "H-GOT $(sha256sum /tmp/h | cut -d' ' -f1) $(wc -c < /tmp/h)"`,
      files: [{ path: '/data/blk', data: blk }],
      vhostUser: [{ kind: 'vsock', socket: path.join(dir, 'vu.sock') }],
      timeoutMs: GUEST_TIMEOUT_MS,
      onConsole: lineReader((line) => {
        if (line.startsWith('PRISM-LAB-INIT')) {
          if (at['init-1'] === undefined) {
            t0 = performance.now();
            at['init-1'] = 0;
          } else at['init-2'] = since();
        } else if (line.startsWith('REBOOTING')) {
          at.rebooting = since();
          stream1.atReboot = stream1.check.bytes;
        } else if (line.startsWith('PHASE 2')) {
          at['phase-2'] = since();
          stream1.countersAtPhase2 = structuredClone(server.status().counters);
        } else if (line === 'LISTENING' && hostWork === null) {
          hostWork = dialGuest(uds, LISTEN_PORT).then((s) => exchange(s, hostDown));
        }
      }),
    });
    assert.equal(guest.exitCode, 0, guestTail(guest, 80));
    assert.equal(boots, 2, `the guest booted twice\n${guestTail(guest, 80)}`);
    assert.equal(guest.qemuExitCode, 0, 'the second boot powered off');

    // The interrupted stream: an intact prefix, then it ended on the host (before the second boot's work).
    await Promise.race([stream1Done, sleep(1000).then(() => assert.fail(`the interrupted stream never ended on the host: ${JSON.stringify(at)}\n${logs.map((l) => `${l.level} ${l.msg} ${JSON.stringify(l.fields ?? {})}`).join('\n')}\n${JSON.stringify(server.status().connections)}`))]);
    assert.ok(stream1.atReboot >= MIB, `the stream was flowing when the guest rebooted: ${stream1.atReboot} bytes`);
    assert.equal(stream1.check.firstMismatch, null, `what arrived before the reboot is a prefix of what the guest sent (first wrong byte at ${stream1.check.firstMismatch})`);
    const ended = at['stream-ended'] as number;
    assert.ok(ended < (at['phase-2'] as number), `the stream ended (${ended} ms) before the second boot's script asked for its phase (${at['phase-2']} ms): ${JSON.stringify(at)}`);
    assert.ok(ended > (at.rebooting as number), JSON.stringify(at));

    // The device's account of it: one connection dropped because the driver was reset, no TRANSPORT_RESET.
    const driverReset = logs.filter((l) => l.msg === 'the guest driver was reset: dropping its connections');
    assert.equal(driverReset.length, 1, logs.map((l) => l.msg).join('\n'));
    assert.equal(driverReset[0]?.fields?.['connections'], 1);
    const dropped = closedLogs(logs).find((x) => x['detail'] === 'the guest driver was reset');
    assert.ok(dropped, `the closed log of the interrupted connection: ${JSON.stringify(closedLogs(logs))}`);
    assert.equal(dropped['reason'], 'killed');
    assert.equal(dropped['bytesFromGuest'], stream1.check.bytes, 'what the device took from the guest reached the host program');
    const c = server.status().counters;
    assert.equal(c.transportResets, 0, 'a reboot resets the driver: no TRANSPORT_RESET event is owed');
    assert.equal(c.drops.violation, 0);
    assertNoDrops(server);
    assert.ok(stream1.countersAtPhase2, 'counters at phase 2');
    assert.equal(stream1.countersAtPhase2.connectionsClosed, stream1.countersAtPhase2.connectionsOpened, 'no connection of the first boot was left open');

    // The second boot: 1 MiB each way, guest-initiated and host-initiated.
    assert.deepEqual(marker(guest, 'A-RC'), ['0'], guestTail(guest, 80));
    const [aSha, aBytes] = marker(guest, 'A-SENT');
    const aUp = await afterUp;
    assert.equal(String(aUp.length), aBytes);
    assert.equal(sha256(aUp), aSha, 'guest → host after the reboot');
    assert.deepEqual(marker(guest, 'A-GOT'), [sha256(afterDown), String(MIB)], 'host → guest after the reboot');
    assert.ok(hostWork, 'the host connected to the guest');
    const hUp = await (hostWork as Promise<Buffer>);
    assert.equal(sha256(hUp), aSha, 'guest → host on the host-initiated connection');
    assert.deepEqual(marker(guest, 'L-RC'), ['0']);
    assert.deepEqual(marker(guest, 'H-GOT'), [sha256(hostDown), String(MIB)], 'host → guest on the host-initiated connection');
    assert.deepEqual(server.status().connections, []);
    t.diagnostic(
      `timeline (ms from the first boot's /init): ${JSON.stringify(at)}; the stream carried ${stream1.check.bytes} bytes and ended with '${stream1.how}'; ` +
        `counters ${JSON.stringify({ ...c, drops: undefined })}; guest ${Math.round(guest.durationMs)} ms`,
    );
  });
});
