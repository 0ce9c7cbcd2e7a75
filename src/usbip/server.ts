// The USB/IP server: any number of listeners, a set of UsbDevices, one UsbipConnection per stream.
//
// A connection starts in operation mode: OP_REQ_DEVLIST is answered with the devices this peer may
// import (policy.ts), OP_REQ_IMPORT with status 0 and the device record if the device exists, the
// policy allows it and nobody else has it; then the stream carries URBs (usbip_protocol.rst):
// - CMD_SUBMIT → device.submit() → RET_SUBMIT with the same seqnum, in order of completion;
// - CMD_UNLINK of a URB still running: its signal is aborted and RET_UNLINK says -ECONNRESET at
//   once; its result, whenever the device gives it, is dropped (no RET_SUBMIT after a successful
//   RET_UNLINK, as stub_rx.c does). Of a URB already answered, or a seqnum never seen: status 0.
// - an OP_REQ_* header ends the import and is handled as a new request. Over virtio-serial the
//   host never sees EOF when the guest detaches, and the next `usbip attach` arrives on the same
//   stream (LAB-FACTS); a PDU starts with its command (0x0000000N), an operation with the version
//   (0x0111), so the two cannot be confused.
// End of stream, an error, or input that cannot be framed ends the connection; whichever way an
// import ends, every URB still running is aborted and the device released (detached()).
//
// A device with adoptConnection() (kernel.ts: the kernel's usbip-host) is not served here: an
// allowed import hands it the connection's socket fd, replies, and closes prism's copy of the fd
// without shutting the socket down, all before the event loop polls the socket again; from the
// reply on the kernel alone reads and writes it. The client may send nothing between its
// OP_REQ_IMPORT and our reply (it needs the reply first), so bytes already read past the request
// mean a broken client: the import is refused. The device stays claimed until it says the
// importer let go.
//
// A device whose `vanished` settles (unplugged) ends the connection that imported it, and is
// listed and imported no more.
//
// Hostile input costs the client, never the server: a malformed CMD_SUBMIT gets RET_SUBMIT with an
// error status (-EINVAL, -EMSGSIZE, -ENODEV for a devid that is not the imported device's) and the
// session carries on; a stream that cannot be framed is closed. A device that throws, never
// answers an unlinked URB, or answers nonsense costs that URB (device.ts says what is checked).
// Limits per connection: URBs running (64) and bytes they hold (64 MiB, transfer buffers counted
// whole): reading pauses above them, as it does while the client does not read our replies.
// Connections: 64 in all, 16 from one peer. None times out: over virtio-serial a connection idles
// between one detach and the next attach.
import type { Duplex } from 'node:stream';
import {
  DEFAULT_MAX_ISO_PACKETS, DEFAULT_MAX_TRANSFER_LENGTH, DecodeError, OpCode, OpStatus, ProtocolError, RequestReader, USB_DIR_IN, decodeSetup, encodeParts,
  type CmdSubmit, type CmdUnlink, type DeviceRecord, type IsoPacketDescriptor, type OpReqImport, type RetSubmit, type UsbipReply, type UsbipRequest,
} from '../codecs/usbip/index.js';
import { connectionFd, type Connection, type Listener } from '../transport/index.js';
import { DeviceUnavailableError, UrbErrno, type AdoptedConnection, type IsoPacket, type Urb, type UrbResult, type UsbDevice, type UsbDeviceInfo } from './device.js';
import { UsbipPolicy, peerIdentity, vidPidOf } from './policy.js';

export type LogFn = (level: 'info' | 'warn' | 'debug', msg: string, fields?: Record<string, unknown>) => void;

export interface UsbipServerOptions {
  /** Who may import what; default: nobody (deny everything). */
  policy?: UsbipPolicy;
  /** Most connections at once; more are closed on arrival (default 64). */
  maxConnections?: number;
  /** Most connections at once from one peer (its address without the port; default 16), so that
   * one VM cannot take every slot. */
  maxConnectionsPerPeer?: number;
  /** Most URBs running per connection before reading pauses (default 64). */
  maxInflight?: number;
  /** Most transfer-buffer bytes running per connection before reading pauses (default 64 MiB). */
  maxInflightBytes?: number;
  /** Largest transfer buffer (default 16 MiB); an OUT one above it closes the connection. */
  maxTransferLength?: number;
  /** Most ISO packets per URB (default 1024). */
  maxIsoPackets?: number;
  log?: LogFn;
}

