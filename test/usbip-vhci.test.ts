// The importer's vhci-hcd sysfs layer against a stand-in sysfs directory: status parsing as Linux
// 6.1 prints it, port choice by speed, the attach and detach lines written, and errors that say
// what to do.
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { UsbSpeed, Vhci, VhciError, VdevStatus, devidOf, parseVhciStatus, pickFreePort } from '../src/usbip/vhci.js';

// As drivers/usb/usbip/vhci_sysfs.c (6.1) prints it: two hs ports, two ss ports, port 1 in use.
const STATUS = `hub port sta spd dev      sockfd local_busid
hs  0000 004 000 00000000 000000 0-0
hs  0001 006 003 00010002 000005 3-1
ss  0002 004 000 00000000 000000 0-0
ss  0003 004 000 00000000 000000 0-0
`;

function fakeSysfs(status = STATUS, extra: Record<string, string> = {}): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'prism-vhci-'));
  fs.writeFileSync(path.join(dir, 'status'), status);
  fs.writeFileSync(path.join(dir, 'attach'), '');
  fs.writeFileSync(path.join(dir, 'detach'), '');
  for (const [n, t] of Object.entries(extra)) fs.writeFileSync(path.join(dir, n), t);
  return dir;
}

describe('vhci status', () => {
  it('parses ports, status, speed, devid, sockfd and local busid', () => {
    const ports = parseVhciStatus(STATUS);
    assert.equal(ports.length, 4);
    assert.deepEqual(ports[1], { hub: 'hs', port: 1, status: VdevStatus.USED, speed: UsbSpeed.HIGH, devid: 0x10002, sockfd: 5, localBusid: '3-1' });
    assert.equal(ports[0]?.status, VdevStatus.NULL);
  });

  it('refuses lines it does not understand instead of guessing', () => {
    assert.throws(() => parseVhciStatus('hs 0000 garbage\n'), VhciError);
  });

  it('picks the lowest free port on the hub the speed needs', () => {
    const ports = parseVhciStatus(STATUS);
    assert.equal(pickFreePort(ports, UsbSpeed.HIGH), 0);
    assert.equal(pickFreePort(ports, UsbSpeed.FULL), 0);
    assert.equal(pickFreePort(ports, UsbSpeed.SUPER), 2);
    assert.equal(pickFreePort(ports.filter((p) => p.port !== 0), UsbSpeed.HIGH), null, 'port 1 is used');
  });

  it('devid is busnum << 16 | devnum, and refuses values that do not fit', () => {
    assert.equal(devidOf(3, 2), 0x30002);
    assert.equal(devidOf(0xffff, 0xffff), 0xffff_ffff);
    assert.throws(() => devidOf(0x10000, 1), RangeError);
  });
});

describe('Vhci on a stand-in sysfs', () => {
  it('lists the ports of every controller (status, status.1) in order', () => {
    const dir = fakeSysfs(STATUS, { 'status.1': 'hub port sta spd dev      sockfd local_busid\nhs  0008 004 000 00000000 000000 0-0\n' });
    assert.deepEqual(new Vhci(dir).ports().map((p) => p.port), [0, 1, 2, 3, 8]);
    fs.rmSync(dir, { recursive: true });
  });

  it('attach writes "PORT SOCKFD DEVID SPEED" for a free port and returns the port', () => {
    const dir = fakeSysfs();
    const port = new Vhci(dir).attach(7, devidOf(1, 4), UsbSpeed.HIGH);
    assert.equal(port, 0);
    assert.equal(fs.readFileSync(path.join(dir, 'attach'), 'utf8'), `0 7 ${0x10004} 3`);
    fs.rmSync(dir, { recursive: true });
  });

  it('attach says when no port is free, detach refuses an empty port and writes a used one', () => {
    const full = STATUS.replace('hs  0000 004', 'hs  0000 006');
    const dir = fakeSysfs(full);
    const vhci = new Vhci(dir);
    assert.throws(() => vhci.attach(7, 1, UsbSpeed.HIGH), /no free hs port on vhci: detach a device first/);
    assert.throws(() => vhci.detach(2), /has no device attached/);
    assert.throws(() => vhci.detach(99), /has no port 99/);
    vhci.detach(1);
    assert.equal(fs.readFileSync(path.join(dir, 'detach'), 'utf8'), '1');
    fs.rmSync(dir, { recursive: true });
  });

  it('a missing vhci says to load the module', () => {
    assert.throws(() => new Vhci('/nonexistent/vhci_hcd.0').ports(), /modprobe vhci-hcd/);
  });
});
