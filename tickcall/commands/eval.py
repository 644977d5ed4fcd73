"""``tickcall eval``: evaluate policies (expert, random, random-calls, model) on an env; prints a table,
writes JSON.

Examples::

    tickcall eval --env tickcall/Arena-v0 --policy expert,random --episodes 10 --seed 0
    tickcall eval --env Acrobot-v1 --policy expert,random-calls,model --model PATH --episodes 3
    tickcall eval --env CartPole-v1 --policy expert,random --realtime --rate 16 --episodes 3
    tickcall eval --env tickcall/Arena-v0 --policy model --model models/shipped/arena --json out.json

Several policies (comma-separated) run one after the other with the same seeds and print side by
side. ``random`` draws a random action of the env's action space; ``random-calls`` is the ``random``
backend (legal random calls drawn from the tool schemas, through the same engine path as a model: the
baseline row a model should beat). ``model`` without ``--model`` uses the env's shipped model, or the
``--backend`` when that needs no model (noop, random). The JSON holds one report (``mean_return``, ``std_return``, ``episodes``, ``legal_rate``, ...)
or, for several policies, ``{"runs": [report, ...]}``.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from tickcall.commands.errors import (
    CommandError,
    check_env,
    check_writable,
    model_load_error,
    one_line,
    require_at_least,
    require_between,
)

if TYPE_CHECKING:
    from tickcall.envs.evaluate import EvalReport

HELP = "evaluate a policy (expert, random, random-calls, model) on an env"
POLICIES = ("expert", "random", "random-calls", "model")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--env", required=True, help="env id, e.g. tickcall/Arena-v0, CartPole-v1")
    parser.add_argument("--policy", default="expert",
                        help="expert | random | random-calls | model, or a comma-separated list (default expert); "
                        "random-calls: legal random calls from the random backend, the baseline row")
    parser.add_argument("--model", default=None,
                        help="model folder for --policy model (default: the env's shipped model)")
    parser.add_argument("--backend", default="transformers",
                        help="engine backend for --policy model (noop and random need no --model)")
    parser.add_argument("--history", type=int, default=None,
                        help="history length for --policy model (default: the model's tickcall.json, else 0)")
    parser.add_argument("--episodes", type=int, default=5, help="episodes per policy (default 5)")
    parser.add_argument("--seed", type=int, default=0, help="episode i resets with seed + i (default 0)")
    parser.add_argument("--realtime", action="store_true",
                        help="run the env on the wall clock and decide at --rate Hz")
    parser.add_argument("--rate", type=float, default=None,
                        help="decisions per second (real time; in lock-step it sets the hold)")
    parser.add_argument("--hold", type=int, default=None, help="lock-step: physics steps per decision")
    parser.add_argument("--delay-ms", type=float, default=0.0,
                        help="real time: extra latency between observing and acting (ms)")
    parser.add_argument("--max-seconds", type=float, default=None, help="real time: stop after this long")
    parser.add_argument("--max-steps", type=int, default=None,
                        help="episode length override for envs that take max_steps (the Arena)")
    add_option_argument(parser, "--engine-option", "engine_options",
                        "an option of the model's engine, repeatable (values read as YAML scalars), "
                        "e.g. --engine-option precision=int8 --engine-option threads=2")
    parser.add_argument("--json", dest="json_path", default=None, help="write the report(s) here")
    parser.add_argument("--render", action="store_true",
                        help="watch the episodes in a window (render_mode=human; needs pygame and a display)")
    parser.add_argument("--describe", action="store_true",
                        help="print the env's tools, a sample observation text and an expert call; run nothing")


def run(args: argparse.Namespace) -> int:
    from tickcall.envs.evaluate import format_table

    if args.realtime and args.rate is None:
        args.rate = 16.0
    kinds = _check_args(args)
    env_kwargs: dict = {"max_steps": args.max_steps} if args.max_steps else {}
    if args.render:
        env_kwargs["render_mode"] = "human"
    if args.describe:
        return _describe(args.env, env_kwargs, args.seed)
    reports = [_evaluate(args, kind, env_kwargs) for kind in kinds]
    print(format_table(reports))
    for r in reports:
        extra = {k: round(v, 3) for k, v in r.episode_info.items() if k != "steps"}
        if r.ticks or extra:
            print(f"# {r.policy}: {json.dumps({**r.ticks, **extra})}")
    if args.json_path:
        data = reports[0].to_dict() if len(reports) == 1 else {"runs": [r.to_dict() for r in reports]}
        try:
            with open(args.json_path, "w") as fh:
                json.dump(data, fh, indent=1)
        except OSError as exc:  # checked before the work; this is a race (disk full, folder removed)
            raise CommandError(f"cannot write --json {args.json_path}: {exc.strerror or exc}; "
                               "pick another path", code=1) from None
    return 0 if all(r.complete for r in reports) else 1


def _check_args(args: argparse.Namespace) -> list[str]:
    """Every flag checked before any env or model is made; returns the policy kinds to run."""
    from tickcall.control_loop.config import MAX_RATE_HZ, MIN_RATE_HZ
    from tickcall.models.loading import BACKENDS, MODEL_FREE

    require_at_least("--episodes", args.episodes, 1)
    require_between("--rate", args.rate, MIN_RATE_HZ, MAX_RATE_HZ)
    require_at_least("--hold", args.hold, 1)
    require_at_least("--delay-ms", args.delay_ms, 0)
    require_at_least("--max-steps", args.max_steps, 1)
    require_at_least("--history", args.history, 0)
    if args.max_seconds is not None and args.max_seconds <= 0:
        raise CommandError(f"--max-seconds {args.max_seconds:g} must be positive; give a duration in seconds")
    kinds = [k.strip() for k in args.policy.split(",") if k.strip()]
    bad = [k for k in kinds if k not in POLICIES]
    if bad or not kinds:
        raise CommandError(f"unknown policy {','.join(bad) or repr(args.policy)}; use {', '.join(POLICIES)}")
    if args.backend not in BACKENDS:
        raise CommandError(f"unknown backend {args.backend!r}; choose from {', '.join(BACKENDS)}")
    check_env(args.env)
    if "model" in kinds and not args.model and args.backend not in MODEL_FREE:
        args.model = _shipped_model(args.env)
    check_writable("--json", args.json_path)
    args.engine_options = parse_engine_options(args.engine_options)
    if args.engine_options and "model" not in kinds:
        raise CommandError("--engine-option applies to --policy model only; add model to --policy or drop it")
    return kinds


def add_option_argument(parser: argparse.ArgumentParser, flag: str, dest: str, help: str) -> None:
    """A repeatable ``flag KEY=VALUE`` collected as strings in ``dest``; ``parse_engine_options`` reads them."""
    parser.add_argument(flag, dest=dest, action="append", default=[], metavar="KEY=VALUE", help=help)


def parse_engine_options(items: list[str], flag: str = "--engine-option") -> dict[str, Any]:
    """``["precision=int8", "threads=2"]`` -> ``{"precision": "int8", "threads": 2}`` (YAML scalars);
    ``flag`` names the option in the one-line errors."""
    import yaml

    options: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise CommandError(f"{flag} {item!r} is not KEY=VALUE; e.g. {flag} precision=int8")
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError:
            value = text
        if isinstance(value, dict | list):
            raise CommandError(f"{flag} {item!r}: give one scalar value (a number, word or true/false)")
        options[key] = value
    return options


def _evaluate(args: argparse.Namespace, kind: str, env_kwargs: dict) -> EvalReport:
    """One policy's evaluation; failures the user can fix (a bad model folder, a bad flag) are one line."""
    import gymnasium as gym
    from safetensors import SafetensorError

    from tickcall.envs.evaluate import evaluate
    from tickcall.models.engine import EngineError

    # random-calls: the model path with the random backend (seeded by --seed), no model folder
    model, backend = (None, "random") if kind == "random-calls" else (args.model, args.backend)
    try:
        rep = evaluate(args.env, "model" if kind == "random-calls" else kind, episodes=args.episodes,
                       seed=args.seed, realtime=args.realtime, rate=args.rate, hold=args.hold,
                       delay_ms=args.delay_ms, max_seconds=args.max_seconds, env_kwargs=env_kwargs,
                       model=model, backend=backend, history_len=args.history,
                       **({"engine_options": args.engine_options} if args.engine_options else {}))
    except TypeError as exc:  # an engine option the backend does not take
        if not any(repr(k) in str(exc) for k in args.engine_options):
            raise
        raise CommandError(f"the {backend} engine refused --engine-option {sorted(args.engine_options)}: "
                           f"{one_line(exc)}; see the engine's options in docs/training.md") from None
    except (EngineError, OSError, SafetensorError) as exc:
        if kind != "model":
            raise
        raise model_load_error(args.model, exc) from None
    except (KeyError, ValueError) as exc:
        raise CommandError(f"{one_line(exc)}; check --env and the flags in `tickcall eval --help`") from None
    except gym.error.Error as exc:  # the id exists but the env cannot be made (a missing extra: mujoco, box2d)
        raise CommandError(f"cannot make env {args.env!r}: {one_line(exc)}; install it or pick another --env") \
            from None
    if kind == "random-calls" or (kind == "model" and not model):
        rep.policy = kind if kind == "random-calls" else f"model:{backend}"  # which stand-in made the row
    if rep.illegal_reasons:
        print(f"# {kind}: illegal model calls: {rep.illegal_reasons}", file=sys.stderr)
    if rep.reject_reasons:
        print(f"# {kind}: rejected calls: {rep.reject_reasons}", file=sys.stderr)
    return rep


