// prism native layer: shared helpers.
//
// This layer holds no logic. Every exported function makes one syscall (or a
// fixed, tiny sequence that the kernel interface requires) and reports either
// its result or {code, errno, syscall}. Argument validation is done in
// TypeScript (src/sys/); the checks here only keep a wrongly typed call from
// crashing the process (node-addon-api throws a JS TypeError on a bad cast
// because NAPI_CPP_EXCEPTIONS is on).
#pragma once

#include <napi.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <sys/uio.h>
#include <functional>
#include <string>
#include <vector>

namespace prism {

// Name of an errno value ("ENOENT"); glibc >= 2.32 provides strerrorname_np.
inline const char* ErrnoName(int err) {
  const char* name = strerrorname_np(err);
  return name != nullptr ? name : "EUNKNOWN";
}

// The one error shape the native layer reports: a plain object that the TS
// layer turns into a SysError (adding the path it knows about).
inline Napi::Object ErrorObject(Napi::Env env, int err, const char* syscall) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("code", ErrnoName(err));
  o.Set("errno", err);
  o.Set("syscall", syscall);
  return o;
}

// Synchronous calls throw that object; the TS wrapper catches and converts.
[[noreturn]] inline void ThrowErrno(Napi::Env env, int err, const char* syscall) {
  throw Napi::Error(env, ErrorObject(env, err, syscall));
}

inline int ArgInt(const Napi::CallbackInfo& info, size_t i) {
  return info[i].As<Napi::Number>().Int32Value();
}
inline uint32_t ArgUint(const Napi::CallbackInfo& info, size_t i) {
  return info[i].As<Napi::Number>().Uint32Value();
}
inline int64_t ArgInt64(const Napi::CallbackInfo& info, size_t i) {
  if (info[i].IsBigInt()) {
    bool lossless = false;
    return info[i].As<Napi::BigInt>().Int64Value(&lossless);
  }
  return info[i].As<Napi::Number>().Int64Value();
}
inline uint64_t ArgUint64(const Napi::CallbackInfo& info, size_t i) {
  if (info[i].IsBigInt()) {
    bool lossless = false;
    return info[i].As<Napi::BigInt>().Uint64Value(&lossless);
  }
  return static_cast<uint64_t>(info[i].As<Napi::Number>().Int64Value());
}
// Paths and names arrive as Buffers (TS encodes strings and rejects NUL bytes),
// copied so a worker thread never touches JS memory.
inline std::string ArgBytes(const Napi::CallbackInfo& info, size_t i) {
  Napi::Buffer<char> b = info[i].As<Napi::Buffer<char>>();
  return std::string(b.Data(), b.Length());
}

// A Buffer argument and the (offset, length) that follow it, as an iovec. TS
// checks the range; this guard only keeps the pointer inside the buffer.
inline iovec ArgIovec(const Napi::CallbackInfo& info, size_t i, const char* syscall) {
  Napi::Buffer<uint8_t> buf = info[i].As<Napi::Buffer<uint8_t>>();
  size_t offset = ArgUint(info, i + 1);
  size_t length = ArgUint(info, i + 2);
  if (offset > buf.Length() || length > buf.Length() - offset) ThrowErrno(info.Env(), ERANGE, syscall);
  return iovec{buf.Data() + offset, length};
}

// One blocking syscall run on the libuv thread pool; resolves a promise with
// the converted result or rejects it with ErrorObject. `exec` runs off the
// main thread and must not touch napi values; `conv` runs on the main thread.
template <typename R>
class SyscallWork : public Napi::AsyncWorker {
 public:
  using Exec = std::function<int(R&)>;  // returns 0 or an errno value
  using Conv = std::function<Napi::Value(Napi::Env, R&)>;

  static Napi::Value Start(Napi::Env env, const char* syscall, Exec exec, Conv conv) {
    auto* w = new SyscallWork(env, syscall, std::move(exec), std::move(conv));
    Napi::Promise p = w->deferred_.Promise();
    w->Queue();
    return p;
  }

 protected:
  void Execute() override { err_ = exec_(result_); }
  void OnOK() override {
    Napi::Env env = Env();
    Napi::HandleScope scope(env);
    if (err_ != 0) {
      deferred_.Reject(ErrorObject(env, err_, syscall_));
      return;
    }
    deferred_.Resolve(conv_(env, result_));
  }
  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  SyscallWork(Napi::Env env, const char* syscall, Exec exec, Conv conv)
      : Napi::AsyncWorker(env, syscall),
        deferred_(Napi::Promise::Deferred::New(env)),
        syscall_(syscall),
        exec_(std::move(exec)),
        conv_(std::move(conv)) {}

  Napi::Promise::Deferred deferred_;
  const char* syscall_;
  Exec exec_;
  Conv conv_;
  R result_{};
  int err_ = 0;
};

// Result converters used by several calls.
inline Napi::Value ToUndefined(Napi::Env env, int&) { return env.Undefined(); }
inline Napi::Value ToNumber(Napi::Env env, int64_t& v) {
  return Napi::Number::New(env, static_cast<double>(v));
}

void InitFs(Napi::Env env, Napi::Object exports);
void InitSock(Napi::Env env, Napi::Object exports);
void InitMem(Napi::Env env, Napi::Object exports);

}  // namespace prism
