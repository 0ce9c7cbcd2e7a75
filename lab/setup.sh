#!/usr/bin/env bash
# Guest lab setup: installs QEMU and the guest-side tools, fetches a Debian kernel (downloaded,
# unpacked, never installed) and builds a busybox initramfs with the module closure the
# integration tests need (9p, virtio, vhost-user peers, usbip/vhci, vsock, virtiofs).
#
# Run as root. Idempotent: a second run only checks versions and exits (well under 2 s).
# Cache: lab/cache/ (or $PRISM_LAB_DIR), keyed by kernel version:
#   current                       the kernel version lab/guest.ts boots
#   <kver>/vmlinuz                the kernel (bzImage)
#   <kver>/vmlinux                the same kernel uncompressed; QEMU boots it via its PVH entry,
#                                 which saves the ~4 s TCG needs to decompress the bzImage
#   <kver>/initramfs.cpio.gz      the base initramfs (test scripts are appended by lab/guest.ts)
#   <kver>/stamp                  what the build was made from; a mismatch rebuilds
#   debs/, <kver>/root/           the downloaded kernel package and its unpacked tree
set -euo pipefail
export LC_ALL=C

started=$(date +%s%N)
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
lab=${PRISM_LAB_DIR:-$here/cache}

say() { printf 'lab/setup: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (apt-get install, mknod): sudo bash lab/setup.sh"

# Host tools. The guest also gets socat and usbip from here; diod is a reference 9p server;
# dpdk-dev brings dpdk-testpmd, a guest-less vhost-user frontend and reference backend.
packages=(qemu-system-x86 busybox-static socat usbip diod cpio kmod dpdk-dev libudev1)
missing=()
for p in "${packages[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
  [ "$status" = "install ok installed" ] || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  say "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
fi

# Everything the build depends on besides the kernel package; any change rebuilds.
host_stamp=$(
  dpkg-query -W -f='${Package} ${Version}\n' busybox-static socat usbip usb.ids libc6
  echo "setup $(sha256sum < "${BASH_SOURCE[0]}" | cut -d' ' -f1)"
)
summary() {
  local size ms
  size=$(stat -c %s "$out/initramfs.cpio.gz")
  ms=$(( ($(date +%s%N) - started) / 1000000 ))
  printf 'lab: kernel %s (%s), initramfs %s bytes (%s KiB), cache %s, %s in %d.%03d s\n' \
    "$kver" "$kpkgver" "$size" "$(( size / 1024 ))" "$lab" "$1" $((ms / 1000)) $((ms % 1000))
}
up_to_date() { # $1: the kernel line the stamp must start with, or "" to take it from the stamp
  [ -f "$out/stamp" ] && [ -f "$out/vmlinuz" ] && [ -f "$out/initramfs.cpio.gz" ] || return 1
  [ "$(cat "$lab/current" 2>/dev/null)" = "$kver" ] || return 1
  local first rest
  first=$(head -n1 "$out/stamp")
  rest=$(tail -n +2 "$out/stamp")
  [ "$rest" = "$host_stamp" ] || return 1
  [ -z "$1" ] || [ "$first" = "$1" ] || return 1
  kpkgver=${first##* }
}

# Fast path (apt-cache takes seconds here): the cached build is current if its stamp matches and
# apt's package lists have not changed since it was written.
kver=$(cat "$lab/current" 2>/dev/null || true)
kpkgver=
out=$lab/$kver
if [ -n "$kver" ] && [ -d /var/lib/apt/lists ] && up_to_date "" \
   && [ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*Packages*' -newer "$out/stamp" -print -quit)" ]; then
  summary "up to date"
  exit 0
fi

# The kernel package that the linux-image-amd64 metapackage points at, and its version.
kernel_package() {
  apt-cache show --no-all-versions linux-image-amd64 2>/dev/null \
    | sed -n 's/^Depends: .*\(linux-image-[0-9][^ ,]*-amd64\)\( (= \([^)]*\))\)\{0,1\}.*/\1 \3/p' | head -n1
}
read -r kpkg kpkgver < <(kernel_package) || true
if [ -z "${kpkg:-}" ]; then
  say "apt lists do not know linux-image-amd64; running apt-get update"
  apt-get update -qq
  read -r kpkg kpkgver < <(kernel_package) || true
fi
[ -n "${kpkg:-}" ] || die "cannot find the kernel package linux-image-amd64 depends on"
if [ -z "${kpkgver:-}" ]; then
  kpkgver=$(apt-cache show --no-all-versions "$kpkg" | sed -n 's/^Version: //p' | head -n1)
fi
[ -n "$kpkgver" ] || die "apt-cache show $kpkg gave no version"
kver=${kpkg#linux-image-}
out=$lab/$kver
kernel_line="kernel $kpkg $kpkgver"
stamp_text=$(printf '%s\n%s' "$kernel_line" "$host_stamp")
if up_to_date "$kernel_line"; then
  touch "$out/stamp" # the newer apt lists changed nothing
  summary "up to date"
  exit 0
fi

mkdir -p "$lab/debs" "$out"
exec 9>"$lab/.lock"
flock 9
if up_to_date "$kernel_line"; then # another run built it while we waited for the lock
  summary "up to date"
  exit 0
fi

# --- kernel: download, unpack, depmod ---------------------------------------------------------
deb=$(ls "$lab/debs/${kpkg}_"*.deb 2>/dev/null | while read -r f; do
  [ "$(dpkg-deb -f "$f" Version)" = "$kpkgver" ] && echo "$f"; done | head -n1 || true)
if [ -z "$deb" ]; then
  say "downloading $kpkg $kpkgver"
  (cd "$lab/debs" && apt-get download -qq -o APT::Sandbox::User=root "$kpkg=$kpkgver")
  deb=$(ls "$lab/debs/${kpkg}_"*.deb | while read -r f; do
    [ "$(dpkg-deb -f "$f" Version)" = "$kpkgver" ] && echo "$f"; done | head -n1)
fi
[ -n "$deb" ] || die "no .deb for $kpkg $kpkgver in $lab/debs"

root=$out/root
if [ ! -f "$root/.unpacked" ] || [ "$(cat "$root/.unpacked")" != "$kpkgver" ]; then
  say "unpacking $(basename "$deb")"
  rm -rf "$root"
  mkdir -p "$root"
  dpkg-deb -x "$deb" "$root"
  # depmod -b and modprobe -d look in DIR/lib/modules; newer packages ship usr/lib/modules
  [ -e "$root/lib" ] || [ ! -d "$root/usr/lib/modules" ] || ln -s usr/lib "$root/lib"
  [ -d "$root/lib/modules/$kver" ] || die "$deb has no lib/modules/$kver"
  depmod -b "$root" "$kver"
  echo "$kpkgver" > "$root/.unpacked"
fi
[ -f "$root/boot/vmlinuz-$kver" ] || die "$deb has no boot/vmlinuz-$kver"

# --- initramfs ------------------------------------------------------------------------------------
# Top-level modules; their dependencies are resolved below from modules.dep.
modules=(
  9p 9pnet 9pnet_fd 9pnet_virtio netfs fscache
  virtio virtio_ring virtio_pci virtio_pci_legacy_dev virtio_pci_modern_dev
  virtio_console virtio_net net_failover failover
  vhci-hcd usbip-core usbcore usb-common usbhid hid hid-generic usb-storage sd_mod scsi_mod
  vsock vmw_vsock_virtio_transport_common vmw_vsock_virtio_transport vsock_loopback
  fuse virtiofs
  virtio_blk ext4
  evdev usbip-host dummy_hcd libcomposite usb_f_mass_storage
)

stage=$(mktemp -d "$lab/stage.XXXXXX")
trap 'rm -rf "$stage" "$stage.cpio.gz"' EXIT
say "building initramfs in $stage"
mkdir -p "$stage"/{bin,sbin,usr/bin,usr/sbin,etc/prism-lab,proc,sys,dev,tmp,run,var,root,mnt,lib,lib64}
ln -s ../run "$stage/var/run"
mknod -m 600 "$stage/dev/console" c 5 1 2>/dev/null || true
mknod -m 666 "$stage/dev/null" c 1 3 2>/dev/null || true

# busybox and its applets
cp /bin/busybox "$stage/bin/busybox"
/bin/busybox --list-full | while read -r applet; do
  [ "$applet" = bin/busybox ] && continue
  [ -e "$stage/$applet" ] || ln -s /bin/busybox "$stage/$applet"
done

# the module closure, uncompressed
mdir=lib/modules/$kver
mkdir -p "$stage/$mdir"
loadable=()
declare -A seen=()
for m in "${modules[@]}"; do
  deps=$(modprobe -d "$root" -S "$kver" --show-depends "$m") || die "module $m not found in $kver"
  if ! grep -q '^insmod ' <<<"$deps"; then
    continue # built into the kernel
  fi
  loadable+=("$m")
  while read -r verb path _; do
    [ "$verb" = insmod ] || continue
    rel=${path#"$root"/}
    [ -n "${seen[$rel]:-}" ] && continue
    seen[$rel]=1
    mkdir -p "$stage/$(dirname "$rel")"
    case $rel in
      *.ko.xz) xz -dc "$path" > "$stage/${rel%.xz}" ;;
      *.ko.zst) zstd -qdc "$path" > "$stage/${rel%.zst}" ;;
      *.ko.gz) gzip -dc "$path" > "$stage/${rel%.gz}" ;;
      *.ko) cp "$path" "$stage/$rel" ;;
      *) die "unexpected module file $rel" ;;
    esac
  done <<<"$deps"
