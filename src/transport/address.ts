// The one address grammar of prism, parsed here and nowhere else:
//   tcp:HOST:PORT      HOST a name, IPv4, or [IPv6]
//   unix:PATH          a Unix stream socket path
//   vsock:CID:PORT     CID a number, or any | local | host | hypervisor
//   hvsock:PATH:PORT   hybrid vsock: the VMM's Unix socket PATH and the guest PORT
//   fd:N               an inherited listening or connected socket
export const ADDRESS_GRAMMAR = [
  'tcp:HOST:PORT      e.g. tcp:127.0.0.1:564, tcp:[::1]:564',
  'unix:PATH          e.g. unix:/run/prism/9p.sock',
  'vsock:CID:PORT     e.g. vsock:any:564 (listen), vsock:3:564 (dial); CID any|local|host|hypervisor|number',
  'hvsock:PATH:PORT   e.g. hvsock:/run/vm1/vsock.sock:564 (cloud-hypervisor / Firecracker hybrid vsock)',
  'fd:N               e.g. fd:3 (an inherited listening or connected socket)',
].join('\n');

export type Address =
  | { kind: 'tcp'; host: string; port: number }
  | { kind: 'unix'; path: string }
  | { kind: 'vsock'; cid: number; port: number }
  | { kind: 'hvsock'; path: string; port: number }
  | { kind: 'fd'; fd: number };

export class AddressError extends Error {
  override readonly name = 'AddressError';
  readonly code = 'ERR_PRISM_ADDRESS';
  readonly input: string;
  constructor(input: string, why: string) {
    super(`bad address ${JSON.stringify(input)}: ${why}\naddresses are one of:\n${ADDRESS_GRAMMAR}`);
    this.input = input;
  }
}

/** vsock CIDs by name (linux/vm_sockets.h). */
export const VSOCK_CIDS: Readonly<Record<string, number>> = { any: 0xffff_ffff, hypervisor: 0, local: 1, host: 2 };
const SUN_PATH_MAX = 107;

function u32(s: string, what: string, input: string): number {
  if (!/^[0-9]{1,10}$/.test(s)) throw new AddressError(input, `${what} must be a decimal number, got ${JSON.stringify(s)}`);
  const n = Number(s);
  if (n > 0xffff_ffff) throw new AddressError(input, `${what} ${n} does not fit in 32 bits`);
  return n;
}

function unixPath(p: string, input: string): string {
  if (p.length === 0) throw new AddressError(input, 'the socket path is empty');
  if (p.includes('\0')) throw new AddressError(input, 'the socket path contains a NUL byte');
  const len = Buffer.byteLength(p);
  if (len > SUN_PATH_MAX) throw new AddressError(input, `the socket path is ${len} bytes; Unix sockets allow ${SUN_PATH_MAX}`);
  return p;
}

/** Splits "REST:PORT" at the last colon. */
function splitPort(rest: string, input: string): [string, string] {
  const i = rest.lastIndexOf(':');
  if (i < 0) throw new AddressError(input, 'missing ":PORT"');
  return [rest.slice(0, i), rest.slice(i + 1)];
}

export function parseAddress(input: string): Address {
  if (typeof input !== 'string') throw new AddressError(String(input), 'an address is a string');
  const colon = input.indexOf(':');
  if (colon < 0) throw new AddressError(input, 'missing the "kind:" prefix');
  const kind = input.slice(0, colon);
  const rest = input.slice(colon + 1);
  switch (kind) {
    case 'tcp': {
      const [hostPart, portPart] = splitPort(rest, input);
      let host = hostPart;
      if (host.startsWith('[')) {
        if (!host.endsWith(']')) throw new AddressError(input, 'an IPv6 host must be written in brackets, e.g. [::1]');
        host = host.slice(1, -1);
      } else if (host.includes(':')) {
        throw new AddressError(input, 'an IPv6 host must be written in brackets, e.g. tcp:[::1]:564');
      }
      if (host.length === 0) throw new AddressError(input, 'the host is empty');
      if (!/^[A-Za-z0-9.:%_-]+$/.test(host)) throw new AddressError(input, `the host ${JSON.stringify(host)} has characters no host name or IP address has`);
      const port = u32(portPart, 'the TCP port', input);
      if (port > 65535) throw new AddressError(input, `the TCP port ${port} is above 65535`);
      return { kind: 'tcp', host, port };
    }
    case 'unix':
      return { kind: 'unix', path: unixPath(rest, input) };
    case 'vsock': {
      const [cidPart, portPart] = splitPort(rest, input);
      const cid = VSOCK_CIDS[cidPart] ?? u32(cidPart, 'the CID', input);
      return { kind: 'vsock', cid, port: u32(portPart, 'the vsock port', input) };
    }
    case 'hvsock': {
      const [path, portPart] = splitPort(rest, input);
      return { kind: 'hvsock', path: unixPath(path, input), port: u32(portPart, 'the vsock port', input) };
    }
    case 'fd': {
      const fd = u32(rest, 'the fd', input);
      if (fd > 0x7fff_ffff) throw new AddressError(input, 'the fd is out of range');
      return { kind: 'fd', fd };
    }
    default:
      throw new AddressError(input, `unknown kind ${JSON.stringify(kind)}`);
  }
}

export function formatAddress(a: Address): string {
  switch (a.kind) {
    case 'tcp':
      return `tcp:${a.host.includes(':') ? `[${a.host}]` : a.host}:${a.port}`;
    case 'unix':
      return `unix:${a.path}`;
    case 'vsock': {
      const name = Object.entries(VSOCK_CIDS).find(([, v]) => v === a.cid)?.[0];
      return `vsock:${name ?? a.cid}:${a.port}`;
    }
    case 'hvsock':
      return `hvsock:${a.path}:${a.port}`;
    case 'fd':
      return `fd:${a.fd}`;
  }
}

/** The Unix socket a hybrid-vsock VMM connects to for guest-initiated connections to PORT. */
export function hvsockListenPath(a: { path: string; port: number }): string {
  return `${a.path}_${a.port}`;
}
