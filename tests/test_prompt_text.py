"""One prompt-text contract: training rows and run-time turns are the same bytes.

The golden tests build the same state, history and futures status twice, once the way training does
(``envs.teaching`` source -> ``models.training.collect`` rollout / ``show_history`` -> ``rows``) and
once the way a run does (the env's binding text as the world observes it, the calls dispatched
through a real ``AsyncFC`` and read back with ``history_lines``, and, in the last test, the control
loop itself sending each turn over the wire to an in-process policy service whose engine records
the suffix it prefills), and compare the rendered prompts byte for byte. The shipped students were trained with
``history_len`` 0: their observation text must stay what they saw in training.
"""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path

import numpy as np
import pytest
from tickcall.control_loop.futures import PENDING, AsyncFC, Lane, ManualClock
from tickcall.control_loop.futures.history import call_status
from tickcall.envs.actuators import EnvStepActuator
from tickcall.envs.binding import make_binding
from tickcall.envs.experts import get_expert
from tickcall.envs.policies import ModelPolicy, turn_for
from tickcall.envs.teaching import get_source
from tickcall.models.calls import Call, render_call
from tickcall.models.engine import RawHeads
from tickcall.models.format import NULL, Turn, get_template
from tickcall.models.prompt_text import (
    CallStatus,
    fmt_number,
    fmt_value,
    history_lines,
    make_turn,
    render_observation,
    status_line,
)
from tickcall.models.stand_ins import NoOpEngine
from tickcall.models.training.collect import TEACHER, rollout, show_history
from tickcall.models.training.rows import branch_texts, record_turn

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "models" / "shipped"


# ------------------------------------------------------------------------------- observation text


def _trained_number(x: float) -> str:
    """The number format the shipped CartPole student was trained on (precision 3, explicit sign,
    no ``-0.000``), written out independently of the renderer."""
    text = f"{x:+.3f}"
    return "+" + text[1:] if text[1:] == "0.000" else text


def test_observation_values():
    assert fmt_number(0.0123) == "+0.012" and fmt_number(-0.0001) == "+0.000"
    assert fmt_number(-3.4, 1) == "-3.4" and fmt_number(2.5, 0) == "2" and fmt_number(-2.6, 0) == "-3"
    assert (fmt_number(math.nan), fmt_number(math.inf), fmt_number(-math.inf)) == ("nan", "+inf", "-inf")
    assert [fmt_value(v) for v in (None, True, np.False_, 3, np.int64(-2), 0.25, "NE")] == [
        "null", "true", "false", "3", "-2", "+0.250", "NE"]
    assert fmt_value(5, precision=2) == "+5.00"  # a forced precision applies to ints too (msgpack 5.0)
    assert render_observation({"x": 0.5, "n": 3}, units={"x": "m"}) == "x=+0.500m n=3"
    assert render_observation({"a": 1.0, "b": 1.0}, precision={"a": 1}) == "a=+1.0 b=+1.000"


def test_every_observation_path_renders_the_same_values_alike():
    from tickcall.agent.protocol import format_observation
    from tickcall.envs.engine_bridge_protocol import ObsField, ObsSpec, render_values
    from tickcall.envs.obs_text import ObsFormatter

    values = {"x": -0.0004, "v": 1.23456, "a": -2.5}
    want = "x=+0.000 v=+1.235 a=-2.500"
    assert ObsFormatter(names=list(values))(np.array(list(values.values()))) == want
    assert render_values(values, ObsSpec("values", fields=tuple(ObsField(k) for k in values))) == want
    assert format_observation(values) == want
    assert render_observation(values) == want


def test_shipped_models_observation_text_is_what_they_were_trained_on():
    """Both shipped students: history_len 0 and the compact template; CartPole's text is the
    ``x= v= a= w=`` list at precision 3, the Arena's its own semantic line."""
    for folder in sorted(p for p in SHIPPED.iterdir() if (p / "tickcall.json").exists()):
        meta = json.loads((folder / "tickcall.json").read_text())
        assert meta["history_len"] == 0 and meta["template"] == "compact", folder.name
    b = make_binding("CartPole-v1")
    rng = np.random.default_rng(0)
    for obs in [b.env.reset(seed=0)[0], np.array([-1e-4, 4e-4, -0.0005, 0.0], np.float32),
                *rng.normal(0, 0.3, size=(200, 4)).astype(np.float32)]:
        want = " ".join(f"{k}={_trained_number(float(v))}" for k, v in zip("xvaw", obs, strict=True))
        assert b.obs_text(obs) == want
    assert b.obs_text(b.env.reset(seed=0)[0]) == "x=+0.014 v=-0.023 a=-0.046 w=-0.048"
    arena = make_binding("tickcall/Arena-v0")
    assert arena.obs_text(arena.env.reset(seed=0)[0]) == "tgt=SE d=2.4 aim=N cd=0 dcd=0 tl=3.0"


