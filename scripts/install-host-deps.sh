#!/usr/bin/env bash
# Installs every Debian package kubevirt-rs needs on a fresh Debian 12 machine (run as root).
# Idempotent: packages already present are skipped quickly.
#
# QEMU comes from bookworm-backports so that it matches the qemu-utils 10.x the machine
# image ships (plain bookworm's qemu-system 7.2 would downgrade and remove it).
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
  echo "install-host-deps: run as root (apt-get is used)" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive

backports=/etc/apt/sources.list.d/kubevirt-rs-backports.sources
if ! grep -rqs "bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
  cat >"$backports" <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
fi

# Host tools: hypervisor and firmware, TPM, networking, image and ISO tools, an OCI registry,
# etcd for the cluster-mode tests' real Kubernetes control plane (scripts/build-k8s.sh),
# mmdebstrap for the container images' Debian base layer (scripts/build-image.sh),
# prometheus for promtool (checks monitoring/) and a real Prometheus for the metrics tests,
# dropbear-bin and openssh-sftp-server for the test guest's SSH server (scp speaks SFTP),
# openssh-client for `virtctl ssh`/`scp`, gcc and libc6-dev for the guest's small UDP server,
# chromium (and a font) for the web console's browser test (driven by playwright-core).
backport_pkgs=(qemu-system-x86 qemu-system-common qemu-system-data qemu-guest-agent seabios qemu-utils)
plain_pkgs=(ovmf swtpm swtpm-tools passt busybox-static xorriso isolinux syslinux-common genisoimage
  socat docker-registry skopeo iproute2 iptables nftables cpio zstd e2fsprogs dosfstools
  dnsmasq-base curl ca-certificates nginx-light xz-utils etcd-server mmdebstrap prometheus
  dropbear-bin openssh-sftp-server openssh-client gcc libc6-dev chromium fonts-dejavu-core)

missing=()
for p in "${backport_pkgs[@]}" "${plain_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ "${#missing[@]}" -gt 0 ]; then
  echo "install-host-deps: installing ${missing[*]}"
  apt-get update -qq
  bp=()
  pl=()
  for p in "${missing[@]}"; do
    if printf '%s\n' "${backport_pkgs[@]}" | grep -qx "$p"; then bp+=("$p"); else pl+=("$p"); fi
  done
  if [ "${#bp[@]}" -gt 0 ]; then
    apt-get install -y -qq --no-install-recommends -t bookworm-backports "${bp[@]}"
  fi
  if [ "${#pl[@]}" -gt 0 ]; then
    apt-get install -y -qq --no-install-recommends "${pl[@]}"
  fi
fi

# docker-registry's package starts a system service on :5000; tests run their own registry.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet docker-registry 2>/dev/null; then
  systemctl stop docker-registry || true
  systemctl disable docker-registry >/dev/null 2>&1 || true
fi

# etcd-server's package enables (and on a systemd host starts) a system etcd on :2379; the
# tests start their own etcd on free ports, so keep the system one stopped and disabled.
if command -v systemctl >/dev/null 2>&1; then
  if systemctl is-active --quiet etcd 2>/dev/null; then
    systemctl stop etcd || true
  fi
  if systemctl is-enabled --quiet etcd 2>/dev/null; then
    systemctl disable etcd >/dev/null 2>&1 || true
  fi
fi

# prometheus's package enables (and on a systemd host starts) a system Prometheus on :9090,
# and on a host without systemd its init script starts one; the tests run their own
# Prometheus on free ports, so keep the system one stopped and disabled either way. (The
# init script stops only the daemon named by its pidfile, never a test's Prometheus.)
if command -v systemctl >/dev/null 2>&1; then
  if systemctl is-active --quiet prometheus 2>/dev/null; then
    systemctl stop prometheus || true
  fi
  if systemctl is-enabled --quiet prometheus 2>/dev/null; then
    systemctl disable prometheus >/dev/null 2>&1 || true
  fi
fi
if [ ! -d /run/systemd/system ] && [ -x /etc/init.d/prometheus ]; then
  /etc/init.d/prometheus stop >/dev/null 2>&1 || true
  update-rc.d prometheus disable >/dev/null 2>&1 || true
fi

echo "install-host-deps: ok ($(qemu-system-x86_64 --version | head -n1))"
