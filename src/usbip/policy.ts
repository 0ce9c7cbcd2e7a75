// Who may import which USB device: a list of allow rules, default deny. A rule names any of a peer,
// a busid, a VID:PID and a USB class; a device is allowed to a peer if some rule's every condition
// holds. OP_REQ_DEVLIST only lists what the asking peer may import, and a refused OP_REQ_IMPORT is
// answered with status 1 (ST_NA) and a log line that says which rule would allow it.
//
// Peers are identified by what the transport reports for the connection (src/transport Connection
// .peer): "vsock:CID:PORT" (the kernel vouches for a vsock peer's CID), "tcp:HOST:PORT", or for Unix
// sockets and hybrid vsock the listener's own address (every client of one socket is the same
// peer: give each VM its own socket). A rule's peer matches that text whole or up to a ':' in it:
// "vsock:4" matches "vsock:4:1035" but not "vsock:42:1035"; "tcp:127.0.0.1" any port from there.
import type { UsbDeviceInfo } from './device.js';

export interface UsbipRule {
  /** Address text or its prefix up to a ':' (vsock:CID, tcp:HOST, unix:PATH). */
  peer?: string;
  busid?: string;
  /** 'vvvv:pppp' in hex; 'vvvv:*' for any product of a vendor. */
  vidPid?: string;
  /** A USB class code (0..255), matched against the device's class and each interface's class. */
  class?: number;
}

export class PolicyError extends Error {
  override readonly name = 'PolicyError';
  readonly code = 'ERR_USBIP_POLICY_RULE';
}

const VID_PID = /^([0-9a-f]{4}):([0-9a-f]{4}|\*)$/;

/**
 * Parses a rule as the command line gives it: comma-separated KEY=VALUE conditions with keys peer,
 * busid, vidpid, class (class in decimal or 0x hex), e.g. "peer=vsock:4,busid=1-1",
 * "vidpid=1d6b:0104", "class=8"; or "any" for a rule without conditions (every peer, every device).
 */
export function parseRule(text: string): UsbipRule {
  const t = text.trim();
  if (t === 'any') return {};
  if (t === '') throw new PolicyError('an empty rule: give conditions such as peer=vsock:4,busid=1-1 (or "any" to allow everything)');
  const rule: UsbipRule = {};
  for (const part of t.split(',')) {
    const eq = part.indexOf('=');
    if (eq <= 0) throw new PolicyError(`"${part}" in rule "${text}" is not KEY=VALUE (keys: peer, busid, vidpid, class)`);
    const key = part.slice(0, eq).trim().toLowerCase();
    const value = part.slice(eq + 1).trim();
    if (value === '') throw new PolicyError(`${key} has no value in rule "${text}"`);
    const seen = (k: keyof UsbipRule): void => {
      if (rule[k] !== undefined) throw new PolicyError(`${key} is given twice in rule "${text}"`);
    };
    switch (key) {
      case 'peer':
        seen('peer');
        rule.peer = value;
        break;
      case 'busid':
        seen('busid');
        rule.busid = value;
        break;
      case 'vidpid': {
        seen('vidPid');
        const v = value.toLowerCase();
        if (!VID_PID.test(v)) throw new PolicyError(`vidpid "${value}" must be VVVV:PPPP in hex (or VVVV:*)`);
        rule.vidPid = v;
        break;
      }
      case 'class': {
        seen('class');
        const n = /^0x[0-9a-f]{1,2}$/i.test(value) ? parseInt(value.slice(2), 16) : /^[0-9]{1,3}$/.test(value) ? Number(value) : NaN;
        if (!(n >= 0 && n <= 255)) throw new PolicyError(`class "${value}" must be a USB class code 0..255 (e.g. 8 mass storage, 3 HID)`);
        rule.class = n;
        break;
      }
      default:
        throw new PolicyError(`unknown key "${key}" in rule "${text}" (keys: peer, busid, vidpid, class)`);
    }
  }
  return rule;
}

/** A rule as the command line writes it. */
export function formatRule(rule: UsbipRule): string {
  const parts: string[] = [];
  if (rule.peer !== undefined) parts.push(`peer=${rule.peer}`);
  if (rule.busid !== undefined) parts.push(`busid=${rule.busid}`);
  if (rule.vidPid !== undefined) parts.push(`vidpid=${rule.vidPid}`);
  if (rule.class !== undefined) parts.push(`class=${rule.class}`);
  return parts.length === 0 ? 'any' : parts.join(',');
}

/** A peer address without its port: "vsock:4:1035" → "vsock:4", "tcp:[::1]:5000" → "tcp:[::1]". */
export function peerIdentity(peer: string): string {
  const m = /^(vsock|tcp):(.+):[0-9]+$/.exec(peer);
  return m ? `${m[1]}:${m[2]}` : peer;
}

function hex4(n: number): string {
  return n.toString(16).padStart(4, '0');
}

/** A device's VID:PID as rules write it. */
export function vidPidOf(info: UsbDeviceInfo): string {
  return `${hex4(info.idVendor)}:${hex4(info.idProduct)}`;
}

function peerMatches(pattern: string, peer: string): boolean {
  return peer === pattern || peer.startsWith(`${pattern}:`);
}

export function ruleMatches(rule: UsbipRule, peer: string, info: UsbDeviceInfo): boolean {
  if (rule.peer !== undefined && !peerMatches(rule.peer, peer)) return false;
  if (rule.busid !== undefined && rule.busid !== info.busid) return false;
  if (rule.vidPid !== undefined) {
    const [vid, pid] = rule.vidPid.split(':');
    if (vid !== hex4(info.idVendor) || (pid !== '*' && pid !== hex4(info.idProduct))) return false;
  }
  if (rule.class !== undefined && info.bDeviceClass !== rule.class && !info.interfaces.some((i) => i.bInterfaceClass === rule.class)) return false;
  return true;
}

export class UsbipPolicy {
  readonly rules: readonly UsbipRule[];

  constructor(rules: readonly (UsbipRule | string)[] = []) {
    this.rules = rules.map((r) => (typeof r === 'string' ? parseRule(r) : { ...r }));
  }

  /** The first rule that lets `peer` import the device, or null (default deny). */
  allowing(peer: string, info: UsbDeviceInfo): UsbipRule | null {
    return this.rules.find((r) => ruleMatches(r, peer, info)) ?? null;
  }

  allows(peer: string, info: UsbDeviceInfo): boolean {
    return this.allowing(peer, info) !== null;
  }

  /** The narrowest rule that would let `peer` import this device (for the refusal's log line). */
  suggestion(peer: string, info: UsbDeviceInfo): string {
    return formatRule({ peer: peerIdentity(peer), busid: info.busid });
  }
}
