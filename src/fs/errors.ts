// Errors of the filesystem core. Every failure carries an errno, so a protocol
// layer (9P Rlerror, FUSE out.error) can answer with it and carry on.
import { SysError, errnoName } from '../sys/index.js';
import { constants as osConstants } from 'node:os';

const E = osConstants.errno;

/** A refusal by prism's own policy (bad name, read-only export, device node...). */
export class FsError extends Error {
  override readonly name = 'FsError';
  readonly code: string;
  readonly errno: number;
  constructor(errno: number, message: string) {
    super(message);
    this.errno = errno;
    this.code = errnoName(errno);
  }
}

export const Errno = {
  EPERM: E.EPERM, ENOENT: E.ENOENT, EIO: E.EIO, EBADF: E.EBADF, EAGAIN: E.EAGAIN, EACCES: E.EACCES,
  EEXIST: E.EEXIST, EXDEV: E.EXDEV, ENOTDIR: E.ENOTDIR, EISDIR: E.EISDIR, EINVAL: E.EINVAL,
  ENFILE: E.ENFILE, EMFILE: E.EMFILE, EFBIG: E.EFBIG, ENOSPC: E.ENOSPC, EROFS: E.EROFS, ERANGE: E.ERANGE,
  ENAMETOOLONG: E.ENAMETOOLONG, ENOSYS: E.ENOSYS, ENOTEMPTY: E.ENOTEMPTY, ELOOP: E.ELOOP,
  ENODATA: E.ENODATA, EPROTO: E.EPROTO, EOPNOTSUPP: E.EOPNOTSUPP, ENOTSUP: E.ENOTSUP ?? E.EOPNOTSUPP,
  ECANCELED: E.ECANCELED, E2BIG: E.E2BIG, EBUSY: E.EBUSY, EINTR: E.EINTR, EMSGSIZE: E.EMSGSIZE, ENOLCK: E.ENOLCK,
} as const;

/** The errno to report for any error thrown by the core (EIO for the unexpected). */
export function errnoOf(e: unknown): number {
  if (e instanceof FsError || e instanceof SysError) return e.errno;
  const code = (e as { code?: unknown }).code;
  if (typeof code === 'string') {
    const n = (E as Record<string, number | undefined>)[code];
    if (n !== undefined) return n;
  }
  return Errno.EIO;
}
