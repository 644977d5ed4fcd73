"""A browser drives the HTTP door: our page (examples/simpletool-http/probe.html), opened from disk in
headless Chromium as SimpleTool's demos are (origin ``null``, so CORS is exercised), fetches
``/health`` and ``/v1/function_call`` like they do; the DOM it leaves says what came back.

Needs Debian's ``chromium`` (``scripts/setup.sh --dev`` installs it); skipped without a binary.
``--virtual-time-budget`` keeps Chromium running until the page's fetches have settled.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tickcall.agent.config import ServeConfig
from tickcall.agent.engines import build_engine
from tickcall.agent.http_door import HttpDoor, HttpDoorConfig
from tickcall.agent.server import PolicyServer

PAGE = Path(__file__).resolve().parents[1] / "examples" / "simpletool-http" / "probe.html"
CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium binary (apt-get install -y chromium; scripts/setup.sh --dev)"
)


def load_page(server_url: str, n: int, profile: Path) -> tuple[str, dict[str, Any]]:
    """(title, result JSON) of the page after its fetches, as Chromium's DOM dump shows them."""
    assert CHROMIUM is not None
    url = f"{PAGE.as_uri()}?server={server_url}&n={n}"
    proc = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
         "--virtual-time-budget=30000", "--dump-dom", url],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    title = re.search(r"<title>(.*?)</title>", proc.stdout)
    result = re.search(r'<pre id="result">(.*?)</pre>', proc.stdout, re.S)
    assert title and result, proc.stdout[-2000:]
    return title.group(1), json.loads(result.group(1).replace("&quot;", '"').replace("&amp;", "&"))


@pytest.fixture
def door() -> Iterator[tuple[PolicyServer, str]]:
    server = PolicyServer(
        build_engine({"backend": "random", "seed": 0}), ServeConfig(bind="tcp://127.0.0.1:0")
    )
    http = HttpDoor(server.start(), HttpDoorConfig(bind="127.0.0.1:0"))
    url = http.start()
    yield server, url
    http.stop()
    server.stop()


def test_page_in_chromium_gets_calls(door, tmp_path):
    server, url = door
    title, out = load_page(url, 4, tmp_path / "profile")
    assert title == "done" and out["errors"] == []
    assert out["health"]["status"] == "ok" and out["health"]["loaded"] is True
    assert len(out["calls"]) == 4
    for call in out["calls"]:
        body = call["body"]
        assert call["status"] == 200 and body["success"] is True and body["function"] == "move"
        assert body["args"]["direction"] in ("up", "down", "stay") and body["latency_ms"] > 0
    assert server.stats()["decided"] == 4


def test_page_reports_an_unreachable_server(tmp_path):
    """The page (and so this check) fails when no door answers: nothing here passes by default."""
    title, out = load_page("http://127.0.0.1:9", 1, tmp_path / "profile")
    assert title == "error" and out["calls"] == [] and out["errors"]
