// The host end of the hybrid-vsock handshake, as a VMM serves it (cloud-hypervisor
// virtio-devices/src/vsock/unix/muxer.rs, Firecracker docs/vsock.md): a host program connects to
// the VMM's Unix socket and writes `CONNECT <port>\n`; once the guest accepts, the VMM answers
// `OK <host-side port>\n` and the stream carries the connection. The client side of the same
// handshake is ../hvsock.ts (its HandshakeError is shared). Pure: no I/O.
//
// Leniency matches cloud-hypervisor, so tools written for it work unchanged: the word is
// case-insensitive, blanks around the port are ignored, and a CR before the LF is accepted.
import { HandshakeError } from '../hvsock.js';

export { HandshakeError };

/** Longest CONNECT line accepted, newline included (cloud-hypervisor reads at most 32 bytes). */
export const MAX_CONNECT_LINE = 32;

export type ConnectResult =
  | { done: false }
  | { done: true; port: number; rest: Buffer };

const WORD = 'connect';

/** Could `line` (no newline yet) still grow into a valid CONNECT line? */
function couldBeConnect(line: string): boolean {
  const head = line.slice(0, WORD.length).toLowerCase();
  if (!WORD.startsWith(head)) return false;
  if (line.length <= WORD.length) return true;
  return /^[ \t]+[0-9]*[ \t]*\r?$/.test(line.slice(WORD.length)) && /^[ \t]/.test(line.slice(WORD.length));
}

/**
 * Parses the host program's request from the bytes received so far. `{done: false}` while the line
 * is incomplete (and could still become valid); throws HandshakeError when it cannot. `rest` is
 * whatever followed the newline: the first bytes of the stream, for the guest.
 */
export function parseConnect(received: Buffer): ConnectResult {
  const nl = received.indexOf(0x0a);
  const line = (nl < 0 ? received : received.subarray(0, nl)).toString('latin1');
  // Fail as soon as the bytes cannot start "connect ": a stray client need not wait for a timeout.
  if (nl < 0 && !couldBeConnect(line)) throw new HandshakeError(`expected "CONNECT <port>", got ${JSON.stringify(line.slice(0, MAX_CONNECT_LINE))}`);
  if (nl < 0) {
    if (received.length >= MAX_CONNECT_LINE) throw new HandshakeError(`the CONNECT line is longer than ${MAX_CONNECT_LINE} bytes`);
    return { done: false };
  }
  if (nl + 1 > MAX_CONNECT_LINE) throw new HandshakeError(`the CONNECT line is longer than ${MAX_CONNECT_LINE} bytes`);
  const m = /^connect[ \t]+([0-9]{1,10})[ \t]*\r?$/i.exec(line);
  if (!m?.[1]) throw new HandshakeError(`expected "CONNECT <port>", got ${JSON.stringify(line)}`);
  const port = Number(m[1]);
  if (port > 0xffff_ffff) throw new HandshakeError(`port ${m[1]} is out of range (0..4294967295)`);
  return { done: true, port, rest: received.subarray(nl + 1) };
}

/** `OK <port>\n`: the guest accepted; `port` is the host-side port of the connection. */
export function encodeOk(localPort: number): Buffer {
  if (!Number.isInteger(localPort) || localPort < 0 || localPort > 0xffff_ffff) throw new RangeError(`port must be a u32, got ${localPort}`);
  return Buffer.from(`OK ${localPort}\n`, 'ascii');
}
