// prism's vhost-user-vsock device against real peers: QEMU 7.2 (`-device vhost-user-vsock-pci`,
// guest RAM in a shared memfd) and the Linux 6.1 guest's vmw_vsock_virtio_transport, with socat in
// the guest. The host side follows cloud-hypervisor's hybrid conventions and is reached with
// prism's own transport (`hvsock:` listen and dial), as a host tool would:
// - guest → host: the guest connects to CID 2 port 5000; prism connects to UDS_5000, where the
//   test listens. 1.5 MB go up and 1 MiB comes back, sha256 compared at both ends.
// - host → guest: the guest listens on vsock port 6000; the test dials hvsock:UDS:6000 (CONNECT
//   6000, OK <port>) and 1 MiB goes each way.
// - refusals: a guest connection to a port nothing listens on (UDS_5999 absent) gets RST; a host
//   CONNECT to a port the guest does not listen on is closed without OK.
// One guest boot carries all of it (the guest prints markers; the host acts on them); each test
// below asserts one part.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { Duplex } from 'node:stream';
import { after, before, describe, it } from 'node:test';
import { dial, listen, type Listener } from '../src/transport/index.js';
import { VsockServer } from '../src/vsock/server.js';
import { REPO_ROOT, guestTail, requireLab, runGuest, type GuestResult } from './helpers/lab.js';

const GUEST_CID = 3;
const UP_PORT = 5000;
const NOBODY_HOST_PORT = 5999;
const LISTEN_PORT = 6000;
const NOBODY_GUEST_PORT = 6001;
const MIB = 1 << 20;
const GUEST_TIMEOUT_MS = 180_000;

const sha256 = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

/** Reads a stream to its end while writing `send` to it, then ending it: both directions at once. */
function exchange(s: Duplex, send: Buffer): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const got: Buffer[] = [];
    s.on('data', (d: Buffer) => got.push(d));
    s.on('end', () => resolve(Buffer.concat(got)));
    s.on('error', reject);
    s.end(send);
  });
}

interface HostSide {
  upReceived: Promise<Buffer>;
  upSent: Buffer;
  downSent: Buffer;
  downReceived: Buffer | null;
  okPort: number | null;
  refusedConnect: Error | null;
  dialAttempts: number;
}

interface Run {
  guest: GuestResult;
  host: HostSide;
  status: ReturnType<VsockServer['status']>;
}

const SCRIPT = `
dd if=/dev/urandom of=/tmp/up bs=1000 count=1500 2>/dev/null
echo "UP-SENT $(sha256sum /tmp/up | cut -d' ' -f1) $(wc -c < /tmp/up)"
socat -t 60 -b 65536 OPEN:/tmp/up!!CREATE:/tmp/down VSOCK-CONNECT:2:${UP_PORT}; echo "UP-RC $?"
echo "DOWN-GOT $(sha256sum /tmp/down | cut -d' ' -f1) $(wc -c < /tmp/down)"
socat -u OPEN:/dev/null VSOCK-CONNECT:2:${NOBODY_HOST_PORT} 2>/tmp/refused; echo "REFUSED-RC $?"
echo "REFUSED-ERR $(tail -1 /tmp/refused)"
dd if=/dev/urandom of=/tmp/g bs=1000 count=1048 2>/dev/null
echo "G-SENT $(sha256sum /tmp/g | cut -d' ' -f1) $(wc -c < /tmp/g)"
socat -t 60 -b 65536 VSOCK-LISTEN:${LISTEN_PORT} OPEN:/tmp/g!!CREATE:/tmp/h &
pid=$!
echo LISTENING
wait $pid; echo "LISTEN-RC $?"
echo "H-GOT $(sha256sum /tmp/h | cut -d' ' -f1) $(wc -c < /tmp/h)"
`;

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

