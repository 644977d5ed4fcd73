"""Run reports: ``report.json``, ``ticks.jsonl`` (one record per tick), matplotlib plots, ``report.html``.

Files written into the report folder:

* ``report.json``   the summary (``stats.summarize`` + run metadata: env, model, backend, episodes); a
  crowd run (records carry ``agent``) adds ``agents`` and ``agent_spread`` (see ``stats``);
* ``ticks.jsonl``   every ``TickRecord`` as one JSON line, in tick order (a crowd run: agents in order);
* ``latency_cdf.png``  the CDF of tick latency and of each stage (ms, log x axis), with the deadline and
  the tick latency's P50/P90 drawn;
* ``timeline.png``  tick latency and round trip per tick (every agent-tick of a crowd run), the deadline
  and P50/P90 as lines, episode starts as vertical lines; the ticks that were not ``ok`` by reason (one
  row per kind of reason, markers by outcome); each agent's outcome per tick as a raster (one row per
  agent); in a cascade run, the model whose answer each tick got (``decided_by``);
* ``agents.png``    crowd runs only: each agent's latency and decide P90 (and misses), with the deadline;
* ``report.html``   one self-contained page of the above (``report_html``): tables and the plots embedded
  as base64 PNG, no scripts and no external URL.

Every legend sits outside the axes (right of them), so it never covers a curve. The plots draw numpy
arrays and rasters, not one artist per tick: the plots of 64 agents x 600 ticks (38,400 records) take
about 2 s on a 2-core CPU, the whole report about 2.5 s.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

from tickcall.control_loop.records import OUTCOMES, TickRecord
from tickcall.control_loop.report_html import write_report_html
from tickcall.control_loop.stats import agent_stats, by_agent, loop_clock, swap_marks

from tickcall.timing import percentile

OUTCOME_COLOURS = {
    "ok": "#2a9d4b",
    "late": "#e9a23b",
    "fallback": "#d1495b",
    "skipped": "#8d99ae",
    "error": "#6a0dad",
}
OUTCOME_MARKERS = {"late": "v", "fallback": "X", "skipped": "s", "error": "D", "ok": "o"}
SWAP_COLOUR = "#8338ec"  # hot swaps of the model's weights (stats.swap_marks)
DECIDER_COLOURS = {"small": "#3a86ff", "big": "#fb8500", "none": "#c9ccd1"}  # cascade runs (decided_by)
DEADLINE_COLOUR = "#c1121f"
MAX_REASON_ROWS = 8  # reason kinds drawn one per row; the rest share an "other" row
_FIELDS = tuple(f.name for f in fields(TickRecord))
LEGEND = {"loc": "upper left", "bbox_to_anchor": (1.065, 1.0), "borderaxespad": 0.0, "fontsize": 7}


def write_report(
    report: dict[str, Any],
    records: Sequence[TickRecord],
    folder: str | os.PathLike,
    *,
    plots: bool = True,
    html: bool = True,
) -> dict[str, str]:
    """Write the report files; returns ``{kind: path}``. Plot and page failures are reported (keys
    ``plot_error``, ``html_error``), not raised: they must not lose ``report.json`` and ``ticks.jsonl``."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, str] = {}
    report_path = out / "report.json"
    report_path.write_text(json.dumps(report, indent=2, sort_keys=False, default=str) + "\n")
    paths["report"] = str(report_path)
    ticks_path = out / "ticks.jsonl"
    with ticks_path.open("w") as fh:
        for r in sorted(records, key=lambda r: r.tick):
            fh.write(json.dumps(_shallow(r), default=str) + "\n")
    paths["ticks"] = str(ticks_path)
    if plots:
        try:
            paths.update(
                write_plots(records, out, title=_title(report), deadline_ms=report.get("deadline_ms"))
            )
        except Exception as exc:  # a broken matplotlib must not lose the report itself
            paths["plot_error"] = f"{type(exc).__name__}: {exc}"
    if html:
        try:
            images = {k: v for k, v in paths.items() if v.endswith(".png")}
            problems = [f"plots were not written: {paths['plot_error']}"] if "plot_error" in paths else []
            paths["html"] = str(write_report_html(report, out, images, problems=problems))
        except Exception as exc:
            paths["html_error"] = f"{type(exc).__name__}: {exc}"
    return paths


