// What the fuzz benches share: their command line (--runs, --seed, --max-failures)
// and a deterministic PRNG (xorshift32), so a failure reproduces from its seed.
import { parseArgs } from 'node:util';

export interface FuzzArgs { runs: number; seed: number; maxFailures: number }

export function fuzzArgs(): FuzzArgs {
  const { values } = parseArgs({
    options: {
      runs: { type: 'string', default: '1000000' },
      seed: { type: 'string', default: '1' },
      'max-failures': { type: 'string', default: '10' },
    },
  });
  const runs = Number(values.runs);
  if (!Number.isSafeInteger(runs) || runs < 1) throw new Error(`--runs must be a positive integer, got ${values.runs}`);
  return { runs, seed: Number(values.seed), maxFailures: Number(values['max-failures']) };
}

export interface Rng {
  rnd: () => number;
  below: (n: number) => number;
  chance: (p: number) => boolean;
}

export function xorshift32(seed: number): Rng {
  let state = (seed >>> 0) || 0x9e3779b9;
  const rnd = (): number => {
    state ^= state << 13;
    state >>>= 0;
    state ^= state >>> 17;
    state ^= state << 5;
    state >>>= 0;
    return state;
  };
  return { rnd, below: (n) => rnd() % n, chance: (p) => rnd() / 0x1_0000_0000 < p };
}
