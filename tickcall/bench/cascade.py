"""``tickcall bench cascade``: a small model alone, a big model alone and the two as a cascade (issue 17).

One run, three parts on the same env (default the goal arena), each ``--episodes`` seeded episodes
(seed ``--seed``, the same episodes for every part) in real time at ``--rate`` Hz (16):

* **small**: the real loop with the small model's policy service (``--small PATH``);
* **big**: the real loop with the big model's service (``--big PATH``) at the rate it can hold: the
  loop's rate, or less when the big model's measured decide P90 (20 decides before the run) is over
  80% of a period (``--big-alone-rate HZ`` fixes it);
* **cascade**: ``control_loop.cascade`` (small every tick, big at ``--big-rate`` Hz, confidence routing
  at ``--threshold``, decisions up to ``--max-age-ms`` old).

Each part reports ``return`` (mean over the finished episodes), ``goal_success`` (the fraction of them
whose final info says so; null for envs without goals), ``p50_ms``/``p90_ms`` (tick latency: the
observation taken -> the call dispatched, ok ticks), ``misses`` (late + fallback + skipped ticks),
``ticks``, ``outcomes``, ``rate_hz``; the cascade also ``small_share``/``big_share``/``reasons``.
``--json FILE`` writes ``{"small", "big", "cascade", "goals", "settings", "machine"}``; ``goals`` checks
the issue's targets (cascade return and goal success >= 95% of big alone's, cascade P90 <= 1.2x small
alone's, 0 misses, small share >= 60%). Both services run on this machine, as Ray actors.
Either model may be a shipped adapter folder (the SmolLM2 model's); ``--engine-option`` and
``--big-engine-option KEY=VALUE`` set each engine's options (precision, threads, canonical_literals).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tickcall.commands.eval import add_option_argument, parse_engine_options
from tickcall.control_loop.records import MISS_OUTCOMES, TickRecord, count_outcomes
from tickcall.world import WorldSpec, make_world

GOAL_ENV = "tickcall/GoalArena-v0"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--small", required=True, metavar="PATH", help="the small model's folder")
    parser.add_argument("--big", required=True, metavar="PATH", help="the big model's folder")
    parser.add_argument("--backend", default="transformers", help="engine of both (default transformers)")
    parser.add_argument("--big-backend", help="the big model's engine when it differs")
    parser.add_argument("--env", default=GOAL_ENV, help=f"env (default {GOAL_ENV})")
    parser.add_argument("--rate", type=float, default=16.0, help="loop rate in Hz (default 16)")
    parser.add_argument("--episodes", type=int, default=20, help="seeded episodes per part (default 20)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first episode (default 0)")
    parser.add_argument(
        "--big-rate", type=float, default=4.0, help="the big model's rate in the cascade (Hz)"
    )
    parser.add_argument(
        "--big-alone-rate", type=float, help="the big model's loop rate alone (default: measured)"
    )
    parser.add_argument("--threshold", type=float, default=0.9, help="cascade confidence threshold (0-1)")
    parser.add_argument(
        "--max-age-ms", type=float, default=500.0, help="oldest big decision a tick takes (ms)"
    )
    parser.add_argument("--max-steps", type=int, help="the env's episode length in physics steps (env kwarg)")
    parser.add_argument("--device", default="cpu", help="engine device (default cpu)")
    parser.add_argument("--parts", default="small,big,cascade", help="which parts to run, comma-separated")
    add_option_argument(
        parser, "--engine-option", "engine_options", "an option of the small model's engine, repeatable"
    )
    add_option_argument(
        parser,
        "--big-engine-option",
        "big_engine_options",
        "an option of the big model's engine, repeatable, e.g. --big-engine-option precision=int8 "
        "--big-engine-option canonical_literals=true (configs/run-smollm2.yaml's)",
    )
    parser.add_argument("--json", metavar="FILE", help="write the results as JSON")


@dataclass(frozen=True)
class GoalWorld:
    """A picklable world factory (``tickcall.world.make_world``) whose finished episodes also carry
    ``goal_success`` from the env's final info (``envs.realtime.EpisodeRecord.info``), where it has one."""

    spec: WorldSpec

    def __call__(self) -> Any:
        world = make_world(self.spec)
        plain = world.episodes

        def episodes() -> list[dict[str, Any]]:
            eps = plain()
            rt = getattr(world, "rt", None)
            infos = [getattr(e, "info", {}) or {} for e in list(getattr(rt, "episodes", []))]
            for e, info in zip(eps, infos, strict=False):
                if "goal_success" in info:
                    e["goal_success"] = bool(info["goal_success"])
            return eps

        world.episodes = episodes
        return world


