"""The control loop's logic on a simulated clock: rate keeping, outcome accounting, fallbacks.

These are unit tests of ``control_loop.loop`` (the rate keeper itself: ``tests/test_timing.py``).
Wall-clock time is replaced by a simulated clock (``SimClock``) so that every figure is exact and no test depends on how busy the
machine is; the policy (``ScriptedPolicy``) holds each reply for a chosen simulated delay, because the
point here is the loop's bookkeeping. The replies themselves are real: an in-process policy
(``agent.inproc.InProcPolicy``, the service's own assembly and validation path) over a scripted engine
(tests/helpers.py) makes them, so they are the types ``PolicyClient`` hands out and cannot drift from
them. The same behaviours are tested with a real policy service (Ray actor, ZMQ sockets) in
``tests/test_loop_service.py``.
"""

from __future__ import annotations

import time

import pytest
from helpers import HeldReplies, ScriptedEngine, SimClock, injected
from tickcall.agent.inproc import InProcPolicy
from tickcall.control_loop.loop import ControlLoop, LoopSettings
from tickcall.control_loop.policy import Policy
from tickcall.control_loop.records import OUTCOMES, count_outcomes
from tickcall.control_loop.stats import summarize
from tickcall.envs.world import EnvObservation as Observation
from tickcall.models.calls import Call

MOVE = [
    {
        "type": "function",
        "function": {
            "name": "move",
            "description": "Move.",
            "parameters": {
                "type": "object",
                "properties": {"direction": {"type": "string", "enum": ["N", "E", "S", "W"]}},
                "required": ["direction"],
            },
        },
    }
]


class ScriptedPolicy(HeldReplies):
    """Answers request ``tick`` after ``delay(tick)`` simulated seconds (None: never) with ``kind(tick)``.

    ``kind``: 'ok' (a legal call), 'illegal' (an illegal call), 'error' (the engine fails). The reply is
    made at once by an ``InProcPolicy`` and held back until its simulated time."""

    def __init__(self, clock: SimClock, delay, kind=lambda tick: "ok") -> None:
        super().__init__(clock)
        self.delay = delay
        self.kind = kind
        self.sent: list[tuple[int, float]] = []
        self.engine = ScriptedEngine(ok_args={"direction": "N"}, illegal_args={"direction": "up?"})
        self.inner = InProcPolicy(self.engine)
        self.inner.register(MOVE)

    def send_decide(self, turn, tick_id, deadline_ms):
        assert deadline_ms > 0
        self.sent.append((tick_id, deadline_ms))
        self.engine.kind = self.kind(tick_id)
        msg_id = self.inner.send_decide(turn, tick_id, deadline_ms)
        [reply] = self.inner.poll()
        self._hold(reply, self.delay(tick_id))
        return msg_id



class SimWorld:
    def __init__(self, clock: SimClock) -> None:
        self.clock = clock
        self.fallbacks: list[str] = []

    def observe(self) -> Observation:
        return Observation(text="x=1", taken_at=self.clock() - 0.002)

    def fallback(self, kind: str) -> str:
        self.fallbacks.append(kind)
        return kind


class Hands:
    def __init__(self) -> None:
        self.calls: list[Call] = []

    def dispatch(self, call, seq=None):
        self.calls.append(call)
        return object()

    def history_lines(self, limit):
        return [f"{c.name}()@f{i}" for i, c in enumerate(self.calls[-limit:])]


def make(delay, kind=lambda t: "ok", **settings):
    clock = SimClock()
    policy = ScriptedPolicy(clock, delay, kind)
    world, hands = SimWorld(clock), Hands()
    loop = ControlLoop(LoopSettings(**settings), policy, world, hands, clock=clock, sleep=clock.sleep)
    return loop, policy, world, hands, clock


# --------------------------------------------------------------------------- outcome accounting


def test_all_ok_when_the_service_answers_in_time():
    loop, policy, world, hands, _ = make(lambda t: 0.010)
    res = loop.run(max_ticks=50)
    counts = count_outcomes(res.records)
    assert counts == {"ok": 50, "late": 0, "fallback": 0, "skipped": 0, "error": 0}
    assert [r.tick for r in res.records] == list(range(50))
    assert len(hands.calls) == 50 and not world.fallbacks
    r = res.records[7]
    assert r.rtt_ms == pytest.approx(10.0, abs=1e-6)
    assert r.latency_ms == pytest.approx(10.0, abs=1e-6)  # tick took the obs -> call dispatched
    assert r.obs_age_ms == pytest.approx(2.0, abs=1e-6)  # the env made it 2 ms before the tick
    assert set(r.stages_ms) == {"queue", "prefill", "decode", "assemble", "engine", "server"}
    # the deadline sent with each request is the time left until the next tick (16 Hz: 62.5 ms)
    assert policy.sent[0][1] == pytest.approx(62.5, abs=0.01)
    rep = summarize(res.records, 16.0, res.elapsed_s)
    assert rep["latency_ms"]["p50"] == pytest.approx(10.0, abs=1e-6)
    assert rep["achieved_hz"] == pytest.approx(16.0)
    assert rep["deadline_misses"] == 0 and rep["drift_ms"] == pytest.approx(0.0, abs=1e-6)


