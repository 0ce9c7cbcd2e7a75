// A 9P2000.L file server: one filesystem core, any number of listeners, one
// session per connection.
import type { FileSystem, FsNode } from '../fs/core.js';
import type { Connection, Listener } from '../transport/index.js';
import { ServerSession, type SessionOptions } from './session.js';

export interface ServerOptions extends SessionOptions {
  /** Most connections at once; more are closed on arrival. */
  maxConnections?: number;
}

export class NinePServer<N extends FsNode = FsNode> {
  private readonly sessions = new Set<ServerSession<N>>();
  private readonly listeners: Listener[] = [];

  constructor(
    private readonly fs: FileSystem<N>,
    private readonly opts: ServerOptions,
  ) {}

  get connectionCount(): number {
    return this.sessions.size;
  }

  /** Serves every connection the listener accepts. */
  serve(listener: Listener): void {
    this.listeners.push(listener);
    listener.on('connection', (c: Connection) => this.accept(c));
  }

  /** Serves one already-connected stream. */
  accept(c: Connection): ServerSession<N> | null {
    const log = this.opts.log ?? (() => undefined);
    if (this.sessions.size >= (this.opts.maxConnections ?? 256)) {
      log('warn', 'connection refused: too many connections', { peer: c.peer });
      c.stream.destroy();
      return null;
    }
    const s = new ServerSession(c.stream, this.fs, c.peer, this.opts);
    this.sessions.add(s);
    log('info', 'connection accepted', { peer: c.peer });
    void s.finished.then(() => this.sessions.delete(s));
    return s;
  }

  /** Stops accepting, ends every connection, waits until their fids are released. */
  async close(): Promise<void> {
    await Promise.all(this.listeners.map((l) => l.close()));
    const all = [...this.sessions];
    for (const s of all) s.end();
    await Promise.all(all.map((s) => s.finished));
  }
}
