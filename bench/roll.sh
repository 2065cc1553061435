#!/usr/bin/env bash
# The rotating-identifier roll on the real daemon, measured from outside,
# with N people enrolled (`gateway people import`, as bench/footprint.sh).
#
# Default mode (across a roll): waits until BEFORE seconds ahead of the
# next 600-s interval boundary (the roll starts there: identity/rotating.rs
# INTERVAL_S), then plays D enrolled shoppers (`firmware-sim load
# --strangers 0`) arriving evenly over ARRIVE seconds, each heard RATE/D
# times a second once arrived, for BEFORE + AFTER seconds: each reaches the
# site's dwell rule (10 s) and is decided on and nudged once, so decisions
# come at a steady pace through the boundary. /metrics is scraped every
# 0.25 s; from its histogram deltas it reports, inside the roll's window
# (from the boundary to the roll's end, widened to the scrapes around it)
# and outside it: sighting -> PUBACK (gateway_sighting_to_puback_seconds:
# from the triggering sighting's arrival in the gateway to the broker's
# PUBACK of its nudge) and decision -> durable
# (gateway_decision_durable_seconds), p50/p99 interpolated in their buckets
# as Prometheus' histogram_quantile, max as the upper bound of the highest
# bucket hit; and the roll itself (gateway_rotating_roll_seconds: first
# step to last; gateway_rotating_roll_longest_step_seconds). With
# --shoppers 0 nobody is heard: the roll of a quiet store, driven by the
# pipeline alone (no decisions to time).
#
# --soak MIN: memory of a long-running gateway. P present (heard once a
# second each) for MIN minutes, the retention sweep every SWEEP seconds
# ([retention] sweep_every_s); every minute VmRSS, VmHWM, RssAnon/RssFile
# (from /proc, outside) and gateway_memory_bytes (in-process, from
# capacities) into a TSV, with the rolls and sweeps done so far.
#
# Usage: bench/roll.sh [--people N] [--shoppers D] [--rate R] [--arrive S]
#                      [--before S] [--after S]
#        bench/roll.sh --soak MIN [--people N] [--present P] [--sweep-every S]
#        (defaults: N 1000000, D 12000, R 6000, ARRIVE 120, BEFORE 70,
#        AFTER 70; P 10000, SWEEP 900).
#        Env: CARGO_TARGET_DIR, ROLL_OUT (results prefix, default
#        bench/results/roll-<time>; .tsv and .txt are written, and across
#        a roll the raw scrapes, .scrapes).
# Loopback only; bounded (across a roll: the wait for the boundary, at
# most 10 min, + BEFORE + AFTER; soak: MIN + 2 min, + the import);
# every process it starts is stopped on exit.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
target="${CARGO_TARGET_DIR:-$root/target}"
gateway="$target/release/gateway"
sim="$target/release/firmware-sim"
people=1000000
shoppers=12000
rate=6000
arrive=120
before=70
after=70
soak=0
present=10000
sweep_every=900
usage="usage: bench/roll.sh [--people N] [--shoppers D] [--rate R] [--arrive S] [--before S] [--after S] | --soak MIN [--people N] [--present P] [--sweep-every S]"
while [ $# -gt 0 ]; do
    case "$1" in
        --people) people="$2"; shift 2 ;;
        --shoppers) shoppers="$2"; shift 2 ;;
        --rate) rate="$2"; shift 2 ;;
        --arrive) arrive="$2"; shift 2 ;;
        --before) before="$2"; shift 2 ;;
        --after) after="$2"; shift 2 ;;
        --soak) soak="$2"; shift 2 ;;
        --present) present="$2"; shift 2 ;;
        --sweep-every) sweep_every="$2"; shift 2 ;;
        *) echo "$usage" >&2; exit 2 ;;
    esac
