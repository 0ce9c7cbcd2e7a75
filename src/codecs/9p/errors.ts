// The two ways 9P input can be bad, as error classes with stable codes (the undici pattern):
// - ProtocolError: the byte stream cannot be split into frames any more (a size field below the
//   header size or above the negotiated msize). Nothing after it can be trusted: close the
//   connection.
// - DecodeError: one whole frame is malformed or of an unknown type. The stream stays framed, so a
//   server answers Rlerror(errno) with the tag and carries on.
import { Errno, NOTAG } from './constants.js';
import { StacklessError } from '../stackless-error.js';

export class ProtocolError extends Error {
  override readonly name = 'ProtocolError';
  readonly code = 'ERR_9P_FRAMING';
  /** The size field that could not be accepted. */
  readonly size: number;
  /** The frame-size limit in force. */
  readonly maxSize: number;
  constructor(message: string, size: number, maxSize: number) {
    super(message);
    this.size = size;
    this.maxSize = maxSize;
  }
}

export interface DecodeErrorDetails {
  /** The frame's tag, or NOTAG when not even the 7-byte header was readable. */
  tag?: number;
  /** The frame's type byte, when readable. */
  messageType?: number;
  /** The Linux errno to answer with; default EPROTO. */
  errno?: number;
  cause?: unknown;
}

export class DecodeError extends StacklessError {
  override readonly name = 'DecodeError';
  readonly code = 'ERR_9P_DECODE';
  /** Tag to answer on (NOTAG if the header was unreadable). */
  readonly tag: number;
  /** The type byte, if the header was readable. */
  readonly messageType: number | undefined;
  /**
   * Suggested Linux errno for Rlerror: EPROTO for a malformed frame, EOPNOTSUPP for a 9P2000 or
   * 9P2000.u request that 9P2000.L dropped, ENOSYS for a type number 9P does not define.
   */
  readonly errno: number;
  constructor(message: string, details: DecodeErrorDetails = {}) {
    super(message, details.cause === undefined ? undefined : { cause: details.cause });
    this.tag = details.tag ?? NOTAG;
    this.messageType = details.messageType;
    this.errno = details.errno ?? Errno.EPROTO;
  }
}
