// `prism sys probe`: what this kernel offers prism.
import { Command } from 'commander';
import { release } from 'node:os';
import * as sys from '../sys/index.js';

export interface Probe {
  kernel: string;
  openat2: boolean;
  vsock: { available: boolean; localCid: number | null; note?: string };
  memfd: boolean;
  eventfd: boolean;
}

function tryIt(fn: () => void): boolean {
  try {
    fn();
    return true;
  } catch {
    return false;
  }
}

export function probe(): Probe {
  let vsock: Probe['vsock'];
  try {
    const l = sys.listenVsock(sys.constants.VMADDR_CID_ANY, sys.constants.VMADDR_PORT_ANY);
    l.close();
    let localCid: number | null = null;
    let note: string | undefined;
    try {
      localCid = sys.vsockLocalCid();
    } catch (e) {
      note = `no local CID: ${(e as Error).message}`;
    }
    vsock = { available: true, localCid, ...(note ? { note } : {}) };
  } catch (e) {
    vsock = { available: false, localCid: null, note: (e as Error).message };
  }
  return {
    kernel: release(),
    openat2: sys.features.openat2,
    vsock,
    memfd: tryIt(() => sys.closeFd(sys.memfdCreate('prism-probe'))),
    eventfd: tryIt(() => new sys.EventFd().close()),
  };
}

export function sysCommand(): Command {
  const cmd = new Command('sys').description('facts about this machine that prism depends on');
  cmd
    .command('probe')
    .description('check the kernel features prism needs (openat2, AF_VSOCK, memfd, eventfd)')
    .option('--json', 'print JSON instead of text')
    .action((opts: { json?: boolean }) => {
      const p = probe();
      if (opts.json) {
        process.stdout.write(`${JSON.stringify(p)}\n`);
      } else {
        const yes = (b: boolean): string => (b ? 'yes' : 'NO');
        process.stdout.write(
          [
            `kernel   ${p.kernel}`,
            `openat2  ${yes(p.openat2)}${p.openat2 ? '' : ' (Linux >= 5.6 needed: the file server will not start)'}`,
            `vsock    ${yes(p.vsock.available)}${p.vsock.localCid === null ? '' : ` (local CID ${p.vsock.localCid})`}${p.vsock.note ? ` — ${p.vsock.note}` : ''}`,
            `memfd    ${yes(p.memfd)}`,
            `eventfd  ${yes(p.eventfd)}`,
          ].join('\n') + '\n',
        );
      }
      if (!p.openat2) process.exitCode = 1;
    });
  return cmd;
}
