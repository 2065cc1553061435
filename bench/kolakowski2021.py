#!/usr/bin/env python3
"""Convert the BLE RSS dataset for fingerprinting radio map calibration
(Kołakowski, 2021) to the gateway's capture and truth formats, with a site
file, so that `gateway calibrate` and `gateway eval-presence` can be run on
a real, furnished flat (issue #20).

The dataset (https://github.com/marckolak/ble-rss-fingerprints-calib2021,
commit 0a69aaa, CC BY 4.0; cite M. Kołakowski, "Automated Calibration of
RSS Fingerprinting Based Systems Using a Mobile Robot and Machine
Learning", Sensors 21, 6270, 2021): a tag (5 adverts a second, 1.3 m high
on a pole) carried by a robot with a LiDAR through a furnished flat of
9.1 x 7.1 m watched by six anchors (two BLE modules each), on one day:

* `calibration/calibration_df.csv`: the four calibration paths as one
  table, a row about every 1/3 s: time (ns), the tag's position in the
  flat's frame (metres, from the robot's LiDAR SLAM, corrected for the
  tag's offset on the robot) and per anchor the level (dBm; the authors'
  log-mean of both modules over a third of a second; empty: not heard).
  Its anchors are 1-6 as in `anchors.csv` (the raw files and
  `calibX_df.csv` call them 3, 4, 5, 8, 10, 11; dataset_description.pdf
  section IV says they were renumbered in that order).
* `tests/test_robot_df.csv`: the robot's test path, the same columns.
* `tests/test_walk_df.csv`: a person walking with the tag; levels only,
  no time-stamped positions (the path's vertices are in
  `tests/path_reference.csv`), so it is written as a capture without
  truth.

Rooms: the flat's plan (Fig. 1 of dataset_description.pdf, drawn from
`layout.csv`) names six rooms; the five with an anchor are the zones and
the walk-in wardrobe beside the anteroom (no anchor) is the hall. The
room outlines below are read off that figure and the wall vertices of
`layout.csv`; a position outside every outline (inside a wall, a
doorway's thickness) goes to the nearest room. With OPEN_KITCHEN=1 in the
environment the kitchen, open to the living room, is one zone with it.
Reads only the CSV files (not the raw `*_ble.txt` or LiDAR scans) and
downloads nothing: give it a checkout of the dataset.

    bench/kolakowski2021.py <dataset checkout> <out dir>

writes <out>/site.toml; per calibration path N (1-4) <out>/calibN.jsonl
and <out>/calibN-truth.jsonl; all four as <out>/calib.jsonl (+ -truth);
the four less path N as <out>/calib-notN.jsonl (+ -truth), to calibrate
on the others before scoring path N (only for N = 3, 4: paths 1 and 2
alone visit the kitchen and the bathroom); <out>/robot.jsonl (+ -truth), the
robot's test path; <out>/walk.jsonl, the person's walk (no truth). Each
path is under its own tag address, so each is a subject of its own.
"""

import csv
import json
import math
import os
import sys

# Rooms as rectangles (id, x0, y0, x1, y1), metres, in the frame of
# anchors.csv and layout.csv. Walls between rooms are split down the
# middle (the bedroom / living room double wall at x 2.58 / 2.70; the
# bathroom door at x 3.88 / 4.05; the anteroom / living room opening at
# y 2.07-2.12; the living room / kitchen at x 6.27 / 6.37).
ROOMS = [
    ("wardrobe", 0.0, 0.0, 2.04, 2.10),
    ("anteroom", 2.04, 0.0, 3.965, 2.10),
    ("bathroom", 3.965, 0.0, 6.22, 1.93),
    ("bedroom", 0.0, 2.10, 2.64, 7.10),
    ("living", 2.64, 2.10, 6.32, 7.10),
    ("kitchen", 6.32, 4.19, 9.07, 7.10),
]
# The room that is not a zone: no anchor in it.
HALL_ROOMS = {"wardrobe"}
# anchors.csv id -> zone.
ANCHOR_ZONE = {1: "living", 2: "bedroom", 3: "anteroom", 4: "living", 5: "bathroom", 6: "kitchen"}
# With OPEN_KITCHEN=1 the kitchen, open to the living room along 2.3 m
# without a wall, is one zone with it (four zones and the hall).
MERGED = {"kitchen": "living"} if os.environ.get("OPEN_KITCHEN") == "1" else {}
ANCHOR_ZONE = {a: MERGED.get(z, z) for a, z in ANCHOR_ZONE.items()}
# The raw files' anchor ids, in the order of anchors.csv (dataset
# description, section IV).
RAW_IDS = [3, 4, 5, 8, 10, 11]
# Calibration paths: time ranges (s) of calibration/calibN_df.csv, used to
# split calibration_df.csv (which holds all four) back into paths.
PATHS = 4
ADV = "020106"


def room(x, y):
    for name, x0, y0, x1, y1 in ROOMS:
        if x0 <= x < x1 and y0 <= y < y1:
            return name
    best = None
    for name, x0, y0, x1, y1 in ROOMS:
        d = math.hypot(max(x0 - x, 0, x - x1), max(y0 - y, 0, y - y1))
        if best is None or d < best[0]:
            best = (d, name)
    return best[1]


def place(x, y):
    r = room(x, y)
    return "hall" if r in HALL_ROOMS else MERGED.get(r, r)


def scanner(anchor):
    return "anchor%d" % anchor


def addr(tag):
    return "02:00:00:00:20:%02x" % tag


def read_df(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write_jsonl(path, rows):
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row, separators=(",", ":")) + "\n")


