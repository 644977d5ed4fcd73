"""``report.html``: one self-contained page of a run report (tables and plots), beside ``report.json``.

The page is built from the report dict alone (what ``report.json`` holds) and the plot files, which it
embeds as base64 ``data:`` PNGs. It has no script, no stylesheet or font from elsewhere and no external
URL; a Content-Security-Policy (``default-src 'none'``) makes the browser refuse any request, so the
page opens the same offline, from a mail attachment or a CI artifact. Every text taken from the run
(env id, model, agent names, reasons, warnings, config values) is HTML-escaped.

Tables (each with an ``id``, so tests and scripts can find them): ``run`` (what ran), ``latency``
(percentiles of tick latency, decide round trip, start lateness and every stage, ms), ``outcomes``
(count and share of every outcome, misses and call counts), ``warnings``, ``episodes``, and where the
report has them ``agents`` (one row per agent), ``agent_spread``, ``crowd`` (replicas, endpoints, the
router's figures) and ``cascade``/``reliability``; the config and the service, client and world blocks
sit folded at the end.
Numbers are written by ``fmt``: at most 3 decimals, trailing zeros dropped, ``–`` for none.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from html import escape
from pathlib import Path
from typing import Any

from tickcall.control_loop.records import OUTCOMES

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
MAX_EPISODE_ROWS = 100  # episodes listed one per row; the rest are counted

STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em auto; max-width: 1280px; color: #1d1d1f; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: .5em 0; font-size: 13px; }
th, td { border: 1px solid #d0d4da; padding: 2px 8px; text-align: right; }
th { background: #f1f3f5; } td.t, th.t { text-align: left; }
tr.worst td { background: #fde2e4; }
ul.warn li { color: #8a1c1c; } img { max-width: 100%; border: 1px solid #eee; }
figure { margin: 1em 0; } figcaption { font-size: 12px; color: #555; }
pre { background: #f6f8fa; padding: .6em; overflow-x: auto; font-size: 12px; }
"""

PLOT_CAPTIONS = {
    "timeline": "Latency of every tick (every agent-tick in a crowd run) with the deadline and tick latency "
    "P50/P90; the ticks that were not ok, one row per reason; each agent's outcome per tick.",
    "agents": "Per agent: latency P90 (bars), P50 and decide P90 (markers), the deadline; misses below.",
    "latency_cdf": "CDF of tick latency and of each stage, with the deadline and tick latency P50/P90.",
}