describe('vhost-user-vsock with QEMU and a Linux guest (hybrid host side)', () => {
  let dir: string;
  let server: VsockServer;
  let upListener: Listener;
  let run: Promise<Run> | undefined;

  before(async () => {
    requireLab();
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'prism-vsock-'));
    server = new VsockServer({ socket: path.join(dir, 'vu.sock'), cid: GUEST_CID, uds: path.join(dir, 'hv.sock') });
    await server.start();
  });

  after(async () => {
    await upListener?.close();
    await server?.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  /** Boots the guest once; the host side follows its markers. */
  function guestRun(): Promise<Run> {
    run ??= (async () => {
      const uds = path.join(dir, 'hv.sock');
      const upSent = randomBytes(MIB);
      const downSent = randomBytes(MIB + 12345);
      let resolveUp!: (b: Buffer) => void;
      const upReceived = new Promise<Buffer>((r) => (resolveUp = r));
      upListener = await listen(`hvsock:${uds}:${UP_PORT}`);
      upListener.on('connection', ({ stream }) => void exchange(stream, upSent).then(resolveUp));
      const host: HostSide = { upReceived, upSent, downSent, downReceived: null, okPort: null, refusedConnect: null, dialAttempts: 0 };

      let hostWork: Promise<void> = Promise.resolve();
      let started = false;
      let consoleText = '';
      const onListening = async (): Promise<void> => {
        // Nobody listens on 6001: the guest answers our REQUEST with RST, the stream closes without OK.
        host.refusedConnect = await dial(`hvsock:${uds}:${NOBODY_GUEST_PORT}`, { timeoutMs: 20_000 }).then(
          (s) => {
            s.destroy();
            return null;
          },
          (e: Error) => e,
        );
        // socat may print its marker a moment before it listens: retry a refused CONNECT briefly.
        for (;;) {
          host.dialAttempts++;
          try {
            const s = await dial(`hvsock:${uds}:${LISTEN_PORT}`, { timeoutMs: 20_000 });
            host.downReceived = await exchange(s, downSent);
            return;
          } catch (e) {
            if (host.dialAttempts >= 20) throw e;
            await sleep(250);
          }
        }
      };
      const guest = await runGuest({
        script: SCRIPT,
        vhostUser: [{ kind: 'vsock', socket: path.join(dir, 'vu.sock') }],
        timeoutMs: GUEST_TIMEOUT_MS,
        onConsole: (t) => {
          consoleText += t;
          if (!started && consoleText.includes('LISTENING')) {
            started = true;
            hostWork = onListening();
          }
        },
      });
      await hostWork;
      return { guest, host, status: server.status() };
    })();
    return run;
  }

  function marker(r: Run, name: string): string[] {
    const m = new RegExp(`^${name} (.*)$`, 'm').exec(r.guest.console);
    assert.ok(m?.[1] !== undefined, `no ${name} line from the guest\n${guestTail(r.guest)}`);
    return m[1].trim().split(/\s+/);
  }

  it('boots with the device: QEMU negotiates, the guest script runs to the end', async () => {
    const r = await guestRun();
    assert.equal(r.guest.exitCode, 0, guestTail(r.guest));
    assert.equal(r.status.counters.drops.spoofed, 0, 'every packet came from CID 3, the CID in our config space');
  });

  it('guest → host: VSOCK-CONNECT:2:5000 reaches UDS_5000; 1.5 MB up and 1 MiB down arrive intact', async () => {
    const r = await guestRun();
    const [upSha, upBytes] = marker(r, 'UP-SENT');
    assert.deepEqual(marker(r, 'UP-RC'), ['0'], guestTail(r.guest));
    const up = await r.host.upReceived;
    assert.equal(String(up.length), upBytes, 'bytes the host received');
    assert.equal(sha256(up), upSha, 'sha256 of what the host received equals what the guest sent');
    assert.deepEqual(marker(r, 'DOWN-GOT'), [sha256(r.host.upSent), String(MIB)], 'what the guest received from the host');
  });

  it('guest → host: a port with nothing at UDS_P is refused with RST (connection reset)', async () => {
    const r = await guestRun();
    assert.notEqual(marker(r, 'REFUSED-RC')[0], '0');
    assert.match(marker(r, 'REFUSED-ERR').join(' '), /Connection reset by peer/);
    assert.ok(r.status.counters.connectionsRefused >= 1);
  });

  it('host → guest: CONNECT 6000 on UDS is answered OK once the guest listens; 1 MiB each way arrives intact', async () => {
    const r = await guestRun();
    const [gSha, gBytes] = marker(r, 'G-SENT');
    assert.ok(r.host.downReceived, `the host never got a connection (attempts ${r.host.dialAttempts})\n${guestTail(r.guest)}`);
    assert.equal(String(r.host.downReceived.length), gBytes);
    assert.equal(sha256(r.host.downReceived), gSha, 'sha256 of what the host received equals what the guest sent');
    assert.deepEqual(marker(r, 'LISTEN-RC'), ['0']);
    assert.deepEqual(marker(r, 'H-GOT'), [sha256(r.host.downSent), String(r.host.downSent.length)], 'what the guest received');
  });

  it('host → guest: CONNECT to a port the guest does not listen on is closed without OK', async () => {
    const r = await guestRun();
    assert.ok(r.host.refusedConnect, 'the dial to port 6001 failed');
    assert.match(r.host.refusedConnect.message, /without answering OK|closed/i);
  });

  it('counts the connections and leaves none open', async () => {
    const r = await guestRun();
    const c = r.status.counters;
    assert.ok(c.connectionsOpened >= 2, JSON.stringify(c));
    assert.ok(c.bytesFromGuest >= 1_500_000 + 1_048_000, JSON.stringify(c));
    assert.ok(c.bytesToGuest >= 2 * MIB, JSON.stringify(c));
    const bad = { ...c.drops, 'no-route': 0, 'no-connection': 0 };
    assert.deepEqual(Object.values(bad).filter((n) => n > 0), [], `unexpected drops: ${JSON.stringify(c.drops)}`);
    assert.deepEqual(r.status.connections, []);
  });
});

