// The vhost-user codec: constants, message types, a MessageReader that frames the stream and
// assigns fds, decoders and encoders for front-end requests, back-end replies and back-end
// requests, and the fd/reply rules. Pure (no I/O). Spec: QEMU docs/interop/vhost-user.rst.
export * from './constants.js';
export type * from './messages.js';
export { DecodeError, ProtocolError, type DecodeErrorDetails, type DecodeErrorReason, type ProtocolErrorReason } from './errors.js';
export { MessageReader, decodeBackend, decodeFrontend, decodeReply, readHeader, type MessageReaderOptions, type ReceivedMessage } from './decode.js';
export { encodeBackend, encodeFrontend, encodeReply } from './encode.js';
export { REQUESTS_WITH_REPLY, backendFdCount, expectsReply, frontendFdCount, frontendStrayFds, replyFdCount } from './rules.js';
