// VM to VM over vsock through prism, with real guests: VM A (CID 3) and VM B (CID 4) each have
// their own prism vsock device; A's has `--peer 4=B's hybrid socket --allow 3:4:5000`. Guest A's
// connection to 4:5000 is carried through B's hybrid socket (CONNECT 5000) to guest B's listener,
// so the two backends share no memory; 4:5001 (B listens there too) and CID 5 (no such peer) are
// refused with RST and logged. B's device runs in client mode: its QEMU listens (server=on) and
// prism connects.
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { VsockServer } from '../src/vsock/server.js';
import { guestTail, requireLab, runGuest } from './helpers/lab.js';

const TIMEOUT_MS = 240_000;

const B_SCRIPT = `
dd if=/dev/urandom of=/tmp/b bs=1000 count=1000 2>/dev/null
echo "B-SENT $(sha256sum /tmp/b | cut -d' ' -f1) $(wc -c < /tmp/b)"
socat -u VSOCK-LISTEN:5001,fork CREATE:/tmp/x &
socat -t 60 -b 65536 VSOCK-LISTEN:5000 OPEN:/tmp/b!!CREATE:/tmp/a; echo "B-RC $?"
echo "B-GOT $(sha256sum /tmp/a | cut -d' ' -f1) $(wc -c < /tmp/a)"
# Stay up (still listening on 5001) while A tries the ports it may not reach.
i=0; while [ ! -e /tmp/x ] && [ $i -lt 40 ]; do i=$((i+1)); sleep 0.5; done
echo "B-5001 $([ -s /tmp/x ] && echo reached || echo untouched)"
`;

const A_SCRIPT = `
dd if=/dev/urandom of=/tmp/a bs=1000 count=1200 2>/dev/null
echo "A-SENT $(sha256sum /tmp/a | cut -d' ' -f1) $(wc -c < /tmp/a)"
# B may still be booting: its prism answers RST until guest B listens.
k=0; until socat -t 60 -b 65536 OPEN:/tmp/a!!CREATE:/tmp/b VSOCK-CONNECT:4:5000 2>/tmp/err; do k=$((k+1)); [ $k -gt 60 ] && break; sleep 1; done
echo "A-TRIES $k"
echo "A-GOT $(sha256sum /tmp/b | cut -d' ' -f1) $(wc -c < /tmp/b)"
echo hello | socat -u - VSOCK-CONNECT:4:5001 2>/tmp/denied; echo "DENIED-RC $?"
echo "DENIED-ERR $(tail -1 /tmp/denied)"
echo hello | socat -u - VSOCK-CONNECT:5:5000 2>/tmp/nopeer; echo "NOPEER-RC $?"
`;

function marker(console: string, name: string): string[] {
  const m = new RegExp(`^${name} (.*)$`, 'm').exec(console);
  assert.ok(m?.[1] !== undefined, `no ${name} line`);
  return m[1].trim().split(/\s+/);
}

describe('vsock VM to VM through two prism devices (policy, peer hybrid sockets, client mode)', () => {
  let dir: string;
  let a: VsockServer;
  let b: VsockServer;
  const logA: string[] = [];

  before(async () => {
    requireLab();
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'prism-vm2vm-'));
    b = new VsockServer({ socket: path.join(dir, 'b-qemu.sock'), connect: true, retryMs: 200, cid: 4, uds: path.join(dir, 'b.vsock') });
    a = new VsockServer({
      socket: path.join(dir, 'a.sock'),
      cid: 3,
      uds: path.join(dir, 'a.vsock'),
      peers: { 4: path.join(dir, 'b.vsock') },
      allow: [{ from: 3, to: 4, port: 5000 }],
      log: (level, msg) => logA.push(`${level} ${msg}`),
    });
    await b.start();
    await a.start();
  });

  after(async () => {
    await a?.close();
    await b?.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('A reaches B on the allowed port with data intact both ways; the denied port and an unknown CID get RST', async () => {
    const [ga, gb] = await Promise.all([
      runGuest({ script: A_SCRIPT, vhostUser: [{ kind: 'vsock', socket: path.join(dir, 'a.sock') }], timeoutMs: TIMEOUT_MS }),
      runGuest({ script: B_SCRIPT, vhostUser: [{ kind: 'vsock', socket: path.join(dir, 'b-qemu.sock'), server: true }], timeoutMs: TIMEOUT_MS }),
    ]);
    assert.equal(ga.exitCode, 0, guestTail(ga));
    assert.equal(gb.exitCode, 0, guestTail(gb));
    const [aSha, aBytes] = marker(ga.console, 'A-SENT');
    const [bSha, bBytes] = marker(gb.console, 'B-SENT');
    assert.deepEqual(marker(gb.console, 'B-RC'), ['0'], guestTail(gb));
    assert.deepEqual(marker(gb.console, 'B-GOT'), [aSha, aBytes], `what B received is what A sent\n${guestTail(gb)}`);
    assert.deepEqual(marker(ga.console, 'A-GOT'), [bSha, bBytes], `what A received is what B sent\n${guestTail(ga)}`);
    assert.notEqual(marker(ga.console, 'DENIED-RC')[0], '0', 'the connection to 4:5001 failed');
    assert.match(marker(ga.console, 'DENIED-ERR').join(' '), /Connection reset by peer/, guestTail(ga));
    assert.notEqual(marker(ga.console, 'NOPEER-RC')[0], '0', 'the connection to CID 5 failed');
    assert.deepEqual(marker(gb.console, 'B-5001'), ['untouched'], 'nothing reached B on the port policy denies');
    assert.ok(a.status().policyDenied >= 1, JSON.stringify(a.status()));
    assert.ok(logA.some((l) => /guest 3 -> 4:5001 denied by policy/.test(l)), logA.join('\n'));
    assert.equal(a.status().counters.drops.spoofed, 0);
  });
});
