#!/usr/bin/env python3
"""Draws the bench's plots from what a run left in its directory
(target/bench unless given), as PNGs beside the data:

- <name>_latency.png from each <name>_latency.json (rpc): how the calls'
  latencies are distributed, with the reported percentiles marked;
- <name>_rss.png from each <name>_rss.json (idle, soak): a process's
  resident memory over time, with a gauge the run read beside it (soak: the
  nonces the replay guard remembers).

Data a run did not write (one bench run alone) is not drawn.
scripts/bench.sh runs this with matplotlib from target/bench-venv.
"""

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
from matplotlib import ticker  # noqa: E402


def latency_plot(source: Path, target: Path) -> None:
    """{"what", "calls", "percentiles_us": {"p50", ...},
    "buckets": [[upper bound in µs, calls], ...]}, each bucket a constant
    factor wider than the last: drawn as the share of calls per bucket, on a
    log axis, with the percentiles marked."""
    data = json.loads(source.read_text())
    uppers = [upper for upper, _ in data["buckets"]]
    calls = [count for _, count in data["buckets"]]
    total = sum(calls) or 1
    growth = uppers[1] / uppers[0] if len(uppers) > 1 else 2
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.stairs(
        [100 * count / total for count in calls],
        [uppers[0] / growth] + uppers,
        fill=True,
        alpha=0.6,
    )
    colors = iter(plt.cm.Reds([0.45, 0.6, 0.75, 0.9]))
    for name, value in data["percentiles_us"].items():
        ax.axvline(value, color=next(colors), linestyle="--", label=f"{name}  {value:,.0f} µs")
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(ticker.LogLocator(subs=(1, 2, 5)))
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:,.0f}"))
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    ax.set_title(f"{data['what']}: {data['calls']:,} calls", fontsize=10)
    ax.set_xlabel("latency (µs)")
    ax.set_ylabel("calls (%)")
    ax.legend(fontsize=8)
    ax.grid(True, alpha=0.3)
    save(fig, target)


def rss_plot(source: Path, target: Path) -> None:
    """{"process", "points": [[seconds, KiB], ...]}, and where the run read
    one beside it, "gauge": {"name", "points": [[seconds, value], ...]},
    drawn on a second axis."""
    data = json.loads(source.read_text())
    name = source.stem.removesuffix("_rss")
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot(
        [secs for secs, _ in data["points"]],
        [kib / 1024 for _, kib in data["points"]],
        marker=".",
        label="RSS",
    )
    ax.set_title(f"{name}: {data['process']} resident memory")
    ax.set_xlabel("seconds")
    ax.set_ylabel("RSS (MiB)")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    gauge = data.get("gauge")
    if gauge and gauge["points"]:
        other = ax.twinx()
        other.plot(
            [secs for secs, _ in gauge["points"]],
            [value for _, value in gauge["points"]],
            color="tab:orange",
            label=gauge["name"],
        )
        other.set_ylabel(gauge["name"])
        other.set_ylim(bottom=0)
        other.yaxis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:,.0f}"))
        lines = ax.get_lines() + other.get_lines()
        ax.legend(lines, [line.get_label() for line in lines], fontsize=8, loc="lower right")
    save(fig, target)


def save(fig, target: Path) -> None:
    fig.tight_layout()
    fig.savefig(target, dpi=100)
    plt.close(fig)
    print(f"plot: {target}")


def main() -> None:
    directory = Path(sys.argv[1] if len(sys.argv) > 1 else "target/bench")
    for pattern, plot in (("*_latency.json", latency_plot), ("*_rss.json", rss_plot)):
        for source in sorted(directory.glob(pattern)):
            plot(source, source.with_suffix(".png"))


if __name__ == "__main__":
    main()
