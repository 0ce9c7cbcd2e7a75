// The importing side's kernel half: vhci-hcd, the virtual host controller
// that turns a connected USB/IP socket into a local USB device
// (drivers/usb/usbip/vhci_sysfs.c). Its sysfs files under
// /sys/devices/platform/vhci_hcd.0:
// - status, status.1, ...: one line per port,
//     "hs  0000 004 000 00000000 000000 0-0"
//   hub (hs: USB 2 ports, ss: USB 3 ports), port, status (4 free, 6 used),
//   speed, devid (busnum << 16 | devnum), sockfd, local busid;
// - attach: "PORT SOCKFD DEVID SPEED" written by the process that owns SOCKFD
//   (the kernel takes its own reference to the socket);
// - detach: "PORT".
// Parsing is pure; the sysfs root is a parameter so tests can use a directory.
import * as fs from 'node:fs';
import * as path from 'node:path';

export const VHCI_SYSFS = '/sys/devices/platform/vhci_hcd.0';

/** usbip_device_status (usbip_common.h). */
export const VdevStatus = { SDEV_AVAILABLE: 1, SDEV_USED: 2, SDEV_ERROR: 3, NULL: 4, NOTASSIGNED: 5, USED: 6, ERROR: 7 } as const;

/** USB_SPEED_* as USB/IP carries it. */
export const UsbSpeed = { LOW: 1, FULL: 2, HIGH: 3, WIRELESS: 4, SUPER: 5, SUPER_PLUS: 6 } as const;

export interface VhciPort {
  hub: 'hs' | 'ss';
  port: number;
  status: number;
  speed: number;
  devid: number;
  sockfd: number;
  localBusid: string;
}

export class VhciError extends Error {
  override readonly name = 'VhciError';
  readonly code = 'ERR_PRISM_VHCI';
}

const LINE = /^(hs|ss)\s+(\d+)\s+(\d+)\s+(\d+)\s+([0-9a-fA-F]+)\s+(\d+)\s+(\S+)\s*$/;

/** Parses a vhci status file; the header line and blank lines are skipped, anything else is an error. */
export function parseVhciStatus(text: string): VhciPort[] {
  const ports: VhciPort[] = [];
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (line === '' || line.startsWith('hub ')) continue;
    const m = LINE.exec(line);
    if (!m) throw new VhciError(`unrecognised vhci status line: ${JSON.stringify(line)}`);
    ports.push({
      hub: m[1] as 'hs' | 'ss',
      port: Number(m[2]),
      status: Number(m[3]),
      speed: Number(m[4]),
      devid: parseInt(m[5] as string, 16),
      sockfd: Number(m[6]),
      localBusid: m[7] as string,
    });
  }
  return ports;
}

/** The hub a device of this speed needs: USB 3 devices go on ss ports, the rest on hs ports. */
export function hubFor(speed: number): 'hs' | 'ss' {
  return speed >= UsbSpeed.SUPER ? 'ss' : 'hs';
}

/** The lowest free port on the right hub for `speed`, or null when all are taken. */
export function pickFreePort(ports: readonly VhciPort[], speed: number): number | null {
  const hub = hubFor(speed);
  const free = ports.filter((p) => p.hub === hub && p.status === VdevStatus.NULL).map((p) => p.port);
  return free.length === 0 ? null : Math.min(...free);
}

/** devid as vhci and usbip-host know it: busnum << 16 | devnum. */
export function devidOf(busnum: number, devnum: number): number {
  if (!Number.isInteger(busnum) || busnum < 0 || busnum > 0xffff || !Number.isInteger(devnum) || devnum < 0 || devnum > 0xffff) {
    throw new RangeError(`busnum ${busnum} / devnum ${devnum} must be 0..65535`);
  }
  return ((busnum << 16) | devnum) >>> 0;
}

export class Vhci {
  constructor(readonly root: string = VHCI_SYSFS) {}

  private missing(e: unknown): never {
    const err = e as NodeJS.ErrnoException;
    if (err.code === 'ENOENT') throw new VhciError(`${this.root} does not exist: load the vhci-hcd module (modprobe vhci-hcd)`, { cause: e });
    if (err.code === 'EACCES' || err.code === 'EPERM') throw new VhciError(`no permission to use ${this.root}: run as root`, { cause: e });
    throw e;
  }

  /** Every port of every vhci controller (status, status.1, ...). */
  ports(): VhciPort[] {
    let names: string[];
    try {
      names = fs.readdirSync(this.root).filter((n) => /^status(\.\d+)?$/.test(n));
    } catch (e) {
      this.missing(e);
    }
    names.sort((a, b) => (a === 'status' ? -1 : b === 'status' ? 1 : Number(a.slice(7)) - Number(b.slice(7))));
    return names.flatMap((n) => parseVhciStatus(fs.readFileSync(path.join(this.root, n), 'utf8')));
  }

  /** Hands `sockfd` (a connected USB/IP socket, after OP_REP_IMPORT) to vhci on a free port; returns the port. */
  attach(sockfd: number, devid: number, speed: number): number {
    const port = pickFreePort(this.ports(), speed);
    if (port === null) throw new VhciError(`no free ${hubFor(speed)} port on vhci: detach a device first (prism usbip ports)`);
    try {
      fs.writeFileSync(path.join(this.root, 'attach'), `${port} ${sockfd} ${devid} ${speed}`);
    } catch (e) {
      const err = e as NodeJS.ErrnoException;
      if (err.code === 'EINVAL') throw new VhciError(`vhci refused the attach of port ${port} (fd ${sockfd}, devid ${devid.toString(16)}, speed ${speed}): see dmesg`, { cause: e });
      if (err.code === 'EBUSY') throw new VhciError(`vhci port ${port} became busy: try again`, { cause: e });
      this.missing(e);
    }
    return port;
  }

  /** Detaches the device on `port`. */
  detach(port: number): void {
    const p = this.ports().find((x) => x.port === port);
    if (!p) throw new VhciError(`vhci has no port ${port}`);
    if (p.status === VdevStatus.NULL) throw new VhciError(`vhci port ${port} has no device attached`);
    try {
      fs.writeFileSync(path.join(this.root, 'detach'), String(port));
    } catch (e) {
      this.missing(e);
    }
  }
}