def test_history_len_zero_turn_is_the_trained_one():
    """A shipped model runs with no history: the run-time suffix is the training row's suffix."""
    src = get_source("CartPole-v1")
    recs, _ = rollout(src, TEACHER, [3], n_envs=1, history_len=0, max_decisions=5)
    template = get_template("compact")
    b = make_binding("CartPole-v1")
    obs, _ = b.env.reset(seed=3)
    run_turn = Turn(query=b.obs_text(obs), history=[])  # the loop with history 0
    assert template.suffix(record_turn(recs[0])) == template.suffix(run_turn)
    assert template.suffix(run_turn) == f"<|im_start|>user\nhistory: []\n{b.obs_text(obs)}<|im_end|>\n" \
                                        "<|im_start|>assistant\n"


# ------------------------------------------------------------------------------- history lines


def test_status_line_shapes():
    c = 'push(direction="left")'
    assert status_line(CallStatus(c, "f3", "done")) == f"{c}@f3 done"
    assert status_line(CallStatus(c, "f3", "done", result=[2, 7])) == f"{c}@f3 done: [2, 7]"
    assert status_line(CallStatus(c, "f3", "done", result=object())) == f"{c}@f3 done"  # not JSON data
    assert status_line(CallStatus(c, "f4", "running", age_ms=11.6)) == f"{c}@f4 running 12ms"
    assert status_line(CallStatus(c, "f4", "queued", age_ms=3)) == f"{c}@f4 queued 3ms"
    assert status_line(CallStatus(c, "f5", "waiting", waiting_on=("f12", "f9"))) == f"{c}@f5 waiting @f9 @f12"
    assert status_line(CallStatus(c, "f1", "superseded", superseded_by="f2")) == f"{c}@f1 superseded by @f2"
    assert status_line(CallStatus(c, "f1", "timed_out")) == f"{c}@f1 timed out"
    assert status_line(CallStatus(c, "f1", "failed", error="x" * 50)) == f"{c}@f1 failed: {'x' * 39}…"
    assert status_line(CallStatus(c, "f1", "done", result="y" * 50), max_chars=10) == f'{c}@f1 done: "yyyyyyyy…'
    with pytest.raises(ValueError, match="state"):
        CallStatus(c, "f1", "finished")


class _Actuator:
    """Completes a call at once (returning an object that is not JSON data, as an env's apply does),
    or leaves it pending (``running``) when its direction is ``hold``."""

    def __call__(self, call: Call):
        if call.arguments.get("direction") == "hold":
            return PENDING
        return threading.Event()  # stands for an env's apply receipt


def _settle(fut) -> None:
    """Wait (real time) until the lane has started ``fut``."""
    for _ in range(200):
        if fut.state.value not in ("queued", "waiting"):
            return
        threading.Event().wait(0.005)


def test_futures_layer_and_training_write_the_same_history_lines():
    """The AsyncFC statuses a real run shows (done, running, superseded, failed), read by the futures
    history writer, equal the CallStatus training builds for the same calls: same bytes."""
    clock = ManualClock(10.0)
    order = {"push": ["direction"]}
    fc = AsyncFC([Lane("env", tools=("push",), policy="latest")], {"env": _Actuator()}, clock=clock,
                 param_order=order)
    try:
        f1 = fc.dispatch(Call("push", {"direction": "left"}), seq=1)
        f1.wait(2.0)
        f2 = fc.dispatch(Call("push", {"direction": "hold"}), seq=2)
        _settle(f2)
        clock.advance(0.012)
        lines = fc.history_lines(4)
    finally:
        fc.shutdown(timeout_s=0.5)
    calls = [render_call(Call("push", {"direction": d}), ("direction",)) for d in ("left", "hold")]
    trained = history_lines([CallStatus(calls[0], "f1", "done"),
                             CallStatus(calls[1], "f2", "running", age_ms=12)])
    assert lines == trained == ['push(direction="left")@f1 done', 'push(direction="hold")@f2 running 12ms']
    assert call_status(f1, clock(), order) == CallStatus(calls[0], "f1", "done", result=f1.result)
    # the training simulator draws these same shapes
    seen = {line.split("@f", 1)[1].split(" ", 1)[1].split(" ")[0]
            for _ in range(50) for line in show_history(calls * 3, 4, "futures", np.random.default_rng(_))}
    assert seen == {"done", "running", "superseded"}


