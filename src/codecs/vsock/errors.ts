// How a virtio-vsock packet can be bad, as one error class with a stable code and a reason
// (the undici pattern). The header, when it could be read, rides along: a device answers most bad
// packets with an RST to the ports they name, and needs them for that.
import type { VsockHeader } from './header.js';
import { StacklessError } from '../stackless-error.js';

/**
 * - 'short': fewer than 44 bytes, no header to read.
 * - 'cid': a CID with its reserved upper 32 bits set.
 * - 'length': the header's len does not match the bytes that follow it, or a packet other than RW
 *   carries data.
 * - 'too-long': a payload above the limit (64 KiB by default, Linux's largest packet).
 * - 'type': a socket type other than STREAM (SEQPACKET only when allowed).
 * - 'op': an operation outside 1..7.
 */
export type VsockDecodeReason = 'short' | 'cid' | 'length' | 'too-long' | 'type' | 'op';

export class VsockDecodeError extends StacklessError {
  override readonly name = 'VsockDecodeError';
  readonly code = 'ERR_VSOCK_DECODE';
  readonly reason: VsockDecodeReason;
  /** The header as read, when there was one to read (every reason but 'short' and 'cid'). */
  readonly header: VsockHeader | undefined;
  constructor(message: string, reason: VsockDecodeReason, header?: VsockHeader) {
    super(message);
    this.reason = reason;
    this.header = header;
  }
}
