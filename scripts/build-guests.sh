#!/usr/bin/env bash
# Builds the small guests the tests and the demo boot, from Debian packages only:
#   vmlinuz            Debian's bzImage (boots through SeaBIOS/OVMF loaders and -kernel)
#   vmlinux            the same kernel uncompressed (PVH entry: fastest -kernel boot under TCG)
#   initramfs.cpio.gz  busybox-static + the few modules a VM needs + qemu-guest-agent + dropbear
#                      + udp-echo (a UDP server for tests; busybox's nc has no UDP)
#   boot.iso           hybrid isolinux ISO: boots as a CD-ROM and as a disk
#   disk.qcow2/raw     the same bootable image as a disk
#   containerdisk-oci/ an OCI image layout holding disk/disk.qcow2 (KubeVirt containerDisk layout)
#
# Usage: scripts/build-guests.sh [OUT_DIR]   (default: .cache/guests in the repository)
# The output is cached: a stamp file records the inputs; a second run returns at once.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-${KUBEVIRT_RS_GUESTS:-$repo/.cache/guests}}
guest_src="$repo/guests"
mkdir -p "$out"
out=$(cd "$out" && pwd)

kernel_pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
if [ -z "$kernel_pkg" ]; then
  apt-get update -qq
  kernel_pkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
