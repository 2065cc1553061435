#!/usr/bin/env python3
"""Side by side with what stores use today: Theengs Decoder (PyPI
`theengsdecoder`, the decoder behind OpenMQTTGateway and Theengs Gateway)
against this gateway's decoder, on the same frames, in the same run.

Frames: the cases of vectors/ble_adverts.json plus
generated iBeacon, Eddystone UID/URL/TLM and AltBeacon adverts.

Timed:
  * Theengs in Python: decodeBLE(json.dumps({...})) per advert, as its
    documentation and ScanAndDecode example call it (and once more with the
    JSON strings prepared up front, the decoder alone);
  * `gateway decode -` (line mode: hex in on stdin, one JSON out per line),
    wall clock of the whole process over many lines;
  * the Rust decoder in-process, from criterion's estimates if the decode
    and pipeline benches have been run (`cargo bench -p gateway --bench
    decode`), read from $CARGO_TARGET_DIR/criterion.

Agreement: for every frame both decoders see, the decoded values are
compared field by field; frames one decoder does not recognise are listed.

Creates bench/.venv (gitignored) and installs theengsdecoder into it.
Usage: python3 bench/theengs_compare.py [--n 20000] [--json out.json]
"""

import argparse
import json
import os
import random
import subprocess
import sys
import time
import uuid as uuidlib
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
VENV = HERE / ".venv"


def ensure_venv():
    """Re-run this script inside bench/.venv with theengsdecoder installed."""
    if Path(sys.prefix).resolve() == VENV.resolve():
        return
    py = VENV / "bin" / "python"
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    probe = subprocess.run([str(py), "-c", "import TheengsDecoder"], capture_output=True)
    if probe.returncode != 0:
        subprocess.run([str(py), "-m", "pip", "install", "-q", "theengsdecoder"], check=True)
    os.execv(str(py), [str(py), __file__, *sys.argv[1:]])


# ---- frames -----------------------------------------------------------------

FLAGS = bytes([0x02, 0x01, 0x06])


def structure(ad_type, data):
    return bytes([len(data) + 1, ad_type]) + data


def ibeacon(rng):
    u = bytes(rng.getrandbits(8) for _ in range(16))
    major, minor = rng.randrange(65536), rng.randrange(65536)
    power = rng.randrange(-80, -40)
    d = bytes([0x4C, 0x00, 0x02, 0x15]) + u + major.to_bytes(2, "big") + minor.to_bytes(2, "big")
    d += (power & 0xFF).to_bytes(1, "big")
    return FLAGS + structure(0xFF, d)


def eddystone(frame):
    return FLAGS + structure(0x03, bytes([0xAA, 0xFE])) + structure(0x16, bytes([0xAA, 0xFE]) + frame)


def eddystone_uid(rng):
    tx = rng.randrange(-40, 0) & 0xFF
    return eddystone(bytes([0x00, tx]) + bytes(rng.getrandbits(8) for _ in range(16)) + b"\x00\x00")


def eddystone_url(rng):
    tx = rng.randrange(-40, 0) & 0xFF
    host = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randrange(3, 9)))
    # 0x03 = "https://", 0x07 = ".com"
    return eddystone(bytes([0x10, tx, 0x03]) + host.encode() + bytes([0x07]))


def eddystone_tlm(rng):
    mv = rng.randrange(2000, 3300)
    temp = rng.randrange(-10 * 256, 40 * 256)
    count = rng.getrandbits(32)
    secs = rng.getrandbits(31)
    f = bytes([0x20, 0x00]) + mv.to_bytes(2, "big") + (temp & 0xFFFF).to_bytes(2, "big")
    f += count.to_bytes(4, "big") + secs.to_bytes(4, "big")
    return eddystone(f)


def altbeacon(rng):
    company = rng.choice([0x0118, 0x004C, 0x0059, 0xFFFF])
    d = company.to_bytes(2, "little") + bytes([0xBE, 0xAC])
    d += bytes(rng.getrandbits(8) for _ in range(20))
    d += bytes([rng.randrange(-80, -40) & 0xFF, rng.randrange(256)])
    return FLAGS + structure(0xFF, d)


