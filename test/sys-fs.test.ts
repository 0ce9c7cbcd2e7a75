// Filesystem wrappers: confinement by openat2's RESOLVE_* flags, the *at family,
// getdents64 cookies, xattrs, statfs, OFD locks, and bad input that never reaches C++.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { execFileSync } from 'node:child_process';
import * as sys from '../src/sys/index.js';
import { SysError } from '../src/sys/index.js';

const K = sys.constants;
const CONFINED = K.RESOLVE_BENEATH | K.RESOLVE_NO_XDEV | K.RESOLVE_NO_MAGICLINKS;

async function rejectsWith(p: Promise<unknown>, code: string): Promise<void> {
  await assert.rejects(p, (e: unknown) => {
    assert.ok(e instanceof SysError, `expected SysError, got ${String(e)}`);
    assert.equal(e.code, code);
    return true;
  });
}

describe('openat2 confinement', () => {
  let root: string;
  let rootFd: number;
  before(async () => {
    root = fs.mkdtempSync(path.join(os.tmpdir(), 'prism-fs-'));
    fs.mkdirSync(path.join(root, 'export/sub'), { recursive: true });
    fs.writeFileSync(path.join(root, 'secret'), 'outside');
    fs.writeFileSync(path.join(root, 'export/sub/inside'), 'inside');
    fs.symlinkSync('/etc/passwd', path.join(root, 'export/abs-link'));
    fs.symlinkSync('../../secret', path.join(root, 'export/sub/rel-escape'));
    fs.symlinkSync('inside', path.join(root, 'export/sub/rel-ok'));
    rootFd = await sys.openat2(K.AT_FDCWD, path.join(root, 'export'), { flags: K.O_PATH | K.O_DIRECTORY });
  });
  after(() => {
    sys.closeFd(rootFd);
    fs.rmSync(root, { recursive: true, force: true });
  });

  it('reports openat2 as available on this kernel', () => {
    assert.equal(sys.features.openat2, true);
  });

  it('opens a file beneath the root and reads it with Node fs', async () => {
    const fd = await sys.openat2(rootFd, 'sub/inside', { flags: K.O_RDONLY, resolve: CONFINED });
    try {
      assert.equal(fs.readFileSync(fd, 'utf8'), 'inside');
    } finally {
      fs.closeSync(fd);
    }
  });

  it('follows a relative symlink that stays beneath the root', async () => {
    const fd = await sys.openat2(rootFd, 'sub/rel-ok', { flags: K.O_RDONLY, resolve: CONFINED });
    fs.closeSync(fd);
  });

  it('openat2Cached resolves cached paths on this thread, with the same confinement', async () => {
    assert.equal(sys.features.cachedLookups, true, 'this kernel has RESOLVE_CACHED');
    await sys.statx(rootFd, 'sub/inside'); // make sure the dentries are cached
    const fd = sys.openat2Cached(rootFd, 'sub/inside', { flags: K.O_RDONLY, resolve: CONFINED });
    assert.ok(fd !== null);
    assert.equal(fs.readFileSync(fd, 'utf8'), 'inside');
    fs.closeSync(fd);
    // An escape is refused here (EXDEV) or left to the pool path (null), which refuses it.
    for (const escape of ['../secret', 'abs-link', 'sub/rel-escape']) {
      const how = { flags: K.O_RDONLY, resolve: CONFINED };
      let code = 'opened';
      try {
        const got = sys.openat2Cached(rootFd, escape, how) ?? (await sys.openat2(rootFd, escape, how));
        fs.closeSync(got);
      } catch (e) {
        code = e instanceof SysError ? e.code : String(e);
      }
      assert.equal(code, 'EXDEV', escape);
    }
    const st = sys.fstatxCached(rootFd, K.STATX_TYPE | K.STATX_INO);
    assert.equal(st.mode & K.S_IFMT, K.S_IFDIR);
  });

  it('preadCached reads page-cached bytes on this thread and reports end of file as 0', async () => {
    const fd = await sys.openat2(rootFd, 'sub/inside', { flags: K.O_RDONLY, resolve: CONFINED });
    fs.readFileSync(fd); // into the page cache
    const buf = Buffer.alloc(16);
    // ext4 (these machines' /tmp) supports RWF_NOWAIT; other filesystems may answer null.
    assert.equal(sys.preadCached(fd, buf, 2, 10, 0), 6);
    assert.equal(buf.subarray(2, 8).toString(), 'inside');
    assert.equal(sys.preadCached(fd, buf, 0, 16, 100), 0, 'end of file');
    assert.throws(() => sys.preadCached(fd, buf, 10, 10, 0), RangeError);
    fs.closeSync(fd);
  });

  it('refuses .. past the root with EXDEV', async () => {
    await rejectsWith(sys.openat2(rootFd, '../secret', { flags: K.O_RDONLY, resolve: CONFINED }), 'EXDEV');
    await rejectsWith(sys.openat2(rootFd, 'sub/../../secret', { flags: K.O_RDONLY, resolve: CONFINED }), 'EXDEV');
  });

  it('refuses an absolute path and an absolute symlink', async () => {
    await rejectsWith(sys.openat2(rootFd, '/etc/passwd', { flags: K.O_RDONLY, resolve: CONFINED }), 'EXDEV');
    await rejectsWith(sys.openat2(rootFd, 'abs-link', { flags: K.O_RDONLY, resolve: CONFINED }), 'EXDEV');
  });

  it('refuses a relative symlink that climbs out', async () => {
    await rejectsWith(sys.openat2(rootFd, 'sub/rel-escape', { flags: K.O_RDONLY, resolve: CONFINED }), 'EXDEV');
  });

  it('refuses /proc/self/fd magic links with ELOOP', async () => {
    const procFd = await sys.openat2(K.AT_FDCWD, '/proc/self/fd', { flags: K.O_PATH | K.O_DIRECTORY });
    try {
      await rejectsWith(sys.openat2(procFd, String(rootFd), { flags: K.O_PATH, resolve: K.RESOLVE_NO_MAGICLINKS }), 'ELOOP');
      // The same lookup without the flag succeeds: the refusal is the flag's doing.
      const fd = await sys.openat2(procFd, String(rootFd), { flags: K.O_PATH });
      sys.closeFd(fd);
    } finally {
      sys.closeFd(procFd);
    }
  });

  it('refuses to cross a bind mount inside the tree with RESOLVE_NO_XDEV (private mount namespace)', () => {
    const target = path.join(root, 'export/mnt');
    fs.mkdirSync(target);
    const source = fs.mkdtempSync(path.join(os.tmpdir(), 'prism-bind-'));
    fs.writeFileSync(path.join(source, 'f'), 'bound');
    const child = path.join(import.meta.dirname, 'fixtures', 'xdev-child.ts');
    const script = `mount --bind "$1" "$2" && exec "$3" --import tsx "$4" "$5"`;
    const out = execFileSync('unshare', ['-m', '--propagation', 'private', 'sh', '-c', script, 'sh', source, target, process.execPath, child, path.join(root, 'export')], {
      encoding: 'utf8',
      cwd: path.join(import.meta.dirname, '..'),
    });
    fs.rmSync(source, { recursive: true, force: true });
    const result = JSON.parse(out.trim().split('\n').pop() ?? '{}') as Record<string, string>;
    assert.equal(result.withoutXdev, 'bound', 'the bind mount is visible without the flag');
    assert.equal(result.withXdev, 'EXDEV');
  });
});

