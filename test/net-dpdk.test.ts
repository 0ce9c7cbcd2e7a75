// The switch against DPDK's virtio_user frontend (testpmd), a fast guest-less
// real peer: a transmits (txonly) to b (rxonly) through the switch while c,
// not allowed, must receive nothing; and a port in client mode, where testpmd
// listens (server=1) and prism connects, keeps working across a restart of
// that testpmd.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { NetSwitchServer, type PortStatus } from '../src/net/server.js';
import type { BackendLog } from '../src/vhost/backend.js';
import { Testpmd, requireTestpmd, virtioUser } from '../lab/testpmd.js';

const RUN_MS = 5000;

function portOf(server: NetSwitchServer, name: string): PortStatus {
  const p = server.status().find((s) => s.name === name);
  assert.ok(p, `port ${name} exists`);
  return p;
}

/** The switch's log lines, kept for assertion messages. */
const switchLog: string[] = [];
const log: BackendLog = (level, msg, fields) => {
  switchLog.push(`${level} ${msg}${fields ? ` ${JSON.stringify(fields)}` : ''}`);
  if (switchLog.length > 200) switchLog.shift();
};

/** Waits until `cond` holds, polling every 100 ms; fails with `what` and the switch's log after timeoutMs. */
async function until(cond: () => boolean, what: string, timeoutMs = 20_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > end) assert.fail(`timed out waiting for ${what}\nswitch log:\n${switchLog.slice(-40).join('\n')}`);
    await sleep(100);
  }
}

describe('net switch with DPDK testpmd (virtio_user frontends)', () => {
  let dir: string;
  const running: Testpmd[] = [];
  const pmd = (o: ConstructorParameters<typeof Testpmd>[0]): Testpmd => {
    const t = new Testpmd(o);
    running.push(t);
    return t;
  };
  before(() => {
    requireTestpmd();
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'prism-dpdk-'));
  });
  after(() => {
    for (const t of running) t.kill();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('forwards a to b, the allowed pair, and nothing to c; counters agree with testpmd; features are reported', async () => {
    const server = new NetSwitchServer({ dir, ports: ['a', 'b', 'c'], allow: [['a', 'b']], statusIntervalMs: 0, log });
    server.start();
    try {
      const b = pmd({ name: `prism-b-${process.pid}`, vdevs: [virtioUser(0, server.socketPath('b'))], forwardMode: 'rxonly', cpu: 1 });
      const c = pmd({ name: `prism-c-${process.pid}`, vdevs: [virtioUser(0, server.socketPath('c'))], forwardMode: 'rxonly', cpu: 1 });
      await Promise.all([b.started(), c.started()]);
      const a = pmd({ name: `prism-a-${process.pid}`, vdevs: [virtioUser(0, server.socketPath('a'))], forwardMode: 'txonly', cpu: 0, frameBytes: 64 });
      await a.started();
      await until(() => (b.latest()?.rxPackets ?? 0) > 1000, 'b to receive 1000 frames');
      await sleep(RUN_MS);
      const during = server.status();
      const [ra, rb, rc] = [await a.stop(), await b.stop(), await c.stop()];
      const sa = portOf(server, 'a');
      const sb = portOf(server, 'b');
      const sc = portOf(server, 'c');

      const sent = ra.ports[0]?.txPackets ?? 0;
      const got = rb.ports[0]?.rxPackets ?? 0;
      assert.ok(sent > 10_000, `a sent ${sent} frames\n${a.tail()}`);
      assert.ok(got > 1000, `b received ${got}\n${b.tail()}`);
      assert.equal(rc.ports[0]?.rxPackets, 0, `c received frames\n${c.tail()}`);
      // Every frame a put in its ring was taken by the switch (rx from a's view of the switch),
      // and b got no more than the switch delivered to it.
      assert.equal(sa.rxPackets, sent, 'frames the switch took from a = frames testpmd a sent');
      assert.ok(got <= sb.txPackets && sb.txPackets <= sa.rxPackets, `b got ${got}, switch gave b ${sb.txPackets}, took ${sa.rxPackets} from a`);
      assert.equal(sb.txPackets + sa.drops, sa.rxPackets, 'every frame from a was delivered to b or counted as a drop');
      assert.equal(sc.txPackets, 0);
      assert.equal(sc.drops, 0, 'c sent nothing');
      assert.equal(sb.rxPackets, 0, 'b (rxonly) sent nothing');

      const fa = during.find((p) => p.name === 'a');
      assert.ok(fa?.connected);
      for (const f of ['VERSION_1', 'MRG_RXBUF', 'RING_INDIRECT_DESC', 'PROTOCOL_FEATURES']) assert.ok(fa.features.includes(f), `a negotiated ${f}: ${fa.features.join(' ')}`);
      assert.ok(fa.protocolFeatures.includes('REPLY_ACK'), `protocol features ${fa.protocolFeatures.join(' ')}`);
    } finally {
      await server.close();
    }
  });

  it('client mode: prism connects to testpmd listening (server=1), and reconnects when that testpmd restarts', async () => {
    const sockA = path.join(dir, 'dpdk-a.sock');
    const server = new NetSwitchServer({ dir, ports: ['a', 'b'], allow: [['a', 'b']], connect: { a: sockA }, statusIntervalMs: 0, retryMs: 200, log });
    server.start();
    try {
      const b = pmd({ name: `prism-cb-${process.pid}`, vdevs: [virtioUser(0, server.socketPath('b'))], forwardMode: 'rxonly', cpu: 1 });
      await b.started();
      for (const round of [1, 2]) {
        const before = b.latest()?.rxPackets ?? 0;
        const a = pmd({ name: `prism-ca${round}-${process.pid}`, vdevs: [virtioUser(0, sockA, true)], forwardMode: 'txonly', cpu: 0, frameBytes: 64 });
        await a.started(40_000);
        await until(() => (b.latest()?.rxPackets ?? 0) > before + 1000, `round ${round}: b to receive 1000 more frames\n${a.tail()}\n${b.tail()}`);
        assert.equal(portOf(server, 'a').mode, 'connect');
        assert.equal(portOf(server, 'a').sessions, round, 'one VMM connection per testpmd run');
        const ra = await a.stop();
        assert.ok((ra.ports[0]?.txPackets ?? 0) > 1000, a.tail());
        await until(() => !portOf(server, 'a').connected, `round ${round}: prism to see testpmd a go`);
      }
      await b.stop();
    } finally {
      await server.close();
    }
  });
});