def history_of(model: str) -> int:
    """The history items the model was trained with (its ``tickcall.json`` ``history_len``; else 0)."""
    try:
        value = json.loads((Path(model) / "tickcall.json").read_text()).get("history_len")
    except (OSError, ValueError):
        value = None
    return value if isinstance(value, int) and value >= 0 else 0


def part_figures(result: dict[str, Any], rate_hz: float, episodes: int) -> dict[str, Any]:
    """One part's figures from a loop actor's ``run`` result (module docstring)."""
    from tickcall.timing import summary

    records = [TickRecord.from_dict(r) for r in result["records"]]
    outcomes = count_outcomes(records)
    eps = list(result.get("episodes") or [])[:episodes]
    goals = [e["goal_success"] for e in eps if "goal_success" in e]
    lat = summary([r.latency_ms for r in records if r.outcome == "ok" and r.latency_ms is not None])
    return {
        "return": round(sum(e["return"] for e in eps) / len(eps), 4) if eps else None,
        "goal_success": round(sum(goals) / len(goals), 4) if goals else None,
        "episodes": len(eps),
        "p50_ms": lat.get("p50"),
        "p90_ms": lat.get("p90"),
        "misses": sum(outcomes[o] for o in MISS_OUTCOMES),
        "ticks": len(records),
        "outcomes": outcomes,
        "rate_hz": rate_hz,
        "elapsed_s": round(float(result.get("elapsed_s", 0.0)), 3),
    }


def measure_p90_ms(endpoint: str, env: str, decides: int = 20) -> float:
    """The big model's decide P90 (ms, client round trip) on the env's first observation."""
    from tickcall.agent.client import PolicyClient
    from tickcall.envs.binding import make_binding
    from tickcall.timing import summary

    binding = make_binding(env)
    obs, _ = binding.env.reset(seed=0)
    query = binding.obs_text(obs)
    tools = binding.tools
    binding.env.close()
    client = PolicyClient(endpoint, timeout_ms=30000, name="bench-cascade-probe")
    try:
        client.register(tools)
        times = []
        for i in range(decides):
            t0 = time.perf_counter()
            client.decide({"query": query}, tick_id=i)
            times.append((time.perf_counter() - t0) * 1e3)
    finally:
        client.close()
    return float(summary(times[2:] or times)["p90"])


