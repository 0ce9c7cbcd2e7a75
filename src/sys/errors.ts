// The one error class of the sys layer: a failed syscall, with the errno's
// name as a stable `code`, the number, the syscall and the path it concerned.
import { getSystemErrorMap } from 'node:util';
import { strerror } from './strerror.js';

const errorMap = getSystemErrorMap();

/** The errno's symbolic name ('ENOENT'), as libuv knows it. */
export function errnoName(errno: number): string {
  return errorMap.get(-errno)?.[0] ?? `E${errno}`;
}

export interface NativeErrorShape { code: string; errno: number; syscall: string }

export class SysError extends Error {
  override readonly name = 'SysError';
  readonly code: string;
  readonly errno: number;
  readonly syscall: string;
  readonly path: string | undefined;

  constructor(code: string, errno: number, syscall: string, path?: string, options?: ErrorOptions) {
    super(`${syscall}${path === undefined ? '' : ` '${path}'`} failed: ${code} (${strerror(errno)})`, options);
    this.code = code;
    this.errno = errno;
    this.syscall = syscall;
    this.path = path;
  }

  /** Is this the given errno name (e.g. `err.is('ENOENT')`)? */
  is(code: string): boolean {
    return this.code === code;
  }
}

export function isNativeError(e: unknown): e is NativeErrorShape {
  return (
    typeof e === 'object' && e !== null &&
    typeof (e as NativeErrorShape).code === 'string' &&
    typeof (e as NativeErrorShape).errno === 'number' &&
    typeof (e as NativeErrorShape).syscall === 'string'
  );
}

/** Turns what the native layer threw or rejected with into a SysError (other errors pass through). */
export function toSysError(e: unknown, path?: string): unknown {
  if (e instanceof SysError) return e;
  if (isNativeError(e)) return new SysError(e.code, e.errno, e.syscall, path);
  return e;
}

/** Runs a synchronous native call, converting its error. */
export function sync<T>(fn: () => T, path?: string): T {
  try {
    return fn();
  } catch (e) {
    throw toSysError(e, path);
  }
}

/** Awaits an asynchronous native call, converting its rejection. */
export async function async<T>(p: Promise<T>, path?: string): Promise<T> {
  try {
    return await p;
  } catch (e) {
    throw toSysError(e, path);
  }
}
