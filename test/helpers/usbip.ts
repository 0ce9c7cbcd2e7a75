// Guest shell fragments shared by the USB/IP lab tests.

/** Detaches the vhci port in use (hs ports are 0..7, SuperSpeed ports 8..15: vhci picks by speed). */
export const DETACH_PORT_IN_USE = `usbip detach -p $(usbip port | sed -n 's/^Port \\([0-9]*\\): <Port in Use>.*/\\1/p' | head -n1)`;

/**
 * The disk workload of an imported mass-storage device whose image holds hello.txt and big.bin:
 * waits for /dev/sda, prints `P-DISK sectors vendor max_hw_sectors_kb`, mounts it (`P-MOUNT-RC`),
 * prints `P-HELLO` and `P-BIG` (big.bin's sha256), writes 1 MiB of random bytes as new.bin
 * (`P-WROTE` its sha256), unmounts (`P-UMOUNT-RC`), prints `usbip port` as `P-PORT` lines and
 * detaches (`P-DETACH-RC`), where P is `prefix`.
 */
export function usbDiskWorkload(prefix: string): string {
  const p = prefix;
  return `
i=0; until [ -b /dev/sda ]; do i=$((i+1)); [ $i -gt 600 ] && break; usleep 100000; done
echo "${p}-DISK $(cat /sys/block/sda/size 2>/dev/null) $(cat /sys/block/sda/device/vendor 2>/dev/null) $(cat /sys/block/sda/queue/max_hw_sectors_kb 2>/dev/null)"
mount -t ext4 /dev/sda /mnt; echo "${p}-MOUNT-RC $?"
echo "${p}-HELLO $(cat /mnt/hello.txt)"
echo "${p}-BIG $(sha256sum /mnt/big.bin | cut -d' ' -f1)"
dd if=/dev/urandom of=/tmp/new.bin bs=64k count=16 2>/dev/null
cp /tmp/new.bin /mnt/new.bin && sync
echo "${p}-WROTE $(sha256sum /tmp/new.bin | cut -d' ' -f1)"
umount /mnt; echo "${p}-UMOUNT-RC $?"
usbip port | sed 's/^/${p}-PORT /'
${DETACH_PORT_IN_USE}; echo "${p}-DETACH-RC $?"
`;
}
