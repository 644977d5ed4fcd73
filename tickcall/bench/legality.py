"""``tickcall bench legality``: the legal-call sweep over every tool set we can find.

For every gymnasium env id the installed gymnasium registers (those that can be made here; the rest
are listed with the reason), the shipped students and a random tiny model (untrained, so it prefers
nothing: the hardest case) decide ``--ticks`` turns of the env's own observations under the env's
derived tools, constrained; the shipped students also unconstrained, for contrast. Then every BFCL
tool set that tickcall accepts (``bfcl-eval`` data, ``scripts/setup.sh --dev``), one decide each
on the question's text. Prints the tables and writes JSON; the figures go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BFCL_CATEGORIES = ("simple_python", "multiple", "live_simple", "live_multiple", "parallel_multiple",
                   "simple_java", "simple_javascript")
SHIPPED = ("models/shipped/tickcall-arena", "models/shipped/tickcall-cartpole")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ticks", type=int, default=20, help="decides per env and model")
    p.add_argument("--envs", help="comma-separated env ids (default: every registered id)")
    p.add_argument("--bfcl", default=",".join(BFCL_CATEGORIES),
                   help="comma-separated BFCL categories ('' for none)")
    p.add_argument("--bfcl-limit", type=int, default=0, help="tool sets per category (0: all)")
    p.add_argument("--json", help="write results to this file")


def _env_ids(selected: str | None) -> list[str]:
    import gymnasium as gym

    import tickcall.envs  # noqa: F401  (registers the built-in envs)

    if selected:
        return [e.strip() for e in selected.split(",") if e.strip()]
    return sorted(k for k, spec in gym.registry.items() if not k.startswith("tickcall/") or k == "tickcall/Arena-v0")


def _engines(tiny: Path, constrain: bool) -> dict[str, Any]:
    from tickcall.models.hf_engine import HFEngine

    out = {Path(p).name: HFEngine(p, device="cpu", constrain=constrain) for p in SHIPPED}
    if constrain:
        out["random-tiny"] = HFEngine(tiny, device="cpu")
    return out


def _env_sweep(env_ids: list[str], ticks: int, con: dict, free: dict) -> tuple[list[dict], dict[str, str]]:
    from tickcall.envs.binding import make_binding
    from tickcall.envs.policies import turn_for

    rows, skipped = [], {}
    for n, env_id in enumerate(env_ids, 1):
        print(f"legality: env {n}/{len(env_ids)} {env_id}", file=sys.stderr, flush=True)
        try:
            binding = make_binding(env_id)
        except Exception as exc:  # missing optional dependency (mujoco, ale-py), unsupported space
            skipped[env_id] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:90] if str(exc) else ''}"
            continue
        env = binding.env
        try:
            obs, _ = env.reset(seed=0)
            turn_for(binding, obs)
        except ValueError as exc:  # an image observation: the env needs an obs_formatter first
            skipped[env_id] = f"{type(exc).__name__}: {str(exc)[:90]}"
            env.close()
            continue
        row: dict[str, Any] = {"env": env_id, "tools": len(binding.tools)}
        for label, engines in (("", con), ("free:", free)):
            for name, engine in engines.items():
                reg = engine.register(binding.tools)
                obs, _ = env.reset(seed=0)
                env.action_space.seed(0)
                legal = 0
                for _ in range(ticks):
                    d = engine.decide(reg.handle, turn_for(binding, obs))
                    legal += d.legal and binding.call_to_action(d.call) is not None
                    obs, _, term, trunc, _ = env.step(env.action_space.sample())
                    if term or trunc:
                        obs, _ = env.reset()
                engine.unregister(reg.handle)
                row[label + name] = legal / ticks
        env.close()
        rows.append(row)
    return rows, skipped


def _bfcl_sets(category: str, limit: int) -> list[tuple[str, list[dict], str]]:
    import bfcl_eval

    path = Path(bfcl_eval.__file__).parent / "data" / f"BFCL_v4_{category}.json"
    out = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        q = json.loads(line)
        turns = q.get("question") or [[]]
        users = [m["content"] for m in turns[0] if m.get("role") == "user"] or [""]
        out.append((q["id"], q["function"], users[-1]))
        if limit and len(out) >= limit:
            break
    return out


def _bfcl_sweep(categories: list[str], limit: int, con: dict) -> list[dict]:
    from tickcall.models.format import Turn
    from tickcall.models.tools import ToolSchemaError

    rows = []
    for category in categories:
        sets = _bfcl_sets(category, limit)
        print(f"legality: BFCL {category}, {len(sets)} tool sets", file=sys.stderr, flush=True)
        row: dict[str, Any] = {"category": category, "tool_sets": len(sets)}
        for name, engine in con.items():
            accepted = legal = 0
            illegal_ids = []
            for qid, tools, text in sets:
                try:
                    reg = engine.register(tools)
                except (ToolSchemaError, ValueError):
                    continue
                accepted += 1
                d = engine.decide(reg.handle, Turn(query=text[:2000]))
                engine.unregister(reg.handle)
                legal += d.legal
                if not d.legal:
                    illegal_ids.append(f"{qid}: {d.reason[:80]}")
            row[name] = {"accepted": accepted, "legal": legal, "illegal": illegal_ids[:5]}
        rows.append(row)
    return rows


def run(args: argparse.Namespace) -> int:
    from tickcall.bench.common import machine, print_table, write_json
    from tickcall.models.tiny import make_tiny_model

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tiny = make_tiny_model(Path(tmp) / "random-tiny", hidden=64, heads=2, kv_heads=1, intermediate=128,
                               seed=3, init_std=0.2, tie_embeddings=False)
        con, free = _engines(tiny, True), _engines(tiny, False)
        env_rows, skipped = _env_sweep(_env_ids(args.envs), args.ticks, con, free)
        cats = [c for c in args.bfcl.split(",") if c]
        bfcl_rows = _bfcl_sweep(cats, args.bfcl_limit, con) if cats else []
    names = list(con)
    print_table(["env", "tools", *names, *(f"unconstrained {n}" for n in free)],
                [[r["env"], r["tools"], *(f"{r[n]:.3f}" for n in names), *(f"{r['free:' + n]:.3f}" for n in free)]
                 for r in env_rows],
                title=f"legal rate per env, {args.ticks} ticks each (constrained unless marked)")
    for env_id, why in skipped.items():
        print(f"  skipped {env_id}: {why}")
    if bfcl_rows:
        print_table(["category", "tool sets", *(f"{n} legal/accepted" for n in names)],
                    [[r["category"], r["tool_sets"], *(f"{r[n]['legal']}/{r[n]['accepted']}" for n in names)]
                     for r in bfcl_rows], title="BFCL tool sets, one decide each on the question (constrained)")
    write_json(args.json, {"bench": "legality", "machine": machine(), "ticks": args.ticks, "envs": env_rows,
                           "skipped": skipped, "bfcl": bfcl_rows, "wall_s": time.perf_counter() - t0})
    return 0