def _shallow(record: TickRecord) -> dict[str, Any]:
    """``record.to_dict()`` without its deep copy (``asdict``): the same JSON, 4x faster at 38,400 records."""
    return {name: getattr(record, name) for name in _FIELDS}


def read_ticks(folder: str | os.PathLike) -> list[TickRecord]:
    with (Path(folder) / "ticks.jsonl").open() as fh:
        return [TickRecord.from_dict(json.loads(line)) for line in fh if line.strip()]


def _title(report: dict[str, Any]) -> str:
    parts = [str(report.get(k)) for k in ("env", "backend", "model") if report.get(k)]
    rate = report.get("rate_hz")
    if rate:
        parts.append(f"{rate:g} Hz")
    if report.get("agent_count"):
        parts.append(f"{report['agent_count']} agents")
    return " | ".join(parts)


def reason_kind(record: TickRecord) -> str:
    """``outcome: reason`` with its numbers replaced by ``#`` (so "reply 71.2 ms after send" and "reply
    80.3 ms after send" are one kind), at most 56 characters: the rows of the timeline's reason panel."""
    text = " ".join(re.sub(r"\d+(\.\d+)?", "#", record.reason or "no reason given").split())  # one line
    if len(text) > 48:
        text = text[:47] + "…"
    return f"{record.outcome}: {text}"


def _stage_series(records: Sequence[TickRecord]) -> dict[str, list[float]]:
    series: dict[str, list[float]] = {
        "tick latency": [],
        "round trip": [],
        "start lateness": [],
        "dispatch": [],
        "observation age": [],
    }
    crowd = any(r.agent is not None for r in records)
    # the loop's own starts: one per tick (a crowd's agents share their tick's start)
    series["start lateness"] = [
        r.lateness_ms for r in (loop_clock(records) if crowd else records) if r.lateness_ms is not None
    ]
    for r in records:
        if r.outcome == "ok" and r.latency_ms is not None:
            series["tick latency"].append(r.latency_ms)
        if r.rtt_ms is not None:
            series["round trip"].append(r.rtt_ms)
        if r.dispatch_ms is not None:
            series["dispatch"].append(r.dispatch_ms)
        if r.obs_age_ms is not None:
            series["observation age"].append(r.obs_age_ms)
        for name, v in (r.stages_ms or {}).items():
            if isinstance(v, int | float):
                series.setdefault(f"service {name}", []).append(float(v))
    return {k: sorted(v) for k, v in series.items() if v}


def _plain(text: str) -> str:
    """Text for matplotlib that is never read as mathtext (a reason or an agent name may hold ``$``)."""
    return text.replace("$", r"\$")


def _marks(
    ax: Any, values: list[float], deadline_ms: float | None, *, vertical: bool
) -> list[tuple[float, str]]:
    """The deadline and the tick latency's P50/P90 as lines with legend entries; returns ``(value, short
    label)`` for each, for ``_edge_labels``."""
    line = ax.axvline if vertical else ax.axhline
    marks = []
    if deadline_ms:
        line(
            deadline_ms,
            color=DEADLINE_COLOUR,
            ls="--",
            lw=1.6,
            label=f"deadline {deadline_ms:g} ms",
            zorder=3,
        )
        marks.append((float(deadline_ms), "deadline"))
    if values:
        for q, style in ((50, ":"), (90, "-.")):
            v = percentile(values, q)
            line(v, color="#222222", ls=style, lw=1.2, label=f"tick latency P{q} {v:.2f} ms", zorder=3)
            marks.append((v, f"P{q}"))
    return marks


def _edge_labels(ax: Any, marks: list[tuple[float, str]]) -> None:
    """Short labels just right of the axes (between the data and the legend, never over a point), at the
    height of each horizontal mark; labels that would collide are moved apart."""
    if not marks:
        return
    lo, hi = ax.get_ylim()
    log = ax.get_yscale() == "log"

    def frac(v: float) -> float:
        if log:
            return (math.log10(max(v, 1e-9)) - math.log10(lo)) / (math.log10(hi) - math.log10(lo))
        return (v - lo) / (hi - lo)

    placed: list[float] = []
    for v, label in sorted(marks):
        y = frac(v)
        if not 0.0 <= y <= 1.0:
            continue
        if placed and y - placed[-1] < 0.045:
            y = placed[-1] + 0.045
        placed.append(y)
        ax.text(1.004, y, label, transform=ax.transAxes, fontsize=7, va="center", ha="left", clip_on=False)


