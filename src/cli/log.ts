// One logger for every prism command: pino, JSON lines on stderr (stdout stays
// free for command output), written synchronously so nothing is lost on exit.
import { pino, type Logger } from 'pino';

export type { Logger };

export function createLogger(level: string = process.env.PRISM_LOG_LEVEL ?? 'info'): Logger {
  return pino({ level, base: { pid: process.pid } }, pino.destination({ fd: 2, sync: true }));
}