export class UsbipConfigError extends Error {
  override readonly name = 'UsbipConfigError';
  readonly code = 'ERR_USBIP_CONFIG';
}

/** The device record prism exports for a device: its info, with a path naming prism as the host. */
export function deviceRecord(info: UsbDeviceInfo): DeviceRecord {
  return {
    path: `/sys/devices/prism/usbip/${info.busid}`,
    busid: info.busid,
    busnum: info.busnum,
    devnum: info.devnum,
    speed: info.speed,
    idVendor: info.idVendor,
    idProduct: info.idProduct,
    bcdDevice: info.bcdDevice,
    bDeviceClass: info.bDeviceClass,
    bDeviceSubClass: info.bDeviceSubClass,
    bDeviceProtocol: info.bDeviceProtocol,
    bConfigurationValue: info.bConfigurationValue,
    bNumConfigurations: info.bNumConfigurations,
    bNumInterfaces: info.interfaces.length,
  };
}

/** (busnum << 16) | devnum: how CMD_SUBMIT names the device (usbip_protocol.rst usbip_header_basic). */
export function devidOf(info: Pick<UsbDeviceInfo, 'busnum' | 'devnum'>): number {
  return ((info.busnum << 16) | info.devnum) >>> 0;
}

function checkInfo(info: UsbDeviceInfo): void {
  const where = `device ${JSON.stringify(info.busid)}`;
  if (typeof info.busid !== 'string' || !/^[\x21-\x7e]{1,31}$/.test(info.busid)) throw new UsbipConfigError(`${where}: a busid is 1-31 printable ASCII characters without spaces`);
  const range = (v: number, max: number, what: string): void => {
    if (!Number.isInteger(v) || v < 0 || v > max) throw new UsbipConfigError(`${where}: ${what} ${v} is not an integer in 0..${max}`);
  };
  range(info.busnum, 0xffff, 'busnum');
  range(info.devnum, 0xffff, 'devnum');
  range(info.speed, 6, 'speed');
  for (const k of ['idVendor', 'idProduct', 'bcdDevice'] as const) range(info[k], 0xffff, k);
  for (const k of ['bDeviceClass', 'bDeviceSubClass', 'bDeviceProtocol', 'bConfigurationValue', 'bNumConfigurations'] as const) range(info[k], 0xff, k);
  if (!Array.isArray(info.interfaces) || info.interfaces.length > 0xff) throw new UsbipConfigError(`${where}: interfaces must be an array of at most 255`);
  for (const i of info.interfaces) {
    range(i.bInterfaceClass, 0xff, 'bInterfaceClass');
    range(i.bInterfaceSubClass, 0xff, 'bInterfaceSubClass');
    range(i.bInterfaceProtocol, 0xff, 'bInterfaceProtocol');
  }
}

interface Limits {
  maxInflight: number;
  maxInflightBytes: number;
  maxTransferLength: number;
  maxIsoPackets: number;
}

export interface UsbipServerStatus {
  connections: { peer: string; imported: string | null; inflight: number }[];
  devices: { busid: string; vidPid: string; importedBy: string | null }[];
}

export class UsbipServer {
  private readonly devices = new Map<string, UsbDevice>();
  /** busid → the connection that imported it (for a handed-off device, until the kernel lets go). */
  private readonly claims = new Map<string, UsbipConnection>();
  /** busid → why, for devices that are gone for good (vanished). */
  private readonly gone = new Map<string, string>();
  private readonly connections = new Set<UsbipConnection>();
  private readonly listeners: Listener[] = [];
  readonly policy: UsbipPolicy;
  private readonly limits: Limits;
  private readonly maxConnections: number;
  private readonly maxPerPeer: number;
  readonly log: LogFn;

