"""The run report at fleet scale: per-agent statistics in ``report.json`` and ``report.html`` in a browser.

The report is the unit under test, so its input is synthetic: hand-written ``TickRecord`` lists shaped
like a crowd run (one record per agent per tick, ``agent`` set; ``control_loop.crowd`` makes them) and
like a single-agent run, with values chosen so every percentile can be checked by hand. The page is
opened in real headless Chromium (Debian's ``chromium``, as ``tests/test_http_browser.py`` does; skipped
without it): a probe script put in a *copy* of the page, ahead of the page's own Content-Security-Policy,
draws every image on a canvas (a full decode) and counts its colours, lists the resources the page
fetched and the requests the policy blocked, and writes the result into the DOM that ``--dump-dom``
prints. A negative control (a copy with
an external image and a broken one) shows that the probe reports both.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from tickcall.control_loop.records import TickRecord
from tickcall.control_loop.report import reason_kind, write_report
from tickcall.control_loop.report_html import fmt, render_report_html
from tickcall.control_loop.stats import cascade_summary, summarize

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium binary (apt-get install -y chromium; scripts/setup.sh --dev)"
)

EVIL = 'evil<img src="http://127.0.0.1:9/x.png">&'  # an agent name that is markup: it must stay text
SCRIPT_REASON = "illegal call: <script>document.title='pwned'</script>"
SINGLE_KEYS = {  # report.json's statistics of a single-agent run, exactly as before crowd runs existed
    "ticks", "rate_hz", "achieved_hz", "decision_hz", "elapsed_s", "latency_ms", "lateness_ms", "jitter_ms",
    "drift_ms", "stages_ms", "outcomes", "deadline_misses", "longest_miss_streak", "missed_periods",
    "skipped_in_flight", "fallback_actions", "no_observation", "observation_warning", "calls", "call_warning",
}  # fmt: skip


def _rec(tick: int, agent: str | None, outcome: str, rtt: float | None = None, **kw: Any) -> TickRecord:
    lat = kw.pop("latency", None)
    tool = kw.pop("tool", None)
    return TickRecord(
        tick=tick, scheduled_ms=tick * 100.0, lateness_ms=0.1 * (tick + 1), sent=outcome != "skipped",
        rtt_ms=rtt, latency_ms=lat, outcome=outcome, agent=agent, episode=0 if tick < 2 else 1,
        call={"name": tool, "arguments": {}} if tool else None, **kw,
    )  # fmt: skip


def crowd_records() -> list[TickRecord]:
    """4 agents x 4 ticks at 10 Hz (deadline 100 ms). Per agent (rtt = decide, lat = tick latency, ms):

    npc_0  ok 10/11 move, ok 20/21 move, ok 30/31 attack, late 150          misses 1
    npc_1  ok 5/6 wait, fallback, skipped (in flight), fallback              misses 3 in a row
    npc_10 error 8 (illegal call), ok 40/41 wait, ok 50/51 wait, ok 60/61 move   misses 0
    EVIL   ok 1/2, 2/3, 3/4, 4/5, all move                                   misses 0
    """
    recs = [
        _rec(0, "npc_0", "ok", 10.0, latency=11.0, tool="move"),
        _rec(1, "npc_0", "ok", 20.0, latency=21.0, tool="move"),
        _rec(2, "npc_0", "ok", 30.0, latency=31.0, tool="attack"),
        _rec(
            3, "npc_0", "late", 150.0, reason="reply 150.0 ms after send, past the deadline", fallback="hold"
        ),
        _rec(0, "npc_1", "ok", 5.0, latency=6.0, tool="wait"),
        _rec(1, "npc_1", "fallback", reason="no reply", fallback="hold"),
        _rec(2, "npc_1", "skipped", reason="in_flight"),
        _rec(3, "npc_1", "fallback", reason="no reply", fallback="hold"),
        _rec(0, "npc_10", "error", 8.0, tool="fly", reason=SCRIPT_REASON, fallback="hold"),
        _rec(1, "npc_10", "ok", 40.0, latency=41.0, tool="wait"),
        _rec(2, "npc_10", "ok", 50.0, latency=51.0, tool="wait"),
        _rec(3, "npc_10", "ok", 60.0, latency=61.0, tool="move"),
    ]
    recs += [_rec(t, EVIL, "ok", t + 1.0, latency=t + 2.0, tool="move") for t in range(4)]
    return recs


def single_records() -> list[TickRecord]:
    """One agent, 5 ticks: ok 10/12, ok 20/22, late 140, ok 30/32, error (no call)."""
    recs = [
        _rec(0, None, "ok", 10.0, latency=12.0, tool="move"),
        _rec(1, None, "ok", 20.0, latency=22.0, tool="move"),
        _rec(2, None, "late", 140.0, reason="superseded", fallback="hold"),
        _rec(3, None, "ok", 30.0, latency=32.0, tool="wait"),
        _rec(4, None, "error", 9.0, reason="no function chosen", fallback="hold"),
    ]
    return recs


def _report(records: list[TickRecord], elapsed_s: float) -> dict[str, Any]:
    return {
        "env": "tickcall/CrowdArena-v0",
        "backend": "noop",
        "model": None,
        "deadline_ms": 100.0,
        **summarize(records, 10.0, elapsed_s),
        "episodes": [{"return": 1.5, "length": 2}],
        "warnings": ["tick 3 started 60.0 ms late <b>not bold</b>"],
        "config": {"env": "tickcall/CrowdArena-v0", "agents": 4},
    }


# --------------------------------------------------------------------------- report.json


def test_crowd_report_json_has_exact_per_agent_stats(tmp_path):
    recs = crowd_records()
    paths = write_report(_report(recs, 0.4), recs, tmp_path / "r")
    rep = json.loads(Path(paths["report"]).read_text())
    assert list(rep["agents"]) == [EVIL, "npc_0", "npc_1", "npc_10"]  # natural order: npc_10 after npc_1
    assert rep["agents"]["npc_0"] == {
        "ticks": 4,
        "outcomes": {"ok": 3, "late": 1, "fallback": 0, "skipped": 0, "error": 0},
        "deadline_misses": 1,
        "longest_miss_streak": 1,
        # decide (every reply) 10, 20, 30, 150: P50 between 20 and 30; P90 at rank 2.7: 30 + 0.7 * 120
        "decide_ms": {"n": 4, "p50": 25.0, "p90": 114.0, "max": 150.0},
        # latency (ok ticks) 11, 21, 31: P90 at rank 1.8: 21 + 0.8 * 10
        "latency_ms": {"n": 3, "p50": 21.0, "p90": 29.0, "max": 31.0},
        "calls_per_tool": {"move": 2, "attack": 1},
    }
    one = rep["agents"]["npc_1"]
    assert one["deadline_misses"] == 3 and one["longest_miss_streak"] == 3
    assert one["decide_ms"] == {"n": 1, "p50": 5.0, "p90": 5.0, "max": 5.0} and one["calls_per_tool"] == {
        "wait": 1
    }
    ten = rep["agents"]["npc_10"]
    assert ten["outcomes"]["error"] == 1 and ten["deadline_misses"] == 0
    assert ten["decide_ms"]["p90"] == 57.0 and ten["latency_ms"]["p90"] == 59.0  # 50 + 0.7*10; 51 + 0.8*10
    assert ten["calls_per_tool"] == {"wait": 2, "move": 1}  # the illegal call is not counted
    assert rep["agents"][EVIL]["decide_ms"]["p90"] == 3.7 and rep["agents"][EVIL]["latency_ms"]["p90"] == 4.7

    # overall: all 16 agent-ticks; the loop clock over its 4 ticks
    assert rep["ticks"] == 16 and rep["agent_count"] == 4 and rep["loop_ticks"] == 4
    assert rep["outcomes"] == {"ok": 11, "late": 1, "fallback": 2, "skipped": 1, "error": 1}
    assert sum(rep["outcomes"].values()) == rep["agent_count"] * rep["loop_ticks"]
    assert rep["deadline_misses"] == 4 and rep["longest_miss_streak"] == 3  # npc_1's, not across agents
    # ok latencies 2 3 4 5 6 11 21 31 41 51 61: P50 = the 6th, P90 at rank 9
    assert (
        rep["latency_ms"]["n"] == 11 and rep["latency_ms"]["p50"] == 11.0 and rep["latency_ms"]["p90"] == 51.0
    )
    assert rep["lateness_ms"]["n"] == 4  # one start per loop tick, not one per agent
    assert rep["decision_hz"] == 6.875 and rep["decisions_per_s"] == 27.5  # 10 * 11/16 per agent; 10 * 11/4
    assert rep["achieved_hz"] == pytest.approx(3 / 0.3003, abs=1e-3)
    assert rep["agent_spread"] == {
        "latency_p90_ms": {"worst": 59.0, "worst_agent": "npc_10", "best": 4.7, "best_agent": EVIL},
        "decide_p90_ms": {"worst": 114.0, "worst_agent": "npc_0", "best": 3.7, "best_agent": EVIL},
        "deadline_misses": {"min": 0, "max": 3, "max_agent": "npc_1"},
    }
    assert "agents" in paths and "plot_error" not in paths and "html_error" not in paths
    no_misses = summarize([r for r in recs if r.agent in ("npc_10", EVIL)], 10.0, 0.4)["agent_spread"]
    assert no_misses["deadline_misses"] == {"min": 0, "max": 0, "max_agent": None}


def test_single_agent_report_json_is_unchanged(tmp_path):
    recs = single_records()
    stats = summarize(recs, 10.0, 0.5)
    assert set(stats) == SINGLE_KEYS  # no agents, agent_count, loop_ticks, decisions_per_s, agent_spread
    assert stats["ticks"] == 5 and stats["outcomes"] == {
        "ok": 3,
        "late": 1,
        "fallback": 0,
        "skipped": 0,
        "error": 1,
    }
    assert stats["latency_ms"]["p50"] == 22.0 and stats["deadline_misses"] == 1
    paths = write_report(_report(recs, 0.5), recs, tmp_path / "r")
    assert "agents" not in json.loads(Path(paths["report"]).read_text())
    assert {"timeline", "latency_cdf", "html"} <= set(paths) and "agents" not in paths


def test_page_escapes_run_text_and_works_without_plots(tmp_path):
    """Every text from the run is escaped; with plots off the page still has its tables."""
    recs = crowd_records()
    paths = write_report(_report(recs, 0.4), recs, tmp_path / "r", plots=False)
    page = Path(paths["html"]).read_text()
    assert "<script" not in page and '<img src="http' not in page and "<b>not bold" not in page
    assert "evil&lt;img src=&quot;http://127.0.0.1:9/x.png&quot;&gt;&amp;" in page
    assert "No plots (written with plots off)." in page and 'id="agents"' in page
    assert (
        fmt(None) == "–"
        and fmt(25.0) == "25"
        and fmt(3.7000000000000002) == "3.7"
        and fmt(0.12345) == "0.123"
    )
    with pytest.raises(FileNotFoundError):  # a plot named but missing is an error, not a blank image
        render_report_html({}, {"timeline": tmp_path / "missing.png"})


def test_reason_kinds_group_reasons_that_differ_in_numbers_only():
    """The timeline's reason rows: numbers become #, whitespace one space, long reasons are cut."""
    late = [
        _rec(0, None, "late", 71.2, reason=f"reply {ms} ms after\n send, past the deadline")
        for ms in (71.2, 80)
    ]
    assert {reason_kind(r) for r in late} == {"late: reply # ms after send, past the deadline"}
    long = reason_kind(_rec(0, None, "error", reason="x" * 200))
    assert (
        long == "error: " + "x" * 47 + "…"
        and reason_kind(_rec(0, None, "fallback")) == "fallback: no reason given"
    )


