#!/usr/bin/env bash
# Builds the web console (web/ -> web/dist, which the kubevirt-console crate embeds) with
# the machine's Node.js and npm; the npm packages are those web/package-lock.json pins.
# Skipped when web/dist was built from the same inputs.
set -euo pipefail
cd "$(dirname "$0")/../web"

command -v npm >/dev/null || { echo "build-web: npm (Node.js 20) is needed" >&2; exit 1; }
inputs=$(find package.json package-lock.json build.mjs tsconfig.json src -type f -print0 |
  sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1)
stamp=node_modules/.kubevirt-rs-dist-inputs
if [ -f dist/index.html ] && [ "$(cat "$stamp" 2>/dev/null)" = "$inputs" ]; then
  echo "build-web: web/dist is up to date"
  exit 0
fi
echo "build-web: installing npm packages and building web/dist"
npm ci --no-audit --no-fund --loglevel=error
npm run build
echo "$inputs" >"$stamp"