GENERATORS = {
    "ibeacon": ibeacon,
    "eddystone_uid": eddystone_uid,
    "eddystone_url": eddystone_url,
    "eddystone_tlm": eddystone_tlm,
    "altbeacon": altbeacon,
}


def ad_structures(adv):
    i = 0
    while i < len(adv):
        n = adv[i]
        if n == 0 or i + 1 + n > len(adv):
            return
        yield adv[i + 1], adv[i + 2 : i + 1 + n]
        i += 1 + n


def theengs_input(adv, addr="c0:42:00:00:00:01"):
    """The JSON Theengs Decoder takes: manufacturerdata = company id (little
    endian, as on air) + data; servicedata without its UUID and
    servicedatauuid the 16-bit UUID, as in its ScanAndDecode example."""
    d = {"id": addr, "rssi": -60}
    for t, data in ad_structures(adv):
        if t == 0xFF and "manufacturerdata" not in d:
            d["manufacturerdata"] = data.hex()
        elif t == 0x16 and len(data) >= 2 and "servicedata" not in d:
            d["servicedatauuid"] = f"{data[1]:02x}{data[0]:02x}"
            d["servicedata"] = data[2:].hex()
    return d


# ---- comparison ---------------------------------------------------------------


def compare(ours, theirs):
    """(verdict, detail) for one advert: ours = list of frames from `gateway
    decode`, theirs = Theengs' dict or None."""
    if not ours and theirs is None:
        return "both: nothing", ""
    if theirs is None:
        return "theengs: not decoded", ",".join(f["kind"] for f in ours)
    if not ours:
        return "gateway: not decoded", theirs.get("model_id", "?")
    f = ours[0]
    mid = theirs.get("model_id")
    if f["kind"] == "ibeacon" and mid == "IBEACON":
        diffs = []
        if theirs.get("uuid", "").lower() != f["uuid"].replace("-", ""):
            diffs.append(f'uuid {theirs.get("uuid")} vs {f["uuid"]}')
        for a, b in (("major", "major"), ("minor", "minor"), ("txpower", "measured_power")):
            if theirs.get(a) != f[b]:
                diffs.append(f"{a} {theirs.get(a)} vs {b} {f[b]}")
        return ("agree" if not diffs else "DISAGREE"), "; ".join(diffs)
    return "different model", f'{f["kind"]} vs theengs {mid}'


