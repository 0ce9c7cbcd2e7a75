// The switch's forwarding and policy, without any VM: default deny, allowed
// pairs both ways, the uplink reaching everyone, bounded learning.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { Switch } from '../src/net/switch.js';

function frame(dst: string, src: string, len = 60): Uint8Array {
  const f = new Uint8Array(len);
  const put = (mac: string, at: number): void => mac.split(':').forEach((h, i) => (f[at + i] = parseInt(h, 16)));
  put(dst, 0);
  put(src, 6);
  f[12] = 0x86;
  f[13] = 0xdd;
  return f;
}

const BCAST = 'ff:ff:ff:ff:ff:ff';
const A = '52:54:00:12:34:01';
const B = '52:54:00:12:34:02';
const C = '52:54:00:12:34:03';
const NET = '52:54:00:12:34:0a';

describe('Switch', () => {
  it('denies by default: a broadcast from a port with no allowed peer goes nowhere', () => {
    const sw = new Switch(['a', 'b', 'c']);
    assert.deepEqual(sw.route('a', frame(BCAST, A)), []);
    assert.equal(sw.counters('a')?.drops, 1, 'counted as a policy drop');
  });

  it('floods broadcasts to allowed peers only, both ways, and forwards learned unicast', () => {
    const sw = new Switch(['a', 'b', 'c'], { allow: [['a', 'b']] });
    assert.deepEqual(sw.route('a', frame(BCAST, A)), ['b']);
    assert.deepEqual(sw.route('b', frame(BCAST, B)), ['a']);
    assert.deepEqual(sw.route('c', frame(BCAST, C)), []);
    assert.deepEqual(sw.route('b', frame(A, B)), ['a'], 'learned A on port a');
    assert.deepEqual(sw.route('c', frame(A, C)), [], 'c may not reach a');
    assert.equal(sw.counters('c')?.drops, 2);
  });

  it('the uplink reaches every port and every port reaches the uplink, but not each other', () => {
    const sw = new Switch(['net', 'a', 'b'], { uplink: 'net' });
    assert.deepEqual(sw.route('a', frame(BCAST, A)), ['net']);
    assert.deepEqual(new Set(sw.route('net', frame(BCAST, NET))), new Set(['a', 'b']));
    sw.route('b', frame(BCAST, B));
    assert.deepEqual(sw.route('a', frame(B, A)), [], 'a cannot reach b through the switch');
    assert.deepEqual(sw.route('net', frame(B, NET)), ['b']);
  });

  it('bounds learning per port and forgets idle entries', () => {
    let t = 0;
    const sw = new Switch(['a', 'b'], { allow: [['a', 'b']], maxMacsPerPort: 4, ageMs: 1000, now: () => t });
    for (let i = 0; i < 100; i++) sw.route('a', frame(BCAST, `02:00:00:00:00:${i.toString(16).padStart(2, '0')}`));
    assert.equal(sw.macTable().length, 4);
    t = 5000;
    sw.expire();
    assert.equal(sw.macTable().length, 0);
  });

  it('drops runt frames and counts them', () => {
    const sw = new Switch(['a', 'b'], { allow: [['a', 'b']] });
    assert.deepEqual(sw.route('a', new Uint8Array(10)), []);
    assert.equal(sw.counters('a')?.drops, 1);
  });

  it('refuses a policy that names unknown ports', () => {
    assert.throws(() => new Switch(['a'], { allow: [['a', 'z']] }), /z is not one of the ports/);
    assert.throws(() => new Switch(['a'], { uplink: 'z' }), /--uplink z/);
  });
});