  constructor(devices: readonly UsbDevice[], opts: UsbipServerOptions = {}) {
    const devids = new Map<number, string>();
    for (const d of devices) {
      checkInfo(d.info);
      if (this.devices.has(d.info.busid)) throw new UsbipConfigError(`two devices have busid ${d.info.busid}`);
      const devid = devidOf(d.info);
      const other = devids.get(devid);
      if (other !== undefined) throw new UsbipConfigError(`devices ${other} and ${d.info.busid} have the same busnum ${d.info.busnum} and devnum ${d.info.devnum}`);
      devids.set(devid, d.info.busid);
      this.devices.set(d.info.busid, d);
    }
    const int = (v: number | undefined, dflt: number, min: number, max: number, what: string): number => {
      const n = v ?? dflt;
      if (!Number.isSafeInteger(n) || n < min || n > max) throw new UsbipConfigError(`${what} must be an integer in ${min}..${max}, got ${n}`);
      return n;
    };
    this.limits = {
      maxInflight: int(opts.maxInflight, 64, 1, 65536, 'maxInflight'),
      maxInflightBytes: int(opts.maxInflightBytes, 64 * 1024 * 1024, 1, 2 ** 40, 'maxInflightBytes'),
      maxTransferLength: int(opts.maxTransferLength, DEFAULT_MAX_TRANSFER_LENGTH, 0, 0x7fff_ffff, 'maxTransferLength'),
      maxIsoPackets: int(opts.maxIsoPackets, DEFAULT_MAX_ISO_PACKETS, 0, 0x7fff_ffff, 'maxIsoPackets'),
    };
    this.maxConnections = int(opts.maxConnections, 64, 1, 65536, 'maxConnections');
    this.maxPerPeer = int(opts.maxConnectionsPerPeer, 16, 1, 65536, 'maxConnectionsPerPeer');
    this.policy = opts.policy ?? new UsbipPolicy();
    this.log = opts.log ?? (() => undefined);
    for (const d of devices) void d.vanished?.then((why) => this.vanish(d, why));
  }

  private vanish(d: UsbDevice, why: string): void {
    const busid = d.info.busid;
    this.gone.set(busid, why);
    const holder = this.claims.get(busid);
    this.log('warn', 'usbip device gone: it is listed no more', { busid, why, importedBy: holder?.peer ?? null });
    holder?.end(`the device is gone: ${why}`);
  }

  /** Why the device is gone, or null while it is there. */
  goneWhy(busid: string): string | null {
    return this.gone.get(busid) ?? null;
  }

  get connectionCount(): number {
    return this.connections.size;
  }

  /** Serves every connection the listener accepts. */
  serve(listener: Listener): void {
    this.listeners.push(listener);
    listener.on('connection', (c: Connection) => this.accept(c));
  }

  /** Serves one already-connected stream. */
  accept(c: Connection): UsbipConnection | null {
    if (this.connections.size >= this.maxConnections) {
      this.log('warn', 'usbip connection refused: too many connections', { peer: c.peer, max: this.maxConnections });
      c.stream.destroy();
      return null;
    }
    const who = peerIdentity(c.peer);
    let fromPeer = 0;
    for (const other of this.connections) if (peerIdentity(other.peer) === who) fromPeer++;
    if (fromPeer >= this.maxPerPeer) {
      this.log('warn', 'usbip connection refused: too many connections from this peer', { peer: c.peer, max: this.maxPerPeer });
      c.stream.destroy();
      return null;
    }
    const conn = new UsbipConnection(this, c.stream, c.peer, this.limits);
    this.connections.add(conn);
    this.log('info', 'usbip connection accepted', { peer: c.peer });
    // The slot is free once the stream is done, even if a device still holds URBs it was told to
    // abort (close() waits for those, briefly).
    void conn.ended.then(() => this.connections.delete(conn));
    return conn;
  }

  /** The devices `peer` may import, in the order they were given. */
  visibleTo(peer: string): UsbDevice[] {
    return [...this.devices.values()].filter((d) => !this.gone.has(d.info.busid) && this.policy.allows(peer, d.info));
  }

  device(busid: string): UsbDevice | undefined {
    return this.devices.get(busid);
  }

  /** Claims a device for a connection: false if someone else has it. */
  claim(busid: string, by: UsbipConnection): boolean {
    const holder = this.claims.get(busid);
    if (holder !== undefined && holder !== by) return false;
    this.claims.set(busid, by);
    return true;
  }

  release(busid: string, by: UsbipConnection): void {
    if (this.claims.get(busid) === by) this.claims.delete(busid);
  }

  status(): UsbipServerStatus {
    return {
      connections: [...this.connections].map((c) => c.describe()),
      devices: [...this.devices.values()].map((d) => ({ busid: d.info.busid, vidPid: vidPidOf(d.info), importedBy: this.claims.get(d.info.busid)?.peer ?? null })),
    };
  }

