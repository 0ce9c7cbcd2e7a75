// kernel:BUSID against a fake sysfs tree in a temporary directory, with a fake kernel that reacts
// to writes the way usbip-host does (bind creates usbip_status, usbip_sockfd makes it 2 and takes
// its own reference to the socket): the device record as usbipd reads it, the bind and unbind
// writes of `usbip bind` / `usbip unbind`, errors that name the path and what to do, the status
// checks, and the server's hand-off over a socketpair: the fd number goes to usbip_sockfd, the
// reply follows, and prism reads nothing more (bytes sent afterwards wait in the socket for the
// kernel's reference).
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { Duplex } from 'node:stream';
import { afterEach, describe, it } from 'node:test';
import { OpStatus, ReplyReader, encode, type OpRepImport, type UsbipReply, type UsbipRequest } from '../src/codecs/usbip/index.js';
import * as sys from '../src/sys/index.js';
import { DeviceUnavailableError } from '../src/usbip/device.js';
import { KernelDevice, KernelDeviceError, KernelSpecError, SdevStatus, Sysfs, openKernelDevice, parseKernelSpec, readDeviceInfo } from '../src/usbip/kernel.js';
import { dial, listen } from '../src/transport/index.js';
import { UsbipPolicy } from '../src/usbip/policy.js';
import { UsbipServer, type LogFn } from '../src/usbip/server.js';

const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

// --- a fake sysfs and kernel ----------------------------------------------------------------------

interface FakeDeviceAttrs {
  busid?: string;
  busnum?: string;
  devnum?: string;
  speed?: string;
  bDeviceClass?: string;
  bConfigurationValue?: string;
  bNumInterfaces?: string;
  driver?: string | null;
  interfaces?: [string, string, string][];
}

/** Records every write, then does what usbip-host and the USB core would do. */
class FakeKernel extends Sysfs {
  readonly writes: [string, string][] = [];
  /** The fd numbers written to usbip_sockfd. */
  readonly sockfds: number[] = [];
  /** Called with the fd written to usbip_sockfd, inside the write (as sockfd_lookup runs). */
  onSockfd: ((fd: number) => void) | null = null;

  override write(rel: string, text: string, missing?: string): void {
    this.writes.push([rel, text]);
    super.write(rel, text, missing);
    const dev = (busid: string): string => this.path(`bus/usb/devices/${busid}`);
    let m: RegExpExecArray | null;
    if ((m = /^bus\/usb\/drivers\/([^/]+)\/unbind$/.exec(rel))) {
      fs.rmSync(path.join(dev(text), 'driver'), { force: true });
      if (m[1] === 'usbip-host') for (const f of ['usbip_status', 'usbip_sockfd']) fs.rmSync(path.join(dev(text), f), { force: true });
    } else if (rel === 'bus/usb/drivers/usbip-host/bind') {
      this.link(text, 'usbip-host');
      fs.writeFileSync(path.join(dev(text), 'usbip_status'), '1\n');
      fs.writeFileSync(path.join(dev(text), 'usbip_sockfd'), '');
    } else if (rel === 'bus/usb/drivers/usbip-host/rebind' || rel === 'bus/usb/drivers_probe') {
      this.link(text, 'usb');
    } else if ((m = /^bus\/usb\/devices\/([^/]+)\/usbip_sockfd$/.exec(rel))) {
      const fd = Number(text);
      this.sockfds.push(fd);
      this.onSockfd?.(fd);
      fs.writeFileSync(path.join(dev(m[1] as string), 'usbip_status'), '2\n');
    }
  }

  link(busid: string, driver: string): void {
    const l = this.path(`bus/usb/devices/${busid}/driver`);
    fs.rmSync(l, { force: true });
    fs.symlinkSync(`../../../../bus/usb/drivers/${driver}`, l);
  }

  usbipStatus(busid: string): number {
    return Number(this.read(`bus/usb/devices/${busid}/usbip_status`));
  }

  setStatus(busid: string, status: number): void {
    fs.writeFileSync(this.path(`bus/usb/devices/${busid}/usbip_status`), `${status}\n`);
  }
}

