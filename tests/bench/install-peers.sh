#!/bin/sh
# Installs the fan-out bench's peers beside Mosquitto (tests/bench/fanout.rs runs each one
# that is installed and says which it skipped):
#   Node-RED 4 (npm, pinned by tests/bench/peers/package-lock.json) -> tests/bench/peers/node_modules
#   rumqttd (crates.io)                                               -> target/peers/bin/rumqttd
# Run from anywhere; needs node 20, npm and cargo. Loopback-only at run time.
set -eu
root=$(cd "$(dirname "$0")/../.." && pwd)
peers="$root/tests/bench/peers"
if [ -f "$peers/package-lock.json" ]; then
    npm ci --prefix "$peers" --no-audit --no-fund
else
    npm install --prefix "$peers" --no-audit --no-fund
fi
# Not --locked: its lockfile pins metrics 0.22.1, which no longer builds on current rustc.
cargo install rumqttd --version "${RUMQTTD_VERSION:-0.20.0}" --root "$root/target/peers"
