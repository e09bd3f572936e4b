#!/usr/bin/env bash
# Demo: install the host packages, build the release binaries and the test guest, start
# `kubevirt-rs server`, apply examples/demo-vm.yaml with kubectl, wait for Running and show
# the guest's console through `virtctl console`. The server is started with
# --stop-vms-on-exit, so exiting the demo stops the VM. Run as root (QEMU, network
# namespaces). Usage: scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
demo=/tmp/kubevirt-rs-demo
data=$demo/data

echo "== installing host packages (QEMU, OVMF, swtpm, passt, ...)"
bash scripts/install-host-deps.sh

# DEMO_PROFILE=dev uses debug builds (faster to build, slower to run).
profile=${DEMO_PROFILE:-release}
echo "== building the web console (npm)"
bash scripts/build-web.sh
echo "== building $profile binaries (kubevirt-rs, kubevirt-launcher, virtctl)"
cargo build --profile "$profile" -p kubevirt-rs -p kubevirt-launcher
bin=${CARGO_TARGET_DIR:-$repo/target}/$([ "$profile" = dev ] && echo debug || echo "$profile")
echo "== building the test guest"
bash scripts/build-guests.sh
guests=${KUBEVIRT_RS_GUESTS:-$repo/.cache/guests}

# Every demo starts from an empty store, so what it shows is what a first run does.
rm -rf "$data"
mkdir -p "$data"
mkdir -p "$demo/disks"
cp "$guests/disk.raw" "$demo/disks/demo-disk.img"

echo "== starting kubevirt-rs server (data in $data)"
"$bin/kubevirt-rs" server --data-dir "$data" --listen 127.0.0.1:0 --stop-vms-on-exit \
  --host-disk-dir "$demo/disks" \
  >"$demo/server.out" 2>"$demo/server.log" &
server=$!
cleanup() {
  echo "== stopping the server (and, with --stop-vms-on-exit, the VM)"
  kill "$server" 2>/dev/null || true
  wait "$server" 2>/dev/null || true
}
trap cleanup EXIT
for _ in $(seq 1 100); do
  grep -q '^export KUBECONFIG=' "$demo/server.out" 2>/dev/null && break
  kill -0 "$server" 2>/dev/null || { cat "$demo/server.log"; exit 1; }
  sleep 0.2
done
cat "$demo/server.out"
export KUBECONFIG=$data/kubeconfig

echo "== kubectl apply -f examples/demo-vm.yaml"
kubectl apply -f examples/demo-vm.yaml
start=$(date +%s%N)
kubectl wait vm/demo --for=jsonpath='{.status.printableStatus}'=Running --timeout=180s
echo "VM Running $(( ($(date +%s%N) - start) / 1000000 )) ms after kubectl apply"
kubectl get vm,vmi,pods -o wide

echo "== virtctl console demo (non-interactive: wait for the guest, run a command)"
( sleep 8; printf 'echo "hello from $(uname -n): $(cat /proc/version | cut -c1-40)"\r'; sleep 4 ) |
  timeout 30 "$bin/virtctl" console demo || true
echo
echo "== virtctl guestosinfo demo"
for _ in $(seq 1 30); do
  "$bin/virtctl" guestosinfo demo 2>/dev/null && break
  sleep 2
done
echo "== kubectl describe vm demo (events)"
kubectl describe vm demo | sed -n '/^Events:/,$p'
echo "== kubectl logs of the VM's virt-launcher pod (last lines)"
kubectl logs -l vm.kubevirt.io/name=demo --tail 5

cat <<MSG

The VM is running. For an interactive console (escape with Ctrl+]):
  KUBECONFIG=$data/kubeconfig $bin/virtctl console demo
The web console: $(sed -n 's/^console: \([^ ]*\).*/\1/p' "$demo/server.out"), log in with the token
  $(sed -n 's/^admin=//p' "$data/tokens")
Press Enter here to stop the server and the VM.
MSG
if [ -t 0 ]; then read -r _; fi