def goals(out: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets, each with the figures it compares (None when a part is missing)."""
    s, b, c = out.get("small"), out.get("big"), out.get("cascade")

    def ratio(x: Any, y: Any) -> float | None:
        return None if x is None or y in (None, 0) else round(x / y, 4)

    checks: dict[str, Any] = {}
    if b and c:
        checks["return_vs_big"] = ratio(c["return"], b["return"])
        checks["goal_success_vs_big"] = ratio(c["goal_success"], b["goal_success"])
    if s and c:
        checks["p90_vs_small"] = ratio(c["p90_ms"], s["p90_ms"])
    if c:
        checks["misses"] = c["misses"]
        checks["small_share"] = c.get("small_share")
    met = {
        "return_vs_big": lambda v: v is not None and v >= 0.95,
        "goal_success_vs_big": lambda v: v is not None and v >= 0.95,
        "p90_vs_small": lambda v: v is not None and v <= 1.2,
        "misses": lambda v: v == 0,
        "small_share": lambda v: v is not None and v >= 0.6,
    }
    return {k: {"value": v, "met": met[k](v)} for k, v in checks.items()}


def run(args: argparse.Namespace) -> int:
    import ray

    from tickcall.agent.actor import start_policy_service
    from tickcall.cluster import init_ray
    from tickcall.commands.errors import CommandError
    from tickcall.control_loop.actor import start_loop_actor
    from tickcall.control_loop.cascade import CascadeSettings, start_cascade_loop_actor
    from tickcall.control_loop.loop import LoopSettings
    from tickcall.control_loop.stats import cascade_summary
    from tickcall.models.folder_check import ModelFolderError, check_model_folder

    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    bad = sorted(set(parts) - {"small", "big", "cascade"})
    if bad or not parts:
        raise CommandError(f"--parts: choose from small, big, cascade (got {args.parts!r})")
    small_options = parse_engine_options(args.engine_options)
    big_options = parse_engine_options(args.big_engine_options, "--big-engine-option")
    for what, path in (("--small", args.small), ("--big", args.big)):
        try:
            check_model_folder(path)  # a full model folder or a shipped adapter (the SmolLM2 model's)
        except ModelFolderError as exc:
            raise CommandError(f"{what}: {exc}") from None
    if args.episodes < 1 or args.rate <= 0:
        raise CommandError("--episodes must be >= 1 and --rate > 0")
    try:
        CascadeSettings(big_rate_hz=args.big_rate, threshold=args.threshold, max_age_ms=args.max_age_ms)
    except ValueError as exc:
        raise CommandError(f"cascade: {exc}") from None

    kwargs = {"max_steps": args.max_steps} if args.max_steps else None
    world = GoalWorld(WorldSpec(env=args.env, seed=args.seed, env_kwargs=kwargs))
    started = init_ray(log_to_driver=False)
    actors: list[Any] = []
    out: dict[str, Any] = {}
    try:
        specs = {
            "small": {**small_options, "backend": args.backend, "model": args.small, "device": args.device},
            "big": {
                **big_options,
                "backend": args.big_backend or args.backend,
                "model": args.big,
                "device": args.device,
            },
        }
        endpoints = {}
        for name, spec in specs.items():
            print(f"starting the {name} model's service ({spec['model']}) ...", flush=True)
            actor, endpoints[name] = start_policy_service(
                spec, "tcp://127.0.0.1:0", max_restarts=0, num_cpus=0
            )
            actors.append(actor)
        big_rate = args.big_alone_rate
        if big_rate is None:
            p90 = measure_p90_ms(endpoints["big"], args.env)
            big_rate = min(args.rate, max(1.0, int(0.8 * 1000.0 / p90))) if p90 > 0 else args.rate
            out["big_probe_p90_ms"] = round(p90, 3)
        hist_small, hist_big = history_of(args.small), history_of(args.big)
        for part in parts:
            rate = big_rate if part == "big" else args.rate
            settings = LoopSettings(rate_hz=rate, history=hist_big if part == "big" else hist_small)
            print(f"{part}: {args.episodes} episodes at {rate:g} Hz ...", flush=True)
            if part == "cascade":
                cs = CascadeSettings(
                    big_rate_hz=args.big_rate, threshold=args.threshold, max_age_ms=args.max_age_ms
                )
                loop = start_cascade_loop_actor(settings, world, endpoints["small"], endpoints["big"], cs)
            else:
                loop = start_loop_actor(settings, world, endpoints[part])
            try:
                result = ray.get(loop.run.remote(episodes=args.episodes))
            finally:
                with contextlib.suppress(Exception):
                    ray.get(loop.close.remote(), timeout=10)
                ray.kill(loop)
            fig = part_figures(result, rate, args.episodes)
            if part == "cascade":
                block = cascade_summary(result["records"], result["cascade"]["big"])
                fig.update({k: block[k] for k in ("small_share", "big_share", "none_share", "reasons")})
                fig["big"] = block["big"]
            out[part] = fig
            print(_row(part, fig), flush=True)
    finally:
        for actor in actors:
            with contextlib.suppress(Exception):
                ray.get(actor.stop.remote(), timeout=10)
            with contextlib.suppress(Exception):
                ray.kill(actor, no_restart=True)
        if started:
            ray.shutdown()
    out["goals"] = goals(out)
    out["settings"] = {k: v for k, v in vars(args).items() if not k.startswith("_") and k != "json"}
    out["settings"]["big_alone_rate"] = big_rate
    out["machine"] = {"nproc": os.cpu_count(), "cpu": platform.processor() or platform.machine(),
                      "python": platform.python_version()}  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


def _row(part: str, f: dict[str, Any]) -> str:
    gs = "-" if f["goal_success"] is None else f"{f['goal_success']:.2f}"
    ret = "-" if f["return"] is None else f"{f['return']:.2f}"
    share = f"  small share {f['small_share']:.2f}" if "small_share" in f else ""
    return (f"{part:8s} return {ret}  goal {gs}  p50 {f['p50_ms']} ms  p90 {f['p90_ms']} ms  "
            f"misses {f['misses']}/{f['ticks']}{share}")  # fmt: skip
