// `prism 9p mount ADDR MOUNTPOINT [-o options]`: dial any prism address and hand the connected
// socket to the Linux 9p client (mount -t 9p -o trans=fd,rfdno=3,wfdno=3, the socket as mount's
// fd 3).
//
// 1. The option builder and the failure explanations (src/9p/mount.ts), pure.
// 2. The CLI on the host with a stand-in mount(8) first on its PATH
//    (test/fixtures/ninep-mount/bin/mount): it records its arguments and fd 3 and speaks a few
//    bytes over fd 3 with the test's server, which proves fd 3 is the dialled connection and that
//    prism reads nothing from it. Every address kind the host can dial: unix, tcp, hvsock, fd.
// 3. The real kernel in one lab guest (the host kernel has no 9p): the checkout's prism serves a
//    directory on vsock:any:564 and a Unix socket, and mounts it over vsock:1:564 (vsock_loopback,
//    util-linux mount) and over the Unix socket (busybox mount); a workload runs through both;
//    a mount of a port nobody listens on fails cleanly (test/fixtures/ninep-mount/guest.sh).
//    prism runs there as an esbuild bundle of src/cli/main.ts made by this test (about 0.2 s):
//    under TCG, tsx's loader alone costs 8-15 s per process, the bundle about 1-2 s.
import assert from 'node:assert/strict';
import { spawn, type StdioOptions } from 'node:child_process';
import { once } from 'node:events';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { pathToFileURL } from 'node:url';
import { after, before, describe, it } from 'node:test';
import {
  DEFAULT_MOUNT_MSIZE, MountOptionError, buildMountOptions, explainMountFailure, mountArgs, parseMountOptions, type MountFailure,
} from '../src/9p/mount.js';
import { REPO_ROOT, guestTail, requireLab, runHostNode, type GuestResult } from './helpers/lab.js';

const FIXTURES = path.join(REPO_ROOT, 'test/fixtures/ninep-mount');
const FAKE_MOUNT_BIN = path.join(FIXTURES, 'bin');
const MAIN = path.join(REPO_ROOT, 'src/cli/main.ts');
const BASE = 'trans=fd,rfdno=3,wfdno=3,version=9p2000.L';

// --- 1. options and explanations ----------------------------------------------------------------