def test_golden_training_row_equals_run_time_turn():
    """The same episode (CartPole, seed 4, teacher calls, 3 physics steps per decision), once as
    training rows and once as a lock-step run through the world's text and a real AsyncFC: every turn
    with its history (``history_len`` 3) and the whole prompt are byte-identical."""
    seed, n, history = 4, 12, 3
    src = get_source("CartPole-v1")
    recs, _ = rollout(src, TEACHER, [seed], n_envs=1, history_len=history, history_style="lockstep",
                      hold=3, max_decisions=n)
    assert len(recs) == n

    binding = make_binding("CartPole-v1")
    expert = get_expert("CartPole-v1", binding)
    actuator = EnvStepActuator(binding, hold=3)
    actuator.reset(seed)
    order = {s.name: list(s.param_names) for s in binding.specs}
    lane = Lane("env", tools=tuple(order), policy="latest", timeout_complete_s=1.0)  # as the world's hands
    fc = AsyncFC([lane], {"env": actuator}, clock=ManualClock(0.0), param_order=order)
    turns = []
    try:
        for tick in range(n):
            obs_text = binding.obs_text(actuator.obs)                              # world.observe()
            turns.append(Turn(query=obs_text, history=list(fc.history_lines(history))))  # the loop's turn
            fut = fc.dispatch(expert.act(actuator.obs), seq=tick)
            assert fut.wait(2.0) and fut.state.value == "done"
    finally:
        fc.shutdown(timeout_s=0.5)

    template = get_template("compact")
    tools = src.tools
    for rec, turn in zip(recs, turns, strict=True):
        assert template.suffix(record_turn(rec)) == template.suffix(turn)
        prompt = branch_texts(rec, tools, template, heads_mode="used")[0][0]
        assert prompt == template.prefix(binding.specs) + template.suffix(turn) + "<function>"
    shown = [r.call.arguments["direction"] for r in recs[-4:-1]]  # the last turn shows calls n-3..n-1
    assert turns[-1].history == [f'push(direction="{d}")@f{i} done'
                                 for i, d in zip(range(n - 3, n), shown, strict=True)]


def test_model_policy_history_is_the_lockstep_history():
    """ModelPolicy (lock-step evaluation) shows the lines training's ``lockstep`` style writes."""

    class Echo:
        def register(self, tools, system=None, template=None):
            return type("R", (), {"handle": "h", "tools": tools})()

        def decide(self, handle, turn):
            return type("D", (), {"call": Call("push", {"direction": "left"}), "legal": True, "reason": "",
                                  "timings_ms": {"total": 0.0}})()

    b = make_binding("CartPole-v1")
    pol = ModelPolicy(Echo(), b, history_len=2)
    obs, _ = b.env.reset(seed=0)
    for _ in range(3):
        pol.act(obs)
    calls = ['push(direction="left")'] * 3
    assert pol.turn(obs) == make_turn(b.obs_text(obs), show_history(calls, 2, "lockstep", None))
    assert turn_for(b, obs, [Call("push", {"direction": "left"})] * 3, 2).history == pol.turn(obs).history


class _TeacherEngine(NoOpEngine):
    """An engine whose heads are the expert's call on the world's current observation; it keeps the
    exact per-tick suffix it was asked to prefill (the run-time bytes)."""

    def __init__(self, decide_call) -> None:
        super().__init__()
        self.decide_call = decide_call
        self.suffixes: list[str] = []

    def _decode(self, items):
        out = []
        for reg, turn in items:
            self.suffixes.append(reg.template.suffix(turn))
            call = self.decide_call()
            texts = {h: NULL for h in reg.heads}
            texts.update(function=call.name, arg1=call.arguments["direction"])
            out.append(RawHeads(texts=texts, token_ids={h: [] for h in reg.heads}, unfinished=set(),
                                prompt_tokens=0, cached_tokens=0, prefill_ms=0.0, decode_ms=0.0))
        return out


