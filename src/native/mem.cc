// Shared memory and event fds: memfd_create, mmap into an ArrayBuffer,
// eventfd. Guest memory (vhost-user) and notification fds are built on these.
#include <fcntl.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include <mutex>
#include <unordered_map>

#include "common.h"

namespace prism {
namespace {

Napi::Value MemfdCreate(const Napi::CallbackInfo& info) {
  std::string name = ArgBytes(info, 0);
  int fd = memfd_create(name.c_str(), ArgUint(info, 1) | MFD_CLOEXEC);
  if (fd < 0) ThrowErrno(info.Env(), errno, "memfd_create");
  return Napi::Number::New(info.Env(), fd);
}

// fcntl(F_GET_SEALS): the seals of a memfd (EINVAL for files that cannot be
// sealed). Guest memory that is not sealed against shrinking could be
// truncated under our mapping by the frontend, which would turn our next
// access into SIGBUS; the caller decides what to do about it.
Napi::Value GetSeals(const Napi::CallbackInfo& info) {
  int seals = fcntl(ArgInt(info, 0), F_GET_SEALS);
  if (seals < 0) ThrowErrno(info.Env(), errno, "fcntl");
  return Napi::Number::New(info.Env(), seals);
}

Napi::Value AddSeals(const Napi::CallbackInfo& info) {
  if (fcntl(ArgInt(info, 0), F_ADD_SEALS, ArgInt(info, 1)) < 0) ThrowErrno(info.Env(), errno, "fcntl");
  return info.Env().Undefined();
}

// One mapping handed to JS as an external ArrayBuffer. It is unmapped either
// by munmap() (which also detaches the ArrayBuffer so no JS view can reach the
// freed pages) or, if JS never calls munmap, by the ArrayBuffer's finalizer.
struct Mapping {
  void* addr;
  size_t length;
  bool unmapped;
};

// Live mappings by address, so munmap(ab) can find its Mapping. Only touched
// on the main thread; the mutex guards against finalizers on other threads in
// future Node versions.
std::mutex gMapsMutex;
std::unordered_map<void*, Mapping*> gMaps;

void FinalizeMapping(Napi::Env, void*, Mapping* m) {
  {
    std::lock_guard<std::mutex> lock(gMapsMutex);
    if (!m->unmapped) gMaps.erase(m->addr);
  }
  if (!m->unmapped) munmap(m->addr, m->length);
  delete m;
}

Napi::Value Mmap(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgInt(info, 0);
  size_t length = static_cast<size_t>(ArgUint64(info, 1));
  int prot = ArgInt(info, 2);
  int flags = ArgInt(info, 3);
  off_t offset = ArgInt64(info, 4);
  if (length == 0) ThrowErrno(env, EINVAL, "mmap");
  void* addr = mmap(nullptr, length, prot, flags, fd, offset);
  if (addr == MAP_FAILED) ThrowErrno(env, errno, "mmap");
  auto* m = new Mapping{addr, length, false};
  {
    std::lock_guard<std::mutex> lock(gMapsMutex);
    gMaps[addr] = m;
  }
  // Safe: the pages stay mapped until FinalizeMapping or Munmap, and Munmap
  // detaches the buffer before the pages go away.
  return Napi::ArrayBuffer::New(env, addr, length, FinalizeMapping, m);
}

// Unmaps the ArrayBuffer's pages now and detaches it (its byteLength becomes 0
// and every view of it is empty). Calling it again, or on a buffer that is not
// a mapping, is EINVAL.
Napi::Value Munmap(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::ArrayBuffer ab = info[0].As<Napi::ArrayBuffer>();
  void* data = ab.Data();
  Mapping* m = nullptr;
  {
    std::lock_guard<std::mutex> lock(gMapsMutex);
    auto it = gMaps.find(data);
    if (it == gMaps.end() || data == nullptr) ThrowErrno(env, EINVAL, "munmap");
    m = it->second;
    gMaps.erase(it);
    m->unmapped = true;
  }
  ab.Detach();
  if (munmap(m->addr, m->length) < 0) ThrowErrno(env, errno, "munmap");
  return env.Undefined();
}

Napi::Value Eventfd(const Napi::CallbackInfo& info) {
  int fd = eventfd(ArgUint(info, 0), ArgInt(info, 1) | EFD_CLOEXEC | EFD_NONBLOCK);
  if (fd < 0) ThrowErrno(info.Env(), errno, "eventfd");
  return Napi::Number::New(info.Env(), fd);
}

// Reads the counter; null when it is zero (would block).
Napi::Value EventfdRead(const Napi::CallbackInfo& info) {
  uint64_t v = 0;
  ssize_t n;
  do {
    n = read(ArgInt(info, 0), &v, sizeof v);
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (errno == EAGAIN) return info.Env().Null();
    ThrowErrno(info.Env(), errno, "read");
  }
  if (n != sizeof v) ThrowErrno(info.Env(), EIO, "read");
  return Napi::BigInt::New(info.Env(), v);
}

// Adds to the counter; false when it would overflow (would block).
Napi::Value EventfdWrite(const Napi::CallbackInfo& info) {
  uint64_t v = ArgUint64(info, 1);
  ssize_t n;
  do {
    n = write(ArgInt(info, 0), &v, sizeof v);
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (errno == EAGAIN) return Napi::Boolean::New(info.Env(), false);
    ThrowErrno(info.Env(), errno, "write");
  }
  return Napi::Boolean::New(info.Env(), true);
}

}  // namespace

void InitMem(Napi::Env env, Napi::Object exports) {
  exports.Set("memfdCreate", Napi::Function::New(env, MemfdCreate));
  exports.Set("getSeals", Napi::Function::New(env, GetSeals));
  exports.Set("addSeals", Napi::Function::New(env, AddSeals));
  exports.Set("mmap", Napi::Function::New(env, Mmap));
  exports.Set("munmap", Napi::Function::New(env, Munmap));
  exports.Set("eventfd", Napi::Function::New(env, Eventfd));
  exports.Set("eventfdRead", Napi::Function::New(env, EventfdRead));
  exports.Set("eventfdWrite", Napi::Function::New(env, EventfdWrite));
}

}  // namespace prism