// Flow control against the real driver: a reader that stops for a while on either side. Linux
// stops sending when the credit we advertise runs out and prism stops reading a host socket when
// the guest's credit or receive buffers run out; neither side may lose, reorder or overrun.
describe('vhost-user-vsock flow control with QEMU: readers that stall on either side', () => {
  const STALL_MS = 2000;
  const BYTES = 8 * MIB;
  let dir: string;
  let server: VsockServer;
  let upListener: Listener;

  before(async () => {
    requireLab();
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'prism-vsock-fc-'));
    server = new VsockServer({ socket: path.join(dir, 'vu.sock'), cid: GUEST_CID, uds: path.join(dir, 'hv.sock') });
    await server.start();
  });

  after(async () => {
    await upListener?.close();
    await server?.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('carries 8 MiB each way intact while the receiving program stops reading for 2 s, holding at most one buffer of credit', async (t) => {
    const uds = path.join(dir, 'hv.sock');
    // guest → host: the host program reads 1 MiB, stops for 2 s, then reads the rest.
    let upDone!: (r: { bytes: number; sha: string }) => void;
    const up = new Promise<{ bytes: number; sha: string }>((r) => (upDone = r));
    let maxUnforwarded = 0;
    let maxQueued = 0;
    const sample = setInterval(() => {
      for (const c of server.device.connections()) {
        maxUnforwarded = Math.max(maxUnforwarded, c.unforwarded);
        maxQueued = Math.max(maxQueued, c.queuedToGuest);
      }
    }, 20);
    upListener = await listen(`hvsock:${uds}:${UP_PORT}`);
    upListener.on('connection', ({ stream }) => {
      const h = createHash('sha256');
      let n = 0;
      let stalled = false;
      stream.on('data', (d: Buffer) => {
        h.update(d);
        n += d.length;
        if (!stalled && n >= MIB) {
          stalled = true;
          stream.pause();
          setTimeout(() => stream.resume(), STALL_MS);
        }
      });
      stream.on('end', () => {
        upDone({ bytes: n, sha: h.digest('hex') });
        stream.end();
      });
    });
    // host → guest: the guest's reader sleeps 2 s before reading anything.
    const down = randomBytes(BYTES);
    let downWork: Promise<void> = Promise.resolve();
    let started = false;
    let consoleText = '';
    const guest = await runGuest({
      script: `
dd if=/dev/urandom of=/tmp/up bs=1048576 count=8 2>/dev/null
echo "UP-SENT $(sha256sum /tmp/up | cut -d' ' -f1)"
socat -u -b 65536 OPEN:/tmp/up VSOCK-CONNECT:2:${UP_PORT}; echo "UP-RC $?"
socat -u -b 65536 VSOCK-LISTEN:${LISTEN_PORT} STDOUT | (sleep ${STALL_MS / 1000}; sha256sum > /tmp/down.sha) &
echo LISTENING
wait
echo "DOWN-GOT $(cut -d' ' -f1 /tmp/down.sha)"`,
      vhostUser: [{ kind: 'vsock', socket: path.join(dir, 'vu.sock') }],
      timeoutMs: GUEST_TIMEOUT_MS,
      onConsole: (t) => {
        consoleText += t;
        if (!started && consoleText.includes('LISTENING')) {
          started = true;
          downWork = (async () => {
            for (let attempt = 1; ; attempt++) {
              try {
                const s = await dial(`hvsock:${uds}:${LISTEN_PORT}`, { timeoutMs: 20_000 });
                s.resume();
                await new Promise<void>((resolve, reject) => {
                  s.on('error', reject);
                  s.end(down, resolve);
                });
                return;
              } catch (e) {
                if (attempt >= 20) throw e;
                await sleep(250);
              }
            }
          })();
        }
      },
    });
    await downWork;
    clearInterval(sample);
    assert.equal(guest.exitCode, 0, guestTail(guest));
    const sent = /^UP-SENT ([0-9a-f]{64})$/m.exec(guest.console)?.[1];
    assert.deepEqual(await up, { bytes: BYTES, sha: sent }, 'guest → host: every byte, in order');
    assert.equal(/^DOWN-GOT ([0-9a-f]{64})$/m.exec(guest.console)?.[1], sha256(down), `host → guest: every byte, in order\n${guestTail(guest)}`);
    assert.ok(maxUnforwarded <= 256 * 1024, `guest data held for the stalled host program: ${maxUnforwarded} bytes (credit 256 KiB)`);
    assert.ok(maxQueued <= 64 * 1024 + 64 * 1024, `host data held for the stalled guest: ${maxQueued} bytes (pause at 64 KiB, plus one read)`);
    const c = server.status().counters;
    t.diagnostic(`held at most ${maxUnforwarded} bytes for the host program, ${maxQueued} for the guest; ${Math.round(guest.durationMs)} ms`);
    assert.equal(c.drops.violation, 0);
    assert.equal(c.bytesFromGuest, BYTES);
    assert.equal(c.bytesToGuest, BYTES);
  });
});