describe('the *at family', () => {
  let dir: string;
  let dfd: number;
  before(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'prism-at-'));
    dfd = await sys.openat2(K.AT_FDCWD, dir, { flags: K.O_PATH | K.O_DIRECTORY });
  });
  after(() => {
    sys.closeFd(dfd);
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('creates a file with O_CREAT and reports it with statx', async () => {
    const fd = await sys.openat2(dfd, 'f', { flags: K.O_CREAT | K.O_EXCL | K.O_WRONLY, mode: 0o640, resolve: CONFINED });
    fs.writeSync(fd, 'hello');
    fs.closeSync(fd);
    const st = await sys.statx(dfd, 'f');
    assert.equal(st.mode & K.S_IFMT, K.S_IFREG);
    assert.equal(st.mode & 0o777, 0o640 & ~process.umask());
    assert.equal(st.size, 5n);
    assert.equal(st.uid, process.getuid?.());
  });

  it('statx with AT_EMPTY_PATH describes an O_PATH fd itself', async () => {
    const st = await sys.fstatx(dfd);
    assert.equal(st.mode & K.S_IFMT, K.S_IFDIR);
  });

  it('mkdirat, symlinkat, readlinkat, linkat, unlinkat work relative to the dir fd', async () => {
    await sys.mkdirat(dfd, 'd', 0o755);
    assert.ok(fs.statSync(path.join(dir, 'd')).isDirectory());
    await sys.symlinkat('target/of\xff-link', dfd, 'l');
    assert.equal((await sys.readlinkat(dfd, 'l')).toString(), 'target/of\xff-link');
    fs.writeFileSync(path.join(dir, 'orig'), 'x');
    await sys.linkat(dfd, 'orig', dfd, 'hard');
    assert.equal(fs.statSync(path.join(dir, 'orig')).nlink, 2);
    await sys.unlinkat(dfd, 'hard');
    await sys.unlinkat(dfd, 'd', K.AT_REMOVEDIR);
    assert.equal(fs.existsSync(path.join(dir, 'd')), false);
  });

  it('mknodat makes a FIFO', async () => {
    await sys.mknodat(dfd, 'fifo', K.S_IFIFO | 0o600);
    assert.ok(fs.lstatSync(path.join(dir, 'fifo')).isFIFO());
  });

  it('renameat2 honours RENAME_NOREPLACE and RENAME_EXCHANGE', async () => {
    fs.writeFileSync(path.join(dir, 'a'), 'A');
    fs.writeFileSync(path.join(dir, 'b'), 'B');
    await rejectsWith(sys.renameat2(dfd, 'a', dfd, 'b', K.RENAME_NOREPLACE), 'EEXIST');
    await sys.renameat2(dfd, 'a', dfd, 'b', K.RENAME_EXCHANGE);
    assert.equal(fs.readFileSync(path.join(dir, 'a'), 'utf8'), 'B');
    assert.equal(fs.readFileSync(path.join(dir, 'b'), 'utf8'), 'A');
  });

  it('fchmodat and fchownat change mode and owner', async () => {
    fs.writeFileSync(path.join(dir, 'm'), '');
    await sys.fchmodat(dfd, 'm', 0o604);
    assert.equal(fs.statSync(path.join(dir, 'm')).mode & 0o7777, 0o604);
    await sys.fchownat(dfd, 'm', 1234, -1, K.AT_SYMLINK_NOFOLLOW);
    assert.equal(fs.statSync(path.join(dir, 'm')).uid, 1234);
  });

  it('utimensat sets times, honours omit, and works on the fd itself with AT_EMPTY_PATH', async () => {
    fs.writeFileSync(path.join(dir, 't'), '');
    await sys.utimensat(dfd, 't', { sec: 1000, nsec: 5 }, { sec: 2000, nsec: 7 });
    let st = await sys.statx(dfd, 't');
    assert.deepEqual([st.atime.sec, st.atime.nsec, st.mtime.sec, st.mtime.nsec], [1000, 5, 2000, 7]);
    await sys.utimensat(dfd, 't', 'omit', { sec: 3000, nsec: 0 });
    st = await sys.statx(dfd, 't');
    assert.deepEqual([st.atime.sec, st.mtime.sec], [1000, 3000]);
    const pfd = await sys.openat2(dfd, 't', { flags: K.O_PATH });
    await sys.utimensat(pfd, '', { sec: 4000, nsec: 0 }, 'omit', K.AT_EMPTY_PATH);
    sys.closeFd(pfd);
    assert.equal((await sys.statx(dfd, 't')).atime.sec, 4000);
  });

  it('getdents64 returns d_off cookies that resume a listing exactly', async () => {
    const sub = path.join(dir, 'many');
    fs.mkdirSync(sub);
    for (let i = 0; i < 300; i++) fs.writeFileSync(path.join(sub, `entry-${i}`), '');
    const fd = await sys.openat2(dfd, 'many', { flags: K.O_RDONLY | K.O_DIRECTORY });
    try {
      const all: sys.Dirent[] = [];
      for (;;) {
        const batch = await sys.getdents64(fd, { bufferSize: 1024 });
        if (batch.length === 0) break;
        all.push(...batch);
      }
      const names = all.map((e) => e.name.toString()).filter((n) => n.startsWith('entry-'));
      assert.equal(names.length, 300);
      const mid = all[100];
      assert.ok(mid);
      const rest = await sys.getdents64(fd, { offset: mid.off, bufferSize: 4096 });
      assert.equal(rest[0]?.name.toString(), all[101]?.name.toString());
    } finally {
      fs.closeSync(fd);
    }
  });

  it('sets, lists, gets and removes user xattrs', async () => {
    fs.writeFileSync(path.join(dir, 'x'), '');
    const fd = await sys.openat2(dfd, 'x', { flags: K.O_RDONLY });
    try {
      await sys.fsetxattr(fd, 'user.prism', Buffer.from([1, 2, 3]));
      await rejectsWith(sys.fsetxattr(fd, 'user.prism', 'again', K.XATTR_CREATE), 'EEXIST');
      assert.ok((await sys.flistxattr(fd)).includes('user.prism'));
      assert.deepEqual(await sys.fgetxattr(fd, 'user.prism'), Buffer.from([1, 2, 3]));
      assert.equal(await sys.fgetxattr(fd, 'user.prism', 0), 3);
      await sys.fremovexattr(fd, 'user.prism');
      await rejectsWith(sys.fgetxattr(fd, 'user.prism'), 'ENODATA');
    } finally {
      fs.closeSync(fd);
    }
  });

  it('fstatfs reports the filesystem', async () => {
    const st = await sys.fstatfs(dfd);
    assert.ok(st.bsize > 0n);
    assert.ok(st.namelen >= 255n);
  });

  it('OFD locks conflict between two opens of one file and clear on unlock', async () => {
    fs.writeFileSync(path.join(dir, 'lock'), 'data');
    const a = await sys.openat2(dfd, 'lock', { flags: K.O_RDWR });
    const b = await sys.openat2(dfd, 'lock', { flags: K.O_RDWR });
    try {
      assert.equal(await sys.ofdSetLock(a, { type: 'write', start: 0, len: 10 }), true);
      assert.equal(await sys.ofdSetLock(b, { type: 'read', start: 5, len: 1 }), false);
      const holder = await sys.ofdGetLock(b, { type: 'write', start: 0, len: 0 });
      assert.deepEqual(holder && { type: holder.type, start: holder.start, len: holder.len, pid: holder.pid }, { type: 'write', start: 0n, len: 10n, pid: -1 });
      assert.equal(await sys.ofdSetLock(b, { type: 'read', start: 10, len: 5 }), true, 'a range beside the lock is free');
      await sys.ofdSetLock(a, { type: 'unlock', start: 0, len: 0 });
      assert.equal(await sys.ofdSetLock(b, { type: 'write', start: 0, len: 5 }), true);
    } finally {
      fs.closeSync(a);
      fs.closeSync(b);
    }
  });
});

