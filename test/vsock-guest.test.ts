// AF_VSOCK end to end, on a kernel that can connect: the host has AF_VSOCK but no transport to
// connect through (and tests must not send vsock traffic off this machine), so this boots a lab
// guest with vsock_loopback and runs this checkout there, native addon included: the host's root is
// shared read-only over 9p and the host's node runs test/fixtures/vsock-guest.mts in a chroot
// (runHostNode). The fixture connects to CID 1 (VMADDR_CID_LOCAL) and prints one JSON line; each
// test below asserts one part of it. One guest boot serves them all (~20-30 s under TCG).
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { guestTail, requireLab, runHostNode, type GuestResult } from './helpers/lab.js';

const RESULT_MARKER = 'PRISM-VSOCK-RESULT';
const CID_ANY = 0xffff_ffff;
const CID_LOCAL = 1;
/** Ports up to this one are reserved (privileged); the kernel picks ephemeral ports above it. */
const LAST_RESERVED_PORT = 1023;
const MIB = 1024 * 1024;
const GUEST_TIMEOUT_MS = 240_000;

interface Addr {
  family: string;
  cid: number;
  port: number;
}
interface Digest {
  bytes: number;
  sha256: string;
}
interface ErrorInfo {
  name: string;
  isSysError: boolean;
  isTransportError: boolean;
  code: string;
  errno?: number;
  syscall?: string;
  path?: string;
  address?: string;
  message: string;
  cause?: ErrorInfo;
}
type Settled<T> = { ok: true; value: T } | { ok: false; error: ErrorInfo };

/** The fixture's result line (test/fixtures/vsock-guest.mts). */
interface FixtureResult {
  kernel: string;
  node: string;
  startupMs: number;
  ports: { sys: number; probe: number; sysLocal: number; transport: number; nobody: number };
  sys: Settled<{
    listenAddress: Addr;
    clientLocal: Addr;
    clientRemote: Addr;
    serverLocal: Addr;
    serverRemote: Addr;
    socketInfo: Record<'listener' | 'client' | 'server', { domain: string; type: string; listening: boolean }>;
    toServer: Digest;
    serverGot: Digest;
    toClient: Digest;
    clientGot: Digest;
    transferMs: number;
    afterDestroy: { clientFd: number; probeFd: number; clientLocal: Settled<Addr>; serverRemote: Settled<Addr> };
  }>;
  sysLocal: Settled<{ address: Addr; serverGot: string; clientGot: string; secondBind: ErrorInfo | 'bound'; afterClose: Settled<Addr> }>;
  transport: Settled<{
    listenerAddress: string;
    peer: string;
    clientIsFdSocket: boolean;
    clientLocal: Addr | null;
    toServer: string;
    serverGot: Digest;
    toClient: string;
    clientGot: Digest;
    transferMs: number;
  }>;
  refused: Settled<{ sys: ErrorInfo | 'connected'; transport: ErrorInfo | 'connected' }>;
  timings: Record<string, number>;
}

interface GuestRun {
  guest: GuestResult;
  result: FixtureResult;
}

let run: Promise<GuestRun> | undefined;

/** Boots the guest once and runs the fixture; every test shares the outcome (or its failure). */
function guestRun(): Promise<GuestRun> {
  run ??= (async () => {
    requireLab();
    const guest = await runHostNode({
      args: ['--import', 'tsx', 'test/fixtures/vsock-guest.mts'],
      before: 'grep -q "^vsock_loopback " /proc/modules || { echo "vsock_loopback is not loaded"; exit 9; }',
      timeoutMs: GUEST_TIMEOUT_MS,
    });
    const line = guest.console.match(new RegExp(`^${RESULT_MARKER} (\\{.*\\})$`, 'm'));
    assert.ok(line?.[1], `no ${RESULT_MARKER} line from the guest\n${guestTail(guest)}`);
    const result = JSON.parse(line[1]) as FixtureResult;
    assert.equal(guest.exitCode, 0, `the fixture exited ${String(guest.exitCode)}\n${guestTail(guest)}`);
    return { guest, result };
  })();
  return run;
}

function value<T>(s: Settled<T>, what: string): T {
  if (!s.ok) assert.fail(`${what} failed in the guest: ${JSON.stringify(s.error)}`);
  return s.value;
}

