"""AsyncFC futures layer: behaviour, one example at a time (real threads, real child processes).

No timing thresholds: waits are generous upper bounds (seconds) that only stop a broken test from
hanging; time-dependent behaviour (timeouts) runs on a ManualClock.
"""

from __future__ import annotations

import os
import threading

import pytest
from tickcall.control_loop.futures import (
    PENDING,
    ActuatorCrash,
    AsyncFC,
    CallState,
    Lane,
    ManualClock,
)
from tickcall.control_loop.futures.deps import future_ref, references, substitute
from tickcall.models.calls import Call

WAIT = 10.0  # seconds; an upper bound for a broken test, never a performance claim


class Gate:
    """An actuator that blocks each call until the test releases it; logs what it ran."""

    def __init__(self, fail: str | None = None) -> None:
        self.release = threading.Event()
        self.entered = threading.Semaphore(0)
        self.ran: list[dict] = []
        self.fail = fail

    def __call__(self, call: Call):
        self.ran.append(dict(call.arguments))
        self.entered.release()
        assert self.release.wait(WAIT), "test never released the gate"
        if self.fail:
            raise RuntimeError(self.fail)
        return call.arguments.get("x")


class Recorder:
    """A context actuator that returns PENDING: the test resolves each call with ``fc.resolve``."""

    def __init__(self) -> None:
        self.ran: list[tuple[str, dict]] = []
        self.contexts = {}

    def __call__(self, call: Call, ctx):
        self.ran.append((ctx.id, dict(call.arguments)))
        self.contexts[ctx.id] = ctx
        if call.arguments.get("crash"):
            raise ActuatorCrash("boom")
        return PENDING


@pytest.fixture
def clock():
    return ManualClock(100.0)


def make(lanes, actuators, clock=None, **kw):
    kw.setdefault("watchdog_s", None)
    return AsyncFC(lanes, actuators, clock=clock or ManualClock(), **kw)


def test_dispatch_does_not_wait_for_a_blocked_actuator():
    gate = Gate()
    fc = make([Lane("move", policy="fifo", queue=4)], {"move": gate})
    try:
        futs = [fc.dispatch(Call("move", {"x": i})) for i in range(3)]
        assert gate.entered.acquire(timeout=WAIT)
        # the actuator is blocked inside call 1, yet all three dispatches came back
        assert [f.id for f in futs] == ["f1", "f2", "f3"]
        assert futs[0].state is CallState.RUNNING
        assert [f.state for f in futs[1:]] == [CallState.QUEUED, CallState.QUEUED]
        assert fc.ledger.accepted == 3 and fc.ledger.in_flight == 3
        gate.release.set()
        assert all(f.wait(WAIT) for f in futs)
        assert [f.result for f in futs] == [0, 1, 2]
        assert gate.ran == [{"x": 0}, {"x": 1}, {"x": 2}]  # FIFO order
    finally:
        gate.release.set()
        fc.shutdown(timeout_s=0)
    assert fc.ledger.balanced() and fc.ledger.in_flight == 0


def test_fifo_overflow_is_rejected_explicitly():
    gate = Gate()
    fc = make([Lane("fire", policy="fifo", queue=2)], {"fire": gate})
    try:
        first = fc.dispatch(Call("fire", {"x": 0}))
        assert gate.entered.acquire(timeout=WAIT)  # running: the queue is empty again
        queued = [fc.dispatch(Call("fire", {"x": i})) for i in (1, 2)]
        over = fc.dispatch(Call("fire", {"x": 3}))
        assert over.state is CallState.REJECTED and over.error == "queue full (2)"
        assert [f.state for f in queued] == [CallState.QUEUED, CallState.QUEUED]
        gate.release.set()
        assert all(f.wait(WAIT) for f in [first, *queued])
        assert gate.ran == [{"x": 0}, {"x": 1}, {"x": 2}]  # the rejected call never ran
        assert fc.metrics()["states"]["rejected"] == 1
    finally:
        gate.release.set()
        fc.shutdown(timeout_s=0)