// The command line as an operator runs it: `prism vsock serve` in its own process, a guest with
// CID 4 (from the config space), and the JSON log lines it writes.
describe('prism vsock serve with QEMU', () => {
  it('serves a guest with CID 4: the guest reaches UDS_5000, the log has the connection, SIGTERM stops it cleanly', async () => {
    requireLab();
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'prism-vsock-cli-'));
    const socket = path.join(dir, 'vu.sock');
    const uds = path.join(dir, 'hv.sock');
    const l = await listen(`hvsock:${uds}:${UP_PORT}`);
    const heard = new Promise<string>((resolve) => {
      l.on('connection', ({ stream }) => {
        const got: Buffer[] = [];
        stream.on('data', (d: Buffer) => got.push(d));
        stream.on('end', () => {
          stream.end('hello from the host\n');
          resolve(Buffer.concat(got).toString());
        });
      });
    });
    const cli = spawn(process.execPath, ['--import', 'tsx', 'src/cli/main.ts', 'vsock', 'serve', '--socket', socket, '--cid', '4', '--uds', uds], {
      cwd: REPO_ROOT,
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let log = '';
    cli.stderr.setEncoding('utf8');
    cli.stderr.on('data', (t: string) => (log += t));
    const exited = new Promise<number | null>((resolve) => cli.on('exit', (code) => resolve(code)));
    try {
      await until(() => log.includes('vsock device ready'), 'the CLI to start', 30_000);
      const guest = await runGuest({
        script: `echo hello-from-cid-4 | socat -t 10 - VSOCK-CONNECT:2:${UP_PORT}`,
        vhostUser: [{ kind: 'vsock', socket }],
        timeoutMs: GUEST_TIMEOUT_MS,
      });
      assert.equal(guest.exitCode, 0, guestTail(guest));
      assert.match(guest.console, /hello from the host/);
      assert.equal(await heard, 'hello-from-cid-4\n');
      await until(() => log.includes('vsock connection closed'), 'the close in the log', 10_000);
      cli.kill('SIGTERM');
      assert.equal(await exited, 0, log);
      const lines = log.trim().split('\n').map((x) => JSON.parse(x) as { msg: string; conn?: string; counters?: { drops: Record<string, number>; connectionsOpened: number } });
      const opened = lines.find((x) => x.msg === 'vsock connection open');
      assert.match(opened?.conn ?? '', /^4:\d+ <-> 2:5000$/, 'the guest spoke from CID 4');
      const stopped = lines.find((x) => x.msg === 'vsock device stopped');
      assert.equal(stopped?.counters?.connectionsOpened, 1, log);
      assert.equal(stopped?.counters?.drops.spoofed, 0);
    } finally {
      if (cli.exitCode === null) cli.kill('SIGKILL');
      await l.close();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

async function until(cond: () => boolean, what: string, ms: number): Promise<void> {
  const t0 = Date.now();
  while (!cond()) {
    if (Date.now() - t0 > ms) assert.fail(`timed out waiting for ${what}`);
    await sleep(20);
  }
}
