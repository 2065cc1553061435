#!/usr/bin/env bash
# The gateway's footprint measured from outside, on the real daemon: N
# people enrolled with `gateway people import` (its wall time and peak
# resident memory, from /usr/bin/time), then `gateway run` (time until
# /readyz answers 200, resident memory idle), then P of those people
# present, heard about once a second each over UDP for S seconds (resident
# memory at the end and the process's peak, VmHWM). Resident memory is
# VmRSS of the process as the kernel reports it: sled's page cache, the
# allocator's retained memory and the runtime included, which an
# in-process probe (the `memory` bench) does not see.
#
# Usage: bench/footprint.sh [--people N] [--present P] [--seconds S] [--import-only]
#        (defaults 100000, 10000, 30; --import-only stops after the import).
#        Env: CARGO_TARGET_DIR, FOOTPRINT_OUT
#        (a TSV line is appended there), FOOTPRINT_METRICS (the gateway's
#        /metrics at the end is written there, its /proc smaps beside it
#        with .smaps appended), GATEWAY_STORAGE_CACHE_MB (given
#        to the gateway as [storage] cache_mb when set).
#        Ablation knobs (BENCHMARKS.md §2a, "What the present shoppers add"):
#        FOOTPRINT_RULES=0 drops the site's rule (shoppers present, no
#        decision); FOOTPRINT_STRANGERS=S is the load's share of strangers
#        (default 0; with S > 0 the --present devices are heard, S of them
#        not enrolled); FOOTPRINT_RESTART=N starts the gateway once after
#        the import, leaves it idle N seconds, stops it and starts it again
#        before the load; FOOTPRINT_LATER_S=T reads VmRSS once more T s
#        after the first reading (default 0: not read). FOOTPRINT_SPLIT=FILE
#        appends, for idle, end of load and later, the smaps split (binary,
#        libraries, [heap], anonymous) to FILE; with FOOTPRINT_MALLOC_STATS=1
#        also glibc's malloc_stats() of the running gateway (through gdb,
#        which stops it for a moment): in use and held per arena.
# Loopback only; bounded; every process it starts is stopped on exit.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
target="${CARGO_TARGET_DIR:-$root/target}"
gateway="$target/release/gateway"
sim="$target/release/firmware-sim"
people=100000
present=10000
seconds=30
import_only=0
while [ $# -gt 0 ]; do
    case "$1" in
        --people) people="$2"; shift 2 ;;
        --present) present="$2"; shift 2 ;;
        --seconds) seconds="$2"; shift 2 ;;
        --import-only) import_only=1; shift ;;
        *) echo "usage: bench/footprint.sh [--people N] [--present P] [--seconds S] [--import-only]" >&2; exit 2 ;;
    esac
done
[ "$present" -le "$people" ] || { echo "--present must not exceed --people" >&2; exit 2; }
# shellcheck source=bench/lib.sh
. "$here/lib.sh"
start_load_rig footprint "$gateway" "$sim"
if [ "${FOOTPRINT_RULES:-1}" = 0 ]; then
    # Everything from the first [[rules]] table to the next section.
    python3 - "$work/site.toml" <<'PY'
import re, sys
path = sys.argv[1]
text = open(path).read()
text = re.sub(r"\[\[rules\]\]\n(?:[^\[].*\n|\n)*", "", text)
open(path, "w").write(text)
PY
fi
strangers="${FOOTPRINT_STRANGERS:-0}"
later_s="${FOOTPRINT_LATER_S:-0}"
# The resident split of a pid from its smaps, in MB: the binary's maps,
# other files (libraries), [heap], anonymous (other arenas, stacks, large
# blocks).
split_mb() {
    awk -v bin="$gateway" '
        /^[0-9a-f]+-[0-9a-f]+ / { name = $6; kind = (name == "") ? "anon" : (name == "[heap]") ? "heap" : (name == bin) ? "bin" : (substr(name, 1, 1) == "[") ? "anon" : "lib" }
        /^Rss:/ { r[kind] += $2 }
        END { printf "bin %.1f lib %.1f heap %.1f anon %.1f", r["bin"]/1024, r["lib"]/1024, r["heap"]/1024, r["anon"]/1024 }' "/proc/$1/smaps"
}
split_note() {
    [ -z "${FOOTPRINT_SPLIT:-}" ] || echo "$1 rss $(rss_kb "$gw") kB; $(split_mb "$gw")" >>"$FOOTPRINT_SPLIT"
    if [ -n "${FOOTPRINT_SPLIT:-}" ] && [ "${FOOTPRINT_MALLOC_STATS:-0}" = 1 ]; then
        local before
        before="$(wc -l <"$work/gateway.err")"
        gdb -batch -nx --readnever -p "$gw" -ex 'call (void)malloc_stats()' >/dev/null 2>&1 || true
        sleep 0.2
        tail -n +"$((before + 1))" "$work/gateway.err" | grep -E "^(Arena|system bytes|in use bytes|Total)" \
            | paste -sd' ' | sed "s/^/$1 malloc_stats: /" >>"$FOOTPRINT_SPLIT"
    fi
}
# [storage] cache_mb through the config's environment layer.
[ -z "${GATEWAY_STORAGE_CACHE_MB:-}" ] || export GATEWAY__STORAGE__CACHE_MB="$GATEWAY_STORAGE_CACHE_MB"