done
for f in modules.order modules.builtin modules.builtin.modinfo; do
  [ -f "$root/$mdir/$f" ] && cp "$root/$mdir/$f" "$stage/$mdir/$f"
done
depmod -b "$stage" "$kver"
printf '%s\n' "${loadable[@]}" > "$stage/etc/prism-lab/modules"

# socat and usbip with their shared libraries and the dynamic loader
copy_file() { # host path -> same path in the stage, following symlinks
  mkdir -p "$stage$(dirname "$1")"
  cp -L "$1" "$stage$1"
}
for bin in /usr/bin/socat /usr/sbin/usbip; do
  copy_file "$bin"
  ldd "$bin" | awk '/=> \//{print $3} /^\t\//{print $1}' | while read -r lib; do
    [ -e "$stage$lib" ] || copy_file "$lib"
  done
done
copy_file /usr/share/misc/usb.ids

cat > "$stage/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
cat > "$stage/etc/group" <<'EOF'
root:x:0:
nogroup:x:65534:
EOF
printf '127.0.0.1 localhost\n::1 localhost\n' > "$stage/etc/hosts"
printf 'passwd: files\ngroup: files\nhosts: files\n' > "$stage/etc/nsswitch.conf"
echo "$kver" > "$stage/etc/prism-lab/kernel"

