"""Teachers of every kind behind one interface: ``load_teacher(kind, env_id) -> Teacher``.

A teacher labels any state of an env with the call a student must copy. Kinds (``--teacher KIND``):

==================  =====================================================================================
``expert``          the scripted expert of ``envs.experts`` (CartPole, Pendulum, MountainCarContinuous,
                    LunarLander, the Arena)
``module:function`` any importable Python callable ``fn(obs)`` or ``fn(obs, env)`` returning an action of
                    the env's action space, a ``Call`` or a ``{"name", "arguments"}`` dict; or a policy
                    object with ``predict(obs) -> action | (action, state)`` (the Stable-Baselines3 shape)
``sb3:FILE.zip``    a Stable-Baselines3 model zip (PPO, A2C, DQN, SAC, TD3; the algorithm is read from
                    the zip)
``ppo``/``dqn``/    a Stable-Baselines3 agent trained here and now on the env (``TeacherBudget``), saved
``sac``/``a2c``/    as a zip in ``work_dir`` (reused when there) and then used like ``sb3:FILE.zip``
``td3``
==================  =====================================================================================

Every kind can label any state, so DAgger works with all of them. ``teacher.bind(binding)`` gives a
per-env-copy ``Labeller`` (``act(obs) -> Call``, optional ``logits(obs)`` = the teacher's scores per
value of a one-parameter discrete tool); actions become calls through ``binding.action_to_call``, so
a teacher's call is legal by construction. ``teacher.spec`` is a string that loads the same teacher
again in another process (the real-time comparison's teacher runs in one).

SB3 agents train on the env wrapped by ``ActionRepeat(hold)``: each decision lasts ``physics_hz / 16``
physics steps (rounded stochastically, as training rollouts and the 16 Hz real-time loop do), so the
teacher learns under the timing its student will run at.
"""

from __future__ import annotations

import importlib
import inspect
import json
import time
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from tickcall.envs.binding import EnvBinding, make_binding
from tickcall.models.calls import Call

SB3_ALGOS = ("ppo", "a2c", "dqn", "sac", "td3")
DISCRETE_ONLY = ("dqn",)
CONTINUOUS_ONLY = ("sac", "td3")


@dataclass
class Labeller:
    """A teacher bound to one env copy: ``act(obs) -> Call``; ``logits(obs)`` when it scores its choices."""

    act: Callable[[Any], Call]
    logits: Callable[[Any], dict[str, dict[str, float]]] | None = None


@dataclass
class TeacherBudget:
    """How an SB3 teacher is trained on the spot: ``steps`` env decisions, ``n_envs`` copies, ``seed``;
    ``kwargs`` go to the algorithm (override the presets of ``SB3_PRESETS``)."""

    steps: int = 50_000
    n_envs: int = 8
    seed: int = 0
    eval_episodes: int = 10
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.steps < 1 or self.n_envs < 1:
            raise ValueError(f"teacher steps and n_envs must be >= 1 (got {self.steps}, {self.n_envs})")


# Small, fast presets for classic-control-sized envs (CPU, minutes): PPO with short rollouts over
# several env copies updates often, which matters more than sample efficiency at these budgets.
SB3_PRESETS: dict[str, dict[str, Any]] = {
    "ppo": {
        "n_steps": 128,
        "batch_size": 64,
        "n_epochs": 4,
        "gae_lambda": 0.94,
        "learning_rate": 1e-3,
        "ent_coef": 0.0,
    },
    "a2c": {"n_steps": 8, "learning_rate": 1e-3},
    "dqn": {
        "learning_rate": 1e-3,
        "buffer_size": 50_000,
        "learning_starts": 500,
        "batch_size": 64,
        "train_freq": 4,
        "target_update_interval": 500,
        "exploration_fraction": 0.3,
        "exploration_final_eps": 0.05,
    },
    "sac": {"learning_rate": 1e-3, "learning_starts": 500, "batch_size": 128},
    "td3": {"learning_rate": 1e-3, "learning_starts": 500, "batch_size": 128},
}