  /** Stops accepting, ends every connection (releasing its device), waits for running URBs (≤ 2 s). */
  async close(): Promise<void> {
    await Promise.all(this.listeners.map((l) => l.close()));
    const all = [...this.connections];
    for (const c of all) c.end('server shutting down');
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([Promise.all(all.map((c) => c.finished)), new Promise((resolve) => (timer = setTimeout(resolve, 2000)))]);
    clearTimeout(timer);
  }
}

/** One URB handed to a device and not yet settled. */
interface Running {
  seqnum: number;
  controller: AbortController;
  /** Its import (a later import on the same stream does not see it). */
  session: ImportSession;
  /** Unlinked (or its session ended): its result is dropped. */
  cancelled: boolean;
  bytes: number;
}

/** One OP_REQ_IMPORT's device on a connection, until detach. */
interface ImportSession {
  device: UsbDevice;
  devid: number;
  /** Running URBs of this import by seqnum. */
  urbs: Map<number, Running>;
  ended: boolean;
}

/** One client stream: operation mode until an import succeeds, URB mode while it lasts. */
export class UsbipConnection {
  private readonly reader: RequestReader;
  private session: ImportSession | null = null;
  /** URBs handed to devices and not settled, across imports (the limits count them all). */
  private running = 0;
  private runningBytes = 0;
  private paused = false;
  private closed = false;
  /** The socket went to a device's kernel (handOff): never read or shut down again. */
  private handedOff = false;
  private readonly log: LogFn;
  /** Resolves when the connection is closed (its import ended, its device released). */
  readonly ended: Promise<void>;
  private markEnded!: () => void;
  /** Resolves when the connection is closed and every URB handed to a device has settled. */
  readonly finished: Promise<void>;
  private finish!: () => void;

  constructor(
    private readonly server: UsbipServer,
    private readonly stream: Duplex,
    readonly peer: string,
    private readonly limits: Limits,
  ) {
    this.log = server.log;
    this.reader = new RequestReader({ maxTransferLength: limits.maxTransferLength, maxIsoPackets: limits.maxIsoPackets });
    this.ended = new Promise((resolve) => (this.markEnded = resolve));
    this.finished = new Promise((resolve) => (this.finish = resolve));
    stream.on('data', (chunk: Buffer) => this.onData(chunk));
    stream.on('end', () => this.close('client closed the connection'));
    stream.on('error', (e: Error) => this.close(`stream error: ${e.message}`));
    stream.on('close', () => this.close('stream closed'));
    stream.on('drain', () => this.maybeResume());
  }

  describe(): { peer: string; imported: string | null; inflight: number } {
    return { peer: this.peer, imported: this.session?.device.info.busid ?? null, inflight: this.running };
  }

  /** Ends the connection from the server side. */
  end(why: string): void {
    this.close(why);
    this.stream.destroy();
  }

  // --- input -----------------------------------------------------------------------------------

  private onData(chunk: Buffer): void {
    if (this.closed || this.handedOff) return;
    this.reader.push(chunk);
    try {
      this.pump();
    } catch (e) {
      // A bug of ours must cost this connection only: an exception out of a native stream's
      // 'data' handler would end the process.
      this.log('warn', 'usbip connection closed: internal error', { peer: this.peer, error: e instanceof Error ? (e.stack ?? e.message) : String(e) });
      this.end(`internal error: ${e instanceof Error ? e.message : String(e)}`);
    }
  }

  /** Handles whole messages while under the limits. */
  private pump(): void {
    while (!this.closed && !this.handedOff && !this.overLimits()) {
      let msg: UsbipRequest | null;
      try {
        msg = this.reader.next();
      } catch (e) {
        if (e instanceof DecodeError) {
          this.refuse(e);
          continue;
        }
        if (e instanceof ProtocolError) {
          this.log('warn', 'usbip connection closed: input cannot be framed', { peer: this.peer, error: e.message, reason: e.reason });
          this.end(e.message);
          return;
        }
        throw e;
      }
      if (msg === null) break;
      this.dispatch(msg);
    }
    if (!this.closed && !this.handedOff && this.overLimits() && !this.paused) {
      this.paused = true;
      this.stream.pause();
    }
  }

  private overLimits(): boolean {
    return this.running >= this.limits.maxInflight || this.runningBytes >= this.limits.maxInflightBytes;
  }

