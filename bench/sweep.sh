#!/usr/bin/env bash
# The retention sweep over a month-old store, on the real daemon, measured
# from outside and inside (issue #21's open question).
#
# 1. N people imported with `gateway people import` (as bench/footprint.sh;
#    SHOPPERS of them the load generator's shoppers).
# 2. The store aged by `gateway/examples/month_old_store.rs`, through the
#    store's own API: PER_DAY decisions a day for DAYS days up to now,
#    10 % of the sent ones answered (feedback), ERASED people forgotten at
#    moments over those days (tombstones). With the default 30-day
#    retention and DAYS 60, about half is older than the window.
# 3. `gateway run` with `[retention] sweep_every_s = 60` (its minimum; the
#    first sweep comes 60 s of event time after the start), then SHOPPERS
#    enrolled shoppers arriving evenly over ARRIVE seconds from IDLE
#    seconds after the gateway is ready (`firmware-sim
#    load --strangers 0`, RATE adverts/s once all are there): each dwells
#    10 s and is decided on once, so decisions come at a steady pace across
#    several sweeps.
#
# Sampled: /proc/<pid>/status (VmRSS, VmHWM, RssAnon, RssFile; outside),
# /proc/<pid>/stat CPU and /proc/<pid>/io bytes read every 0.2 s; /metrics
# every 0.25 s (gateway_retention_sweep_seconds, the sweep's duration;
# gateway_memory_bytes, the in-process sum of the people's parts from
# capacities, NOT resident memory; sighting -> PUBACK and decision ->
# durable histograms). Reported per sweep: duration, entries removed,
# VmRSS before / peak during / 10 s after, CPU and bytes read during it,
# and decision latencies inside the sweeps' windows against outside.
#
# Usage: bench/sweep.sh [--people N] [--shoppers S] [--rate R] [--arrive A]
#                       [--idle I] [--days D] [--per-day K] [--erased E]
#                       [--retention-days W]
#        (defaults N 1000000, S 6000, R 3000, A 300, I 20, D 60, K 3000,
#        E 3000, W 30; --idle 130 leaves the first two sweeps, the catch-up
#        and one over a month, without shoppers)
#        Env: CARGO_TARGET_DIR, SWEEP_OUT (results prefix, default
#        bench/results/sweep-<time>: .txt, .tsv (per sweep), .proc.tsv.gz
#        (every 0.2 s), .scrapes.gz).
# Needs: cargo build --release --workspace --bins &&
#        cargo build --release -p gateway --example month_old_store
# Loopback only; bounded (import + ageing + I + A + 70 s); every process it
# starts is stopped on exit.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
target="${CARGO_TARGET_DIR:-$root/target}"
gateway="$target/release/gateway"
sim="$target/release/firmware-sim"
ager="$target/release/examples/month_old_store"
people=1000000
shoppers=6000
rate=3000
arrive=300
days=60
per_day=3000
erased=3000
retention_days=30
idle=20
usage="usage: bench/sweep.sh [--people N] [--shoppers S] [--rate R] [--arrive A] [--idle I] [--days D] [--per-day K] [--erased E] [--retention-days W]"
while [ $# -gt 0 ]; do
    case "$1" in
        --people) people="$2"; shift 2 ;;
        --shoppers) shoppers="$2"; shift 2 ;;
        --rate) rate="$2"; shift 2 ;;
        --arrive) arrive="$2"; shift 2 ;;
        --days) days="$2"; shift 2 ;;
        --idle) idle="$2"; shift 2 ;;
        --per-day) per_day="$2"; shift 2 ;;
        --erased) erased="$2"; shift 2 ;;
        --retention-days) retention_days="$2"; shift 2 ;;
        *) echo "$usage" >&2; exit 2 ;;
    esac
done
[ "$shoppers" -lt "$people" ] || { echo "--shoppers must be below --people" >&2; exit 2; }
[ -x "$ager" ] || { echo "missing $ager: cargo build --release -p gateway --example month_old_store" >&2; exit 2; }
mkdir -p "$here/results"
out="${SWEEP_OUT:-$here/results/sweep-$(date -u +%Y%m%dT%H%M%SZ)}"

# shellcheck source=bench/lib.sh
. "$here/lib.sh"
start_load_rig sweep "$gateway" "$sim"
commit="$(git -C "$root" rev-parse --short HEAD)$(git -C "$root" diff --quiet HEAD -- gateway firmware-sim bench || echo '+changes')"

