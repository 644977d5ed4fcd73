"""``RealTimeEnv`` as a ``gymnasium.Wrapper`` (issue 15: gymnasium's conventions hold), and tool text
for envs under gymnasium's standard action wrappers.

Real gymnasium throughout (CartPole, Pendulum, LunarLanderContinuous, BipedalWalker, the standard
wrappers, ``check_env``). ``Ticker`` is a real ``gymnasium.Env`` written for these tests: its
observation counts its physics steps and it records every action it was stepped with, so what the
physics applied can be checked. Real-time steps run on a simulated clock (``helpers.SimClock``, its
``sleep`` moves it): without the physics thread, ``step`` runs the physics steps that came due on
that clock, so the counts below are exact and no test measures a duration."""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces
from gymnasium.utils.env_checker import check_env
from gymnasium.wrappers import ClipAction, DiscretizeAction, RescaleAction, TimeLimit
from helpers import SimClock
from tickcall.envs.binding import make_binding
from tickcall.envs.realtime import RealTimeEnv
from tickcall.models.calls import Call


class Ticker(gym.Env):
    """obs = physics steps taken this episode; reward = the action (0, 1 or 2); terminates after
    ``length`` steps; ``actions`` records every action the env was stepped with."""

    metadata = {"render_modes": [], "render_fps": 50}

    def __init__(self, length: int = 10_000) -> None:
        self.observation_space = spaces.Box(0.0, 1e6, (1,), np.float32)
        self.action_space = spaces.Discrete(3)
        self.length, self.n = length, 0
        self.actions: list[int] = []

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.n = 0
        return np.array([0.0], np.float32), {}

    def step(self, action):
        self.actions.append(int(action))
        self.n += 1
        return np.array([self.n], np.float32), float(action), self.n >= self.length, False, {"n": self.n}


class RawActions(gym.Wrapper):
    """Records the actions that reach the env it wraps (put under the wrappers being tested)."""

    def __init__(self, env) -> None:
        super().__init__(env)
        self.actions: list[np.ndarray] = []

    def step(self, action):
        self.actions.append(np.round(np.asarray(action, dtype=np.float64), 6))
        return self.env.step(action)


def _sim_rt(length: int = 10_000, **kw) -> tuple[RealTimeEnv, Ticker, SimClock]:
    env, clock = Ticker(length), SimClock(t=0.0)
    return RealTimeEnv(env, physics_hz=50, step_hz=10, clock=clock, sleep=clock.sleep, **kw), env, clock


def _accounted(rt: RealTimeEnv) -> bool:
    """Every physics step belongs to a finished, an abandoned or the current episode."""
    s = rt.stats
    return sum(e.length for e in rt.episodes) + s["abandoned_steps"] + rt.latest().step == s["physics_steps"]


# ------------------------------------------------------------------------------- the wrapper


def test_it_is_a_gymnasium_wrapper_and_keeps_the_loops_names():
    b = make_binding("CartPole-v1")
    rt = RealTimeEnv(b, mode="lockstep", hold_steps=3)
    assert isinstance(rt, gym.Wrapper) and isinstance(rt, gym.Env)
    assert rt.env is b.env  # ``env`` meant the wrapped env before: the Wrapper's meaning is the same
    assert type(rt.unwrapped).__name__ == "CartPoleEnv" and rt.binding is b
    assert rt.action_space == b.env.action_space and rt.observation_space == b.env.observation_space
    assert rt.spec.id == "CartPole-v1"
    assert [w.name for w in rt.spec.additional_wrappers] == ["RealTimeEnv"]
    again = gym.make(rt.spec)  # the spec rebuilds the wrapper with its arguments
    assert isinstance(again, RealTimeEnv) and (again.mode, again.hold_steps) == ("lockstep", 3)
    again.close()
    rt.close()
    rt.close()  # idempotent, as gymnasium asks
    with pytest.raises(TypeError, match="wraps a gymnasium.Env or an EnvBinding"):
        RealTimeEnv(object())