def test_latest_wins_replaces_queued_and_rejects_stale_seq():
    gate = Gate()
    fc = make([Lane("move", policy="latest")], {"move": gate})
    try:
        a = fc.dispatch(Call("move", {"x": 1}), seq=10)
        assert gate.entered.acquire(timeout=WAIT)
        b = fc.dispatch(Call("move", {"x": 2}), seq=11)
        c = fc.dispatch(Call("move", {"x": 3}), seq=12)
        stale = fc.dispatch(Call("move", {"x": 9}), seq=11)
        assert b.state is CallState.SUPERSEDED and b.superseded_by == c.id
        assert stale.state is CallState.REJECTED and "stale seq 11 < 12" in stale.error
        assert a.state is CallState.RUNNING  # the running command finishes
        gate.release.set()
        assert a.wait(WAIT) and c.wait(WAIT)
        assert (a.state, c.state) == (CallState.DONE, CallState.DONE)
        assert gate.ran == [{"x": 1}, {"x": 3}]
        assert fc.applied("move") is c
    finally:
        gate.release.set()
        fc.shutdown(timeout_s=0)


def test_latest_wins_under_reordered_completions():
    """Two commands run at once (k=2); the newer completes first; the older's later result is
    recorded as late and never applied."""
    rec = Recorder()
    fc = make([Lane("steer", policy="latest", k=2, context=True)], {"steer": rec})
    try:
        old = fc.dispatch(Call("steer", {"a": 1}))
        assert fc.settle(WAIT)
        new = fc.dispatch(Call("steer", {"a": 2}))
        assert fc.settle(WAIT)
        assert (old.state, new.state) == (CallState.RUNNING, CallState.RUNNING)
        assert fc.resolve(new.id, "a=2") is True
        assert fc.resolve(old.id, "a=1") is False
        assert new.state is CallState.DONE and new.result == "a=2"
        assert old.state is CallState.SUPERSEDED and old.superseded_by == new.id
        assert old.result is None and old.late_result == "a=1"
        assert fc.applied("steer") is new
        assert fc.ledger.late == 1
    finally:
        fc.shutdown(timeout_s=0)


def test_dependent_call_waits_for_its_input_and_gets_its_value():
    rec = Recorder()
    fc = make([Lane("scan", policy="fifo", k=2, context=True),
               Lane("fire", policy="fifo", context=True)], {"scan": rec, "fire": rec})
    try:
        scan = fc.dispatch(Call("scan", {"r": 5}))
        fire = fc.dispatch(Call("fire", {"target": f"@{scan.id}", "n": 2}))
        assert fc.settle(WAIT)
        assert fire.state is CallState.WAITING
        assert [cid for cid, _ in rec.ran] == [scan.id]  # the dependent did not start
        assert fc.history_lines()[-1] == 'fire(target="@f1", n=2)@f2 waiting @f1'
        fc.resolve(scan.id, 17)
        assert fc.settle(WAIT)
        assert fire.state is CallState.RUNNING
        assert rec.ran[-1] == (fire.id, {"target": 17, "n": 2})
        assert fire.resolved_call == Call("fire", {"target": 17, "n": 2})
        assert fire.call.arguments["target"] == "@f1"  # the original is kept for the history
    finally:
        fc.shutdown(timeout_s=0)