cat > "$stage/init" <<'EOF'
#!/bin/sh
# PID 1 of the prism guest lab (written by lab/setup.sh). Runs /test.sh, which lab/guest.ts
# appends as a second cpio archive, prints "PRISM-LAB-EXIT <rc>" and powers the guest off.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
exec </dev/console >/dev/console 2>&1
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t tmpfs -o mode=755 tmpfs /run
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
echo "PRISM-LAB-INIT $(cut -d' ' -f1 /proc/uptime) $(uname -r)"
modules=$(cat /etc/prism-lab/modules)
if ! modprobe -a $modules; then
  for m in $modules; do modprobe "$m" || echo "PRISM-LAB: modprobe $m failed"; done
fi
ip link set lo up
hostname prism-lab
echo "PRISM-LAB-READY $(cut -d' ' -f1 /proc/uptime)"
if [ -f /test.sh ]; then
  cd /
  sh /test.sh </dev/null
  rc=$?
else
  echo "PRISM-LAB: no /test.sh in the initramfs (lab/guest.ts appends it)"
  rc=127
fi
echo "PRISM-LAB-EXIT $rc"
poweroff -f
EOF
chmod 755 "$stage/init"

(cd "$stage" && find . -mindepth 1 | sort | cpio -o -H newc -R 0:0 --quiet) | gzip -9n > "$stage.cpio.gz"
cp "$root/boot/vmlinuz-$kver" "$out/vmlinuz.new"
mv "$out/vmlinuz.new" "$out/vmlinuz"
# The bzImage is xz-compressed and TCG takes ~4 s to decompress it on every boot. The ELF inside
# has a PVH entry note, so QEMU can boot it directly: extract it once here.
rm -f "$out/vmlinux"
extract_vmlinux() {
  local off
  for off in $(grep -obUa $'\xfd7zXZ' "$out/vmlinuz" | cut -d: -f1); do
    tail -c +$((off + 1)) "$out/vmlinuz" | xz -dcq --single-stream > "$out/vmlinux.new" 2>/dev/null || true
    if [ "$(head -c 4 "$out/vmlinux.new" 2>/dev/null)" = $'\x7fELF' ]; then
      if ! command -v readelf >/dev/null || readelf -n "$out/vmlinux.new" | grep -qE '\(0x00000012\)|PHYS32_ENTRY'; then
        mv "$out/vmlinux.new" "$out/vmlinux"
        return 0
      fi
    fi
  done
  rm -f "$out/vmlinux.new"
  say "no PVH-bootable vmlinux inside vmlinuz-$kver; guests boot the bzImage (slower)"
}
extract_vmlinux
mv "$stage.cpio.gz" "$out/initramfs.cpio.gz"
printf '%s\n' "$stamp_text" > "$out/stamp"
echo "$kver" > "$lab/current.new"
mv "$lab/current.new" "$lab/current"
# Older kernels' builds and packages are dead weight (a build is ~450 MB with its unpacked tree).
for d in "$lab"/*/; do
  d=${d%/}
  case ${d##*/} in "$kver" | debs) continue ;; esac
  if [ -f "$d/stamp" ] && [ -f "$d/initramfs.cpio.gz" ]; then rm -rf "$d"; fi
done
find "$lab/debs" -maxdepth 1 -name '*.deb' ! -samefile "$deb" -delete
summary "built ${#seen[@]} modules"
