// Hybrid vsock handshake (cloud-hypervisor docs/vsock.md, Firecracker docs/vsock.md):
// a host process connects to the VMM's Unix socket, writes `CONNECT <port>\n`,
// and the VMM answers `OK <host-side port>\n` once the guest accepted. Pure: no I/O.

/** Longest reply line we accept; a real one is "OK 4294967295\n" (14 bytes). */
export const MAX_REPLY_LINE = 64;

export class HandshakeError extends Error {
  override readonly name = 'HandshakeError';
  readonly code = 'ERR_PRISM_HVSOCK_HANDSHAKE';
  get detail(): string {
    return this.message;
  }
}

export function encodeConnect(port: number): Buffer {
  if (!Number.isInteger(port) || port < 0 || port > 0xffff_ffff) throw new RangeError(`vsock port must be 0..4294967295, got ${port}`);
  return Buffer.from(`CONNECT ${port}\n`, 'ascii');
}

export type ReplyResult =
  | { done: false }
  | { done: true; hostPort: number; rest: Buffer };

/**
 * Parses the VMM's reply from the bytes received so far. Returns `{done: false}`
 * while the line is incomplete; throws HandshakeError on anything but `OK <u32>\n`.
 * `rest` holds bytes after the line (the start of the guest's stream).
 */
export function parseReply(received: Buffer): ReplyResult {
  const nl = received.indexOf(0x0a);
  if (nl < 0) {
    if (received.length >= MAX_REPLY_LINE) throw new HandshakeError(`VMM reply is longer than ${MAX_REPLY_LINE} bytes without a newline`);
    return { done: false };
  }
  if (nl >= MAX_REPLY_LINE) throw new HandshakeError(`VMM reply line is longer than ${MAX_REPLY_LINE} bytes`);
  const line = received.subarray(0, nl).toString('latin1');
  const m = /^OK ([0-9]{1,10})$/.exec(line);
  if (!m?.[1]) throw new HandshakeError(`VMM refused or garbled the connection: expected "OK <port>", got ${JSON.stringify(line)}`);
  const hostPort = Number(m[1]);
  if (hostPort > 0xffff_ffff) throw new HandshakeError(`VMM reply port ${hostPort} is out of range`);
  return { done: true, hostPort, rest: received.subarray(nl + 1) };
}
