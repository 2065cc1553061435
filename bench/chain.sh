#!/usr/bin/env bash
# Chain-wide caps under load, on one real store: the release `gateway run`
# with [caps.chain] and a UDP source, its own shoppers (`firmware-sim
# load`, as bench/e2e.sh) and, at the same time, the decisions of 1,000
# other stores of the chain (`firmware-sim chain-load`) arriving on its
# broker. For each chain rate (0 = the store alone, the baseline): a fresh
# gateway (own sled directory, people imported), both loads for S seconds,
# then from /metrics deltas: the store's sighting -> PUBACK p50/p99 while
# folding (target p99 < 5 ms), nudges sent and held by the chain caps, the
# fold rate (other stores' entries folded or found duplicate, per second;
# every outcome's count beside it), and the gateway's CPU and peak RSS.
#
# The chain entries name people p-100000 ... p-<100000 + CHAIN_PEOPLE - 1>
# hashed with the chain secret: the store's enrolled shoppers are the
# first of them (a shopper the chain load names may be held by the chain
# caps), the rest are the chain's customers this store never sees.
#
# Usage: bench/chain.sh [chain rates...]   (default: 0 100 1000 5000 entries/s)
# Env:   CHAIN_SECONDS (20), CHAIN_SIGHTINGS (2000 adverts/s), CHAIN_DEVICES
#        (2000), CHAIN_STRANGERS (0.5), CHAIN_STORES (1000), CHAIN_PEOPLE
#        (100000), CHAIN_OUT (bench/results/chain-<time>.tsv), CARGO_TARGET_DIR.
# Loopback only; bounded (each step CHAIN_SECONDS + ~10 s); every process
# it starts is stopped on exit (trap EXIT), by pid.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
target="${CARGO_TARGET_DIR:-$root/target}"
gateway="$target/release/gateway"
sim="$target/release/firmware-sim"
seconds="${CHAIN_SECONDS:-20}"
sightings="${CHAIN_SIGHTINGS:-2000}"
devices="${CHAIN_DEVICES:-2000}"
strangers="${CHAIN_STRANGERS:-0.5}"
stores="${CHAIN_STORES:-1000}"
chain_people="${CHAIN_PEOPLE:-100000}"
rates=("$@")
[ ${#rates[@]} -gt 0 ] || rates=(0 100 1000 5000)
mkdir -p "$here/results"
out="${CHAIN_OUT:-$here/results/chain-$(date -u +%Y%m%dT%H%M%SZ).tsv}"

# shellcheck source=bench/lib.sh
. "$here/lib.sh"
start_load_rig chain "$gateway" "$sim"

# The chain secret every store shares (deploy/chain/README.md).
python3 -c 'import secrets; print(secrets.token_hex(32))' >"$work/chain-secret"
chmod 600 "$work/chain-secret"
# The store's enrolled shoppers (a 1 ms run to a port nobody listens on,
# same --devices/--strangers/--seed as the real runs).
dummy_port="$(free_port udp)"
"$sim" load --target "127.0.0.1:$dummy_port" --rate 1 --devices "$devices" \
    --strangers "$strangers" --duration 1ms --people "$work/people.jsonl" >/dev/null

metrics() { curl -sf "http://127.0.0.1:$1/metrics"; }
# sum of the series starting with $2 in metrics file $1
metric() { awk -v s="$2" 'index($0, s) == 1 { v += $NF } END { printf "%d\n", v + 0 }' "$1"; }

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'); load before: $(cut -d' ' -f1-3 /proc/loadavg)" | tee "$out.txt"
echo "store: $(wc -l <"$work/people.jsonl") enrolled of $devices devices, $sightings adverts/s; chain: $stores other stores, $chain_people people; ${seconds}s per step; [caps.chain] per_day 2, per_week 5, min_gap_s 1800" | tee -a "$out.txt"
printf 'chain_rate\tchain_published\tchain_acked\tchain_achieved_per_s\tfolded_per_s\tin_by_outcome\tsightings_sent\tsightings_got\tnudges_acked\theld_chain\theld_other\tp50_ms\tp99_ms\tp999_ms\ttimed\tcpu_pct\trss_peak_mb\tload_1m\n' | tee "$out"

step=0
for rate in "${rates[@]}"; do
    step=$((step + 1))
    dir="$work/step-$step"
    mkdir -p "$dir"
    udp_port="$(free_port udp)"
    admin_port="$(free_port tcp)"
    write_load_site "$dir/site.toml" "$dir" "$broker_port" "$udp_port" "$admin_port"
    cat >>"$dir/site.toml" <<SITE

[caps.chain]
per_day = 2
per_week = 5
min_gap_s = 1800
day = "chain"
timezone = "Europe/Berlin"

[chain]
secret_file = "$work/chain-secret"
SITE
    import_people "$gateway" "$dir/site.toml" "$work/people.jsonl" "$dir/import.log"
    start_gateway "$gateway" "$dir/site.toml" "$dir" "$admin_port" readyz 200 0.1
    metrics "$admin_port" >"$dir/m0.txt"
    c0="$(awk '{ print $14 + $15 }' "/proc/$gw/stat")"; t0="$(date +%s.%N)"
    peak="$(rss_kb "$gw")"
    if [ "$rate" -gt 0 ]; then
        "$sim" chain-load --broker "127.0.0.1:$broker_port" --stores "$stores" --rate "$rate" \
            --duration "${seconds}s" --people "$chain_people" --secret-file "$work/chain-secret" \
            --json >"$dir/chain.json" &
        cp=$!
        bench_pids+=($cp)
    else
        echo '{"published": 0, "acked": 0, "achieved_rate": 0}' >"$dir/chain.json"
        cp=""
    fi
    "$sim" load --target "127.0.0.1:$udp_port" --rate "$sightings" --devices "$devices" \
        --strangers "$strangers" --duration "${seconds}s" --json >"$dir/load.json" &
    lp=$!
    bench_pids+=($lp)
    while kill -0 "$lp" 2>/dev/null; do
        r="$(rss_kb "$gw")"; [ "$r" -gt "$peak" ] && peak="$r"
        sleep 0.5
    done
    wait "$lp" || true
    [ -z "$cp" ] || wait "$cp" || { echo "chain-load failed (step $step)" >&2; exit 1; }
    sleep 2   # let the gateway drain its queues and deliver
    c1="$(awk '{ print $14 + $15 }' "/proc/$gw/stat")"; t1="$(date +%s.%N)"
    r="$(rss_kb "$gw")"; [ "$r" -gt "$peak" ] && peak="$r"
    metrics "$admin_port" >"$dir/m1.txt"
    load1="$(cut -d' ' -f1 /proc/loadavg)"
    BENCH_DIR="$here" python3 - "$dir" "$rate" "$c0" "$c1" "$t0" "$t1" "$(getconf CLK_TCK)" "$peak" "$load1" "$seconds" >>"$out" <<'EOF'
import json, os, re, sys
(d, rate, c0, c1, t0, t1, hz, peak, load1, secs) = sys.argv[1:]
sys.path.insert(0, os.environ["BENCH_DIR"])
import histogram
m0, m1 = (histogram.series(open(f"{d}/{m}.txt")) for m in ("m0", "m1"))
def delta(prefix, where=lambda name: True):
    return sum(v - m0.get(k, 0.0) for k, v in m1.items() if k.startswith(prefix) and where(k))
# Chain entries in, by outcome (labels as the gateway names them).
by_outcome = {}
for k, v in m1.items():
    if k.startswith("gateway_chain_entries_total{") and 'direction="in"' in k:
        o = re.search(r'outcome="([^"]*)"', k)
        by_outcome[o.group(1) if o else "?"] = int(v - m0.get(k, 0.0))
# Other stores' entries processed: folded, or recognised as a duplicate.
folded = by_outcome.get("folded", 0) + by_outcome.get("duplicate", 0)
held_chain = delta("gateway_nudges_held_total{", lambda k: 'reason="chain_' in k)
held_other = delta("gateway_nudges_held_total{", lambda k: 'reason="chain_' not in k)
# sighting -> PUBACK from the histogram's bucket deltas (bench/histogram.py).
buckets = histogram.between(m0, m1, "gateway_sighting_to_puback_seconds")
total = histogram.count(buckets)
def q(p):
    return histogram.quantile(buckets, p)
chain = json.load(open(f"{d}/chain.json"))
load = json.load(open(f"{d}/load.json"))
got = delta('gateway_sightings_total{source="udp"}')
cpu = (int(c1) - int(c0)) / int(hz) / (float(t1) - float(t0)) * 100
print("\t".join(str(x) for x in [
    rate, chain.get("published", 0), chain.get("acked", 0), f'{chain.get("achieved_rate", 0):.0f}',
    f"{folded / (float(t1) - float(t0)):.0f}", ",".join(f"{k}={v}" for k, v in sorted(by_outcome.items())) or "-",
    load["records_sent"], int(got), int(delta("gateway_nudges_acked_total")),
    int(held_chain), int(held_other),
    f"{q(0.5) * 1000:.2f}", f"{q(0.99) * 1000:.2f}", f"{q(0.999) * 1000:.2f}", int(total),
    f"{cpu:.0f}", f"{int(peak) / 1024:.1f}", load1]))
EOF
    tail -1 "$out"
    kill "$gw" 2>/dev/null || true
    wait "$gw" 2>/dev/null || true
    errors="$(grep -c -E 'WARN|ERROR' "$dir/gateway.err" || true)"
    if [ "$errors" != 0 ]; then
        echo "step $step: gateway warnings/errors logged: $errors" | tee -a "$out.txt"
        grep -E 'WARN|ERROR' "$dir/gateway.err" | cut -c1-200 | sort | uniq -c | sort -rn | head -5 | tee -a "$out.txt" || true
    fi
done
echo "p50/p99/p999: sighting -> PUBACK from gateway_sighting_to_puback_seconds bucket deltas (no finer than its buckets); folded_per_s: gateway_chain_entries_total{direction=\"in\",outcome=\"folded\"|\"duplicate\"} delta over the step (sending + 2 s drain)" | tee -a "$out.txt"
echo "results: $out"
