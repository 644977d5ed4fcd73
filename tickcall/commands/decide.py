"""``tickcall decide``: decode one call for one turn and show everything (a demo of the engine).

tickcall decide "x=+0.02 v=-0.31 a=+0.05 w=+0.42" --env CartPole-v1
tickcall decide --model PATH --tools tools.json --template v2 "Turn on the flashlight"
tickcall decide "theta=0.1" --env Pendulum-v1 --backend random   # a legal random call, no model
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from tickcall.commands.errors import (
    CommandError,
    check_env,
    model_load_error,
    one_line,
    read_tools_file,
    require_at_least,
)

if TYPE_CHECKING:
    from tickcall.models.engine import Engine, Registration

HELP = "decode one call for a turn with the SimpleTool engine and print heads, call and timings"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("query", help="the user turn: observation text and/or instruction")
    p.add_argument("--model", help="model folder (default: the shipped model for --env)")
    p.add_argument("--env", default=None, help="env whose tools to offer (default: tickcall/Arena-v0)")
    p.add_argument("--tools", help="JSON file with a list of tools (OpenAI or BFCL style) instead of --env")
    p.add_argument("--template", help="v1, v2, compact, v1-server or v2-server (default: the model's own)")
    p.add_argument("--system", help="system prompt (v2, compact)")
    p.add_argument("--history", action="append", default=[], help="a history item, e.g. 'move(x=3)'")
    p.add_argument(
        "--backend",
        default="transformers",
        help="transformers, vllm, or noop / random (no model: one fixed or a random legal call)",
    )
    p.add_argument("--repeat", type=int, default=1, help="decide N times and report the last (warm) one")


def run(args: argparse.Namespace) -> int:
    from tickcall.models.format import Turn
    from tickcall.models.loading import MODEL_FREE

    require_at_least("--repeat", args.repeat, 1)
    env_id = args.env or "tickcall/Arena-v0"
    _check_backend(args.backend)
    _check_template(args.template)
    if not args.tools or not args.model:  # the env is used for its tools or its shipped model
        check_env(env_id)
    model = None if args.backend in MODEL_FREE else args.model or _shipped_model(env_id)
    tools = _file_tools(args.tools) if args.tools else _env_tools(env_id)
    engine = _load(model, args.backend)
    try:
        reg = _register(engine, tools, args)
        turn = Turn(args.query, list(args.history))
        for _ in range(args.repeat):
            d = engine.decide(reg.handle, turn)
    finally:
        engine.close()
    print(
        f"model     {model or '-'} ({engine.backend}, template {reg.template.name}, {reg.prefix_tokens} cached prefix tokens)"
    )
    for head, text in d.heads.items():
        print(f"  <{head}> {text!r}  ({d.generated_tokens[head]} tokens)")
    call = f"{d.call.name}({json.dumps(d.call.arguments, ensure_ascii=False)})" if d.call else "-"
    print(f"call      {call}")
    print(f"legal     {d.legal} ({d.reason})")
    print("timings   " + ", ".join(f"{k} {v:.2f} ms" for k, v in d.timings_ms.items()))
    return 0 if d.legal else 1


def _check_backend(backend: str) -> None:
    from tickcall.models.loading import BACKENDS

    if backend not in BACKENDS:
        raise CommandError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")


def _check_template(template: str | None) -> None:
    from tickcall.models.format import TEMPLATES

    if template is not None and template not in TEMPLATES:
        raise CommandError(f"unknown template {template!r}; choose from {', '.join(TEMPLATES)}")


def _shipped_model(env_id: str) -> Path:
    from tickcall.job import no_model_message
    from tickcall.models.shipped import default_model_path

    try:
        return default_model_path(env_id)
    except KeyError:
        raise CommandError(no_model_message(env_id)) from None
    except FileNotFoundError as exc:
        raise CommandError(
            no_model_message(env_id, f"the shipped model is not usable ({one_line(exc)})")
        ) from None


def _file_tools(path: str) -> list:
    """The tools in ``path``, schema-checked before the model loads (a bad file costs no load time)."""
    from tickcall.models.format import MAX_HEADS_LIMIT
    from tickcall.models.tools import normalize_tools

    tools = read_tools_file(path)
    if not isinstance(tools, list) or not tools:
        raise CommandError(
            f"--tools {path} must hold a non-empty JSON list of tools; wrap the tool(s) in [...]"
        )
    try:
        normalize_tools(tools, max_arity=MAX_HEADS_LIMIT)  # the model's own head count is checked at register
    except (ValueError, TypeError, KeyError) as exc:  # ToolSchemaError is a ValueError
        raise _schema_error(f"--tools {path}", exc) from None
    return tools


def _schema_error(source: str, exc: BaseException) -> CommandError:
    return CommandError(
        f"bad tool schema in {source}: {one_line(exc)}; give a list of OpenAI- or BFCL-style tool dicts"
    )


def _env_tools(env_id: str) -> list:
    from tickcall.envs.binding import make_binding

    try:
        return make_binding(env_id).tools
    except Exception as exc:  # a missing extra (box2d, mujoco) or an unsupported space
        raise CommandError(
            f"cannot make env {env_id!r}: {one_line(exc)}; pick another --env or use --tools"
        ) from None


def _load(model: object, backend: str) -> Engine:
    from safetensors import SafetensorError

    from tickcall.models.engine import EngineError
    from tickcall.models.loading import load_engine

    try:
        return load_engine(
            {"backend": backend} if model is None else {"backend": backend, "model": str(model)}
        )
    except (EngineError, OSError, ValueError, KeyError, SafetensorError) as exc:
        raise model_load_error(model, exc) from None


def _register(engine: Engine, tools: object, args: argparse.Namespace) -> Registration:
    from tickcall.models.engine import EngineError

    try:
        return engine.register(tools, system=args.system, template=args.template)
    except (ValueError, TypeError, KeyError, EngineError) as exc:  # ToolSchemaError is a ValueError
        source = f"--tools {args.tools}" if args.tools else f"the tools of env {args.env}"
        raise _schema_error(source, exc) from None