@pytest.mark.parametrize("bound", [False, True], ids=["env", "binding"])
def test_lockstep_passes_gymnasiums_env_checker(bound):
    """All of ``check_env`` but rendering (CartPole's modes need a display). Lock-step only: the
    checker's determinism checks replay a seed and compare, which real time cannot promise."""
    env = make_binding("CartPole-v1") if bound else gym.make("CartPole-v1")
    rt = RealTimeEnv(env, mode="lockstep", hold_steps=3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(rt, skip_render_check=True)
    expected = (
        "is different from the unwrapped version",
        "Box observation space m",
    )  # any wrapper; CartPole's inf
    assert all(any(e in str(w.message) for e in expected) for w in caught), [str(w.message) for w in caught]


def test_step_and_reset_follow_gymnasium_in_lockstep():
    rt = RealTimeEnv(Ticker(length=7), mode="lockstep", hold_steps=3, seed=5)
    with pytest.raises(gym.error.ResetNeeded):
        rt.step(1)
    obs, info = rt.reset()  # before any physics step: the first episode again, with its own seed
    assert obs[0] == 0 and info["realtime"] == {"episode": 0, "seed": 5}
    out = [rt.step(2) for _ in range(3)]
    assert [o[0][0] for o in out] == [3, 6, 7]  # the third step ends the episode after 1 physics step
    assert [o[1] for o in out] == [6.0, 6.0, 2.0]
    assert [(o[2], o[3]) for o in out] == [(False, False), (False, False), (True, False)]
    assert out[2][4]["n"] == 7 and out[2][4]["realtime"]["physics_steps"] == 1
    assert rt.episodes[0].seed == 5 and rt.episodes[0].length == 7
    obs, info = rt.reset()
    assert obs[0] == 0 and info["realtime"] == {"episode": 1, "seed": 6}
    rt.step(1)
    obs, info = rt.reset(seed=40)  # cuts the episode short: its 3 steps are abandoned, counted
    assert info["realtime"]["seed"] == 40 and rt.stats["abandoned_steps"] == 3
    assert rt.reset()[1]["realtime"]["seed"] == 41  # a reset's own episode: the next seed
    assert rt.latest().episode == 1 and rt.stats["resets"] == 4
    assert _accounted(rt)


def test_step_takes_a_call_when_the_env_is_a_binding():
    rt = RealTimeEnv(make_binding("CartPole-v1"), mode="lockstep", hold_steps=3, seed=0)
    rt.reset()
    info = rt.step(Call("push", {"direction": "right"}))[4]["realtime"]
    assert (info["status"], info["physics_steps"]) == ("ok", 3) and rt.current_action() == 1
    info = rt.step(Call("push", {"direction": "up"}))[4]["realtime"]
    assert info["status"] == "rejected" and "not one of" in info["reason"]
    assert rt.current_action() == 1 and rt.stats["rejected"] == 1  # on_reject="hold": right stays


def test_reset_after_the_last_episode_is_refused_with_one_line():
    rt = RealTimeEnv(Ticker(length=2), mode="lockstep", max_episodes=1)
    rt.reset()
    assert not rt.step(1)[2] and rt.step(1)[2]  # the end of the only episode: nothing left to step
    with pytest.raises(RuntimeError, match="max_episodes have finished"):
        rt.step(1)
    with pytest.raises(RuntimeError, match="make a new RealTimeEnv"):
        rt.reset()


# ------------------------------------------------------------------------------- real time


def test_realtime_step_paces_on_the_clock_and_the_action_persists():
    rt, env, clock = _sim_rt()  # physics 50 Hz, time steps 10 Hz: 5 physics steps per time step
    obs, _ = rt.reset(seed=0)
    t0 = clock()
    obs, reward, term, trunc, info = rt.step(2)
    assert clock() == pytest.approx(t0 + 0.1)  # step waited for the end of its time step
    assert obs[0] == 5 and reward == 10.0 and not (term or trunc)
    assert env.actions == [2] * 5
    rt_info = info["realtime"]
    assert rt_info["physics_steps"] == 5 and rt_info["elapsed_s"] == pytest.approx(0.1)
    assert (rt_info["late"], rt_info["skipped"], rt_info["status"]) == (False, 0, "ok")

    clock.sleep(0.03)  # the agent thinks for 30 ms: the world moves on with the action in force
    obs, reward, *_ = rt.step(1)
    assert env.actions[5:] == [2] + [1] * 4  # the step due at +0.12 s still used 2
    assert obs[0] == 10 and reward == 2.0 + 4 * 1.0

    clock.sleep(0.25)  # overruns: called 0.15 s after its time step ended, one more step missed
    obs, reward, _, _, info = rt.step(0)
    late = info["realtime"]
    assert late["late"] and late["skipped"] == 1 and late["lateness_ms"] == pytest.approx(150.0)
    assert late["physics_steps"] == 12 and reward == 12.0  # all with 1: the late action had no time
    assert env.actions[10:] == [1] * 12
    obs, reward, _, _, info = rt.step(0)  # back on the grid: the next time step ends at +0.5 s
    assert clock() == pytest.approx(t0 + 0.5) and info["realtime"]["physics_steps"] == 3
    assert env.actions[22:] == [0] * 3
    s = rt.stats
    assert (s["step_calls"], s["late_step_calls"], s["skipped_time_steps"]) == (4, 1, 1)
    assert s["physics_steps"] == 25 and s["applied"] == 4 and s["late_steps"] == 0
    assert _accounted(rt)


def test_realtime_episode_end_is_reported_once_and_the_world_moves_on():
    rt, env, clock = _sim_rt(length=7, seed=1)
    rt.reset()
    rt.step(1)
    obs, reward, term, _, info = rt.step(1)  # physics steps 6..10: the episode ends at 7
    assert term and obs[0] == 7 and info["n"] == 7 and reward == 2.0
    assert rt.latest().episode == 1 and rt.latest().step == 3  # the world did not wait for reset
    obs, info = rt.reset()  # the episode the world started after the end again, with its seed
    assert obs[0] == 0 and info["realtime"] == {"episode": 1, "seed": 2}
    assert rt.stats["abandoned_steps"] == 3 and _accounted(rt)
    assert rt.current_action() == 0  # a reset applies the default action (rtgym does the same)


def test_gymnasium_steps_with_the_physics_thread_count_every_physics_step():
    """Real clock, physics thread: only counts are asserted (how many steps run is the machine's)."""
    rt = RealTimeEnv(Ticker(), physics_hz=400, step_hz=100)
    rt.reset()  # before the thread starts: no physics step has run
    with rt:
        infos = [rt.step(k % 3)[4]["realtime"] for k in range(4)]
    infos.append(rt.step(0)[4]["realtime"])  # the world stood still from the stop: this window ends there
    assert sum(i["physics_steps"] for i in infos) == rt.stats["physics_steps"]
    assert rt.stats["step_calls"] == 5 and rt.stats["resets"] == 1
    assert _accounted(rt)


# ------------------------------------------------------------------------------- wrapped envs


def _tool(env) -> dict:
    return make_binding(env).tools[0]["function"]


def test_tool_text_follows_standard_action_wrappers():
    pend = "Torque on the pendulum joint, -2 to +2."
    assert _tool(TimeLimit(gym.make("Pendulum-v1"), 5))["description"] == pend  # spaces unchanged
    assert _tool(ClipAction(gym.make("Pendulum-v1")))["description"] == pend  # the bounds it clips to
    assert _tool(RescaleAction(gym.make("Pendulum-v1"), -1.0, 1.0))["description"] == (
        "Torque on the pendulum joint, -1 to +1."
    )
    level = _tool(DiscretizeAction(gym.make("Pendulum-v1"), 5))
    assert level["parameters"]["properties"]["value"] == {"type": "integer", "minimum": 0, "maximum": 4}
    assert level["description"] == (
        f"{pend} As wrapped, the action is a level 0 to 4, not the value: 5 equal bins from -2 to +2, "
        "each level the middle of its bin."
    )
    # numbers written into the catalog's text cannot follow a rescale: one sentence says the new range
    lander = _tool(RescaleAction(gym.make("LunarLanderContinuous-v3"), 0.0, 1.0))
    assert lander["description"].endswith(
        "As wrapped, each value runs 0 to +1 (the env's own range: -1 to +1)."
    )
    assert lander["parameters"]["properties"]["main"]["maximum"] == 1.0
    assert "As wrapped" not in _tool(gym.make("LunarLanderContinuous-v3"))["description"]


def test_a_reshaped_action_drops_catalog_names_that_no_longer_fit():
    walker = make_binding(DiscretizeAction(gym.make("BipedalWalker-v3"), 3))  # Box(4) -> Discrete(81)
    fn = walker.tools[0]["function"]
    assert list(fn["parameters"]["properties"]) == ["action"]  # not the four joint names
    assert "an index of Discrete(81)" in fn["description"]
    assert walker.call_to_action(Call("motors", {"action": 80})).status == "ok"
    assert walker.default_action() == 40  # the middle bin of each joint: torques 0, as the raw no-op


def test_the_fallback_action_is_the_raw_no_op_through_the_wrappers():
    """The catalog's no-op is the raw env's ("engines off"): a rescaled or discretized env falls back
    to the action that reaches the raw env as that, not to the low corner of the new space."""
    lander = make_binding(RescaleAction(gym.make("LunarLanderContinuous-v3"), 0.0, 1.0))
    assert lander.default_action().tolist() == [0.5, 0.5]  # raw [0, 0]: both engines off
    assert make_binding(DiscretizeAction(gym.make("Pendulum-v1"), 5)).default_action() == 2  # torque 0
    car = make_binding(DiscretizeAction(gym.make("MountainCarContinuous-v0"), 3, multidiscrete=True))
    assert car.default_action().tolist() == [1]
    assert make_binding(ClipAction(gym.make("Pendulum-v1"))).default_action().tolist() == [0.0]
    raw = RawActions(gym.make("LunarLanderContinuous-v3"))
    rt = RealTimeEnv(make_binding(RescaleAction(raw, 0.0, 1.0)), mode="lockstep", seed=0)
    rt.reset()
    rt.apply(Call("engines", {"main": 1.0, "lateral": 0.5}))
    rt.apply(None)  # no usable call: rejected, on_reject="hold" keeps main engine full
    rt2 = RealTimeEnv(rt.binding, mode="lockstep", seed=0, on_reject="default")
    rt2.apply(None)  # on_reject="default": the fallback, engines off again
    assert [a.tolist() for a in raw.actions] == [[1.0, 0.0], [1.0, 0.0], [0.0, 0.0]]
    rt.close()


def test_realtime_env_over_wrapped_envs():
    b = make_binding(RescaleAction(gym.make("Pendulum-v1"), -1.0, 1.0))
    rt = RealTimeEnv(b, mode="lockstep", seed=0)
    assert rt.apply(Call("torque", {"value": 1.0})).ok
    assert rt.unwrapped.last_u == pytest.approx(2.0)  # rescaled on its way to the raw env
    assert rt.apply(Call("torque", {"value": 1.5})).status == "clipped"  # the schema's bound is 1
    assert rt.unwrapped.last_u == pytest.approx(2.0)
    rt.close()
    limited = RealTimeEnv(TimeLimit(gym.make("Pendulum-v1"), 4), mode="lockstep", seed=0)
    limited.reset()
    ends = [limited.step(np.array([0.5], np.float32))[3] for _ in range(4)]
    assert ends == [False, False, False, True] and limited.episodes[0].truncated
    limited.close()
