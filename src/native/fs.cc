// Filesystem syscalls on directory fds: openat2 and the *at family, getdents64,
// f*xattr, fstatfs, OFD byte-range locks. All can block (disk, FUSE, network
// filesystems), so each runs as SyscallWork on the libuv pool and returns a
// promise.
#include <dirent.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/uio.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <cstdio>

#include "common.h"

namespace prism {
namespace {

// Retries a syscall interrupted by a signal; returns 0 or errno.
#define PRISM_CALL(expr)            \
  do {                              \
    long rc_;                       \
    do {                            \
      rc_ = (expr);                 \
    } while (rc_ < 0 && errno == EINTR); \
    if (rc_ < 0) return errno;      \
  } while (0)

// A syscall whose only result is success or errno, run on the pool.
Napi::Value VoidSyscall(Napi::Env env, const char* name, std::function<long()> call) {
  return SyscallWork<int>::Start(
      env, name,
      [call](int&) {
        PRISM_CALL(call());
        return 0;
      },
      ToUndefined);
}

Napi::Value Openat2(const Napi::CallbackInfo& info) {
  int dirfd = ArgInt(info, 0);
  std::string path = ArgBytes(info, 1);
  open_how how{};
  how.flags = ArgUint64(info, 2);
  how.mode = ArgUint64(info, 3);
  how.resolve = ArgUint64(info, 4);
  return SyscallWork<int64_t>::Start(
      info.Env(), "openat2",
      [=](int64_t& fd) {
        long rc;
        do {
          rc = syscall(SYS_openat2, dirfd, path.c_str(), &how, sizeof how);
        } while (rc < 0 && errno == EINTR);
        if (rc < 0) return errno;
        fd = rc;
        return 0;
      },
      ToNumber);
}

// Synchronous probe run once at start-up: is openat2 with RESOLVE_BENEATH
// implemented by this kernel? Returns 0 or the errno (ENOSYS on < 5.6).
Napi::Value ProbeOpenat2(const Napi::CallbackInfo& info) {
  open_how how{};
  how.flags = O_PATH | O_CLOEXEC;
  how.resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV;
  long fd = syscall(SYS_openat2, AT_FDCWD, ".", &how, sizeof how);
  if (fd < 0) return Napi::Number::New(info.Env(), errno);
  close(static_cast<int>(fd));
  return Napi::Number::New(info.Env(), 0);
}

Napi::Object Timestamp(Napi::Env env, const statx_timestamp& t) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("sec", Napi::Number::New(env, static_cast<double>(t.tv_sec)));
  o.Set("nsec", Napi::Number::New(env, t.tv_nsec));
  return o;
}

Napi::Value StatxObject(Napi::Env env, struct statx& st) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("mask", st.stx_mask);
  o.Set("blksize", st.stx_blksize);
  o.Set("attributes", Napi::BigInt::New(env, static_cast<uint64_t>(st.stx_attributes)));
  o.Set("nlink", st.stx_nlink);
  o.Set("uid", st.stx_uid);
  o.Set("gid", st.stx_gid);
  o.Set("mode", st.stx_mode);
  o.Set("ino", Napi::BigInt::New(env, static_cast<uint64_t>(st.stx_ino)));
  o.Set("size", Napi::BigInt::New(env, static_cast<uint64_t>(st.stx_size)));
  o.Set("blocks", Napi::BigInt::New(env, static_cast<uint64_t>(st.stx_blocks)));
  o.Set("atime", Timestamp(env, st.stx_atime));
  o.Set("btime", Timestamp(env, st.stx_btime));
  o.Set("ctime", Timestamp(env, st.stx_ctime));
  o.Set("mtime", Timestamp(env, st.stx_mtime));
  o.Set("rdevMajor", st.stx_rdev_major);
  o.Set("rdevMinor", st.stx_rdev_minor);
  o.Set("devMajor", st.stx_dev_major);
  o.Set("devMinor", st.stx_dev_minor);
  return o;
}

Napi::Value Statx(const Napi::CallbackInfo& info) {
  int dirfd = ArgInt(info, 0);
  std::string path = ArgBytes(info, 1);
  int flags = ArgInt(info, 2);
  unsigned mask = ArgUint(info, 3);
  return SyscallWork<struct statx>::Start(
      info.Env(), "statx",
      [=](struct statx& st) {
        PRISM_CALL(statx(dirfd, path.c_str(), flags, mask, &st));
        return 0;
      },
      StatxObject);
}