# --------------------------------------------------------------------------- report.html in Chromium

PROBE = """<script>
var probe = {violations: []};
document.addEventListener('securitypolicyviolation', function (e) { probe.violations.push(e.blockedURI); });
window.addEventListener('load', function () {
  probe.images = Array.prototype.map.call(document.images, function (img) {
    // drawing the image forces a full decode; a plot has many colours, a blank or broken image has 0 or 1
    var colours = {};
    if (img.complete && img.naturalWidth > 0) {
      var c = document.createElement('canvas');
      c.width = 160; c.height = 120;
      var g = c.getContext('2d');
      g.drawImage(img, 0, 0, 160, 120);
      var d = g.getImageData(0, 0, 160, 120).data;
      for (var i = 0; i < d.length; i += 4) { colours[d[i] + ',' + d[i + 1] + ',' + d[i + 2]] = 1; }
    }
    return [img.alt, img.naturalWidth, img.naturalHeight, Object.keys(colours).length];
  });
  probe.resources = performance.getEntriesByType('resource').map(function (e) { return e.name; });
  probe.title = document.title;
  var pre = document.createElement('pre');
  pre.id = 'probe';
  pre.textContent = JSON.stringify(probe);
  document.body.appendChild(pre);
});
</script>"""


class _Tables(HTMLParser):
    """Each table's rows (lists of cell texts), by table id; and every src/href attribute."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tables: dict[str, list[list[str]]] = {}
        self.links: list[str] = []
        self._table: str | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.links += [v or "" for k, v in attrs if k in ("src", "href", "srcset", "action", "poster")]
        if tag == "table":
            self._table = a.get("id") or ""
            self.tables[self._table] = []
        elif tag == "tr" and self._table is not None:
            self.tables[self._table].append([])
        elif tag in ("td", "th") and self._table is not None:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._table is not None:
            self.tables[self._table][-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def _parse(text: str) -> _Tables:
    p = _Tables()
    p.feed(text)
    return p


def open_in_chromium(page: Path, tmp: Path, extra: str = "") -> tuple[dict[str, Any], _Tables]:
    """(the probe's findings, the tables of the DOM Chromium built) for a probed copy of ``page``;
    ``extra`` is markup added at the end of the copy's body (the negative control)."""
    assert CHROMIUM is not None
    text = page.read_text()
    assert text.count("<head>") == 1
    probed = tmp / f"probed-{page.parent.name}.html"
    probed.write_text(text.replace("<head>", "<head>" + PROBE, 1).replace("</body>", extra + "</body>"))
    proc = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp / 'profile'}",
         "--virtual-time-budget=10000", "--dump-dom", probed.as_uri()],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    found = re.search(r'<pre id="probe">(.*?)</pre>', proc.stdout, re.S)
    assert found, proc.stdout[-2000:]
    probe = json.loads(
        found.group(1).replace("&quot;", '"').replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
    )
    return probe, _parse(proc.stdout)


