"""Hypothesis state machine over AsyncFC: dispatch, completion, failure, hang, crash, cancel,
supersede, clock advance and shutdown, with real lane worker threads.

Actuators here return PENDING (the call stays running until the test resolves it, like an engine
that answers later), raise ``ActuatorCrash`` when asked, or fail when asked. A "hang" is a call that
is never resolved: only its timeout (ManualClock + ``poll``) ends it. After every step the machine
waits for the workers to settle, then checks, under the layer's lock:

* every call is in exactly one terminal state once finished and never changes afterwards; the
  ledger has exactly one ``finished`` entry per finished call and balances
  (accepted == finished + in flight);
* latest-wins: in each ``latest`` lane the calls that ended ``done`` did so in increasing command
  order, and the applied set-point is the newest of them, even when completions are reordered;
* a dependent call starts only after each input ended ``done``, and never runs after an input
  that failed, timed out, was cancelled, superseded or rejected;
* FIFO lanes start calls in dispatch order; no lane runs more than ``k`` calls at once.
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from tickcall.control_loop.futures import PENDING, ActuatorCrash, AsyncFC, CallState, Lane, ManualClock
from tickcall.models.calls import Call

WAIT = 10.0  # seconds; only stops a broken run from hanging

LANES = [
    Lane("move", policy="latest", context=True),  # set-point
    Lane("steer", policy="latest", k=2, context=True),  # two run at once: completions can reorder
    Lane("aim", policy="latest", timeout_complete_s=0.3, context=True),  # the lane's own completion timeout
    Lane("fire", policy="fifo", queue=1, context=True, factory=True),  # rebuilt after a crash
    Lane("scan", policy="fifo", k=2, queue=3, context=True),  # two run at once
]


class _Actuator:
    def __init__(self, log: list) -> None:
        self.log = log

    def __call__(self, call: Call, ctx):
        self.log.append((ctx.id, dict(call.arguments)))
        if call.arguments.get("crash"):
            raise ActuatorCrash("asked to crash")
        if call.arguments.get("fail"):
            raise RuntimeError("asked to fail")
        return PENDING


class FuturesMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.clock = ManualClock(1000.0)
        self.ran: list[tuple[str, dict]] = []  # (call id, arguments the actuator got)
        acts = {lane.name: _Actuator(self.ran) for lane in LANES}
        acts["fire"] = lambda: _Actuator(self.ran)  # factory lane
        self.fc = AsyncFC(LANES, acts, clock=self.clock, watchdog_s=None, max_ledger_entries=None)
        self.ids: list[str] = []
        self.terminal: dict[str, CallState] = {}
        self.resolved_with: dict[str, object] = {}
        self.closed = False
        self.seq = 0
        self.polled_at: float | None = None

    def teardown(self) -> None:
        self.fc.shutdown(timeout_s=0)

    def _settle(self) -> None:
        assert self.fc.settle(WAIT), "lane workers did not settle"

    def _running(self) -> list[str]:
        return [i for i in self.ids if self.fc.future(i).state is CallState.RUNNING]

    # ----------------------------------------------------------------- rules
    @rule(lane=st.sampled_from([lane.name for lane in LANES]), x=st.integers(0, 9),
          ref=st.one_of(st.none(), st.integers(0, 50)),
          t_start=st.one_of(st.none(), st.sampled_from([0.05, 0.2])),
          t_done=st.one_of(st.none(), st.sampled_from([0.05, 0.3])),
          seq=st.sampled_from([None, None, "next", "next", "stale"]),
          trouble=st.sampled_from([None] * 8 + ["crash", "fail"]))
    def dispatch(self, lane, x, ref, t_start, t_done, seq, trouble):
        args: dict = {"x": x}
        if trouble:
            args[trouble] = True
        if ref is not None and self.ids:
            args["src"] = "@" + self.ids[-1 - ref % min(4, len(self.ids))]  # mostly recent calls
        number = None
        if lane in ("move", "steer", "aim") and seq is not None:
            self.seq += 1
            number = self.seq if seq == "next" else self.seq - 3  # "stale": behind the newest seen
        rt = self.fc._lanes[lane]
        full = (self.fc.lanes[lane].policy != "latest" and "src" not in args
                and len(rt.queue) >= rt.lane.queue + max(0, rt.lane.k - len(rt.running)))
        fut = self.fc.dispatch(Call(lane, args), timeout_start_s=t_start, timeout_complete_s=t_done, seq=number)
        if full and not self.closed:
            assert fut.state is CallState.REJECTED and fut.error == f"queue full ({rt.lane.queue})"
        if seq == "stale" and not self.closed and fut.lane in ("move", "steer", "aim"):
            newest = self.fc._lanes[lane].max_seq
            if newest is not None and number < newest:
                assert fut.state is CallState.REJECTED and fut.error.startswith("stale seq")
        self.ids.append(fut.id)
        if self.closed:
            assert fut.state is CallState.REJECTED and fut.error == "shut down"
        self._settle()
        if trouble == "crash" and fut.id in {cid for cid, _ in self.ran}:
            assert fut.state is CallState.FAILED and fut.error == "actuator crashed: asked to crash"
        if trouble == "fail" and fut.id in {cid for cid, _ in self.ran}:
            assert fut.state is CallState.FAILED and fut.error == "asked to fail"

    # more dispatch rules than others: Hypothesis picks rules uniformly, and queues only fill up
    # when several calls reach one lane before they are answered
    @rule(lane=st.sampled_from(["move", "aim", "fire"]), x=st.integers(0, 9))
    def dispatch_plain(self, lane, x):
        self.dispatch(lane, x, None, None, None, None, None)

    @rule(lane=st.sampled_from(["steer", "scan", "fire", "move"]), x=st.integers(0, 9),
          t_start=st.sampled_from([None, 0.05]))
    def dispatch_more(self, lane, x, t_start):
        self.dispatch(lane, x, None, t_start, None, None, None)

    @rule(i=st.integers(0, 10_000), value=st.integers(0, 99))
    def complete(self, i, value):
        running = self._running()
        if running:
            self._resolve_checked(running[i % len(running)], value)

    @rule(lane=st.sampled_from(["steer", "steer", "scan", "move"]), value=st.integers(0, 99))
    def complete_newest(self, lane, value):
        """Answer a lane's newest running call first: reorders completions within the lane."""
        running = [c for c in self._running() if self.fc.future(c).lane == lane]
        if running:
            self._resolve_checked(max(running, key=lambda c: int(c[1:])), value)

    def _resolve_checked(self, cid, value):
        fut = self.fc.future(cid)
        overdue = fut.timeout_complete_s is not None and self.clock() - fut.started_at > fut.timeout_complete_s
        ok = self.fc.resolve(cid, value)
        assert fut.done()
        if overdue:
            assert fut.state is CallState.TIMED_OUT and not ok and fut.late_result == value
        elif fut.state is CallState.DONE:
            assert ok and fut.result == value
            self.resolved_with[cid] = value
        else:  # a newer command of a latest lane was applied first
            assert fut.state is CallState.SUPERSEDED and fut.lane in ("move", "steer", "aim")
            assert fut.late_result == value and fut.result is None
        self._settle()

    @precondition(lambda self: self.ids)
    @rule(i=st.integers(0, 10_000))
    def fail(self, i):
        running = self._running()
        if not running:
            return
        cid = running[i % len(running)]
        self.fc.resolve(cid, error="engine said no")
        assert self.fc.future(cid).state in (CallState.FAILED, CallState.TIMED_OUT)
        self._settle()

    @precondition(lambda self: self.ids)
    @rule(i=st.integers(0, 10_000), value=st.integers(0, 99))
    def late_completion(self, i, value):
        done = [c for c in self.ids if self.fc.future(c).done() and self.fc.future(c).started_at is not None]
        if not done:
            return
        cid = done[i % len(done)]
        before = self.fc.future(cid).state
        assert self.fc.resolve(cid, value) is False
        assert self.fc.future(cid).state is before and self.fc.future(cid).late_result == value

    @precondition(lambda self: self.ids)
    @rule(i=st.integers(0, 10_000))
    def cancel(self, i):
        cid = self.ids[i % len(self.ids)]
        fut = self.fc.future(cid)
        was_done = fut.done()
        assert self.fc.cancel(cid) is (not was_done)
        assert fut.done()
        if not was_done:
            assert fut.state is CallState.CANCELLED
        self._settle()

    @rule(dt=st.sampled_from([0.01, 0.06, 0.25, 1.0]))
    def advance_clock(self, dt):
        self.clock.advance(dt)
        self.fc.poll()
        self.polled_at = self.clock()
        self._settle()

    @rule(dt=st.sampled_from([0.06, 0.4]))
    def advance_clock_without_poll(self, dt):
        """Completions that arrive past their deadline must time out even before ``poll`` runs."""
        self.clock.advance(dt)

    @precondition(lambda self: not self.closed and len(self.ids) >= 12)
    @rule()
    def shutdown(self):
        self.fc.shutdown(timeout_s=0)
        self.closed = True
        assert self.fc.ledger.in_flight == 0
        assert all(self.fc.future(c).done() for c in self.ids)

    # ----------------------------------------------------------------- invariants
    @invariant()
    def one_terminal_state_and_a_balanced_ledger(self):
        fc = self.fc
        with fc._lock:
            ledger = fc.ledger
            assert ledger.balanced()
            assert ledger.accepted == len(self.ids)
            open_ids = {c for c in self.ids if not fc.future(c).done()}
            assert ledger.in_flight == len(open_ids) and ledger.open_ids() == open_ids
            finished = [e.call_id for e in ledger.entries() if e.kind == "finished"]
            assert len(finished) == len(set(finished)) == ledger.finished
            for cid in self.ids:
                state = fc.future(cid).state
                if state.terminal:
                    assert self.terminal.setdefault(cid, state) is state, f"{cid} changed state"
                if state is CallState.DONE and cid in self.resolved_with:
                    assert fc.future(cid).result == self.resolved_with[cid]

    @invariant()
    def latest_wins_applies_only_newer_commands(self):
        fc = self.fc
        with fc._lock:
            for lane in ("move", "steer", "aim"):
                done = [fc.future(e.call_id) for e in fc.ledger.entries()
                        if e.kind == "finished" and e.lane == lane and e.state == "done"]
                keys = [f.key for f in done]
                assert keys == sorted(keys) and len(set(keys)) == len(keys)
                applied = fc.applied(lane)
                assert applied is (done[-1] if done else None)

    @invariant()
    def dependents_start_only_after_done_inputs(self):
        fc = self.fc
        with fc._lock:
            entries = fc.ledger.entries()
            started_at = {e.call_id: e.index for e in entries if e.kind == "started"}
            finished = {e.call_id: e for e in entries if e.kind == "finished"}
            ran = {cid for cid, _ in self.ran}
            for cid in self.ids:
                fut = fc.future(cid)
                src = fut.call.arguments.get("src")
                if src is None:
                    continue
                ref = src[1:]
                if cid in started_at:
                    assert finished[ref].state == "done" and finished[ref].index < started_at[cid]
                    got = dict(self.ran)[cid]["src"]
                    assert got == fc.future(ref).result  # the value, not the "@fN" text
                src_fut = fc.future(ref)
                if src_fut.done() and src_fut.state is not CallState.DONE:
                    assert cid not in ran and fut.state is not CallState.DONE
                    if fut.started_at is None:
                        assert fut.state in (CallState.REJECTED, CallState.CANCELLED, CallState.TIMED_OUT)

    @invariant()
    def lanes_hold_their_shape(self):
        fc = self.fc
        with fc._lock:
            for rt in fc._lanes.values():
                lane = rt.lane
                if lane.policy == "latest":
                    assert len(rt.queue) <= 1
                    for q in rt.queue:  # a queued command is newer than every running one
                        assert all(q.key > r.key for r in rt.running.values())
                else:
                    assert len(rt.queue) <= lane.queue
            for cid in self.ids:
                f = fc.future(cid)
                if f.started_at is not None and f.timeout_start_s is not None:
                    assert f.started_at - f.dispatched_at <= f.timeout_start_s + 1e-9, f"{cid} started late"
                if f.state is CallState.DONE and f.timeout_complete_s is not None:
                    assert f.finished_at - f.started_at <= f.timeout_complete_s + 1e-9
                if not f.done() and f.timeout_start_s is not None and f.started_at is None and self.polled_at:
                    assert self.polled_at - f.dispatched_at <= f.timeout_start_s, f"{cid} overdue after poll"

    @invariant()
    def fifo_order_and_capacity(self):
        fc = self.fc
        with fc._lock:
            # calls naming a future enter the queue when their input is done, not at dispatch
            starts = [e.call_id for e in fc.ledger.entries() if e.kind == "started" and e.lane == "fire"
                      and "src" not in fc.future(e.call_id).call.arguments]
            nums = [int(c[1:]) for c in starts]
            assert nums == sorted(nums)
            for name, lane in fc.lanes.items():
                assert len(fc._lanes[name].running) <= lane.k


TestFuturesMachine = FuturesMachine.TestCase
TestFuturesMachine.settings = settings(max_examples=150, stateful_step_count=50, deadline=None,
                                       suppress_health_check=[HealthCheck.too_slow])