done
enrolled_load=$([ "$soak" -gt 0 ] && echo "$present" || echo "$shoppers")
[ "$enrolled_load" -le "$people" ] || { echo "--shoppers/--present must not exceed --people" >&2; exit 2; }
[ "$soak" -gt 0 ] || [ "$shoppers" -eq 0 ] || [ "$arrive" -le $((before + after)) ] || { echo "--arrive must not exceed --before + --after" >&2; exit 2; }
mkdir -p "$here/results"
out="${ROLL_OUT:-$here/results/roll-$(date -u +%Y%m%dT%H%M%SZ)}"

# shellcheck source=bench/lib.sh
. "$here/lib.sh"
start_load_rig roll "$gateway" "$sim"
write_people "$sim" "$work/people.jsonl" "$people" "$enrolled_load"
t0="$(date +%s.%N)"
import_people "$gateway" "$work/site.toml" "$work/people.jsonl" "$work/import.log"
import_s="$(python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$t0" "$(date +%s.%N)")"
rm -f "$work/people.jsonl"

commit="$(git -C "$root" rev-parse --short HEAD)$(git -C "$root" diff --quiet HEAD -- gateway firmware-sim bench || echo '+changes')"
header="roll: commit $commit; $(nproc) cores; ${people} imported in ${import_s} s"

if [ "$soak" -gt 0 ]; then
    export GATEWAY__RETENTION__SWEEP_EVERY_S="$sweep_every"
    # The sweep's own log line ("retention sweep", info) counts the sweeps.
    BENCH_GATEWAY_LOG="warn,rumqttc=error,gateway::daemon=info" \
        start_gateway "$gateway" "$work/site.toml" "$work" "$admin_port" readyz 1200 0.05
    started="$(date +%s)"
    sample() {  # sample LABEL: one TSV line
        curl -sf "http://127.0.0.1:$admin_port/metrics" >"$work/m.txt" || : >"$work/m.txt"
        python3 - "$1" "$(( $(date +%s) - started ))" "$gw" "$(cut -d' ' -f1 /proc/loadavg)" \
            "$(grep -c 'retention sweep' "$work/gateway.err" || true)" "$work/m.txt" <<'PY' >>"$out.tsv"
import sys
label, t, pid, load1, sweeps, metrics = sys.argv[1:]
status = dict(l.split(":", 1) for l in open(f"/proc/{pid}/status") if ":" in l)
kb = lambda k: int(status[k].split()[0])
m = open(metrics).read().splitlines()
def val(prefix):
    return sum(float(l.rsplit(" ", 1)[1]) for l in m if l.startswith(prefix))
parts = {p: val(f'gateway_memory_bytes{{part="{p}"}}') for p in ("people", "rotating_ids", "vault_index")}
mb = lambda b: f"{b / 1048576:.1f}"
print("\t".join([label, t, mb(kb("VmRSS") * 1024), mb(kb("VmHWM") * 1024), mb(kb("RssAnon") * 1024),
    mb(kb("RssFile") * 1024), mb(sum(parts.values()))] + [mb(v) for v in parts.values()] +
    [str(int(val("gateway_rotating_roll_seconds_count"))), sweeps,
     str(int(val("gateway_people_present"))), str(int(val('gateway_sightings_total{source="udp"}'))), load1]))
PY
    }
    echo "$header; soak: ${present} present (1 advert/s each) for ${soak} min, retention sweep every ${sweep_every} s" | tee "$out.txt"
    printf 'when\tt_s\trss_mb\thwm_mb\trss_anon_mb\trss_file_mb\tgateway_memory_mb\tpeople_mb\trotating_ids_mb\tvault_index_mb\trolls\tsweeps\tpresent\tsightings\tload_1m\n' >"$out.tsv"
    sleep 10
    sample idle
    "$sim" load --target "127.0.0.1:$udp_port" --rate "$present" --devices "$present" \
        --strangers 0 --duration "${soak}m" --json >"$work/load.json" &
    lp=$!
    bench_pids+=($lp)
    for minute in $(seq "$soak"); do
        sleep 60
        kill -0 "$lp" 2>/dev/null || break
        sample "load+${minute}m"
    done
    wait "$lp" || true
    sleep 60
    sample "after"
    column -t -s $'\t' "$out.tsv" | tee -a "$out.txt"
    grep -E 'retention sweep|WARN|ERROR' "$work/gateway.err" | cut -c1-200 | tee -a "$out.txt" || true
    echo "rss/hwm/anon/file: /proc/<pid>/status of gateway run (outside); gateway_memory_mb: gateway_memory_bytes summed over its parts (in-process, from capacities); rolls: gateway_rotating_roll_seconds_count; sweeps: 'retention sweep' log lines; load: $(cat "$work/load.json")" | tee -a "$out.txt"
    echo "results: $out.tsv"
    exit 0