def _self_contained(page: Path) -> None:
    """Statically: no script, no link, every src/href a data: URL (what the browser then confirms)."""
    text = page.read_text()
    parsed = _parse(text)
    assert parsed.links and all(link.startswith("data:image/png;base64,") for link in parsed.links)
    assert "<script" not in text.lower() and "<link" not in text.lower() and "url(" not in text


@needs_chromium
def test_crowd_page_in_chromium(tmp_path):
    recs = crowd_records()
    rep = {
        **_report(recs, 0.4),
        "crowd": {"replicas": 2, "endpoints": ["tcp://127.0.0.1:1", "tcp://127.0.0.1:2"]},
    }
    paths = write_report(rep, recs, tmp_path / "crowd")
    page = Path(paths["html"])
    _self_contained(page)
    probe, dom = open_in_chromium(page, tmp_path)

    # every image decodes (the timeline, the per-agent plot, the CDF); nothing was fetched or blocked
    plots = ["agents plot", "latency_cdf plot", "timeline plot"]
    assert sorted(alt for alt, *_ in probe["images"]) == plots
    assert all(w > 100 and h > 100 and colours > 8 for _, w, h, colours in probe["images"]), probe["images"]
    assert probe["resources"] == [] and probe["violations"] == []
    assert probe["title"].startswith("tickcall run report")  # the reason's <script> stayed text

    # the tables as the browser parsed them hold report.json's numbers
    agents = {row[0]: row for row in dom.tables["agents"][1:]}
    assert list(agents) == [EVIL, "npc_0", "npc_1", "npc_10"]  # the markup name is one cell of text
    head = dom.tables["agents"][0]
    col = {name: i for i, name in enumerate(head)}
    assert agents["npc_0"][col["decide P90"]] == "114" and agents["npc_0"][col["latency P90"]] == "29"
    assert (
        agents["npc_0"][col["calls per tool"]] == "move 2, attack 1" and agents["npc_0"][col["late"]] == "1"
    )
    assert agents["npc_1"][col["misses"]] == "3" and agents["npc_1"][col["longest streak"]] == "3"
    assert agents["npc_10"][col["decide P90"]] == "57" and agents["npc_10"][col["latency P50"]] == "51"
    assert agents[EVIL][col["decide P90"]] == "3.7" and agents[EVIL][col["ticks"]] == "4"
    outcomes = {row[0]: row[1:] for row in dom.tables["outcomes"][1:]}
    assert (
        outcomes["ok"] == ["11", "68.75"]
        and outcomes["skipped"] == ["1", "6.25"]
        and outcomes["total"][0] == "16"
    )
    run = {row[0]: row[1] for row in dom.tables["run"][1:]}
    assert run["agents"] == "4" and run["loop ticks"] == "4" and run["ticks (agent-ticks)"] == "16"
    assert run["decisions per second, all agents"] == "27.5" and run["deadline (ms)"] == "100"
    latency = {row[0]: row[1:] for row in dom.tables["latency"][1:]}
    assert latency["tick latency (ok ticks)"][:3] == ["11", "11", "51"]  # n, P50, P90
    spread = {row[0]: row[1:] for row in dom.tables["agent_spread"][1:]}
    assert spread["latency P90 (ms)"] == ["59", "npc_10", "4.7", EVIL]
    assert spread["deadline misses"][:2] == ["3", "npc_1"]
    crowd = {row[0]: row[1] for row in dom.tables["crowd"][1:]}
    assert crowd == {"replicas": "2", "endpoints": '["tcp://127.0.0.1:1", "tcp://127.0.0.1:2"]'}