@pytest.mark.parametrize("how", ["failed", "cancelled", "timed_out"])
def test_dependent_call_is_rejected_without_running_when_its_input_fails(how, clock):
    rec = Recorder()
    fc = make([Lane("scan", policy="fifo", k=2, context=True)], {"scan": rec}, clock=clock)
    try:
        src = fc.dispatch(Call("scan", {"r": 1}), timeout_complete_s=0.5)
        dep = fc.dispatch(Call("scan", {"q": f"@{src.id}"}))
        dep2 = fc.dispatch(Call("scan", {"q": f"@{dep.id}"}))  # a chain: rejected in turn
        assert fc.settle(WAIT)
        if how == "failed":
            fc.resolve(src.id, error="no target")
        elif how == "cancelled":
            fc.cancel(src.id)
        else:
            clock.advance(0.6)
            assert fc.poll() == 1
        assert fc.settle(WAIT)
        assert src.state.value == how
        assert dep.state is CallState.REJECTED and dep.error == f"input @{src.id} {how}"
        assert dep2.state is CallState.REJECTED and dep2.error == f"input @{dep.id} rejected"
        assert [cid for cid, _ in rec.ran] == [src.id]
        late = fc.dispatch(Call("scan", {"q": f"@{src.id}"}))  # naming a failed future later
        assert late.state is CallState.REJECTED
        unknown = fc.dispatch(Call("scan", {"q": "@f999"}))
        assert unknown.state is CallState.REJECTED and unknown.error == "unknown future @f999"
    finally:
        fc.shutdown(timeout_s=0)
    assert fc.ledger.balanced()


def test_timeouts_on_the_injected_clock_and_late_results(clock):
    rec = Recorder()
    fc = make([Lane("move", policy="fifo", queue=4, context=True)], {"move": rec}, clock=clock)
    try:
        run = fc.dispatch(Call("move", {"x": 1}), timeout_complete_s=0.2)
        wait = fc.dispatch(Call("move", {"x": 2}), timeout_start_s=0.1)
        assert fc.settle(WAIT)
        assert (run.state, wait.state) == (CallState.RUNNING, CallState.QUEUED)
        clock.advance(0.1)
        assert fc.poll() == 0  # exactly at the limit is still in time
        clock.advance(0.05)
        assert fc.poll() == 1 and wait.state is CallState.TIMED_OUT
        assert wait.error == "not started within 100ms"
        clock.advance(0.1)  # 0.25 s after start, poll not called: the late resolve is still a timeout
        assert fc.resolve(run.id, "ok") is False
        assert run.state is CallState.TIMED_OUT and run.result is None and run.late_result == "ok"
        assert rec.contexts[run.id].cancelled.is_set()
        assert fc.ledger.late == 1
        assert fc.ledger.by_state["timed_out"] == 2 and fc.ledger.by_state.get("done", 0) == 0
    finally:
        fc.shutdown(timeout_s=0)


def test_cancel_queued_and_running():
    gate = Gate()
    fc = make([Lane("fire", policy="fifo", queue=4, context=False)], {"fire": gate})
    try:
        a = fc.dispatch(Call("fire", {"x": 1}))
        b = fc.dispatch(Call("fire", {"x": 2}))
        assert gate.entered.acquire(timeout=WAIT)
        assert b.cancel() is True and b.state is CallState.CANCELLED
        assert a.cancel("operator") is True and a.state is CallState.CANCELLED and a.error == "operator"
        assert a.cancel() is False
        c = fc.dispatch(Call("fire", {"x": 3}))  # a replacement worker takes it while a's thread is stuck
        assert gate.entered.acquire(timeout=WAIT)
        gate.release.set()
        assert c.wait(WAIT) and c.state is CallState.DONE
        assert fc.settle(WAIT)
        assert a.late_result == 1 and a.state is CallState.CANCELLED  # late, never success
        assert gate.ran == [{"x": 1}, {"x": 3}]
        assert fc.metrics()["lanes"]["fire"]["abandoned_workers"] == 1
    finally:
        gate.release.set()
        fc.shutdown(timeout_s=0)


def test_hung_thread_actuator_times_out_and_the_lane_keeps_going(clock):
    gate = Gate()
    fc = make([Lane("act", policy="fifo", timeout_complete_s=1.0)], {"act": gate}, clock=clock)
    try:
        hung = fc.dispatch(Call("act", {"x": 1}))
        nxt = fc.dispatch(Call("act", {"x": 2}))
        assert gate.entered.acquire(timeout=WAIT)
        clock.advance(2.0)
        assert fc.poll() == 1 and hung.state is CallState.TIMED_OUT
        assert gate.entered.acquire(timeout=WAIT)  # the replacement worker started the next call
        assert nxt.state is CallState.RUNNING
    finally:
        gate.release.set()
        assert nxt.wait(WAIT)
        fc.shutdown(timeout_s=0)
    assert nxt.state is CallState.DONE and hung.state is CallState.TIMED_OUT


