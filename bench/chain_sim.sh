#!/usr/bin/env bash
# The chain simulation at scale: tests/tests/chain_sim.rs with N stores
# (default 50), each a real release `gateway` on its own Mosquitto bridged
# to a central Mosquitto with the shipped deploy/chain files, shoppers
# visiting four stores each. Runs both tests REPS times and collects what
# they print: nudges delivered and held by the chain, entries sent and
# folded, how far past the chain's per_day a cut store let people go, and
# the convergence time after its uplink came back (from the restore to
# every store having folded every entry; dominated by the bridge's
# reconnect backoff, restart_timeout 2 60 with jitter). The tests' own
# assertions (no chain cap exceeded with links up; the excess bounded by
# the cut store's caps) hold at every N: a failed assertion fails the run.
#
# Usage: bench/chain_sim.sh [stores] [reps]     (default 50 3)
# Env:   CHAIN_SIM_SHOPPERS (default 2 * stores + 10), CHAIN_SIM_OUT
#        (bench/results/chain-sim-<time>.txt), CARGO_TARGET_DIR (for the
#        release gateway; the test itself is built in the debug profile).
# Loopback only; bounded (the tests' waits); the test harness stops every
# process it starts, also on failure.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
target="${CARGO_TARGET_DIR:-$root/target}"
stores="${1:-50}"
reps="${2:-3}"
shoppers="${CHAIN_SIM_SHOPPERS:-$((2 * stores + 10))}"
mkdir -p "$here/results"
out="${CHAIN_SIM_OUT:-$here/results/chain-sim-$(date -u +%Y%m%dT%H%M%SZ).txt}"
gateway="$target/release/gateway"
[ -x "$gateway" ] || { echo "missing $gateway: cargo build --release --workspace --bins" >&2; exit 2; }

cd "$root"
# The test binary in the debug profile (unaffected by CARGO_TARGET_DIR
# meant for the release gateway), gateways from the release build.
CARGO_TARGET_DIR="$root/target" cargo build -p e2e --test chain_sim 2>&1 | tail -1
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'); load before: $(cut -d' ' -f1-3 /proc/loadavg)" | tee "$out"
echo "chain_sim: $stores stores, $shoppers shoppers x 4 visits, $reps runs; release gateway $gateway" | tee -a "$out"
for rep in $(seq "$reps"); do
    started=$(date +%s)
    GATEWAY_BIN="$gateway" CHAIN_SIM_STORES="$stores" CHAIN_SIM_SHOPPERS="$shoppers" \
        CARGO_TARGET_DIR="$root/target" \
        timeout 1800 cargo test -q -p e2e --test chain_sim -- --nocapture --test-threads 1 2>&1 \
        | grep -E '[0-9]+ stores, |convergence after|test result|panicked|^Error' | sed "s/^/run $rep: /" | tee -a "$out"
    echo "run $rep: $(($(date +%s) - started)) s wall, load after: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$out"
done
echo "results: $out"
