// The importing side of USB/IP (tools/usb/usbip's `usbip list -r` and `usbip attach`), over any
// prism address: OP_REQ_DEVLIST to list what a server exports, and OP_REQ_IMPORT followed by
// handing the connected socket to the local vhci-hcd, so the kernel speaks the URB protocol on it
// directly. Because vhci takes a socket fd, a vsock or Unix connection works as well as TCP.
import type { Duplex } from 'node:stream';
import { OpStatus, ReplyReader, encode, type DevlistEntry, type DeviceRecord, type UsbipReply } from '../codecs/usbip/index.js';
import { connectionFd, dial } from '../transport/index.js';
import { Vhci, devidOf } from './vhci.js';

export class ImportError extends Error {
  override readonly name = 'ImportError';
  readonly code = 'ERR_PRISM_USBIP_IMPORT';
}

const STATUS_TEXT: Record<number, string> = {
  [OpStatus.NA]: 'not available to this importer (refused by the server\'s policy?)',
  [OpStatus.DEV_BUSY]: 'busy: another importer has it',
  [OpStatus.DEV_ERR]: 'in an error state on the server',
  [OpStatus.NODEV]: 'not exported there (check `prism usbip list`)',
  [OpStatus.ERROR]: 'refused: the server saw a malformed request',
};

/** Sends one operation request and reads its reply, leaving nothing read beyond it. */
async function exchange(stream: Duplex, request: Buffer, what: string, timeoutMs: number): Promise<UsbipReply> {
  const reader = new ReplyReader(() => undefined);
  return new Promise<UsbipReply>((resolve, reject) => {
    const done = (err: Error | null, reply?: UsbipReply): void => {
      clearTimeout(timer);
      stream.off('data', onData);
      stream.off('end', onEnd);
      stream.off('error', onError);
      stream.pause(); // whatever comes next belongs to the kernel (attach) or to nobody
      if (err) reject(err);
      else resolve(reply as UsbipReply);
    };
    const onData = (chunk: Buffer): void => {
      reader.push(chunk);
      try {
        const m = reader.next();
        if (m) done(reader.bufferedBytes === 0 ? null : new ImportError(`${what}: the server sent ${reader.bufferedBytes} bytes after its reply`), m);
      } catch (e) {
        done(new ImportError(`${what}: the server's reply is malformed: ${(e as Error).message}`, { cause: e }));
      }
    };
    const onEnd = (): void => done(new ImportError(`${what}: the server closed the connection without replying`));
    const onError = (e: Error): void => done(new ImportError(`${what}: ${e.message}`, { cause: e }));
    const timer = setTimeout(() => done(new ImportError(`${what}: no reply within ${timeoutMs} ms`)), timeoutMs);
    stream.on('data', onData);
    stream.on('end', onEnd);
    stream.on('error', onError);
    stream.write(request);
  });
}

export interface ImporterOptions {
  timeoutMs?: number;
}

/** OP_REQ_DEVLIST: what the server at `addr` lets this importer see. */
export async function listDevices(addr: string, opts: ImporterOptions = {}): Promise<DevlistEntry[]> {
  const timeoutMs = opts.timeoutMs ?? 10_000;
  const stream = await dial(addr, { timeoutMs });
  try {
    const reply = await exchange(stream, encode({ type: 'OP_REQ_DEVLIST', status: 0 }), `listing the devices of ${addr}`, timeoutMs);
    if (reply.type !== 'OP_REP_DEVLIST') throw new ImportError(`listing the devices of ${addr}: the server answered ${reply.type}`);
    if (reply.status !== OpStatus.OK) throw new ImportError(`listing the devices of ${addr}: the server answered status ${reply.status}`);
    return reply.devices;
  } finally {
    stream.destroy();
  }
}

export interface Attached {
  port: number;
  device: DeviceRecord;
}

/**
 * OP_REQ_IMPORT of `busid` at `addr`, then the socket goes to vhci-hcd on a free port of the right
 * speed. prism's copy of the socket is closed afterwards (the kernel holds its own reference); it
 * never reads past the reply, so no URB traffic is lost.
 */
export async function attachDevice(addr: string, busid: string, opts: ImporterOptions & { vhci?: Vhci } = {}): Promise<Attached> {
  const timeoutMs = opts.timeoutMs ?? 10_000;
  const vhci = opts.vhci ?? new Vhci();
  vhci.ports(); // fail early (module not loaded, not root) before asking the server for the device
  const stream = await dial(addr, { timeoutMs });
  try {
    const what = `importing ${busid} from ${addr}`;
    const reply = await exchange(stream, encode({ type: 'OP_REQ_IMPORT', status: 0, busid }), what, timeoutMs);
    if (reply.type !== 'OP_REP_IMPORT') throw new ImportError(`${what}: the server answered ${reply.type}`);
    if (reply.status !== OpStatus.OK || !reply.device) {
      throw new ImportError(`${what}: the device is ${STATUS_TEXT[reply.status] ?? `refused (status ${reply.status})`}`);
    }
    if (reply.device.busid !== busid) throw new ImportError(`${what}: the server sent device ${reply.device.busid} instead`);
    const fd = connectionFd(stream);
    if (fd === null) throw new ImportError(`${what}: this connection has no kernel socket to give vhci-hcd`);
    const port = vhci.attach(fd, devidOf(reply.device.busnum, reply.device.devnum), reply.device.speed);
    return { port, device: reply.device };
  } finally {
    stream.destroy();
  }
}
