"""``tickcall run`` end to end: config errors, the missing-model message, and a short real run.

The short run is the real thing (Ray, the policy service actor, the loop actor, the arena in real time,
report.json + plots) with the no-op engine standing in for a model.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tickcall.cli import main

ROOT = Path(__file__).resolve().parent.parent


def test_bad_config_value_exits_2_with_the_key(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("rate_hz: 100\n")
    assert main(["run", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "rate_hz: must be <= 60 Hz" in err and str(bad) in err


def test_bad_rate_on_the_command_line(capsys):
    assert main(["run", "--rate", "0.5", "--backend", "noop"]) == 2
    err = capsys.readouterr().err
    assert "--rate 0.5: rate_hz: must be >= 1 Hz" in err and "run.yaml" not in err  # the flag, not the config file


def test_missing_model_folder_is_a_clear_error(tmp_path, capsys):
    assert main(["run", "--model", str(tmp_path / "nope"), "--duration", "1"]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize(("env", "says"), [
    ("Nope-v9", "cannot make env 'Nope-v9'"),
    ("engine:foo", "engine:tcp://HOST:PORT"),
])
def test_unknown_env_is_one_line_before_anything_starts(env, says, capsys):
    import ray

    assert main(["run", "--env", env, "--backend", "noop", "--duration", "1"]) == 2
    err = capsys.readouterr().err
    assert says in err and len(err.strip().splitlines()) == 1, err
    assert not ray.is_initialized()  # refused before Ray, the service or the loop started


@pytest.mark.parametrize(("flags", "says"), [
    (["--distill-every", "5"], "distillation learns from the big model"),
    (["--distill-every", "0"], "--distill-every 0.0: distill_every_s: must be > 0 s"),
    (["--distill-every", "5", "--distill-steps", "0"], "--distill-steps 0: distill_steps: must be >= 1"),
])
def test_distillation_flags_are_one_line_before_anything_starts(flags, says, capsys):
    import ray

    assert main(["run", "--backend", "noop", "--duration", "1", *flags]) == 2
    err = capsys.readouterr().err
    assert says in err and len(err.strip().splitlines()) == 1, err
    assert not ray.is_initialized()


def test_root_cause_of_an_actor_that_died_while_starting():
    from tickcall.job import root_cause

    died = RuntimeError("The actor died because of an error raised in its creation task\n"
                        "  File \"x.py\", line 1\nWorldError: cannot make env 'X'")
    assert root_cause(died) == "WorldError: cannot make env 'X'"
    assert root_cause(ValueError("plain")) == "ValueError: plain"


def test_resolve_model_without_a_shipped_model(monkeypatch):
    from tickcall.control_loop.config import load_run_config

    from tickcall import job as runner

    cfg = load_run_config(None, {"backend": "transformers"})
    monkeypatch.setattr(runner, "shipped_default_model", lambda env=None: None)
    with pytest.raises(runner.RunError, match="--model PATH"):
        runner.resolve_model(cfg)
    assert runner.resolve_model(load_run_config(None, {"backend": "noop"})) is None


@pytest.mark.slow
def test_tickcall_run_writes_the_report(tmp_path):
    out = tmp_path / "report"
    proc = subprocess.run(
        [sys.executable, "-m", "tickcall.cli", "run", "--config", str(ROOT / "configs" / "run-noop.yaml"),
         "--duration", "3", "--report", str(out), "--quiet"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rep = json.loads((out / "report.json").read_text())
    for key in ("ticks", "rate_hz", "achieved_hz", "latency_ms", "stages_ms", "outcomes", "deadline_misses",
                "episodes", "env", "model", "backend"):
        assert key in rep, key
    assert set(rep["latency_ms"]) >= {"p50", "p90", "p99", "max"}
    assert set(rep["outcomes"]) == {"ok", "late", "fallback", "skipped", "error"}
    assert rep["ticks"] == 48 == sum(rep["outcomes"].values())
    assert (rep["env"], rep["backend"], rep["rate_hz"]) == ("tickcall/Arena-v0", "noop", 16.0)
    assert len((out / "ticks.jsonl").read_text().splitlines()) == 48
    from tickcall.training import load_data  # a run's ticks are training data: the turn of every sent tick

    data = load_data([str(out)])
    assert len(data.by_env()["tickcall/Arena-v0"]) == rep["outcomes"]["ok"] > 0
    assert (out / "latency_cdf.png").stat().st_size > 0 and (out / "timeline.png").stat().st_size > 0
    assert "ticks 48 at 16 Hz" in proc.stderr and "report:" in proc.stderr
    assert f"page: {out / 'report.html'}" in proc.stderr and (out / "report.html").stat().st_size > 0


def _broken_folder(tmp_path: Path, how: str) -> Path:
    """A copy of the shipped arena model, broken one way."""
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(ROOT / "models" / "shipped" / "tickcall-arena", folder)
    if how == "config":
        (folder / "config.json").write_text("{not json")
    elif how == "truncated":
        weights = folder / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:100_000])
    elif how == "no-tokenizer":
        (folder / "tokenizer.json").unlink()
    return folder


@pytest.mark.parametrize(("how", "says"), [
    ("config", "config.json is not readable JSON"),
    ("truncated", "model.safetensors is truncated"),
    ("no-tokenizer", "tokenizer.json is missing"),
])
def test_broken_model_folder_is_one_line_before_anything_starts(tmp_path, capsys, how, says):
    import ray

    folder = _broken_folder(tmp_path, how)
    assert main(["run", "--model", str(folder), "--duration", "1", "--report", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert says in err and len(err.strip().splitlines()) == 1, err
    assert not ray.is_initialized() and not (tmp_path / "r").exists()


def test_unwritable_report_folder_is_refused_before_the_run(tmp_path, capsys):
    import ray

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert main(["run", "--backend", "noop", "--duration", "1", "--report", str(blocker / "report")]) == 2
    err = capsys.readouterr().err
    assert "is not writable" in err and "--report DIR" in err and len(err.strip().splitlines()) == 1, err
    assert not ray.is_initialized()


def _interrupted_run(report: Path, after_first_tick: bool) -> tuple[int, str]:
    """``tickcall run`` (no-op engine, 30 s) sent SIGINT during start-up or once ticks ran. The child
    gets the default SIGINT action back: a background process may inherit it ignored."""
    import signal
    import time

    proc = subprocess.Popen(
        [sys.executable, "-m", "tickcall.cli", "run", "--config", str(ROOT / "configs" / "run-noop.yaml"),
         "--duration", "30", "--report", str(report)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    seen = []
    if after_first_tick:
        for line in proc.stdout:
            seen.append(line)
            if line.startswith("tick "):
                break
    else:
        time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=120)
    return proc.returncode, "".join(seen) + rest


@pytest.mark.slow
def test_interrupt_during_start_up_exits_130_in_one_line(tmp_path):
    code, out = _interrupted_run(tmp_path / "r", after_first_tick=False)
    assert code == 130, out[-2000:]
    assert "Traceback" not in out and "interrupted before the loop ran" in out
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_interrupt_after_ticks_exits_130_with_the_report(tmp_path):
    code, out = _interrupted_run(tmp_path / "r", after_first_tick=True)
    assert code == 130, out[-2000:]
    assert "Traceback" not in out
    rep = json.loads((tmp_path / "r" / "report.json").read_text())
    assert 0 < rep["ticks"] < 480 and rep["ticks"] == sum(rep["outcomes"].values())
    assert len((tmp_path / "r" / "ticks.jsonl").read_text().splitlines()) == rep["ticks"]
