#!/usr/bin/env python3
"""Markdown tables from a scripts/bench results directory.

Usage: python3 bench/summarize.py bench/results/<dir>
"""

import json
import re
import sys
from pathlib import Path


def load_at(text):
    m = re.search(r"\(load: ([0-9.]+) ([0-9.]+) ([0-9.]+)\)", text)
    return m.group(1) if m else "?"


def section_loads(summary):
    """Map of '== title' line -> 1-minute load printed with it."""
    loads = {}
    for line in summary.splitlines():
        if line.startswith("== "):
            loads[line.split(" (load:")[0][3:]] = load_at(line)
    return loads


def criterion(log):
    out = []
    name = None
    for line in log.splitlines():
        m = re.match(r"^(\S.*?)\s+time:\s+\[", line)
        if m:
            name = m.group(1).strip()
        elif re.match(r"^[a-z_][^ ]*/\S+", line) and "Benchmarking" not in line:
            name = line.strip()
        t = re.search(r"time:\s+\[(\S+ \S+) (\S+ \S+) (\S+ \S+)\]", line)
        if t and name and "%" not in line:
            out.append([name, "time", t.group(2)])
        e = re.search(r"thrpt:\s+\[(\S+ \S+) (\S+ \S+) (\S+ \S+)\]", line)
        if e and name and "%" not in line:
            out.append([name, "thrpt", e.group(2)])
    return out


def main():
    d = Path(sys.argv[1])
    summary = (d / "summary.txt").read_text()
    loads = section_loads(summary)
    print("## loads per section")
    for k, v in loads.items():
        print(f"- {k}: {v}")
    print()
    for f in sorted(d.glob("bench-*.log")):
        print(f"## {f.name}")
        for name, kind, v in criterion(f.read_text()):
            print(f"| {name} | {kind} | {v} |")
        for line in f.read_text().splitlines():
            if re.match(r"^(pipeline|presence|table|resident|reserve)", line):
                print("  ", line)
        print()
    for f in sorted(d.glob("memory-*.log")) + sorted(d.glob("durable-*.log")):
        print(f"## {f.name}")
        print(f.read_text())
    for f in sorted(d.glob("e2e-*.tsv")):
        print(f"## {f.name}")
        rows = [l.split("\t") for l in f.read_text().splitlines()]
        print("| " + " | ".join(rows[0]) + " |")
        print("|" + "---|" * len(rows[0]))
        for r in rows[1:]:
            print("| " + " | ".join(r) + " |")
        txt = Path(str(f) + ".txt")
        if txt.exists():
            print(txt.read_text())
    for f in sorted(d.glob("theengs-*.json")):
        print(f"## {f.name}")
        j = json.loads(f.read_text())
        for k, v in j.items():
            if k != "agreement":
                print(f"- {k}: {v}")
        for a in j.get("agreement", []):
            print(f"| {a['frames']} | {a['verdict']} | {a['count']} | {a['example']} |")
        print()


if __name__ == "__main__":
    main()
