// The two ways USB/IP input can be bad, as error classes with stable codes (the undici pattern):
// - ProtocolError: the stream cannot be split into messages any more: an unknown command or
//   operation code, an operation version other than 0x0111, a direction other than 0/1, an OUT
//   transfer or ISO packet count above the limit (its bytes would have to be read to skip it), a
//   RET_SUBMIT for a request the client never sent. Nothing after it can be trusted: close the
//   connection.
// - DecodeError: one whole message is malformed but was consumed, and the stream stays framed: an
//   endpoint above 15, ISO descriptors that do not fit the buffer or whose lengths do not add up,
//   an IN transfer above the limit, a busid without its NUL. A server answers it (RET_SUBMIT with
//   an error status, OP_REP_IMPORT with an error status) and carries on. The pure decoders, which
//   are given one message's bytes, report everything as DecodeError (with 'short' and 'length'
//   for bytes that do not match the message).
import { StacklessError } from '../stackless-error.js';

/**
 * - 'short': fewer bytes than the message needs.
 * - 'length': more bytes than the message has, or lengths that contradict each other.
 * - 'command': an unknown command or operation code, or one that travels the other way.
 * - 'version': an operation message whose version is not 0x0111.
 * - 'direction': a direction other than 0 (OUT) or 1 (IN).
 * - 'too-long': a transfer length (or device count) above the limit.
 * - 'iso': number_of_packets out of range, or packet descriptors that do not fit or add up.
 * - 'endpoint': an endpoint number above 15.
 * - 'string': a busid or path without its terminating NUL.
 * - 'seqnum': a RET_SUBMIT for a seqnum the client has no request for.
 */
export type UsbipErrorReason = 'short' | 'length' | 'command' | 'version' | 'direction' | 'too-long' | 'iso' | 'endpoint' | 'string' | 'seqnum';

export interface UsbipErrorDetails {
  /** The message's command or operation code, when its header was readable. */
  code?: number;
  /** The PDU's seqnum, when its header was readable (a server answers the error to it). */
  seqnum?: number;
}

/** What the two codec errors share: why, and which message (code, seqnum) when readable. */
abstract class UsbipCodecError extends StacklessError {
  readonly reason: UsbipErrorReason;
  /** The command or operation code of the message, if readable. */
  readonly messageCode: number | undefined;
  /** Its seqnum (PDUs), if readable. */
  readonly seqnum: number | undefined;
  constructor(message: string, reason: UsbipErrorReason, details: UsbipErrorDetails = {}) {
    super(message);
    this.reason = reason;
    this.messageCode = details.code;
    this.seqnum = details.seqnum;
  }
}

/** The stream cannot be framed (the connection must end). */
export class ProtocolError extends UsbipCodecError {
  override readonly name = 'ProtocolError';
  readonly code = 'ERR_USBIP_FRAMING';
}

/** One message is malformed but framed (it is refused; the stream goes on). */
export class DecodeError extends UsbipCodecError {
  override readonly name = 'DecodeError';
  readonly code = 'ERR_USBIP_DECODE';
}