def test_actuator_exception_fails_only_its_call():
    def fire(call):
        if call.arguments.get("hot"):
            raise RuntimeError("cooldown")
        return "bang"

    fc = make([Lane("fire", policy="fifo")], {"fire": fire})
    try:
        bad = fc.dispatch(Call("fire", {"hot": True}))
        good = fc.dispatch(Call("fire", {}))
        assert bad.wait(WAIT) and good.wait(WAIT)
        assert bad.state is CallState.FAILED and bad.error == "cooldown"
        assert good.state is CallState.DONE
        assert fc.history_lines() == ["fire(hot=true)@f1 failed: cooldown", 'fire()@f2 done: "bang"']
        assert fc.metrics()["restarts"] == 0
    finally:
        fc.shutdown(timeout_s=0)


def test_crashing_thread_actuator_fails_its_calls_and_is_rebuilt():
    from tickcall.control_loop.futures.demo_actuators import Counter

    built: list[Counter] = []

    def factory():
        built.append(Counter())
        return built[-1]

    fc = make([Lane("arm", policy="fifo", queue=4, factory=True)], {"arm": factory})
    try:
        a = fc.dispatch(Call("arm", {}))
        assert a.wait(WAIT) and a.result["calls"] == 1
        boom = fc.dispatch(Call("arm", {"crash": True}))
        after = fc.dispatch(Call("arm", {}))
        assert boom.wait(WAIT) and after.wait(WAIT)
        assert boom.state is CallState.FAILED and boom.error == "actuator crashed: asked to crash"
        assert after.state is CallState.DONE and after.result["calls"] == 1  # a fresh instance
        assert len(built) == 2
        m = fc.metrics()
        assert m["lanes"]["arm"]["restarts"] == 1 and m["restarts"] == 1
    finally:
        fc.shutdown(timeout_s=0)


def test_crash_fails_every_call_the_actuator_was_running():
    rec = Recorder()
    fc = make([Lane("eng", policy="fifo", k=3, context=True)], {"eng": rec})
    try:
        a = fc.dispatch(Call("eng", {"i": 1}))
        b = fc.dispatch(Call("eng", {"i": 2}))
        assert fc.settle(WAIT)
        c = fc.dispatch(Call("eng", {"crash": True}))
        assert fc.settle(WAIT)
        assert {f.state for f in (a, b, c)} == {CallState.FAILED}
        assert all(f.error == "actuator crashed: boom" for f in (a, b, c))
        d = fc.dispatch(Call("eng", {"i": 4}))
        assert fc.settle(WAIT) and d.state is CallState.RUNNING
        assert fc.resolve(d.id, "ok") and d.state is CallState.DONE
        assert fc.resolve(a.id, "late") is False  # engine answered after the crash: late
    finally:
        fc.shutdown(timeout_s=0)


def test_external_resolve_contract():
    rec = Recorder()
    fc = make([Lane("eng", policy="fifo", queue=2, context=True)], {"eng": rec})
    try:
        a = fc.dispatch(Call("eng", {"i": 1}))
        b = fc.dispatch(Call("eng", {"i": 2}))
        assert fc.settle(WAIT)
        with pytest.raises(ValueError, match="has not started"):
            fc.resolve(b.id, 1)
        with pytest.raises(KeyError):
            fc.resolve("f404", 1)
        seen = []
        a.add_done_callback(lambda f: seen.append((f.id, f.state)))
        assert fc.resolve(a.id, error=RuntimeError("engine refused")) is True
        assert a.state is CallState.FAILED and a.error == "engine refused"
        assert seen == [(a.id, CallState.FAILED)]
        assert fc.settle(WAIT) and b.state is CallState.RUNNING
    finally:
        fc.shutdown(timeout_s=0)