# The present shoppers are the load generator's own (same seed as the run
# below); the rest of the customer base is made up, deterministically.
write_people "$sim" "$work/people.jsonl" "$people" "$present"

/usr/bin/time -f "%e %M" -o "$work/import.time" \
    env GATEWAY_LOG=warn "$gateway" --config "$work/site.toml" people import "$work/people.jsonl" \
    >"$work/import.log" 2>&1 || { cat "$work/import.log" >&2; exit 1; }
read -r import_s import_peak_kb <"$work/import.time"
if [ "$import_only" = 1 ]; then
    echo "footprint: ${people} imported; commit $(git -C "$root" rev-parse --short HEAD); load $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "  import:  ${import_s} s, peak resident $(awk -v k="$import_peak_kb" 'BEGIN { printf "%.0f", k / 1024 }') MB"
    exit 0
fi

if [ -n "${FOOTPRINT_RESTART:-}" ]; then
    start_gateway "$gateway" "$work/site.toml" "$work" "$admin_port" readyz 1200 0.05
    sleep "$FOOTPRINT_RESTART"
    first_kb="$(rss_kb "$gw")"
    kill "$gw"
    for _ in $(seq 100); do kill -0 "$gw" 2>/dev/null || break; sleep 0.1; done
    wait "$gw" 2>/dev/null || true
    echo "  restart: first start stopped after ${FOOTPRINT_RESTART} s idle at $(awk -v k="$first_kb" 'BEGIN { printf "%.0f", k / 1024 }') MB"
fi
t0="$(date +%s.%N)"
start_gateway "$gateway" "$work/site.toml" "$work" "$admin_port" readyz 1200 0.05
ready_s="$(python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.2f}')" "$t0" "$(date +%s.%N)")"
sleep 5
idle_kb="$(rss_kb "$gw")"
split_note idle

"$sim" load --target "127.0.0.1:$udp_port" --rate "$present" --devices "$present" \
    --strangers "$strangers" --duration "${seconds}s" --json >"$work/load.json"
sleep 2
present_kb="$(rss_kb "$gw")"
split_note end
if [ "$later_s" != 0 ]; then
    sleep "$later_s"
    later_kb="$(rss_kb "$gw")"
    split_note "later+${later_s}s"
fi
peak_kb="$(hwm_kb "$gw")"
if [ -n "${FOOTPRINT_METRICS:-}" ]; then
    curl -sf "http://127.0.0.1:$admin_port/metrics" >"$FOOTPRINT_METRICS"
    cp "/proc/$gw/smaps" "$FOOTPRINT_METRICS.smaps"
fi
heard="$(curl -sf "http://127.0.0.1:$admin_port/metrics" | awk 'index($0, "gateway_sightings_total{source=\"udp\"}") == 1 { v += $NF } END { printf "%d", v }')"

mb() { awk -v k="$1" 'BEGIN { printf "%.0f", k / 1024 }'; }
echo "footprint: ${people} enrolled, ${present} present for ${seconds}s (${heard} sightings heard); commit $(git -C "$root" rev-parse --short HEAD)"
echo "  import:  ${import_s} s, peak resident $(mb "$import_peak_kb") MB"
echo "  start:   ready on /readyz after ${ready_s} s"
echo "  run:     resident idle $(mb "$idle_kb") MB, with present $(mb "$present_kb") MB, peak $(mb "$peak_kb") MB (VmRSS/VmHWM of gateway run)"
[ "$later_s" = 0 ] || echo "  later:   resident $(mb "$later_kb") MB ${later_s} s after that"
reserved="$(curl -sf "http://127.0.0.1:$admin_port/metrics" | awk '/^gateway_nudges_reserved_total/ { v += $NF } END { printf "%d", v }')"
echo "  nudges reserved: ${reserved}; load $(cut -d' ' -f1-3 /proc/loadavg)"
if [ -n "${FOOTPRINT_OUT:-}" ]; then
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$people" "$present" "$import_s" "$(mb "$import_peak_kb")" \
        "$ready_s" "$(mb "$idle_kb")" "$(mb "$present_kb")" "$(mb "$peak_kb")" >>"$FOOTPRINT_OUT"
fi