write_people "$sim" "$work/people.jsonl" "$people" "$shoppers"
t0="$(date +%s.%N)"
import_people "$gateway" "$work/site.toml" "$work/people.jsonl" "$work/import.log"
import_s="$(python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$t0" "$(date +%s.%N)")"
rm -f "$work/people.jsonl"
echo "sweep: commit $commit; $(nproc) cores; ${people} imported in ${import_s} s (load $(cut -d' ' -f1 /proc/loadavg))" | tee "$out.txt"

# The made-up customer base is f-0 .. f-(N-S-1): the shoppers are left
# alone, so their caps are the load's.
/usr/bin/time -f "%e s, peak resident %M kB" -o "$work/age.time" \
    "$ager" --storage "$work/db" --people "$((people - shoppers))" --days "$days" \
    --per-day "$per_day" --erased "$erased" 2>&1 | tee -a "$out.txt"
echo "ageing: $(cat "$work/age.time") (load $(cut -d' ' -f1 /proc/loadavg)); store on disk $(du -sm "$work/db" | cut -f1) MB" | tee -a "$out.txt"

export GATEWAY__RETENTION__SWEEP_EVERY_S=60
export GATEWAY__RETENTION__DAYS="$retention_days"
t0="$(date +%s.%N)"
BENCH_GATEWAY_LOG="warn,rumqttc=error,gateway::daemon=info" \
    start_gateway "$gateway" "$work/site.toml" "$work" "$admin_port" readyz 1200 0.05
ready_s="$(python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$t0" "$(date +%s.%N)")"
echo "gateway ready $(date -u +%T) UTC, ${ready_s} s after its start (load $(cut -d' ' -f1 /proc/loadavg)), resident $(( $(rss_kb "$gw") / 1024 )) MB; [retention] days = $retention_days, sweep_every_s = 60" | tee -a "$out.txt"

# Every 0.2 s from outside: t, VmRSS, VmHWM, RssAnon, RssFile (kB), CPU
# ticks (utime + stime), bytes read from storage (/proc/<pid>/io), load.
(
    tck="$(getconf CLK_TCK)"
    while [ ! -e "$work/stop" ] && [ -e "/proc/$gw" ]; do
        awk -v t="$(date +%s.%N)" -v tck="$tck" -v load1="$(cut -d' ' -f1 /proc/loadavg)" '
            FILENAME ~ /status$/ && /^(VmRSS|VmHWM|RssAnon|RssFile):/ { v[$1] = $2 }
            FILENAME ~ /stat$/ { cpu = ($14 + $15) / tck }
            FILENAME ~ /io$/ && /^read_bytes:/ { rb = $2 }
            END { printf "%.3f\t%d\t%d\t%d\t%d\t%.2f\t%d\t%s\n", t, v["VmRSS:"], v["VmHWM:"], v["RssAnon:"], v["RssFile:"], cpu, rb, load1 }
        ' "/proc/$gw/status" "/proc/$gw/stat" "/proc/$gw/io" 2>/dev/null >>"$work/proc.tsv" || true
        sleep 0.2
    done
) &
bench_pids+=($!)
# /metrics every 0.25 s: "@ <unix s>" then the series used.
(
    while [ ! -e "$work/stop" ]; do
        t="$(date +%s.%N)"
        if curl -sf "http://127.0.0.1:$admin_port/metrics" >"$work/m.tmp"; then
            { echo "@ $t"
              grep -E '^gateway_(sighting_to_puback|decision_durable|retention_sweep|retention_swept|memory_bytes)' "$work/m.tmp" || true
            } >>"$work/scrapes.txt"
        fi
        sleep 0.25
    done
) &
bench_pids+=($!)

sleep "$idle"
"$sim" load --target "127.0.0.1:$udp_port" --rate "$rate" --devices "$shoppers" --strangers 0 \
    --arrive-over "${arrive}s" --duration "$((arrive + 30))s" --json >"$work/load.json"
sleep 40
touch "$work/stop"
sleep 1
echo "load: $shoppers enrolled shoppers arriving over ${arrive}s, $rate adverts/s once all are there, from $idle s after ready; $(cat "$work/load.json")" | tee -a "$out.txt"
sed 's/\x1b\[[0-9;]*m//g' "$work/gateway.err" | grep -E 'retention sweep|WARN|ERROR' | cut -c1-220 | tee -a "$out.txt" || true
cp "$work/proc.tsv" "$out.proc.tsv"
cp "$work/scrapes.txt" "$out.scrapes"
python3 "$here/sweep_report.py" "$out.proc.tsv" "$out.scrapes" "$out.tsv" | tee -a "$out.txt"
gzip -f "$out.proc.tsv" "$out.scrapes"
echo "results: $out.txt"
