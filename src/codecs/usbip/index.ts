// The USB/IP codec: constants, message types, stream readers for each side (RequestReader for a
// server, ReplyReader for a client), pure decoders and encoders, and the setup packet. Pure (no
// I/O). Spec: Linux Documentation/usb/usbip_protocol.rst.
export * from './constants.js';
export type * from './messages.js';
export { DecodeError, ProtocolError, type UsbipErrorDetails, type UsbipErrorReason } from './errors.js';
export { ReplyReader, RequestReader, decodeReply, decodeRequest, decodeSetup, messageName, type SubmitLookup } from './decode.js';
export { encode, encodeParts, encodeSetup } from './encode.js';
