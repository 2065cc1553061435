# Shared by bench/e2e.sh, bench/footprint.sh, bench/roll.sh, bench/sweep.sh
# and bench/chain.sh (sourced,
# not run): free
# loopback ports, a private Mosquitto, process cleanup by pid, and /proc
# readings of a process. Loopback only; every process started through
# `spawn` is stopped on exit.

bench_pids=()
bench_work=""
bench_cleanup() {
    for pid in "${bench_pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${bench_pids[@]}"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
    done
    [ -z "$bench_work" ] || rm -rf "$bench_work"
}
trap bench_cleanup EXIT

# A free loopback port: free_port tcp|udp (never 1883, the machine's broker).
free_port() {
    local port
    while :; do
        port="$(python3 -c 'import socket,sys
s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM if sys.argv[1]=="udp" else socket.SOCK_STREAM)
s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' "$1")"
        [ "$port" != 1883 ] && break
    done
    echo "$port"
}

# start_broker DIR PORT: a private Mosquitto on 127.0.0.1:PORT, waited for.
start_broker() {
    cat >"$1/mosquitto.conf" <<CONF
listener $2 127.0.0.1
allow_anonymous true
user root
persistence false
# As deploy/mosquitto/mosquitto.conf (see there why).
set_tcp_nodelay true
log_dest file $1/mosquitto.log
CONF
    /usr/sbin/mosquitto -c "$1/mosquitto.conf" &
    bench_pids+=($!)
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$2") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "mosquitto did not start on port $2" >&2
    return 1
}

# Resident memory (VmRSS) and its peak (VmHWM) of a pid, in kB.
rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }
hwm_kb() { awk '/^VmHWM:/ { print $2 }' "/proc/$1/status"; }

# write_load_site FILE WORK BROKER_PORT UDP_PORT ADMIN_PORT: the site both
# load runs use. One zone over the three scanners the load generator names,
# so enrolled shoppers (heard about once a second each, random RSSI) dwell
# and get decided on: a run exercises reserve (sled transaction + flush) and
# MQTT delivery too. Settings beyond it go in GATEWAY__* variables.
write_load_site() {
    cat >"$1" <<SITE
[store]
id = "store-042"
timezone = "Europe/Berlin"

[mqtt]
url = "mqtt://127.0.0.1:$3"
prefix = "retail"
keep_alive_s = 5

[storage]
path = "$2/db"

[[sources]]
kind = "udp"
bind = "127.0.0.1:$4"

[admin]
listen = "127.0.0.1:$5"

[[zones]]
id = "floor"
scanners = ["entrance", "laptops", "headphones"]

[[rules]]
id = "welcome"
zone = "floor"
dwell_s = 10
kind = "info"
title = "Welcome"
body = "Today's offers are at the entrance."

[caps]
per_visit = 2
per_day = 3
per_week = 7
min_gap_s = 1200
SITE
}

# start_load_rig NAME GATEWAY SIM: check the release binaries, then a work
# directory (/tmp/gw-NAME.*, removed on exit), free ports, a private broker
# and the load site. Sets work, broker_port, udp_port, admin_port.
start_load_rig() {
    local bin
    for bin in "$2" "$3"; do
        [ -x "$bin" ] || { echo "missing $bin: cargo build --release --workspace --bins" >&2; exit 2; }
    done
    work="$(mktemp -d "/tmp/gw-$1.XXXXXX")"
    bench_work="$work"
    broker_port="$(free_port tcp)"
    udp_port="$(free_port udp)"
    admin_port="$(free_port tcp)"
    start_broker "$work" "$broker_port"
    write_load_site "$work/site.toml" "$work" "$broker_port" "$udp_port" "$admin_port"
}

# write_people SIM FILE PEOPLE SHOPPERS: PEOPLE person records (JSON lines)
# in FILE for `gateway people import`: the first SHOPPERS are the load
# generator's own enrolled shoppers (`firmware-sim load --strangers 0
# --devices SHOPPERS`, seed 7: p-100000 onwards), the rest a customer base
# made up here, deterministically, that no load is heard from.
write_people() {
    local dummy_port
    dummy_port="$(free_port udp)"
    if [ "$4" -gt 0 ]; then
        "$1" load --target "127.0.0.1:$dummy_port" --rate 1 --devices "$4" \
            --strangers 0 --duration 1ms --people "$2" >/dev/null
    else
        : >"$2"
    fi
    python3 - "$2" "$(($3 - $4))" <<'PY'
import json, random, sys
path, n = sys.argv[1], int(sys.argv[2])
rng = random.Random(7)
with open(path, "a") as out:
    for i in range(n):
        out.write(json.dumps({
            "person": f"f-{i}", "recipient": f"rf-{i}",
            "identities": [{"kind": "app", "key": "%032x" % rng.getrandbits(128)},
                           {"kind": "email", "value": f"f{i}@example.com"}],
            "consent": {"proximity": True, "product_info": True, "offers": False,
                        "thanks": True, "feedback": True},
            "interests": ["laptops"], "owns": []}) + "\n")
PY
}

# import_people GATEWAY CONFIG PEOPLE LOG: `gateway people import` of the
# JSON lines PEOPLE; on a refusal, its output and exit 1.
import_people() {
    GATEWAY_LOG=warn "$1" --config "$2" people import "$3" >"$4" 2>&1 \
        || { cat "$4" >&2; exit 1; }
}

# start_gateway GATEWAY CONFIG DIR ADMIN_PORT PATH TRIES PAUSE: `gateway run`
# (output in DIR/gateway.out and DIR/gateway.err, log filter
# BENCH_GATEWAY_LOG, default warnings only), stopped on exit; sets
# gw to its pid and waits until http://127.0.0.1:ADMIN_PORT/PATH answers,
# at most TRIES times PAUSE seconds (exit 1 with its stderr if it died).
start_gateway() {
    GATEWAY_LOG="${BENCH_GATEWAY_LOG:-warn,rumqttc=error}" "$1" --config "$2" run >"$3/gateway.out" 2>"$3/gateway.err" &
    gw=$!
    bench_pids+=($gw)
    for _ in $(seq "$6"); do
        curl -sf "http://127.0.0.1:$4/$5" >/dev/null 2>&1 && break
        kill -0 "$gw" 2>/dev/null || { cat "$3/gateway.err" >&2; exit 1; }
        sleep "$7"
    done
}
