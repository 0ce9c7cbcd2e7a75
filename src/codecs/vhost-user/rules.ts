// What the wire rules say about a message beyond its bytes: how many fds travel with it (SCM_RIGHTS
// ancillary data) and whether the other side answers it. vhost-user.rst "Communication" lists the
// requests that carry fds and the ones that always get a reply; the per-request sections give the
// counts. A connection layer uses these to check what arrived and to know when to wait for a reply.
import type { FrontendRequestName } from './constants.js';
import type { BackendMessage, BackendReply, FrontendMessage } from './messages.js';

/**
 * The number of fds a front-end message must come with:
 * SET_MEM_TABLE one per region (same order); SET_VRING_KICK/CALL/ERR one unless noFd; SET_LOG_BASE
 * (the log's shared memory: LOG_SHMFD is the only way a back-end can use a log), SET_LOG_FD,
 * SET_BACKEND_REQ_FD, SET_INFLIGHT_FD, GPU_SET_SOCKET, ADD_MEM_REG, SET_DEVICE_STATE_FD one; the
 * rest none.
 *
 * REM_MEM_REG "SHOULD" come without an fd, but a back-end "MAY accept messages with one file
 * descriptor" for old front-ends and "MUST close it without using it": decodeFrontend() accepts 0 or
 * 1 fds for it, and this returns 0 (the fds it uses). Close every received fd beyond this count.
 */
export function frontendFdCount(msg: FrontendMessage): number {
  switch (msg.request) {
    case 'SET_MEM_TABLE':
      return msg.regions.length;
    case 'SET_VRING_KICK':
    case 'SET_VRING_CALL':
    case 'SET_VRING_ERR':
      return msg.noFd ? 0 : 1;
    case 'SET_LOG_BASE':
    case 'SET_LOG_FD':
    case 'SET_BACKEND_REQ_FD':
    case 'SET_INFLIGHT_FD':
    case 'GPU_SET_SOCKET':
    case 'ADD_MEM_REG':
    case 'SET_DEVICE_STATE_FD':
      return 1;
    default:
      return 0;
  }
}

/** Extra fds a front-end message may come with, to be closed unused (REM_MEM_REG: 1). */
export function frontendStrayFds(msg: FrontendMessage): number {
  return msg.request === 'REM_MEM_REG' ? 1 : 0;
}

/**
 * Requests that get a reply whether or not NEED_REPLY is set: the spec's list (GET_FEATURES,
 * GET_PROTOCOL_FEATURES, GET_VRING_BASE, SET_LOG_BASE with LOG_SHMFD, GET_INFLIGHT_FD) plus every
 * request whose section gives a reply payload.
 */
export const REQUESTS_WITH_REPLY: ReadonlySet<FrontendRequestName> = new Set<FrontendRequestName>([
  'GET_FEATURES',
  'GET_PROTOCOL_FEATURES',
  'GET_VRING_BASE',
  'GET_QUEUE_NUM',
  'SET_LOG_BASE',
  'IOTLB_MSG',
  'GET_CONFIG',
  'CREATE_CRYPTO_SESSION',
  'POSTCOPY_ADVISE',
  'POSTCOPY_END',
  'GET_INFLIGHT_FD',
  'GET_MAX_MEM_SLOTS',
  'GET_STATUS',
  'GET_SHARED_OBJECT',
  'SET_DEVICE_STATE_FD',
  'CHECK_DEVICE_STATE',
  'GET_SHMEM_CONFIG',
]);

/**
 * Whether the back-end must answer this message: it has an explicit reply, or NEED_REPLY asks for a
 * REPLY_ACK. (In postcopy, SET_MEM_TABLE and ADD_MEM_REG are answered too: that is connection state.)
 */
export function expectsReply(msg: FrontendMessage): boolean {
  return REQUESTS_WITH_REPLY.has(msg.request) || msg.flags.needReply;
}

/** fds a back-end reply carries: GET_INFLIGHT_FD and POSTCOPY_ADVISE one, SET_DEVICE_STATE_FD one unless noFd. */
export function replyFdCount(reply: BackendReply): number {
  switch (reply.request) {
    case 'GET_INFLIGHT_FD':
    case 'POSTCOPY_ADVISE':
      return 1;
    case 'SET_DEVICE_STATE_FD':
      return reply.noFd ? 0 : 1;
    default:
      return 0;
  }
}

/** fds a back-end request carries: VRING_HOST_NOTIFIER_MSG one unless noFd, SHMEM_MAP one. */
export function backendFdCount(msg: BackendMessage): number {
  switch (msg.request) {
    case 'VRING_HOST_NOTIFIER_MSG':
      return msg.noFd ? 0 : 1;
    case 'SHMEM_MAP':
      return 1;
    default:
      return 0;
  }
}