def fmt(value: Any) -> str:
    """A table cell's text (not yet escaped): ``–`` for None, numbers with at most 3 decimals."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        text = f"{value:.3f}".rstrip("0").rstrip(".")
        return "0" if text in ("-0", "") else text
    return str(value)


def _cell(value: Any, tag: str = "td") -> str:
    cls = "" if isinstance(value, int | float) and not isinstance(value, bool) else ' class="t"'
    return f"<{tag}{cls}>{escape(fmt(value))}</{tag}>"


def table(table_id: str, head: Sequence[str], rows: Iterable[Sequence[Any]], row_class: Any = None) -> str:
    """An HTML table; ``row_class(row) -> str | None`` may mark rows (``worst``)."""
    out = [f'<table id="{escape(table_id)}"><thead><tr>']
    out += [
        f'<th class="t">{escape(h)}</th>' if i == 0 else f"<th>{escape(h)}</th>" for i, h in enumerate(head)
    ]
    out.append("</tr></thead><tbody>")
    for row in rows:
        cls = row_class(row) if row_class else None
        out.append(f'<tr class="{escape(cls)}">' if cls else "<tr>")
        out += [_cell(v) for v in row]
        out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _pairs(table_id: str, pairs: Iterable[tuple[str, Any]]) -> str:
    return table(table_id, ["", "value"], [(k, v) for k, v in pairs if v is not None])


def _run_table(report: Mapping[str, Any]) -> str:
    keys = [
        ("env", "env"),
        ("backend", "backend"),
        ("model", "model"),
        ("rate (Hz)", "rate_hz"),
        ("deadline (ms)", "deadline_ms"),
        ("agents", "agent_count"),
        ("loop ticks", "loop_ticks"),
        ("ticks (agent-ticks)" if report.get("agent_count") else "ticks", "ticks"),
        ("elapsed (s)", "elapsed_s"),
        ("achieved rate (Hz)", "achieved_hz"),
        (
            "decision rate per agent (Hz)" if report.get("agent_count") else "decision rate (Hz)",
            "decision_hz",
        ),
        ("decisions per second, all agents", "decisions_per_s"),
        ("jitter (ms)", "jitter_ms"),
        ("drift (ms)", "drift_ms"),
        ("stopped", "stopped"),
        ("stray replies", "stray_replies"),
        ("created (UTC)", "created_utc"),
    ]
    return _pairs("run", ((label, report.get(key)) for label, key in keys))


def _latency_table(report: Mapping[str, Any]) -> str:
    stats = ("n", "p50", "p90", "p99", "max", "mean")
    rows = []
    stages = dict(report.get("stages_ms") or {})
    named = [
        ("tick latency (ok ticks)", report.get("latency_ms")),
        ("decide round trip (every reply)", stages.pop("rtt", None)),
        ("start lateness", report.get("lateness_ms")),
    ]
    named += [(name.replace("_", " "), block) for name, block in stages.items()]
    for label, block in named:
        if isinstance(block, Mapping):
            rows.append([label, *(block.get(s) for s in stats)])
    return table("latency", ["ms", *stats], rows)


def _outcomes_tables(report: Mapping[str, Any]) -> str:
    outcomes = dict(report.get("outcomes") or {})
    total = sum(outcomes.values())
    rows = [
        (o, outcomes.get(o, 0), round(100 * outcomes.get(o, 0) / total, 2) if total else None)
        for o in OUTCOMES
    ]
    rows.append(("total", total, 100.0 if total else None))
    calls = report.get("calls") or {}
    counts = [
        ("deadline misses", report.get("deadline_misses")),
        ("longest miss streak", report.get("longest_miss_streak")),
        ("missed periods", report.get("missed_periods")),
        ("skipped (in flight)", report.get("skipped_in_flight")),
        ("fallback actions", report.get("fallback_actions")),
        ("no observation", report.get("no_observation")),
        ("legal calls", calls.get("legal")),
        ("illegal calls", calls.get("illegal")),
        ("no call", calls.get("no_call")),
    ]
    return table("outcomes", ["outcome", "ticks", "share (%)"], rows) + _pairs("misses", counts)


def _agents_tables(report: Mapping[str, Any]) -> str:
    agents = report.get("agents")
    if not isinstance(agents, Mapping) or not agents:
        return ""
    spread = report.get("agent_spread") or {}
    worst = (spread.get("latency_p90_ms") or {}).get("worst_agent") if len(agents) > 1 else None
    head = ["agent", "ticks", *OUTCOMES, "misses", "longest streak"]
    head += ["decide P50", "decide P90", "latency P50", "latency P90", "calls per tool"]
    rows = []
    for name, b in agents.items():
        outcomes = b.get("outcomes") or {}
        decide, latency = b.get("decide_ms") or {}, b.get("latency_ms") or {}
        tools = ", ".join(f"{tool} {n}" for tool, n in (b.get("calls_per_tool") or {}).items())
        rows.append(
            [name, b.get("ticks"), *(outcomes.get(o, 0) for o in OUTCOMES), b.get("deadline_misses")]
            + [b.get("longest_miss_streak"), decide.get("p50"), decide.get("p90")]
            + [latency.get("p50"), latency.get("p90"), tools or None]
        )
    out = [
        "<h2>Per agent</h2>",
        "<p>Times in ms. Decide: the round trip of the agent's decide requests (every reply); latency: "
        "observation taken to call dispatched (ok ticks). The agent with the worst latency P90 is marked.</p>",
        table("agents", head, rows, row_class=lambda row: "worst" if row[0] == worst else None),
    ]
    spread_rows = []
    for label, key in (("latency P90 (ms)", "latency_p90_ms"), ("decide P90 (ms)", "decide_p90_ms")):
        s = spread.get(key) or {}
        spread_rows.append([label, s.get("worst"), s.get("worst_agent"), s.get("best"), s.get("best_agent")])
    misses = spread.get("deadline_misses") or {}
    spread_rows.append(
        ["deadline misses", misses.get("max"), misses.get("max_agent"), misses.get("min"), None]
    )
    out.append(table("agent_spread", ["spread", "worst", "worst agent", "best", "best agent"], spread_rows))
    return "".join(out)


def _warnings(report: Mapping[str, Any], problems: Sequence[str]) -> list[str]:
    lines = [str(w) for w in report.get("warnings") or []]
    for key in ("observation_warning", "call_warning", "loop_died"):
        if report.get(key):
            lines.append(f"{key.replace('_', ' ')}: {report[key]}")
    return lines + [str(p) for p in problems]


def _episodes_table(report: Mapping[str, Any]) -> str:
    episodes = [e for e in report.get("episodes") or [] if isinstance(e, Mapping)]
    if not episodes:
        return "<p>No episode finished.</p>"
    returns = [float(e.get("return", 0.0)) for e in episodes]
    head = _pairs(
        "episode_summary",
        [("episodes", len(episodes)), ("mean return", round(sum(returns) / len(returns), 4))]
        + [("episode in progress", report.get("episode_in_progress"))],
    )
    rows = [(i, e.get("return"), e.get("length")) for i, e in enumerate(episodes[:MAX_EPISODE_ROWS])]
    more = len(episodes) - MAX_EPISODE_ROWS
    note = f"<p>… and {more} more episodes (report.json lists them all).</p>" if more > 0 else ""
    return head + table("episodes", ["episode", "return", "length"], rows) + note


def _cascade_tables(report: Mapping[str, Any]) -> str:
    c = report.get("cascade")
    if not isinstance(c, Mapping):
        return ""
    out = ["<h2>Cascade</h2>"]
    keys = ("ticks", "small_share", "big_share", "none_share", "threshold", "threshold_source")
    keys += ("max_age_ms", "big_rate_hz", "intent", "big_model")
    out.append(_pairs("cascade", ((k.replace("_", " "), c.get(k)) for k in keys)))
    reasons = c.get("reasons") or {}
    if reasons:
        out.append(table("cascade_reasons", ["route reason", "ticks"], list(reasons.items())))
    rel = c.get("reliability") or {}
    bins = [b for b in rel.get("bins") or [] if isinstance(b, Mapping)]
    if bins:
        out.append(
            f"<p>Reliability: {escape(fmt(rel.get('pairs')))} pairs, agreement {escape(fmt(rel.get('agreement')))}, "
            f"suggested threshold {escape(fmt(rel.get('suggested_threshold')))} "
            f"(target {escape(fmt(rel.get('target')))}).</p>"
        )
        rows = [
            (f"{fmt(b.get('lo'))}–{fmt(b.get('hi'))}", b.get("n"), b.get("agree"), b.get("agreement"))
            for b in bins
        ]
        out.append(table("reliability", ["confidence", "pairs", "agree", "agreement"], rows))
    return "".join(out)


def _compact(value: Any, limit: int = 400) -> Any:
    """A table cell for any JSON value: scalars as they are, lists and dicts as compact JSON (cut)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    text = json.dumps(value, default=str, separators=(", ", ": "))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _crowd_table(report: Mapping[str, Any]) -> str:
    """The run's ``crowd`` block (agents asked for and run, replicas, endpoints, the router's figures)."""
    c = report.get("crowd")
    if not isinstance(c, Mapping) or not c:
        return ""
    rows = [(str(k).replace("_", " "), _compact(v)) for k, v in c.items()]
    return "<h2>Crowd</h2>" + table("crowd", ["", "value"], rows)


