// Fuzz bench for the emulated USB disk's parsers: random and mutated CDBs through parseCdb and
// through ScsiDisk.prepare (on a read-write and a read-only in-memory disk), and random and mutated
// 31-byte CBWs through decodeCbw. A failure is any exception other than ScsiSenseError / CbwError,
// a ScsiSenseError whose sense is not its name's, a command with a number that is not an exact
// non-negative integer (or an LBA + blocks past MAX_LBA_END), a plan that moves more than the CDB
// allows (more than its allocation length, or blocks outside the disk), a refused prepare() that
// did not record its sense, or a decoded CBW that does not re-encode to its input (with the CBWCB
// bytes past bCBWCBLength zeroed, which the decoder ignores). Deterministic for a given --seed; a
// failure prints the input as hex, which reproduces it.
//
//   node --import tsx bench/fuzz-scsi.ts [--runs N] [--seed S]      (default 1e6 inputs, seed 1)
//
// Measured 2026-11-25 on the 2-core lab machine (load 4-6 from other jobs), Node 20: 1e6 inputs
// take 16-71 s (14 000-60 000 inputs/s, depending on the load; building the ~2.3 ScsiSenseErrors
// per input is most of it). Seeds 1-3, 1e6 inputs each: no failures.
import { readFileSync } from 'node:fs';
import { CbwError, CBW_SIGNATURE, CBW_SIZE, decodeCbw, encodeCbw } from '../src/usbip/emulated/bot.js';
import { MemoryImage, ScsiDisk, type ScsiPlan } from '../src/usbip/emulated/disk.js';
import { Asc, MAX_LBA_END, Opcode, parseCdb, ScsiSenseError, type ScsiCommand } from '../src/usbip/emulated/scsi.js';
import { fuzzArgs, xorshift32 } from './fuzz-common.js';

const { runs, seed, maxFailures } = fuzzArgs();
const { rnd, below, chance } = xorshift32(seed);

// --- seeds: the golden and malformed vectors ------------------------------------------------------
function loadSeeds(file: string): Buffer[] {
  const out: Buffer[] = [];
  for (const line of readFileSync(new URL(`../test/fixtures/usbip-emulated/${file}`, import.meta.url), 'utf8').split('\n')) {
    const m = /^([0-9a-f ]+?)\s+[=!]\s/.exec(line);
    if (m?.[1]) out.push(Buffer.from(m[1].replace(/ /g, ''), 'hex'));
  }
  if (out.length === 0) throw new Error(`no seeds in ${file}`);
  return out;
}
const cdbSeeds = loadSeeds('cdbs.txt');
const cbwSeeds = loadSeeds('cbws.txt');
const opcodes = Object.values(Opcode) as number[];
const interesting32 = [0, 1, 2, 0xff, 0x100, 0xffff, 0x1_0000, 0x7fff_ffff, 0x8000_0000, 0xffff_fffe, 0xffff_ffff, 0x1f_ffff, 0x20_0000];

function randomBytes(n: number): Buffer {
  const b = Buffer.allocUnsafe(n);
  for (let i = 0; i < n; i++) b[i] = rnd() & 0xff;
  return b;
}

function mutate(src: Buffer, seeds: Buffer[]): Buffer {
  let b = Buffer.from(src);
  for (let e = 1 + below(3); e > 0; e--) {
    switch (below(7)) {
      case 0:
        if (b.length > 0) b[below(b.length)]! ^= 1 << below(8);
        break;
      case 1:
        if (b.length > 0) b[below(b.length)] = [0, 0xff, 0x7f, 0x80, 1, 0x20, 0x04, rnd() & 0xff][below(8)] as number;
        break;
      case 2:
        if (b.length >= 4) b.writeUInt32BE(interesting32[below(interesting32.length)] as number, below(b.length - 3));
        break;
      case 3:
        b = b.subarray(0, below(b.length + 1));
        break;
      case 4:
        b = Buffer.concat([b, randomBytes(1 + below(8))]);
        break;
      case 5: {
        const other = seeds[below(seeds.length)] as Buffer;
        b = Buffer.concat([b.subarray(0, below(b.length + 1)), other.subarray(below(other.length + 1))]);
        break;
      }
      case 6:
        if (b.length > 0) b[0] = opcodes[below(opcodes.length)] as number;
        break;
    }
  }
  return b;
}

