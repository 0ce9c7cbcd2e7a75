// The fid table of one 9P connection: what each fid the client holds points
// to, with a per-connection limit so a client cannot exhaust the server.
import type { FsNode } from '../fs/core.js';

export interface XattrRead { kind: 'xattr-read'; data: Buffer }
export interface XattrWrite { kind: 'xattr-write'; name: Buffer; size: number; flags: number; data: Buffer; written: number }

export interface Fid<N extends FsNode = FsNode> {
  node: N;
  /** Credentials the client attached with (n_uname, or the server's view of uname). */
  uid: number;
  /** Open file or directory fd after Tlopen/Tlcreate. */
  fd: number | null;
  /** Open flags (host O_* values) when open. */
  openFlags: number;
  /** Set for fids made by Txattrwalk / Txattrcreate. */
  xattr: XattrRead | XattrWrite | null;
  /**
   * Byte-range locks taken through this open fid, one open file description per lock owner
   * (Tlock proc_id and client_id), so that one owner's unlock leaves the others' locks alone.
   * `queue` runs the fid's lock requests one at a time.
   */
  locks?: { owners: Map<string, number>; queue: Promise<unknown> };
  /** The open file's filesystem has no RWF_NOWAIT reads: always read on the pool. */
  noCachedReads?: boolean;
}

export class FidTable<N extends FsNode = FsNode> {
  private readonly fids = new Map<number, Fid<N>>();
  constructor(readonly limit: number) {}

  get size(): number {
    return this.fids.size;
  }

  get(fid: number): Fid<N> | undefined {
    return this.fids.get(fid);
  }

  has(fid: number): boolean {
    return this.fids.has(fid);
  }

  /** Adds a fid; false if the table is full (the caller answers EMFILE). */
  add(fid: number, entry: Fid<N>): boolean {
    if (this.fids.size >= this.limit && !this.fids.has(fid)) return false;
    this.fids.set(fid, entry);
    return true;
  }

  delete(fid: number): Fid<N> | undefined {
    const f = this.fids.get(fid);
    this.fids.delete(fid);
    return f;
  }

  /** Removes and returns every fid (connection end, Tversion reset). */
  drain(): Fid<N>[] {
    const all = [...this.fids.values()];
    this.fids.clear();
    return all;
  }
}
