"""The control loop against a real policy service: Ray actors, ZMQ sockets, the real arena / CartPole.

Nothing is faked here except the model: the service runs the no-op engine (``models.engine.NoOpEngine``,
which always answers the first tool without arguments), with the service's own test injections
(tests/helpers.py, ``batch_delay_ms``: every decode takes that long) where a slow model is needed. The loop runs as a
Ray actor (``control_loop.actor.LoopActor``) in its own process with a real-time env.

Assertions are on accounting and behaviour, never on how fast this machine is: a "late" service takes
1.5 periods per reply, so no reply can ever beat its deadline however the machine is loaded.
"""

from __future__ import annotations

import contextlib
import time

import pytest
from helpers import injected
from polling import wait_for
from tickcall.control_loop.loop import LoopSettings
from tickcall.control_loop.records import OUTCOMES, TickRecord, count_outcomes

from tickcall.world import WorldSpec, world_factory

ray = pytest.importorskip("ray")

RATE = 20.0  # Hz: 50 ms periods (and deadlines)


def _service(spec, **kw):
    from tickcall.agent.actor import start_policy_service

    return start_policy_service(spec, "tcp://127.0.0.1:0", **kw)


def _loop(endpoint, env="tickcall/Arena-v0", **settings):
    from tickcall.control_loop.actor import start_loop_actor

    s = LoopSettings(rate_hz=RATE, **settings)
    return start_loop_actor(s, world_factory(WorldSpec(env=env, seed=0)), endpoint, client_timeout_ms=1000)


def _run(actor, **kw):
    res = ray.get(actor.run.remote(**kw), timeout=120)
    records = [TickRecord.from_dict(r) for r in res["records"]]
    return res, records


def _stop(*actors):
    for a in actors:
        with contextlib.suppress(Exception):
            ray.get(a.close.remote(), timeout=10)
        ray.kill(a, no_restart=True)


def _check_accounting(records, ticks=None):
    counts = count_outcomes(records)
    assert sum(counts.values()) == len(records)
    assert [r.tick for r in records] == list(range(len(records)))
    if ticks is not None:
        assert len(records) == ticks
    return counts


def test_service_that_answers(ray_session):
    svc, endpoint = _service({"backend": "noop"})
    loop = _loop(endpoint)
    try:
        info = ray.get(loop.info.remote())
        assert info["heads"][0] == "function" and info["endpoint"] == endpoint
        res, records = _run(loop, max_ticks=40)
        counts = _check_accounting(records, 40)
        assert counts["ok"] >= 1 and counts["error"] == 0
        for r in records:
            if r.outcome == "ok":
                assert r.call == {"name": "wait", "arguments": {}}
                assert r.latency_ms is not None and r.rtt_ms is not None and "engine" in r.stages_ms
        hands = res["world"]["hands"]
        assert hands["accepted"] == counts["ok"]  # every ok call reached the actuator lane
        assert res["world"]["env_stats"]["applied"] >= 1  # and the env applied it
    finally:
        _stop(loop, svc)


def test_service_that_answers_late(ray_session):
    # every decode takes 1.5 periods: no reply can beat its deadline
    svc, endpoint = _service(injected(batch_delay_ms=1.5e3 / RATE))
    loop = _loop(endpoint, fallback="default")
    try:
        res, records = _run(loop, max_ticks=30)
        counts = _check_accounting(records, 30)
        assert counts["ok"] == 0 and counts["late"] >= 1
        assert res["world"]["hands"]["accepted"] == 0  # a late reply is never applied
        for r in records:
            if r.outcome in ("late", "fallback"):
                assert r.fallback == "default"
            if r.outcome == "late":
                assert r.rtt_ms > 1e3 / RATE  # it really came after the deadline
    finally:
        _stop(loop, svc)


