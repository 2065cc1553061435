"""Prometheus histograms as the gateway exposes them on /metrics, for the
bench scripts: bucket counts from a scrape, what was observed between two
scrapes, and quantiles interpolated the way Prometheus' histogram_quantile
does (linear within a bucket). Used by bench/roll_report.py,
bench/sweep_report.py and bench/chain.sh, so that all read latencies alike."""

import re


def series(lines):
    """A scrape (lines of text exposition) as {series: value}, comments and
    unparsable values left out."""
    out = {}
    for line in lines:
        if line.startswith("#") or not line.strip():
            continue
        name, _, value = line.rstrip("\n").rpartition(" ")
        try:
            out[name] = float(value)
        except ValueError:
            pass
    return out


def buckets(scrape, name):
    """The cumulative buckets of histogram `name` (no labels besides `le`)
    in a scrape, as sorted (upper bound, count) pairs."""
    pattern = re.compile(re.escape(name) + r'_bucket\{le="([^"]+)"\}')
    out = []
    for key, value in scrape.items():
        m = pattern.fullmatch(key)
        if m:
            le = float("inf") if m.group(1) == "+Inf" else float(m.group(1))
            out.append((le, value))
    return sorted(out)


def between(before, after, name):
    """The cumulative buckets of what `name` observed from scrape `before`
    to scrape `after`."""
    earlier = dict(buckets(before, name))
    return [(le, v - earlier.get(le, 0.0)) for le, v in buckets(after, name)]


def add(x, y):
    """Two sets of cumulative buckets of the same histogram, summed (either
    may be empty: nothing observed)."""
    if not x:
        return y
    if not y:
        return x
    return [(le, u + v) for (le, u), (_, v) in zip(x, y)]


def sub(x, y):
    """`x` less `y`, cumulative buckets of the same histogram."""
    return [(le, u - v) for (le, u), (_, v) in zip(x, y)] if y else x


def count(bs):
    return bs[-1][1] if bs else 0


def quantile(bs, p):
    """The p-quantile, linear within its bucket; NaN when nothing was
    observed, the last finite bound when it falls in +Inf."""
    total = count(bs)
    if total <= 0:
        return float("nan")
    rank, lo, below = p * total, 0.0, 0.0
    for le, cum in bs:
        if cum >= rank:
            if le == float("inf"):
                return lo
            return lo + (le - lo) * ((rank - below) / (cum - below) if cum > below else 1)
        lo, below = le, cum
    return lo


def top(bs):
    """Upper bound of the highest bucket hit (NaN when none was)."""
    prev, hit = 0.0, float("nan")
    for le, cum in bs:
        if cum > prev:
            hit = le
        prev = cum
    return hit