class Teacher:
    """One teacher (see the module docstring). ``kind`` as given; ``spec``: reloadable form (an SB3
    teacher trained here becomes ``sb3:FILE.zip``); ``info``: provenance (training time s, return)."""

    def __init__(
        self,
        kind: str,
        bind: Callable[[EnvBinding], Labeller],
        spec: str | None = None,
        info: dict[str, Any] | None = None,
    ) -> None:
        self.kind = kind
        self._bind = bind
        self.spec = spec or kind
        self.info = dict(info or {})

    def bind(self, binding: EnvBinding) -> Labeller:
        return self._bind(binding)

    def __repr__(self) -> str:
        return f"Teacher({self.spec!r})"


def load_teacher(
    kind: str,
    env_id: str,
    *,
    budget: TeacherBudget | None = None,
    work_dir: str | Path | None = None,
    log: Callable[[str], None] | None = None,
) -> Teacher:
    """The teacher ``kind`` for ``env_id`` (ValueError naming what is wrong, e.g. no expert)."""
    kind = kind.strip()
    if kind == "expert":
        return _expert(env_id)
    if kind.startswith("sb3:"):
        return sb3_teacher(kind[4:])
    if kind.lower() in SB3_ALGOS:
        return train_sb3(kind.lower(), env_id, budget or TeacherBudget(), work_dir, log)
    if ":" in kind:
        return callable_teacher(kind)
    raise ValueError(
        f"unknown teacher {kind!r}: expert, module:function, sb3:FILE.zip or one of {', '.join(SB3_ALGOS)}"
    )


# --------------------------------------------------------------------------- kinds


def _expert(env_id: str) -> Teacher:
    from tickcall.envs.experts import EXPERTS, get_expert, get_expert_logits

    if env_id not in EXPERTS:
        raise ValueError(
            f"no scripted expert for {env_id!r} (experts: {', '.join(EXPERTS)}); use "
            "--teacher ppo (trained here), sb3:FILE.zip or module:function"
        )

    def bind(b: EnvBinding) -> Labeller:
        return Labeller(get_expert(env_id, b).act, get_expert_logits(env_id))

    return Teacher("expert", bind)


def callable_teacher(spec: str) -> Teacher:
    """``module:function`` (``module:attr.attr`` too): a callable or an object with ``predict``."""
    mod_name, _, attr = spec.partition(":")
    try:
        obj: Any = importlib.import_module(mod_name)
    except ImportError as exc:
        raise ValueError(f"teacher {spec!r}: cannot import {mod_name!r}: {exc}") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"teacher {spec!r}: {mod_name} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if hasattr(obj, "predict"):
        return Teacher(spec, lambda b: Labeller(_predictor(obj, b)), spec)
    if not callable(obj):
        raise ValueError(f"teacher {spec!r} is neither callable nor a policy with predict()")
    with_env = _takes_two(obj)

    def bind(b: EnvBinding) -> Labeller:
        if with_env:
            return Labeller(lambda obs: as_call(obj(obs, b.env), b))
        return Labeller(lambda obs: as_call(obj(obs), b))

    return Teacher(spec, bind, spec)