def test_service_that_answers_illegally(ray_session):
    # CartPole's one tool is push(direction) with direction required; this engine answers push()
    svc, endpoint = _service({"backend": "factory", "factory": "tests.helpers:scripted_engine", "kind": "illegal"})
    loop = _loop(endpoint, env="CartPole-v1")
    try:
        res, records = _run(loop, max_ticks=30)
        counts = _check_accounting(records, 30)
        assert counts["ok"] == 0 and counts["error"] >= 1
        assert res["world"]["hands"]["accepted"] == 0  # an illegal call is never applied
        errors = [r for r in records if r.outcome == "error"]
        assert all(r.reason.startswith("illegal call") and "direction" in r.reason for r in errors)
        assert all(r.call == {"name": "push", "arguments": {}} and r.fallback == "hold" for r in errors)
    finally:
        _stop(loop, svc)


def test_service_killed_mid_run_then_restarted(ray_session):
    svc, endpoint = _service({"backend": "noop"})
    loop = _loop(endpoint, in_flight_timeout_ms=200)
    ref = loop.run.remote(max_ticks=100_000)
    try:

        def oks():
            return ray.get(loop.status.remote())["outcomes"].get("ok", 0)

        assert wait_for(lambda: oks() >= 10, 60), "the loop never got going"
        ray.kill(svc, no_restart=False)  # the service process dies; Ray restarts it
        t_kill = time.monotonic()

        def misses():
            o = ray.get(loop.status.remote())["outcomes"]
            return o.get("fallback", 0) + o.get("skipped", 0)

        assert wait_for(lambda: misses() >= 5, 60), "no fallback while the service was down"
        ok_at_outage = oks()
        assert wait_for(lambda: oks() >= ok_at_outage + 10, 120), "the loop did not recover"
        ray.get(loop.stop.remote())
        res = ray.get(ref, timeout=60)
    except BaseException:
        ray.get(loop.stop.remote())
        raise
    finally:
        _stop(loop, svc)
    records = [TickRecord.from_dict(r) for r in res["records"]]
    counts = _check_accounting(records)
    assert set(counts) == set(OUTCOMES)
    outcomes = [r.outcome for r in records]
    first_miss = next(i for i, o in enumerate(outcomes) if o in ("fallback", "skipped"))
    assert "ok" in outcomes[:first_miss] and "ok" in outcomes[first_miss:]
    # while the service was down the loop kept ticking: every tick has a record, most ran on time
    outage = [r for r in records[first_miss:] if r.outcome != "ok"]
    assert len(outage) >= 5 and any(r.fallback == "hold" for r in outage)
    assert res["renewals"] >= 1 or res["client"]["renewals"] >= 1  # tools registered again
    assert time.monotonic() > t_kill
    print("outcomes around the outage:", "".join(o[0] for o in outcomes[max(0, first_miss - 5) :]))


def test_episodes_end_the_run_and_are_reported(ray_session):
    # CartPole falls within a second when every call is refused (the fallback holds push-left)
    svc, endpoint = _service({"backend": "noop"})
    loop = _loop(endpoint, env="CartPole-v1")
    try:
        res, records = _run(loop, episodes=2, max_ticks=2000)
        _check_accounting(records)
        assert res["stopped"] == "episodes done"
        assert len(res["episodes"]) == 2
        assert all(e["length"] >= 1 and e["return"] == e["length"] for e in res["episodes"])
        assert {r.episode for r in records} >= {0, 1}
    finally:
        _stop(loop, svc)


def test_history_lines_reach_the_turn():
    """The world's hands render what was dispatched; the loop puts those lines in the next turn."""
    from tickcall.models.calls import Call

    from tickcall.world import make_world

    world = make_world("tickcall/Arena-v0")
    try:
        world.start()
        world.hands.dispatch(Call("aim", {"direction": "N"}), seq=1)
        assert world.hands.settle(5.0)
        lines = world.hands.history_lines(4)
        assert lines and lines[-1].startswith('aim(direction="N")@f1')
        obs = world.observe()
        assert "tgt=" in obs.text and obs.taken_at > 0
        assert world.fallback("noop") == "noop" and world.fallback("hold") == "hold"
        assert world.fallback("default") == "default"
    finally:
        world.close()