function fakeSysfs(attrs: FakeDeviceAttrs = {}, opts: { usbipHost?: boolean } = {}): FakeKernel {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'prism-sysfs-'));
  cleanups.push(() => fs.rmSync(root, { recursive: true, force: true }));
  const k = new FakeKernel(root);
  const busid = attrs.busid ?? '2-1.3';
  const write = (rel: string, text: string): void => {
    fs.mkdirSync(path.dirname(k.path(rel)), { recursive: true });
    fs.writeFileSync(k.path(rel), text);
  };
  for (const d of ['usb', ...(opts.usbipHost === false ? [] : ['usbip-host'])]) {
    for (const f of ['bind', 'unbind', ...(d === 'usbip-host' ? ['match_busid', 'rebind'] : [])]) write(`bus/usb/drivers/${d}/${f}`, '');
  }
  write('bus/usb/drivers_probe', '');
  const dev = `bus/usb/devices/${busid}`;
  const values: Record<string, string> = {
    busnum: attrs.busnum ?? busid.slice(0, busid.indexOf('-')), devnum: attrs.devnum ?? '7', speed: attrs.speed ?? '480',
    idVendor: '1d6b', idProduct: '0104', bcdDevice: '0510', bDeviceClass: attrs.bDeviceClass ?? '00', bDeviceSubClass: '00', bDeviceProtocol: '00',
    bConfigurationValue: attrs.bConfigurationValue ?? '1', bNumConfigurations: '1', bNumInterfaces: attrs.bNumInterfaces ?? ' 1',
  };
  for (const [name, v] of Object.entries(values)) write(`${dev}/${name}`, `${v}\n`);
  for (const [i, [c, s, p]] of (attrs.interfaces ?? [['08', '06', '50']]).entries()) {
    write(`bus/usb/devices/${busid}:${values['bConfigurationValue']}.${i}/bInterfaceClass`, `${c}\n`);
    write(`bus/usb/devices/${busid}:${values['bConfigurationValue']}.${i}/bInterfaceSubClass`, `${s}\n`);
    write(`bus/usb/devices/${busid}:${values['bConfigurationValue']}.${i}/bInterfaceProtocol`, `${p}\n`);
  }
  const driver = attrs.driver === undefined ? 'usb' : attrs.driver;
  if (driver !== null) {
    k.link(busid, driver);
    if (driver === 'usbip-host') {
      write(`${dev}/usbip_status`, '1\n');
      write(`${dev}/usbip_sockfd`, '');
    }
  }
  return k;
}

// --- the device record ----------------------------------------------------------------------------

describe('kernel: the device record from sysfs', () => {
  it('reads what usbipd reads: ids in hex, numbers in decimal, speed strings, the active configuration\'s interfaces', () => {
    const k = fakeSysfs({ interfaces: [['08', '06', '50'], ['ff', '42', '01']], bNumInterfaces: ' 2' });
    assert.deepEqual(readDeviceInfo(k, '2-1.3'), {
      busid: '2-1.3', busnum: 2, devnum: 7, speed: 3, idVendor: 0x1d6b, idProduct: 0x0104, bcdDevice: 0x0510,
      bDeviceClass: 0, bDeviceSubClass: 0, bDeviceProtocol: 0, bConfigurationValue: 1, bNumConfigurations: 1,
      interfaces: [{ bInterfaceClass: 8, bInterfaceSubClass: 6, bInterfaceProtocol: 0x50 }, { bInterfaceClass: 0xff, bInterfaceSubClass: 0x42, bInterfaceProtocol: 1 }],
    });
  });

  it('maps every sysfs speed string to its USB_SPEED_*', () => {
    for (const [text, speed] of [['1.5', 1], ['12', 2], ['480', 3], ['5000', 5], ['10000', 6], ['20000', 6]] as const) {
      assert.equal(readDeviceInfo(fakeSysfs({ speed: text }), '2-1.3').speed, speed, text);
    }
    assert.throws(() => readDeviceInfo(fakeSysfs({ speed: 'fast' }), '2-1.3'), (e: unknown) => e instanceof KernelDeviceError && /2-1\.3\/speed: unknown speed "fast"/.test(e.message));
  });

  it('an unconfigured device (after binding to usbip-host) has configuration 0 and no interfaces, as usbipd accepts', () => {
    const info = readDeviceInfo(fakeSysfs({ bConfigurationValue: '', bNumInterfaces: '' }), '2-1.3');
    assert.equal(info.bConfigurationValue, 0);
    assert.deepEqual(info.interfaces, []);
  });

  it('a value that is not what sysfs prints is an error naming the file', () => {
    assert.throws(() => readDeviceInfo(fakeSysfs({ devnum: '7x' }), '2-1.3'), (e: unknown) => e instanceof KernelDeviceError && e.path.endsWith('/bus/usb/devices/2-1.3/devnum') && /unexpected value "7x"/.test(e.message));
    assert.throws(() => readDeviceInfo(fakeSysfs({ busnum: '3' }), '2-1.3'), /busnum says bus 3/);
    assert.throws(() => readDeviceInfo(fakeSysfs({ bNumInterfaces: ' 2' }), '2-1.3'), (e: unknown) => e instanceof KernelDeviceError && /2-1\.3:1\.1\/bInterfaceClass/.test(e.message));
  });

  it('a bus ID that is no device here names /sys/bus/usb/devices/BUSID; interfaces and root hubs are not bus IDs of devices', () => {
    const k = fakeSysfs();
    assert.throws(() => readDeviceInfo(k, '9-9'), (e: unknown) => e instanceof KernelSpecError && e.message.includes(`${k.root}/bus/usb/devices/9-9 does not exist`));
    for (const bad of ['2-1.3:1.0', 'usb1', '1-0', '../1-1', '1-1/..', '', '1-1 ']) assert.throws(() => parseKernelSpec(`kernel:${bad}`), KernelSpecError, bad);
    assert.equal(parseKernelSpec('kernel:2-1.3'), '2-1.3');
    assert.throws(() => parseKernelSpec('kernel'), KernelSpecError);
  });
});

