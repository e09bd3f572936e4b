#!/usr/bin/env bash
# Builds the Kubernetes control plane the cluster-mode tests run against, from Go modules
# (no Debian, PyPI or npm package ships kube-apiserver):
#   kube-apiserver  kube-controller-manager  kube-scheduler
# at the k8s.io/kubernetes version pinned in scripts/k8s/go.mod (staging modules replaced
# with their matching v0.Y.Z releases there). etcd is Debian's etcd-server package
# (scripts/install-host-deps.sh). The test fixture is kubevirt_testenv::KubeCluster.
#
# Usage: scripts/build-k8s.sh [OUT_DIR]
#   default OUT_DIR: ${KUBEVIRT_RS_K8S:-${XDG_CACHE_HOME:-$HOME/.cache}/kubevirt-rs/k8s}
# Outside the clone on purpose: a first build takes ~15 minutes on 2 cores (and fills the Go
# build cache with ~3 GB), so every clone and worktree on the machine shares the result.
# A stamp file records the inputs (go.mod, go.sum, this script, the Go version); a second
# run with the same inputs returns at once. Binaries are replaced atomically.
#
# Go: the machine's Go 1.26 with GOTOOLCHAIN=local. Go 1.27 is refused: a 1.27 build of
# kube-apiserver 1.36 serves an /openapi/v2 document kubectl rejects.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
mod_dir="$repo/scripts/k8s"
out=${1:-${KUBEVIRT_RS_K8S:-${XDG_CACHE_HOME:-$HOME/.cache}/kubevirt-rs/k8s}}
components=(kube-apiserver kube-controller-manager kube-scheduler)

log() { echo "build-k8s: $*"; }
die() {
  echo "build-k8s: $*" >&2
  exit 1
}

export GOTOOLCHAIN=local
command -v go >/dev/null || die "go not found (Go 1.26 is needed)"
go_version=$(go env GOVERSION)
case "$go_version" in
  go1.26 | go1.26.*) ;;
  *) die "need Go 1.26 (found $go_version; Go 1.27 builds a kube-apiserver whose /openapi/v2 kubectl rejects)" ;;
esac

# Read from the text (no module graph loading: an up-to-date run needs neither network
# nor module cache).
k8s_version=$(awk '($1 == "k8s.io/kubernetes" && $2 ~ /^v/) { print $2; exit }
  ($1 == "require" && $2 == "k8s.io/kubernetes") { print $3; exit }' "$mod_dir/go.mod")
[ -n "$k8s_version" ] || die "no k8s.io/kubernetes requirement in $mod_dir/go.mod"

mkdir -p "$out"
out=$(cd "$out" && pwd)
inputs_hash=$( (
  cat "$mod_dir/go.mod" "$mod_dir/go.sum" "$repo/scripts/build-k8s.sh"
  echo "$go_version $(go env GOOS GOARCH)"
) | sha256sum | cut -c1-16)
stamp="$out/.stamp"
want="$k8s_version $go_version $inputs_hash"

up_to_date() {
  [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] || return 1
  local c
  for c in "${components[@]}"; do
    [ -x "$out/$c" ] || return 1
  done
}

if up_to_date; then
  log "up to date in $out ($k8s_version)"
  exit 0
fi

# One build at a time per output directory (parallel test runs, two clones).
exec 9>"$out/.lock"
if ! flock -n 9; then
  log "another build is running in $out; waiting for it"
  flock 9
fi
if up_to_date; then
  log "up to date in $out ($k8s_version, built by another run)"
  exit 0
fi

log "building Kubernetes $k8s_version (${components[*]}) with $go_version into $out"
log "a first build takes ~15 minutes on 2 cores; later ones reuse the Go build cache"

# Same version stamping as upstream's release builds, so /version reports the real version.
pkgs=(k8s.io/component-base/version k8s.io/client-go/pkg/version)
major=${k8s_version#v}
major=${major%%.*}
minor=${k8s_version#v*.}
minor=${minor%%.*}
ldflags="-s -w"
for p in "${pkgs[@]}"; do
  ldflags+=" -X $p.gitVersion=$k8s_version -X $p.gitMajor=$major -X $p.gitMinor=$minor"
  ldflags+=" -X $p.gitTreeState=clean"
done

tmp=$(mktemp -d "$out/.build.XXXXXX")
ticker=
cleanup() {
  [ -z "$ticker" ] || kill "$ticker" 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT

log "downloading modules"
(cd "$mod_dir" && go mod download) 9>&-

start=$SECONDS
for c in "${components[@]}"; do
  t0=$SECONDS
  log "building $c"
  # A line a minute, so a long first build does not look hung (without the lock's fd: a
  # leftover sleep must not hold the lock).
  (
    s=
    trap '[ -z "$s" ] || kill "$s" 2>/dev/null; exit 0' TERM
    while :; do
      sleep 60 &
      s=$!
      wait "$s"
      log "  still building $c ($((SECONDS - t0)) s)"
    done
  ) 9>&- &
  ticker=$!
  (
    cd "$mod_dir"
    CGO_ENABLED=0 GOFLAGS="-mod=readonly -buildvcs=false" \
      go build -trimpath -ldflags="$ldflags" -o "$tmp/$c" "k8s.io/kubernetes/cmd/$c"
  ) 9>&-
  kill "$ticker" 2>/dev/null || true
  wait "$ticker" 2>/dev/null || true
  ticker=
  log "built $c in $((SECONDS - t0)) s ($(du -h "$tmp/$c" | cut -f1))"
done

# Check what was built before installing it.
for c in "${components[@]}"; do
  v=$("$tmp/$c" --version 2>&1) || die "$c --version failed: $v"
  case "$v" in
    *"$k8s_version"*) ;;
    *) die "$c reports '$v', expected $k8s_version" ;;
  esac
done

for c in "${components[@]}"; do
  mv -f "$tmp/$c" "$out/$c"
done
echo "$want" >"$tmp/stamp"
mv -f "$tmp/stamp" "$stamp"
log "done in $((SECONDS - start)) s: $out"