// Synchronous variants for the main thread, only for calls that cannot wait on I/O:
// openat2 with RESOLVE_CACHED (fails with EAGAIN instead of touching the disk) and
// statx with AT_STATX_DONT_SYNC on an fd we hold (the inode is in memory). They spare
// a thread-pool round trip per lookup; callers fall back to the async calls.
Napi::Value Openat2Sync(const Napi::CallbackInfo& info) {
  int dirfd = ArgInt(info, 0);
  std::string path = ArgBytes(info, 1);
  open_how how{};
  how.flags = ArgUint64(info, 2);
  how.mode = ArgUint64(info, 3);
  how.resolve = ArgUint64(info, 4);
  long rc;
  do {
    rc = syscall(SYS_openat2, dirfd, path.c_str(), &how, sizeof how);
  } while (rc < 0 && errno == EINTR);
  if (rc < 0) ThrowErrno(info.Env(), errno, "openat2");
  return Napi::Number::New(info.Env(), static_cast<double>(rc));
}

Napi::Value StatxSync(const Napi::CallbackInfo& info) {
  int dirfd = ArgInt(info, 0);
  std::string path = ArgBytes(info, 1);
  struct statx st {};
  int rc;
  do {
    rc = statx(dirfd, path.c_str(), ArgInt(info, 2), ArgUint(info, 3), &st);
  } while (rc < 0 && errno == EINTR);
  if (rc < 0) ThrowErrno(info.Env(), errno, "statx");
  return StatxObject(info.Env(), st);
}

// preadv2(RWF_NOWAIT) on the main thread: the bytes already in the page cache, or
// null when the read would have to wait for I/O (then read on the pool instead).
Napi::Value PreadNowait(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgInt(info, 0);
  iovec iov = ArgIovec(info, 1, "preadv2");
  off_t position = ArgInt64(info, 4);
  ssize_t n;
  do {
    n = preadv2(fd, &iov, 1, position, RWF_NOWAIT);
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (errno == EAGAIN) return env.Null();
    ThrowErrno(env, errno, "preadv2");
  }
  return Napi::Number::New(env, static_cast<double>(n));
}

Napi::Value Mkdirat(const Napi::CallbackInfo& info) {
  int dirfd = ArgInt(info, 0);
  std::string path = ArgBytes(info, 1);
  mode_t mode = ArgUint(info, 2);
  return VoidSyscall(info.Env(), "mkdirat", [=] { return mkdirat(dirfd, path.c_str(), mode); });
}

Napi::Value Mknodat(const Napi::CallbackInfo& info) {
  int dirfd = ArgInt(info, 0);
  std::string path = ArgBytes(info, 1);
  mode_t mode = ArgUint(info, 2);
  dev_t dev = makedev(ArgUint(info, 3), ArgUint(info, 4));
  return VoidSyscall(info.Env(), "mknodat", [=] { return mknodat(dirfd, path.c_str(), mode, dev); });
}

Napi::Value Symlinkat(const Napi::CallbackInfo& info) {
  std::string target = ArgBytes(info, 0);
  int dirfd = ArgInt(info, 1);
  std::string path = ArgBytes(info, 2);
  return VoidSyscall(info.Env(), "symlinkat", [=] { return symlinkat(target.c_str(), dirfd, path.c_str()); });
}

Napi::Value Linkat(const Napi::CallbackInfo& info) {
  int olddirfd = ArgInt(info, 0);
  std::string oldpath = ArgBytes(info, 1);
  int newdirfd = ArgInt(info, 2);
  std::string newpath = ArgBytes(info, 3);
  int flags = ArgInt(info, 4);
  return VoidSyscall(info.Env(), "linkat", [=] { return linkat(olddirfd, oldpath.c_str(), newdirfd, newpath.c_str(), flags); });
}

Napi::Value Renameat2(const Napi::CallbackInfo& info) {
  int olddirfd = ArgInt(info, 0);
  std::string oldpath = ArgBytes(info, 1);
  int newdirfd = ArgInt(info, 2);
  std::string newpath = ArgBytes(info, 3);
  unsigned flags = ArgUint(info, 4);
  return VoidSyscall(info.Env(), "renameat2", [=] { return renameat2(olddirfd, oldpath.c_str(), newdirfd, newpath.c_str(), flags); });
}

