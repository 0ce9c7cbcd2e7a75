// memfd, mmap into ArrayBuffers, eventfd readiness.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as sys from '../src/sys/index.js';

describe('memfd and mmap', () => {
  it('an mmapped memfd shows writes made through another mapping', () => {
    const fd = sys.memfdCreate('prism-test');
    fs.ftruncateSync(fd, 2 * 4096);
    const a = new Uint8Array(sys.mmap(fd, 2 * 4096));
    const b = new Uint8Array(sys.mmap(fd, 4096, { offset: 4096 }));
    a[4096 + 10] = 0xab;
    assert.equal(b[10], 0xab);
    b[0] = 0x5a;
    assert.equal(a[4096], 0x5a);
    // And the file itself sees the bytes.
    const viaRead = Buffer.alloc(1);
    fs.readSync(fd, viaRead, 0, 1, 4096);
    assert.equal(viaRead[0], 0x5a);
    sys.munmap(a.buffer);
    sys.munmap(b.buffer);
    fs.closeSync(fd);
  });

  it('munmap detaches the buffer, and a second munmap is EINVAL', () => {
    const fd = sys.memfdCreate('prism-detach');
    fs.ftruncateSync(fd, 4096);
    const ab = sys.mmap(fd, 4096);
    sys.munmap(ab);
    assert.equal(ab.byteLength, 0, 'no view can reach the unmapped pages');
    assert.throws(() => sys.munmap(ab), (e: unknown) => e instanceof sys.SysError && e.code === 'EINVAL');
    assert.throws(() => sys.munmap(new ArrayBuffer(8)), (e: unknown) => e instanceof sys.SysError && e.code === 'EINVAL');
    fs.closeSync(fd);
  });

  it('mappings left to the garbage collector are released without crashing', () => {
    const fd = sys.memfdCreate('prism-gc');
    fs.ftruncateSync(fd, 1 << 20);
    for (let i = 0; i < 200; i++) new Uint8Array(sys.mmap(fd, 1 << 20))[i] = i & 0xff;
    (globalThis as { gc?: () => void }).gc?.();
    const check = new Uint8Array(sys.mmap(fd, 1 << 20));
    assert.equal(check[199], 199);
    fs.closeSync(fd);
  });

  it('refuses bad lengths, offsets and closed fds', () => {
    const fd = sys.memfdCreate('prism-bad');
    assert.throws(() => sys.mmap(fd, 0), RangeError);
    assert.throws(() => sys.mmap(fd, 4096, { offset: 100 }), RangeError);
    assert.throws(() => sys.memfdCreate('x'.repeat(300)), RangeError);
    fs.closeSync(fd);
    assert.throws(() => sys.mmap(fd, 4096), (e: unknown) => e instanceof sys.SysError && e.code === 'EBADF');
  });
});

describe('memfd seals', () => {
  it('reads and adds seals; a shrink-sealed memfd cannot be truncated; a plain file has none', () => {
    const fd = sys.memfdCreate('prism-seals', { allowSealing: true });
    try {
      fs.ftruncateSync(fd, 8192);
      assert.equal(sys.getSeals(fd), 0);
      sys.addSeals(fd, sys.constants.F_SEAL_SHRINK | sys.constants.F_SEAL_GROW);
      assert.equal(sys.getSeals(fd), sys.constants.F_SEAL_SHRINK | sys.constants.F_SEAL_GROW);
      assert.throws(() => fs.ftruncateSync(fd, 4096), /EPERM/);
    } finally {
      sys.closeFd(fd);
    }
    const unsealable = sys.memfdCreate('prism-no-seals');
    assert.equal(sys.getSeals(unsealable), sys.constants.F_SEAL_SEAL, 'a memfd without MFD_ALLOW_SEALING is born with F_SEAL_SEAL');
    sys.closeFd(unsealable);
    const file = fs.openSync('/proc/self/stat', 'r');
    assert.equal(sys.getSeals(file), null);
    fs.closeSync(file);
    assert.throws(() => sys.getSeals(file), /EBADF/);
  });
});

describe('eventfd', () => {
  it('write then read returns the sum and resets the counter', () => {
    const e = new sys.EventFd();
    assert.equal(e.read(), null);
    assert.equal(e.write(2), true);
    assert.equal(e.write(3n), true);
    assert.equal(e.read(), 5n);
    assert.equal(e.read(), null);
    e.close();
  });

  it('calls the readiness callback on the event loop when the counter is signalled through plain fs.write', async () => {
    const e = new sys.EventFd();
    const values: bigint[] = [];
    const seen = new Promise<void>((resolve) => {
      e.onReadable((value) => {
        values.push(value);
        if (values.reduce((x, y) => x + y, 0n) >= 3n) resolve();
      });
    });
    const buf = Buffer.alloc(8);
    buf.writeBigUInt64LE(3n);
    fs.writeSync(e.fd, buf);
    await seen;
    assert.equal(values.reduce((x, y) => x + y, 0n), 3n);
    e.close();
  });

  it('refuses a zero or negative increment', () => {
    const e = new sys.EventFd();
    assert.throws(() => e.write(0), RangeError);
    assert.throws(() => e.write(-1), RangeError);
    e.close();
  });
});