def sb3_teacher(path: str | Path, info: dict[str, Any] | None = None) -> Teacher:
    """A Stable-Baselines3 zip as teacher (deterministic actions; discrete ones also give logits)."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"sb3 teacher: {path} not found")
    algo = sb3_algo_of(path)
    model = _sb3_class(algo).load(str(path), device="cpu")

    def bind(b: EnvBinding) -> Labeller:
        return Labeller(_predictor(model, b), _sb3_logits(model, b))

    return Teacher(f"sb3:{path}", bind, f"sb3:{path}", {"algo": algo, "file": str(path), **(info or {})})


def train_sb3(
    algo: str,
    env_id: str,
    budget: TeacherBudget,
    work_dir: str | Path | None = None,
    log: Callable[[str], None] | None = None,
) -> Teacher:
    """Train ``algo`` on ``env_id`` for ``budget.steps`` decisions, save ``work_dir/teacher-ENV-ALGO.zip``
    (+ ``.json``: training time s, mean return over ``budget.eval_episodes`` seeded episodes), and return
    it as a teacher; a zip already there is reused (a resumed run trains nothing)."""
    from stable_baselines3.common.env_util import make_vec_env

    probe = make_binding(env_id)
    discrete = _is_discrete(probe.env.action_space)
    probe.env.close()
    if algo in DISCRETE_ONLY and not discrete or algo in CONTINUOUS_ONLY and discrete:
        raise ValueError(f"{algo} cannot train on {env_id}'s action space; use ppo or a2c")
    folder = Path(work_dir or ".")
    folder.mkdir(parents=True, exist_ok=True)
    zip_path = trained_zip(folder, env_id, algo)
    meta_path = zip_path.with_suffix(".json")
    if zip_path.exists() and meta_path.exists():
        return sb3_teacher(zip_path, json.loads(meta_path.read_text()))
    hold = max(1.0, make_binding(env_id).physics_hz / 16.0)
    vec = make_vec_env(
        env_id,
        n_envs=budget.n_envs if algo in ("ppo", "a2c") else 1,
        seed=budget.seed,
        wrapper_class=ActionRepeat,
        wrapper_kwargs={"hold": hold},
    )
    kwargs = {**SB3_PRESETS[algo], **budget.kwargs}
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small MLPs: more threads only contend (8000 PPO steps: 59 s at 2 vs 2 s at 1)
    try:
        model = _sb3_class(algo)("MlpPolicy", vec, seed=budget.seed, verbose=0, device="cpu", **kwargs)
        t0 = time.perf_counter()
        model.learn(total_timesteps=budget.steps)
        train_s = time.perf_counter() - t0
    finally:
        torch.set_num_threads(threads)
    model.save(str(zip_path))
    vec.close()
    ret = sb3_return(model, env_id, hold, budget.eval_episodes, seed=10_000)
    info = {
        "algo": algo,
        "steps": budget.steps,
        "train_s": round(train_s, 2),
        "mean_return": ret,
        "hold": hold,
        "eval_episodes": budget.eval_episodes,
    }
    meta_path.write_text(json.dumps(info, indent=2) + "\n")
    if log:
        log(
            f"teacher {algo} on {env_id}: {budget.steps} steps in {train_s:.1f} s, mean return {ret:.1f} "
            f"({budget.eval_episodes} episodes, each decision held {hold:g} physics steps)"
        )
    return sb3_teacher(zip_path, info)


def trained_zip(work_dir: str | Path, env_id: str, algo: str) -> Path:
    """Where ``train_sb3`` keeps the agent it trained for ``env_id`` in ``work_dir``."""
    return Path(work_dir) / f"teacher-{env_id.replace('/', '_')}-{algo}.zip"


def resolve_spec(kind: str, env_id: str, work_dir: str | Path) -> str | None:
    """The reloadable spec of a teacher kind as a run in ``work_dir`` used it: an agent trained there
    becomes ``sb3:ZIP``; ``none`` is None; any other kind is itself."""
    if kind == "none":
        return None
    if kind.lower() in SB3_ALGOS:
        return f"sb3:{trained_zip(work_dir, env_id, kind.lower())}"
    return kind


def sb3_return(model: Any, env_id: str, hold: float, episodes: int, seed: int = 10_000) -> float:
    """Mean return of an SB3 model, deterministic, under ``ActionRepeat(hold)``, seeds ``seed + i``."""
    rets = []
    for i in range(episodes):
        env = ActionRepeat(gym.make(env_id), hold)
        obs, _ = env.reset(seed=seed + i)
        total, done = 0.0, False
        while not done:
            action, _ = model.predict(obs, deterministic=True)
            obs, r, term, trunc, _ = env.step(action)
            total += float(r)
            done = term or trunc
        rets.append(total)
        env.close()
    return float(np.mean(rets)) if rets else 0.0


# --------------------------------------------------------------------------- helpers


def as_call(out: Any, b: EnvBinding) -> Call:
    """A teacher's output as a call: a ``Call`` or ``{"name", "arguments"}`` dict as is; anything else
    is an action (numpy scalars and 0-d arrays unwrapped) written by ``binding.action_to_call``."""
    if isinstance(out, Call):
        return out
    if isinstance(out, Mapping) and "name" in out:
        return Call.from_dict(out)
    return b.action_to_call(_plain_action(out, b.env.action_space))


def _plain_action(a: Any, space: Any) -> Any:
    if _is_discrete(space):
        return int(np.asarray(a).reshape(-1)[0])
    if hasattr(space, "shape") and space.shape is not None and hasattr(space, "dtype"):
        return np.asarray(a, dtype=space.dtype).reshape(space.shape)
    return a


def _predictor(policy: Any, b: EnvBinding) -> Callable[[Any], Call]:
    def act(obs: Any) -> Call:
        out = (
            policy.predict(np.asarray(obs, dtype=np.float32), deterministic=True)
            if _accepts(policy.predict, "deterministic")
            else policy.predict(obs)
        )
        if isinstance(out, tuple) and len(out) == 2:  # SB3's (action, recurrent state)
            out = out[0]
        return as_call(out, b)

    return act


def _sb3_logits(model: Any, b: EnvBinding) -> Callable[[Any], dict[str, dict[str, float]]] | None:
    """Scores per value for a discrete action space with a one-parameter tool: the policy's action
    logits (PPO, A2C) or Q-values (DQN); None otherwise."""
    space = b.env.action_space
    if not _is_discrete(space) or b.adapter is None or len(b.specs) != 1 or len(b.specs[0].param_names) != 1:
        return None
    import torch

    param = b.specs[0].param_names[0]
    values = [str(b.action_to_call(int(space.start) + k).arguments[param]) for k in range(int(space.n))]

    def logits(obs: Any) -> dict[str, dict[str, float]]:
        x, _ = model.policy.obs_to_tensor(np.asarray(obs, dtype=np.float32))
        with torch.no_grad():
            if hasattr(model.policy, "q_net"):
                s = model.policy.q_net(x)[0]
            else:
                s = model.policy.get_distribution(x).distribution.logits[0]
        return {param: {v: float(t) for v, t in zip(values, s.tolist(), strict=True)}}

    return logits


def sb3_algo_of(path: str | Path) -> str:
    """The algorithm of an SB3 zip, from the module of its saved policy class (``ppo`` for the shared
    actor-critic policies: PPO and A2C zips load alike)."""
    try:
        with zipfile.ZipFile(path) as z:
            data = json.loads(z.read("data"))
    except (KeyError, zipfile.BadZipFile, ValueError) as exc:
        raise ValueError(f"{path} is not a Stable-Baselines3 model zip: {exc}") from None
    module = str((data.get("policy_class") or {}).get("__module__", ""))
    for algo in ("dqn", "sac", "td3"):
        if f"stable_baselines3.{algo}." in module:
            return algo
    return "ppo"


def _sb3_class(algo: str) -> Any:
    try:
        import stable_baselines3 as sb3
    except ImportError:
        raise ValueError("SB3 teachers need stable-baselines3: pip install -e '.[train]'") from None
    return getattr(sb3, algo.upper())


def _is_discrete(space: Any) -> bool:
    from gymnasium import spaces as S

    return isinstance(space, S.Discrete)


def _takes_two(fn: Callable[..., Any]) -> bool:
    """True when ``fn`` accepts (obs, env) positionally."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return False
    if any(p.kind == p.VAR_POSITIONAL for p in params):
        return True
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 2


def _accepts(fn: Callable[..., Any], name: str) -> bool:
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


class ActionRepeat(gym.Wrapper):
    """Hold each action ``hold`` physics steps (a fraction rounded stochastically per decision, from
    the env's own seeded RNG stream), summing the rewards: one step of this env = one 16 Hz decision."""

    def __init__(self, env: Any, hold: float = 1.0) -> None:
        super().__init__(env)
        self.hold = float(hold)
        self._rng = np.random.default_rng(0)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> Any:
        if seed is not None:
            self._rng = np.random.default_rng(seed + 7)
        return self.env.reset(seed=seed, options=options)

    def step(self, action: Any) -> Any:
        n = int(self.hold) + int(self._rng.random() < self.hold - int(self.hold))
        total = 0.0
        for _ in range(max(1, n)):
            obs, r, term, trunc, info = self.env.step(action)
            total += float(r)
            if term or trunc:
                break
        return obs, total, term, trunc, info
