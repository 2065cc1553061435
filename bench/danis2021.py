#!/usr/bin/env python3
"""Convert the Position-Annotated BLE RSSI Dataset (Danis et al., 2021) to
the gateway's capture and truth formats, with a site file, so that
`gateway calibrate` and `gateway eval-presence` can be run on real,
measured radio (issue #20).

The dataset (https://github.com/philotuxo/Position-Annotated-BLE-RSSI-Dataset,
CC0 1.0; cite F. S. Danis, A. T. Cemgil, C. Ersoy, "Adaptive Sequential
Monte Carlo Filter for Indoor Positioning and Tracking With Bluetooth Low
Energy Beacons", IEEE Access 9, 2021): one BLE beacon carried through a
20.7 m x 17.6 m area watched by twelve fixed sensors (Raspberry Pi and
dongles, three near each corner of the area), with

* `hst/set_1`, `hst/set_2`: stationary fingerprints (the beacon left at a
  known point for a while; one file per sensor and point,
  `<sensor>_<x>_<y>_<z>.mbd`, lines `<time s>,<sensor MAC>,<beacon MAC>,<rssi>`);
* `trk/*_all_sensors.mbd`: the beacon carried along nine trajectories,
  lines `<time s>,<sensor MAC>,<beacon MAC>,<rssi>,<x>,<y>,<z>,<3x3 rotation>`,
  every reading annotated with the beacon's position (AR-tracked, < 5 cm).

The area is open, not a store: the converter cuts it into four zones, one
per corner group of three sensors, and a cross-shaped hall between them
(ZONES below). Downloads nothing: give it a checkout of the dataset.

    bench/danis2021.py <dataset checkout> <out dir>

writes <out>/site.toml, <out>/fpt-set_1.jsonl + <out>/fpt-set_1-truth.jsonl
(and set_2), <out>/trk-<name>.jsonl + <out>/trk-<name>-truth.jsonl, and
<out>/tracks.jsonl + <out>/tracks-truth.jsonl (all tracks, each under its
own address so each is a subject of its own).
"""

import ast
import json
import os
import sys

# Zones: (id, x0, y0, x1, y1), metres; everything else in the area is the
# hall: a cross 4 m wide (x) and 2 m deep (y) through the middle, or with
# HALL=narrow in the environment a cross 2 m wide both ways.
ZONES = [
    ("q1", 0.0, 0.0, 8.0, 8.3),
    ("q2", 0.0, 10.3, 8.0, 17.7),
    ("q3", 12.0, 10.3, 20.7, 17.7),
    ("q4", 12.0, 0.0, 20.7, 8.3),
]
if os.environ.get("HALL") == "narrow":
    ZONES = [
        ("q1", 0.0, 0.0, 9.3, 7.8),
        ("q2", 0.0, 9.8, 9.3, 17.7),
        ("q3", 11.3, 9.8, 20.7, 17.7),
        ("q4", 11.3, 0.0, 20.7, 7.8),
    ]
# The sensors of each zone (the dataset's aliases: sensorGN, group G).
ZONE_SENSORS = {"q1": "1", "q2": "2", "q3": "3", "q4": "4"}
# An advert the gateway decodes (flags only): the capture format needs one.
ADV = "020106"


def place(x, y):
    for zone, x0, y0, x1, y1 in ZONES:
        if x0 <= x < x1 and y0 <= y < y1:
            return zone
    return "hall"


def addr(mac, tag=0):
    """The beacon's MAC as the capture writes it; `tag` makes one address
    per track (last byte replaced), so each track is a subject."""
    octets = [mac[i : i + 2] for i in range(0, 12, 2)]
    if tag:
        octets[-1] = "%02x" % tag
    return ":".join(octets)


def devices(root):
    text = open(os.path.join(root, "cnf", "tetam.dev")).read()
    dongles = {}
    for line in text.splitlines():
        if line.startswith("Dongles:"):
            for mac, (pos, _colour, alias) in ast.literal_eval(line[len("Dongles:") :]).items():
                dongles[mac] = (alias, pos)
    return dongles


def write_jsonl(path, rows):
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row, separators=(",", ":")) + "\n")


def spans(addr_, points):
    """Truth spans from (time ms, place) points in time order."""
    out = []
    for t, p in points:
        if out and out[-1]["zone"] == p:
            out[-1]["to_ms"] = t
        else:
            if out:
                out[-1]["to_ms"] = t
            out.append({"addr": addr_, "from_ms": t, "to_ms": t, "zone": p})
    # The last reading ends the last span a second later (it was there).
    if out:
        out[-1]["to_ms"] += 1000
    return [s for s in out if s["to_ms"] > s["from_ms"]]


