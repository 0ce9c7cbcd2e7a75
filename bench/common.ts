// Helpers every bench shares: process and machine CPU time from /proc, medians, and whether
// dist/ is current enough to run prism from (faster start-up than tsx).
import { execFileSync, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

/** This checkout's root. */
export const REPO = fileURLToPath(new URL('..', import.meta.url)).replace(/\/$/, '');

export const CLK_TCK = ((): number => {
  try {
    return Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
  } catch {
    return 100;
  }
})();

/** utime + stime of a process (all its threads), in seconds; NaN once it is gone. */
export function cpuSeconds(pid: number): number {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' '); // state is field 3: rest[0]
    return (Number(rest[11]) + Number(rest[12])) / CLK_TCK;
  } catch {
    return NaN;
  }
}

/** Busy CPU seconds of the whole machine (all CPUs, from /proc/stat; steal counted as busy). */
export function machineBusySeconds(): number {
  const f = (fs.readFileSync('/proc/stat', 'utf8').split('\n')[0] ?? '').trim().split(/\s+/).slice(1).map(Number);
  // user nice system idle iowait irq softirq steal (guest time is already inside user)
  const [user = 0, nice = 0, system = 0, , , irq = 0, softirq = 0, steal = 0] = f;
  return (user + nice + system + irq + softirq + steal) / CLK_TCK;
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const n = s.length;
  if (n === 0) return NaN;
  return n % 2 === 1 ? (s[(n - 1) / 2] as number) : ((s[n / 2 - 1] as number) + (s[n / 2] as number)) / 2;
}

/** A figure with two or three significant digits; '-' for NaN or infinity. */
export function fmt(v: number): string {
  if (!Number.isFinite(v)) return '-';
  return v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2);
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

function walkTs(dir: string, out: string[] = []): string[] {
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) walkTs(p, out);
    else if (e.name.endsWith('.ts') && !e.name.endsWith('.d.ts')) out.push(p);
  }
  return out;
}

/** Why dist/ cannot stand for src/ (a missing or older .js), or null when it is up to date. */
export function distStale(): string | null {
  const main = path.join(REPO, 'dist/src/cli/main.js');
  if (!fs.existsSync(main)) return 'dist/src/cli/main.js is missing';
  for (const ts of walkTs(path.join(REPO, 'src'))) {
    const rel = path.relative(REPO, ts).replace(/\.ts$/, '.js');
    const js = path.join(REPO, 'dist', rel);
    if (!fs.existsSync(js)) return `dist/${rel} is missing`;
    if (fs.statSync(js).mtimeMs < fs.statSync(ts).mtimeMs) return `dist/${rel} is older than ${path.relative(REPO, ts)}`;
  }
  return null;
}

// --- processes a bench starts (and only those are ever killed) -----------------------------------

const children = new Set<ChildProcess>();

/** Remembers a child this bench started, so killAllNow() can end it. */
export function track(child: ChildProcess): ChildProcess {
  children.add(child);
  child.once('exit', () => children.delete(child));
  return child;
}

export function alive(child: ChildProcess): boolean {
  return child.exitCode === null && child.signalCode === null;
}

/** SIGTERM, then SIGKILL after 3 s; resolves when the child has exited. */
export async function stopChild(child: ChildProcess): Promise<void> {
  if (!alive(child) || child.pid === undefined) return;
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  process.kill(child.pid, 'SIGTERM');
  const t = setTimeout(() => {
    if (alive(child) && child.pid !== undefined) process.kill(child.pid, 'SIGKILL');
  }, 3000);
  await exited;
  clearTimeout(t);
}

/** SIGKILL to every tracked child still running (error and signal paths). */
export function killAllNow(): void {
  for (const c of children) {
    if (alive(c) && c.pid !== undefined) {
      try {
        process.kill(c.pid, 'SIGKILL');
      } catch {
        // gone already
      }
    }
  }
}

export interface BenchSession {
  /** Aborted on SIGINT/SIGTERM (just before the process exits). */
  readonly signal: AbortSignal;
  /** Stops `children` (SIGTERM, then SIGKILL), kills any other tracked child, and keeps or removes the work directory. */
  end(children: readonly ChildProcess[]): Promise<void>;
}

/**
 * A bench run's lifetime around its work directory: SIGINT/SIGTERM abort the signal, kill every
 * tracked child, remove `work` (unless `keep`) and exit 130; end() is the normal way out.
 */
export function benchSession(work: string, keep: boolean, log: (msg: string) => void): BenchSession {
  const controller = new AbortController();
  const onSignal = (): void => {
    controller.abort();
    killAllNow();
    if (!keep) fs.rmSync(work, { recursive: true, force: true });
    process.exit(130);
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  return {
    signal: controller.signal,
    async end(children) {
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
      await Promise.all(children.map((c) => stopChild(c)));
      killAllNow();
      if (keep) log(`kept ${work}`);
      else fs.rmSync(work, { recursive: true, force: true });
    },
  };
}
