// Where a vhost-user device meets its VMM: a Unix socket that prism listens on
// (QEMU `-chardev socket,path=P`, cloud-hypervisor, crosvm, DPDK virtio_user),
// or one the VMM listens on and prism connects to (QEMU `-chardev
// socket,path=P,server=on`, DPDK `server=1`). Either way one VMM connection
// at a time drives the device; when it ends the device is reset and waits for
// the next one, so a VMM that restarts (QEMU `reconnect=1`, a rebooted VM) gets
// a working device again.
//
// Choices (vhost-user.rst leaves them to the backend):
// - Listening, a second connection replaces the first: the newest VMM is the
//   live one (a restarted QEMU whose old process has not yet been reaped). The
//   old connection's late ring stops no longer reach the device.
// - Connecting, prism retries every `retryMs` (default 1 s) while the socket
//   is absent or refuses, and again after each disconnect; the first failure
//   of a run of failures is logged, not every retry.
import * as fs from 'node:fs';
import * as sys from '../sys/index.js';
import { VhostUserBackend, type BackendLog, type VhostUserDevice } from './backend.js';
import type { SplitVirtqueue } from './virtqueue.js';

export type EndpointMode = 'listen' | 'connect';

export interface EndpointOptions {
  /** The vhost-user Unix socket. */
  path: string;
  /** listen: prism creates `path`; connect: the VMM created it. */
  mode: EndpointMode;
  log?: BackendLog;
  /** connect mode: delay between attempts (ms). */
  retryMs?: number;
  /** A VMM connection ended: it closed ('closed') or a newer one took its place ('replaced'). */
  onSessionEnd?: (why: 'closed' | 'replaced') => void;
}

/**
 * The device as one VMM connection sees it. When a newer connection replaces this one, the old
 * backend still stops its rings as it winds down; those late calls must not reach the device the
 * new connection is driving.
 */
class SessionDevice implements VhostUserDevice {
  readonly features: bigint;
  readonly protocolFeatures?: bigint;
  readonly featureTable?: Readonly<Record<string, number>>;
  readonly queueCount: number;
  readonly readConfig?: (offset: number, size: number) => Buffer | null;

  constructor(
    private readonly device: VhostUserDevice,
    private readonly current: () => boolean,
  ) {
    this.features = device.features;
    this.queueCount = device.queueCount;
    if (device.protocolFeatures !== undefined) this.protocolFeatures = device.protocolFeatures;
    if (device.featureTable !== undefined) this.featureTable = device.featureTable;
    const read = device.readConfig?.bind(device);
    if (read) this.readConfig = read;
  }

  startQueue(index: number, q: SplitVirtqueue, notify: () => void): void {
    if (this.current()) this.device.startQueue(index, q, notify);
  }

  kick(index: number): void {
    if (this.current()) this.device.kick(index);
  }

  stopQueue(index: number): void {
    if (this.current()) this.device.stopQueue(index);
  }
}

export class VhostUserEndpoint {
  private listener: sys.FdListener | null = null;
  private stream: sys.FdSocket | null = null;
  private current: VhostUserBackend | null = null;
  private timer: NodeJS.Timeout | null = null;
  private closed = false;
  private failing = false;
  private readonly log: BackendLog;
  /** Connections made so far (each one a fresh device session). */
  sessions = 0;

  constructor(
    private readonly opts: EndpointOptions,
    private readonly device: VhostUserDevice,
  ) {
    this.log = opts.log ?? (() => undefined);
  }

  get path(): string {
    return this.opts.path;
  }

  get mode(): EndpointMode {
    return this.opts.mode;
  }

  /** The live VMM connection's backend, if any. */
  get backend(): VhostUserBackend | null {
    return this.current;
  }

  start(): void {
    if (this.opts.mode === 'listen') this.listen();
    else this.connect();
  }

  private listen(): void {
    const p = this.opts.path;
    // A socket file left by an earlier prism is replaced; anything else at that path is not ours.
    if (fs.existsSync(p)) {
      if (!fs.lstatSync(p).isSocket()) throw new Error(`${p} exists and is not a socket: remove it or choose another path`);
      fs.rmSync(p);
    }
    const l = sys.listenUnix(p);
    this.listener = l;
    l.on('connection', (s: sys.FdSocket) => this.attach(s));
    l.on('error', (e: Error) => this.log('warn', `accept on ${p} failed: ${e.message}`));
  }

  private connect(): void {
    if (this.closed) return;
    const p = this.opts.path;
    sys.connectUnix(p).then(
      (s) => {
        if (this.closed) {
          s.destroy();
          return;
        }
        this.failing = false;
        this.attach(s);
      },
      (e: Error) => {
        if (!this.failing) this.log('info', `waiting for the VMM to listen on ${p}: ${e.message}; retrying every ${this.retryMs} ms`);
        this.failing = true;
        this.retry();
      },
    );
  }

  private get retryMs(): number {
    return this.opts.retryMs ?? 1000;
  }

  private retry(): void {
    if (this.closed || this.timer) return;
    this.timer = setTimeout(() => {
      this.timer = null;
      this.connect();
    }, this.retryMs);
  }

  private attach(s: sys.FdSocket): void {
    if (this.stream) {
      this.log('info', 'a new VMM connection replaces the old one');
      this.stream.destroy();
      // The old backend unmaps its memory as it winds down, and its ring stops will be ignored:
      // stop every ring of the device now, so nothing touches that memory again.
      for (let i = 0; i < this.device.queueCount; i++) this.device.stopQueue(i);
      this.opts.onSessionEnd?.('replaced');
    }
    const be = new VhostUserBackend(s, new SessionDevice(this.device, () => this.stream === s), this.log);
    this.stream = s;
    this.current = be;
    this.sessions += 1;
    this.log('info', `VMM connected (${this.opts.mode === 'listen' ? 'it connected to' : 'prism connected to'} ${this.opts.path})`);
    void be.finished.then(() => {
      if (this.current !== be) return;
      this.current = null;
      this.stream = null;
      this.opts.onSessionEnd?.('closed');
      if (this.opts.mode === 'connect') this.retry();
    });
  }

  /** Stops accepting or reconnecting, drops the VMM connection and removes a socket we created. */
  async close(): Promise<void> {
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    if (this.listener) {
      this.listener.close();
      fs.rmSync(this.opts.path, { force: true });
    }
    const be = this.current;
    this.stream?.destroy();
    if (be) await be.finished;
  }
}
