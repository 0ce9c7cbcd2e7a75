// prism/sys: typed wrappers over the native layer. The only door to the kernel.
export { SysError, errnoName } from './errors.js';
export { C as constants } from './binding.js';
export * from './fs.js';
export * from './socket.js';
export * from './mem.js';
export { PATH_MAX, NAME_MAX } from './validate.js';
