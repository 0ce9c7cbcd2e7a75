// How a failed command is shown to a person: one line saying what failed and
// what to do (the errors themselves carry that text), exit status by kind.
import { AddressError } from '../transport/index.js';
import { CommanderError } from 'commander';

export class UsageError extends Error {
  override readonly name = 'UsageError';
}

/** Exit status: 2 for a mistake in the command line, 1 for a failure while running. */
export function exitCodeFor(e: unknown): number {
  return e instanceof AddressError || e instanceof UsageError ? 2 : 1;
}

export function report(e: unknown): void {
  if (e instanceof CommanderError) return; // commander printed it already
  const msg = e instanceof Error ? e.message : String(e);
  process.stderr.write(`prism: ${msg}\n`);
  if (process.env.PRISM_DEBUG && e instanceof Error && e.stack) process.stderr.write(`${e.stack}\n`);
}