def test_routing_default_lane_and_unknown_tools():
    fc = make([Lane("move", tools=["move", "strafe"], policy="latest")],
              {"move": lambda c: "m", "default": lambda c: "d"})
    try:
        assert fc.lane_for("strafe") == "move" and fc.lane_for("jump") == "default"
        f = fc.dispatch(Call("jump", {}))
        assert f.wait(WAIT) and f.result == "d" and f.lane == "default"
        assert fc.lanes["default"].policy == "fifo"
    finally:
        fc.shutdown(timeout_s=0)
    fc = make([], {"look": lambda c: 1}, default_lane=Lane("default", policy="fifo", k=2))
    try:
        assert fc.lanes["look"].policy == "fifo" and fc.lanes["look"].k == 2  # auto lane per actuator
        f = fc.dispatch({"name": "jump", "arguments": {}})
        assert f.state is CallState.REJECTED and f.error == "no lane for tool 'jump'"
    finally:
        fc.shutdown(timeout_s=0)


def test_bad_configuration_and_input_give_clear_errors():
    with pytest.raises(ValueError, match="policy"):
        Lane("x", policy="lifo")
    with pytest.raises(ValueError, match="k must be"):
        Lane("x", k=0)
    with pytest.raises(ValueError, match="has no actuator"):
        AsyncFC([Lane("move")], {}, watchdog_s=None)
    with pytest.raises(ValueError, match="import path"):
        AsyncFC([Lane("cpu", executor="process")], {"cpu": lambda c: 1}, watchdog_s=None)
    with pytest.raises(ValueError, match="is in lanes"):
        AsyncFC([Lane("a", tools=["t"]), Lane("b", tools=["t"])], {"a": print, "b": print}, watchdog_s=None)
    fc = make([Lane("move")], {"move": lambda c: 1})
    try:
        with pytest.raises(TypeError, match="needs a Call"):
            fc.dispatch("move(x=1)")
        assert fc.ledger.accepted == 0  # nothing was accepted, nothing lost
    finally:
        fc.shutdown(timeout_s=0)


def test_history_lines_show_running_and_finished_calls(clock):
    rec = Recorder()
    fc = make([Lane("move", policy="latest", context=True), Lane("fire", policy="fifo", context=True)],
              {"move": rec, "fire": rec}, clock=clock, param_order={"move": ["x", "y"]})
    try:
        f1 = fc.dispatch(Call("fire", {}))
        assert fc.settle(WAIT)
        fc.resolve(f1.id, error="cooldown")
        f2 = fc.dispatch(Call("move", {"y": 1, "x": 3}))
        assert fc.settle(WAIT)
        clock.advance(0.12)
        assert fc.history_lines() == ["fire()@f1 failed: cooldown", "move(x=3, y=1)@f2 running 120ms"]
        assert fc.history_lines(limit=1) == ["move(x=3, y=1)@f2 running 120ms"]
        fc.resolve(f2.id, {"pos": [3, 1]})
        assert fc.history_lines()[-1] == 'move(x=3, y=1)@f2 done: {"pos": [3, 1]}'
    finally:
        fc.shutdown(timeout_s=0)


def test_shutdown_finishes_every_call_and_rejects_new_ones():
    gate = Gate()
    rec = Recorder()
    fc = make([Lane("slow", queue=4), Lane("eng", context=True)], {"slow": gate, "eng": rec})
    futs = [fc.dispatch(Call("slow", {"x": i})) for i in range(3)] + [fc.dispatch(Call("eng", {}))]
    assert gate.entered.acquire(timeout=WAIT)
    fc.shutdown(timeout_s=0.0)
    gate.release.set()
    assert all(f.done() for f in futs)
    assert {f.state for f in futs} == {CallState.CANCELLED}
    after = fc.dispatch(Call("slow", {"x": 9}))
    assert after.state is CallState.REJECTED and after.error == "shut down"
    s = fc.ledger.summary()
    assert s["balanced"] and s["in_flight"] == 0 and s["accepted"] == 5
    fc.shutdown()  # idempotent