def test_every_ok_tick_names_the_weights_that_answered_and_a_swap_is_marked():
    """Call replies name their weights; a hot swap (the core switching engines between two steps, as
    the service does) shows as the tick where the name changes, for every run, not only cascades."""
    from helpers import ScriptedEngine
    from tickcall.control_loop.stats import swap_marks

    loop, policy, world, hands, _ = make(lambda t: 0.010)
    core = policy.inner._core
    first = core.weights
    new_engine = ScriptedEngine(ok_args={"direction": "N"}, illegal_args={"direction": "up?"})
    swapped = {}

    def dispatch(call, seq=None, _orig=hands.dispatch):
        if len(hands.calls) == 20 and not swapped:  # at tick 20's call (its reply made): tick 21 gets new weights
            warmed = core.warm(new_engine)
            core.switch(new_engine, warmed, "student-v2")
            policy.engine = new_engine
            swapped["at"] = True
        return _orig(call, seq)

    hands.dispatch = dispatch
    res = loop.run(max_ticks=40)
    assert count_outcomes(res.records)["ok"] == 40
    assert [r.weights for r in res.records] == [first] * 21 + ["student-v2"] * 19
    assert swap_marks(res.records) == [{"tick": 21, "model": "student-v2"}]


def test_late_replies_fall_back_and_are_never_applied():
    # every request takes 1.5 periods: its deadline passes, the fallback acts, the reply is late;
    # with in_flight=skip the tick after each request is skipped (the request is still out)
    loop, policy, world, hands, _ = make(lambda t: 1.5 / 16, fallback="default")
    res = loop.run(max_ticks=40)
    counts = count_outcomes(res.records)
    assert sum(counts.values()) == 40
    assert counts["ok"] == 0 and not hands.calls
    assert counts["late"] == 20 and counts["skipped"] == 20
    assert all(r.reason == "in_flight" for r in res.records if r.outcome == "skipped")
    assert world.fallbacks == ["default"] * 20
    assert all(r.fallback == "default" for r in res.records if r.outcome == "late")


def test_supersede_policy_sends_every_tick():
    loop, policy, world, hands, _ = make(lambda t: 1.5 / 16, in_flight="supersede")
    res = loop.run(max_ticks=40)
    counts = count_outcomes(res.records)
    assert sum(counts.values()) == 40 and counts["skipped"] == 0
    assert len(policy.sent) == 40
    assert counts["late"] == 40 and not hands.calls


def test_illegal_calls_and_service_errors_are_errors_with_fallback():
    kinds = {0: "ok", 1: "illegal", 2: "error"}
    loop, policy, world, hands, _ = make(lambda t: 0.005, kind=lambda t: kinds[t % 3])
    res = loop.run(max_ticks=30)
    counts = count_outcomes(res.records)
    assert counts == {"ok": 10, "late": 0, "fallback": 0, "skipped": 0, "error": 20}
    assert len(hands.calls) == 10  # the illegal calls were never applied
    assert len(world.fallbacks) == 20
    bad = res.records[1]
    assert bad.outcome == "error" and bad.reason.startswith("illegal call")
    assert bad.call == {"name": "move", "arguments": {"direction": "up?"}}
    # the error's own text reaches the record (ErrorReply.message), not just its code
    assert res.records[2].reason == "service error engine_failure: EngineError: boom"


def test_dead_service_keeps_the_rate_with_fallbacks_then_recovers():
    # ticks 20..59 get no reply at all (service down), the rest answer in 5 ms
    loop, policy, world, hands, clock = make(
        lambda t: None if 20 <= t < 60 else 0.005, in_flight_timeout_ms=125
    )
    res = loop.run(max_ticks=100)
    counts = count_outcomes(res.records)
    assert sum(counts.values()) == 100
    assert res.records[-1].outcome == "ok"  # recovered
    down = res.records[20:60]
    assert {r.outcome for r in down} <= {"fallback", "skipped"}
    assert counts["fallback"] >= 10 and counts["ok"] >= 55
    # the rate was kept: every tick that ran started on time
    assert all(
        r.lateness_ms == pytest.approx(0.0, abs=1e-6) for r in res.records if r.lateness_ms is not None
    )
    assert res.elapsed_s == pytest.approx(100 / 16, abs=0.07)


def test_missed_periods_are_recorded_as_skipped_ticks():
    loop, policy, world, hands, clock = make(lambda t: 0.005)

    real_observe = world.observe

    def slow_observe():
        if len(policy.sent) == 10:
            clock.sleep(0.2)  # the world stalls the loop for 3.2 periods once
        return real_observe()

    world.observe = slow_observe
    res = loop.run(max_ticks=30)
    counts = count_outcomes(res.records)
    assert sum(counts.values()) == 30 == len(res.records)
    missed = [r.tick for r in res.records if r.reason == "missed_period"]
    assert missed == [11, 12]  # 687.5 and 750 ms could not start; 812.5 ms runs 12.5 ms late
    assert res.records[13].lateness_ms == pytest.approx(12.5)
    assert res.records[10].outcome == "late"  # it was sent after its own deadline
    rep = summarize(res.records, 16.0, res.elapsed_s)
    # tick 13 starts at 825 ms, before tick 10's reply (830 ms): skipped, its request is in flight
    assert res.records[13].reason == "in_flight" and res.records[14].outcome == "ok"
    assert rep["missed_periods"] == 2 and rep["longest_miss_streak"] == 4
    assert res.warnings and "falling behind" in res.warnings[0]


