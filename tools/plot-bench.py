#!/usr/bin/env python3
"""Plots the fan-out benchmark: onstage vs Janus vs the machine's raw UDP ceiling.

Reads, from one results folder (what scripts/bench-media writes):
  fanout-onstage.json, fanout-janus.json  `onstage-loadtest media --step-subscribers … --json`
  raw.json                                `onstage-loadtest raw --json`
and writes one PNG with three panels against subscribers: forwarded packets per
second per server core (with the raw ceilings as lines), server CPU %, and loss.

  python3 -m venv .venv-plot && .venv-plot/bin/pip install -r tools/requirements-plot.txt
  .venv-plot/bin/python tools/plot-bench.py bench-results docs/fanout.png
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

SERVERS = (("onstage", "fanout-onstage.json", "tab:blue"), ("Janus", "fanout-janus.json", "tab:orange"))
RAW_MODES = (("sendto", ":"), ("sendmmsg", "--"), ("gso", "-."))


def steps(path: Path) -> list[dict]:
    """The stepping run's per-step results, in subscriber order."""
    doc = json.loads(path.read_text())
    rows = []
    for step in doc.get("steps") or []:
        r = step["result"]
        rows.append({
            "subscribers": step["subscribers_per_stage"],
            "fwd_per_core": r.get("forwarded_packets_per_second_per_core") or 0,
            "cpu": r.get("server_cpu_percent_avg") or 0,
            "loss": max(r.get("loss_percent") or 0, r.get("frame_loss_percent") or 0),
            "p99": (r.get("latency_ms") or {}).get("p99"),
        })
    return sorted(rows, key=lambda row: row["subscribers"])


def pacing(path: Path) -> str:
    """How the run's publishers sent video."""
    factor = (json.loads(path.read_text()).get("plan") or {}).get("pacing_factor")
    if not factor:
        return "frames as bursts"
    return f"paced at {factor:g}× the bitrate"


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    results, out = Path(sys.argv[1]), Path(sys.argv[2])
    fig, (ax_rate, ax_cpu, ax_loss) = plt.subplots(1, 3, figsize=(16, 5))

    raw_path = results / "raw.json"
    if raw_path.exists():
        raw = json.loads(raw_path.read_text())
        for mode, style in RAW_MODES:
            pts = sorted((r["subscribers"], r["copies_per_cpu_s"]) for r in raw if r["mode"] == mode)
            if pts:
                xs, ys = zip(*pts)
                ax_rate.plot(xs, ys, style, color="grey", label=f"raw UDP ceiling ({mode})")

    # The run as published (publishers paced like a browser), and, where present,
    # the same run with each frame sent as one burst (`*-burst.json`).
    for name, file, colour in SERVERS:
        for path, style in ((results / file, "o-"), (results / file.replace(".json", "-burst.json"), "s--")):
            if not path.exists():
                continue
            rows = steps(path)
            if not rows:
                continue
            label = f"{name}, {pacing(path)}"
            xs = [r["subscribers"] for r in rows]
            ax_rate.plot(xs, [r["fwd_per_core"] for r in rows], style, color=colour, label=label)
            ax_cpu.plot(xs, [r["cpu"] for r in rows], style, color=colour, label=label)
            ax_loss.plot(xs, [r["loss"] for r in rows], style, color=colour, label=label)

    ax_rate.set(title="Forwarded packets/s per server core", xlabel="subscribers", ylabel="packets/s per core")
    ax_cpu.set(title="Server CPU (one core = 100%)", xlabel="subscribers", ylabel="%")
    ax_loss.set(title="Loss (packets or frames, the worse)", xlabel="subscribers", ylabel="%")
    ax_cpu.axhline(100, color="grey", linewidth=0.5)
    ax_loss.axhline(1, color="grey", linewidth=0.5)
    for ax in (ax_rate, ax_cpu, ax_loss):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    ax_rate.set_ylim(bottom=0)
    fig.suptitle("Scenario (a): 1 publisher (2.5 Mbit/s VP8 + Opus) → N subscribers, server pinned to one core")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
