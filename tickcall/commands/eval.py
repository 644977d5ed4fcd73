"""``tickcall eval``: evaluate policies (expert, random, model) on an env; prints a table, writes JSON.

Examples::

    tickcall eval --env tickcall/Arena-v0 --policy expert,random --episodes 10 --seed 0
    tickcall eval --env CartPole-v1 --policy expert,random --realtime --rate 16 --episodes 3
    tickcall eval --env tickcall/Arena-v0 --policy model --model models/shipped/arena --json out.json

Several policies (comma-separated) run one after the other with the same seeds and print side by
side. The JSON holds one report (``mean_return``, ``std_return``, ``episodes``, ``legal_rate``, ...)
or, for several policies, ``{"runs": [report, ...]}``.
"""

from __future__ import annotations

import argparse
import json
import sys

HELP = "evaluate a policy (expert, random, model) on an env"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--env", required=True, help="env id, e.g. tickcall/Arena-v0, CartPole-v1")
    parser.add_argument("--policy", default="expert",
                        help="expert | random | model, or a comma-separated list (default expert)")
    parser.add_argument("--model", default=None, help="model folder for --policy model")
    parser.add_argument("--backend", default="transformers", help="engine backend for --policy model")
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
    parser.add_argument("--json", dest="json_path", default=None, help="write the report(s) here")
    parser.add_argument("--render", action="store_true",
                        help="watch the episodes in a window (render_mode=human; needs pygame and a display)")
    parser.add_argument("--describe", action="store_true",
                        help="print the env's tools, a sample observation text and an expert call; run nothing")


def run(args: argparse.Namespace) -> int:
    from tickcall.envs.evaluate import evaluate, format_table

    if args.episodes < 1:
        raise SystemExit("tickcall eval: --episodes must be at least 1")
    if args.realtime and not args.rate:
        args.rate = 16.0
    kinds = [k.strip() for k in args.policy.split(",") if k.strip()]
    bad = [k for k in kinds if k not in ("expert", "random", "model")]
    if bad or not kinds:
        raise SystemExit(f"tickcall eval: unknown policy {bad or kinds}; use expert, random or model")
    env_kwargs: dict = {"max_steps": args.max_steps} if args.max_steps else {}
    if args.render:
        env_kwargs["render_mode"] = "human"
    if args.describe:
        return _describe(args.env, env_kwargs, args.seed)
    reports = []
    for kind in kinds:
        try:
            rep = evaluate(args.env, kind, episodes=args.episodes, seed=args.seed, realtime=args.realtime,
                           rate=args.rate, hold=args.hold, delay_ms=args.delay_ms,
                           max_seconds=args.max_seconds, env_kwargs=env_kwargs, model=args.model,
                           backend=args.backend, history_len=args.history)
        except (KeyError, ValueError) as exc:
            raise SystemExit(f"tickcall eval: {exc}") from None
        reports.append(rep)
        if rep.illegal_reasons:
            print(f"# {kind}: illegal model calls: {rep.illegal_reasons}", file=sys.stderr)
        if rep.reject_reasons:
            print(f"# {kind}: rejected calls: {rep.reject_reasons}", file=sys.stderr)
    print(format_table(reports))
    for r in reports:
        extra = {k: round(v, 3) for k, v in r.episode_info.items() if k != "steps"}
        if r.ticks or extra:
            print(f"# {r.policy}: {json.dumps({**r.ticks, **extra})}")
    if args.json_path:
        data = reports[0].to_dict() if len(reports) == 1 else {"runs": [r.to_dict() for r in reports]}
        with open(args.json_path, "w") as fh:
            json.dump(data, fh, indent=1)
    return 0 if all(r.complete for r in reports) else 1


def _describe(env_id: str, env_kwargs: dict, seed: int) -> int:
    from tickcall.envs.binding import make_binding
    from tickcall.envs.experts import EXPERTS, get_expert
    from tickcall.envs.policies import render_calls

    try:
        b = make_binding(env_id, **env_kwargs)
    except Exception as exc:  # an unknown id, a missing extra (box2d, mujoco)
        raise SystemExit(f"tickcall eval: cannot make {env_id!r}: {exc}") from None
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
