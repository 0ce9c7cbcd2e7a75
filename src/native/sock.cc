// Sockets Node lacks: AF_VSOCK and AF_UNIX with SCM_RIGHTS. Every socket is
// non-blocking; these calls never wait. Readiness comes from Poller (a
// uv_poll_t on the main loop), and the Duplex streams are built in TS.
// Would-block is reported as a null result, not as an error.
#include <fcntl.h>
#include <linux/vm_sockets.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>
#include <uv.h>

#include "common.h"

namespace prism {
namespace {

constexpr size_t kMaxFds = 253;  // SCM_MAX_FD in the kernel

bool WouldBlock(int err) { return err == EAGAIN || err == EWOULDBLOCK; }

Napi::Value Socket(const Napi::CallbackInfo& info) {
  int domain = ArgInt(info, 0);
  int type = ArgInt(info, 1);
  int fd = socket(domain, type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) ThrowErrno(info.Env(), errno, "socket");
  return Napi::Number::New(info.Env(), fd);
}

Napi::Value Socketpair(const Napi::CallbackInfo& info) {
  int domain = ArgInt(info, 0);
  int type = ArgInt(info, 1);
  int sv[2];
  if (socketpair(domain, type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) < 0) ThrowErrno(info.Env(), errno, "socketpair");
  Napi::Array a = Napi::Array::New(info.Env(), 2);
  a.Set(0u, sv[0]);
  a.Set(1u, sv[1]);
  return a;
}

// Builds a sockaddr from (family, ...) arguments starting at index `i`:
// AF_VSOCK: cid, port; AF_UNIX: path bytes (a leading NUL selects the abstract namespace).
socklen_t MakeAddr(const Napi::CallbackInfo& info, size_t i, sockaddr_storage& ss) {
  memset(&ss, 0, sizeof ss);
  int family = ArgInt(info, i);
  if (family == AF_VSOCK) {
    auto* a = reinterpret_cast<sockaddr_vm*>(&ss);
    a->svm_family = AF_VSOCK;
    a->svm_cid = ArgUint(info, i + 1);
    a->svm_port = ArgUint(info, i + 2);
    return sizeof(sockaddr_vm);
  }
  if (family == AF_UNIX) {
    auto* a = reinterpret_cast<sockaddr_un*>(&ss);
    a->sun_family = AF_UNIX;
    std::string path = ArgBytes(info, i + 1);
    // TS rejects longer paths with a clear message; this only keeps memory safe.
    if (path.size() >= sizeof a->sun_path) ThrowErrno(info.Env(), ENAMETOOLONG, "sockaddr_un");
    memcpy(a->sun_path, path.data(), path.size());
    return static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + path.size() + (path.empty() || path[0] != '\0' ? 1 : 0));
  }
  ThrowErrno(info.Env(), EAFNOSUPPORT, "sockaddr");
}

Napi::Value Bind(const Napi::CallbackInfo& info) {
  int fd = ArgInt(info, 0);
  sockaddr_storage ss;
  socklen_t len = MakeAddr(info, 1, ss);
  if (bind(fd, reinterpret_cast<sockaddr*>(&ss), len) < 0) ThrowErrno(info.Env(), errno, "bind");
  return info.Env().Undefined();
}

// Returns 0 when connected at once, or the errno EINPROGRESS/EAGAIN for a
// connect that completes later (wait for writable, then SO_ERROR).
Napi::Value Connect(const Napi::CallbackInfo& info) {
  int fd = ArgInt(info, 0);
  sockaddr_storage ss;
  socklen_t len = MakeAddr(info, 1, ss);
  int rc;
  do {
    rc = connect(fd, reinterpret_cast<sockaddr*>(&ss), len);
  } while (rc < 0 && errno == EINTR);
  if (rc < 0) {
    if (errno == EINPROGRESS || errno == EAGAIN) return Napi::Number::New(info.Env(), errno);
    ThrowErrno(info.Env(), errno, "connect");
  }
  return Napi::Number::New(info.Env(), 0);
}

Napi::Value Listen(const Napi::CallbackInfo& info) {
  if (listen(ArgInt(info, 0), ArgInt(info, 1)) < 0) ThrowErrno(info.Env(), errno, "listen");
  return info.Env().Undefined();
}

Napi::Value Accept(const Napi::CallbackInfo& info) {
  int fd;
  do {
    fd = accept4(ArgInt(info, 0), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
  } while (fd < 0 && errno == EINTR);
  if (fd < 0) {
    if (WouldBlock(errno) || errno == ECONNABORTED) return info.Env().Null();
    ThrowErrno(info.Env(), errno, "accept4");
  }
  return Napi::Number::New(info.Env(), fd);
}

Napi::Value AddrObject(Napi::Env env, const sockaddr_storage& ss, socklen_t len) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("family", ss.ss_family);
  if (ss.ss_family == AF_VSOCK) {
    auto* a = reinterpret_cast<const sockaddr_vm*>(&ss);
    o.Set("cid", a->svm_cid);
    o.Set("port", a->svm_port);
  } else if (ss.ss_family == AF_UNIX) {
    auto* a = reinterpret_cast<const sockaddr_un*>(&ss);
    size_t n = len > offsetof(sockaddr_un, sun_path) ? len - offsetof(sockaddr_un, sun_path) : 0;
    if (n > sizeof a->sun_path) n = sizeof a->sun_path;
    if (n > 0 && a->sun_path[0] != '\0') n = strnlen(a->sun_path, n);
    o.Set("path", Napi::Buffer<char>::Copy(env, a->sun_path, n));
  }
  return o;
}

Napi::Value Getsockname(const Napi::CallbackInfo& info) {
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  if (getsockname(ArgInt(info, 0), reinterpret_cast<sockaddr*>(&ss), &len) < 0) ThrowErrno(info.Env(), errno, "getsockname");
  return AddrObject(info.Env(), ss, len);
}

Napi::Value Getpeername(const Napi::CallbackInfo& info) {
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  if (getpeername(ArgInt(info, 0), reinterpret_cast<sockaddr*>(&ss), &len) < 0) ThrowErrno(info.Env(), errno, "getpeername");
  return AddrObject(info.Env(), ss, len);
}

// One int-valued SOL_SOCKET option (SO_ERROR, SO_ACCEPTCONN, SO_DOMAIN, SO_TYPE...).
Napi::Value GetsockoptInt(const Napi::CallbackInfo& info) {
  int v = 0;
  socklen_t len = sizeof v;
  if (getsockopt(ArgInt(info, 0), SOL_SOCKET, ArgInt(info, 1), &v, &len) < 0) ThrowErrno(info.Env(), errno, "getsockopt");
  return Napi::Number::New(info.Env(), v);
}

// setsockopt/getsockopt at any level with an int or a u64 value (SO_RCVBUF is an int;
// AF_VSOCK's SO_VM_SOCKETS_BUFFER_* are u64). TS validates the arguments; these checks only keep a
// wrong call from passing garbage to the kernel: a value that does not fit is EINVAL, not truncated.
Napi::Value SetsockoptInt(const Napi::CallbackInfo& info) {
  if (info.Length() < 4 || !info[3].IsNumber()) ThrowErrno(info.Env(), EINVAL, "setsockopt");
  double d = info[3].As<Napi::Number>().DoubleValue();
  if (!(d >= INT32_MIN && d <= INT32_MAX) || d != static_cast<double>(static_cast<int>(d))) ThrowErrno(info.Env(), EINVAL, "setsockopt");
  int v = static_cast<int>(d);
  if (setsockopt(ArgInt(info, 0), ArgInt(info, 1), ArgInt(info, 2), &v, sizeof v) < 0) ThrowErrno(info.Env(), errno, "setsockopt");
  return info.Env().Undefined();
}

Napi::Value SetsockoptU64(const Napi::CallbackInfo& info) {
  if (info.Length() < 4 || !info[3].IsBigInt()) ThrowErrno(info.Env(), EINVAL, "setsockopt");
  bool lossless = false;
  uint64_t v = info[3].As<Napi::BigInt>().Uint64Value(&lossless);
  if (!lossless) ThrowErrno(info.Env(), EINVAL, "setsockopt");
  if (setsockopt(ArgInt(info, 0), ArgInt(info, 1), ArgInt(info, 2), &v, sizeof v) < 0) ThrowErrno(info.Env(), errno, "setsockopt");
  return info.Env().Undefined();
}

// A u64-valued option; EINVAL if the kernel's value is not 8 bytes long.
Napi::Value GetsockoptU64(const Napi::CallbackInfo& info) {
  uint64_t v = 0;
  socklen_t len = sizeof v;
  if (getsockopt(ArgInt(info, 0), ArgInt(info, 1), ArgInt(info, 2), &v, &len) < 0) ThrowErrno(info.Env(), errno, "getsockopt");
  if (len != sizeof v) ThrowErrno(info.Env(), EINVAL, "getsockopt");
  return Napi::BigInt::New(info.Env(), v);
}

// recvmsg into buf[offset, offset+length) and up to maxFds passed fds.
// Returns null on would-block, else {bytes, fds, truncated} (bytes 0 = EOF).
Napi::Value Recvmsg(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgInt(info, 0);
  iovec iov = ArgIovec(info, 1, "recvmsg");
  size_t maxFds = ArgUint(info, 4);
  if (maxFds > kMaxFds) maxFds = kMaxFds;
  std::vector<char> control(CMSG_SPACE(sizeof(int) * (maxFds ? maxFds : 1)));
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  if (maxFds > 0) {
    msg.msg_control = control.data();
    msg.msg_controllen = control.size();
  }
  ssize_t n;
  do {
    n = recvmsg(fd, &msg, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (WouldBlock(errno)) return env.Null();
    ThrowErrno(env, errno, "recvmsg");
  }
  Napi::Array fds = Napi::Array::New(env);
  uint32_t k = 0;
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    const unsigned char* data = CMSG_DATA(c);
    for (size_t i = 0; i < count; i++) {
      int passed;
      memcpy(&passed, data + i * sizeof(int), sizeof(int));  // CMSG_DATA may be unaligned
      fds.Set(k++, passed);
    }
  }
  Napi::Object o = Napi::Object::New(env);
  o.Set("bytes", Napi::Number::New(env, static_cast<double>(n)));
  o.Set("fds", fds);
  o.Set("truncated", (msg.msg_flags & (MSG_CTRUNC | MSG_TRUNC)) != 0);
  return o;
}

// sendmsg of buf[offset, offset+length) with optional fds (SCM_RIGHTS).
// Returns bytes sent, or null on would-block. MSG_NOSIGNAL: no SIGPIPE.
Napi::Value Sendmsg(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgInt(info, 0);
  iovec iov = ArgIovec(info, 1, "sendmsg");
  Napi::Array fdArr = info[4].As<Napi::Array>();
  size_t nfds = fdArr.Length();
  if (nfds > kMaxFds) ThrowErrno(env, EINVAL, "sendmsg");
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  std::vector<char> control(CMSG_SPACE(sizeof(int) * (nfds ? nfds : 1)));
  if (nfds > 0) {
    msg.msg_control = control.data();
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
    for (size_t i = 0; i < nfds; i++) {
      int v = fdArr.Get(static_cast<uint32_t>(i)).As<Napi::Number>().Int32Value();
      memcpy(CMSG_DATA(c) + i * sizeof(int), &v, sizeof(int));
    }
  }
  ssize_t n;
  do {
    n = sendmsg(fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (WouldBlock(errno)) return env.Null();
    ThrowErrno(env, errno, "sendmsg");
  }
  return Napi::Number::New(env, static_cast<double>(n));
}

// This machine's own vsock CID (IOCTL_VM_SOCKETS_GET_LOCAL_CID on /dev/vsock).
Napi::Value VsockLocalCid(const Napi::CallbackInfo& info) {
  int fd = open("/dev/vsock", O_RDONLY | O_CLOEXEC);
  if (fd < 0) ThrowErrno(info.Env(), errno, "open");
  unsigned int cid = 0;
  int rc = ioctl(fd, IOCTL_VM_SOCKETS_GET_LOCAL_CID, &cid);
  int err = errno;
  close(fd);
  if (rc < 0) ThrowErrno(info.Env(), err, "ioctl");
  return Napi::Number::New(info.Env(), cid);
}

// Makes an inherited fd non-blocking (sockets created here already are).
Napi::Value SetNonblock(const Napi::CallbackInfo& info) {
  int fd = ArgInt(info, 0);
  int fl = fcntl(fd, F_GETFL);
  if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) ThrowErrno(info.Env(), errno, "fcntl");
  return info.Env().Undefined();
}

Napi::Value Shutdown(const Napi::CallbackInfo& info) {
  if (shutdown(ArgInt(info, 0), ArgInt(info, 1)) < 0) ThrowErrno(info.Env(), errno, "shutdown");
  return info.Env().Undefined();
}

Napi::Value Close(const Napi::CallbackInfo& info) {
  // close(2) is not retried on EINTR: on Linux the fd is released regardless.
  if (close(ArgInt(info, 0)) < 0 && errno != EINTR) ThrowErrno(info.Env(), errno, "close");
  return info.Env().Undefined();
}

// A uv_poll_t watching one fd for readability/writability on the main loop.
// The callback gets (status, events); status < 0 is a libuv error (-errno).
// While started, the JS object is kept alive (Ref) so a running poller
// cannot be collected; close() stops it and releases the handle.
class Poller : public Napi::ObjectWrap<Poller> {
 public:
  static Napi::Function Init(Napi::Env env) {
    return DefineClass(env, "Poller",
                       {InstanceMethod("start", &Poller::Start), InstanceMethod("stop", &Poller::Stop),
                        InstanceMethod("close", &Poller::Close)});
  }