def test_duration_and_stop_end_the_run():
    loop, *_ = make(lambda t: 0.005)
    res = loop.run(duration_s=2.0)
    assert len(res.records) == 32
    loop2, policy, *_ = make(lambda t: 0.005)
    orig = policy.send_decide

    def send_then_stop(turn, tick, deadline):
        if tick == 4:
            loop2.stop()
        return orig(turn, tick, deadline)

    policy.send_decide = send_then_stop
    res2 = loop2.run(max_ticks=100)
    assert len(res2.records) == 5 and res2.stopped == "stop requested"
    assert set(count_outcomes(res2.records)) == set(OUTCOMES)


def test_send_failure_is_an_error_with_fallback():
    loop, policy, world, *_ = make(lambda t: 0.005)

    def broken(*a):
        raise ConnectionError("socket gone")

    policy.send_decide = broken
    res = loop.run(max_ticks=5)
    assert count_outcomes(res.records)["error"] == 5
    assert "socket gone" in res.records[0].reason and len(world.fallbacks) == 5


def test_history_from_the_futures_layer_goes_into_the_turn():
    loop, policy, world, hands, _ = make(lambda t: 0.005, history=2)
    turns = []
    orig = policy.send_decide

    def spy(turn, tick, deadline):
        turns.append(turn)
        return orig(turn, tick, deadline)

    policy.send_decide = spy
    loop.run(max_ticks=4)
    assert turns[0].history == [] and turns[3].history == ["move()@f0", "move()@f1"]
    assert turns[0].query == "x=1"


def test_falling_behind_warnings_are_throttled():
    loop, policy, world, hands, clock = make(lambda t: 0.005, warn_interval_s=5.0)
    real_observe = world.observe

    def stalling_observe():
        clock.sleep(0.1)  # every tick overruns by more than a period: behind all the time
        return real_observe()

    world.observe = stalling_observe
    res = loop.run(max_ticks=160)  # 10 s simulated
    assert sum(count_outcomes(res.records).values()) == 160
    assert len(res.warnings) == 2  # one per 5 s, not one per tick
    assert "more since the last warning" in res.warnings[1]


def test_progress_line():
    from tickcall.control_loop.progress import format_progress

    line = format_progress(
        {
            "ticks": 480,
            "ticks_planned": 960,
            "achieved_hz": 16.0,
            "latency_p50_ms": 4.12,
            "latency_p99_ms": 9.8,
            "outcomes": {"ok": 470, "late": 2, "fallback": 3, "error": 0, "skipped": 5},
            "episodes_done": 3,
            "last_return": 41.0,
        }
    )
    assert line == (
        "tick 480/960  16.0 Hz  lat p50 4.1 p99 9.8 ms  ok 470 late 2 fb 3 err 0 skip 5  ep 3 ret 41.0"
    )


@pytest.mark.parametrize("rate", [1, 16, 60])
def test_any_rate_from_1_to_60_hz(rate):
    loop, policy, world, hands, clock = make(lambda t: 0.2 / rate, rate_hz=rate)
    res = loop.run(duration_s=3)
    assert len(res.records) == 3 * rate == count_outcomes(res.records)["ok"]
    assert policy.sent[0][1] == pytest.approx(1e3 / rate, abs=0.01)  # deadline = one period
    rep = summarize(res.records, rate, res.elapsed_s)
    assert rep["achieved_hz"] == pytest.approx(rate)


def test_service_error_detail_reaches_the_record_over_real_sockets():
    """A real PolicyClient and PolicyServer (ZMQ, real clock): an engine failure's message, as the
    client hands it out, is what the loop records as the tick's reason."""
    from tickcall.agent.client import PolicyClient
    from tickcall.agent.config import ServeConfig
    from tickcall.agent.engines import build_engine
    from tickcall.agent.server import PolicyServer

    srv = PolicyServer(build_engine(injected(fail_on_query="x=1")), ServeConfig(bind="tcp://127.0.0.1:0"))
    client = PolicyClient(srv.start(), timeout_ms=5000)
    try:
        client.register(MOVE)
        assert isinstance(client, Policy) and isinstance(InProcPolicy(ScriptedEngine({}, {})), Policy)
        world = SimWorld(time.monotonic)
        loop = ControlLoop(
            LoopSettings(rate_hz=10, deadline_ms=2000, in_flight_timeout_ms=4000), client, world
        )
        res = loop.run(max_ticks=2)
    finally:
        client.close()
        srv.stop()
    assert [r.outcome for r in res.records] == ["error", "error"]
    assert res.records[0].reason == (
        "service error engine_failure: EngineError: injected failure: query contains 'x=1'"
    )
