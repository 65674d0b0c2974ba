#!/usr/bin/env python3
"""Plots the main panels of dashboards/sheepdev.json from a Prometheus, over a time range,
into one PNG: IOPS by op, p50/p99 latency by op, in flight vs depth per queue, and backend
latency by opcode. The queries are the dashboard's own (same substitutions as run.sh).

    pip install matplotlib
    python3 tests/prometheus/plot.py --prom http://127.0.0.1:9090 \
        --start UNIX --end UNIX [--instance REGEX] [--device REGEX] out.png

run.sh calls it when SHEEPDEV_PLOT=out.png is set. Series that stay at zero (or NaN) over
the whole range are left out (e.g. flush/discard in the bench).
"""
import argparse
import json
import math
import os
import sys
import urllib.parse
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dashboard import substitute, walk_panels  # noqa: E402

# (dashboard panel title, legend suffixes to keep (None: all), y unit, log scale)
PANELS = [
    ("IOPS by op", None, "IOPS", False),
    ("Latency by op (p50 / p99 / p99.9)", ("p50", "p99"), "seconds", True),
    ("In flight vs depth per queue", None, "requests", False),
    ("Backend latency by opcode (p50 / p99)", ("p50", "p99"), "seconds", True),
]


def legend(fmt, metric):
    out = fmt
    for k, v in metric.items():
        out = out.replace("{{" + k + "}}", v)
    return out.replace("{{", "").replace("}}", "").strip() or json.dumps(metric)


def query_range(prom, expr, start, end, step):
    url = f"{prom}/api/v1/query_range?" + urllib.parse.urlencode(
        {"query": expr, "start": start, "end": end, "step": step})
    with urllib.request.urlopen(url, timeout=30) as r:
        d = json.load(r)
    if d.get("status") != "success":
        raise SystemExit(f"query failed: {d.get('error')}: {expr}")
    return d["data"]["result"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", help="PNG to write")
    ap.add_argument("--prom", required=True, help="Prometheus base URL")
    ap.add_argument("--start", type=float, required=True)
    ap.add_argument("--end", type=float, required=True)
    ap.add_argument("--step", default="1s")
    ap.add_argument("--instance", default=".*", help="value for $instance (a regex)")
    ap.add_argument("--device", default=".*", help="value for $device (a regex)")
    ap.add_argument("--rate-interval", default="5s", help="value for $__rate_interval")
    ap.add_argument("--dashboard", default=os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "..", "dashboards", "sheepdev.json"))
    a = ap.parse_args()
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("plot.py needs matplotlib: pip install matplotlib")

    dash = json.load(open(a.dashboard))
    by_title = {p.get("title"): p for p in walk_panels(dash["panels"])}
    values = {"instance": a.instance, "device": a.device, "__rate_interval": a.rate_interval}

    fig, axes = plt.subplots(2, 2, figsize=(16, 10), sharex=True)
    for ax, (title, keep, unit, log) in zip(axes.flat, PANELS):
        panel = by_title.get(title)
        if panel is None:
            raise SystemExit(f"the dashboard has no panel {title!r}")
        plotted = 0
        for t in panel["targets"]:
            if keep and not t.get("legendFormat", "").endswith(keep):
                continue
            style = "--" if t.get("legendFormat", "").endswith(("depth", "p99")) else "-"
            for s in query_range(a.prom, substitute(t["expr"], values), a.start, a.end, a.step):
                xs = [float(v[0]) - a.start for v in s["values"]]
                ys = [float(v[1]) for v in s["values"]]
                if not any(y and not math.isnan(y) for y in ys):
                    continue
                ax.plot(xs, ys, style, linewidth=1.2, label=legend(t.get("legendFormat", ""), s["metric"]))
                plotted += 1
        ax.set_title(title)
        ax.set_ylabel(unit)
        if log and plotted:
            ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        if plotted:
            ax.legend(fontsize=7, ncol=2)
        else:
            ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center")
    for ax in axes[-1]:
        ax.set_xlabel("seconds since the run started")
    fig.suptitle(f"sheepdev (Prometheus {a.prom}, step {a.step}, rate window {a.rate_interval})")
    fig.tight_layout()
    fig.savefig(a.out, dpi=100)
    print(f"plot: wrote {a.out}")


if __name__ == "__main__":
    main()