def spans(addr_, points):
    """Truth spans from (time ms, place) points in time order; a point's
    place holds until the next point."""
    out = []
    for t, p in points:
        if out and out[-1]["zone"] == p:
            out[-1]["to_ms"] = t
        else:
            if out:
                out[-1]["to_ms"] = t
            out.append({"addr": addr_, "from_ms": t, "to_ms": t, "zone": p})
    # The last row is a third of a second (the table's step) long.
    if out:
        out[-1]["to_ms"] += 333
    return [s for s in out if s["to_ms"] > s["from_ms"]]


def convert(rows, tag, positions=True):
    """Rows of a *_df.csv to capture records and truth spans."""
    a = addr(tag)
    records, points = [], []
    for r in rows:
        t = int(round(float(r["ts"]) / 1e6))
        for anchor in range(1, 7):
            v = r.get("rssi_%d" % anchor, "")
            if v == "" or v.lower() == "nan":
                continue
            rssi = int(round(float(v)))
            if not -127 <= rssi < 0:
                continue
            records.append({"scanner": scanner(anchor), "addr": a, "rssi": rssi, "adv": ADV, "at_ms": t})
        if positions:
            points.append((t, place(float(r["x"]), float(r["y"]))))
    records.sort(key=lambda r: r["at_ms"])
    points.sort()
    return records, spans(a, points) if positions else []


def site(anchors_csv):
    zones = {}
    with open(anchors_csv) as f:
        for r in csv.DictReader(f):
            anchor = int(r["id"])
            zones.setdefault(ANCHOR_ZONE[anchor], []).append((anchor, float(r["x"]), float(r["y"])))
    out = [
        "# The BLE RSS fingerprinting dataset (Kołakowski 2021; CC BY 4.0) as a\n"
        "# site: a furnished flat, five rooms with anchors as zones, the walk-in\n"
        "# wardrobe as the hall (written by bench/kolakowski2021.py).\n\n"
        '[store]\nid = "kolakowski-2021"\ntimezone = "Europe/Warsaw"\n\n'
        '[mqtt]\nurl = "mqtt://127.0.0.1:1883"\nprefix = "retail"\n\n'
        # Rooms are 2-5 m across: a tag more than 2.5 m from every anchor
        # is taken for the hall by the engine without a map.
        "[presence]\npath_loss_exponent = 2.2\nhall_distance_m = 2.5\n"
    ]
    for zone in sorted(zones):
        anchors = zones[zone]
        out.append(
            '\n[[zones]]\nid = "%s"\nscanners = [%s]\npositions = { %s }\n'
            % (
                zone,
                ", ".join('"%s"' % scanner(a) for a, _, _ in anchors),
                ", ".join("%s = { x = %.2f, y = %.2f }" % (scanner(a), x, y) for a, x, y in anchors),
            )
        )
    return "".join(out)


def summary(name, records, truth):
    secs = (truth[-1]["to_ms"] - truth[0]["from_ms"]) / 1000 if truth else 0
    by_place = {}
    for s in truth:
        by_place[s["zone"]] = by_place.get(s["zone"], 0) + (s["to_ms"] - s["from_ms"]) / 1000
    places = ", ".join("%s %.0f s" % (p, v) for p, v in sorted(by_place.items()))
    print("%s: %d readings, %.0f s, %d spans (%s)" % (name, len(records), secs, len(truth), places))


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    root, out = sys.argv[1], sys.argv[2]
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "site.toml"), "w") as f:
        f.write(site(os.path.join(root, "anchors.csv")))
    calib = read_df(os.path.join(root, "calibration", "calibration_df.csv"))
    paths = []
    for n in range(1, PATHS + 1):
        own = read_df(os.path.join(root, "calibration", "calib%d_df.csv" % n))
        t0, t1 = float(own[0]["ts"]), float(own[-1]["ts"])
        rows = [r for r in calib if t0 <= float(r["ts"]) <= t1]
        records, truth = convert(rows, n)
        write_jsonl(os.path.join(out, "calib%d.jsonl" % n), records)
        write_jsonl(os.path.join(out, "calib%d-truth.jsonl" % n), truth)
        summary("calib%d (%d of its %d rows)" % (n, len(rows), len(own)), records, truth)
        paths.append((records, truth))

    def join(parts):
        records = sorted((r for p in parts for r in p[0]), key=lambda r: r["at_ms"])
        truth = sorted((s for p in parts for s in p[1]), key=lambda s: s["from_ms"])
        return records, truth

    records, truth = join(paths)
    write_jsonl(os.path.join(out, "calib.jsonl"), records)
    write_jsonl(os.path.join(out, "calib-truth.jsonl"), truth)
    every = {s["zone"] for s in truth}
    for n in range(1, PATHS + 1):
        records, truth = join([p for i, p in enumerate(paths, start=1) if i != n])
        missing = every - {s["zone"] for s in truth}
        if missing:
            # `gateway calibrate` refuses a walk that misses a place.
            print("calib-not%d: not written, the other paths miss %s" % (n, ", ".join(sorted(missing))))
            continue
        write_jsonl(os.path.join(out, "calib-not%d.jsonl" % n), records)
        write_jsonl(os.path.join(out, "calib-not%d-truth.jsonl" % n), truth)
    records, truth = convert(read_df(os.path.join(root, "tests", "test_robot_df.csv")), 11)
    write_jsonl(os.path.join(out, "robot.jsonl"), records)
    write_jsonl(os.path.join(out, "robot-truth.jsonl"), truth)
    summary("robot test path", records, truth)
    records, _ = convert(read_df(os.path.join(root, "tests", "test_walk_df.csv")), 12, positions=False)
    write_jsonl(os.path.join(out, "walk.jsonl"), records)
    print("person's walk: %d readings (no truth)" % len(records))


if __name__ == "__main__":
    main()