class _LockstepHands:
    """The world's AsyncFC, waited on after each dispatch so the next tick sees the call finished
    (the loop itself never waits; here the env steps only when a call is applied)."""

    def __init__(self, fc: AsyncFC) -> None:
        self.fc = fc

    def dispatch(self, call, seq=None):
        fut = self.fc.dispatch(call, seq=seq)
        assert fut.wait(2.0), fut
        return fut

    def history_lines(self, limit):
        return self.fc.history_lines(limit)


class _SimClock:
    """Simulated monotonic seconds: the loop's sleeps and empty polls move it forward."""

    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.t += s


class _SimPolicy:
    """An in-process policy (lock-step: it answers at once) on the simulated clock: a poll with
    nothing ready spends its timeout in simulated time, as a socket poll would in real time."""

    def __init__(self, inner, clock: _SimClock) -> None:
        self.inner, self.clock = inner, clock

    def send_decide(self, turn, tick_id, deadline_ms=None):
        return self.inner.send_decide(turn, tick_id, deadline_ms)

    def poll(self, timeout_ms=0):
        replies = self.inner.poll()
        if not replies:
            self.clock.sleep(timeout_ms / 1e3)
        return replies


def test_golden_training_row_equals_the_control_loops_turn():
    """The same episode through the control loop (lock-step world, real AsyncFC, in-process policy
    service over the wire, history 3): the suffix the engine prefills at each tick equals the
    training row's suffix, byte for byte."""
    from tickcall.agent.inproc import InProcPolicy
    from tickcall.control_loop.config import LoopSettings
    from tickcall.control_loop.loop import ControlLoop
    from tickcall.envs.world import EnvObservation

    seed, n, history = 5, 10, 3
    src = get_source("CartPole-v1")
    recs, _ = rollout(src, TEACHER, [seed], n_envs=1, history_len=history, history_style="lockstep",
                      hold=3, max_decisions=n)

    binding = make_binding("CartPole-v1")
    expert = get_expert("CartPole-v1", binding)
    actuator = EnvStepActuator(binding, hold=3)
    actuator.reset(seed)
    order = {s.name: list(s.param_names) for s in binding.specs}
    clock = _SimClock()
    fc = AsyncFC([Lane("env", tools=tuple(order), policy="latest", timeout_complete_s=1.0)],
                 {"env": actuator}, clock=clock, param_order=order)

    class World:
        def observe(self):
            return EnvObservation(text=binding.obs_text(actuator.obs), taken_at=clock())

        def fallback(self, kind):
            raise AssertionError(f"unexpected fallback {kind}")

    engine = _TeacherEngine(lambda: expert.act(actuator.obs))
    policy = InProcPolicy(engine)
    policy.register(binding.tools, template="compact")
    loop = ControlLoop(LoopSettings(rate_hz=16.0, history=history), _SimPolicy(policy, clock), World(),
                       _LockstepHands(fc), clock=clock, sleep=clock.sleep)
    try:
        loop.run(max_ticks=n)
    finally:
        fc.shutdown(timeout_s=0.5)
    template = get_template("compact")
    assert engine.suffixes == [template.suffix(record_turn(r)) for r in recs]
    assert len(engine.suffixes) == n and "@f9 done]" in engine.suffixes[-1]  # calls 7..9 in the last turn


def test_a_real_time_worlds_set_point_reads_done_as_training_writes_it():
    """The gymnasium world's hands (one latest lane applying to a RealTimeEnv) return an apply receipt,
    which is not JSON data: the history line is the bare ``done`` line training writes."""
    from tickcall.world import make_world

    world = make_world("tickcall/Arena-v0")
    try:
        world.start()
        world.hands.dispatch(Call("aim", {"direction": "N"}), seq=1)
        assert world.hands.settle(5.0)
        lines = world.hands.history_lines(4)
    finally:
        world.close()
    assert lines == show_history(['aim(direction="N")'], 4, "lockstep", None) == ['aim(direction="N")@f1 done']