def main():
    ensure_venv()
    from TheengsDecoder import decodeBLE  # noqa: E402

    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20000, help="generated adverts (split over 5 kinds)")
    ap.add_argument("--json", help="write the figures here")
    ap.add_argument("--gateway", default=None)
    args = ap.parse_args()
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    gateway = args.gateway or str(target / "release" / "gateway")

    rng = random.Random(7)
    frames = []  # (label, adv bytes)
    vectors = json.load(open(ROOT / "vectors" / "ble_adverts.json"))
    for case in vectors["cases"]:
        try:
            frames.append(("vector: " + case["name"], bytes.fromhex(case["adv"])))
        except ValueError:
            pass  # the vectors' not-hex error cases: nothing to compare
    kinds = list(GENERATORS)
    for i in range(args.n):
        k = kinds[i % len(kinds)]
        frames.append((k, GENERATORS[k](rng)))
    hexes = [adv.hex() for _, adv in frames]

    # Gateway, line mode, one process for all lines.
    t0 = time.perf_counter()
    proc = subprocess.run([gateway, "decode", "-"], input="\n".join(hexes) + "\n",
                          capture_output=True, text=True, env={**os.environ, "GATEWAY_LOG": "error"})
    gw_s = time.perf_counter() - t0
    lines = proc.stdout.splitlines()
    if len(lines) != len(hexes):
        sys.exit(f"gateway decode - gave {len(lines)} lines for {len(hexes)}: {proc.stderr[:500]}")
    ours = [json.loads(l).get("frames", []) for l in lines]
    # Startup cost, to subtract: one line.
    t0 = time.perf_counter()
    subprocess.run([gateway, "decode", "-"], input=hexes[0] + "\n", capture_output=True, text=True)
    gw_start_s = time.perf_counter() - t0

    # Theengs: as documented (dumps + decodeBLE) ...
    inputs = [theengs_input(adv) for _, adv in frames]
    t0 = time.perf_counter()
    theirs_raw = [decodeBLE(json.dumps(d)) for d in inputs]
    th_s = time.perf_counter() - t0
    # ... and the decoder alone, on prepared strings.
    strings = [json.dumps(d) for d in inputs]
    t0 = time.perf_counter()
    for s in strings:
        decodeBLE(s)
    th_only_s = time.perf_counter() - t0
    theirs = [json.loads(r) if r else None for r in theirs_raw]

    # A second input form, for fairness: Theengs models test "uuid" too.
    alt_hits = 0
    for d in inputs[: 5 * 50]:
        if "servicedatauuid" in d:
            e = dict(d, uuid=d["servicedatauuid"])
            alt_hits += decodeBLE(json.dumps(e)) is not None

    # Criterion figures of the Rust decoder, if present.
    def crit(group, fn, elements=4096):
        p = target / "criterion" / group / fn / "new" / "estimates.json"
        try:
            est = json.load(open(p))
            return elements / (est["mean"]["point_estimate"] / 1e9)
        except (OSError, KeyError, ValueError):
            return None

    rust_mix = crit("decode", "mix")
    rust_pipe_decode = crit("pipeline", "decode_only_mix")

    n = len(frames)
    figures = {
        "adverts": n,
        "gateway_decode_line_mode_per_s": n / gw_s,
        "gateway_decode_line_mode_per_s_excl_startup": n / max(gw_s - gw_start_s, 1e-9),
        "theengs_python_per_s": n / th_s,
        "theengs_decoder_only_per_s": n / th_only_s,
        "rust_in_process_decode_mix_per_s": rust_mix,
        "rust_in_process_pipeline_decode_only_per_s": rust_pipe_decode,
        "load_1m": os.getloadavg()[0],
    }

    # Agreement table.
    table = {}
    examples = {}
    for (label, _), o, t in zip(frames, ours, theirs):
        kind = label if label.startswith("vector") else label
        verdict, detail = compare(o, t)
        key = (kind if kind.startswith("vector") else kind, verdict)
        table[key] = table.get(key, 0) + 1
        if detail and key not in examples:
            examples[key] = detail

    print(f"machine load (1 min): {figures['load_1m']:.2f}; {n} adverts "
          f"({len(vectors['cases'])} published vectors + {args.n} generated)")
    print(f"{'decoder':58} {'adverts/s':>14}")
    rows = [
        ("Theengs Decoder 2.x via Python decodeBLE(json.dumps(...))", figures["theengs_python_per_s"]),
        ("Theengs Decoder, decodeBLE on prepared JSON strings", figures["theengs_decoder_only_per_s"]),
        ("gateway decode - (line mode, whole process)", figures["gateway_decode_line_mode_per_s"]),
        ("gateway decode - (line mode, minus process start)", figures["gateway_decode_line_mode_per_s_excl_startup"]),
        ("Rust decode_into in-process (criterion decode/mix)", rust_mix),
        ("Rust decode_into in-process (criterion pipeline/decode_only_mix)", rust_pipe_decode),
    ]
    for name, v in rows:
        print(f"{name:58} {('%14.0f' % v) if v else '   (not run)'}")
    base = figures["theengs_python_per_s"]
    print(f"ratio gateway line mode / Theengs Python: {figures['gateway_decode_line_mode_per_s'] / base:.1f}x")
    if rust_mix:
        print(f"ratio Rust in-process / Theengs Python: {rust_mix / base:.0f}x")
    print()
    print(f"{'frames':58} {'verdict':22} {'count':>6}  example")
    for (kind, verdict), count in sorted(table.items()):
        print(f"{kind[:58]:58} {verdict:22} {count:6}  {examples.get((kind, verdict), '')[:80]}")
    print(f"(retried 'uuid' as well as 'servicedatauuid' for the first Eddystone inputs: "
          f"{alt_hits} decoded)")
    if args.json:
        figures["agreement"] = [
            {"frames": k, "verdict": v, "count": c, "example": examples.get((k, v), "")}
            for (k, v), c in sorted(table.items())
        ]
        Path(args.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
