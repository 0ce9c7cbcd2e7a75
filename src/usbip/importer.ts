// The importing side of USB/IP (tools/usb/usbip's `usbip list -r` and `usbip attach`), over any
// prism address: OP_REQ_DEVLIST to list what a server exports, and OP_REQ_IMPORT followed by
// handing the connected socket to the local vhci-hcd, so the kernel speaks the URB protocol on it
// directly. Because vhci takes a socket fd, a vsock or Unix connection works as well as TCP.
import type { Duplex } from 'node:stream';
import { OpStatus, ReplyReader, encode, type DevlistEntry, type DeviceRecord, type UsbipReply } from '../codecs/usbip/index.js';
import * as sys from '../sys/index.js';
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

/**
 * The vsock buffer an imported AF_VSOCK connection gets before vhci-hcd takes it: the receive
 * credit the guest advertises (buf_alloc). Linux's default, 256 KiB, is less than one reply of a
 * SuperSpeed mass-storage device (usb-storage moves up to 1 MiB per SCSI command), so the server
 * stalls for credit once per command at 256 KiB. Measured with bench/usbip.ts (rows C, C').
 */
export const DEFAULT_VSOCK_BUFFER = 2 * 1024 * 1024;
/** Limits of --vsock-buffer (0 leaves the socket's default alone). */
export const VSOCK_BUFFER_MIN = 64 * 1024;
export const VSOCK_BUFFER_MAX = 64 * 1024 * 1024;

export interface AttachOptions extends ImporterOptions {
  vhci?: Vhci;
  /** Bytes for an AF_VSOCK connection's buffer (SO_VM_SOCKETS_BUFFER_SIZE); 0 leaves the default. */
  vsockBuffer?: number;
  /** Told when tuning the socket failed; the import goes on regardless. */
  warn?: (message: string) => void;
}

/**
 * Gives an AF_VSOCK socket a `bytes` buffer (raising its maximum first). Never throws: a socket of
 * another kind is left alone (null), a refusal is reported through `warn` (null). Returns the size in
 * effect, which the kernel or the transport may have clamped.
 */
export function tuneVsockBuffer(fd: number, bytes: number, warn: (message: string) => void = () => undefined): number | null {
  if (bytes === 0) return null;
  try {
    if (sys.socketInfo(fd).domain !== 'vsock') return null;
    return Number(sys.setVsockBufferSize(fd, bytes));
  } catch (e) {
    warn(`could not set the vsock buffer of fd ${fd} to ${bytes} bytes (the import goes on with the default): ${(e as Error).message}`);
    return null;
  }
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
  /** The buffer an AF_VSOCK connection got (bytes in effect), null when untouched. */
  vsockBuffer: number | null;
}

/**
 * OP_REQ_IMPORT of `busid` at `addr`, then the socket goes to vhci-hcd on a free port of the right
 * speed. prism's copy of the socket is closed afterwards (the kernel holds its own reference); it
 * never reads past the reply, so no URB traffic is lost.
 */
export async function attachDevice(addr: string, busid: string, opts: AttachOptions = {}): Promise<Attached> {
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
    const vsockBuffer = tuneVsockBuffer(fd, opts.vsockBuffer ?? DEFAULT_VSOCK_BUFFER, opts.warn);
    const port = vhci.attach(fd, devidOf(reply.device.busnum, reply.device.devnum), reply.device.speed);
    return { port, device: reply.device, vsockBuffer };
  } finally {
    stream.destroy();
  }
}