@needs_chromium
def test_single_agent_page_in_chromium(tmp_path):
    """A single-agent cascade run: no per-agent tables, the cascade block, the decided-by raster."""
    recs = single_records()
    for r, who in zip(recs, ("small", "big", "none", "small", "none"), strict=True):
        r.decided_by, r.route_reason = who, "confident" if who == "small" else "unsure"
    paths = write_report({**_report(recs, 0.5), "cascade": cascade_summary(recs)}, recs, tmp_path / "single")
    page = Path(paths["html"])
    _self_contained(page)
    probe, dom = open_in_chromium(page, tmp_path)
    assert sorted(alt for alt, *_ in probe["images"]) == ["latency_cdf plot", "timeline plot"]
    assert all(w > 100 and h > 100 and colours > 8 for _, w, h, colours in probe["images"]), probe["images"]
    assert probe["resources"] == []
    assert probe["violations"] == [] and "agents" not in dom.tables
    outcomes = {row[0]: row[1:] for row in dom.tables["outcomes"][1:]}
    assert (
        outcomes["ok"] == ["3", "60"] and outcomes["late"] == ["1", "20"] and outcomes["error"] == ["1", "20"]
    )
    latency = {row[0]: row[1:] for row in dom.tables["latency"][1:]}
    assert latency["tick latency (ok ticks)"][:3] == ["3", "22", "30"]  # 12 22 32: P90 at rank 1.8
    assert latency["decide round trip (every reply)"][0] == "5"
    cascade = {row[0]: row[1] for row in dom.tables["cascade"][1:]}
    assert cascade["ticks"] == "5" and cascade["small share"] == "0.4" and cascade["big share"] == "0.2"
    assert {row[0]: row[1] for row in dom.tables["cascade_reasons"][1:]} == {"unsure": "3", "confident": "2"}
    warnings = page.read_text().split('id="warnings"')[1].split("</ul>")[0]
    assert "tick 3 started 60.0 ms late &lt;b&gt;not bold&lt;/b&gt;" in warnings


@needs_chromium
def test_probe_sees_an_external_request_and_a_broken_image(tmp_path):
    """Negative control: the checks above can fail. An external image is blocked by the page's policy
    (reported as a violation) and decodes to nothing; a data: URL that is not an image fails to decode."""
    recs = single_records()
    paths = write_report(_report(recs, 0.5), recs, tmp_path / "single", plots=False)
    probe, _ = open_in_chromium(
        Path(paths["html"]),
        tmp_path,
        extra='<img alt="external" src="http://127.0.0.1:9/x.png"><img alt="broken" src="data:image/png;base64,AAAA">',
    )
    sizes = {alt: (w, h, colours) for alt, w, h, colours in probe["images"]}
    assert sizes == {"external": (0, 0, 0), "broken": (0, 0, 0)}
    assert any("127.0.0.1:9" in v for v in probe["violations"]), probe