  private maybeResume(): void {
    if (this.closed || this.handedOff || !this.paused || this.overLimits() || this.stream.writableNeedDrain) return;
    this.paused = false;
    try {
      this.pump();
    } catch (e) {
      this.log('warn', 'usbip connection closed: internal error', { peer: this.peer, error: e instanceof Error ? (e.stack ?? e.message) : String(e) });
      this.end(`internal error: ${e instanceof Error ? e.message : String(e)}`);
      return;
    }
    if (!this.paused) this.stream.resume();
  }

  private dispatch(msg: UsbipRequest): void {
    switch (msg.type) {
      case 'OP_REQ_DEVLIST':
        this.endImport('the client sent OP_REQ_DEVLIST');
        this.devlist();
        return;
      case 'OP_REQ_IMPORT':
        this.endImport('the client sent OP_REQ_IMPORT');
        this.import(msg);
        return;
      case 'CMD_SUBMIT':
      case 'CMD_UNLINK':
        if (this.session === null) {
          this.log('warn', `usbip connection closed: ${msg.type} before any import`, { peer: this.peer, seqnum: msg.seqnum });
          this.end(`${msg.type} before any import`);
          return;
        }
        if (msg.type === 'CMD_SUBMIT') this.submit(this.session, msg);
        else this.unlink(this.session, msg);
    }
  }

  /** A message that was framed but malformed: answered with an error, the connection carries on. */
  private refuse(e: DecodeError): void {
    this.log('debug', 'usbip malformed request', { peer: this.peer, error: e.message, reason: e.reason });
    if (e.messageCode === OpCode.REQ_IMPORT) {
      this.endImport('the client sent OP_REQ_IMPORT');
      this.send({ type: 'OP_REP_IMPORT', status: OpStatus.ERROR, device: null });
      return;
    }
    if (this.session === null || e.seqnum === undefined) {
      this.end(`malformed ${e.messageCode === undefined ? 'message' : e.messageCode.toString(16)} before any import: ${e.message}`);
      return;
    }
    // Only CMD_SUBMIT can be malformed once framed (CMD_UNLINK has no field that can be wrong).
    const status = e.reason === 'too-long' ? -UrbErrno.EMSGSIZE : -UrbErrno.EINVAL;
    this.sendRet(e.seqnum, status, 0);
  }

  // --- operations ------------------------------------------------------------------------------

  private devlist(): void {
    const devices = this.server.visibleTo(this.peer).map((d) => ({ device: deviceRecord(d.info), interfaces: d.info.interfaces.map((i) => ({ ...i })) }));
    this.log('debug', 'usbip device list', { peer: this.peer, devices: devices.map((d) => d.device.busid) });
    this.send({ type: 'OP_REP_DEVLIST', status: OpStatus.OK, devices });
  }

  private import(msg: OpReqImport): void {
    const fields = { peer: this.peer, busid: msg.busid };
    const device = this.server.device(msg.busid);
    const gone = this.server.goneWhy(msg.busid);
    if (device === undefined || gone !== null) {
      this.log('warn', gone === null ? 'usbip import refused: no such device' : 'usbip import refused: the device is gone', gone === null ? fields : { ...fields, why: gone });
      this.send({ type: 'OP_REP_IMPORT', status: OpStatus.NODEV, device: null });
      return;
    }
    const info = device.info;
    const rule = this.server.policy.allowing(this.peer, info);
    if (rule === null) {
      this.log('warn', 'usbip import refused by policy', {
        ...fields,
        vidPid: vidPidOf(info),
        classes: [info.bDeviceClass, ...info.interfaces.map((i) => i.bInterfaceClass)],
        wouldAllow: `--allow ${this.server.policy.suggestion(this.peer, info)}`,
      });
      this.send({ type: 'OP_REP_IMPORT', status: OpStatus.NA, device: null });
      return;
    }
    if (!this.server.claim(info.busid, this)) {
      this.log('warn', 'usbip import refused: the device is busy', { ...fields, importedBy: this.server.status().devices.find((d) => d.busid === info.busid)?.importedBy });
      this.send({ type: 'OP_REP_IMPORT', status: OpStatus.DEV_BUSY, device: null });
      return;
    }
    if (device.adoptConnection !== undefined) {
      this.handOff(device, device.adoptConnection.bind(device), fields);
      return;
    }
    this.session = { device, devid: devidOf(info), urbs: new Map(), ended: false };
    try {
      device.attached?.();
    } catch (e) {
      this.log('warn', 'usbip device failed in attached()', { ...fields, error: (e as Error).message });
    }
    this.log('info', 'usbip device imported', { ...fields, vidPid: vidPidOf(info) });
    this.send({ type: 'OP_REP_IMPORT', status: OpStatus.OK, device: deviceRecord(info) });
  }

