#!/usr/bin/env bash
# Builds the kubevirt-rs container images without Docker, as ONE OCI image layout holding
#   kubevirt-rs:<VERSION>    entrypoint /usr/bin/kubevirt-rs       (virt-api, -controller, -handler)
#   virt-launcher:<VERSION>  entrypoint /usr/bin/kubevirt-launcher (the VMs' pods)
# Both are the same two layers: a Debian bookworm base (QEMU & co, built once with mmdebstrap
# and cached) and a top layer with the project's binaries.
#
# Usage: bash scripts/build-image.sh [--release] [--out DIR] [--bin-dir DIR]
#   --out DIR      layout directory (default: $CARGO_TARGET_DIR/oci/kubevirt-rs, target/ if unset)
#   --bin-dir DIR  take the binaries from DIR as they are (default: cargo build them)
# Env: DEBIAN_MIRROR (default http://deb.debian.org/debian), XDG_CACHE_HOME (base cache).
# Needs: cargo, mmdebstrap (first run only), tar, gzip, sha256sum, flock; strip if present.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
target="${CARGO_TARGET_DIR:-$root/target}"
profile=debug
out=""
bin_dir=""
while [ $# -gt 0 ]; do
  case "$1" in
    --release) profile=release ;;
    --out) [ $# -ge 2 ] || { echo "build-image: --out needs a directory" >&2; exit 2; }
      out="$2"; shift ;;
    --bin-dir) [ $# -ge 2 ] || { echo "build-image: --bin-dir needs a directory" >&2; exit 2; }
      bin_dir="$2"; shift ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "build-image: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
out="${out:-$target/oci/kubevirt-rs}"

die() { echo "build-image: $*" >&2; exit 1; }
for t in tar gzip sha256sum flock; do
  command -v "$t" >/dev/null || die "$t not found (scripts/install-host-deps.sh)"
done
if [ -e "$out" ] && [ ! -e "$out/oci-layout" ] && [ -n "$(ls -A "$out" 2>/dev/null)" ]; then
  die "$out exists, is not empty and is not an OCI layout; refusing to write into it"
fi

# The base layer's packages: what the components and the launcher execute at run time.
# QEMU and its firmware come from bookworm-backports, like on the host.
backport_pkgs=(qemu-system-x86 qemu-system-common qemu-system-data qemu-utils seabios)
plain_pkgs=(ovmf swtpm passt iproute2 nftables ca-certificates)
suite=bookworm
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
epoch=1700000000 # fixed mtime (clamp) for reproducible layers

# One temp dir for everything transient, removed on exit. --one-file-system: never descend
# into a mount an interrupted mmdebstrap may have left behind.
tmp="$(mktemp -d "${TMPDIR:-/tmp}/kubevirt-rs-image.XXXXXX")"
trap 'rm -rf --one-file-system "$tmp"' EXIT
trap 'exit 130' INT TERM # so that the EXIT trap runs

# ---- the base layer --------------------------------------------------------------------
# Writes an uncompressed rootfs tarball to $1. Its text is part of the cache key.
build_base() {
  local mode=root include
  [ "$(id -u)" -eq 0 ] || mode=unshare # non-root: needs uidmap and subuids
  include="$(printf '%s/bookworm-backports,' "${backport_pkgs[@]}")$(IFS=,; echo "${plain_pkgs[*]}")"
  # essential variant (no apt), no recommends (mmdebstrap's default), merged /usr without
  # the usrmerge package (it pulls in perl); no docs, man pages or translations.
  # shellcheck disable=SC2016 # the hooks' $1 is the chroot, expanded by mmdebstrap
  if ! SOURCE_DATE_EPOCH="$epoch" TMPDIR="$tmp" mmdebstrap --quiet --mode="$mode" \
    --variant=essential --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr --include="$include" \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/lintian/*' \
    --customize-hook='rm -rf "$1"/var/cache/debconf/*-old "$1"/var/lib/dpkg/*-old' \
    --customize-hook=': >"$1/etc/resolv.conf"; : >"$1/etc/hostname"' \
    "$suite" "$1" "deb $mirror $suite main" "deb $mirror $suite-backports main" \
    >"$tmp/mmdebstrap.log" 2>&1; then
    tail -n 30 "$tmp/mmdebstrap.log" >&2
    die "mmdebstrap ($mode mode) failed; log above"
  fi
  # Drop /dev's device nodes (keep the directory): container runtimes provide /dev.
  tar --delete --wildcards -f "$1" './dev/?*'
}

cache="${XDG_CACHE_HOME:-$HOME/.cache}/kubevirt-rs/image"
mkdir -p "$cache"
key="$( { declare -f build_base; echo "${backport_pkgs[*]} | ${plain_pkgs[*]} | $suite $mirror $epoch"; } |
  sha256sum | cut -c1-16)"
base="$cache/base-$key.tar.gz"
# Serialise runs: the first builds the base, the others wait and reuse it.
exec 9>"$cache/lock"
flock 9
if [ ! -s "$base" ] || [ ! -s "$base.diffid" ]; then
  command -v mmdebstrap >/dev/null ||
    die "mmdebstrap not found and no cached base at $base (scripts/install-host-deps.sh)"
  echo "build-image: building the base layer with mmdebstrap (takes a few minutes; cached as $base)" >&2
  build_base "$tmp/base.tar"
  sha256sum <"$tmp/base.tar" | cut -d' ' -f1 >"$tmp/base.diffid"
  gzip -n -6 <"$tmp/base.tar" >"$tmp/base.tar.gz"
  rm -f "$cache"/base-*.tar.gz "$cache"/base-*.tar.gz.diffid # older keys
  mv "$tmp/base.tar.gz" "$base"
  mv "$tmp/base.diffid" "$base.diffid" # written last: marks the entry complete
  rm -f "$tmp/base.tar"
fi

# ---- the binaries ----------------------------------------------------------------------
if [ -z "$bin_dir" ]; then
  cargo_flags=()
  [ "$profile" = release ] && cargo_flags+=(--release)
  (cd "$root" && "${CARGO:-cargo}" build -p kubevirt-rs -p kubevirt-launcher --bins "${cargo_flags[@]}") ||
    die "cargo build failed"
  bin_dir="$target/$profile"
fi
bins=(kubevirt-rs kubevirt-launcher virtctl)
for b in "${bins[@]}"; do
  [ -x "$bin_dir/$b" ] || die "missing binary $bin_dir/$b"
done
version="$("$bin_dir/kubevirt-rs" --version | awk '{print $2}')"
[[ "$version" =~ ^[0-9A-Za-z.+-]+$ ]] || die "unexpected version '$version' from kubevirt-rs --version"

# Top layer: /usr/bin/<binaries>, debug info stripped, deterministic tar (sorted names,
# fixed mtime, root-owned) so identical binaries give an identical digest.
install -d -m 0755 "$tmp/top/usr/bin"
for b in "${bins[@]}"; do
  install -m 0755 "$bin_dir/$b" "$tmp/top/usr/bin/$b"
  if command -v strip >/dev/null; then strip --strip-debug "$tmp/top/usr/bin/$b"; fi
done
tar -C "$tmp/top" --sort=name --format=gnu --mtime="@$epoch" --owner=0 --group=0 --numeric-owner \
  -cf "$tmp/top.tar" usr
# Debug builds favour speed (gzip -1 is ~3x faster, ~15 % larger); release builds size.
level=1
[ "$profile" = release ] && level=6
gzip -n "-$level" <"$tmp/top.tar" >"$tmp/top.tar.gz"

# ---- the layout ------------------------------------------------------------------------
blobs="$out/blobs/sha256"
mkdir -p "$blobs"
out="$(cd "$out" && pwd)" blobs="$out/blobs/sha256"
sha() { sha256sum "$1" | cut -d' ' -f1; }
size() { stat -c %s "$1"; }
# put FILE: stores FILE as a blob (hard link if possible); sets $digest and $bytes. (Globals,
# not output captured from a subshell: set -e must see every failure.)
put() {
  digest="sha256:$(sha "$1")"
  bytes="$(size "$1")"
  [ -e "$blobs/${digest#sha256:}" ] || ln "$1" "$blobs/${digest#sha256:}" 2>/dev/null ||
    cp "$1" "$blobs/${digest#sha256:}"
  keep+=" ${digest#sha256:} "
}
keep=" "
put "$base"
base_digest="$digest" base_size="$bytes"
put "$tmp/top.tar.gz"
top_digest="$digest" top_size="$bytes"
base_diffid="sha256:$(cat "$base.diffid")"
top_diffid="sha256:$(sha "$tmp/top.tar")"
exec 9>&- # the base blob is in the layout: release the cache lock

source_label=""
src="$(git -C "$root" remote get-url origin 2>/dev/null || true)"
[ -n "$src" ] && source_label=",\"org.opencontainers.image.source\":\"$src\""
layer='{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"%s","size":%s}'
# shellcheck disable=SC2059 # the format is ours
layers="$(printf "$layer,$layer" "$base_digest" "$base_size" "$top_digest" "$top_size")"
# image NAME ENTRYPOINT: writes its config and manifest; sets $digest and $bytes (manifest).
image() {
  printf '{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"Entrypoint":["%s"],"Labels":{"org.opencontainers.image.title":"%s","org.opencontainers.image.version":"%s","org.opencontainers.image.licenses":"Apache-2.0"%s}},"rootfs":{"type":"layers","diff_ids":["%s","%s"]}}' \
    "$2" "$1" "$version" "$source_label" "$base_diffid" "$top_diffid" >"$tmp/$1.config.json"
  put "$tmp/$1.config.json"
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":%s},"layers":[%s]}' \
    "$digest" "$bytes" "$layers" >"$tmp/$1.manifest.json"
  put "$tmp/$1.manifest.json"
}
image kubevirt-rs /usr/bin/kubevirt-rs
app_digest="$digest" app_size="$bytes"
image virt-launcher /usr/bin/kubevirt-launcher
launcher_digest="$digest" launcher_size="$bytes"
entry='{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"%s","size":%s,"platform":{"architecture":"amd64","os":"linux"},"annotations":{"org.opencontainers.image.ref.name":"%s"}}'
# shellcheck disable=SC2059
printf "{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.index.v1+json\",\"manifests\":[$entry,$entry]}\n" \
  "$app_digest" "$app_size" "kubevirt-rs:$version" "$launcher_digest" "$launcher_size" "virt-launcher:$version" \
  >"$tmp/index.json"
echo '{"imageLayoutVersion":"1.0.0"}' >"$out/oci-layout"
mv "$tmp/index.json" "$out/index.json"

# Drop blobs of earlier builds that this index no longer references.
for f in "$blobs"/*; do
  [[ "$keep" == *" $(basename "$f") "* ]] || rm -f "$f"
done

mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }
cat <<EOF
OCI layout: $out
  kubevirt-rs:$version    $app_digest
  virt-launcher:$version  $launcher_digest
  base layer $(mib "$base_size") compressed ($base_digest), top layer $(mib "$top_size") compressed ($profile binaries)
Push to a registry:
  skopeo copy oci:$out:kubevirt-rs:$version docker://REGISTRY/kubevirt-rs/kubevirt-rs:$version
  skopeo copy oci:$out:virt-launcher:$version docker://REGISTRY/kubevirt-rs/virt-launcher:$version
  (--dest-tls-verify=false for a plain-HTTP registry; then install with --image/--launcher-image)
Import into containerd (the names install uses by default):
  skopeo copy oci:$out:kubevirt-rs:$version docker-archive:kubevirt-rs.tar:docker.io/kubevirt-rs/kubevirt-rs:$version
  ctr -n k8s.io images import kubevirt-rs.tar   (likewise virt-launcher)
EOF