def test_ledger_counts_and_entries():
    fc = make([Lane("a")], {"a": lambda c: 1})
    try:
        fs = [fc.dispatch(Call("a", {})) for _ in range(5)]
        assert all(f.wait(WAIT) for f in fs)
    finally:
        fc.shutdown(timeout_s=0)
    kinds = [e.kind for e in fc.ledger.entries("f3")]
    assert kinds == ["accepted", "started", "finished"]
    assert fc.ledger.accepted == fc.ledger.finished == 5 and fc.ledger.balanced()


def test_references_are_whole_values_only():
    assert future_ref("@f17") == "f17" and future_ref(" @f3 ") == "f3"
    assert future_ref("near @f17") is None and future_ref("@f0") is None and future_ref(17) is None
    call = Call("fire", {"a": "@f2", "b": "@f2", "c": "x @f3"})
    assert references(call) == ["f2"]
    assert substitute(call, {"f2": [1, 2]}).arguments == {"a": [1, 2], "b": [1, 2], "c": "x @f3"}


# ---------------------------------------------------------------------- child processes
ACT = "tickcall.control_loop.futures.demo_actuators"


def test_process_lane_runs_outside_this_process_and_survives_a_crash():
    fc = AsyncFC([Lane("cpu", policy="fifo", queue=4, executor="process")], {"cpu": f"{ACT}:exit_actuator"})
    try:
        ok = fc.dispatch(Call("cpu", {"v": 1}))
        crash = fc.dispatch(Call("cpu", {"exit": 3}))
        after = fc.dispatch(Call("cpu", {"v": 2}))
        assert all(f.wait(WAIT) for f in (ok, crash, after))
        assert ok.result == {"v": 1} and after.result == {"v": 2}
        assert crash.state is CallState.FAILED and crash.error == "actuator crashed: exit code 3"
        assert fc.metrics()["lanes"]["cpu"]["restarts"] == 1
    finally:
        fc.shutdown(timeout_s=0)
    assert fc.ledger.balanced()


def test_process_lane_keeps_state_in_its_child_and_replaces_a_hung_one():
    fc = AsyncFC([Lane("cpu", policy="fifo", queue=4, executor="process", factory=True)],
                 {"cpu": f"{ACT}:Counter"}, watchdog_s=0.01)
    try:
        first = fc.dispatch(Call("cpu", {}))
        assert first.wait(WAIT) and first.result["calls"] == 1
        assert first.result["pid"] != os.getpid()
        second = fc.dispatch(Call("cpu", {}))
        assert second.wait(WAIT) and second.result == {"calls": 2, "pid": first.result["pid"]}
    finally:
        fc.shutdown(timeout_s=0)
    fc = AsyncFC([Lane("io", policy="fifo", queue=4, executor="process")], {"io": f"{ACT}:exit_actuator"},
                 watchdog_s=0.01)
    try:
        hung = fc.dispatch(Call("io", {"hang": True}), timeout_complete_s=0.3)
        nxt = fc.dispatch(Call("io", {"v": 5}))
        assert hung.wait(WAIT) and nxt.wait(WAIT)
        assert hung.state is CallState.TIMED_OUT and nxt.state is CallState.DONE and nxt.result == {"v": 5}
        assert any(e.kind == "restart" and "timed_out" in (e.detail or "") for e in fc.ledger.entries())
    finally:
        fc.shutdown(timeout_s=0)


def test_process_lane_with_a_bad_target_fails_calls_instead_of_hanging():
    fc = AsyncFC([Lane("cpu", executor="process")], {"cpu": "tickcall.control_loop.futures.no_such_module:f"})
    try:
        f = fc.dispatch(Call("cpu", {}))
        assert f.wait(WAIT)
        assert f.state is CallState.FAILED and f.error.startswith("actuator unavailable:")
        assert "no_such_module" in f.error
    finally:
        fc.shutdown(timeout_s=0)