  /**
   * Gives the connection to a device whose kernel speaks URBs (kernel.ts): it takes the socket fd,
   * we reply and close our fd. The claim is kept until the device reports the importer gone.
   */
  private handOff(device: UsbDevice, adopt: (fd: number) => AdoptedConnection, fields: { peer: string; busid: string }): void {
    const busid = device.info.busid;
    const refuse = (status: number, msg: string, extra: Record<string, unknown>): void => {
      this.server.release(busid, this);
      this.log('warn', msg, { ...fields, ...extra });
      this.send({ type: 'OP_REP_IMPORT', status, device: null });
    };
    // The client cannot send CMD_SUBMIT before it has our reply: whatever followed the request
    // would be lost to the kernel, so such a client is refused (and the device stays free).
    const early = this.reader.bufferedBytes + this.stream.readableLength;
    if (early !== 0) {
      refuse(OpStatus.ERROR, 'usbip import refused: the client sent bytes after OP_REQ_IMPORT before our reply', { bytes: early });
      return;
    }
    const fd = connectionFd(this.stream);
    if (fd === null) {
      refuse(OpStatus.DEV_ERR, 'usbip import refused: this connection has no kernel socket to hand to the device', {});
      return;
    }
    let adopted: AdoptedConnection;
    try {
      adopted = adopt(fd);
    } catch (e) {
      const busy = e instanceof DeviceUnavailableError && e.reason === 'busy';
      refuse(busy ? OpStatus.DEV_BUSY : OpStatus.DEV_ERR, `usbip import refused: ${busy ? 'the device is busy' : 'the device cannot take the connection'}`, { error: (e as Error).message });
      return;
    }
    // From here on the socket is the kernel's: read nothing more, and close only our fd (end()
    // would shut the socket down under the kernel) once the reply has left.
    this.handedOff = true;
    this.stream.pause();
    this.log('info', 'usbip device imported', { ...fields, vidPid: vidPidOf(device.info), handedTo: 'kernel (usbip-host)', fd });
    const reply = encodeParts({ type: 'OP_REP_IMPORT', status: OpStatus.OK, device: deviceRecord(device.info) });
    this.stream.write(Buffer.concat(reply), (err) => {
      // Runs before the event loop polls the socket again, so no reply of the client's is read.
      if (err) this.log('warn', 'usbip import reply failed after the hand-off', { ...fields, error: err.message });
      this.close('handed to the kernel');
      this.stream.destroy();
    });
    void adopted.released.then((why) => {
      this.server.release(busid, this);
      this.log('info', 'usbip device released', { ...fields, why });
    });
  }

  /** Ends the current import, if any: aborts its URBs, releases the device. */
  private endImport(why: string): void {
    const s = this.session;
    if (s === null) return;
    this.session = null;
    s.ended = true;
    for (const r of s.urbs.values()) {
      r.cancelled = true;
      r.controller.abort(new Error(`usbip import ended: ${why}`));
    }
    this.server.release(s.device.info.busid, this);
    try {
      s.device.detached?.();
    } catch (e) {
      this.log('warn', 'usbip device failed in detached()', { peer: this.peer, busid: s.device.info.busid, error: (e as Error).message });
    }
    this.log('info', 'usbip device released', { peer: this.peer, busid: s.device.info.busid, why, aborted: s.urbs.size });
  }

  // --- URBs ------------------------------------------------------------------------------------