def write_plots(
    records: Sequence[TickRecord], folder: Path, title: str = "", *, deadline_ms: float | None = None
) -> dict[str, str]:
    """``latency_cdf.png``, ``timeline.png`` and, for a crowd run, ``agents.png``; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = Path(folder)
    title = _plain(title)
    records = sorted(records, key=lambda r: r.tick)
    latencies = [r.latency_ms for r in records if r.outcome == "ok" and r.latency_ms is not None]
    paths = {}

    # ---- CDF per stage
    fig, ax = plt.subplots(figsize=(10, 5), layout="constrained")
    palette = [
        c for c in plt.get_cmap("tab10").colors if c != plt.get_cmap("tab10").colors[3]
    ]  # red: deadline
    for i, (name, vals) in enumerate(_stage_series(records).items()):
        ys = [(k + 1) / len(vals) for k in range(len(vals))]
        ax.step(
            [max(v, 1e-3) for v in vals],
            ys,
            where="post",
            label=f"{name} (n={len(vals)})",
            color=palette[i % 9],
            ls=("-", "--", ":")[(i // 9) % 3],  # more stages than colours: the next ones dashed
        )
    _marks(ax, latencies, deadline_ms, vertical=True)
    ax.set_xscale("log")
    ax.set_xlabel("ms")
    ax.set_ylabel("fraction of ticks")
    ax.set_ylim(0, 1.01)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(**LEGEND)
    ax.set_title(f"Latency CDF per stage  {title}".strip(), fontsize=9)
    p = folder / "latency_cdf.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths["latency_cdf"] = str(p)

    paths["timeline"] = str(_timeline(plt, records, latencies, folder, title, deadline_ms))
    if any(r.agent is not None for r in records):
        paths["agents"] = str(_agents_plot(plt, records, latencies, folder, title, deadline_ms))
    return paths


def _timeline(
    plt: Any,
    records: list[TickRecord],
    latencies: list[float],
    folder: Path,
    title: str,
    deadline_ms: float | None,
) -> Path:
    import numpy as np
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    crowd = any(r.agent is not None for r in records)
    cascade = any(r.decided_by is not None for r in records)
    groups = by_agent(records) if crowd else {"": records}
    n_agents = len(groups)
    t_lo = min((r.tick for r in records), default=0)
    t_hi = max((r.tick for r in records), default=0)
    width = t_hi - t_lo + 1

    # the kinds of reason of the ticks that were not ok (the second panel's rows)
    kinds: dict[str, list[TickRecord]] = {}
    for r in records:
        if r.outcome != "ok":
            kinds.setdefault(reason_kind(r), []).append(r)
    ranked = sorted(kinds.items(), key=lambda kv: (-len(kv[1]), kv[0]))
    if len(ranked) > MAX_REASON_ROWS:
        rest = [r for _, recs in ranked[MAX_REASON_ROWS - 1 :] for r in recs]
        ranked = ranked[: MAX_REASON_ROWS - 1] + [
            (f"other reasons ({len(ranked) - MAX_REASON_ROWS + 1} kinds)", rest)
        ]
    raster_h = 1.0 if n_agents == 1 else min(3.0, 0.8 + 0.04 * n_agents)
    heights = [4.0, 0.5 + 0.25 * len(ranked), raster_h] + ([raster_h] if cascade else [])
    fig, axes = plt.subplots(
        len(heights),
        1,
        figsize=(12, 2.2 + sum(heights)),
        sharex=True,
        layout="constrained",
        gridspec_kw={"height_ratios": heights},
    )
    ax1, ax2, ax3 = axes[0], axes[1], axes[2]

    # ---- latency of every (agent-)tick, the deadline and P50/P90
    size = 3 if len(records) <= 2000 else 1.5
    alpha = 1.0 if len(records) <= 2000 else 0.35
    for label, attr, style in (("round trip", "rtt_ms", "."), ("tick latency (ok)", "latency_ms", "x")):
        pts = np.array(
            [(r.tick, getattr(r, attr)) for r in records if getattr(r, attr) is not None], dtype=float
        ).reshape(-1, 2)
        if len(pts):
            ax1.plot(
                pts[:, 0], pts[:, 1], style, markersize=size, alpha=alpha, label=f"{label} (n={len(pts)})"
            )
    marks = _marks(ax1, latencies, deadline_ms, vertical=False)
    ys = [r.rtt_ms for r in records if r.rtt_ms is not None] + latencies
    if ys and min(ys) > 0:
        p90 = percentile(ys, 90)
        # log when a few huge replies, or a deadline far above the data, would flatten the points
        if max(ys) > 20 * max(p90, deadline_ms or 0.0) or (deadline_ms or 0.0) > 8 * max(ys):
            ax1.set_yscale("log")
    _edge_labels(ax1, marks)
    ax1.set_ylabel("ms")
    ax1.grid(True, alpha=0.3)
    ax1.set_title(f"Per-tick latency, reasons and outcomes  {title}".strip(), fontsize=9)

    # ---- episode starts (the tick where an agent's episode number changes)
    starts: set[int] = set()
    for recs in groups.values():
        prev = None
        for r in recs:
            if prev is not None and r.episode != prev:
                starts.add(r.tick)
            prev = r.episode
    if starts:
        xs = sorted(starts)
        for i, ax in enumerate(axes):
            ax.vlines(
                xs, 0, 1, transform=ax.get_xaxis_transform(), colors="#457b9d", lw=0.9, alpha=0.8,
                label=f"episode start ({len(xs)})" if i == 0 else None,
            )  # fmt: skip
    # ---- hot swaps of the (small) model's weights (the tick whose reply came from the new weights)
    swaps = swap_marks(records)
    if swaps:
        xs = [m["tick"] for m in swaps]
        for i, ax in enumerate(axes):
            ax.vlines(
                xs, 0, 1, transform=ax.get_xaxis_transform(), colors=SWAP_COLOUR, lw=1.4, ls="--",
                label=f"weights swapped ({len(xs)})" if i == 0 else None,
            )  # fmt: skip
    ax1.legend(**LEGEND)

    # ---- ticks that were not ok, one row per kind of reason, markers by outcome
    for row, (kind, recs) in enumerate(ranked):
        outcome = max(OUTCOMES, key=lambda o: sum(1 for r in recs if r.outcome == o))
        tick_set = sorted({r.tick for r in recs})  # a crowd's agents share one mark per tick
        ax2.plot(
            tick_set, [row] * len(tick_set), OUTCOME_MARKERS[outcome], color=OUTCOME_COLOURS[outcome],
            markersize=4 if len(tick_set) < 500 else 2, linestyle="none",
            label=_plain(f"{row + 1}. {kind} ({len(recs)})"),
        )  # fmt: skip
    ax2.set_yticks(range(len(ranked)), [str(i + 1) for i in range(len(ranked))], fontsize=7)
    ax2.set_ylim(len(ranked) - 0.5 if ranked else 0.5, -0.5)
    ax2.set_ylabel("reason", fontsize=8)
    ax2.grid(True, axis="x", alpha=0.3)
    if ranked:
        ax2.legend(
            **LEGEND,
            title="not ok: reason (agent-ticks)" if crowd else "not ok: reason (ticks)",
            title_fontsize=7,
        )
    else:
        ax2.text(0.5, 0.5, "every tick was ok", transform=ax2.transAxes, ha="center", va="center", fontsize=8)

    # ---- outcome raster: one row per agent, one column per tick
    def raster(ax: Any, codes: dict[str, int], colours: list[str], field: Any, legend: list[Any]) -> None:
        grid = np.full((n_agents, width), -1, dtype=np.int16)
        for row, recs in enumerate(groups.values()):
            cols = np.fromiter((r.tick - t_lo for r in recs), dtype=np.int64, count=len(recs))
            grid[row, cols] = np.fromiter((codes[field(r)] for r in recs), dtype=np.int16, count=len(recs))
        cmap = ListedColormap(["#ffffff", *colours])  # -1: no record for that agent and tick
        ax.imshow(
            grid + 1, cmap=cmap, vmin=0, vmax=len(colours), aspect="auto", interpolation="nearest",
            extent=(t_lo - 0.5, t_hi + 0.5, n_agents - 0.5, -0.5),
        )  # fmt: skip
        if n_agents == 1:
            ax.set_yticks([])
        else:
            step = max(1, n_agents // 8)
            names = list(groups)
            ax.set_yticks(
                range(0, n_agents, step), [_plain(names[i]) for i in range(0, n_agents, step)], fontsize=6
            )
            ax.set_ylabel("agent", fontsize=8)
        ax.legend(handles=legend, **LEGEND)

    counts = {o: sum(1 for r in records if r.outcome == o) for o in OUTCOMES}
    raster(
        ax3,
        {o: i for i, o in enumerate(OUTCOMES)},
        [OUTCOME_COLOURS[o] for o in OUTCOMES],
        lambda r: r.outcome,
        [Patch(color=OUTCOME_COLOURS[o], label=f"{o} ({counts[o]})") for o in OUTCOMES if counts[o]],
    )
    last = ax3
    if cascade:
        ax4 = axes[3]
        deciders = list(DECIDER_COLOURS)
        who = {d: sum(1 for r in records if (r.decided_by or "none") == d) for d in deciders}
        raster(
            ax4,
            {d: i for i, d in enumerate(deciders)},
            [DECIDER_COLOURS[d] for d in deciders],
            lambda r: r.decided_by if r.decided_by in DECIDER_COLOURS else "none",
            [Patch(color=DECIDER_COLOURS[d], label=f"decided by {d} ({who[d]})") for d in deciders if who[d]],
        )
        last = ax4
    last.set_xlabel("tick")
    last.set_xlim(t_lo - 0.5, t_hi + 0.5)
    p = folder / "timeline.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    return p


def _agents_plot(
    plt: Any,
    records: list[TickRecord],
    latencies: list[float],
    folder: Path,
    title: str,
    deadline_ms: float | None,
) -> Path:
    """Per agent: latency P90 (bars), latency P50 and decide P90 (markers), and deadline misses."""
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    blocks = {name: agent_stats(recs) for name, recs in by_agent(records).items()}
    names = list(blocks)
    x = np.arange(len(names))

    def col(stat: str, key: str) -> Any:
        return np.array(
            [np.nan if b[stat][key] is None else b[stat][key] for b in blocks.values()], dtype=float
        )

    fig, (ax1, ax2) = plt.subplots(
        2, 1, figsize=(12, 6), sharex=True, layout="constrained", gridspec_kw={"height_ratios": [3, 1.2]}
    )
    ax1.bar(x, np.nan_to_num(col("latency_ms", "p90")), width=0.8, color="#8ecae6", label="latency P90 (bar)")
    ax1.plot(x, col("latency_ms", "p50"), "_", color="#023047", markersize=8, mew=2, label="latency P50")
    ax1.plot(x, col("decide_ms", "p90"), "o", color="#fb8500", markersize=3, label="decide P90 (round trip)")
    if deadline_ms:
        ax1.axhline(deadline_ms, color=DEADLINE_COLOUR, ls="--", lw=1.4, label=f"deadline {deadline_ms:g} ms")
    if latencies:
        v = percentile(latencies, 90)
        ax1.axhline(v, color="#222222", ls="-.", lw=1.1, label=f"all agent-ticks latency P90 {v:.2f} ms")
    ax1.set_ylabel("ms")
    ax1.grid(True, axis="y", alpha=0.3)
    ax1.legend(**LEGEND)
    ax1.set_title(f"Per-agent latency  {title}".strip(), fontsize=9)
    misses = np.array([b["deadline_misses"] for b in blocks.values()], dtype=float)
    ax2.bar(
        x,
        misses,
        width=0.8,
        color=OUTCOME_COLOURS["fallback"],
        label=f"deadline misses ({int(misses.sum())})",
    )
    ax2.set_ylabel("misses")
    ax2.set_ylim(0, max(1.0, float(misses.max(initial=0.0))) * 1.1)
    ax2.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax2.grid(True, axis="y", alpha=0.3)
    ax2.legend(**LEGEND)
    step = max(1, len(names) // 32)
    ax2.set_xticks(x[::step], [_plain(n) for n in names[::step]], rotation=90, fontsize=6)
    ax2.set_xlim(-0.6, len(names) - 0.4)
    p = folder / "agents.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    return p
