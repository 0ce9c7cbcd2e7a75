// The base of every emulated USB device: it answers the standard requests on endpoint 0 from the
// device's descriptors (USB 2.0 section 9.4), keeps the device state those requests change (the
// configuration, each interface's alternate setting, each endpoint's halt), and queues the URBs
// for the other endpoints the way a host controller's endpoint queue holds them: the device takes
// the oldest when it has data to send or wants data (takeUrb), an URB no one takes stays pending
// (a real device NAKs), an unlinked one leaves the queue with -ECONNRESET, and a halted endpoint
// fails its queued and new URBs with -EPIPE until the host clears the halt.
//
// Subclasses give the class-specific parts: class/vendor requests (controlRequest), descriptors
// addressed to an interface (interfaceDescriptor, e.g. the HID report descriptor), what to do when
// an URB arrives (urbQueued) or a halt is cleared (haltCleared), and a reset (deviceReset) when the
// configuration changes or the importer detaches.
import { DescriptorType, DIR_IN, Feature, LANGID_EN_US, Recipient, RequestKind, StandardRequest, URB_SHORT_NOT_OK, readSetup, type SetupPacket } from './ch9.js';
import { buildDescriptors, type DescriptorSet, type DeviceSpec, type EndpointKind } from './descriptors.js';
import { UrbErrno, UsbSpeed, type Urb, type UrbResult, type UsbDevice, type UsbDeviceInfo } from '../device.js';

export interface DeviceLocation {
  busid: string;
  busnum: number;
  devnum: number;
}

/** What a control request handler answers: IN data (cut to wLength by the base), true for a
 *  successful request without data (or an OUT request whose data was taken), null to stall. */
export type ControlAnswer = Buffer | true | null;

/** A queued URB; complete() delivers its result once (later calls, and calls after an unlink, do nothing). */
export interface PendingUrb {
  readonly urb: Urb;
  readonly signal: AbortSignal;
  /** Whether the URB is still waiting for its result (false once completed or unlinked). */
  readonly pending: boolean;
  complete(result: UrbResult): void;
}

interface EndpointState {
  readonly address: number;
  readonly kind: EndpointKind;
  readonly maxPacketSize: number;
  readonly interfaceNumber: number;
  halted: boolean;
  /** Halted until the device itself unwedges it; CLEAR_FEATURE(ENDPOINT_HALT) succeeds but leaves it halted. */
  wedged: boolean;
  readonly queue: Set<QueuedUrb>;
}

const stall = (): UrbResult => ({ status: -UrbErrno.EPIPE, data: Buffer.alloc(0) });
export const urbError = (errno: number): UrbResult => ({ status: -errno, data: Buffer.alloc(0) });