Napi::Value Unlinkat(const Napi::CallbackInfo& info) {
  int dirfd = ArgInt(info, 0);
  std::string path = ArgBytes(info, 1);
  int flags = ArgInt(info, 2);
  return VoidSyscall(info.Env(), "unlinkat", [=] { return unlinkat(dirfd, path.c_str(), flags); });
}

// Bytes are returned as a Buffer: link targets are not necessarily UTF-8.
Napi::Value BytesToBuffer(Napi::Env env, std::string& s) {
  return Napi::Buffer<char>::Copy(env, s.data(), s.size());
}

Napi::Value Readlinkat(const Napi::CallbackInfo& info) {
  int dirfd = ArgInt(info, 0);
  std::string path = ArgBytes(info, 1);
  return SyscallWork<std::string>::Start(
      info.Env(), "readlinkat",
      [=](std::string& out) {
        std::vector<char> buf(PATH_MAX);
        long n;
        do {
          n = readlinkat(dirfd, path.c_str(), buf.data(), buf.size());
        } while (n < 0 && errno == EINTR);
        if (n < 0) return errno;
        out.assign(buf.data(), static_cast<size_t>(n));
        return 0;
      },
      BytesToBuffer);
}

Napi::Value Fchownat(const Napi::CallbackInfo& info) {
  int dirfd = ArgInt(info, 0);
  std::string path = ArgBytes(info, 1);
  uid_t uid = ArgUint(info, 2);
  gid_t gid = ArgUint(info, 3);
  int flags = ArgInt(info, 4);
  return VoidSyscall(info.Env(), "fchownat", [=] { return fchownat(dirfd, path.c_str(), uid, gid, flags); });
}

// The raw syscall: glibc's fchmodat emulates AT_SYMLINK_NOFOLLOW through
// /proc, which is exactly the kind of hidden path walk we do not want.
Napi::Value Fchmodat(const Napi::CallbackInfo& info) {
  int dirfd = ArgInt(info, 0);
  std::string path = ArgBytes(info, 1);
  mode_t mode = ArgUint(info, 2);
  return VoidSyscall(info.Env(), "fchmodat", [=] { return syscall(SYS_fchmodat, dirfd, path.c_str(), mode); });
}

Napi::Value Fchmod(const Napi::CallbackInfo& info) {
  int fd = ArgInt(info, 0);
  mode_t mode = ArgUint(info, 1);
  return VoidSyscall(info.Env(), "fchmod", [=] { return fchmod(fd, mode); });
}

Napi::Value Utimensat(const Napi::CallbackInfo& info) {
  int dirfd = ArgInt(info, 0);
  std::string path = ArgBytes(info, 1);
  timespec ts[2];
  ts[0].tv_sec = ArgInt64(info, 2);
  ts[0].tv_nsec = ArgInt64(info, 3);
  ts[1].tv_sec = ArgInt64(info, 4);
  ts[1].tv_nsec = ArgInt64(info, 5);
  int flags = ArgInt(info, 6);
  return SyscallWork<int>::Start(
      info.Env(), "utimensat",
      [=](int&) {
        // An empty path without AT_EMPTY_PATH is the "operate on the fd" form
        // (NULL path, utimensat(2)); with AT_EMPTY_PATH the kernel takes "".
        const char* p = path.empty() && !(flags & AT_EMPTY_PATH) ? nullptr : path.c_str();
        PRISM_CALL(syscall(SYS_utimensat, dirfd, p, ts, flags));
        return 0;
      },
      ToUndefined);
}

struct DirEntry {
  uint64_t ino;
  int64_t off;
  unsigned char type;
  std::string name;
};