function nextCdb(): Buffer {
  const r = below(10);
  if (r < 2) return randomBytes(below(20));
  if (r < 4) {
    const len = [6, 10, 12, 16][below(4)] as number;
    const b = chance(0.5) ? Buffer.alloc(len) : randomBytes(len);
    b[0] = opcodes[below(opcodes.length)] as number;
    return b;
  }
  return mutate(cdbSeeds[below(cdbSeeds.length)] as Buffer, cdbSeeds);
}

function nextCbw(cdb: Buffer): Buffer {
  const r = below(10);
  if (r < 1) return randomBytes(below(40));
  if (r < 5) {
    // A well-formed frame around the CDB, with some header fields disturbed.
    const b = Buffer.alloc(CBW_SIZE);
    b.writeUInt32LE(chance(0.95) ? CBW_SIGNATURE : rnd(), 0);
    b.writeUInt32LE(rnd(), 4);
    b.writeUInt32LE(chance(0.5) ? (interesting32[below(interesting32.length)] as number) : rnd(), 8);
    b[12] = chance(0.8) ? (chance(0.5) ? 0x80 : 0x00) : ([0x81, 0x40, rnd() & 0xff][below(3)] as number);
    b[13] = chance(0.85) ? 0 : ([1, 0x10, rnd() & 0xff][below(3)] as number);
    b[14] = chance(0.8) ? Math.min(cdb.length, 16) : rnd() & 0xff;
    cdb.copy(b, 15, 0, Math.min(cdb.length, 16));
    return b;
  }
  return mutate(cbwSeeds[below(cbwSeeds.length)] as Buffer, cbwSeeds);
}

// --- the checks --------------------------------------------------------------------------------------
const image = new MemoryImage(Buffer.alloc(64 * 512));
const identity = { vendor: 'prism', product: 'Emulated Disk', revision: '0100', serial: '0123456789ABCDEF', removable: true };
const disks = [new ScsiDisk(image, identity), new ScsiDisk(new MemoryImage(image.bytes, true), identity)];
const counts = { commands: 0, refused: 0, plans: 0, prepareRefused: 0, cbws: 0, cbwErrors: 0 };
const ops = new Map<string, number>();
const senses = new Map<string, number>();
const cbwReasons = new Map<string, number>();
let failures = 0;

