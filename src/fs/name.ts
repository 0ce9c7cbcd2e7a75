// Names from clients are single path components. The kernel's openat2 flags do
// the confinement; this check only refuses what can never be a component, so a
// request is answered with a clear errno before any syscall.
import { Errno, FsError } from './errors.js';
import { NAME_MAX } from '../sys/index.js';

/**
 * Checks a name for create/lookup/rename/unlink: refuses empty, ".", "..",
 * and names containing "/" or NUL (EINVAL), and names over NAME_MAX bytes
 * (ENAMETOOLONG).
 */
export function checkName(name: Buffer): Buffer {
  if (name.length === 0) throw new FsError(Errno.EINVAL, 'empty name');
  if (name.length > NAME_MAX) throw new FsError(Errno.ENAMETOOLONG, `name is ${name.length} bytes; the limit is ${NAME_MAX}`);
  if (name.includes(0x2f)) throw new FsError(Errno.EINVAL, 'name contains "/"');
  if (name.includes(0)) throw new FsError(Errno.EINVAL, 'name contains NUL');
  if (isDot(name) || isDotDot(name)) throw new FsError(Errno.EINVAL, `name "${name.toString()}" is not a single component`);
  return name;
}

export const isDot = (n: Buffer): boolean => n.length === 1 && n[0] === 0x2e;
export const isDotDot = (n: Buffer): boolean => n.length === 2 && n[0] === 0x2e && n[1] === 0x2e;