function errorOf<T>(s: Settled<T>, what: string): ErrorInfo {
  if (s.ok) assert.fail(`${what} succeeded in the guest: ${JSON.stringify(s.value)}`);
  return s.error;
}

function assertError(e: ErrorInfo | 'connected' | 'bound', what: string): ErrorInfo {
  if (typeof e === 'string') assert.fail(`${what}: expected an error, got "${e}"`);
  return e;
}

describe('AF_VSOCK in a lab guest (vsock_loopback, CID 1)', () => {
  it("runs this checkout on the guest kernel with the host's node, and reports timings", async (t) => {
    // Arrange + Act
    const { guest, result } = await guestRun();
    // Assert
    assert.equal(guest.exitCode, 0);
    assert.equal(guest.timedOut, false);
    assert.equal(result.kernel, requireLab().kernelVersion, 'the fixture ran on the guest kernel');
    assert.equal(result.node, process.version, "the fixture ran on the host's node");
    const { durationMs, initMs } = guest;
    t.diagnostic(`guest ${Math.round(durationMs)} ms (boot to /init ${Math.round(initMs ?? -1)} ms); node startup in the guest ${result.startupMs} ms; steps ${JSON.stringify(result.timings)}`);
  });

  it('sys: listens on CID any, connects to CID 1 and accepts, with the CIDs and ports of both ends', async () => {
    // Arrange + Act
    const { result } = await guestRun();
    const s = value(result.sys, 'listenVsock/connectVsock');
    const port = result.ports.sys;
    // Assert: the listener is bound to any CID; the connection runs from CID 1 to CID 1
    assert.deepEqual(s.listenAddress, { family: 'vsock', cid: CID_ANY, port });
    assert.deepEqual(s.clientRemote, { family: 'vsock', cid: CID_LOCAL, port });
    assert.deepEqual(s.serverLocal, { family: 'vsock', cid: CID_LOCAL, port });
    assert.equal(s.serverRemote.family, 'vsock');
    assert.equal(s.serverRemote.cid, CID_LOCAL);
    assert.ok(s.serverRemote.port > LAST_RESERVED_PORT, `ephemeral port ${s.serverRemote.port}`);
    // The client's ephemeral port is what the server sees; its own CID stays "any" after the
    // kernel's auto-bind (6.1), or is the local CID on kernels that fill it in.
    assert.equal(s.clientLocal.family, 'vsock');
    assert.equal(s.clientLocal.port, s.serverRemote.port);
    assert.ok([CID_ANY, CID_LOCAL].includes(s.clientLocal.cid), `client CID ${s.clientLocal.cid}`);
    assert.deepEqual(s.socketInfo, {
      listener: { domain: 'vsock', type: 'stream', listening: true },
      client: { domain: 'vsock', type: 'stream', listening: false },
      server: { domain: 'vsock', type: 'stream', listening: false },
    });
  });

  it('sys: carries 1 MiB each way at once, received intact (byte counts and SHA-256 match)', async () => {
    // Arrange + Act
    const { result } = await guestRun();
    const s = value(result.sys, 'listenVsock/connectVsock');
    // Assert
    assert.deepEqual(s.toServer.bytes, MIB);
    assert.deepEqual(s.toClient.bytes, MIB);
    assert.deepEqual(s.serverGot, s.toServer);
    assert.deepEqual(s.clientGot, s.toClient);
    assert.notEqual(s.toServer.sha256, s.toClient.sha256, 'the two directions carry different data');
    assert.ok(s.transferMs >= 0);
  });

  it("sys: a destroyed socket whose fd number was reused reports EBADF, not the new socket's address", async () => {
    // Arrange + Act
    const { result } = await guestRun();
    const { afterDestroy } = value(result.sys, 'listenVsock/connectVsock');
    // Assert: the fd number really went to the new listener, and the stale socket refuses
    assert.equal(afterDestroy.probeFd, afterDestroy.clientFd, 'the new listener took the destroyed client fd number');
    const local = errorOf(afterDestroy.clientLocal, 'localAddress() of a destroyed socket');
    assert.deepEqual([local.name, local.code, local.errno, local.syscall], ['SysError', 'EBADF', 9, 'getsockname']);
    const remote = errorOf(afterDestroy.serverRemote, 'remoteAddress() of a destroyed socket');
    assert.deepEqual([remote.name, remote.code, remote.errno, remote.syscall], ['SysError', 'EBADF', 9, 'getpeername']);
  });

  it('sys: a listener bound to CID 1 reports CID 1 and serves, its port cannot be bound again, and it reports EBADF once closed', async () => {
    // Arrange + Act
    const { result } = await guestRun();
    const s = value(result.sysLocal, 'listenVsock(1, port)');
    // Assert
    assert.deepEqual(s.address, { family: 'vsock', cid: CID_LOCAL, port: result.ports.sysLocal });
    assert.equal(s.serverGot, 'ping');
    assert.equal(s.clientGot, 'pong');
    const again = assertError(s.secondBind, 'binding the port again');
    assert.equal(again.isSysError, true);
    assert.deepEqual([again.code, again.errno, again.syscall, again.path], ['EADDRINUSE', 98, 'bind', `vsock:${CID_ANY}:${result.ports.sysLocal}`]);
    const closed = errorOf(s.afterClose, 'address() of a closed listener');
    assert.deepEqual([closed.name, closed.code, closed.syscall], ['SysError', 'EBADF', 'getsockname']);
  });

  it('sys: connecting to a port nobody listens on rejects with a SysError (ECONNRESET or ECONNREFUSED)', async () => {
    // Arrange + Act
    const { result } = await guestRun();
    const e = assertError(value(result.refused, 'the refused-connect step').sys, 'connectVsock to an unbound port');
    // Assert: the socket's own error, not libuv's EBADF for POLLERR
    assert.equal(e.name, 'SysError');
    assert.equal(e.isSysError, true);
    assert.ok(['ECONNRESET', 'ECONNREFUSED'].includes(e.code), `code ${e.code}`);
    assert.equal(e.errno, e.code === 'ECONNRESET' ? 104 : 111);
    assert.equal(e.syscall, 'connect');
    assert.equal(e.path, `vsock:${CID_LOCAL}:${result.ports.nobody}`);
    assert.match(e.message, new RegExp(`^connect 'vsock:1:${result.ports.nobody}' failed: ${e.code} \\(`));
  });

  it('transport: listen vsock:any:PORT and dial vsock:1:PORT carry 1 MiB each way; the peer is vsock:1:<client port>', async () => {
    // Arrange + Act
    const { result } = await guestRun();
    const s = value(result.transport, 'listen/dial');
    // Assert
    assert.equal(s.listenerAddress, `vsock:any:${result.ports.transport}`);
    assert.equal(s.clientIsFdSocket, true);
    assert.ok(s.clientLocal, 'the dialed stream has a local address');
    assert.ok(s.clientLocal.port > LAST_RESERVED_PORT);
    assert.equal(s.peer, `vsock:${CID_LOCAL}:${s.clientLocal.port}`);
    assert.deepEqual(s.serverGot, { bytes: MIB, sha256: s.toServer });
    assert.deepEqual(s.clientGot, { bytes: MIB, sha256: s.toClient });
    assert.notEqual(s.toServer, s.toClient);
  });

  it('transport: dialing a port nobody listens on fails with a TransportError naming the address, caused by the SysError', async () => {
    // Arrange + Act
    const { result } = await guestRun();
    const refused = value(result.refused, 'the refused-connect step');
    const e = assertError(refused.transport, 'dial to an unbound port');
    const sysError = assertError(refused.sys, 'connectVsock to an unbound port');
    // Assert
    const shown = `vsock:local:${result.ports.nobody}`;
    assert.equal(e.name, 'TransportError');
    assert.equal(e.isTransportError, true);
    assert.equal(e.code, sysError.code);
    assert.equal(e.address, shown);
    assert.ok(e.message.startsWith(`${shown}: cannot connect to it: `), e.message);
    assert.ok(e.cause, 'the TransportError has a cause');
    assert.deepEqual(
      [e.cause.name, e.cause.code, e.cause.syscall, e.cause.path],
      ['SysError', sysError.code, 'connect', `vsock:${CID_LOCAL}:${result.ports.nobody}`],
    );
  });
});