def fingerprints(root, dongles, name):
    """A stationary set as a capture and truth: each point is one span."""
    folder = os.path.join(root, "hst", name)
    by_point = {}
    for f in sorted(os.listdir(folder)):
        if not f.endswith(".mbd"):
            continue
        _alias, x, y, _z = f[: -len(".mbd")].split("_")
        by_point.setdefault((float(x), float(y)), []).append(os.path.join(folder, f))
    records, truth = [], []
    for (x, y), files in sorted(by_point.items()):
        rows = []
        for f in files:
            for line in open(f):
                t, sensor, beacon, rssi = line.strip().split(",")[:4]
                # A few readings are positive (62 dBm): sensor glitches.
                if sensor in dongles and -127 <= int(rssi) < 0:
                    rows.append((int(float(t) * 1000), dongles[sensor][0], beacon, int(rssi)))
        if not rows:
            continue
        rows.sort()
        for t, scanner, beacon, rssi in rows:
            records.append({"scanner": scanner, "addr": addr(beacon), "rssi": rssi, "adv": ADV, "at_ms": t})
        truth.append(
            {"addr": addr(rows[0][2]), "from_ms": rows[0][0], "to_ms": rows[-1][0] + 1, "zone": place(x, y)}
        )
    records.sort(key=lambda r: r["at_ms"])
    truth.sort(key=lambda s: s["from_ms"])
    return records, truth


def track(path, dongles, tag):
    records, points = [], []
    for line in open(path):
        cols = line.strip().split(",")
        if len(cols) < 7 or cols[1] not in dongles or not -127 <= int(cols[3]) < 0:
            continue
        t = int(float(cols[0]) * 1000)
        a = addr(cols[2], tag)
        records.append({"scanner": dongles[cols[1]][0], "addr": a, "rssi": int(cols[3]), "adv": ADV, "at_ms": t})
        points.append((t, place(float(cols[4]), float(cols[5]))))
    records.sort(key=lambda r: r["at_ms"])
    points.sort()
    return records, spans(records[0]["addr"], points) if records else []


def site(dongles):
    zones = []
    for zone, *_ in ZONES:
        group = ZONE_SENSORS[zone]
        sensors = sorted(a for a, _ in dongles.values() if a[len("sensor")] == group)
        zones.append('[[zones]]\nid = "%s"\nscanners = [%s]\n' % (zone, ", ".join('"%s"' % s for s in sensors)))
    return (
        "# The Position-Annotated BLE RSSI Dataset (Danis et al., 2021; CC0) as a\n"
        "# site: four corner zones of three sensors each, a hall between them\n"
        "# (written by bench/danis2021.py).\n\n"
        '[store]\nid = "danis-2021"\ntimezone = "Europe/Istanbul"\n\n'
        '[mqtt]\nurl = "mqtt://127.0.0.1:1883"\nprefix = "retail"\n\n'
        # The farthest point of a zone from its nearest own sensor is
        # about 6 m; the tracks' beacon is about -60 dBm at 1 m.
        "[presence]\npath_loss_exponent = 2.2\nhall_distance_m = 6.5\n\n" + "\n".join(zones)
    )


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    root, out = sys.argv[1], sys.argv[2]
    os.makedirs(out, exist_ok=True)
    dongles = devices(root)
    open(os.path.join(out, "site.toml"), "w").write(site(dongles))
    for name in ("set_1", "set_2"):
        records, truth = fingerprints(root, dongles, name)
        write_jsonl(os.path.join(out, "fpt-%s.jsonl" % name), records)
        write_jsonl(os.path.join(out, "fpt-%s-truth.jsonl" % name), truth)
        print("fingerprints %s: %d readings, %d points" % (name, len(records), len(truth)))
    all_records, all_truth = [], []
    names = sorted(f for f in os.listdir(os.path.join(root, "trk")) if f.endswith("_all_sensors.mbd"))
    for tag, f in enumerate(names, start=1):
        records, truth = track(os.path.join(root, "trk", f), dongles, tag)
        base = f[: -len("_all_sensors.mbd")]
        write_jsonl(os.path.join(out, "trk-%s.jsonl" % base), records)
        write_jsonl(os.path.join(out, "trk-%s-truth.jsonl" % base), truth)
        all_records += records
        all_truth += truth
        secs = (truth[-1]["to_ms"] - truth[0]["from_ms"]) / 1000 if truth else 0
        print("track %s: %d readings, %.0f s, %d spans" % (base, len(records), secs, len(truth)))
    all_records.sort(key=lambda r: r["at_ms"])
    write_jsonl(os.path.join(out, "tracks.jsonl"), all_records)
    write_jsonl(os.path.join(out, "tracks-truth.jsonl"), all_truth)


if __name__ == "__main__":
    main()
