"""The cascade policy (control_loop.cascade): dual rate, confidence routing, accounting, calibration.

What stands for what: the *small* model is the shipped arena student (models/shipped/tickcall-arena) on
the transformers engine, which reports a real confidence (the smallest chosen-token probability; this
student is very sure of itself: ~1.0). The *big* model is a second policy service: the same student
behind an artificial per-decide delay (tests/helpers.py ``injected_engine``, ``batch_delay_ms``), or a
no-op engine where only its timing matters (stalled, killed). No goal arena and no language model yet:
these tests check the machinery, not that a bigger model plays better.

Routing is forced by the threshold, not by the student's confidence: 0 keeps every tick on the small
model, 1.01 (above any probability) sends every tick to the big model's freshest call. Assertions are
on accounting and on reasons, never on how fast this machine is.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import pytest
from helpers import injected
from tickcall.agent.messages import CallReply, ErrorReply, Timings, Tokens, WireCall
from tickcall.control_loop.cascade import (
    REASONS,
    BigDecision,
    CascadePolicy,
    CascadeSettings,
    calibrate,
    intent_line,
    route,
)
from tickcall.control_loop.config import ConfigError, load_run_config
from tickcall.control_loop.loop import LoopSettings
from tickcall.control_loop.records import TickRecord, count_outcomes
from tickcall.control_loop.stats import cascade_summary, choose_threshold, reliability_curve
from tickcall.models.format import Turn

ROOT = Path(__file__).resolve().parent.parent
STUDENT = str(ROOT / "models" / "shipped" / "tickcall-arena")
RATE = 16.0


# --------------------------------------------------------------------------- replies without a service


def _call(tick, name="fire", args=None, conf=1.0, legal=True):
    return CallReply(
        id=tick,
        epoch="e",
        tick=tick,
        handle="h",
        call=WireCall(name, dict(args or {})),
        legal=legal,
        reason="" if legal else "bad",
        heads={},
        tokens=Tokens(),
        timings_ms=Timings(),
        batch=1,
        sent_ms=None,
        confidence=conf,
    )


def _error(tick, code="engine_failure"):
    return ErrorReply(id=tick, epoch="e", code=code, message="x", tick=tick)


def test_route_says_who_decided_and_why():
    s = CascadeSettings(threshold=0.8, max_age_ms=200)
    fresh = BigDecision(_call(1, "aim", {"direction": "N"}), 1, sent_at=10.0, received_at=10.05)
    now_fresh, now_stale = 10.1, 10.5  # 100 ms and 500 ms after the big request was sent
    cases = [
        (_call(5, conf=0.9), fresh, now_fresh, "small", "confident", "fire"),
        (_call(5, conf=None), fresh, now_fresh, "small", "no_confidence", "fire"),
        (_call(5, conf=0.5), fresh, now_fresh, "big", "low_confidence_big", "aim"),
        (_call(5, conf=0.5), fresh, now_stale, "small", "low_confidence_stale_big", "fire"),
        (_call(5, conf=0.5), None, now_fresh, "small", "big_missing", "fire"),
        (_call(5, conf=0.9, legal=False), fresh, now_fresh, "big", "small_error_big", "aim"),
        (_error(5), fresh, now_fresh, "big", "small_error_big", "aim"),
        (_error(5), None, now_fresh, "small", "small_error", None),
        (_error(5, "timeout"), fresh, now_fresh, "none", "small_no_decision", None),
    ]
    for small, big, now, who, why, name in cases:
        reply, r = route(small, big, now, s)
        assert (r.decided_by, r.route_reason) == (who, why), (small, why)
        assert r.route_reason in REASONS
        assert reply.tick == 5  # always the small request's tick: one reply per send_decide
        got = getattr(reply, "call", None)
        assert (got.name if got is not None else None) == name
    _, r = route(_call(5, conf=0.5), fresh, now_fresh, s)
    assert r.big_age_ms == pytest.approx(100.0) and r.confidence == 0.5 and r.small_call["name"] == "fire"


class FakePolicy:
    """A policy that answers only when the test says so (``answer``)."""

    def __init__(self):
        self.sent: list[tuple[Turn, int, float | None]] = []
        self.ready: list = []

    def send_decide(self, turn, tick_id, deadline_ms=None):
        self.sent.append((turn, tick_id, deadline_ms))
        return len(self.sent)

    def poll(self, timeout_ms=0):
        out, self.ready = self.ready, []
        return out


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_the_big_model_runs_at_its_own_rate_one_request_at_a_time():
    clock, small, big = Clock(), FakePolicy(), FakePolicy()
    cp = CascadePolicy(
        small, big, CascadeSettings(big_rate_hz=4, threshold=1.01, max_age_ms=400), clock=clock
    )
    for k in range(32):  # 2 s of ticks at 16 Hz; the big model never answers
        cp.send_decide(Turn(query=f"t{k}"), k, 50.0)
        clock.t += 1 / RATE
    assert len(small.sent) == 32 and len(big.sent) == 1  # never a second big request in flight
    assert big.sent[0][2] == 400.0  # its deadline: a decision older than max_age_ms is never used
    big.ready.append(_call(0, "aim", {"direction": "S"}))  # the first request is answered at last
    for k in range(32, 64):  # 2 s more; the big model now answers each request at once
        n = len(big.sent)
        cp.send_decide(Turn(query=f"t{k}"), k, 50.0)
        if len(big.sent) > n:
            big.ready.append(_call(big.sent[-1][1], "aim", {"direction": "S"}))
        cp.poll(0)
        clock.t += 1 / RATE
    stats = cp.big_stats()
    assert [t for _, t, _ in big.sent] == [
        0,
        32,
        36,
        40,
        44,
        48,
        52,
        56,
        60,
    ]  # 4 Hz, a new grid after the stall
    assert stats["decides"] == stats["sent"] == 9 and stats["errors"] == 0


def test_routing_takes_the_freshest_big_call_and_records_every_tick():
    clock, small, big = Clock(), FakePolicy(), FakePolicy()
    cp = CascadePolicy(small, big, CascadeSettings(big_rate_hz=8, threshold=0.9, max_age_ms=150), clock=clock)
    cp.send_decide(Turn(query="a"), 0)
    big.ready.append(_call(0, "aim", {"direction": "E"}))
    small.ready.append(_call(0, "fire", conf=0.4))
    clock.t += 0.01
    (reply,) = cp.poll(0)
    assert reply.call.name == "aim" and reply.tick == 0
    clock.t += 0.5  # the big decision is now 510 ms old
    cp.send_decide(Turn(query="b"), 1)  # big asked again (rate allows), no answer yet
    small.ready.append(_call(1, "fire", conf=0.4))
    (reply,) = cp.poll(0)
    assert reply.call.name == "fire"
    cp.send_decide(Turn(query="c"), 2)
    small.ready.append(_call(2, "fire", conf=0.95))
    cp.poll(0)
    records = [{"tick": k, "sent": True} for k in range(3)] + [
        {"tick": 3, "sent": False},
        {"tick": 4, "sent": True},
    ]
    cp.annotate(records)
    assert [r["route_reason"] for r in records] == [
        "low_confidence_big",
        "low_confidence_stale_big",
        "confident",
        "not_sent",
        "no_small_reply",
    ]
    assert [r["decided_by"] for r in records] == ["big", "small", "small", "none", "none"]
    assert records[0]["big_call"] == {
        "name": "aim",
        "arguments": {"direction": "E"},
    }  # the pair on tick 0's turn
    assert records[0]["small_call"] == {"name": "fire", "arguments": {}}


def test_intent_turn_puts_the_big_call_in_the_small_models_turn():
    for intent, expected in (("turn", ['intent: aim(direction="N")']), ("none", None)):
        clock, small, big = Clock(), FakePolicy(), FakePolicy()
        cp = CascadePolicy(small, big, CascadeSettings(intent=intent), clock=clock)
        cp.send_decide(Turn(query="a"), 0)
        big.ready.append(_call(0, "aim", {"direction": "N"}))
        small.ready.append(_call(0))
        cp.poll(0)
        cp.send_decide(Turn(query="b", history=["fire()@f1 done"]), 1)
        turn = small.sent[-1][0]
        assert turn.environment == expected and turn.history == ["fire()@f1 done"] and turn.query == "b"
        assert big.sent[0][0].environment is None  # the big model never sees its own intent
    assert intent_line(None) is None


def test_big_errors_and_a_failing_big_client_leave_the_small_one_deciding():
    class Broken(FakePolicy):
        def send_decide(self, *a, **k):
            raise RuntimeError("socket gone")

        def poll(self, timeout_ms=0):
            raise RuntimeError("socket gone")

    clock, small = Clock(), FakePolicy()
    cp = CascadePolicy(small, Broken(), CascadeSettings(threshold=1.01), clock=clock)
    for k in range(5):
        cp.send_decide(Turn(query="x"), k)
        small.ready.append(_call(k, conf=0.3))
        (reply,) = cp.poll(0)
        assert reply.call.name == "fire"
        clock.t += 1.0
    recs = cp.annotate([{"tick": k, "sent": True} for k in range(5)])
    assert {r["route_reason"] for r in recs} == {"big_missing"}
    assert cp.big_stats()["send_failures"] == 5 and cp.big_stats()["errors"] >= 5


# --------------------------------------------------------------------------- curve, threshold, summary


def _pair(conf, agree):
    small = {"name": "aim", "arguments": {"direction": "N"}}
    return {
        "tick": 0,
        "confidence": conf,
        "small_call": small,
        "big_call": small if agree else {"name": "fire", "arguments": {}},
        "decided_by": "small",
        "route_reason": "confident",
    }


def test_reliability_curve_and_the_threshold_it_picks(tmp_path):
    recs = (
        [_pair(0.95, True)] * 20 + [_pair(0.75, True)] * 19 + [_pair(0.75, False)] + [_pair(0.45, False)] * 5
    )
    recs += [{"tick": 1, "confidence": 0.2, "small_call": None, "big_call": None}]  # not a pair
    curve = reliability_curve(recs, bins=10)
    assert curve["pairs"] == 45
    by_lo = {b["lo"]: b for b in curve["bins"] if b["n"]}
    assert (
        by_lo[0.9]["agreement"] == 1.0 and by_lo[0.7]["agreement"] == 0.95 and by_lo[0.4]["agreement"] == 0.0
    )
    assert choose_threshold(curve, 0.95) == 0.7  # trust 0.7 and up; ask the big model below
    assert choose_threshold(curve, 0.99) == 0.9
    assert choose_threshold(reliability_curve([_pair(1.0, False)]), 0.9) == 1.01  # never trust the small one
    assert choose_threshold(reliability_curve([_pair(0.3, True)]), 0.9) == 0.0
    assert choose_threshold(reliability_curve([]), 0.9) is None
    run = tmp_path / "run"
    run.mkdir()
    (run / "ticks.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    threshold, cal = calibrate(run, 0.95)
    assert threshold == 0.7 and cal["pairs"] == 45 and cal["target"] == 0.95
    (run / "ticks.jsonl").write_text(json.dumps({"tick": 0}) + "\n")
    with pytest.raises(ValueError, match="no tick where both models decided"):
        calibrate(run)


def test_cascade_summary_accounts_every_tick():
    recs = [
        _pair(0.9, True),
        {"tick": 1, "decided_by": "big", "route_reason": "low_confidence_big"},
        {"tick": 2, "decided_by": "none", "route_reason": "not_sent"},
        {"tick": 3},
    ]
    s = cascade_summary(recs, {"p50_ms": 3.0, "decides": 2})
    assert s["small_share"] + s["big_share"] + s["none_share"] == pytest.approx(1.0)
    assert sum(s["reasons"].values()) == 4 and s["reasons"]["not_routed"] == 1
    assert s["big"]["decides"] == 2 and s["reliability"]["pairs"] == 1


def test_config_and_flags_refuse_bad_values_in_one_line():
    import argparse

    from tickcall.commands import run as run_cmd

    def args(*argv):
        parser = argparse.ArgumentParser()
        run_cmd.add_arguments(parser)
        return run_cmd.config_from_args(parser.parse_args(list(argv)))

    cfg = args("--cascade-model", STUDENT, "--big-rate", "2", "--threshold", "0.5", "--intent", "turn")
    assert (cfg.cascade.big_rate_hz, cfg.cascade.threshold, cfg.cascade.intent) == (2.0, 0.5, "turn")
    assert args("--cascade-backend", "random", "--cascade-calibrate", "r").cascade.threshold == "auto"
    assert load_run_config(None).cascade is None  # off unless asked for
    bad = [
        (["--big-rate", "2"], "name the big model"),
        (["--cascade-model", "m"], "nothing to calibrate from"),
        (["--cascade-model", "m", "--threshold", "soon"], "expected a number or auto"),
        (["--cascade-model", "m", "--threshold", "-0.1"], "must be >= 0"),
        (["--cascade-model", "m", "--threshold", "0.5", "--cascade-calibrate", "r"], "both given"),
        (["--cascade-model", "m", "--threshold", "0", "--big-rate", "0"], "must be > 0"),
        (["--cascade-model", "m", "--threshold", "0", "--max-age-ms", "-5"], "must be > 0"),
    ]
    for argv, text in bad:
        with pytest.raises(ConfigError, match=text) as info:
            args(*argv)
        assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="unknown key 'rate'"):
        load_run_config(None, {"cascade": {"model": "m", "threshold": 0, "rate": 3}})


# --------------------------------------------------------------------------- real Ray actors

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def services(ray_session):
    """The small service (the student, transformers) and the big one (the same student, 60 ms per decide)."""
    from tickcall.agent.actor import start_policy_service

    small, small_ep = start_policy_service(
        {"backend": "transformers", "model": STUDENT, "device": "cpu"},
        "tcp://127.0.0.1:0",
        max_restarts=0,
        num_cpus=0,
    )
    big, big_ep = start_policy_service(
        injected(inner={"backend": "transformers", "model": STUDENT, "device": "cpu"}, batch_delay_ms=60),
        "tcp://127.0.0.1:0",
        max_restarts=0,
        num_cpus=0,
    )
    yield small_ep, big_ep
    _stop(small, big)


def _stop(*actors):
    for a in actors:
        with contextlib.suppress(Exception):
            ray.get(a.stop.remote(), timeout=10)
        with contextlib.suppress(Exception):
            ray.kill(a, no_restart=True)


def _loop(small_ep, big_ep, **cascade):
    from tickcall.control_loop.cascade import start_cascade_loop_actor

    from tickcall.world import WorldSpec, world_factory

    return start_cascade_loop_actor(
        LoopSettings(rate_hz=RATE, history=0),
        world_factory(WorldSpec(env="tickcall/Arena-v0", seed=0)),
        small_ep,
        big_ep,
        CascadeSettings(**cascade),
        client_timeout_ms=1000,
    )


def _records(res):
    records = [TickRecord.from_dict(r) for r in res["records"]]
    counts = count_outcomes(records)
    assert sum(counts.values()) == len(records) and [r.tick for r in records] == list(range(len(records)))
    assert all(r.decided_by in ("small", "big", "none") and r.route_reason in REASONS for r in records)
    return records, counts


def test_threshold_zero_keeps_the_small_model_and_above_one_takes_the_big(services):
    small_ep, big_ep = services
    for threshold in (0.0, 1.01):
        loop = _loop(small_ep, big_ep, big_rate_hz=4, threshold=threshold, max_age_ms=400)
        try:
            assert ray.get(loop.info.remote())["big"]["endpoint"] == big_ep
            res = ray.get(loop.run.remote(max_ticks=32), timeout=120)
        finally:
            _stop(loop)
        records, counts = _records(res)
        sent = [r for r in records if r.outcome == "ok"]
        assert counts["ok"] >= 1
        big = res["cascade"]["big"]
        assert big["decides"] >= 2 and big["sent"] <= 32 / RATE * 4 + 2  # its own rate, not the tick's
        assert big["p50_ms"] >= 60  # the artificial delay
        if threshold == 0.0:
            assert {r.route_reason for r in sent} == {"confident"} and {r.decided_by for r in sent} == {
                "small"
            }
        else:
            by_big = [r for r in sent if r.decided_by == "big"]
            assert by_big and {r.route_reason for r in sent} <= {
                "low_confidence_big",
                "big_missing",
                "low_confidence_stale_big",
            }
            assert all(r.big_age_ms <= 400 for r in by_big)
        pairs = [r for r in records if r.big_call is not None and r.small_call is not None]
        assert pairs and all(r.confidence is not None for r in pairs)  # the reliability curve's data


def test_a_stalled_big_model_leaves_the_loop_on_the_small_one(services):
    from tickcall.agent.actor import start_policy_service

    small_ep, _ = services
    stalled, ep = start_policy_service(
        injected(batch_delay_ms=600), "tcp://127.0.0.1:0", max_restarts=0, num_cpus=0
    )
    loop = _loop(small_ep, ep, big_rate_hz=8, threshold=1.01, max_age_ms=200)
    try:
        res = ray.get(loop.run.remote(max_ticks=32), timeout=120)
    finally:
        _stop(loop, stalled)
    records, counts = _records(res)
    assert counts["ok"] >= 1
    reasons = {r.route_reason for r in records if r.outcome == "ok"}
    assert reasons <= {"big_missing", "low_confidence_stale_big"} and "low_confidence_stale_big" in reasons
    assert not [r for r in records if r.decided_by == "big"]


def test_a_big_model_killed_mid_run_leaves_every_tick_accounted(services):
    from tickcall.agent.actor import start_policy_service

    small_ep, _ = services
    big, ep = start_policy_service({"backend": "noop"}, "tcp://127.0.0.1:0", max_restarts=0, num_cpus=0)
    loop = _loop(small_ep, ep, big_rate_hz=8, threshold=1.01, max_age_ms=300)
    try:
        ref = loop.run.remote(max_ticks=64)  # 4 s
        deadline = time.monotonic() + 60
        while ray.get(loop.status.remote())["ticks"] < 16 and time.monotonic() < deadline:
            time.sleep(0.05)
        ray.kill(big, no_restart=True)
        killed_at = ray.get(loop.status.remote())["ticks"]
        res = ray.get(ref, timeout=120)
    finally:
        _stop(loop)
    records, counts = _records(res)
    assert len(records) == 64 and counts["ok"] >= 1
    before = [r for r in records[:killed_at] if r.outcome == "ok"]
    after = [r for r in records[killed_at + 8 :] if r.outcome == "ok"]  # 0.5 s after the kill
    assert any(r.decided_by == "big" for r in before)
    assert after and all(r.decided_by == "small" for r in after)
    assert {r.route_reason for r in after} == {"low_confidence_stale_big"}
    assert res["cascade"]["big"]["errors"] >= 1  # its requests timed out, counted


def test_tickcall_run_with_a_cascade_writes_the_report_and_calibrates(services, tmp_path):
    from dataclasses import replace

    from tickcall.job import run_job, summary_lines

    small_ep, big_ep = services
    base = load_run_config(
        None,
        {
            "service.endpoint": small_ep,
            "duration_s": 2.0,
            "progress": False,
            "cascade.endpoint": big_ep,
            "cascade.threshold": 0.0,
            "cascade.big_rate_hz": 8.0,
            "report_dir": str(tmp_path / "c0"),
        },
    )
    out = run_job(base)
    cas = out.report["cascade"]
    for key in ("small_share", "big_share", "reasons", "big", "reliability", "threshold", "threshold_source"):
        assert key in cas, key
    for key in ("p50_ms", "p90_ms", "decides", "errors", "rate_hz"):
        assert key in cas["big"], key
    assert sum(cas["reasons"].values()) == out.report["ticks"] and cas["small_share"] >= 0.5
    assert cas["reliability"]["pairs"] >= 2
    lines = [json.loads(line) for line in (tmp_path / "c0" / "ticks.jsonl").read_text().splitlines()]
    assert len(lines) == out.report["ticks"]
    for key in ("decided_by", "route_reason", "confidence", "big_age_ms", "small_call", "big_call"):
        assert key in lines[0], key
    assert (tmp_path / "c0" / "timeline.png").exists()
    assert any(line.startswith("cascade  small") for line in summary_lines(out.report))

    # the second run takes its threshold from the first one's pairs (the student agrees with itself: 0)
    cal_cfg = replace(
        base,
        report_dir=str(tmp_path / "c1"),
        cascade=replace(base.cascade, threshold="auto", calibrate_from=str(tmp_path / "c0")),
    )
    out = run_job(cal_cfg)
    cas = out.report["cascade"]
    assert cas["threshold_source"].startswith("calibrated from") and cas["calibration"]["pairs"] >= 2
    assert cas["threshold"] == choose_threshold(cas["calibration"], 0.95)


def test_a_big_service_that_is_not_there_is_one_line_at_start(services):
    from tickcall.control_loop.actor import LoopSetupError
    from tickcall.control_loop.cascade import start_cascade_loop_actor

    from tickcall.world import WorldSpec, world_factory

    small_ep, _ = services
    with pytest.raises(LoopSetupError, match="the big model's service at tcp://127.0.0.1:9") as info:
        start_cascade_loop_actor(
            LoopSettings(rate_hz=RATE),
            world_factory(WorldSpec(env="tickcall/Arena-v0")),
            small_ep,
            "tcp://127.0.0.1:9",
            CascadeSettings(threshold=0),
            client_timeout_ms=500,
            register_timeout_ms=1500,
        )
    assert "\n" not in str(info.value)


def test_online_distillation_fine_tunes_and_hot_swaps_the_small_model_mid_run(services, tmp_path):
    """A cascade run whose small service is started here (the shipped student), with the distiller on:
    a round fine-tunes the student on the big model's logged decisions in a child process (5 steps, one
    torch thread) and hot-swaps it in; the ticks say where (``weights``), the report lists the swap
    with its warm time, every tick is accounted, and the big decisions read back as a dataset."""
    from tickcall.envs.recorded import ticks_dataset

    from tickcall.job import run_job
    from tickcall.training import DistillSettings

    _, big_ep = services
    cfg = load_run_config(
        None,
        {
            "model": STUDENT,
            "duration_s": 14.0,
            "progress": False,
            "cascade.endpoint": big_ep,
            "cascade.threshold": 0.0,
            "cascade.big_rate_hz": 8.0,
            "report_dir": str(tmp_path / "d"),
        },
    )
    out = run_job(cfg, distill=DistillSettings(every_s=2.0, steps=5, batch_size=8, min_rows=4))
    rep = out.report
    assert sum(rep["outcomes"].values()) == rep["ticks"] == len(out.records)
    rounds = rep["distill"]["rounds"]
    done = [r for r in rounds if r.get("ok")]
    assert done, rounds
    assert done[0]["weights"] == "distill-1" and done[0]["warm_ms"] > 0 and done[0]["rows"] >= 4
    swaps = rep["swaps"]
    assert swaps and swaps[0]["model"] == "distill-1" and swaps[0]["warm_ms"] == done[0]["warm_ms"]
    tick = swaps[0]["tick"]
    weights = [r.weights for r in out.records if r.weights is not None]
    assert weights[0] == "tickcall-arena" and out.records[tick].weights == "distill-1"
    assert all(r.weights == "tickcall-arena" for r in out.records[:tick] if r.weights is not None)
    # no decide lost to the swap: the service answered none with unknown_handle (the same handle
    # served on), the loop never had an error reply; late/skipped ticks are this 2-core machine's load
    # (the fine-tune process competes with the loop for the CPU), not the swap's
    stats = rep["service"]["stats"]
    assert stats["swaps"] >= 1 and not stats.get("error_unknown_handle") and rep["outcomes"]["error"] == 0
    curve = rep["distill"]["curve"]
    assert curve and sum(c["ticks"] for c in curve) == rep["ticks"]
    assert all(0.0 <= c["small_share"] <= 1.0 for c in curve)
    # the round's data: the big model's calls as labels
    data = ticks_dataset(tmp_path / "d" / "distill" / "round-1", labels="big")
    assert len(data.records) == done[0]["rows"] and data.header.meta["labels"] == "big"