def _shipped_model(env_id: str) -> str:
    """The env's shipped model folder for ``--policy model`` without ``--model``; else the one line
    that names the choices (``tickcall.job.no_model_message``)."""
    from tickcall.job import RunError, shipped_default_model

    try:
        path = shipped_default_model(env_id)
    except RunError as exc:
        raise CommandError(str(exc)) from None
    if path is None:  # pragma: no cover - default_model_path raises rather than answer None
        raise CommandError("--policy model needs --model PATH (a local model folder)")
    return path


def _describe(env_id: str, env_kwargs: dict, seed: int) -> int:
    from tickcall.envs.binding import make_binding
    from tickcall.envs.experts import EXPERTS, get_expert
    from tickcall.envs.policies import render_calls

    try:
        b = make_binding(env_id, **env_kwargs)
    except Exception as exc:  # an unknown id, a missing extra (box2d, mujoco)
        raise CommandError(f"cannot make {env_id!r}: {one_line(exc)}; install its extra or pick another --env") \
            from None
    obs, _ = b.env.reset(seed=seed)
    print(f"env: {env_id}   physics: {b.physics_hz:g} Hz   hold at 16 Hz: {b.hold} step(s)")
    print("tools:")
    for t in b.tools:
        print("  " + json.dumps(t, ensure_ascii=False))
    print(f"observation text: {b.obs_text(obs)}")
    print(f"default call: {render_calls(b, [b.default_call()])[0]}")
    if env_id in EXPERTS:
        print(f"expert call:  {render_calls(b, [get_expert(env_id, b).act(obs)])[0]}")
    return 0