// --- binding --------------------------------------------------------------------------------------

describe('kernel: binding to usbip-host and giving the device back', () => {
  it('open() binds as `usbip bind` does and close() gives it back as `usbip unbind` does', async () => {
    const k = fakeSysfs();
    const d = KernelDevice.open('2-1.3', { sysfs: k });
    assert.deepEqual(k.writes, [
      ['bus/usb/drivers/usb/unbind', '2-1.3'],
      ['bus/usb/drivers/usbip-host/match_busid', 'add 2-1.3'],
      ['bus/usb/drivers/usbip-host/bind', '2-1.3'],
    ]);
    assert.equal(k.driverOf('2-1.3'), 'usbip-host');
    assert.equal(d.status(), SdevStatus.AVAILABLE);
    assert.equal(d.info.interfaces.length, 1, 'the record was read while the device was configured');
    k.writes.length = 0;
    await d.close();
    assert.deepEqual(k.writes, [
      ['bus/usb/drivers/usbip-host/unbind', '2-1.3'],
      ['bus/usb/drivers/usbip-host/match_busid', 'del 2-1.3'],
      ['bus/usb/drivers/usbip-host/rebind', '2-1.3'],
    ]);
    assert.equal(k.driverOf('2-1.3'), 'usb');
    await d.close(); // once only
    assert.equal(k.writes.length, 3);
  });

  it('a device without a driver is bound without an unbind; a refused rebind falls back to drivers_probe', async () => {
    const k = fakeSysfs({ driver: null });
    const d = KernelDevice.open('2-1.3', { sysfs: k });
    assert.deepEqual(k.writes.map(([p]) => p), ['bus/usb/drivers/usbip-host/match_busid', 'bus/usb/drivers/usbip-host/bind']);
    fs.rmSync(k.path('bus/usb/drivers/usbip-host/rebind'));
    k.writes.length = 0;
    await d.close();
    assert.deepEqual(k.writes.map(([p]) => p), ['bus/usb/drivers/usbip-host/unbind', 'bus/usb/drivers/usbip-host/match_busid', 'bus/usb/drivers/usbip-host/rebind', 'bus/usb/drivers_probe']);
  });

  it('a device bound to usbip-host already is used as it is and left as it was', async () => {
    const k = fakeSysfs({ driver: 'usbip-host' });
    const d = KernelDevice.open('2-1.3', { sysfs: k });
    assert.equal(d.bound, false);
    await d.close();
    assert.deepEqual(k.writes, []);
  });

  it('without the usbip-host module the error names the driver directory and says modprobe usbip-host', () => {
    const k = fakeSysfs({}, { usbipHost: false });
    assert.throws(() => KernelDevice.open('2-1.3', { sysfs: k }), (e: unknown) => e instanceof KernelDeviceError && e.message === `${k.root}/bus/usb/drivers/usbip-host does not exist: load the module: modprobe usbip-host`);
    assert.deepEqual(k.writes, [], 'nothing was unbound');
  });

  it('a failed bind takes the bus ID out of match_busid again and lets the host drivers probe the device', () => {
    const k = fakeSysfs();
    fs.rmSync(k.path('bus/usb/drivers/usbip-host/bind'));
    fs.mkdirSync(k.path('bus/usb/drivers/usbip-host/bind')); // writing it fails (EISDIR)
    assert.throws(() => KernelDevice.open('2-1.3', { sysfs: k }), (e: unknown) => e instanceof KernelDeviceError && /cannot write "2-1\.3" to .*usbip-host\/bind: EISDIR: the kernel refused it/.test(e.message));
    assert.deepEqual(k.writes.slice(1), [
      ['bus/usb/drivers/usbip-host/match_busid', 'add 2-1.3'],
      ['bus/usb/drivers/usbip-host/bind', '2-1.3'],
      ['bus/usb/drivers/usbip-host/match_busid', 'del 2-1.3'],
      ['bus/usb/drivers_probe', '2-1.3'],
    ]);
  });

  it('hubs and devices that vhci-hcd made are refused before anything is written', () => {
    const hub = fakeSysfs({ bDeviceClass: '09' });
    assert.throws(() => KernelDevice.open('2-1.3', { sysfs: hub }), (e: unknown) => e instanceof KernelSpecError && /is a hub/.test(e.message));
    assert.deepEqual(hub.writes, []);
    const k = fakeSysfs();
    // Move the device under a vhci_hcd platform device and link it back, as sysfs shows imports.
    const real = k.path('devices/platform/vhci_hcd.0/usb3/2-1.3');
    fs.mkdirSync(path.dirname(real), { recursive: true });
    fs.renameSync(k.path('bus/usb/devices/2-1.3'), real);
    fs.symlinkSync(real, k.path('bus/usb/devices/2-1.3'));
    assert.throws(() => KernelDevice.open('2-1.3', { sysfs: k }), (e: unknown) => e instanceof KernelSpecError && /imported through vhci-hcd/.test(e.message));
    assert.deepEqual(k.writes, []);
  });

  it('openKernelDevice turns a missing device into a spec error naming the spec and the path', async () => {
    const k = fakeSysfs();
    await assert.rejects(openKernelDevice('kernel:3-1', { busid: '1-1', busnum: 1, devnum: 2 }, { sysfs: k }), (e: unknown) => e instanceof KernelSpecError && e.message.startsWith('--device kernel:3-1: no USB device 3-1:') && e.message.includes('/bus/usb/devices/3-1 does not exist'));
    const d = await openKernelDevice('kernel:2-1.3', { busid: '1-1', busnum: 1, devnum: 2 }, { sysfs: k });
    assert.equal(d.info.busid, '2-1.3', 'a kernel device keeps its real bus ID');
    await d.close?.();
  });
});

