// The switch against real peers: Linux guests under QEMU with vhost-user-net
// ports. a and b are allowed to talk and ping each other over IPv6 link-local;
// c has no --allow and must see none of their traffic.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { NetSwitchServer } from '../src/net/server.js';
import { requireLab, runGuest, guestTail } from './helpers/lab.js';

const MAC = (n: number): string => `52:54:00:12:34:0${n}`;
const LL = (n: number): string => `fe80::5054:ff:fe12:340${n}`;

const UP = `ip link set lo up; ip link set eth0 up
i=0; while ! ip -6 addr show dev eth0 | grep -q 'fe80.*scope link' || ip -6 addr show dev eth0 | grep -q tentative; do i=$((i+1)); [ $i -gt 100 ] && { echo NO-LINK-LOCAL; exit 9; }; sleep 0.1; done
echo LINK-UP`;

/** Waits (up to ~60 s) until guest n answers: guests boot at different speeds under TCG. */
const WAIT_FOR = (n: number): string => `j=0; until ping -6 -c 1 -W 2 ${LL(n)}%eth0 >/dev/null 2>&1; do j=$((j+1)); [ $j -gt 30 ] && break; done`;

describe('net switch with QEMU guests (vhost-user-net)', () => {
  let dir: string;
  /** "port X: ... features acknowledged {...}" lines from the switch's log. */
  const acked: string[] = [];
  let server: NetSwitchServer;
  before(() => {
    requireLab();
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'prism-net-'));
    // d is in client mode: its QEMU listens (server=on) and the switch connects.
    server = new NetSwitchServer({
      dir,
      ports: ['a', 'b', 'c', 'd'],
      allow: [['a', 'b'], ['d', 'b']],
      connect: { d: path.join(dir, 'qemu-d.sock') },
      statusIntervalMs: 0,
      retryMs: 200,
      log: (_level, msg, fields) => {
        if (msg.endsWith('features acknowledged')) acked.push(`${msg} ${JSON.stringify(fields)}`);
      },
    });
    server.start();
  });
  after(async () => {
    await server.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('a pings b across the switch; c, not allowed, receives nothing and reaches no one', async (t) => {
    const guest = (n: number, port: string, script: string) =>
      runGuest({ script, vhostUser: [{ kind: 'net', socket: server.socketPath(port), mac: MAC(n) }], timeoutMs: 180_000 });
    const [a, b, c] = await Promise.all([
      guest(1, 'a', `${UP}\n${WAIT_FOR(2)}\nping -6 -c 3 -W 5 ${LL(2)}%eth0 && echo PING-B-OK; sleep 4`),
      guest(2, 'b', `${UP}\n${WAIT_FOR(1)}\nping -6 -c 3 -W 5 ${LL(1)}%eth0 && echo PING-A-OK; sleep 4`),
      guest(3, 'c', `${UP}\nping -6 -c 2 -W 3 ${LL(1)}%eth0 && echo C-REACHED-A; sleep 12\necho C-RX $(cat /sys/class/net/eth0/statistics/rx_packets)`),
    ]);
    assert.match(a.console, /PING-B-OK/, guestTail(a));
    assert.match(b.console, /PING-A-OK/, guestTail(b));
    assert.doesNotMatch(c.console, /C-REACHED-A/, guestTail(c));
    assert.match(c.console, /C-RX 0\b/, `c received frames: ${guestTail(c)}`);
    const st = server.status();
    const port = (name: string) => st.find((p) => p.name === name);
    assert.ok((port('a')?.txPackets ?? 0) >= 3 && (port('b')?.txPackets ?? 0) >= 3);
    assert.equal(port('c')?.txPackets, 0);
    assert.ok((port('c')?.drops ?? 0) >= 1, `c's frames were dropped by policy (status ${JSON.stringify(port('c'))})\n${guestTail(c)}`);
    // What QEMU 7.2 and the guest's virtio_net acknowledged (printed for the record).
    const ofA = acked.filter((l) => l.startsWith('port a:'));
    for (const l of ofA) t.diagnostic(l);
    assert.ok(ofA.some((l) => l.includes('virtio features') && l.includes('"VERSION_1"') && l.includes('"MRG_RXBUF"')), ofA.join('\n'));
    assert.ok(ofA.some((l) => l.includes('protocol features') && l.includes('"REPLY_ACK"')), ofA.join('\n'));
  });

  it('VMs that go away and come back on the same port get connectivity again while b keeps running (listen and client mode)', async () => {
    const guest = (n: number, port: string, script: string) =>
      runGuest({ script, vhostUser: [{ kind: 'net', socket: server.socketPath(port), mac: MAC(n), server: port === 'd' }], timeoutMs: 240_000 });
    const b = guest(2, 'b', `${UP}\necho B-UP; sleep 100`);
    const twice = async (n: number, port: string) => {
      const first = await guest(n, port, `${UP}\n${WAIT_FOR(2)}\nping -6 -c 2 -W 5 ${LL(2)}%eth0 && echo FIRST-OK`);
      const second = await guest(n, port, `${UP}\n${WAIT_FOR(2)}\nping -6 -c 2 -W 5 ${LL(2)}%eth0 && echo SECOND-OK`);
      return [first, second] as const;
    };
    const [[a1, a2], [d1, d2]] = await Promise.all([twice(1, 'a'), twice(4, 'd')]);
    const bResult = await b;
    for (const r of [a1, d1]) assert.match(r.console, /FIRST-OK/, guestTail(r));
    for (const r of [a2, d2]) assert.match(r.console, /SECOND-OK/, guestTail(r));
    assert.equal(bResult.exitCode, 0, guestTail(bResult));
    const d = server.status().find((p) => p.name === 'd');
    assert.equal(d?.mode, 'connect');
    assert.equal(d?.sessions, 2, 'the switch connected to each of d\'s two QEMUs');
  });

  it('moves a 1 MiB file from a to b over TCP across the switch, intact (sha256)', async () => {
    const guest = (n: number, port: string, script: string) =>
      runGuest({ script, vhostUser: [{ kind: 'net', socket: server.socketPath(port), mac: MAC(n) }], timeoutMs: 180_000 });
    const [a, b] = await Promise.all([
      guest(1, 'a', `${UP}
dd if=/dev/urandom of=/tmp/f bs=64k count=16 2>/dev/null; echo SENT $(sha256sum /tmp/f | cut -d' ' -f1)
${WAIT_FOR(2)}; sleep 1
k=0; until timeout 30 socat -u FILE:/tmp/f "TCP6:[${LL(2)}%eth0]:5000"; do k=$((k+1)); [ $k -gt 10 ] && break; sleep 1; done; echo SEND-DONE`),
      guest(2, 'b', `${UP}
timeout 90 socat -u TCP6-LISTEN:5000 CREATE:/tmp/f; echo RECEIVED $(wc -c < /tmp/f) $(sha256sum /tmp/f | cut -d' ' -f1)`),
    ]);
    const sent = /SENT ([0-9a-f]{64})/.exec(a.console)?.[1];
    const got = /RECEIVED (\d+) ([0-9a-f]{64})/.exec(b.console);
    assert.ok(sent, guestTail(a));
    assert.ok(got, guestTail(b));
    assert.equal(got[1], String(1 << 20), 'byte count');
    assert.equal(got[2], sent, 'sha256 of what b received equals what a sent');
  });
});