describe('9p mount options (src/9p/mount.ts)', () => {
  it('sets trans=fd on fd 3, version 9p2000.L and msize 512 KiB when -o gives nothing', () => {
    assert.equal(DEFAULT_MOUNT_MSIZE, 524288);
    assert.equal(buildMountOptions([]), `${BASE},msize=524288`);
    assert.equal(buildMountOptions([''], 7), 'trans=fd,rfdno=7,wfdno=7,version=9p2000.L,msize=524288');
  });

  it('appends the user options in their order, across several -o; a user msize replaces the default', () => {
    assert.equal(buildMountOptions(['cache=loose,aname=/srv/x', 'ro,uname=alice']), `${BASE},msize=524288,cache=loose,aname=/srv/x,ro,uname=alice`);
    assert.equal(buildMountOptions(['msize=65536,access=user']), `${BASE},msize=65536,access=user`);
    assert.equal(buildMountOptions(['debug=0x1f,dfltuid=1000,dfltgid=1000,posixacl,nodevmap,locktimeout=5']), `${BASE},msize=524288,debug=0x1f,dfltuid=1000,dfltgid=1000,posixacl,nodevmap,locktimeout=5`);
  });

  it('takes version=9p2000.L without repeating it, an empty aname, values with "=", and skips empty items', () => {
    assert.equal(buildMountOptions(['version=9p2000.L,aname=,,']), `${BASE},msize=524288,aname=`);
    assert.equal(buildMountOptions(['aname=a=b']), `${BASE},msize=524288,aname=a=b`);
    assert.deepEqual(parseMountOptions(['ro,aname=x']), [{ key: 'ro', value: undefined }, { key: 'aname', value: 'x' }]);
  });

  it('accepts every cache mode, access mode and generic mount flag it lists', () => {
    for (const c of ['none', 'loose', 'fscache', 'mmap', 'readahead', 'writeback', '0x3']) assert.doesNotThrow(() => buildMountOptions([`cache=${c}`]), c);
    for (const a of ['user', 'any', 'client', '1000']) assert.doesNotThrow(() => buildMountOptions([`access=${a}`]), a);
    for (const f of ['ro', 'rw', 'nosuid', 'nodev', 'noexec', 'noatime', 'relatime', 'sync', 'dirsync', 'lazytime']) assert.doesNotThrow(() => buildMountOptions([f]), f);
  });

  it('refuses what prism sets itself (trans, rfdno, wfdno) and trans=tcp options (port, privport), saying why', () => {
    const cases: [string, RegExp][] = [
      ['trans=virtio', /^-o trans: prism sets trans=fd itself/],
      ['trans=fd', /^-o trans: prism sets trans=fd itself/],
      ['rfdno=0', /^-o rfdno: prism sets rfdno=3,wfdno=3 itself/],
      ['wfdno=1', /^-o wfdno: prism sets rfdno=3,wfdno=3 itself/],
      ['port=564', /^-o port: belongs to trans=tcp; give the server as the address instead, e\.g\. tcp:HOST:PORT/],
      ['privport', /^-o privport: belongs to trans=tcp/],
    ];
    for (const [o, message] of cases) assert.throws(() => buildMountOptions([`cache=none,${o}`]), (e: Error) => e instanceof MountOptionError && message.test(e.message), o);
  });

  it('refuses versions other than 9p2000.L', () => {
    for (const v of ['9p2000.u', '9p2000', '9P2000.L', '']) {
      assert.throws(() => buildMountOptions([`version=${v}`]), { name: 'MountOptionError', message: `-o version: prism mounts 9p2000.L only (the protocol its server speaks), got "${v}"` });
    }
    assert.throws(() => buildMountOptions(['version']), /-o version: prism mounts 9p2000\.L only/);
  });

  it('refuses unknown options (the kernel would ignore a typo), listing the known ones', () => {
    assert.throws(() => buildMountOptions(['msise=65536']), (e: Error) => e instanceof MountOptionError && /^-o msise: not a 9p mount option prism knows \(9p: msize, cache, /.test(e.message) && /noatime/.test(e.message));
    assert.throws(() => buildMountOptions(['remount']), /-o remount: not a 9p mount option/);
    assert.throws(() => buildMountOptions(['bind']), /-o bind: not a 9p mount option/);
  });

  it('refuses bad values: msize out of range or not a number, cache and access modes, numbers, flags with values, empty uname', () => {
    const cases: [string, RegExp][] = [
      ['msize=4095', /^-o msize: must be from 4096 to 16777216 bytes, got 4095$/],
      ['msize=16777217', /^-o msize: must be from 4096 to 16777216 bytes/],
      ['msize=64k', /^-o msize: must be a decimal number/],
      ['msize', /^-o msize: needs a value: msize=N$/],
      ['msize=', /^-o msize: needs a value/],
      ['cache=fast', /^-o cache: must be one of none, loose, fscache, mmap, readahead, writeback/],
      ['access=root', /^-o access: must be user, any, client or a numeric uid, got "root"$/],
      ['dfltuid=-1', /^-o dfltuid: must be a decimal number up to 4294967295, got "-1"$/],
      ['afid=4294967296', /^-o afid: must be a decimal number up to 4294967295/],
      ['debug=all', /^-o debug: must be a number \(decimal or 0x hex\)/],
      ['ro=1', /^-o ro: takes no value \(write "ro", not "ro=1"\)$/],
      ['posixacl=yes', /^-o posixacl: takes no value/],
      ['uname=', /^-o uname: needs a value: uname=NAME$/],
      ['uname', /^-o uname: needs a value/],
    ];
    for (const [o, message] of cases) assert.throws(() => buildMountOptions([o]), (e: Error) => e instanceof MountOptionError && message.test(e.message), o);
  });

  it('refuses an option given twice, also across -o, and control characters', () => {
    assert.throws(() => buildMountOptions(['cache=none,cache=loose']), { message: '-o cache: given twice' });
    assert.throws(() => buildMountOptions(['msize=8192', 'msize=8192']), { message: '-o msize: given twice' });
    assert.throws(() => buildMountOptions(['aname=a\nb']), /control characters are not allowed/);
    assert.throws(() => buildMountOptions(['aname=a\0b']), /control characters are not allowed/);
  });

  it('builds the mount(8) command line: -t 9p -o OPTIONS SOURCE MOUNTPOINT', () => {
    assert.deepEqual(mountArgs('vsock:3:564', '/mnt', `${BASE},msize=524288`), ['-t', '9p', '-o', `${BASE},msize=524288`, 'vsock:3:564', '/mnt']);
  });

  describe('explains failed mounts: what, where, what to do, and mount\'s own words', () => {
    const base: MountFailure = { address: 'vsock:3:564', mountpoint: '/mnt', status: 32, output: '', isRoot: true };
    const cases: [string, Partial<MountFailure>, RegExp][] = [
      ['util-linux without the 9p module', { output: "mount: /mnt: unknown filesystem type '9p'.\n       dmesg(1) may have more information after failed mount system call.\n" },
        /^cannot mount vsock:3:564 on \/mnt: the kernel has no 9p filesystem: load it with `modprobe 9p 9pnet_fd` \(as root\) \(mount said: mount: \/mnt: unknown filesystem type '9p'\. \/ dmesg\(1\) may have more/],
      ['busybox without the 9p module', { output: 'mount: mounting vsock:3:564 on /mnt failed: No such device\n', status: 255 }, /the kernel has no 9p filesystem: load it with `modprobe 9p 9pnet_fd`/],
      ['no fd transport', { output: 'mount: mounting x on /mnt failed: Protocol not supported' }, /the kernel's 9p fd transport is not loaded: `modprobe 9pnet_fd`/],
      ['util-linux as a user', { output: 'mount: /mnt: must be superuser to use mount.', isRoot: false }, /permission denied: mounting needs root \(CAP_SYS_ADMIN\); run prism 9p mount as root/],
      ['busybox as a user', { output: 'mount: permission denied (are you root?)', isRoot: false }, /mounting needs root/],
      ['EPERM as root (no CAP_SYS_ADMIN)', { output: 'mount: mounting x on /mnt failed: Operation not permitted' }, /mounting needs root/],
      ['the server refusing the attach', { output: 'mount: mounting x on /mnt failed: Permission denied' }, /the server refused the attach: check aname=, uname=, access=/],
      ['a missing export', { output: 'mount: mounting x on /mnt failed: No such file or directory' }, /the server has no such export: check aname=/],
      ['EINVAL', { output: 'mount: /mnt: mount(2) system call failed: Invalid argument.' }, /the kernel refused the options or the server's answer: check -o/],
      ['a broken connection', { output: 'mount: mounting x on /mnt failed: Input/output error' }, /the connection failed during the 9P handshake: is a 9P2000\.L server listening there\?/],
      ['a busy mountpoint', { output: 'mount: /mnt: vsock:3:564 already mounted or mount point busy.' }, /\/mnt is busy or already mounted: umount it first/],
      ['anything else', { output: 'mount: something new', status: 17 }, /^cannot mount vsock:3:564 on \/mnt: mount exited with status 17 \(mount said: mount: something new\)$/],
      ['a killed mount', { output: '', status: null, signal: 'SIGSEGV' }, /^cannot mount vsock:3:564 on \/mnt: mount was killed by SIGSEGV$/],
      ['a server that never answers', { output: '', status: null, signal: 'SIGKILL', timedOutAfterSec: 30 }, /^cannot mount vsock:3:564 on \/mnt: the server did not complete the 9P handshake within 30 s, so prism stopped mount; is a 9P2000\.L server listening there\?$/],
    ];
    for (const [name, f, message] of cases) {
      it(name, () => {
        assert.match(explainMountFailure({ ...base, ...f }), message);
      });
    }
  });
});

// --- 2. the CLI on the host, with a stand-in mount(8) -----------------------------------------------

interface CliRun {
  status: number | null;
  stderr: string;
  ms: number;
}

/** Runs `prism ARGS` (the checkout's CLI under tsx) with the stand-in mount first on PATH. */
async function prism(args: string[], opts: { env?: Record<string, string>; stdio3?: net.Socket; path?: string } = {}): Promise<CliRun> {
  const stdio: StdioOptions = ['ignore', 'ignore', 'pipe'];
  if (opts.stdio3) stdio.push(opts.stdio3);
  const started = performance.now();
  const child = spawn(process.execPath, ['--import', 'tsx', MAIN, ...args], {
    cwd: REPO_ROOT,
    stdio,
    env: { ...process.env, PATH: opts.path ?? `${FAKE_MOUNT_BIN}:${process.env['PATH'] ?? ''}`, ...opts.env },
  });
  // The child has its own copy of an inherited socket now; ours must not read the peer's bytes.
  opts.stdio3?.destroy();
  let stderr = '';
  child.stderr?.setEncoding('utf8').on('data', (t: string) => (stderr += t));
  const [status] = (await once(child, 'close')) as [number | null];
  return { status, stderr, ms: Math.round(performance.now() - started) };
}

/** What the stand-in mount recorded (null: it never ran). */
function fakeMountRecord(out: string): { args: string[]; fd3: string; reply: string | null } | null {
  if (!fs.existsSync(`${out}.args`)) return null;
  const read = (f: string): string | null => (fs.existsSync(f) ? fs.readFileSync(f, 'utf8') : null);
  return { args: (read(`${out}.args`) ?? '').split('\n').slice(0, -1), fd3: (read(`${out}.fd3`) ?? '').trim(), reply: read(`${out}.reply`) };
}

interface TalkServer {
  server: net.Server;
  /** What each connection sent after any handshake, once it has sent 8 bytes. */
  received: string[];
  connections: number;
}

/**
 * A server that answers the stand-in mount: reads "Tversion" and writes "Rversion". With
 * `hybrid`, it first plays the VMM's side of the hybrid-vsock handshake (CONNECT 564 / OK).
 */
function talkServer(hybrid = false): TalkServer {
  const t: TalkServer = { server: net.createServer(), received: [], connections: 0 };
  t.server.on('connection', (c) => {
    t.connections++;
    let buf = Buffer.alloc(0);
    let handshaken = !hybrid;
    c.on('data', (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      if (!handshaken) {
        const nl = buf.indexOf('\n');
        if (nl < 0) return;
        assert.equal(buf.subarray(0, nl).toString(), 'CONNECT 564');
        buf = buf.subarray(nl + 1);
        handshaken = true;
        c.write('OK 1073741824\n');
      }
      if (buf.length >= 8) {
        t.received.push(buf.subarray(0, 8).toString());
        c.end('Rversion');
      }
    });
    c.on('error', () => {});
  });
  return t;
}

async function listenOn(t: TalkServer, where: string | { host: string; port: number }): Promise<void> {
  t.server.listen(where);
  await once(t.server, 'listening');
}

describe('prism 9p mount on the host, with a stand-in mount(8)', { concurrency: true }, () => {
  let dir: string;
  let mnt: string;
  before(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'prism-9pmount-'));
    mnt = path.join(dir, 'mnt');
    fs.mkdirSync(mnt);
  });
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  /** Asserts a successful run: mount got the right command line and fd 3 was the connection. */
  function assertMounted(r: CliRun, out: string, t: TalkServer, source: string, options: string): void {
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stderr, /"msg":"9p mounted"/);
    const rec = fakeMountRecord(out);
    assert.ok(rec, 'mount ran');
    assert.deepEqual(rec.args, ['-t', '9p', '-o', options, source, mnt]);
    assert.match(rec.fd3, /^socket:\[\d+\]$/, "mount's fd 3 is a socket");
    assert.deepEqual(t.received, ['Tversion'], "the server got mount's bytes over fd 3");
    assert.equal(rec.reply, 'Rversion', "mount read the server's answer from fd 3: prism took none of it");
  }

  it('unix: mount gets -t 9p -o trans=fd,rfdno=3,wfdno=3,version=9p2000.L,msize=524288,OPTIONS unix:PATH MOUNTPOINT and the connection as fd 3', async () => {
    const t = talkServer();
    const sock = path.join(dir, 'unix.sock');
    await listenOn(t, sock);
    const out = path.join(dir, 'unix');
    const r = await prism(['9p', 'mount', `unix:${sock}`, mnt, '-o', 'cache=loose,aname=/srv', '-o', 'ro'], { env: { FAKE_MOUNT_OUT: out } });
    t.server.close();
    assertMounted(r, out, t, `unix:${sock}`, `${BASE},msize=524288,cache=loose,aname=/srv,ro`);
  });

  it('tcp: the same over a TCP connection (its fd from the libuv handle)', async () => {
    const t = talkServer();
    await listenOn(t, { host: '127.0.0.1', port: 0 });
    const port = (t.server.address() as net.AddressInfo).port;
    const out = path.join(dir, 'tcp');
    const r = await prism(['9p', 'mount', `tcp:127.0.0.1:${port}`, mnt, '-o', 'msize=65536'], { env: { FAKE_MOUNT_OUT: out } });
    t.server.close();
    assertMounted(r, out, t, `tcp:127.0.0.1:${port}`, `${BASE},msize=65536`);
  });

  it('hvsock: after the CONNECT/OK handshake with the VMM, mount gets the same connection', async () => {
    const t = talkServer(true);
    const sock = path.join(dir, 'vm.vsock');
    await listenOn(t, sock);
    const out = path.join(dir, 'hvsock');
    const r = await prism(['9p', 'mount', `hvsock:${sock}:564`, mnt], { env: { FAKE_MOUNT_OUT: out } });
    t.server.close();
    assertMounted(r, out, t, `hvsock:${sock}:564`, `${BASE},msize=524288`);
  });

  it('fd:3: an inherited connected socket that already is fd 3 goes to mount as its fd 3', async () => {
    const t = talkServer();
    const sock = path.join(dir, 'fd.sock');
    await listenOn(t, sock);
    const c = net.connect({ path: sock });
    c.pause(); // never start reading: the bytes are for mount
    await once(c, 'connect');
    const out = path.join(dir, 'fd');
    const r = await prism(['9p', 'mount', 'fd:3', mnt], { env: { FAKE_MOUNT_OUT: out }, stdio3: c });
    t.server.close();
    assertMounted(r, out, t, 'fd:3', `${BASE},msize=524288`);
  });

  it('a refused connection: exit 1, the address and what to do, and mount never runs', async () => {
    const out = path.join(dir, 'refused');
    const sock = path.join(dir, 'nobody.sock');
    const r = await prism(['9p', 'mount', `unix:${sock}`, mnt], { env: { FAKE_MOUNT_OUT: out } });
    assert.equal(r.status, 1);
    assert.equal(r.stderr, `prism: unix:${sock}: cannot connect to it: no such socket file: start the server first or check the path\n`);
    assert.equal(fakeMountRecord(out), null, 'mount did not run');
  });

  it('mount without the 9p module: exit 1, says to modprobe 9p 9pnet_fd, quotes mount', async () => {
    const t = talkServer();
    const sock = path.join(dir, 'enodev.sock');
    await listenOn(t, sock);
    const out = path.join(dir, 'enodev');
    const r = await prism(['9p', 'mount', `unix:${sock}`, mnt], { env: { FAKE_MOUNT_OUT: out, FAKE_MOUNT: 'enodev' } });
    t.server.close();
    assert.equal(r.status, 1);
    assert.match(r.stderr, new RegExp(`^prism: cannot mount unix:${sock} on ${mnt}: the kernel has no 9p filesystem: load it with \`modprobe 9p 9pnet_fd\` \\(as root\\) \\(mount said: mount: ${mnt}: unknown filesystem type '9p'\\.`));
  });

  it('mount refusing the user: exit 1, says to run as root', async () => {
    const t = talkServer();
    const sock = path.join(dir, 'eperm.sock');
    await listenOn(t, sock);
    const r = await prism(['9p', 'mount', `unix:${sock}`, mnt], { env: { FAKE_MOUNT_OUT: path.join(dir, 'eperm'), FAKE_MOUNT: 'eperm' } });
    t.server.close();
    assert.equal(r.status, 1);
    assert.match(r.stderr, /: permission denied: mounting needs root \(CAP_SYS_ADMIN\); run prism 9p mount as root \(mount said: mount: .*must be superuser/);
  });

  it('a server that never answers: --timeout 1 stops mount and says so', async () => {
    const t = talkServer();
    const sock = path.join(dir, 'hang.sock');
    await listenOn(t, sock);
    const r = await prism(['9p', 'mount', `unix:${sock}`, mnt, '--timeout', '1'], { env: { FAKE_MOUNT_OUT: path.join(dir, 'hang'), FAKE_MOUNT: 'hang' } });
    t.server.close();
    assert.equal(r.status, 1);
    assert.equal(r.stderr, `prism: cannot mount unix:${sock} on ${mnt}: the server did not complete the 9P handshake within 1 s, so prism stopped mount; is a 9P2000.L server listening there?\n`);
  });

  it('no mount program on PATH: exit 1, says to install util-linux or busybox', async () => {
    const t = talkServer();
    const sock = path.join(dir, 'nomount.sock');
    await listenOn(t, sock);
    const r = await prism(['9p', 'mount', `unix:${sock}`, mnt], { path: path.join(dir, 'empty-path') });
    t.server.close();
    assert.equal(r.status, 1);
    assert.equal(r.stderr, `prism: cannot mount unix:${sock} on ${mnt}: there is no mount program on PATH: install util-linux (mount) or busybox\n`);
  });

  it('a refused option or a bad mountpoint: exit 2 before connecting, and mount never runs', async () => {
    const t = talkServer();
    const sock = path.join(dir, 'usage.sock');
    await listenOn(t, sock);
    const out = path.join(dir, 'usage');
    const file = path.join(dir, 'a-file');
    fs.writeFileSync(file, '');
    const [opt, missing, notDir, badAddr] = await Promise.all([
      prism(['9p', 'mount', `unix:${sock}`, mnt, '-o', 'cache=loose,trans=tcp'], { env: { FAKE_MOUNT_OUT: out } }),
      prism(['9p', 'mount', `unix:${sock}`, path.join(dir, 'nope')], { env: { FAKE_MOUNT_OUT: out } }),
      prism(['9p', 'mount', `unix:${sock}`, file], { env: { FAKE_MOUNT_OUT: out } }),
      prism(['9p', 'mount', 'vsock:x:564', mnt], { env: { FAKE_MOUNT_OUT: out } }),
    ]);
    t.server.close();
    assert.deepEqual([opt.status, missing.status, notDir.status, badAddr.status], [2, 2, 2, 2]);
    assert.equal(opt.stderr, 'prism: -o trans: prism sets trans=fd itself and hands the kernel the connection it dialled\n');
    assert.equal(missing.stderr, `prism: the mountpoint ${path.join(dir, 'nope')} does not exist: create it first (mkdir -p ${path.join(dir, 'nope')})\n`);
    assert.equal(notDir.stderr, `prism: the mountpoint ${file} is not a directory\n`);
    assert.match(badAddr.stderr, /^prism: bad address "vsock:x:564"/);
    assert.equal(t.connections, 0, 'nothing connected');
    assert.equal(fakeMountRecord(out), null, 'mount did not run');
  });
});

// --- 3. the real kernel in a lab guest ---------------------------------------------------------------

const MARK = 'PRISM-9PMOUNT';
const GUEST_TIMEOUT_MS = 240_000;

interface GuestRun {
  guest: GuestResult;
  /** "TAG what" → the rest of the marker line (the last one if repeated). */
  marks: Map<string, string>;
  /** "TAG stderr" lines, in order. */
  stderr: Map<string, string[]>;
  bundleMs: number;
}

let run: Promise<GuestRun> | undefined;

/** Bundles the CLI, boots one guest for every scenario, and collects the markers. */
function guestRun(): Promise<GuestRun> {
  run ??= (async () => {
    requireLab();
    const started = performance.now();
    // esbuild comes with tsx, which runs every test here. import.meta.url keeps pointing at
    // src/sys/binding.ts so that the addon (build/Release) and package.json are found as usual.
    const esbuild = await import('esbuild');
    const built = await esbuild.build({
      entryPoints: [MAIN],
      bundle: true,
      platform: 'node',
      format: 'esm',
      target: 'node20',
      write: false,
      logLevel: 'silent',
      define: { 'import.meta.url': JSON.stringify(pathToFileURL(path.join(REPO_ROOT, 'src/sys/binding.ts')).href) },
      banner: { js: "import { createRequire as prismCreateRequire } from 'node:module'; const require = prismCreateRequire(import.meta.url);" },
    });
    const bundle = built.outputFiles[0]?.contents;
    assert.ok(bundle, 'esbuild produced the bundle');
    const bundleMs = Math.round(performance.now() - started);
    const launcher = [
      "const r = require('node:child_process').spawnSync('/bin/sh', ['test/fixtures/ninep-mount/guest.sh', process.execPath, '/tmp/prism-cli.mjs'], { stdio: 'inherit' });",
      'process.exit(r.status === null ? 99 : r.status);',
    ].join(' ');
    const guest = await runHostNode({
      args: ['-e', launcher],
      files: [{ path: '/prism-cli.mjs', data: bundle }],
      before: [
        `for m in 9p 9pnet_fd vsock_loopback; do grep -q "^$m " /proc/modules || { echo "${MARK} module $m is not loaded"; exit 9; }; done`,
        'cp /prism-cli.mjs /host/tmp/prism-cli.mjs',
      ].join('\n'),
      timeoutMs: GUEST_TIMEOUT_MS,
    });
    const marks = new Map<string, string>();
    const stderr = new Map<string, string[]>();
    for (const line of guest.console.split('\n')) {
      const m = new RegExp(`^${MARK} (\\S+) (\\S+) ?(.*)$`).exec(line);
      if (!m?.[1] || !m[2]) continue;
      const key = `${m[1]} ${m[2]}`;
      if (m[2] === 'stderr') stderr.set(m[1], [...(stderr.get(m[1]) ?? []), m[3] ?? '']);
      else marks.set(key, m[3] ?? '');
    }
    assert.equal(guest.exitCode, 0, `the guest script exited ${String(guest.exitCode)}\n${guestTail(guest, 80)}`);
    return { guest, marks, stderr, bundleMs };
  })();
  return run;
}

function mark(g: GuestRun, key: string): string {
  const v = g.marks.get(key);
  assert.ok(v !== undefined, `no "${MARK} ${key}" line from the guest\n${guestTail(g.guest, 80)}`);
  return v;
}

/** "a=1 b=x" → { a: '1', b: 'x' } */
function fields(s: string): Record<string, string> {
  return Object.fromEntries(s.split(' ').filter((w) => w.includes('=')).map((w) => [w.slice(0, w.indexOf('=')), w.slice(w.indexOf('=') + 1)]));
}

function assertWorkload(g: GuestRun, tag: string): void {
  assert.equal(mark(g, `${tag} readback`), `hello over ${tag}`, 'what was written reads back through the mount');
  assert.equal(mark(g, `${tag} served`), `hello over ${tag}`, 'and is in the served directory');
  assert.deepEqual(mark(g, `${tag} ls`).trim().split(' ').sort(), ['big', `hello-${tag}.txt`]);
  const big = fields(mark(g, `${tag} big`));
  assert.match(big['served'] ?? '', /^[0-9a-f]{64}$/);
  assert.equal(big['mounted'], big['served'], 'the 4 MiB served file reads back intact');
  const w = fields(mark(g, `${tag} written`));
  assert.equal(w['bytes'], String(4 * 1024 * 1024));
  assert.match(w['local'] ?? '', /^[0-9a-f]{64}$/);
  assert.equal(w['served'], w['local'], 'the 4 MiB file written through the mount arrived intact');
  assert.equal(w['mounted'], w['local']);
  assert.equal(mark(g, `${tag} rm`), 'gone', 'rm through the mount removed the files from the export');
}

describe('prism 9p mount in a lab guest: the Linux 9p client on the dialled socket (trans=fd)', () => {
  it('A: mounts vsock:1:564 (vsock_loopback) with util-linux mount; prism exits and the kernel keeps the connection', async (t) => {
    const g = await guestRun();
    const m = fields(mark(g, 'A mount'));
    assert.equal(m['rc'], '0', (g.stderr.get('A') ?? []).join('\n'));
    const line = mark(g, 'A mounts');
    assert.match(line, /^vsock:local:564 \/tmp\/9pmount\/a 9p \S*\btrans=fd,rfd=3,wfd=3\b/);
    assert.match(line, /\bmsize=524288\b/);
    assert.match(line, /\baccess=client\b/, '9p2000.L (access=client is its default)');
    assert.ok(g.stderr.get('A')?.some((l) => l.includes('"msg":"9p mounted"')), 'prism logged the mount');
    t.diagnostic(`guest ${Math.round(g.guest.durationMs)} ms (boot to /init ${Math.round(g.guest.initMs ?? -1)} ms, bundle ${g.bundleMs} ms); serve up ${fields(mark(g, 'serve listening'))['ms']} ms; mount A ${m['ms']} ms, workload ${fields(mark(g, 'A workload'))['ms']} ms; mount B ${fields(mark(g, 'B mount'))['ms']} ms, workload ${fields(mark(g, 'B workload'))['ms']} ms; refused mount C ${fields(mark(g, 'C mount'))['ms']} ms; script ${fields(mark(g, 'all done'))['ms']} ms`);
  });

  it('A: write and read back, ls, sha256 of a 4 MiB file each way, rm, through the vsock mount', async () => {
    assertWorkload(await guestRun(), 'A');
  });

  it('B: mounts unix:PATH with busybox mount and -o msize=262144,noatime, which reach the kernel', async () => {
    const g = await guestRun();
    assert.equal(fields(mark(g, 'B mount'))['rc'], '0', (g.stderr.get('B') ?? []).join('\n'));
    const line = mark(g, 'B mounts');
    assert.match(line, /^unix:\/tmp\/9pmount\/9p\.sock \/tmp\/9pmount\/b 9p \S*\btrans=fd,rfd=3,wfd=3\b/);
    assert.match(line, /\bmsize=262144\b/);
    assert.match(line, /\bnoatime\b/);
  });

  it('B: the same workload through the unix mount', async () => {
    assertWorkload(await guestRun(), 'B');
  });

  it('A and B see each other\'s writes (cache=none), and both unmount', async () => {
    const g = await guestRun();
    assert.equal(mark(g, 'AB cross'), 'from A');
    assert.deepEqual(fields(mark(g, 'A umount')), { rc: '0', left: '0' });
    assert.deepEqual(fields(mark(g, 'B umount')), { rc: '0', left: '0' });
  });

  it('C: mounting vsock:1:565, where nobody listens, exits 1 saying so, and mounts nothing', async () => {
    const g = await guestRun();
    assert.equal(fields(mark(g, 'C mount'))['rc'], '1');
    assert.equal(mark(g, 'C mounts'), 'none');
    assert.deepEqual(g.stderr.get('C'), ['prism: vsock:local:565: cannot connect to it: the peer reset the connection (for vsock: nothing is listening on that port)']);
  });

  it('the server logged no errors and stopped cleanly on SIGTERM', async () => {
    const g = await guestRun();
    assert.deepEqual(fields(mark(g, 'serve stopped')), { exit: '0', errors: '0' });
  });
});