// --- status and the hand-off ----------------------------------------------------------------------

describe('kernel: usbip_status and adoptConnection', () => {
  it('writes the fd to usbip_sockfd only while usbip_status is 1; 2 is busy, 3 an error; released once it is 1 again', async () => {
    const k = fakeSysfs();
    const d = KernelDevice.open('2-1.3', { sysfs: k, pollMs: 10 });
    cleanups.push(() => d.close());
    k.setStatus('2-1.3', SdevStatus.USED);
    assert.throws(() => d.adoptConnection(5), (e: unknown) => e instanceof DeviceUnavailableError && e.reason === 'busy');
    k.setStatus('2-1.3', SdevStatus.ERROR);
    assert.throws(() => d.adoptConnection(5), (e: unknown) => e instanceof DeviceUnavailableError && e.reason === 'error');
    assert.deepEqual(k.sockfds, []);
    k.setStatus('2-1.3', SdevStatus.AVAILABLE);
    const a = d.adoptConnection(5);
    assert.deepEqual(k.sockfds, [5]);
    assert.throws(() => d.adoptConnection(6), (e: unknown) => e instanceof DeviceUnavailableError && e.reason === 'busy', 'one importer at a time');
    k.setStatus('2-1.3', SdevStatus.AVAILABLE);
    assert.match(await a.released, /importer detached/);
    d.adoptConnection(6);
    assert.deepEqual(k.sockfds, [5, 6]);
  });

  it('a device that re-enumerated (another devnum) is refused: usbip-host would reject every URB of the old devid', () => {
    const k = fakeSysfs();
    const d = KernelDevice.open('2-1.3', { sysfs: k, pollMs: 10 });
    cleanups.push(() => d.close());
    fs.writeFileSync(k.path('bus/usb/devices/2-1.3/devnum'), '9\n');
    assert.throws(() => d.adoptConnection(5), (e: unknown) => e instanceof DeviceUnavailableError && /re-enumerated \(devnum 7 → 9\)/.test(e.message));
  });

  it('a device that went away releases the import', async () => {
    const k = fakeSysfs();
    const d = KernelDevice.open('2-1.3', { sysfs: k, pollMs: 10 });
    cleanups.push(() => d.close());
    const a = d.adoptConnection(5);
    fs.rmSync(k.path('bus/usb/devices/2-1.3/usbip_status'));
    assert.match(await a.released, /went away/);
  });
});