def _raw_blocks(report: Mapping[str, Any]) -> str:
    """What ran, as ``report.json`` holds it, folded: the config and the service, client and world blocks."""
    out = []
    for key in ("config", "service", "client", "world"):
        if isinstance(report.get(key), Mapping) and report[key]:
            text = json.dumps(report[key], indent=2, sort_keys=True, default=str)
            out.append(f"<details><summary>{escape(key)}</summary><pre>{escape(text)}</pre></details>")
    return "<h2>What ran</h2>" + "".join(out) if out else ""


def _image(kind: str, path: str | os.PathLike) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    caption = PLOT_CAPTIONS.get(kind, kind)
    return (
        f'<figure id="plot-{escape(kind)}"><img alt="{escape(kind)} plot" src="data:image/png;base64,{data}">'
        f"<figcaption>{escape(caption)}</figcaption></figure>"
    )


def render_report_html(
    report: Mapping[str, Any],
    images: Mapping[str, str | os.PathLike] | None = None,
    problems: Sequence[str] = (),
) -> str:
    """The page's text: ``report`` (a ``report.json`` dict), ``images`` ``{kind: png path}`` embedded in
    the order timeline, agents, latency CDF, then any other; ``problems``: lines added to the warnings."""
    images = dict(images or {})
    parts = [str(report.get(k)) for k in ("env", "backend", "model") if report.get(k)]
    title = "tickcall run report" + (f": {' | '.join(parts)}" if parts else "")
    warnings = _warnings(report, problems)
    order = [k for k in ("timeline", "agents", "latency_cdf") if k in images]
    order += sorted(k for k in images if k not in order)
    body = [
        f"<h1>{escape(title)}</h1>",
        "<h2>Run</h2>",
        _run_table(report),
        "<h2>Warnings</h2>",
        (
            '<ul class="warn" id="warnings">' + "".join(f"<li>{escape(w)}</li>" for w in warnings) + "</ul>"
            if warnings
            else '<p id="warnings">None.</p>'
        ),
        "<h2>Outcomes</h2>",
        _outcomes_tables(report),
        "<h2>Latency</h2>",
        _latency_table(report),
        _agents_tables(report),
        _crowd_table(report),
        _cascade_tables(report),
        "<h2>Episodes</h2>",
        _episodes_table(report),
        "<h2>Plots</h2>",
        "".join(_image(k, images[k]) for k in order) or "<p>No plots (written with plots off).</p>",
    ]
    body.append(_raw_blocks(report))
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        f"<title>{escape(title)}</title><style>{STYLE}</style></head>\n<body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


def write_report_html(
    report: Mapping[str, Any],
    folder: str | os.PathLike,
    images: Mapping[str, str | os.PathLike] | None = None,
    *,
    problems: Sequence[str] = (),
) -> Path:
    """Write ``report.html`` into ``folder`` (see ``render_report_html``); returns its path."""
    path = Path(folder) / "report.html"
    path.write_text(render_report_html(report, images, problems), encoding="utf-8")
    return path