  explicit Poller(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Poller>(info) {
    Napi::Env env = info.Env();
    int fd = ArgInt(info, 0);
    callback_ = Napi::Persistent(info[1].As<Napi::Function>());
    uv_loop_t* loop = nullptr;
    if (napi_get_uv_event_loop(env, &loop) != napi_ok) ThrowErrno(env, EINVAL, "uv_poll_init");
    handle_ = new uv_poll_t;
    int rc = uv_poll_init(loop, handle_, fd);
    if (rc < 0) {
      delete handle_;
      handle_ = nullptr;
      ThrowErrno(env, -rc, "uv_poll_init");
    }
    handle_->data = this;
  }

  ~Poller() override { Release(); }

 private:
  Napi::Value Start(const Napi::CallbackInfo& info) {
    if (handle_ == nullptr) ThrowErrno(info.Env(), EBADF, "uv_poll_start");
    int events = ArgInt(info, 0) & (UV_READABLE | UV_WRITABLE);
    int rc = uv_poll_start(handle_, events, OnPoll);
    if (rc < 0) ThrowErrno(info.Env(), -rc, "uv_poll_start");
    if (!active_) {
      Ref();
      active_ = true;
    }
    return info.Env().Undefined();
  }

  Napi::Value Stop(const Napi::CallbackInfo& info) {
    StopInternal();
    return info.Env().Undefined();
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    Release();
    return info.Env().Undefined();
  }

  void StopInternal() {
    if (handle_ != nullptr) uv_poll_stop(handle_);
    if (active_) {
      active_ = false;
      Unref();
    }
  }

  // The handle memory is freed in the close callback, after libuv is done
  // with it; handle_->data is cleared first so a late event finds no Poller.
  void Release() {
    StopInternal();
    if (handle_ != nullptr) {
      handle_->data = nullptr;
      uv_close(reinterpret_cast<uv_handle_t*>(handle_), [](uv_handle_t* h) { delete reinterpret_cast<uv_poll_t*>(h); });
      handle_ = nullptr;
    }
  }

  static void OnPoll(uv_poll_t* h, int status, int events) {
    auto* self = static_cast<Poller*>(h->data);
    if (self == nullptr) return;
    Napi::Env env = self->Env();
    Napi::HandleScope scope(env);
    try {
      self->callback_.MakeCallback(self->Value(), {Napi::Number::New(env, status), Napi::Number::New(env, events)});
    } catch (const Napi::Error& e) {
      // A JS exception thrown under this callback (a stream 'data' handler, say) must surface the
      // way Node's own callbacks surface one, as 'uncaughtException', not escape libuv as a C++
      // exception, which would be std::terminate.
      napi_fatal_exception(env, e.Value());
    }
  }

  Napi::FunctionReference callback_;
  uv_poll_t* handle_ = nullptr;
  bool active_ = false;
};

}  // namespace

void InitSock(Napi::Env env, Napi::Object exports) {
  exports.Set("socket", Napi::Function::New(env, Socket));
  exports.Set("socketpair", Napi::Function::New(env, Socketpair));
  exports.Set("bind", Napi::Function::New(env, Bind));
  exports.Set("connect", Napi::Function::New(env, Connect));
  exports.Set("listen", Napi::Function::New(env, Listen));
  exports.Set("accept", Napi::Function::New(env, Accept));
  exports.Set("getsockname", Napi::Function::New(env, Getsockname));
  exports.Set("getpeername", Napi::Function::New(env, Getpeername));
  exports.Set("getsockoptInt", Napi::Function::New(env, GetsockoptInt));
  exports.Set("setsockoptInt", Napi::Function::New(env, SetsockoptInt));
  exports.Set("setsockoptU64", Napi::Function::New(env, SetsockoptU64));
  exports.Set("getsockoptU64", Napi::Function::New(env, GetsockoptU64));
  exports.Set("recvmsg", Napi::Function::New(env, Recvmsg));
  exports.Set("sendmsg", Napi::Function::New(env, Sendmsg));
  exports.Set("vsockLocalCid", Napi::Function::New(env, VsockLocalCid));
  exports.Set("setNonblock", Napi::Function::New(env, SetNonblock));
  exports.Set("shutdown", Napi::Function::New(env, Shutdown));
  exports.Set("close", Napi::Function::New(env, Close));
  exports.Set("Poller", Poller::Init(env));
}

}  // namespace prism
