// The 9P2000.L codec: constants, message types, frame reader, decoders, encoders, dirents.
// Pure (no I/O). Spec: diod protocol.md; Linux include/net/9p/9p.h and net/9p/.
export * from './constants.js';
export type * from './messages.js';
export { DecodeError, ProtocolError, type DecodeErrorDetails } from './errors.js';
export { FrameReader, decodeR, decodeT, readHeader } from './decode.js';
export {
  allocRread,
  allocRreaddir,
  encodeR,
  encodeRreadHeader,
  encodeT,
  encodeTwriteHeader,
  encodedSize,
  finishRread,
  finishRreaddir,
  type DataFrame,
} from './encode.js';
export { decodeDirents, direntSize, encodeDirents, writeDirents, type Dirent } from './dirent.js';
export { LAYOUT, REPLY_KINDS, REQUEST_KINDS, type FieldKind } from './layout.js';
