#!/usr/bin/env bash
# End-to-end load run: a private Mosquitto on a free loopback port, the
# release `gateway run` with a UDP source and rules, and `firmware-sim load`
# at increasing rates. For each rate: records sent (load report) against the
# gateway's gateway_sightings_total{source="udp"} delta (the difference is
# what the kernel dropped from the socket's receive buffer, cross-checked
# with the drops column of /proc/net/udp), the gateway's CPU % and peak RSS
# (from /proc/PID/stat and /proc/PID/status), nudges reserved and acked.
#
# Usage: bench/e2e.sh [rates...]      (default: 2000 5000 10000 20000 50000)
# Env:   E2E_SECONDS (20), E2E_DEVICES (2000), E2E_STRANGERS (0.9),
#        E2E_OUT (bench/results/e2e-<time>.tsv), CARGO_TARGET_DIR,
#        E2E_PERF=<prefix> to `perf record` the gateway during each step.
# Loopback only; bounded (each step E2E_SECONDS + ~4 s); every process it
# starts is stopped on exit (trap EXIT), by pid.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
target="${CARGO_TARGET_DIR:-$root/target}"
gateway="$target/release/gateway"
sim="$target/release/firmware-sim"
seconds="${E2E_SECONDS:-20}"
devices="${E2E_DEVICES:-2000}"
strangers="${E2E_STRANGERS:-0.9}"
rates=("$@")
[ ${#rates[@]} -gt 0 ] || rates=(2000 5000 10000 20000 50000)
mkdir -p "$here/results"
out="${E2E_OUT:-$here/results/e2e-$(date -u +%Y%m%dT%H%M%SZ).tsv}"

# shellcheck source=bench/lib.sh
. "$here/lib.sh"
start_load_rig e2e "$gateway" "$sim"

# The load generator's enrolled shoppers, written by a 1 ms run to a port
# nobody listens on (same --devices/--strangers/--seed as the real runs).
dummy_port="$(free_port udp)"
"$sim" load --target "127.0.0.1:$dummy_port" --rate 1 --devices "$devices" \
    --strangers "$strangers" --duration 1ms --people "$work/people.jsonl" >/dev/null
import_people "$gateway" "$work/site.toml" "$work/people.jsonl" "$work/import.log"

start_gateway "$gateway" "$work/site.toml" "$work" "$admin_port" livez 200 0.1

metric() {
    curl -sf "http://127.0.0.1:$admin_port/metrics" | awk -v s="$1" '
        index($0, s) == 1 { v += $NF } END { printf "%d\n", v + 0 }'
}
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$gw/stat"; }
udp_drops() {
    # /proc/net/udp: local_address is hex ip:port; drops is the last column.
    local hexport
    hexport="$(printf '%04X' "$udp_port")"
    awk -v p=":$hexport" '$2 ~ p"$" { print $NF }' /proc/net/udp | head -1
}
hz="$(getconf CLK_TCK)"

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'); rmem_default $(cat /proc/sys/net/core/rmem_default)" | tee "$out.txt"
echo "people enrolled: $(wc -l <"$work/people.jsonl"), devices $devices, strangers $strangers, ${seconds}s per rate" | tee -a "$out.txt"
printf 'rate\tsent\tachieved_per_s\tmax_lag_ms\treceived\tlost\tlost_pct\tkernel_drops\tcpu_pct\trss_start_mb\trss_peak_mb\treserved\tacked\tload_1m\n' | tee "$out"
# Highest rate of the unbroken run of good steps from the first.
sustained=0
lossless=0
prev=0
for rate in "${rates[@]}"; do
    s0="$(metric 'gateway_sightings_total{source="udp"}')"
    r0="$(metric 'gateway_nudges_reserved_total')"
    a0="$(metric 'gateway_nudges_acked_total')"
    d0="$(udp_drops)"; d0="${d0:-0}"
    c0="$(cpu_ticks)"; t0="$(date +%s.%N)"
    rss0="$(rss_kb "$gw")"
    peak="$rss0"
    "$sim" load --target "127.0.0.1:$udp_port" --rate "$rate" --devices "$devices" \
        --strangers "$strangers" --duration "${seconds}s" --json >"$work/load-$rate.json" &
    lp=$!
    bench_pids+=($lp)
    if [ -n "${E2E_PERF:-}" ]; then
        # Profile the gateway process during this step (E2E_PERF=file prefix).
        perf record -F 499 -g -p "$gw" -o "${E2E_PERF}-$rate.data" -- sleep "$seconds" >/dev/null 2>&1 &
        bench_pids+=($!)
    fi
    while kill -0 "$lp" 2>/dev/null; do
        r="$(rss_kb "$gw")"; [ "$r" -gt "$peak" ] && peak="$r"
        sleep 0.5
    done
    wait "$lp" || true
    sleep 2   # let the gateway drain its channel
    c1="$(cpu_ticks)"; t1="$(date +%s.%N)"
    r="$(rss_kb "$gw")"; [ "$r" -gt "$peak" ] && peak="$r"
    s1="$(metric 'gateway_sightings_total{source="udp"}')"
    r1="$(metric 'gateway_nudges_reserved_total')"
    a1="$(metric 'gateway_nudges_acked_total')"
    d1="$(udp_drops)"; d1="${d1:-0}"
    load1="$(cut -d' ' -f1 /proc/loadavg)"
    python3 - "$work/load-$rate.json" "$rate" "$s0" "$s1" "$d0" "$d1" "$c0" "$c1" "$t0" "$t1" "$hz" \
        "$rss0" "$peak" "$((r1 - r0))" "$((a1 - a0))" "$load1" "$seconds" >>"$out" <<'EOF'
import json, sys
(path, rate, s0, s1, d0, d1, c0, c1, t0, t1, hz, rss0, peak, res, ack, load1, secs) = sys.argv[1:]
rep = json.load(open(path))
sent = rep["records_sent"]
got = int(s1) - int(s0)
lost = sent - got
# CPU over the sending window plus the 2 s drain, as a share of one core.
cpu = (int(c1) - int(c0)) / int(hz) / (float(t1) - float(t0)) * 100
print("\t".join(str(x) for x in [
    rate, sent, f'{rep["achieved_rate"]:.0f}', f'{rep["max_lag_ms"]:.1f}', got, lost,
    f"{100 * lost / max(sent, 1):.2f}", int(d1) - int(d0), f"{cpu:.0f}",
    f"{int(rss0) / 1024:.1f}", f"{int(peak) / 1024:.1f}", res, ack, load1]))
EOF
    tail -1 "$out"
    lost_pct="$(tail -1 "$out" | cut -f7)"
    achieved="$(tail -1 "$out" | cut -f3)"
    if [ "$sustained" = "$prev" ] && python3 -c "import sys; sys.exit(0 if float('$lost_pct') <= 0.1 and float('$achieved') >= 0.95 * $rate else 1)"; then
        sustained="$rate"
    fi
    if [ "$lossless" = "$prev" ] && [ "$(tail -1 "$out" | cut -f6)" = 0 ] && python3 -c "import sys; sys.exit(0 if float('$achieved') >= 0.95 * $rate else 1)"; then
        lossless="$rate"
    fi
    prev="$rate"
    kill -0 "$gw" 2>/dev/null || { echo "gateway died:" >&2; tail -20 "$work/gateway.err" >&2; exit 1; }
done
echo "sustained with nothing dropped: $lossless adverts/s; with <= 0.1 % dropped: $sustained adverts/s (sender within 5 % of target)" | tee -a "$out.txt"
echo "gateway warnings/errors logged: $(grep -c -E 'WARN|ERROR' "$work/gateway.err" || true)" | tee -a "$out.txt"
grep -E 'WARN|ERROR' "$work/gateway.err" | cut -c1-200 | sort | uniq -c | sort -rn | head -5 | tee -a "$out.txt" || true
# Sighting -> PUBACK, measured inside the gateway for every nudge it sent
# (the triggering sighting's arrival at the UDP socket to the broker's
# PUBACK), and decision -> durable: histograms over the whole run, in
# seconds; p50/p99/p999 estimated from the buckets as Prometheus'
# histogram_quantile does (linear within a bucket, so no finer than the
# buckets: 0.5, 1, 1.5, 2, 3, 5, 7.5, 10 ms ...).
echo "latency over the run (seconds; p50 / p99 / p999 from the histogram buckets):" | tee -a "$out.txt"
curl -sf "http://127.0.0.1:$admin_port/metrics" >"$work/metrics-final.txt" || true
for h in sighting_to_puback decision_durable; do
    awk -v name="gateway_${h}_seconds" '
        index($0, name "_bucket{le=\"") == 1 {
            le = substr($0, length(name "_bucket{le=\"") + 1); sub(/".*/, "", le)
            n++; bound[n] = (le == "+Inf") ? "inf" : le + 0; cum[n] = $NF + 0
        }
        index($0, name "_count ") == 1 { count = $NF }
        index($0, name "_sum ") == 1 { sum = $NF }
        function q(p,   rank, i, lo, below) {
            rank = p * cum[n]; lo = 0; below = 0
            for (i = 1; i <= n; i++) {
                if (cum[i] >= rank) {
                    if (bound[i] == "inf") return lo
                    return lo + (bound[i] - lo) * ((cum[i] > below) ? (rank - below) / (cum[i] - below) : 1)
                }
                lo = bound[i]; below = cum[i]
            }
            return lo
        }
        END {
            if (n == 0 || cum[n] == 0) { printf "%s: no observations\n", name; exit }
            printf "%s: count %d, mean %.6f, p50 %.6f, p99 %.6f, p999 %.6f\n",
                name, count, sum / count, q(0.5), q(0.99), q(0.999)
        }' "$work/metrics-final.txt" | tee -a "$out.txt"
done
echo "results: $out"
