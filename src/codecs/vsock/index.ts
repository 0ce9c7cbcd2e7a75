// The virtio-vsock codec: constants, the packet header, events and config space (virtio 1.2
// §5.10), and the host end of the hybrid-vsock CONNECT/OK handshake. Pure (no I/O).
export * from './constants.js';
export { VsockDecodeError, type VsockDecodeReason } from './errors.js';
export {
  checkHeader, decodeConfig, decodeEvent, decodeHeader, decodePacket, describeHeader, encodeConfig, encodeEvent, encodeHeader, encodePacket,
  type DecodeOptions, type VsockHeader, type VsockPacket,
} from './header.js';
export { HandshakeError, MAX_CONNECT_LINE, encodeOk, parseConnect, type ConnectResult } from './hybrid.js';
