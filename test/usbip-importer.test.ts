// The importer against a scripted USB/IP server on a Unix socket and a stand-in vhci sysfs:
// OP_REQ_DEVLIST, OP_REQ_IMPORT then the socket's fd written to vhci's attach, and refusals
// explained. (The real vhci-hcd takes the fd in a lab guest: see the usbip guest tests.)
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { OpStatus, RequestReader, encode, type DeviceRecord } from '../src/codecs/usbip/index.js';
import { listen, type Listener } from '../src/transport/index.js';
import * as sys from '../src/sys/index.js';
import { attachDevice, listDevices, tuneVsockBuffer } from '../src/usbip/importer.js';
import { Vhci } from '../src/usbip/vhci.js';

const DEVICE: DeviceRecord = {
  path: '/sys/devices/prism/emulated/1-1', busid: '1-1', busnum: 1, devnum: 2, speed: 3,
  idVendor: 0x1d6b, idProduct: 0x0104, bcdDevice: 0x0100, bDeviceClass: 0, bDeviceSubClass: 0, bDeviceProtocol: 0,
  bConfigurationValue: 1, bNumConfigurations: 1, bNumInterfaces: 1,
};

describe('usbip importer', () => {
  let dir: string;
  let server: Listener;
  const seen: string[] = [];

  before(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'prism-usbip-imp-'));
    server = await listen(`unix:${path.join(dir, 'usbip.sock')}`);
    server.on('connection', ({ stream }) => {
      const reader = new RequestReader();
      stream.on('data', (chunk: Buffer) => {
        reader.push(chunk);
        for (let m = reader.next(); m; m = reader.next()) {
          seen.push(m.type === 'OP_REQ_IMPORT' ? `${m.type} ${m.busid}` : m.type);
          if (m.type === 'OP_REQ_DEVLIST') {
            stream.write(encode({ type: 'OP_REP_DEVLIST', status: 0, devices: [{ device: DEVICE, interfaces: [{ bInterfaceClass: 8, bInterfaceSubClass: 6, bInterfaceProtocol: 0x50 }] }] }));
          } else if (m.type === 'OP_REQ_IMPORT') {
            const ok = m.busid === '1-1';
            stream.write(encode({ type: 'OP_REP_IMPORT', status: ok ? OpStatus.OK : OpStatus.NA, device: ok ? DEVICE : null }));
          }
        }
      });
    });
  });

  after(async () => {
    await server.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  function fakeVhci(): { vhci: Vhci; attachFile: string } {
    const root = fs.mkdtempSync(path.join(dir, 'vhci-'));
    fs.writeFileSync(path.join(root, 'status'), 'hub port sta spd dev      sockfd local_busid\nhs  0000 004 000 00000000 000000 0-0\nss  0001 004 000 00000000 000000 0-0\n');
    fs.writeFileSync(path.join(root, 'attach'), '');
    return { vhci: new Vhci(root), attachFile: path.join(root, 'attach') };
  }

  it('lists the exported devices with their interfaces', async () => {
    const list = await listDevices(`unix:${path.join(dir, 'usbip.sock')}`);
    assert.equal(list.length, 1);
    assert.equal(list[0]?.device.busid, '1-1');
    assert.deepEqual(list[0]?.interfaces, [{ bInterfaceClass: 8, bInterfaceSubClass: 6, bInterfaceProtocol: 0x50 }]);
  });

  it('imports a device and gives vhci the connected socket: port, fd, devid, speed', async () => {
    const { vhci, attachFile } = fakeVhci();
    const r = await attachDevice(`unix:${path.join(dir, 'usbip.sock')}`, '1-1', { vhci });
    assert.equal(r.port, 0, 'a high-speed device goes on the first hs port');
    const [port, fd, devid, speed] = fs.readFileSync(attachFile, 'utf8').split(' ').map(Number);
    assert.equal(port, 0);
    assert.ok(Number.isInteger(fd) && (fd as number) > 2, `a socket fd: ${fd}`);
    assert.equal(devid, (1 << 16) | 2);
    assert.equal(speed, 3);
    assert.ok(seen.includes('OP_REQ_IMPORT 1-1'));
    assert.equal(r.vsockBuffer, null, 'a unix connection keeps its buffers');
  });

  it('tuneVsockBuffer sizes an AF_VSOCK socket, leaves others alone and only warns on failure', () => {
    const warnings: string[] = [];
    const warn = (m: string): void => void warnings.push(m);
    // A listening vsock socket stands in for the connected one (this host cannot connect vsock).
    const listener = sys.listenVsock(sys.constants.VMADDR_CID_ANY, sys.constants.VMADDR_PORT_ANY);
    assert.equal(tuneVsockBuffer(listener.fd, 4 * 1024 * 1024, warn), 4 * 1024 * 1024);
    assert.equal(sys.getsockoptU64(listener.fd, sys.constants.AF_VSOCK, sys.VSOCK_OPT.BUFFER_SIZE), 4n * 1024n * 1024n);
    assert.equal(tuneVsockBuffer(listener.fd, 0, warn), null, '0 leaves the socket alone');
    assert.equal(sys.getsockoptU64(listener.fd, sys.constants.AF_VSOCK, sys.VSOCK_OPT.BUFFER_SIZE), 4n * 1024n * 1024n);
    listener.close();
    const [a, b] = sys.unixSocketPair();
    assert.equal(tuneVsockBuffer(a.fd, 2 * 1024 * 1024, warn), null, 'not vsock: untouched');
    a.destroy();
    b.destroy();
    assert.deepEqual(warnings, []);
    const closed = fs.openSync('/dev/null', 'r');
    fs.closeSync(closed);
    assert.equal(tuneVsockBuffer(closed, 2 * 1024 * 1024, warn), null, 'a failure is not thrown');
    assert.equal(warnings.length, 1);
    assert.match(warnings[0] ?? '', /could not set the vsock buffer .*EBADF/);
  });

  it('explains a refused import and writes nothing to vhci', async () => {
    const { vhci, attachFile } = fakeVhci();
    await assert.rejects(attachDevice(`unix:${path.join(dir, 'usbip.sock')}`, '9-9', { vhci }), /importing 9-9 .*not available to this importer/);
    assert.equal(fs.readFileSync(attachFile, 'utf8'), '');
  });

  it('fails before dialling when vhci-hcd is missing', async () => {
    await assert.rejects(attachDevice(`unix:${path.join(dir, 'usbip.sock')}`, '1-1', { vhci: new Vhci(path.join(dir, 'none')) }), /modprobe vhci-hcd/);
  });
});
