"""Run configs: the shipped YAML files load, bad values are refused with messages that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest
from tickcall.control_loop.config import ConfigError, RunConfig, from_dict, load_run_config, validate
from tickcall.control_loop.records import TickRecord
from tickcall.control_loop.report import read_ticks, write_report
from tickcall.control_loop.stats import summarize

from tickcall.timing import percentile, summary

CONFIGS = sorted((Path(__file__).resolve().parent.parent / "configs").glob("run*.yaml"))


def test_there_are_run_configs():
    assert any(p.name == "run.yaml" for p in CONFIGS)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_validate(path):
    cfg = load_run_config(path)
    assert 1 <= cfg.rate_hz <= 60
    assert cfg.duration_s or cfg.episodes


def test_default_config_is_the_arena_with_the_shipped_model_on_cpu():
    cfg = load_run_config()
    assert (cfg.env, cfg.backend, cfg.device, cfg.model) == ("tickcall/Arena-v0", "transformers", "cpu", None)
    assert cfg.rate_hz == 16 and cfg.effective_deadline_ms == pytest.approx(62.5)
    assert cfg.service.bind.startswith("tcp://127.0.0.1:")


def test_overrides_and_unset():
    cfg = load_run_config(None, {"rate_hz": 10, "episodes": 3, "model": None, "service.endpoint":
                                 "tcp://127.0.0.1:5555"}, unset=("duration_s",))
    assert cfg.rate_hz == 10 and cfg.episodes == 3 and cfg.duration_s is None
    assert cfg.service.endpoint == "tcp://127.0.0.1:5555" and cfg.model is None
    assert cfg.effective_in_flight_timeout_ms == pytest.approx(400.0)
    assert cfg.engine_spec() == {"backend": "transformers", "device": "cpu"}
    assert load_run_config(None, {"backend": "noop"}).engine_spec() == {"backend": "noop"}


@pytest.mark.parametrize("text, message", [
    ("rate_hz: 0\n", "rate_hz: must be >= 1 Hz, got 0"),
    ("rate_hz: 61\n", "rate_hz: must be <= 60 Hz"),
    ("rate_hz: fast\n", "rate_hz: expected a number of Hz, got 'fast'"),
    ("rat_hz: 16\n", "unknown key 'rat_hz' (did you mean 'rate_hz'?)"),
    ("fallback: retry\n", "fallback: must be one of hold, default, noop; got 'retry'"),
    ("in_flight: queue\n", "in_flight: must be one of skip, supersede"),
    ("backend: onnx\n", "backend: must be one of transformers, noop, vllm"),
    ("duration_s: null\nepisodes: null\n", "set duration_s (seconds) or episodes"),
    ("episodes: 0\n", "episodes: must be >= 1"),
    ("episodes: 2.5\n", "episodes: expected a whole number"),
    ("deadline_ms: -5\n", "deadline_ms: must be > 0 ms"),
    ("deadline_ms: 100\nin_flight_timeout_ms: 50\n", "in_flight_timeout_ms (50) must be >= the deadline"),
    ("service:\n  endpoint: localhost:5555\n", "service.endpoint: expected a ZeroMQ endpoint"),
    ("service:\n  bnd: tcp://127.0.0.1:0\n", "service: unknown key 'bnd' (did you mean 'bind'?)"),
    ("history: -1\n", "history: must be >= 0"),
    ("plots: yes please\n", "plots: expected true or false"),
    ("- a\n- b\n", "must be a mapping"),
    ("rate_hz: [16\n", "not valid YAML"),
])
def test_bad_values_get_clear_errors(tmp_path, text, message):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_run_config(p)
    assert message in str(exc.value)
    assert str(p) in str(exc.value)


def test_missing_file_and_bad_dataclass_values():
    with pytest.raises(ConfigError, match="does not exist"):
        load_run_config("/nonexistent/run.yaml")
    with pytest.raises(ConfigError, match="rate_hz"):
        validate(RunConfig(rate_hz=float("nan")))
    with pytest.raises(ConfigError, match="rate_hz"):
        validate(RunConfig(rate_hz=True))


# --------------------------------------------------------------------------- stats and report


def test_percentiles_are_interpolated():
    vals = list(range(1, 101))
    assert percentile(vals, 50) == pytest.approx(50.5)
    assert percentile(vals, 99) == pytest.approx(99.01)
    assert summary([]) == {"n": 0, "p50": None, "p90": None, "p99": None, "max": None, "mean": None}
    s = summary([3.0, None, 1.0, 2.0])
    assert (s["n"], s["p50"], s["max"], s["mean"]) == (3, 2.0, 3.0, 2.0)


def _records():
    recs = []
    outcomes = ["ok", "ok", "late", "skipped", "skipped", "ok", "error", "fallback", "ok", "ok"]
    for i, o in enumerate(outcomes):
        ran = not (o == "skipped" and i == 3)
        recs.append(TickRecord(
            tick=i, scheduled_ms=i * 62.5, lateness_ms=(0.2 + 0.1 * i) if ran else None, outcome=o,
            reason="missed_period" if not ran else ("in_flight" if o == "skipped" else ""),
            rtt_ms=10.0 + i if o in ("ok", "late", "error") else None,
            latency_ms=12.0 + i if o == "ok" else None,
            stages_ms={"decode": 5.0, "prefill": 2.0} if o == "ok" else {},
            fallback="hold" if o in ("late", "error", "fallback") else None))
    return recs


def test_summarize_counts_every_tick_once():
    rep = summarize(_records(), 16.0, 10 / 16)
    assert rep["ticks"] == 10 and sum(rep["outcomes"].values()) == 10
    assert rep["outcomes"] == {"ok": 5, "late": 1, "fallback": 1, "skipped": 2, "error": 1}
    assert rep["deadline_misses"] == 4 and rep["longest_miss_streak"] == 3
    assert rep["missed_periods"] == 1 and rep["skipped_in_flight"] == 1
    assert rep["latency_ms"]["n"] == 5 and rep["latency_ms"]["max"] == 21.0
    assert rep["stages_ms"]["service_decode"]["p50"] == 5.0
    # 9 ticks ran; 8 intervals between the first start (0.2 ms) and the last (9 * 62.5 + 1.1 ms)
    assert rep["achieved_hz"] == pytest.approx(8 / ((9 * 62.5 + 1.1 - 0.2) / 1e3), rel=1e-6)
    assert rep["drift_ms"] == pytest.approx(0.9, abs=1e-6)   # last lateness 1.1 - first 0.2
    with pytest.raises(ValueError, match="no final outcome"):
        summarize([TickRecord(tick=0, scheduled_ms=0.0)], 16.0, 1.0)


def test_report_files_and_plots(tmp_path):
    recs = _records()
    rep = {"env": "tickcall/Arena-v0", "backend": "noop", "model": None, **summarize(recs, 16.0, 0.625)}
    paths = write_report(rep, recs, tmp_path / "r")
    assert "plot_error" not in paths
    for key in ("report", "ticks", "latency_cdf", "timeline"):
        assert Path(paths[key]).stat().st_size > 0
    assert [r.to_dict() for r in read_ticks(tmp_path / "r")] == [r.to_dict() for r in recs]


def test_history_defaults_to_what_the_model_was_trained_with(tmp_path):
    """history null -> the model folder's tickcall.json history_len; an explicit value wins; a folder
    without one (or no model) -> 4."""
    import json

    from tickcall.job import DEFAULT_HISTORY, resolve_history

    model = tmp_path / "m"
    model.mkdir()
    (model / "tickcall.json").write_text(json.dumps({"template": "compact", "history_len": 0}))
    assert from_dict({}).history is None
    assert resolve_history(from_dict({}), str(model)) == 0
    assert resolve_history(from_dict({"history": 3}), str(model)) == 3
    (model / "tickcall.json").write_text(json.dumps({"template": "compact"}))
    assert resolve_history(from_dict({}), str(model)) == DEFAULT_HISTORY == 4
    assert resolve_history(from_dict({}), None) == 4
    with pytest.raises(ConfigError, match="history"):
        from_dict({"history": -1})


# --------------------------------------------------------------------------- one source per field


def _run_args(argv):
    import argparse

    from tickcall.commands import run as run_cmd

    parser = argparse.ArgumentParser()
    run_cmd.add_arguments(parser)
    return run_cmd.config_from_args(parser.parse_args(argv))


def test_every_field_declares_help_and_check_and_the_docs_list_every_key():
    from tickcall.control_loop.config_fields import describe

    docs = (Path(__file__).resolve().parent.parent / "docs" / "control-loop.md").read_text()
    keys = describe(RunConfig)
    assert {k for k, _ in keys} >= {"rate_hz", "history", "service.endpoint", "rt_priority", "plots"}
    for key, help_text in keys:
        assert help_text, key
        assert f"`{key.split('.')[-1]}`" in docs, f"docs/control-loop.md does not list {key}"


def test_loop_settings_are_the_run_configs_own_fields():
    from dataclasses import fields

    from tickcall.control_loop.config import LoopSettings
    from tickcall.control_loop.loop import LoopSettings as LoopsView

    assert LoopsView is LoopSettings and issubclass(RunConfig, LoopSettings)
    cfg = load_run_config(None, {"rate_hz": 10, "history": 2, "fallback": "noop"})
    s = LoopSettings.from_run_config(cfg)
    assert type(s) is LoopSettings and [f.name for f in fields(s)] == [f.name for f in fields(LoopSettings)]
    assert (s.rate_hz, s.history_len, s.fallback, s.rt_priority) == (10.0, 2, "noop", 10)
    assert LoopSettings().history_len == 4   # unset: the default history


def test_command_line_flags_come_from_the_fields():
    cfg = _run_args(["--rate", "10", "--episodes", "3", "--endpoint", "tcp://127.0.0.1:5555", "--no-plots",
                     "--quiet", "--rt-priority", "0", "--in-flight", "supersede", "--report", "r"])
    assert (cfg.rate_hz, cfg.episodes, cfg.duration_s) == (10.0, 3, None)   # --episodes unsets duration_s
    assert cfg.service.endpoint == "tcp://127.0.0.1:5555" and cfg.report_dir == "r"
    assert (cfg.plots, cfg.progress, cfg.rt_priority, cfg.in_flight) == (False, False, None, "supersede")
    cfg = _run_args(["--duration", "5"])
    assert (cfg.duration_s, cfg.episodes, cfg.plots, cfg.rt_priority) == (5.0, None, True, 10)
    with pytest.raises(ConfigError, match=r"deadline_ms: must be > 0 ms, got -5"):
        _run_args(["--deadline-ms", "-5"])
    with pytest.raises(SystemExit):
        _run_args(["--duration", "5", "--episodes", "2"])   # one end or the other
