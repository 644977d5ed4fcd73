"""``tickcall bench service-kill``: the policy service actor killed under a running loop (real Ray actors,
the no-op engine so the figure is the restart and re-registration, not a model's load)."""

from __future__ import annotations

import json

from tickcall.cli import main


def test_a_killed_service_is_restarted_and_every_tick_is_accounted(tmp_path, capsys):
    out = tmp_path / "kill.json"
    assert main(["bench", "service-kill", "--kills", "1", "--backend", "noop", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    [kill] = data["kills"]
    assert 0 < kill["kill_to_serving_s"] <= kill["outage_s"] and kill["serving_to_first_ok_s"] >= 0
    assert data["accounted"] and sum(data["outcomes"].values()) == data["ticks"] > 0
    assert data["outcomes"]["ok"] > 0 and data["outcomes"].get("error", 0) == 0
    assert "serving -> first ok" in capsys.readouterr().out


def test_bad_flags_are_one_line(capsys):
    assert main(["bench", "service-kill", "--kills", "0"]) == 2
    assert main(["bench", "service-kill", "--rate", "99"]) == 2
    err = capsys.readouterr().err
    assert "--kills 0 must be >= 1" in err and "--rate 99 is outside 1-60 Hz" in err and "Traceback" not in err