  private submit(s: ImportSession, m: CmdSubmit): void {
    const fields = { peer: this.peer, seqnum: m.seqnum, ep: m.ep, direction: m.direction };
    if (m.devid !== s.devid) {
      this.log('debug', 'usbip CMD_SUBMIT for another devid', { ...fields, devid: m.devid, imported: s.devid });
      this.sendRet(m.seqnum, -UrbErrno.ENODEV, m.numberOfPackets);
      return;
    }
    if (s.urbs.has(m.seqnum)) {
      this.log('debug', 'usbip CMD_SUBMIT reuses a running seqnum', fields);
      this.sendRet(m.seqnum, -UrbErrno.EINVAL, m.numberOfPackets);
      return;
    }
    if (m.ep === 0) {
      // usb_submit_urb's rules for control transfers: wLength is the transfer length, and a data
      // stage goes the way bmRequestType says.
      const setup = decodeSetup(m.setup);
      const dirIn = (setup.bmRequestType & USB_DIR_IN) !== 0;
      if (setup.wLength !== m.transferBufferLength || (setup.wLength > 0 && dirIn !== (m.direction === 'in'))) {
        this.log('debug', 'usbip control transfer with a setup packet that contradicts it', { ...fields, setup: m.setup.toString('hex'), length: m.transferBufferLength });
        this.sendRet(m.seqnum, -UrbErrno.EINVAL, m.numberOfPackets);
        return;
      }
    }
    const urb: Urb = {
      seqnum: m.seqnum,
      direction: m.direction,
      endpoint: m.ep,
      transferFlags: m.transferFlags,
      transferBufferLength: m.transferBufferLength,
      setup: Buffer.from(m.setup),
      data: m.data,
      startFrame: m.startFrame,
      numberOfPackets: Math.max(m.numberOfPackets, 0),
      interval: m.interval,
      isoPackets: m.isoPackets.map((p) => ({ ...p })),
    };
    const r: Running = { seqnum: m.seqnum, controller: new AbortController(), session: s, cancelled: false, bytes: m.transferBufferLength };
    s.urbs.set(m.seqnum, r);
    this.running++;
    this.runningBytes += r.bytes;
    const device = s.device;
    void Promise.resolve()
      // Unlinked, or its import ended, before the device saw it: the device need not know.
      .then(() => (r.controller.signal.aborted ? { status: -UrbErrno.ECONNRESET, data: Buffer.alloc(0) } : device.submit(urb, r.controller.signal)))
      .then(
        (result) => this.complete(r, m, result),
        (e: unknown) => {
          if (!r.cancelled) this.log('debug', 'usbip device failed a URB', { ...fields, error: e instanceof Error ? e.message : String(e) });
          this.complete(r, m, { status: r.controller.signal.aborted ? -UrbErrno.ECONNRESET : -UrbErrno.EIO, data: Buffer.alloc(0) });
        },
      );
  }

  private complete(r: Running, m: CmdSubmit, result: unknown): void {
    this.running--;
    this.runningBytes -= r.bytes;
    if (r.session.urbs.get(r.seqnum) === r) r.session.urbs.delete(r.seqnum);
    if (!r.cancelled && !r.session.ended && !this.closed) {
      const { ret, problem } = retSubmitFor(m, result);
      if (problem) this.log('debug', 'usbip device answered a URB wrongly', { peer: this.peer, seqnum: m.seqnum, problem });
      this.send(ret);
    }
    if (this.closed && this.running === 0) this.finish();
    else this.maybeResume();
  }

  private unlink(s: ImportSession, m: CmdUnlink): void {
    const target = s.urbs.get(m.unlinkSeqnum);
    if (m.devid !== s.devid) this.log('debug', 'usbip CMD_UNLINK for another devid', { peer: this.peer, devid: m.devid });
    if (target === undefined || target.cancelled) {
      // Already answered (or never seen): stub_rx.c answers 0, "its results is/was going to be sent".
      this.send({ type: 'RET_UNLINK', seqnum: m.seqnum, status: 0 });
      return;
    }
    target.cancelled = true;
    target.controller.abort(new Error('usbip CMD_UNLINK'));
    this.send({ type: 'RET_UNLINK', seqnum: m.seqnum, status: -UrbErrno.ECONNRESET });
  }

  // --- output ----------------------------------------------------------------------------------

  private sendRet(seqnum: number, status: number, numberOfPackets: number): void {
    this.send({ type: 'RET_SUBMIT', seqnum, status, actualLength: 0, startFrame: 0, numberOfPackets: numberOfPackets > 0 ? 0 : numberOfPackets, errorCount: 0, data: Buffer.alloc(0), isoPackets: [] });
  }

