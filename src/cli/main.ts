#!/usr/bin/env node
// prism command line: `prism <area> <verb>`. Each area module builds its own
// commander subcommand; this file only assembles them and reports errors.
import { Command } from 'commander';
import { createRequire } from 'node:module';
import { sysCommand } from './sys.js';
import { transportCommand } from './transport.js';
import { exitCodeFor, report } from './errors.js';

const pkg = createRequire(import.meta.url)('../../package.json') as { version: string };

export function buildProgram(): Command {
  const program = new Command('prism')
    .description('host-side isolation services for compartmentalized operating systems')
    .version(pkg.version)
    .showHelpAfterError('(run with --help for usage)')
    .addCommand(sysCommand())
    .addCommand(transportCommand());
  return program;
}

try {
  await buildProgram().parseAsync(process.argv);
} catch (e) {
  report(e);
  process.exitCode = exitCodeFor(e);
}
