// The prism command line: help for every area and verb, usage errors, and the
// relay forwarding real connections and stopping cleanly on SIGTERM.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { once } from 'node:events';

const root = path.join(import.meta.dirname, '..');
const main = path.join(root, 'src/cli/main.ts');

function prism(...args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, ['--import', 'tsx', main, ...args], { cwd: root, encoding: 'utf8', timeout: 30_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

describe('prism CLI', () => {
  it('--help lists the areas', () => {
    const r = prism('--help');
    assert.equal(r.status, 0);
    assert.match(r.stdout, /Usage: prism/);
    assert.match(r.stdout, /sys\s+facts about this machine/);
    assert.match(r.stdout, /transport\s+prism addresses/);
    assert.match(r.stdout, /9p\s+hardened 9P2000\.L/);
    assert.match(r.stdout, /net\s+the inter-VM network switch/);
  });

  for (const [area, verb] of [['sys', 'probe'], ['transport', 'check'], ['transport', 'relay'], ['9p', 'serve'], ['9p', 'ls'], ['9p', 'put'], ['net', 'switch'], ['net', 'status']] as const) {
    it(`${area} ${verb} --help describes the verb`, () => {
      const r = prism(area, verb, '--help');
      assert.equal(r.status, 0, r.stderr);
      assert.match(r.stdout, new RegExp(`Usage: prism ${area} ${verb}`));
    });
  }

  it('sys probe --json reports openat2 and vsock on this machine', () => {
    const r = prism('sys', 'probe', '--json');
    assert.equal(r.status, 0, r.stderr);
    const p = JSON.parse(r.stdout) as { openat2: boolean; vsock: { available: boolean }; memfd: boolean; eventfd: boolean };
    assert.equal(p.openat2, true);
    assert.equal(p.memfd, true);
    assert.equal(p.eventfd, true);
    assert.equal(typeof p.vsock.available, 'boolean');
  });

  it('transport check prints canonical addresses and exits 2 on a bad one, showing the grammar', () => {
    const ok = prism('transport', 'check', 'tcp:[::1]:564', 'vsock:any:5');
    assert.equal(ok.status, 0);
    assert.equal(ok.stdout, 'tcp:[::1]:564\nvsock:any:5\n');
    const bad = prism('transport', 'check', 'tcp:localhost');
    assert.equal(bad.status, 2);
    assert.match(bad.stderr, /^prism: bad address "tcp:localhost": missing ":PORT"/);
    assert.match(bad.stderr, /hvsock:PATH:PORT/);
  });

  it('transport relay forwards unix to tcp both ways, logs each connection, and stops on SIGTERM', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'prism-cli-'));
    const front = path.join(dir, 'front.sock');
    const echo = net.createServer((c) => c.pipe(c)).listen(0, '127.0.0.1');
    await once(echo, 'listening');
    const port = (echo.address() as net.AddressInfo).port;
    const child = spawn(process.execPath, ['--import', 'tsx', main, 'transport', 'relay', '--listen', `unix:${front}`, '--to', `tcp:127.0.0.1:${port}`], { cwd: root });
    let stderr = '';
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    const deadline = Date.now() + 20_000;
    while (!stderr.includes('relay listening')) {
      assert.ok(Date.now() < deadline, `relay did not start: ${stderr}`);
      await new Promise((r) => setTimeout(r, 50));
    }
    const c = net.connect(front);
    const payload = Buffer.alloc(256 * 1024, 7);
    const got: Buffer[] = [];
    c.on('data', (d: Buffer) => got.push(d));
    c.end(payload);
    await once(c, 'close');
    assert.ok(Buffer.concat(got).equals(payload), 'every byte came back through the relay');
    while (!stderr.includes('connection closed')) {
      assert.ok(Date.now() < deadline, `no close log: ${stderr}`);
      await new Promise((r) => setTimeout(r, 50));
    }
    child.kill('SIGTERM');
    const [code] = (await once(child, 'exit')) as [number | null];
    echo.close();
    assert.equal(code, 0);
    const lines = stderr.trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
    const accepted = lines.find((l) => l.msg === 'connection accepted');
    const closed = lines.find((l) => l.msg === 'connection closed');
    assert.equal(accepted?.to, `tcp:127.0.0.1:${port}`);
    assert.equal(closed?.bytesIn, payload.length);
    assert.equal(closed?.bytesOut, payload.length);
    assert.ok(lines.some((l) => l.msg === 'relay stopped'));
    assert.equal(fs.existsSync(front), false, 'the socket file is removed on stop');
  });

  it('transport relay names the address it could not listen on', () => {
    const r = prism('transport', 'relay', '--listen', 'unix:/nonexistent-dir/x.sock', '--to', 'tcp:127.0.0.1:1');
    assert.equal(r.status, 1);
    assert.match(r.stderr, /prism: unix:\/nonexistent-dir\/x\.sock: cannot listen on it: the directory \/nonexistent-dir does not exist: create it first/);
  });
});