fi

# The roll's own log line (info, with its time) goes into the results.
BENCH_GATEWAY_LOG="${BENCH_GATEWAY_LOG:-warn,rumqttc=error,gateway::telemetry=info}" \
    start_gateway "$gateway" "$work/site.toml" "$work" "$admin_port" readyz 1200 0.05
now="$(date +%s)"
boundary=$(( (now + before + 5 + 599) / 600 * 600 ))
start_at=$((boundary - before))
echo "$header; waiting until $(date -u -d "@$start_at" +%T) UTC (boundary $(date -u -d "@$boundary" +%T))" | tee "$out.txt"
sleep $((start_at - $(date +%s)))

# /metrics every 0.25 s: "@ <unix s> <load 1m>" then the series used.
(
    while [ ! -e "$work/stop" ]; do
        t="$(date +%s.%N)"
        if curl -sf "http://127.0.0.1:$admin_port/metrics" >"$work/m.tmp"; then
            { echo "@ $t $(cut -d' ' -f1 /proc/loadavg)"
              grep -E '^gateway_(sighting_to_puback|decision_durable|rotating_roll)' "$work/m.tmp" || true
            } >>"$work/scrapes.txt"
        fi
        sleep 0.25
    done
) &
bench_pids+=($!)
c0="$(awk '{ print $14 + $15 }' "/proc/$gw/stat")"
if [ "$shoppers" -gt 0 ]; then
    "$sim" load --target "127.0.0.1:$udp_port" --rate "$rate" --devices "$shoppers" --strangers 0 \
        --arrive-over "${arrive}s" --duration "$((before + after))s" --json >"$work/load.json"
else
    # A quiet store: nobody heard, the roll driven by the pipeline alone.
    echo '{"quiet": true}' >"$work/load.json"
    sleep $((before + after))
fi
sleep 3
touch "$work/stop"
sleep 1
c1="$(awk '{ print $14 + $15 }' "/proc/$gw/stat")"
cpu_pct=$(( (c1 - c0) * 100 / $(getconf CLK_TCK) / (before + after + 4) ))
echo "load: $shoppers enrolled shoppers arriving over ${arrive}s, $rate adverts/s when all have arrived, from $((before)) s before the boundary to $after s after; gateway CPU ${cpu_pct} % of a core over it; $(cat "$work/load.json")" | tee -a "$out.txt"
cp "$work/scrapes.txt" "$out.scrapes"
python3 "$here/roll_report.py" "$out.scrapes" "$boundary" "$out.tsv" | tee -a "$out.txt"
grep 'rotating identifiers rolled' "$work/gateway.err" | cut -c1-240 | tee -a "$out.txt" || true
errors="$(grep -c -E 'WARN|ERROR' "$work/gateway.err" || true)"
[ "$errors" = 0 ] || { echo "gateway warnings/errors logged: $errors" | tee -a "$out.txt"; grep -E 'WARN|ERROR' "$work/gateway.err" | cut -c1-200 | sort | uniq -c | sort -rn | head -5 | tee -a "$out.txt"; }
echo "results: $out.txt"