function fail(what: string, input: Buffer, err: unknown): void {
  failures++;
  console.log(`FAILURE ${failures}: ${what}\n  input ${input.toString('hex')}\n  ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
}

const exact = (n: number): boolean => Number.isSafeInteger(n) && n >= 0;

function checkCommand(c: ScsiCommand): string | null {
  for (const [k, v] of Object.entries(c)) if (typeof v === 'number' && !exact(v)) return `${k} = ${v}`;
  if ((c.op === 'read' || c.op === 'write' || c.op === 'synchronize-cache') && c.lba + c.blocks > MAX_LBA_END) return `LBA ${c.lba} + ${c.blocks} blocks`;
  if ('allocationLength' in c && c.allocationLength > 0xffff_ffff) return `allocation length ${c.allocationLength}`;
  return null;
}

function checkPlan(c: ScsiCommand, plan: ScsiPlan, disk: ScsiDisk): string | null {
  if (plan.direction === 'none') return null;
  if (!exact(plan.length)) return `plan length ${plan.length}`;
  if ('allocationLength' in c && plan.length > c.allocationLength) return `plan of ${plan.length} bytes for allocation length ${c.allocationLength}`;
  if (c.op === 'read' || c.op === 'write') {
    if (plan.length !== c.blocks * 512) return `plan of ${plan.length} bytes for ${c.blocks} blocks`;
    if (c.lba + c.blocks > disk.blocks) return `blocks ${c.lba}+${c.blocks} outside a ${disk.blocks}-block disk`;
    if (c.op === 'write' && disk.readOnly) return 'a write plan on a read-only disk';
  }
  return null;
}

function fuzzCdb(cdb: Buffer): void {
  let cmd: ScsiCommand | null = null;
  try {
    cmd = parseCdb(cdb);
  } catch (e) {
    if (!(e instanceof ScsiSenseError)) return fail('parseCdb threw a non-ScsiSenseError', cdb, e);
    if (e.sense !== Asc[e.senseName]) return fail(`ScsiSenseError ${e.senseName} carries another sense`, cdb, null);
    counts.refused++;
    senses.set(e.senseName, (senses.get(e.senseName) ?? 0) + 1);
  }
  if (cmd !== null) {
    counts.commands++;
    ops.set(cmd.op, (ops.get(cmd.op) ?? 0) + 1);
    const bad = checkCommand(cmd);
    if (bad !== null) fail(`parseCdb returned ${cmd.op} with ${bad}`, cdb, null);
  }
  for (const disk of disks) {
    // An ejected medium refuses most commands: load it again now and then.
    if (!disk.loaded && chance(0.5)) disk.reset();
    try {
      const plan = disk.prepare(cdb);
      counts.plans++;
      if (cmd === null) {
        fail('prepare() accepted a CDB parseCdb refuses', cdb, null);
        continue;
      }
      const bad = checkPlan(cmd, plan, disk);
      if (bad !== null) fail(`prepare(${cmd.op}) on a ${disk.readOnly ? 'read-only' : 'read-write'} disk: ${bad}`, cdb, null);
    } catch (e) {
      if (!(e instanceof ScsiSenseError)) {
        fail('prepare() threw a non-ScsiSenseError', cdb, e);
        continue;
      }
      counts.prepareRefused++;
      if (disk.sense !== e.sense) fail(`prepare() refused with ${e.senseName} but recorded another sense`, cdb, null);
    }
  }
}

function fuzzCbw(bytes: Buffer): void {
  counts.cbws++;
  try {
    const c = decodeCbw(bytes);
    if (c.cb.length < 1 || c.cb.length > 16 || !exact(c.tag) || !exact(c.dataTransferLength) || c.lun !== 0) return fail('decodeCbw returned a bad CBW', bytes, null);
    const canonical = Buffer.from(bytes);
    canonical.fill(0, 15 + c.cb.length);
    const again = encodeCbw(c);
    if (!again.equals(canonical)) fail(`CBW re-encodes to ${again.toString('hex')}`, bytes, null);
  } catch (e) {
    if (!(e instanceof CbwError)) return fail('decodeCbw threw a non-CbwError', bytes, e);
    counts.cbwErrors++;
    cbwReasons.set(e.reason, (cbwReasons.get(e.reason) ?? 0) + 1);
    if (e.valid === (e.reason === 'length' || e.reason === 'signature')) fail(`CbwError ${e.reason} with valid=${e.valid}`, bytes, null);
  }
}

// --- run -----------------------------------------------------------------------------------------------
console.log(`fuzzing the SCSI CDB parser, ScsiDisk.prepare and the CBW decoder: ${runs} inputs, seed ${seed}, ${cdbSeeds.length} CDB and ${cbwSeeds.length} CBW seeds`);
const started = performance.now();
let lastReport = started;
for (let i = 1; i <= runs && failures < maxFailures; i++) {
  const cdb = nextCdb();
  fuzzCdb(cdb);
  fuzzCbw(nextCbw(cdb));
  if ((i & 0xffff) === 0 && performance.now() - lastReport > 5000) {
    lastReport = performance.now();
    console.log(`  ${i} inputs, ${Math.round(i / ((lastReport - started) / 1000))}/s`);
  }
}
const seconds = (performance.now() - started) / 1000;
const list = (m: Map<string, number>): string => [...m].sort((a, b) => b[1] - a[1]).map(([k, n]) => `${k}:${n}`).join(' ');
console.log(`${runs} inputs in ${seconds.toFixed(1)} s = ${Math.round(runs / seconds)} inputs/s (each a CDB through parseCdb and prepare() on two disks, and a CBW through decodeCbw)`);
console.log(`CDBs parsed ${counts.commands} (${list(ops)}), refused ${counts.refused} (${list(senses)}); plans ${counts.plans}, prepare refused ${counts.prepareRefused}`);
console.log(`CBWs ${counts.cbws}: decoded ${counts.cbws - counts.cbwErrors}, CbwError ${counts.cbwErrors} (${list(cbwReasons)})`);
console.log(failures === 0 ? 'no failures' : `${failures} FAILURES`);
process.exitCode = failures === 0 ? 0 : 1;