describe('bad input and closed fds', () => {
  it('rejects wrong types and ranges before any syscall', async () => {
    await assert.rejects(sys.openat2(-5, 'x', { flags: 0 }), RangeError);
    await assert.rejects(sys.openat2(3.5, 'x', { flags: 0 }), TypeError);
    await assert.rejects(sys.openat2(K.AT_FDCWD, 'a\0b', { flags: 0 }), TypeError);
    await assert.rejects(sys.openat2(K.AT_FDCWD, 'x'.repeat(5000), { flags: 0 }), RangeError);
    await assert.rejects(sys.openat2(K.AT_FDCWD, 'x', { flags: 0, mode: 0o644 }), RangeError);
    await assert.rejects(sys.statx(K.AT_FDCWD, 42 as unknown as string), TypeError);
    await assert.rejects(sys.getdents64(0, { bufferSize: 1 }), RangeError);
    await assert.rejects(sys.utimensat(K.AT_FDCWD, 'x', { sec: 0, nsec: 2e9 }, 'now'), RangeError);
    await assert.rejects(sys.fsetxattr(0, '', 'v'), RangeError);
    await assert.rejects(sys.ofdSetLock(0, { type: 'exclusive' as 'write', start: 0, len: 0 }), TypeError);
  });

  it('a closed fd used again is EBADF, not a crash', async () => {
    const fd = await sys.openat2(K.AT_FDCWD, os.tmpdir(), { flags: K.O_RDONLY | K.O_DIRECTORY });
    fs.closeSync(fd);
    await rejectsWith(sys.statx(fd, '', { flags: K.AT_EMPTY_PATH }), 'EBADF');
    await rejectsWith(sys.getdents64(fd), 'EBADF');
    await rejectsWith(sys.fstatfs(fd), 'EBADF');
    await rejectsWith(sys.openat2(fd, 'x', { flags: 0 }), 'EBADF');
  });

  it('a SysError names the syscall, the path and the errno', async () => {
    await assert.rejects(sys.openat2(K.AT_FDCWD, '/nonexistent/prism', { flags: 0 }), (e: unknown) => {
      assert.ok(e instanceof SysError);
      assert.equal(e.syscall, 'openat2');
      assert.equal(e.errno, 2);
      assert.equal(e.path, '/nonexistent/prism');
      assert.match(e.message, /openat2 '\/nonexistent\/prism' failed: ENOENT/);
      return true;
    });
  });
});
