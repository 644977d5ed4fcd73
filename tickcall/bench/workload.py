"""The decode benchmarks' workload: a model of the size we ship, reference tools, turns and calls.

Random weights never stop on their own, so timing runs force each head to decode the token count
of a reference call's value (+1 for the stop token), and the autoregressive baseline the token count
of the same call written as JSON (+1 for ``<|im_end|>``): both sides decode what a trained model would.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from tickcall.models.ar_baseline import call_json
from tickcall.models.calls import Call
from tickcall.models.format import Turn, encode_call_heads
from tickcall.models.tools import ToolSpec, normalize_tools

# Shaped like a game's tools: enums, numbers, booleans, strings, several arities.
GAME_TOOLS = [
    {"type": "function", "function": {"name": "move", "description": "Move the player in a direction.",
     "parameters": {"type": "object", "properties": {
         "direction": {"type": "string", "enum": ["north", "south", "east", "west"]},
         "speed": {"type": "number", "minimum": 0, "maximum": 1, "description": "fraction of top speed"}},
         "required": ["direction"]}}},
    {"type": "function", "function": {"name": "aim", "description": "Aim at an angle (degrees).",
     "parameters": {"type": "object", "properties": {"angle": {"type": "integer", "minimum": -180, "maximum": 180}},
                    "required": ["angle"]}}},
    {"type": "function", "function": {"name": "fire", "description": "Fire at a target.",
     "parameters": {"type": "object", "properties": {
         "target": {"type": "integer", "description": "target id"},
         "burst": {"type": "integer", "minimum": 1, "maximum": 5},
         "lead": {"type": "boolean", "description": "lead a moving target"}},
         "required": ["target"]}}},
    {"type": "function", "function": {"name": "say", "description": "Say something to the team.",
     "parameters": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}}},
    {"type": "function", "function": {"name": "wait", "description": "Do nothing this tick.",
     "parameters": {"type": "object", "properties": {}}}},
]

REFERENCE = [
    (Turn("x=12.5 y=-3.0 hp=87 enemy=3 dist=14.2 bearing=-37"), Call("aim", {"angle": -37})),
    (Turn("x=12.5 y=-3.0 hp=87 enemy=3 dist=9.8 bearing=-2", ['aim(angle=-37)']),
     Call("fire", {"target": 3, "burst": 2, "lead": True})),
    (Turn("x=11.0 y=-1.5 hp=41 enemy=none", ['fire(target=3, burst=2, lead=true)']),
     Call("move", {"direction": "north", "speed": 0.75})),
    (Turn("x=11.0 y=2.5 hp=41 ally=2 dist=3.1"), Call("say", {"text": "cover me"})),
]


def game_tools() -> list[ToolSpec]:
    return normalize_tools(GAME_TOOLS)


def synthetic_tools(n: int) -> list[dict]:
    """``n`` distinct tools of 1-3 parameters (the prefix benchmark's tool sets)."""
    tools = []
    for i in range(n):
        props = {"mode": {"type": "string", "enum": ["a", "b", "c"], "description": f"mode of tool {i}"},
                 "level": {"type": "number", "minimum": 0, "maximum": 10}}
        if i % 3 == 0:
            props["flag"] = {"type": "boolean"}
        tools.append({"type": "function", "function": {
            "name": f"tool_{i:02d}", "description": f"Synthetic tool number {i} for the prefix benchmark.",
            "parameters": {"type": "object", "properties": props, "required": ["mode"]}}})
    return tools


def forced_head_lengths(encode, call: Call, tools: list[ToolSpec], heads: tuple[str, ...]) -> dict[str, int]:
    """Tokens a trained model would emit per head for ``call`` (value + stop token)."""
    spec = {t.name: t for t in tools}[call.name]
    texts = encode_call_heads(call, spec, heads)
    return {h: (1 if texts[h] == "<|null|>" else len(encode(texts[h])) + 1) for h in heads}


def forced_json_length(encode, call: Call) -> int:
    return len(encode(call_json(call))) + 1


def resolve_model(model: str | None, hidden: int, layers: int, workdir: Path | None = None) -> tuple[Path, str]:
    """The model to time: ``--model`` if given, else the shipped default, else a random model of the
    shipped size (built locally). Returns (path, description)."""
    if model:
        return Path(model), f"{model}"
    try:
        from tickcall.models.shipped import default_model_path

        path = default_model_path()
        if path and Path(path).exists():
            return Path(path), f"shipped default ({Path(path).name})"
    except (ImportError, FileNotFoundError, LookupError):
        pass
    from tickcall.models.tiny import default_corpus, make_tiny_model

    workdir = workdir or Path(tempfile.mkdtemp(prefix="tickcall-bench-"))
    corpus = default_corpus() + [t.query for t, _ in REFERENCE]
    path = make_tiny_model(workdir / "random", hidden=hidden, layers=layers, heads=4, kv_heads=2,
                           intermediate=hidden * 3, vocab_size=512, corpus=corpus, init_std=0.2,
                           tie_embeddings=True)
    return path, f"random Qwen2 (hidden {hidden}, {layers} layers)"


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """The options every decode benchmark shares: which model, its size if random, threads, output."""
    p.add_argument("--model", help="model folder (default: the shipped model, else a random one of its size)")
    p.add_argument("--hidden", type=int, default=128, help="random model: hidden size")
    p.add_argument("--layers", type=int, default=4, help="random model: layers")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--json", help="write results to this file")


def model_from_args(args: argparse.Namespace) -> tuple[Path, str]:
    """Apply ``--threads`` and resolve the model folder (see :func:`resolve_model`)."""
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    return resolve_model(args.model, args.hidden, args.layers)