/** A raw client: writes requests, reads replies, never more than asked. */
class RawClient {
  private readonly reader = new ReplyReader(() => undefined);
  private readonly replies: UsbipReply[] = [];
  ended = false;
  constructor(readonly stream: Duplex) {
    stream.on('data', (c: Buffer) => {
      this.reader.push(c);
      for (let m = this.reader.next(); m !== null; m = this.reader.next()) this.replies.push(m);
    });
    stream.on('end', () => (this.ended = true));
    stream.on('close', () => (this.ended = true));
  }

  send(m: UsbipRequest, extra: Buffer = Buffer.alloc(0)): void {
    this.stream.write(Buffer.concat([encode(m), extra]));
  }

  async importReply(busid: string, extra?: Buffer): Promise<OpRepImport> {
    this.send({ type: 'OP_REQ_IMPORT', status: 0, busid }, extra);
    const deadline = Date.now() + 3000;
    while (this.replies.length === 0) {
      if (this.ended || Date.now() > deadline) throw new Error('no reply');
      await new Promise((r) => setTimeout(r, 5));
    }
    const r = this.replies.shift() as UsbipReply;
    assert.equal(r.type, 'OP_REP_IMPORT');
    return r;
  }
}

/**
 * The fake kernel takes its own reference to each socket written to usbip_sockfd, as
 * sockfd_lookup does: here by sending the fd to itself over a socketpair (a reference in flight
 * keeps the socket open after prism closes its fd). Returns the fds as they arrive.
 */
function takeReferences(k: FakeKernel): number[] {
  const [kin, kout] = sys.unixSocketPair();
  cleanups.push(() => {
    kin.destroy();
    kout.destroy();
  });
  const fds: number[] = [];
  kout.on('fds', (got: number[]) => fds.push(...got));
  kout.on('data', () => undefined);
  k.onSockfd = (fd) => kin.writeWithFds(Buffer.from('x'), [fd]);
  return fds;
}

/** Sends what an importer's kernel sends next and checks prism left all of it in the socket. */
async function assertLeftForTheKernel(c: RawClient, kernelFds: number[]): Promise<void> {
  const cmdSubmit = Buffer.from('00000001000000640002000700000000000000000000000000000000000000000000000000000000', 'hex');
  c.stream.write(cmdSubmit);
  await new Promise((r) => setTimeout(r, 150));
  assert.equal(c.ended, false, 'prism closed its fd only: the socket stays up for the kernel');
  assert.equal(kernelFds.length, 1);
  const kernelSide = sys.adoptSocket(kernelFds.shift() as number);
  cleanups.push(() => void kernelSide.destroy());
  let timer: NodeJS.Timeout | undefined;
  const got = await Promise.race([
    new Promise<Buffer>((resolve) => kernelSide.once('data', resolve)),
    new Promise<Buffer>((resolve) => (timer = setTimeout(() => resolve(Buffer.alloc(0)), 2000))),
  ]);
  clearTimeout(timer);
  assert.deepEqual(got, cmdSubmit, 'the bytes after the reply are all still in the socket');
}

