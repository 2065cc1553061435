#!/usr/bin/env python3
"""bench/sweep.sh's report: per retention sweep, from the /proc samples
(every 0.2 s, outside) and the /metrics scrapes (every 0.25 s, inside).

Usage: sweep_report.py PROC_TSV SCRAPES OUT_TSV

A sweep is found where gateway_retention_sweep_seconds_count went up; it
ended between that scrape and the one before, and took the delta of
gateway_retention_sweep_seconds_sum, so its window is taken as [previous
scrape - took, this scrape] (at most 0.25 s wider than the sweep).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import histogram  # noqa: E402
import table  # noqa: E402

proc_path, scrapes_path, out_tsv = sys.argv[1:4]

proc = []
for line in open(proc_path):
    f = line.split("\t")
    if len(f) < 8:
        continue
    t, rss, hwm, anon, file_, cpu, rb, load = f
    proc.append((float(t), int(rss), int(hwm), int(anon), int(file_), float(cpu), int(rb), load.strip()))

scrapes = []
for line in open(scrapes_path):
    if line.startswith("@ "):
        scrapes.append((float(line.split()[1]), {}))
    elif scrapes:
        scrapes[-1][1].update(histogram.series([line.strip()]))


def val(i, name):
    return scrapes[i][1].get(name, 0.0)


def memory(i):
    return sum(v for k, v in scrapes[i][1].items() if k.startswith("gateway_memory_bytes{"))


def delta(a, b, name):
    return histogram.between(scrapes[a][1], scrapes[b][1], name)


q, top, add, sub = histogram.quantile, histogram.top, histogram.add, histogram.sub


def summary(bs):
    n = int(bs[-1][1]) if bs else 0
    return f"n {n}, p50 {q(bs, 0.5) * 1000:.2f} / p99 {q(bs, 0.99) * 1000:.2f} / max <= {top(bs) * 1000:g} ms"


def proc_at(t):
    """The last /proc sample at or before t."""
    best = proc[0]
    for s in proc:
        if s[0] <= t:
            best = s
        else:
            break
    return best


def proc_in(a, b):
    return [s for s in proc if a <= s[0] <= b]


mb = lambda kb: f"{kb / 1024:.1f}"
sweeps = []
for k in range(1, len(scrapes)):
    if val(k, "gateway_retention_sweep_seconds_count") > val(k - 1, "gateway_retention_sweep_seconds_count"):
        took = val(k, "gateway_retention_sweep_seconds_sum") - val(k - 1, "gateway_retention_sweep_seconds_sum")
        removed = val(k, "gateway_retention_swept_total") - val(k - 1, "gateway_retention_swept_total")
        start = scrapes[k - 1][0] - took
        end = scrapes[k][0]
        i0 = max([i for i in range(len(scrapes)) if scrapes[i][0] <= start] or [0])
        sweeps.append((k, i0, start, end, took, removed))

def longest_gap(a, b):
    """The longest time, in seconds, between two scrapes that saw new
    decisions (gateway_decision_durable_seconds_count went up), from the
    last such scrape at or before a to the first at or after b: how long
    the pipeline made no decision around a sweep."""
    name = "gateway_decision_durable_seconds_count"
    ups = [i for i in range(1, len(scrapes)) if val(i, name) > val(i - 1, name)]
    before = [i for i in ups if scrapes[i][0] <= a]
    after = [i for i in ups if scrapes[i][0] >= b]
    inside = [i for i in ups if a < scrapes[i][0] < b]
    marks = ([before[-1]] if before else []) + inside + ([after[0]] if after else [])
    return max((scrapes[j][0] - scrapes[i][0] for i, j in zip(marks, marks[1:])), default=float("nan"))


names = ("gateway_sighting_to_puback_seconds", "gateway_decision_durable_seconds")
t_first = proc[0][0]
head = ["sweep", "at_s", "took_s", "removed", "rss_before_mb", "rss_peak_during_mb", "rss_10s_after_mb",
        "rss_50s_after_mb", "hwm_after_mb", "anon_before_mb", "anon_10s_after_mb", "file_before_mb",
        "file_10s_after_mb", "cpu_s_during", "read_mb_during", "gateway_memory_mb_before",
        "gateway_memory_mb_after", "no_decision_s", "load_1m"]
rows = []
inside = {n: [] for n in names}
for j, (k, i0, start, end, took, removed) in enumerate(sweeps):
    before = proc_at(start)
    during = proc_in(start, end) or [proc_at(end)]
    after10 = proc_at(end + 10)
    after50 = proc_at(end + 50)
    last = proc_at(end)
    rows.append([str(j + 1), f"{start - t_first:.1f}", f"{took:.2f}", str(int(removed)),
                 mb(before[1]), mb(max(s[1] for s in during)), mb(after10[1]), mb(after50[1]),
                 mb(after10[2]), mb(before[3]), mb(after10[3]), mb(before[4]), mb(after10[4]),
                 f"{last[5] - before[5]:.2f}", f"{(last[6] - before[6]) / 1048576:.1f}",
                 f"{memory(i0) / 1048576:.1f}", f"{memory(k) / 1048576:.1f}",
                 f"{longest_gap(start, end):.2f}", max((s[7] for s in during), key=float)])
    for n in names:
        inside[n] = add(inside[n], delta(i0, k, n))

table.write_and_print(out_tsv, head, rows)

last = len(scrapes) - 1
print("decisions (histogram deltas over the scrapes; inside = the sweeps' windows, all sweeps together):")
for n in names:
    total = delta(0, last, n)
    print(f"  {n}: inside {summary(inside[n])}; outside {summary(sub(total, inside[n]))}")
# The same, for the sweeps after the first (the steady state: a month to walk, little to remove).
later = {n: [] for n in names}
for (k, i0, *_rest) in sweeps[1:]:
    for n in names:
        later[n] = add(later[n], delta(i0, k, n))
for n in names:
    if later[n]:
        print(f"  {n}, sweeps 2..: inside {summary(later[n])}")
rss = [s[1] for s in proc]
print(f"VmRSS over the run: first {mb(proc[0][1])}, min {mb(min(rss))}, max {mb(max(rss))}, last {mb(proc[-1][1])} MB; "
      f"VmHWM at the end {mb(proc[-1][2])} MB; gateway_memory_bytes at the end {memory(last) / 1048576:.1f} MB (in-process, from capacities)")
print("rss/anon/file/hwm: /proc/<pid>/status of gateway run (outside), sampled every 0.2 s; before = last sample before the "
      "sweep's start, peak = highest sample within it; cpu/read: /proc/<pid>/stat utime+stime and /proc/<pid>/io read_bytes "
      "(whole process) over the sweep; no_decision_s: the longest time without a new decision (gateway_decision_durable_seconds_count, scraped every 0.25 s) from the last before the sweep to the first after it; gateway_memory_mb: gateway_memory_bytes summed over its parts (in-process, not resident)")