fi
inputs_hash=$(cat "$0" "$guest_src"/* /bin/busybox /usr/sbin/qemu-ga /usr/sbin/dropbear \
  /usr/lib/openssh/sftp-server 2>/dev/null | sha256sum | cut -c1-16)
stamp="$out/.stamp-$kernel_pkg-$inputs_hash"
if [ -f "$stamp" ]; then
  echo "build-guests: up to date in $out"
  exit 0
fi

for tool in xorriso qemu-img cpio gzip busybox qemu-ga dropbear python3 gcc; do
  command -v "$tool" >/dev/null || [ -x "/usr/sbin/$tool" ] || {
    echo "build-guests: missing $tool; run scripts/install-host-deps.sh" >&2
    exit 1
  }
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"

echo "build-guests: fetching $kernel_pkg"
apt-get download "$kernel_pkg" >/dev/null 2>&1 || { apt-get update -qq && apt-get download "$kernel_pkg" >/dev/null; }
dpkg -x ./*.deb kroot
kver=$(ls kroot/lib/modules)
cp "kroot/boot/vmlinuz-$kver" vmlinuz

# Uncompressed kernel for the PVH entry point: find the xz stream inside the bzImage.
python3 - vmlinuz vmlinux <<'PY'
import lzma, sys
data = open(sys.argv[1], "rb").read()
off = data.find(b"\xfd7zXZ\x00")
if off < 0:
    sys.exit("no xz stream in bzImage")
d = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
elf = d.decompress(data[off:])
if elf[:4] != b"\x7fELF":
    sys.exit("decompressed kernel is not ELF")
open(sys.argv[2], "wb").write(elf)
PY

# Root filesystem of the initramfs.
root=rootfs
mkdir -p $root/{bin,sbin,usr/bin,usr/sbin,etc,proc,sys,dev,run,tmp,mnt,var/run,var/log,lib/modules,root}
cp /bin/busybox $root/bin/busybox
for applet in $(/bin/busybox --list); do
  case "$applet" in busybox) continue ;; esac
  ln -sf /bin/busybox "$root/bin/$applet"
done

# Modules: the closure of what a VM's devices need (Debian builds them as modules).
wanted="virtio_pci virtio_blk virtio_net virtio_console virtio_scsi virtio_rng virtio_balloon sd_mod sr_mod
  isofs ahci ata_piix button evdev vfat nls_utf8 nls_cp437 nls_iso8859_1"
busybox depmod -b kroot "$kver"
moddir="kroot/lib/modules/$kver"
python3 - "$moddir" "$root/lib/modules/$kver" $wanted <<'PY'
import os, shutil, sys
moddir, dest, wanted = sys.argv[1], sys.argv[2], sys.argv[3:]
deps = {}
for line in open(os.path.join(moddir, "modules.dep")):
    path, _, rest = line.partition(":")
    deps[os.path.basename(path)[:-3].replace("-", "_")] = (path, rest.split())
by_path = {p: n for n, (p, _) in deps.items()}
need, stack = set(), list(wanted)
builtin = {os.path.basename(l.strip())[:-3].replace("-", "_") for l in open(os.path.join(moddir, "modules.builtin"))}
while stack:
    name = stack.pop()
    if name in need or name in builtin:
        continue
    if name not in deps:
        sys.exit(f"module {name} not found")
    need.add(name)
    stack.extend(by_path[d] for d in deps[name][1])
for name in need:
    rel = deps[name][0]
    os.makedirs(os.path.join(dest, os.path.dirname(rel)), exist_ok=True)
    shutil.copy(os.path.join(moddir, rel), os.path.join(dest, rel))
for f in ("modules.order", "modules.builtin", "modules.builtin.modinfo"):
    shutil.copy(os.path.join(moddir, f), os.path.join(dest, f))
PY
busybox depmod -b $root "$kver"
echo "$wanted" | tr ' ' '\n' | sed '/^$/d' >$root/etc/modules

# qemu-guest-agent, dropbear (the SSH server `virtctl ssh` tests reach) and OpenSSH's
# sftp-server (what scp speaks to) at the path dropbear runs it from, with their shared
# libraries and the dynamic loader.
mkdir -p $root/usr/lib
cp /usr/lib/openssh/sftp-server $root/usr/lib/sftp-server
for bin in /usr/sbin/qemu-ga /usr/sbin/dropbear /usr/lib/openssh/sftp-server; do
  [ "$bin" = /usr/lib/openssh/sftp-server ] || cp "$bin" "$root$bin"
  for lib in $(ldd "$bin" | awk '/=>/ {print $3} /ld-linux/ {print $1}'); do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
  done
done
mkdir -p $root/etc/dropbear
mkdir -p $root/lib64
[ -e $root/lib64/ld-linux-x86-64.so.2 ] || cp -L /lib64/ld-linux-x86-64.so.2 $root/lib64/

cp "$guest_src/init" $root/init
cp "$guest_src/udhcpc.script" $root/etc/udhcpc.script
cp "$guest_src/shutdown" $root/sbin/shutdown
cp "$guest_src/chpasswd" $root/usr/sbin/chpasswd
gcc -static -Os -s -o $root/usr/bin/udp-echo "$guest_src/udp-echo.c"
mkdir -p $root/etc/acpi/PWRF
cp "$guest_src/power-button" $root/etc/acpi/PWRF/00000080
chmod +x $root/init $root/etc/udhcpc.script $root/sbin/shutdown $root/usr/sbin/chpasswd $root/etc/acpi/PWRF/00000080
cat >$root/etc/os-release <<EOF
NAME="kubevirt-rs test guest"
PRETTY_NAME="kubevirt-rs test guest (busybox, Linux $kver)"
ID=kubevirt-rs-guest
VERSION_ID="1"
VERSION="1"
EOF
echo "root:x:0:0:root:/root:/bin/sh" >$root/etc/passwd
echo "root:x:0:" >$root/etc/group
# No password until the guest agent sets one (accessCredentials userPassword).
echo "root:*:19000:0:99999:7:::" >$root/etc/shadow
chmod 600 $root/etc/shadow
echo "/bin/sh" >$root/etc/shells
chmod 700 $root/root

(cd $root && find . | cpio -o -H newc --quiet | gzip -6) >initramfs.cpio.gz

# Hybrid isolinux ISO: the same kernel and initramfs, bootable from CD-ROM or disk.
mkdir -p iso/isolinux iso/boot
cp /usr/lib/ISOLINUX/isolinux.bin iso/isolinux/
cp /usr/lib/syslinux/modules/bios/ldlinux.c32 iso/isolinux/
cp vmlinuz iso/boot/vmlinuz
cp initramfs.cpio.gz iso/boot/initrd.gz
cat >iso/isolinux/isolinux.cfg <<'EOF'
SERIAL 0 115200
DEFAULT guest
PROMPT 0
TIMEOUT 0
LABEL guest
  KERNEL /boot/vmlinuz
  APPEND initrd=/boot/initrd.gz console=ttyS0 quiet
EOF
xorriso -as mkisofs -quiet -o boot.iso -V KVRSBOOT \
  -isohybrid-mbr /usr/lib/ISOLINUX/isohdpfx.bin \
  -c isolinux/boot.cat -b isolinux/isolinux.bin -no-emul-boot -boot-load-size 4 -boot-info-table \
  iso
qemu-img convert -f raw -O qcow2 boot.iso disk.qcow2
cp boot.iso disk.raw

# containerDisk: an OCI image layout whose single layer holds disk/disk.qcow2 (owned by 107:107
# as KubeVirt's containerDisk images are).
oci=containerdisk-oci
mkdir -p layer/disk $oci/blobs/sha256
cp disk.qcow2 layer/disk/disk.qcow2
tar --owner=107 --group=107 --numeric-owner --mtime=@0 --sort=name -C layer -cf layer.tar disk
gzip -n -c layer.tar >layer.tar.gz
python3 - $oci layer.tar layer.tar.gz <<'PY'
import hashlib, json, os, shutil, sys
oci, tar, targz = sys.argv[1:4]
def blob(path=None, data=None):
    data = open(path, "rb").read() if data is None else data
    digest = hashlib.sha256(data).hexdigest()
    open(os.path.join(oci, "blobs", "sha256", digest), "wb").write(data)
    return "sha256:" + digest, len(data)
diff_id = "sha256:" + hashlib.sha256(open(tar, "rb").read()).hexdigest()
layer_digest, layer_size = blob(targz)
config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                     "rootfs": {"type": "layers", "diff_ids": [diff_id]}}, sort_keys=True).encode()
config_digest, config_size = blob(data=config)
manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size},
    "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer_digest, "size": layer_size}]},
    sort_keys=True).encode()
manifest_digest, manifest_size = blob(data=manifest)
json.dump({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
    "digest": manifest_digest, "size": manifest_size,
    "annotations": {"org.opencontainers.image.ref.name": "devel"}}]}, open(os.path.join(oci, "index.json"), "w"))
json.dump({"imageLayoutVersion": "1.0.0"}, open(os.path.join(oci, "oci-layout"), "w"))
PY

rm -rf "${out:?}"/* "$out"/.stamp-*
mv vmlinuz vmlinux initramfs.cpio.gz boot.iso disk.qcow2 disk.raw $oci "$out/"
echo "$kver" >"$out/kernel-version"
touch "$stamp"
echo "build-guests: built in $out (kernel $kver)"