class QueuedUrb implements PendingUrb {
  pending = true;
  readonly #resolve: (r: UrbResult) => void;
  readonly #onAbort: () => void;
  constructor(
    readonly urb: Urb,
    readonly signal: AbortSignal,
    resolve: (r: UrbResult) => void,
    onAbort: (q: QueuedUrb) => void,
  ) {
    this.#resolve = resolve;
    this.#onAbort = () => onAbort(this);
    signal.addEventListener('abort', this.#onAbort, { once: true });
  }
  complete(result: UrbResult): void {
    if (!this.pending) return;
    this.pending = false;
    this.signal.removeEventListener('abort', this.#onAbort);
    this.#resolve(finishIn(this.urb, result));
  }
}

/** A short IN transfer on an URB that said URB_SHORT_NOT_OK ends with -EREMOTEIO, as a host controller reports it. */
function finishIn(urb: Urb, r: UrbResult): UrbResult {
  if (urb.direction === 'in' && r.status === 0 && (urb.transferFlags & URB_SHORT_NOT_OK) !== 0 && r.data.length < urb.transferBufferLength) {
    return { ...r, status: -UrbErrno.EREMOTEIO };
  }
  return r;
}

export abstract class EmulatedDevice implements UsbDevice {
  readonly info: UsbDeviceInfo;
  protected readonly descriptors: DescriptorSet;
  /** The active bConfigurationValue; 0 when unconfigured. */
  #configuration = 0;
  readonly #alternates = new Map<number, number>();
  #endpoints = new Map<number, EndpointState>();
  #remoteWakeup = false;
  readonly #superSpeed: boolean;

  constructor(spec: DeviceSpec, location: DeviceLocation) {
    this.descriptors = buildDescriptors(spec);
    this.#superSpeed = spec.speed >= UsbSpeed.SUPER;
    const first = spec.configurations[0]!;
    this.info = {
      busid: location.busid,
      busnum: location.busnum,
      devnum: location.devnum,
      speed: spec.speed,
      idVendor: spec.idVendor,
      idProduct: spec.idProduct,
      bcdDevice: spec.bcdDevice,
      bDeviceClass: spec.deviceClass,
      bDeviceSubClass: spec.deviceSubClass,
      bDeviceProtocol: spec.deviceProtocol,
      bConfigurationValue: first.value,
      bNumConfigurations: spec.configurations.length,
      interfaces: first.interfaces
        .filter((i) => i.alternateSetting === 0)
        .map((i) => ({ bInterfaceClass: i.interfaceClass, bInterfaceSubClass: i.interfaceSubClass, bInterfaceProtocol: i.interfaceProtocol })),
    };
    // An exported device is already configured, as one bound to usbip-host is; the importer's
    // SET_CONFIGURATION then lands on the same configuration. (No deviceReset(): the subclass
    // is not constructed yet.)
    this.#configure(first.value, false);
  }

  /** The active bConfigurationValue (0: unconfigured). */
  get configuration(): number {
    return this.#configuration;
  }

  async submit(urb: Urb, signal: AbortSignal): Promise<UrbResult> {
    if (signal.aborted) return urbError(UrbErrno.ECONNRESET);
    if (urb.endpoint === 0) return finishIn(urb, await this.#control(urb, signal));
    // An endpoint the active configuration does not have, or the wrong direction of one it has.
    const ep = this.#endpoints.get(urb.endpoint | (urb.direction === 'in' ? DIR_IN : 0));
    if (ep === undefined || ep.halted) return stall();
    const result = new Promise<UrbResult>((resolve) => {
      const q = new QueuedUrb(urb, signal, resolve, (aborted) => {
        ep.queue.delete(aborted);
        aborted.complete(urbError(UrbErrno.ECONNRESET));
      });
      ep.queue.add(q);
    });
    this.urbQueued(ep.address);
    return result;
  }

  /** Resets to the state right after plug-in (configured, nothing halted) when the importer leaves. */
  detached(): void {
    this.#remoteWakeup = false;
    this.#configure(this.descriptors.spec.configurations[0]!.value);
  }

  // --- for subclasses ------------------------------------------------------------------------------

  /** The oldest URB queued on an endpoint of the active configuration, taken off the queue. */
  protected takeUrb(address: number): PendingUrb | undefined {
    const ep = this.#endpoints.get(address);
    if (ep === undefined) return undefined;
    for (const q of ep.queue) {
      ep.queue.delete(q);
      if (q.pending) return q;
    }
    return undefined;
  }

  protected hasUrb(address: number): boolean {
    return (this.#endpoints.get(address)?.queue.size ?? 0) > 0;
  }

  /** Halts (STALLs) an endpoint: its queued URBs and every new one fail with -EPIPE until the host clears it. */
  protected halt(address: number): void {
    const ep = this.#endpoints.get(address);
    if (ep === undefined) return;
    ep.halted = true;
    this.#flush(ep, UrbErrno.EPIPE);
  }

  /** Halts an endpoint so that CLEAR_FEATURE(ENDPOINT_HALT) does not lift it (Linux gadget's usb_ep_set_wedge). */
  protected wedge(address: number): void {
    const ep = this.#endpoints.get(address);
    if (ep === undefined) return;
    ep.wedged = true;
    this.halt(address);
  }

  /** Lets the next CLEAR_FEATURE(ENDPOINT_HALT) clear a wedged endpoint; it stays halted until then. */
  protected unwedge(address: number): void {
    const ep = this.#endpoints.get(address);
    if (ep !== undefined) ep.wedged = false;
  }

  protected isHalted(address: number): boolean {
    return this.#endpoints.get(address)?.halted ?? false;
  }

  /** A class or vendor request on endpoint 0; null stalls it (the default). */
  protected controlRequest(_setup: SetupPacket, _data: Buffer): ControlAnswer | Promise<ControlAnswer> {
    return null;
  }

  /** GET_DESCRIPTOR addressed to an interface (e.g. a HID report descriptor); null stalls it. */
  protected interfaceDescriptor(_interfaceNumber: number, _type: number, _index: number): Buffer | null {
    return null;
  }

  /** An URB was queued on `address`; take it (takeUrb) when the device can serve it. */
  protected abstract urbQueued(address: number): void;

  /** The host cleared the halt of `address`; queued URBs may be served again. */
  protected haltCleared(_address: number): void {}

  /** SET_CONFIGURATION, SET_INTERFACE or detach reset the device's function; queued URBs are already failed. */
  protected deviceReset(): void {}

  // --- endpoint 0 ----------------------------------------------------------------------------------

  async #control(urb: Urb, _signal: AbortSignal): Promise<UrbResult> {
    if (urb.setup.length !== 8) return stall();
    const setup = readSetup(urb.setup);
    const hasData = setup.wLength > 0;
    // A data stage must go the way bmRequestType says (usb_submit_urb's rule); without one the
    // URB is OUT whatever bit 7 says.
    if (hasData && setup.direction !== urb.direction) return stall();
    let outData: Buffer = Buffer.alloc(0);
    if (hasData && setup.direction === 'out') {
      if (urb.data.length < setup.wLength) return stall();
      outData = urb.data.subarray(0, setup.wLength);
    }
    let answer: ControlAnswer;
    if (setup.kind === RequestKind.STANDARD) answer = this.#standard(setup);
    else if (setup.kind === RequestKind.CLASS || setup.kind === RequestKind.VENDOR) answer = await this.controlRequest(setup, outData);
    else answer = null;
    if (answer === null) return stall();
    if (!hasData) return { status: 0, data: Buffer.alloc(0), actualLength: 0 };
    if (setup.direction === 'out') return { status: 0, data: Buffer.alloc(0), actualLength: setup.wLength };
    const data = answer === true ? Buffer.alloc(0) : answer;
    return { status: 0, data: data.subarray(0, Math.min(setup.wLength, urb.transferBufferLength)) };
  }

  #standard(s: SetupPacket): ControlAnswer {
    switch (s.bRequest) {
      case StandardRequest.GET_STATUS:
        return s.direction === 'in' && s.wValue === 0 ? this.#getStatus(s) : null;
      case StandardRequest.CLEAR_FEATURE:
      case StandardRequest.SET_FEATURE:
        return s.direction === 'out' && s.wLength === 0 ? this.#feature(s, s.bRequest === StandardRequest.SET_FEATURE) : null;
      case StandardRequest.SET_ADDRESS:
        // vhci-hcd answers SET_ADDRESS itself, so it never crosses usbip; accept it anyway.
        return s.recipient === Recipient.DEVICE && s.wValue <= 127 ? true : null;
      case StandardRequest.GET_DESCRIPTOR:
        if (s.direction !== 'in') return null;
        if (s.recipient === Recipient.DEVICE) return this.#getDescriptor(s.wValue >> 8, s.wValue & 0xff, s.wIndex);
        if (s.recipient === Recipient.INTERFACE && this.#interfaceExists(s.wIndex)) {
          return this.interfaceDescriptor(s.wIndex, s.wValue >> 8, s.wValue & 0xff);
        }
        return null;
      case StandardRequest.GET_CONFIGURATION:
        return s.direction === 'in' && s.recipient === Recipient.DEVICE ? Buffer.from([this.#configuration]) : null;
      case StandardRequest.SET_CONFIGURATION:
        if (s.recipient !== Recipient.DEVICE || s.wLength !== 0 || (s.wValue & 0xff00) !== 0) return null;
        if (s.wValue !== 0 && !this.descriptors.spec.configurations.some((c) => c.value === s.wValue)) return null;
        this.#configure(s.wValue);
        return true;
      case StandardRequest.GET_INTERFACE:
        if (s.direction !== 'in' || s.recipient !== Recipient.INTERFACE || !this.#interfaceExists(s.wIndex)) return null;
        return Buffer.from([this.#alternates.get(s.wIndex) ?? 0]);
      case StandardRequest.SET_INTERFACE:
        if (s.recipient !== Recipient.INTERFACE || s.wLength !== 0) return null;
        return this.#setInterface(s.wIndex, s.wValue) ? true : null;
      case StandardRequest.SET_SEL:
        // USB 3.2 section 9.4.12: six bytes of U1/U2 exit latencies; only a SuperSpeed device has them.
        return this.#superSpeed && s.direction === 'out' && s.recipient === Recipient.DEVICE && s.wValue === 0 && s.wIndex === 0 && s.wLength === 6 ? true : null;
      case StandardRequest.SET_ISOCH_DELAY:
        // USB 3.2 section 9.4.11: the hub delay in ns (wValue); nothing here is isochronous.
        return this.#superSpeed && s.recipient === Recipient.DEVICE && s.wIndex === 0 && s.wLength === 0 ? true : null;
      default: // SET_DESCRIPTOR, SYNCH_FRAME (no isochronous endpoints), reserved numbers
        return null;
    }
  }

  #getStatus(s: SetupPacket): ControlAnswer {
    const status = Buffer.alloc(2);
    switch (s.recipient) {
      case Recipient.DEVICE: {
        const c = this.#activeConfiguration();
        status.writeUInt16LE((c?.selfPowered ? 1 : 0) | (this.#remoteWakeup ? 2 : 0));
        return status;
      }
      case Recipient.INTERFACE:
        return this.#interfaceExists(s.wIndex) ? status : null;
      case Recipient.ENDPOINT: {
        if ((s.wIndex & 0x7f) === 0) return status;
        const ep = this.#endpoints.get(s.wIndex);
        if (ep === undefined) return null;
        status.writeUInt16LE(ep.halted ? 1 : 0);
        return status;
      }
      default:
        return null;
    }
  }

  #feature(s: SetupPacket, set: boolean): ControlAnswer {
    if (s.recipient === Recipient.DEVICE && s.wValue === Feature.DEVICE_REMOTE_WAKEUP) {
      this.#remoteWakeup = set;
      return true;
    }
    if (s.recipient !== Recipient.ENDPOINT || s.wValue !== Feature.ENDPOINT_HALT) return null; // TEST_MODE and the rest
    if ((s.wIndex & 0xff70) !== 0) return null;
    if ((s.wIndex & 0x0f) === 0) return true; // endpoint 0: a protocol stall ends with the next setup anyway
    const ep = this.#endpoints.get(s.wIndex);
    if (ep === undefined) return null;
    if (set) {
      this.halt(ep.address);
    } else if (!ep.wedged) {
      const was = ep.halted;
      ep.halted = false;
      if (was) this.haltCleared(ep.address);
    }
    return true;
  }

  #getDescriptor(type: number, index: number, langId: number): ControlAnswer {
    const d = this.descriptors;
    switch (type) {
      case DescriptorType.DEVICE:
        return index === 0 ? d.device : null;
      case DescriptorType.CONFIGURATION:
        return d.configurations[index] ?? null;
      case DescriptorType.STRING:
        // Index 0 is the LANGID list; the others exist in US English only. Linux asks with the
        // LANGID it read from index 0; some hosts send 0, which we take as "the default".
        if (index !== 0 && langId !== LANGID_EN_US && langId !== 0) return null;
        return d.strings[index] ?? null;
      case DescriptorType.DEVICE_QUALIFIER:
        return index === 0 ? d.qualifier : null;
      case DescriptorType.OTHER_SPEED_CONFIGURATION:
        return d.otherSpeedConfigurations[index] ?? null;
      case DescriptorType.BOS:
        return index === 0 ? d.bos : null; // a USB 2.0 device (bcdUSB 0x0200) has none
      default: // INTERFACE_POWER, ...
        return null;
    }
  }

  // --- configuration state -------------------------------------------------------------------------

  #activeConfiguration(): DeviceSpec['configurations'][number] | undefined {
    return this.descriptors.spec.configurations.find((c) => c.value === this.#configuration);
  }

  #interfaceExists(number: number): boolean {
    return this.#activeConfiguration()?.interfaces.some((i) => i.number === number) ?? false;
  }

  #flush(ep: EndpointState, errno: number): void {
    const queued = [...ep.queue];
    ep.queue.clear();
    for (const q of queued) q.complete(urbError(errno));
  }

  /** Sets a configuration (0: none) with every interface at alternate setting 0 and no endpoint halted. */
  #configure(value: number, notify = true): void {
    for (const ep of this.#endpoints.values()) this.#flush(ep, UrbErrno.ESHUTDOWN);
    this.#endpoints = new Map();
    this.#alternates.clear();
    this.#configuration = value;
    this.info.bConfigurationValue = value;
    const c = this.#activeConfiguration();
    for (const itf of c?.interfaces ?? []) {
      if (itf.alternateSetting !== 0) continue;
      this.#alternates.set(itf.number, 0);
      this.#addEndpoints(itf.number, 0);
    }
    if (notify) this.deviceReset();
  }

  #addEndpoints(interfaceNumber: number, alternate: number): void {
    const itf = this.#activeConfiguration()?.interfaces.find((i) => i.number === interfaceNumber && i.alternateSetting === alternate);
    for (const ep of itf?.endpoints ?? []) {
      this.#endpoints.set(ep.address, { address: ep.address, kind: ep.kind, maxPacketSize: ep.maxPacketSize, interfaceNumber, halted: false, wedged: false, queue: new Set() });
    }
  }

  #setInterface(interfaceNumber: number, alternate: number): boolean {
    const c = this.#activeConfiguration();
    if (c === undefined || !c.interfaces.some((i) => i.number === interfaceNumber && i.alternateSetting === alternate)) return false;
    for (const [address, ep] of this.#endpoints) {
      if (ep.interfaceNumber !== interfaceNumber) continue;
      this.#flush(ep, UrbErrno.ESHUTDOWN);
      this.#endpoints.delete(address);
    }
    this.#alternates.set(interfaceNumber, alternate);
    this.#addEndpoints(interfaceNumber, alternate);
    this.deviceReset();
    return true;
  }
}
