// The hardened passthrough filesystem core: kernel-enforced confinement,
// name checks, refusals of special files, setuid/setgid stripping, read-only.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { PassthroughFs, type PassthroughNode } from '../src/fs/passthrough.js';
import { BaseFileSystem, type FsNode } from '../src/fs/core.js';
import { errnoOf } from '../src/fs/errors.js';
import * as sys from '../src/sys/index.js';

const K = sys.constants;
const b = (s: string): Buffer => Buffer.from(s);

async function errno(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (e) {
    return sys.errnoName(errnoOf(e));
  }
  return 'no error';
}

describe('passthrough filesystem core', () => {
  let top: string;
  let exportDir: string;
  let pfs: PassthroughFs;
  const held: PassthroughNode[] = [];
  const walk = async (...names: string[]): Promise<PassthroughNode> => {
    let n = pfs.root();
    for (const name of names) {
      const next = await pfs.lookup(n, b(name));
      held.push(next);
      n = next;
    }
    return n;
  };

  before(async () => {
    top = fs.mkdtempSync(path.join(os.tmpdir(), 'prism-core-'));
    exportDir = path.join(top, 'export');
    fs.mkdirSync(path.join(exportDir, 'dir/sub'), { recursive: true });
    fs.writeFileSync(path.join(top, 'secret'), 'outside');
    fs.writeFileSync(path.join(exportDir, 'dir/file'), 'inside');
    fs.symlinkSync('/etc', path.join(exportDir, 'abs'));
    fs.symlinkSync('../secret', path.join(exportDir, 'rel-out'));
    fs.symlinkSync('file', path.join(exportDir, 'dir/rel-in'));
    pfs = await PassthroughFs.open(exportDir);
  });
  after(() => {
    for (const n of held) pfs.release(n);
    pfs.close();
    fs.rmSync(top, { recursive: true, force: true });
  });

  it('walks and reads a file beneath the export', async () => {
    const n = await walk('dir', 'file');
    const fd = await pfs.open(n, K.O_RDONLY);
    assert.equal(fs.readFileSync(fd, 'utf8'), 'inside');
    fs.closeSync(fd);
  });

  it('.. at the root stays at the root; .. elsewhere goes to the parent', async () => {
    const up = await pfs.lookup(pfs.root(), b('..'));
    assert.equal(up, pfs.root());
    const sub = await walk('dir', 'sub');
    const parent = await pfs.lookup(sub, b('..'));
    held.push(parent);
    assert.equal((await pfs.getattr(parent)).ino, fs.statSync(path.join(exportDir, 'dir'), { bigint: true }).ino);
  });

  it('refuses names that are not single components', async () => {
    for (const bad of ['', 'a/b', '../secret', '/etc', 'x\0y']) {
      const code = await errno(pfs.lookup(pfs.root(), b(bad)));
      assert.equal(code, 'EINVAL', `lookup ${JSON.stringify(bad)}`);
    }
    assert.equal(await errno(pfs.lookup(pfs.root(), b('x'.repeat(256)))), 'ENAMETOOLONG');
    assert.equal(await errno(pfs.mkdir(pfs.root(), b('..'), 0o755)), 'EINVAL');
  });

  it('never follows symlinks: absolute and escaping links are nodes that cannot be opened', async () => {
    for (const name of ['abs', 'rel-out']) {
      const n = await walk(name);
      assert.equal(n.type, 'symlink');
      assert.equal(await errno(pfs.open(n, K.O_RDONLY)), 'ELOOP');
      assert.equal(await errno(pfs.lookup(n, b('passwd'))), 'ENOTDIR');
    }
    assert.equal((await pfs.readlink(await walk('rel-out'))).toString(), '../secret');
  });

  it('keeps a walked directory bound to its inode when it is swapped for a symlink', async () => {
    fs.mkdirSync(path.join(exportDir, 'swap'));
    fs.writeFileSync(path.join(exportDir, 'swap/f'), 'original');
    const dir = await walk('swap');
    // The attacker's move: rename the directory away and put a symlink to the outside in its place.
    fs.renameSync(path.join(exportDir, 'swap'), path.join(exportDir, 'swapped-away'));
    fs.symlinkSync(top, path.join(exportDir, 'swap'));
    fs.writeFileSync(path.join(top, 'f'), 'outside');
    const f = await pfs.lookup(dir, b('f'));
    held.push(f);
    const fd = await pfs.open(f, K.O_RDONLY);
    assert.equal(fs.readFileSync(fd, 'utf8'), 'original');
    fs.closeSync(fd);
    // A fresh walk meets the symlink and stops there.
    const fresh = await walk('swap');
    assert.equal(fresh.type, 'symlink');
  });

  it('refuses to open FIFOs, sockets and device nodes, but lets a client create a FIFO', async () => {
    const fifo = await pfs.mknod(pfs.root(), b('fifo'), K.S_IFIFO | 0o644, { major: 0, minor: 0 });
    held.push(fifo);
    assert.equal(fifo.type, 'fifo');
    assert.equal(await errno(pfs.open(fifo, K.O_RDONLY)), 'EACCES');
    assert.equal(await errno(pfs.create(pfs.root(), b('fifo'), K.O_RDWR, 0o644)), 'EEXIST', 'create never opens an existing node');
    const null_ = await pfs.mknod(pfs.root(), b('null'), K.S_IFCHR | 0o666, { major: 1, minor: 3 });
    held.push(null_);
    assert.equal(null_.type, 'chardev');
    assert.equal((await pfs.getattr(null_)).rdev, 0x103n);
    assert.equal(await errno(pfs.open(null_, K.O_RDWR)), 'EACCES');
    assert.equal(await errno(pfs.getxattr(null_, b('user.x'))), 'ENOTSUP', 'EOPNOTSUPP (same number as ENOTSUP on Linux)');
  });

  it('strips setuid and setgid from create, mkdir, mknod and setattr', async () => {
    const { node, fd } = await pfs.create(pfs.root(), b('suid'), K.O_RDWR, 0o6755);
    held.push(node);
    fs.closeSync(fd);
    assert.equal((await pfs.getattr(node)).mode & 0o7777, 0o755 & ~process.umask());
    await pfs.setattr(node, { mode: 0o6777 });
    assert.equal((await pfs.getattr(node)).mode & 0o7777, 0o777);
    const d = await pfs.mkdir(pfs.root(), b('sgid-dir'), 0o2777);
    held.push(d);
    assert.equal((await pfs.getattr(d)).mode & 0o6000, 0);
  });

  it('setattr sets size, owner and times on the node itself', async () => {
    const { node, fd } = await pfs.create(pfs.root(), b('attrs'), K.O_RDWR, 0o644);
    held.push(node);
    fs.writeSync(fd, 'hello world');
    fs.closeSync(fd);
    await pfs.setattr(node, { size: 5n, uid: 4321, gid: 4322, atime: { sec: 10, nsec: 1 }, mtime: { sec: 20, nsec: 2 } });
    const a = await pfs.getattr(node);
    assert.deepEqual([a.size, a.uid, a.gid, a.atime.sec, a.mtime.sec, a.mtime.nsec], [5n, 4321, 4322, 10, 20, 2]);
  });

  it('link, rename, unlink, symlink and readdir with resumable offsets', async () => {
    const dir = await pfs.mkdir(pfs.root(), b('ops'), 0o755);
    held.push(dir);
    const { node, fd } = await pfs.create(dir, b('a'), K.O_WRONLY, 0o644);
    held.push(node);
    fs.closeSync(fd);
    await pfs.link(node, dir, b('hard'));
    assert.equal((await pfs.getattr(node)).nlink, 2n);
    await pfs.rename(dir, b('hard'), dir, b('renamed'));
    const sl = await pfs.symlink(dir, b('sl'), b('/anywhere/at/all'));
    held.push(sl);
    assert.equal((await pfs.readlink(sl)).toString(), '/anywhere/at/all');
    for (let i = 0; i < 100; i++) fs.writeFileSync(path.join(exportDir, 'ops', `n${i}`), '');
    const dfd = await pfs.open(dir, K.O_RDONLY);
    const first = await pfs.readdir(dfd, 0n, 1024);
    const resumeAt = first[first.length - 1];
    assert.ok(resumeAt);
    const rest = await pfs.readdir(dfd, resumeAt.offset, 1 << 16);
    const names = new Set([...first, ...rest].map((e) => e.name.toString()));
    assert.ok(names.has('renamed') && names.has('sl') && names.has('n99') && names.has('a'));
    assert.equal(names.size, first.length + rest.length, 'no entry seen twice');
    fs.closeSync(dfd);
    await pfs.unlink(dir, b('renamed'), false);
    assert.equal(await errno(pfs.unlink(pfs.root(), b('ops'), true)), 'ENOTEMPTY');
  });

  it('xattrs on files, statfs, locks', async () => {
    const { node, fd } = await pfs.create(pfs.root(), b('xa'), K.O_RDWR, 0o644);
    held.push(node);
    await pfs.setxattr(node, b('user.k'), b('v'), 0);
    assert.deepEqual(await pfs.getxattr(node, b('user.k')), b('v'));
    assert.ok((await pfs.listxattr(node)).some((n) => n.equals(b('user.k'))));
    await pfs.removexattr(node, b('user.k'));
    assert.ok((await pfs.statfs(pfs.root())).bsize > 0n);
    const fd2 = await pfs.open(node, K.O_RDWR);
    assert.equal(await pfs.lock(fd, { kind: 'write', start: 0n, length: 0n }), true);
    assert.equal(await pfs.lock(fd2, { kind: 'read', start: 0n, length: 1n }), false);
    assert.equal((await pfs.getlock(fd2, { kind: 'read', start: 0n, length: 1n }))?.kind, 'write');
    fs.closeSync(fd);
    fs.closeSync(fd2);
  });

  it('a read-only export refuses every write with EROFS', async () => {
    const ro = await PassthroughFs.open(exportDir, { readOnly: true });
    const f = await ro.lookup(ro.root(), b('dir'));
    const file = await ro.lookup(f, b('file'));
    assert.equal(await errno(ro.open(file, K.O_WRONLY)), 'EROFS');
    assert.equal(await errno(ro.open(file, K.O_RDONLY | K.O_TRUNC)), 'EROFS');
    assert.equal(await errno(ro.create(ro.root(), b('new'), K.O_RDWR, 0o644)), 'EROFS');
    assert.equal(await errno(ro.mkdir(ro.root(), b('new'), 0o755)), 'EROFS');
    assert.equal(await errno(ro.setattr(file, { size: 0n })), 'EROFS');
    assert.equal(await errno(ro.unlink(f, b('file'), false)), 'EROFS');
    assert.equal(await errno(ro.rename(f, b('file'), f, b('x'))), 'EROFS');
    assert.equal(await errno(ro.setxattr(file, b('user.a'), b('b'), 0)), 'EROFS');
    const fd = await ro.open(file, K.O_RDONLY);
    assert.equal(fs.readFileSync(fd, 'utf8'), 'inside');
    fs.closeSync(fd);
    ro.release(file);
    ro.release(f);
    ro.close();
  });

  it('an export that is not a directory is refused with its path', async () => {
    await assert.rejects(PassthroughFs.open(path.join(exportDir, 'dir/file')), /cannot open the export directory .*dir\/file/);
  });
});

describe('BaseFileSystem', () => {
  it('answers ENOSYS for every operation an implementation leaves out', async () => {
    class Empty extends BaseFileSystem<FsNode> {
      private readonly r: FsNode = { type: 'dir', ino: 1n, dev: 1n };
      root(): FsNode { return this.r; }
      retain(n: FsNode): FsNode { return n; }
      release(): void {}
    }
    const e = new Empty();
    assert.equal(await errno(e.lookup(e.root(), b('x'))), 'ENOSYS');
    assert.equal(await errno(e.open(e.root(), 0)), 'ENOSYS');
    assert.equal(await errno(e.readdir(0, 0n, 4096)), 'ENOSYS');
    assert.equal(await errno(e.lock(0, { kind: 'read', start: 0n, length: 0n })), 'ENOSYS');
  });
});
