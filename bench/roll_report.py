#!/usr/bin/env python3
"""The report of bench/roll.sh across a roll, from its scrapes of /metrics.

Usage: python3 bench/roll_report.py SCRAPES BOUNDARY_UNIX_S TSV_OUT
SCRAPES: "@ <unix s> <load 1m>" lines, each followed by the series scraped
then (plain or gzipped, as bench/results/roll-across-*.scrapes.gz).
Prints the roll's time and, before / inside / after the roll's window,
sighting -> PUBACK and decision -> durable (p50/p99 in the buckets, max as
the highest bucket hit); writes the table to TSV_OUT.
"""

import gzip
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import histogram  # noqa: E402
import table  # noqa: E402

path, boundary, tsv = sys.argv[1], float(sys.argv[2]), sys.argv[3]
opener = gzip.open if path.endswith(".gz") else open
scrapes = []
with opener(path, "rt") as f:
    for line in f:
        if line.startswith("@ "):
            _, t, load1 = line.split()
            scrapes.append((float(t), load1, {}))
        elif scrapes:
            scrapes[-1][2].update(histogram.series([line]))

def delta(a, b, name):
    """Buckets of what was observed between scrapes a and b."""
    return histogram.between(scrapes[a][2], scrapes[b][2], name)


q, top, add = histogram.quantile, histogram.top, histogram.add


def value(i, name):
    return scrapes[i][2].get(name, 0.0)

# The roll: the scrape at which gateway_rotating_roll_seconds_count went up
# after the boundary.
rolls = [i for i in range(1, len(scrapes))
         if value(i, "gateway_rotating_roll_seconds_count") > value(i - 1, "gateway_rotating_roll_seconds_count")
         and scrapes[i][0] >= boundary]
if not rolls:
    print("no roll was counted after the boundary")
    sys.exit(1)
k = rolls[0]
took = value(k, "gateway_rotating_roll_seconds_sum") - value(k - 1, "gateway_rotating_roll_seconds_sum")
step = (value(k, "gateway_rotating_roll_longest_step_seconds_sum")
        - value(k - 1, "gateway_rotating_roll_longest_step_seconds_sum"))
print(f"roll: {took * 1000:.1f} ms from its first step to its last (gateway_rotating_roll_seconds), "
      f"longest step {step * 1000:.3f} ms (gateway_rotating_roll_longest_step_seconds); "
      f"counted in the scrape {scrapes[k][0] - boundary:+.2f} s after the boundary")
# Inside: from the last scrape at or before the boundary to the first at or
# after the roll's end (and not before the scrape that counted it).
i0 = max(i for i in range(len(scrapes)) if scrapes[i][0] <= boundary)
i1 = min(i for i in range(len(scrapes)) if scrapes[i][0] >= boundary + took and i >= k)
last = len(scrapes) - 1
names = ("gateway_sighting_to_puback_seconds", "gateway_decision_durable_seconds")
windows = [
    ("before the roll", 0, i0),
    ("inside the roll", i0, i1),
    ("after the roll", i1, last),
]
rows = []
for label, a, b in windows:
    row = [label, f"{scrapes[a][0] - boundary:+.2f}", f"{scrapes[b][0] - boundary:+.2f}"]
    for name in names:
        bs = delta(a, b, name)
        n = int(bs[-1][1]) if bs else 0
        row += [str(n), f"{q(bs, 0.5) * 1000:.2f}", f"{q(bs, 0.99) * 1000:.2f}", f"<={top(bs) * 1000:g}"]
    loads = [s[1] for s in scrapes[a:b + 1]]
    row.append(max(loads, key=float))
    rows.append(row)
outside = add(delta(0, i0, names[0]), delta(i1, last, names[0]))
outside_d = add(delta(0, i0, names[1]), delta(i1, last, names[1]))
row = ["outside (both)", "", ""]
for bs in (outside, outside_d):
    row += [str(int(bs[-1][1])), f"{q(bs, 0.5) * 1000:.2f}", f"{q(bs, 0.99) * 1000:.2f}", f"<={top(bs) * 1000:g}"]
row.append(max((s[1] for s in scrapes), key=float))
rows.append(row)
head = ["window", "from_s", "to_s", "puback_n", "puback_p50_ms", "puback_p99_ms", "puback_max_ms",
        "durable_n", "durable_p50_ms", "durable_p99_ms", "durable_max_ms", "load_1m_max"]
table.write_and_print(tsv, head, rows)
# Second by second around the boundary: nudges acked and their worst bucket.
print("per second around the boundary (t from the boundary: sighting->PUBACK timed, max bucket):")
line = []
for sec in range(-5, 6):
    a = max(i for i in range(len(scrapes)) if scrapes[i][0] <= boundary + sec)
    b = max(i for i in range(len(scrapes)) if scrapes[i][0] <= boundary + sec + 1)
    bs = delta(a, b, names[0])
    line.append(f"{sec:+d}s: {int(bs[-1][1]) if bs else 0} <={top(bs) * 1000:g}ms")
print("  " + "; ".join(line))
print("window from/to: seconds from the boundary, at the scrapes (every 0.25 s) that bound it; "
      "p50/p99: linear in the histogram's buckets (0.1, 0.25, 0.5, 1, 1.5, 2, 3, 5, 7.5, 10, 20, 50 ms ...); "
      "max: upper bound of the highest bucket hit")