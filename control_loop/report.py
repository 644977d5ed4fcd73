"""Run reports: ``report.json``, ``ticks.jsonl`` (one record per tick) and matplotlib plots.

Files written into the report folder:

* ``report.json``   the summary (``stats.summarize`` + run metadata: env, model, backend, episodes);
* ``ticks.jsonl``   every ``TickRecord`` as one JSON line, in tick order;
* ``latency_cdf.png``  the CDF of tick latency and of each stage (ms, log x axis);
* ``timeline.png``  tick latency and round trip per tick, with each tick's outcome as a coloured strip
  (and, in a cascade run, a second strip: the model whose answer each tick got, ``decided_by``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tickcall.control_loop.records import OUTCOMES, TickRecord

OUTCOME_COLOURS = {
    "ok": "#2a9d4b",
    "late": "#e9a23b",
    "fallback": "#d1495b",
    "skipped": "#8d99ae",
    "error": "#6a0dad",
}
DECIDER_COLOURS = {"small": "#3a86ff", "big": "#fb8500", "none": "#c9ccd1"}  # cascade runs (decided_by)


def write_report(
    report: dict[str, Any], records: Sequence[TickRecord], folder: str | os.PathLike, *, plots: bool = True
) -> dict[str, str]:
    """Write the report files; returns ``{kind: path}``. Plot failures are reported, not raised."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, str] = {}
    report_path = out / "report.json"
    report_path.write_text(json.dumps(report, indent=2, sort_keys=False, default=str) + "\n")
    paths["report"] = str(report_path)
    ticks_path = out / "ticks.jsonl"
    with ticks_path.open("w") as fh:
        for r in sorted(records, key=lambda r: r.tick):
            fh.write(json.dumps(r.to_dict(), default=str) + "\n")
    paths["ticks"] = str(ticks_path)
    if plots:
        try:
            paths.update(write_plots(records, out, title=_title(report)))
        except Exception as exc:  # a broken matplotlib must not lose the report itself
            paths["plot_error"] = f"{type(exc).__name__}: {exc}"
    return paths


def read_ticks(folder: str | os.PathLike) -> list[TickRecord]:
    with (Path(folder) / "ticks.jsonl").open() as fh:
        return [TickRecord.from_dict(json.loads(line)) for line in fh if line.strip()]


def _title(report: dict[str, Any]) -> str:
    parts = [str(report.get(k)) for k in ("env", "backend", "model") if report.get(k)]
    rate = report.get("rate_hz")
    if rate:
        parts.append(f"{rate:g} Hz")
    return " | ".join(parts)


def _stage_series(records: Sequence[TickRecord]) -> dict[str, list[float]]:
    series: dict[str, list[float]] = {
        "tick latency": [],
        "round trip": [],
        "start lateness": [],
        "dispatch": [],
        "observation age": [],
    }
    for r in records:
        if r.outcome == "ok" and r.latency_ms is not None:
            series["tick latency"].append(r.latency_ms)
        if r.rtt_ms is not None:
            series["round trip"].append(r.rtt_ms)
        if r.lateness_ms is not None:
            series["start lateness"].append(r.lateness_ms)
        if r.dispatch_ms is not None:
            series["dispatch"].append(r.dispatch_ms)
        if r.obs_age_ms is not None:
            series["observation age"].append(r.obs_age_ms)
        for name, v in (r.stages_ms or {}).items():
            if isinstance(v, int | float):
                series.setdefault(f"service {name}", []).append(float(v))
    return {k: sorted(v) for k, v in series.items() if v}


def write_plots(records: Sequence[TickRecord], folder: Path, title: str = "") -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = {}
    records = sorted(records, key=lambda r: r.tick)

    # ---- CDF per stage
    fig, ax = plt.subplots(figsize=(8, 5))
    for name, vals in _stage_series(records).items():
        ys = [(i + 1) / len(vals) for i in range(len(vals))]
        ax.step([max(v, 1e-3) for v in vals], ys, where="post", label=f"{name} (n={len(vals)})")
    ax.set_xscale("log")
    ax.set_xlabel("ms")
    ax.set_ylabel("fraction of ticks")
    ax.set_ylim(0, 1.01)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(f"Latency CDF per stage  {title}".strip(), fontsize=9)
    fig.tight_layout()
    p = folder / "latency_cdf.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths["latency_cdf"] = str(p)

    # ---- timeline
    cascade = any(r.decided_by is not None for r in records)
    rows = 3 if cascade else 2
    fig, axes = plt.subplots(
        rows,
        1,
        figsize=(10, 5 + (1.5 if cascade else 0)),
        sharex=True,
        gridspec_kw={"height_ratios": [4, 1, 1][:rows]},
    )
    ax1, ax2 = axes[0], axes[1]
    ticks = [r.tick for r in records]
    for label, attr, style in (("round trip", "rtt_ms", "."), ("tick latency", "latency_ms", "x")):
        xs = [r.tick for r in records if getattr(r, attr) is not None]
        ys = [getattr(r, attr) for r in records if getattr(r, attr) is not None]
        if xs:
            ax1.plot(xs, ys, style, markersize=3, label=label)
    ax1.set_ylabel("ms")
    ax1.grid(True, alpha=0.3)
    ax1.legend(fontsize=8, loc="upper right")
    ax1.set_title(f"Per-tick latency and outcome  {title}".strip(), fontsize=9)
    for outcome in OUTCOMES:
        xs = [r.tick for r in records if r.outcome == outcome]
        if xs:
            ax2.bar(
                xs, [1] * len(xs), width=1.0, color=OUTCOME_COLOURS[outcome], label=f"{outcome} ({len(xs)})"
            )
    ax2.set_yticks([])
    ax2.set_xlabel("tick")
    if ticks:
        ax2.set_xlim(ticks[0] - 0.5, ticks[-1] + 0.5)
    ax2.legend(fontsize=7, ncol=len(OUTCOMES), loc="upper center", bbox_to_anchor=(0.5, -0.6))
    if cascade:
        ax3 = axes[2]
        for who, colour in DECIDER_COLOURS.items():
            xs = [r.tick for r in records if (r.decided_by or "none") == who]
            if xs:
                ax3.bar(xs, [1] * len(xs), width=1.0, color=colour, label=f"decided by {who} ({len(xs)})")
        ax3.set_yticks([])
        ax3.set_xlabel("tick")
        ax3.legend(fontsize=7, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.9))
        ax2.set_xlabel("")
    fig.tight_layout()
    p = folder / "timeline.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths["timeline"] = str(p)
    return paths
