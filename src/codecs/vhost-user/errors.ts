// The two ways vhost-user input can be bad, as error classes with stable codes (the undici pattern):
// - ProtocolError: the byte stream cannot be split into messages any more (a size field above the
//   limit), or fds arrived that no message can own (more than MAX_FDS_PER_MESSAGE for one message,
//   or fds with no bytes). Nothing after it can be trusted: close the connection, and close every
//   fd MessageReader.takeFds() hands back.
// - DecodeError: one whole message is malformed, of an unknown request, or came with the wrong
//   number of fds. The stream stays framed. What to do is the back-end's choice: the spec expects a
//   back-end to close the connection on errors it cannot report, and to answer a failed REPLY_ACK
//   when the front-end asked for one (needReply).
import { StacklessError } from '../stackless-error.js';

export type ProtocolErrorReason = 'size' | 'fds';

export class ProtocolError extends Error {
  override readonly name = 'ProtocolError';
  readonly code = 'ERR_VHOST_USER_FRAMING';
  /** 'size': a size field above the limit; 'fds': fds no message can own. */
  readonly reason: ProtocolErrorReason;
  /** The size field that could not be accepted (reason 'size'), else 0. */
  readonly size: number;
  /** The payload-size limit in force. */
  readonly maxSize: number;
  constructor(message: string, reason: ProtocolErrorReason, size: number, maxSize: number) {
    super(message);
    this.reason = reason;
    this.size = size;
    this.maxSize = maxSize;
  }
}

/**
 * - 'header': shorter than 12 bytes, size field not matching the bytes, a version other than 1, the
 *   REPLY flag on a request (or missing on a reply), reserved flag bits.
 * - 'unknown-request': a request number the codec does not know (see `request`).
 * - 'payload': the payload does not have the layout or values its request requires.
 * - 'fds': the payload is fine but the number of fds that came with it is wrong.
 */
export type DecodeErrorReason = 'header' | 'unknown-request' | 'payload' | 'fds';

export interface DecodeErrorDetails {
  reason: DecodeErrorReason;
  /** The header's request number, when the 12-byte header was readable. */
  request?: number;
  /** The request's name, when known. */
  requestName?: string;
  /** The header's NEED_REPLY bit, when readable. */
  needReply?: boolean;
  cause?: unknown;
}

export class DecodeError extends StacklessError {
  override readonly name = 'DecodeError';
  readonly code = 'ERR_VHOST_USER_DECODE';
  readonly reason: DecodeErrorReason;
  /** Request number from the header (undefined when the header was unreadable). */
  readonly request: number | undefined;
  /** Its name, if the codec knows the number. */
  readonly requestName: string | undefined;
  /** Whether the sender asked for a REPLY_ACK; a back-end can then answer a failure. */
  readonly needReply: boolean;
  constructor(message: string, details: DecodeErrorDetails) {
    super(message, details.cause === undefined ? undefined : { cause: details.cause });
    this.reason = details.reason;
    this.request = details.request;
    this.requestName = details.requestName;
    this.needReply = details.needReply ?? false;
  }
}