// getdents64 from an optional offset (a d_off cookie from an earlier call,
// so a reader can resume where it stopped); one kernel call per request.
Napi::Value Getdents64(const Napi::CallbackInfo& info) {
  int fd = ArgInt(info, 0);
  bool seek = !info[1].IsNull() && !info[1].IsUndefined();
  int64_t offset = seek ? ArgInt64(info, 1) : 0;
  size_t bufsize = ArgUint(info, 2);
  return SyscallWork<std::vector<DirEntry>>::Start(
      info.Env(), "getdents64",
      [=](std::vector<DirEntry>& out) {
        if (seek && lseek(fd, offset, SEEK_SET) < 0) return errno;
        std::vector<char> buf(bufsize);
        long n;
        do {
          n = getdents64(fd, buf.data(), buf.size());
        } while (n < 0 && errno == EINTR);
        if (n < 0) return errno;
        // The kernel fills whole records; each d_reclen is checked against
        // what is left so a short or odd buffer can never be over-read.
        size_t pos = 0;
        while (pos + offsetof(struct dirent64, d_name) < static_cast<size_t>(n)) {
          auto* d = reinterpret_cast<struct dirent64*>(buf.data() + pos);
          if (d->d_reclen == 0 || pos + d->d_reclen > static_cast<size_t>(n)) break;
          size_t maxName = d->d_reclen - offsetof(struct dirent64, d_name);
          out.push_back({d->d_ino, d->d_off, d->d_type, std::string(d->d_name, strnlen(d->d_name, maxName))});
          pos += d->d_reclen;
        }
        return 0;
      },
      [](Napi::Env env, std::vector<DirEntry>& entries) -> Napi::Value {
        Napi::Array arr = Napi::Array::New(env, entries.size());
        for (size_t i = 0; i < entries.size(); i++) {
          Napi::Object o = Napi::Object::New(env);
          o.Set("ino", Napi::BigInt::New(env, entries[i].ino));
          o.Set("off", Napi::BigInt::New(env, entries[i].off));
          o.Set("type", entries[i].type);
          o.Set("name", Napi::Buffer<char>::Copy(env, entries[i].name.data(), entries[i].name.size()));
          arr.Set(i, o);
        }
        return arr;
      });
}

// The xattr "size query" convention: with size 0 the kernel reports the
// value's length without copying; otherwise it fills up to `size` bytes
// (ERANGE if too small). Resolves to that length, or to the bytes.
Napi::Value SizedBytes(Napi::Env env, const char* name, size_t size, std::function<long(char*, size_t)> call) {
  return SyscallWork<std::string>::Start(
      env, name,
      [=](std::string& out) {
        std::vector<char> buf(size);
        long n;
        do {
          n = call(size ? buf.data() : nullptr, size);
        } while (n < 0 && errno == EINTR);
        if (n < 0) return errno;
        out = size ? std::string(buf.data(), static_cast<size_t>(n)) : std::string(static_cast<size_t>(n), '\0');
        return 0;
      },
      [size](Napi::Env env, std::string& s) -> Napi::Value {
        if (size == 0) return Napi::Number::New(env, static_cast<double>(s.size()));
        return Napi::Buffer<char>::Copy(env, s.data(), s.size());
      });
}

Napi::Value Fgetxattr(const Napi::CallbackInfo& info) {
  int fd = ArgInt(info, 0);
  std::string name = ArgBytes(info, 1);
  size_t size = ArgUint(info, 2);
  return SizedBytes(info.Env(), "fgetxattr", size, [=](char* buf, size_t n) { return fgetxattr(fd, name.c_str(), buf, n); });
}

Napi::Value Flistxattr(const Napi::CallbackInfo& info) {
  int fd = ArgInt(info, 0);
  size_t size = ArgUint(info, 1);
  return SizedBytes(info.Env(), "flistxattr", size, [=](char* buf, size_t n) { return flistxattr(fd, buf, n); });
}

Napi::Value Fsetxattr(const Napi::CallbackInfo& info) {
  int fd = ArgInt(info, 0);
  std::string name = ArgBytes(info, 1);
  std::string value = ArgBytes(info, 2);
  int flags = ArgInt(info, 3);
  return VoidSyscall(info.Env(), "fsetxattr", [=] { return fsetxattr(fd, name.c_str(), value.data(), value.size(), flags); });
}

Napi::Value Fremovexattr(const Napi::CallbackInfo& info) {
  int fd = ArgInt(info, 0);
  std::string name = ArgBytes(info, 1);
  return VoidSyscall(info.Env(), "fremovexattr", [=] { return fremovexattr(fd, name.c_str()); });
}

