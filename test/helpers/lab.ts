// The one entry point tests use for the guest lab (lab/guest.ts). Tests that need a guest call
// requireLab() first: without the lab they fail with the set-up instructions, they never skip.
import assert from 'node:assert/strict';
import { labPaths, type GuestResult, type LabPaths } from '../../lab/guest.js';

export {
  DEFAULT_TIMEOUT_MS,
  EXIT_MARKER,
  GUEST_PRELUDE,
  INIT_MARKER,
  LAB_SETUP_HINT,
  LabNotSetUpError,
  labDir,
  labPaths,
  newcArchive,
  qemuArgs,
  runGuest,
} from '../../lab/guest.js';
export type { GuestFile, GuestOptions, GuestResult, LabPaths, SerialPort, VhostUserDevice } from '../../lab/guest.js';

/** The lab's paths; throws LabNotSetUpError ("guest lab not set up: run `bash lab/setup.sh` ...") if missing. */
export function requireLab(): LabPaths {
  return labPaths();
}

/** The last lines of a guest run, for assertion messages. */
export function guestTail(result: GuestResult, lines = 40): string {
  const consoleTail = result.console.trimEnd().split('\n').slice(-lines).join('\n');
  const stderr = result.stderr.trim();
  return [
    `exitCode=${String(result.exitCode)} timedOut=${String(result.timedOut)} qemu=${String(result.qemuExitCode ?? result.qemuSignal)} ${Math.round(result.durationMs)} ms`,
    '--- console (tail) ---',
    consoleTail,
    ...(stderr ? ['--- qemu stderr ---', stderr] : []),
  ].join('\n');
}

/** Asserts the guest script exited with `code`, showing the console tail otherwise. */
export function assertGuestExit(result: GuestResult, code: number): void {
  assert.equal(result.exitCode, code, `guest script exit code\n${guestTail(result)}`);
}
