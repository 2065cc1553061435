"""The bench reports' tables: written tab-separated to a file and printed
with aligned columns. Used by bench/roll_report.py and
bench/sweep_report.py."""


def write_and_print(path, head, rows):
    """Write `head` and `rows` (lists of strings) to `path` as TSV, then
    print them with each column padded to its widest cell."""
    with open(path, "w") as f:
        for r in [head] + rows:
            f.write("\t".join(r) + "\n")
    widths = [max(len(r[c]) for r in [head] + rows) for c in range(len(head))]
    for r in [head] + rows:
        print("  ".join(x.ljust(w) for x, w in zip(r, widths)))