Napi::Value Fstatfs(const Napi::CallbackInfo& info) {
  int fd = ArgInt(info, 0);
  return SyscallWork<struct statfs>::Start(
      info.Env(), "fstatfs",
      [=](struct statfs& st) {
        PRISM_CALL(fstatfs(fd, &st));
        return 0;
      },
      [](Napi::Env env, struct statfs& st) -> Napi::Value {
        auto big = [&](uint64_t v) { return Napi::BigInt::New(env, v); };
        Napi::Object o = Napi::Object::New(env);
        o.Set("type", big(static_cast<uint64_t>(st.f_type)));
        o.Set("bsize", big(static_cast<uint64_t>(st.f_bsize)));
        o.Set("blocks", big(st.f_blocks));
        o.Set("bfree", big(st.f_bfree));
        o.Set("bavail", big(st.f_bavail));
        o.Set("files", big(st.f_files));
        o.Set("ffree", big(st.f_ffree));
        uint64_t fsid = (static_cast<uint64_t>(static_cast<uint32_t>(st.f_fsid.__val[1])) << 32) |
                        static_cast<uint32_t>(st.f_fsid.__val[0]);
        o.Set("fsid", big(fsid));
        o.Set("namelen", big(static_cast<uint64_t>(st.f_namelen)));
        o.Set("frsize", big(static_cast<uint64_t>(st.f_frsize)));
        o.Set("flags", big(static_cast<uint64_t>(st.f_flags)));
        return o;
      });
}

struct LockResult {
  struct flock fl;
};

// fcntl byte-range locks. cmd is F_OFD_SETLK, F_OFD_SETLKW, F_OFD_GETLK (or
// the classic POSIX F_SETLK/F_SETLKW/F_GETLK). F_*SETLKW blocks a pool
// thread until the lock is granted; callers bound how many they issue.
Napi::Value FcntlLock(const Napi::CallbackInfo& info) {
  int fd = ArgInt(info, 0);
  int cmd = ArgInt(info, 1);
  struct flock fl {};
  fl.l_type = static_cast<short>(ArgInt(info, 2));
  fl.l_whence = static_cast<short>(ArgInt(info, 3));
  fl.l_start = ArgInt64(info, 4);
  fl.l_len = ArgInt64(info, 5);
  fl.l_pid = 0;  // required to be 0 for OFD locks
  return SyscallWork<LockResult>::Start(
      info.Env(), "fcntl",
      [=](LockResult& r) {
        r.fl = fl;
        PRISM_CALL(fcntl(fd, cmd, &r.fl));
        return 0;
      },
      [](Napi::Env env, LockResult& r) -> Napi::Value {
        Napi::Object o = Napi::Object::New(env);
        o.Set("type", r.fl.l_type);
        o.Set("whence", r.fl.l_whence);
        o.Set("start", Napi::BigInt::New(env, static_cast<int64_t>(r.fl.l_start)));
        o.Set("len", Napi::BigInt::New(env, static_cast<int64_t>(r.fl.l_len)));
        o.Set("pid", r.fl.l_pid);
        return o;
      });
}

}  // namespace

void InitFs(Napi::Env env, Napi::Object exports) {
  exports.Set("openat2", Napi::Function::New(env, Openat2));
  exports.Set("probeOpenat2", Napi::Function::New(env, ProbeOpenat2));
  exports.Set("statx", Napi::Function::New(env, Statx));
  exports.Set("openat2Sync", Napi::Function::New(env, Openat2Sync));
  exports.Set("statxSync", Napi::Function::New(env, StatxSync));
  exports.Set("preadNowait", Napi::Function::New(env, PreadNowait));
  exports.Set("mkdirat", Napi::Function::New(env, Mkdirat));
  exports.Set("mknodat", Napi::Function::New(env, Mknodat));
  exports.Set("symlinkat", Napi::Function::New(env, Symlinkat));
  exports.Set("linkat", Napi::Function::New(env, Linkat));
  exports.Set("renameat2", Napi::Function::New(env, Renameat2));
  exports.Set("unlinkat", Napi::Function::New(env, Unlinkat));
  exports.Set("readlinkat", Napi::Function::New(env, Readlinkat));
  exports.Set("fchownat", Napi::Function::New(env, Fchownat));
  exports.Set("fchmodat", Napi::Function::New(env, Fchmodat));
  exports.Set("fchmod", Napi::Function::New(env, Fchmod));
  exports.Set("utimensat", Napi::Function::New(env, Utimensat));
  exports.Set("getdents64", Napi::Function::New(env, Getdents64));
  exports.Set("fgetxattr", Napi::Function::New(env, Fgetxattr));
  exports.Set("flistxattr", Napi::Function::New(env, Flistxattr));
  exports.Set("fsetxattr", Napi::Function::New(env, Fsetxattr));
  exports.Set("fremovexattr", Napi::Function::New(env, Fremovexattr));
  exports.Set("fstatfs", Napi::Function::New(env, Fstatfs));
  exports.Set("fcntlLock", Napi::Function::New(env, FcntlLock));
}

}  // namespace prism
