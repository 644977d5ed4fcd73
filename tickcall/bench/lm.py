"""``tickcall bench lm``: a language model's decide latency in float32 and on the CPU fast path.

Side by side in one run, on the same turns: the model is loaded twice on the CPU (``HFEngine``
``precision="fp32"`` and ``precision=--fast``, default ``auto``: the format ``models.cpu_features``
picks for this CPU), the same tools are registered on both, and the turns are decided alternately
(one turn on each engine, then the next) so both see the same machine load. Turns are observations
of the model's env (its ``tickcall.json`` ``envs``, else ``--env``) along an expert rollout.

Reports decide latency P50/P90 (ms, ``Decision.timings_ms["total"]``: prefill + decode + assembly)
of each, ``speedup_p50`` = fp32 P50 / fast P50, the path taken and why, the CPU flags and threads,
and the fast path's agreement with float32: the share of identical calls (name and arguments) and,
per head, of identical head texts. ``--forced function=2,arg1=2,...`` decodes exactly N tokens per
head (an untrained model: latency at realistic head lengths; agreement is then on the heads' tokens).

``--turn-cache N`` compares the turn-prefix cache instead (models.turn_cache): the fast path loaded
twice, ``turn_cache=0`` (``off``) and ``turn_cache=N`` (``on``), the same alternation; ``speedup_p50``
= off P50 / on P50, agreement is of ``on`` with ``off``, and ``turn_cache`` shows it was used: the mean
suffix tokens reused and prefilled per decide and the engine's counters. Without the flag both
engines take the engine's default (``HFEngine(turn_cache=None)``).

``--canonical-literals`` compares the fast path without (``off``) and with (``on``) canonical literals
(models.constrain rule 5: a head of literal values writes them only as the tokenizer spells them, so a
value that is another's prefix in characters only ends without a forward), the same alternation;
agreement is of ``on`` with ``off``. Every engine's figures include its decode stage (the heads after
the prefill: ``decode_p50_ms``/``decode_p90_ms``/``decode_max_ms``).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

DEFAULT_ENV = "tickcall/GoalArena-v0"
FALLBACK_ENV = "tickcall/Arena-v0"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="models/shipped/tickcall-smollm2", help="model folder (transformers)")
    p.add_argument("--turns", type=int, default=40, help="timed decides per engine")
    p.add_argument("--warmup", type=int, default=3, help="untimed decides per engine first")
    p.add_argument(
        "--fast", default="auto", choices=("auto", "bf16", "int8"), help="the fast path's precision"
    )
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    p.add_argument(
        "--env", default=None, help="env id of the turns (default: the model's, else the goal arena)"
    )
    p.add_argument("--template", default=None, help="prompt template (default: the model's)")
    p.add_argument(
        "--forced", default=None, help="decode exactly N tokens per head, e.g. function=2,arg1=2,arg2=2"
    )
    p.add_argument(
        "--turn-cache",
        type=int,
        default=None,
        metavar="N",
        help="compare the fast path without and with a turn-prefix cache of N entries (instead of fp32)",
    )
    p.add_argument(
        "--canonical-literals",
        action="store_true",
        help="compare the fast path without and with canonical literals (instead of fp32)",
    )
    p.add_argument("--seed", type=int, default=0, help="env seed of the rollout")
    p.add_argument("--json", help="write results to this file")


def _forced(text: str | None) -> dict[str, int] | None:
    from tickcall.commands.errors import CommandError

    if not text:
        return None
    out = {}
    for part in text.split(","):
        head, _, n = part.partition("=")
        if not n.strip().isdigit() or int(n) < 1:
            raise CommandError(f"--forced {text!r}: write HEAD=N pairs with N >= 1, e.g. function=2,arg1=2")
        out[head.strip()] = int(n)
    return out


def _env_id(model: str, given: str | None) -> str:
    from tickcall.gym_hook import BUILTIN_ENVS
    from tickcall.models.loading import read_model_meta

    if given:
        return given
    envs = read_model_meta(model).get("envs") or []
    if envs:
        return envs[0]
    return DEFAULT_ENV if DEFAULT_ENV in BUILTIN_ENVS else FALLBACK_ENV


def rollout_turns(env_id: str, n: int, seed: int = 0) -> tuple[list[dict], list[Any]]:
    """(tools, ``n`` turns) along an expert rollout of ``env_id`` (random actions where it has no expert)."""
    from tickcall.envs.binding import make_binding
    from tickcall.envs.policies import turn_for
    from tickcall.envs.teachers import load_teacher

    binding = make_binding(env_id)
    env = binding.env
    try:
        act = load_teacher("expert", env_id).bind(binding).act
    except ValueError:
        act = None
    obs, _ = env.reset(seed=seed)
    env.action_space.seed(seed)
    turns = []
    for _ in range(n):
        turns.append(turn_for(binding, obs))
        action = binding.call_to_action(act(obs)).action if act else env.action_space.sample()
        obs, _, term, trunc, _ = env.step(action)
        if term or trunc:
            obs, _ = env.reset()
    return binding.tools, turns


def _model_folder(path: str) -> str:
    """A plain model folder for ``path``: an adapter folder (the shipped SmolLM2 model) is merged
    with its base first, as ``load_engine`` does."""
    from pathlib import Path

    try:
        from tickcall.models.adapters import is_adapter_folder, materialize
    except ImportError:
        return path
    if Path(path).is_dir() and is_adapter_folder(path):
        return str(materialize(Path(path)))
    return path


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _same_call(a: Any, b: Any) -> bool:
    if a.call is None or b.call is None:
        return a.call is None and b.call is None and a.head_token_ids == b.head_token_ids
    return a.call.name == b.call.name and a.call.arguments == b.call.arguments


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tickcall.bench.common import machine, print_table, write_json
    from tickcall.commands.errors import CommandError
    from tickcall.models.cpu_features import cpu_flags
    from tickcall.models.engine import EngineError
    from tickcall.models.hf_engine import HFEngine
    from tickcall.timing import summary

    model = _model_folder(args.model)
    if not (Path(model) / "config.json").exists():
        raise CommandError(
            f"--model {args.model}: not a model folder (no config.json); pass a trained "
            "transformers model folder, e.g. one written by tickcall train"
        )
    if args.turns < 1:
        raise CommandError(f"--turns {args.turns}: decide at least 1 turn")
    forced = _forced(args.forced)
    env_id = _env_id(model, args.env)
    tools, turns = rollout_turns(env_id, args.warmup + args.turns, args.seed)
    compare_cache = args.turn_cache is not None
    if compare_cache and args.turn_cache < 1:
        raise CommandError(f"--turn-cache {args.turn_cache}: give the entries of the cache compared, >= 1")
    if compare_cache and args.canonical_literals:
        raise CommandError(
            "--turn-cache and --canonical-literals are two comparisons: run them one at a time"
        )
    if compare_cache:  # the fast path without and with the turn-prefix cache
        specs = {
            "off": {"precision": args.fast, "turn_cache": 0},
            "on": {"precision": args.fast, "turn_cache": args.turn_cache},
        }
    elif args.canonical_literals:  # the fast path without and with rule 5
        specs = {
            "off": {"precision": args.fast},
            "on": {"precision": args.fast, "canonical_literals": True},
        }
    else:
        specs = {"fp32": {"precision": "fp32"}, "fast": {"precision": args.fast}}
    ref_name, fast_name = specs
    try:
        engines = {
            name: HFEngine(model, device="cpu", threads=args.threads, **spec) for name, spec in specs.items()
        }
    except EngineError as exc:
        raise CommandError(f"--model {args.model}: {exc}") from None
    import torch

    handles = {}
    for e in engines.values():
        e.forced_lengths = forced
        handles[e] = e.register(tools, template=args.template).handle
    times: dict[str, list[float]] = {k: [] for k in engines}
    decisions: dict[str, list[Any]] = {k: [] for k in engines}
    t0 = time.perf_counter()
    for i, turn in enumerate(turns):
        for name, e in engines.items():
            d = e.decide(handles[e], turn)
            if i >= args.warmup:
                times[name].append(d.timings_ms["total"])
                decisions[name].append(d)
    wall = time.perf_counter() - t0
    ref, fast = decisions[ref_name], decisions[fast_name]
    heads = list(ref[0].heads)
    if forced:
        per_head = {
            h: sum(a.head_token_ids[h] == b.head_token_ids[h] for a, b in zip(ref, fast, strict=True))
            / len(ref)
            for h in heads
        }
    else:
        per_head = {
            h: sum(a.heads[h] == b.heads[h] for a, b in zip(ref, fast, strict=True)) / len(ref) for h in heads
        }
    same = sum(_same_call(a, b) for a, b in zip(ref, fast, strict=True)) / len(ref)
    stats = {k: summary(v) for k, v in times.items()}
    fe = engines[fast_name]
    flags = sorted(cpu_flags())

    def engine_figures(name: str) -> dict[str, Any]:
        e, ds = engines[name], decisions[name]
        decode = summary([d.timings_ms["decode"] for d in ds])
        return {
            "p50_ms": stats[name]["p50"],
            "p90_ms": stats[name]["p90"],
            "decode_p50_ms": decode["p50"],
            "decode_p90_ms": decode["p90"],
            "decode_max_ms": decode["max"],
            "stats": stats[name],
            "path": e.precision,
            "reason": e.fast_path_reason,
            "legal": sum(d.legal for d in ds) / len(ds),
            "turn_cache": e.turn_cache,
            "canonical_literals": e.info()["canonical_literals"],
        }

    out = {
        "model": args.model,
        "env": env_id,
        "turns": len(ref),
        "forced": forced,
        "template": fe.registration(handles[fe]).template.name,
        ref_name: engine_figures(ref_name),
        fast_name: engine_figures(fast_name),
        "speedup_p50": round(stats[ref_name]["p50"] / stats[fast_name]["p50"], 3),
        "agreement": {"identical_calls": same, "per_head": per_head},
        "machine": {**machine(), "cpu_flags": flags, "threads": torch.get_num_threads()},
        "wall_s": round(wall, 1),
    }
    if compare_cache:
        out["turn_cache"] = {
            "entries": args.turn_cache,
            "reused_tokens_mean": _mean([d.cached_tokens for d in fast])
            - _mean([d.cached_tokens for d in ref]),
            "prefilled_tokens_mean": {
                name: _mean([d.prompt_tokens for d in decisions[name]]) for name in specs
            },
            "counters": fe.turn_cache_info(),
        }
    rows = [
        [
            name,
            out[name]["p50_ms"],
            out[name]["p90_ms"],
            out[name]["decode_p90_ms"],
            out[name]["legal"],
            engines[name].precision,
        ]
        for name in specs
    ]
    print_table(
        ["engine", "P50 ms", "P90 ms", "decode P90 ms", "legal", "precision"],
        rows,
        title=f"tickcall bench lm: {args.model} on {env_id}, {len(ref)} turns, "
        f"{torch.get_num_threads()} threads"
        + (f", turn cache {args.turn_cache} entries" if compare_cache else "")
        + (", canonical literals off / on" if args.canonical_literals else ""),
    )
    print(
        f"speedup P50 {out['speedup_p50']:.2f}x; fast path {fe.fast_path_reason}; CPU flags {' '.join(flags)}"
    )
    if compare_cache:
        tc = out["turn_cache"]
        print(
            f"turn cache: {tc['reused_tokens_mean']:.1f} suffix tokens reused per decide; prefilled "
            f"{tc['prefilled_tokens_mean']['off']:.1f} (off) vs {tc['prefilled_tokens_mean']['on']:.1f} (on)"
        )
    print(
        f"agreement with {ref_name}: identical calls {same:.1%}; per head "
        + ", ".join(f"{h} {v:.1%}" for h, v in per_head.items())
    )
    write_json(args.json, out)
    for e in engines.values():
        e.close()
    return 0
