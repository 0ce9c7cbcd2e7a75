#!/usr/bin/env node
// prism command line: `prism <area> <verb>`. Each area module builds its own
// commander subcommand; this file only assembles them and reports errors.
import { Command } from 'commander';
import { readFileSync, existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { sysCommand } from './sys.js';
import { transportCommand } from './transport.js';
import { ninepCommand } from './ninep.js';
import { netCommand } from './net.js';
import { vsockCommand } from './vsock.js';
import { usbipCommand } from './usbip.js';
import { exitCodeFor, report } from './errors.js';

/** The package's version, from its package.json (found from src/cli or dist/src/cli). */
function version(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 4; i++, dir = dirname(dir)) {
    const p = join(dir, 'package.json');
    if (existsSync(p)) return (JSON.parse(readFileSync(p, 'utf8')) as { version: string }).version;
  }
  return 'unknown';
}

export function buildProgram(): Command {
  const program = new Command('prism')
    .description('host-side isolation services for compartmentalized operating systems')
    .version(version())
    .showHelpAfterError('(run with --help for usage)')
    .addCommand(ninepCommand())
    .addCommand(netCommand())
    .addCommand(sysCommand())
    .addCommand(vsockCommand())
    .addCommand(usbipCommand())
    .addCommand(transportCommand());
  return program;
}

try {
  await buildProgram().parseAsync(process.argv);
} catch (e) {
  report(e);
  process.exitCode = exitCodeFor(e);
}
