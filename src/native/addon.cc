// prism native addon entry point. See common.h for the rules of this layer.
#include <fcntl.h>
#include <linux/openat2.h>
#include <linux/vm_sockets.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <uv.h>

#include "common.h"

namespace prism {
namespace {

// The kernel's constants for this architecture, so TS never hard-codes values
// that differ between x86_64 and arm64 (O_DIRECTORY, O_NOFOLLOW...).
Napi::Object Constants(Napi::Env env) {
  Napi::Object c = Napi::Object::New(env);
#define C(name) c.Set(#name, Napi::Number::New(env, static_cast<double>(name)))
  C(O_RDONLY); C(O_WRONLY); C(O_RDWR); C(O_ACCMODE); C(O_CREAT); C(O_EXCL); C(O_NOCTTY); C(O_TRUNC);
  C(O_APPEND); C(O_NONBLOCK); C(O_DSYNC); C(O_SYNC); C(O_DIRECT); C(O_LARGEFILE); C(O_DIRECTORY);
  C(O_NOFOLLOW); C(O_NOATIME); C(O_CLOEXEC); C(O_PATH); C(O_TMPFILE);
  C(RESOLVE_NO_XDEV); C(RESOLVE_NO_MAGICLINKS); C(RESOLVE_NO_SYMLINKS); C(RESOLVE_BENEATH);
  C(RESOLVE_IN_ROOT); C(RESOLVE_CACHED);
  C(AT_FDCWD); C(AT_SYMLINK_NOFOLLOW); C(AT_REMOVEDIR); C(AT_SYMLINK_FOLLOW); C(AT_NO_AUTOMOUNT);
  C(AT_EMPTY_PATH); C(AT_STATX_SYNC_AS_STAT); C(AT_STATX_DONT_SYNC);
  C(STATX_TYPE); C(STATX_MODE); C(STATX_NLINK); C(STATX_UID); C(STATX_GID); C(STATX_ATIME);
  C(STATX_MTIME); C(STATX_CTIME); C(STATX_INO); C(STATX_SIZE); C(STATX_BLOCKS); C(STATX_BASIC_STATS);
  C(STATX_BTIME); C(STATX_ALL);
  C(RENAME_NOREPLACE); C(RENAME_EXCHANGE); C(RENAME_WHITEOUT);
  C(UTIME_NOW); C(UTIME_OMIT);
  C(XATTR_CREATE); C(XATTR_REPLACE);
  C(F_GETLK); C(F_SETLK); C(F_SETLKW); C(F_OFD_GETLK); C(F_OFD_SETLK); C(F_OFD_SETLKW);
  C(F_RDLCK); C(F_WRLCK); C(F_UNLCK); C(SEEK_SET); C(SEEK_CUR); C(SEEK_END);
  C(S_IFMT); C(S_IFSOCK); C(S_IFLNK); C(S_IFREG); C(S_IFBLK); C(S_IFDIR); C(S_IFCHR); C(S_IFIFO);
  C(S_ISUID); C(S_ISGID); C(S_ISVTX);
  C(AF_UNIX); C(AF_INET); C(AF_INET6); C(AF_VSOCK); C(SOCK_STREAM); C(SOCK_DGRAM); C(SOCK_SEQPACKET);
  C(SOL_SOCKET); C(SO_ERROR); C(SO_ACCEPTCONN); C(SO_DOMAIN); C(SO_TYPE);
  C(SHUT_RD); C(SHUT_WR); C(SHUT_RDWR);
  C(VMADDR_CID_ANY); C(VMADDR_CID_HYPERVISOR); C(VMADDR_CID_LOCAL); C(VMADDR_CID_HOST); C(VMADDR_PORT_ANY);
  C(MFD_CLOEXEC); C(MFD_ALLOW_SEALING);
  C(F_SEAL_SEAL); C(F_SEAL_SHRINK); C(F_SEAL_GROW); C(F_SEAL_WRITE);
  C(PROT_NONE); C(PROT_READ); C(PROT_WRITE); C(MAP_SHARED); C(MAP_PRIVATE);
  C(EFD_SEMAPHORE);
  C(UV_READABLE); C(UV_WRITABLE); C(UV_DISCONNECT);
#undef C
  return c;
}

}  // namespace

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("constants", Constants(env));
  InitFs(env, exports);
  InitSock(env, exports);
  InitMem(env, exports);
  return exports;
}

}  // namespace prism

static Napi::Object InitAddon(Napi::Env env, Napi::Object exports) { return prism::Init(env, exports); }

NODE_API_MODULE(prism_native, InitAddon)
