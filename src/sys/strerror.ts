// Human text for an errno value, from libuv's table via Node (util.getSystemErrorMessage
// is Node >= 22, so fall back to the name map available on Node 20).
import * as util from 'node:util';

type GetMessage = (errno: number) => string;
const getMessage = (util as unknown as { getSystemErrorMessage?: GetMessage }).getSystemErrorMessage;
const names = util.getSystemErrorMap();

export function strerror(errno: number): string {
  if (getMessage) {
    try {
      return getMessage(-errno);
    } catch {
      // fall through to the map
    }
  }
  return names.get(-errno)?.[1] ?? `errno ${errno}`;
}
