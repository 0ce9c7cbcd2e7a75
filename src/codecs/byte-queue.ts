// Received stream bytes not yet framed into messages, kept as the chunks they arrived in: the
// protocol readers (vhost-user, USB/IP) peek at headers across chunk boundaries and take whole
// messages, copying only when a message spans chunks. Pure: no I/O.

/** Received bytes not yet returned as messages: a list of chunks, read without joining them. */
export class ByteQueue {
  private chunks: Buffer[] = [];
  length = 0;

  push(chunk: Buffer): void {
    if (chunk.length === 0) return;
    this.chunks.push(chunk);
    this.length += chunk.length;
  }

  /** Bytes [at, at + n), which must be buffered: a view when they lie in one chunk, else a copy. */
  readonly peek = (at: number, n: number): Buffer => {
    let rel = at;
    for (const c of this.chunks) {
      if (rel >= c.length) {
        rel -= c.length;
        continue;
      }
      if (rel + n <= c.length) return c.subarray(rel, rel + n);
      break;
    }
    const out = Buffer.allocUnsafe(n);
    let have = 0;
    let skip = at;
    for (const c of this.chunks) {
      if (have === n) break;
      if (skip >= c.length) {
        skip -= c.length;
        continue;
      }
      have += c.copy(out, have, skip, Math.min(c.length, skip + n - have));
      skip = 0;
    }
    return out;
  };

  /** Removes and returns the first `size` bytes (a view when they lie in one chunk). */
  take(size: number): Buffer {
    this.length -= size;
    const first = this.chunks[0] as Buffer;
    if (first.length >= size) {
      if (first.length === size) this.chunks.shift();
      else this.chunks[0] = first.subarray(size);
      return first.subarray(0, size);
    }
    const out = Buffer.allocUnsafe(size); // every byte is copied in below
    let have = 0;
    while (have < size) {
      const c = this.chunks[0] as Buffer;
      const n = Math.min(c.length, size - have);
      c.copy(out, have, 0, n);
      have += n;
      if (n === c.length) this.chunks.shift();
      else this.chunks[0] = c.subarray(n);
    }
    return out;
  }
}