  private send(reply: UsbipReply): void {
    if (this.closed || this.stream.destroyed || !this.stream.writable) return;
    const parts = encodeParts(reply);
    // Header and transfer buffer leave in one writev, without copying the buffer.
    this.stream.cork();
    let ok = true;
    for (const p of parts) ok = this.stream.write(p);
    this.stream.uncork();
    if (!ok && !this.paused) {
      this.paused = true;
      this.stream.pause();
    }
  }

  private close(why: string): void {
    if (this.closed) return;
    this.endImport(why);
    this.closed = true;
    this.log('info', 'usbip connection closed', { peer: this.peer, why });
    if (this.stream.writable && !this.handedOff) this.stream.end();
    this.markEnded();
    if (this.running === 0) this.finish();
  }
}

/**
 * The RET_SUBMIT for a device's answer, checked against the request (device.ts): a device's
 * mistake becomes an error status for that URB, never a malformed reply.
 */
export function retSubmitFor(m: CmdSubmit, result: unknown): { ret: RetSubmit; problem: string | null } {
  const fail = (problem: string, status: number = -UrbErrno.EIO): { ret: RetSubmit; problem: string } => ({
    ret: {
      type: 'RET_SUBMIT', seqnum: m.seqnum, status, actualLength: 0, startFrame: m.startFrame, numberOfPackets: m.numberOfPackets, errorCount: 0, data: Buffer.alloc(0),
      isoPackets: m.isoPackets.map((p) => ({ offset: p.offset, length: p.length, actualLength: 0, status })),
    },
    problem,
  });
  if (typeof result !== 'object' || result === null) return fail('no result object');
  const r = result as UrbResult;
  const errno = (v: unknown): boolean => Number.isInteger(v) && (v as number) <= 0 && (v as number) >= -4095;
  if (!errno(r.status)) return fail(`status ${String(r.status)} is not 0 or a negative errno`);
  let status = r.status;
  const errorCount = r.errorCount ?? 0;
  if (!Number.isInteger(errorCount) || errorCount < 0 || errorCount > 0x7fff_ffff) return fail(`errorCount ${String(errorCount)}`);
  let problem: string | null = null;
  let data: Buffer = Buffer.alloc(0);
  let actualLength: number;
  if (m.direction === 'in') {
    if (!Buffer.isBuffer(r.data)) return fail('IN data is not a Buffer');
    data = r.data;
    if (data.length > m.transferBufferLength) {
      problem = `${data.length} IN bytes for a ${m.transferBufferLength}-byte buffer (cut)`;
      data = data.subarray(0, m.transferBufferLength);
      if (status === 0) status = -UrbErrno.EOVERFLOW;
    }
    actualLength = data.length;
  } else {
    actualLength = r.actualLength ?? (status === 0 ? m.transferBufferLength : 0);
    if (!Number.isInteger(actualLength) || actualLength < 0 || actualLength > m.transferBufferLength) return fail(`OUT actualLength ${String(r.actualLength)} for ${m.transferBufferLength} bytes`);
  }
  let isoPackets: IsoPacketDescriptor[] = [];
  if (m.numberOfPackets > 0) {
    const got = r.isoPackets;
    if (!Array.isArray(got) || got.length !== m.numberOfPackets) return fail(`${Array.isArray(got) ? got.length : 'no'} ISO results for ${m.numberOfPackets} packets`);
    let sum = 0;
    isoPackets = [];
    for (let i = 0; i < got.length; i++) {
      const want = m.isoPackets[i] as IsoPacketDescriptor;
      const p = got[i] as IsoPacket;
      if (!Number.isInteger(p.actualLength) || p.actualLength < 0 || p.actualLength > want.length || !errno(p.status)) return fail(`ISO packet ${i}: actualLength ${String(p.actualLength)}, status ${String(p.status)}`);
      sum += p.actualLength;
      isoPackets.push({ offset: want.offset, length: want.length, actualLength: p.actualLength, status: p.status });
    }
    // vhci_rx.c refuses (and drops the connection) unless the packets' actual lengths add up.
    if (m.direction === 'in' && sum !== data.length) return fail(`ISO IN: packets add up to ${sum} bytes, data has ${data.length}`);
    actualLength = sum;
  }
  return {
    ret: { type: 'RET_SUBMIT', seqnum: m.seqnum, status, actualLength, startFrame: m.startFrame, numberOfPackets: m.numberOfPackets, errorCount, data, isoPackets },
    problem,
  };
}