describe('kernel: the server hands the connection to the kernel', () => {
  function serve(k: FakeKernel, rules = ['peer=vsock:4']): { server: UsbipServer; device: KernelDevice; logs: string[]; connect: (peer?: string) => RawClient } {
    const device = KernelDevice.open('2-1.3', { sysfs: k, pollMs: 10 });
    const logs: string[] = [];
    const log: LogFn = (level, msg, fields) => logs.push(`${level} ${msg} ${JSON.stringify(fields ?? {})}`);
    const server = new UsbipServer([device], { policy: new UsbipPolicy(rules), log });
    cleanups.push(async () => {
      await server.close();
      await device.close();
    });
    const connect = (peer = 'vsock:4:1035'): RawClient => {
      const [a, b] = sys.unixSocketPair();
      cleanups.push(() => void b.destroy());
      server.accept({ stream: a, peer });
      return new RawClient(b);
    };
    return { server, device, logs, connect };
  }

  it('writes the socket fd to usbip_sockfd, replies with the record, then reads nothing: later bytes wait for the kernel', async () => {
    const k = fakeSysfs();
    const kernelFds = takeReferences(k);
    const { logs, connect, server } = serve(k);
    const c = connect();
    const r = await c.importReply('2-1.3');
    assert.equal(r.status, OpStatus.OK);
    assert.deepEqual([r.device?.busid, r.device?.busnum, r.device?.devnum, r.device?.speed, r.device?.idVendor, r.device?.bNumInterfaces], ['2-1.3', 2, 7, 3, 0x1d6b, 1]);
    assert.equal(k.sockfds.length, 1);
    assert.equal(k.usbipStatus('2-1.3'), SdevStatus.USED);

    // What the importer's kernel sends next (CMD_SUBMIT) is not prism's to read.
    await assertLeftForTheKernel(c, kernelFds);
    assert.ok(logs.some((l) => /^info usbip device imported .*"handedTo":"kernel \(usbip-host\)"/.test(l)), logs.join('\n'));
    assert.ok(logs.some((l) => /^info usbip connection closed .*handed to the kernel/.test(l)), logs.join('\n'));

    // A second importer is refused while the kernel has it.
    const c2 = connect();
    assert.equal((await c2.importReply('2-1.3')).status, OpStatus.DEV_BUSY);
    assert.equal(server.status().devices[0]?.importedBy, 'vsock:4:1035');
    // The importer detaches: usbip-host resets the device and says 1 again.
    k.setStatus('2-1.3', SdevStatus.AVAILABLE);
    const deadline = Date.now() + 3000;
    while (!logs.some((l) => /^info usbip device released .*importer detached/.test(l))) {
      assert.ok(Date.now() < deadline, logs.join('\n'));
      await new Promise((r) => setTimeout(r, 10));
    }
    assert.equal(server.status().devices[0]?.importedBy, null);
    assert.equal((await connect().importReply('2-1.3')).status, OpStatus.OK, 'free again');
    assert.equal(k.sockfds.length, 2);
  });

  it('the same over a Unix listener, where the server\'s stream is a net.Socket', async () => {
    const k = fakeSysfs();
    const kernelFds = takeReferences(k);
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'prism-usbip-kernel-'));
    cleanups.push(() => fs.rmSync(dir, { recursive: true, force: true }));
    const sock = `unix:${path.join(dir, 'usbip.sock')}`;
    const device = KernelDevice.open('2-1.3', { sysfs: k, pollMs: 10 });
    const server = new UsbipServer([device], { policy: new UsbipPolicy([`peer=${sock}`]) });
    server.serve(await listen(sock));
    cleanups.push(async () => {
      await server.close();
      await device.close();
    });
    const stream = await dial(sock);
    cleanups.push(() => void stream.destroy());
    const c = new RawClient(stream);
    assert.equal((await c.importReply('2-1.3')).status, OpStatus.OK);
    await assertLeftForTheKernel(c, kernelFds);
  });

  it('an import the policy refuses gets status 1 and the kernel gets nothing', async () => {
    const k = fakeSysfs();
    const { connect } = serve(k);
    assert.equal((await connect('vsock:5:1035').importReply('2-1.3')).status, OpStatus.NA);
    assert.deepEqual(k.sockfds, []);
    assert.equal(k.usbipStatus('2-1.3'), SdevStatus.AVAILABLE);
  });

  it('a device in use elsewhere (usbip_status 2) is busy, in an error state is status 3; the claim is released', async () => {
    const k = fakeSysfs();
    const { connect, server } = serve(k);
    k.setStatus('2-1.3', SdevStatus.USED);
    assert.equal((await connect().importReply('2-1.3')).status, OpStatus.DEV_BUSY);
    k.setStatus('2-1.3', SdevStatus.ERROR);
    assert.equal((await connect().importReply('2-1.3')).status, OpStatus.DEV_ERR);
    assert.deepEqual(k.sockfds, []);
    assert.equal(server.status().devices[0]?.importedBy, null);
  });

  it('a client that sends bytes after OP_REQ_IMPORT before the reply is refused (status 4) and the device stays free', async () => {
    const k = fakeSysfs();
    const { connect, logs } = serve(k);
    const r = await connect().importReply('2-1.3', Buffer.alloc(48));
    assert.equal(r.status, OpStatus.ERROR);
    assert.deepEqual(k.sockfds, []);
    assert.ok(logs.some((l) => /bytes after OP_REQ_IMPORT/.test(l)), logs.join('\n'));
  });
});

