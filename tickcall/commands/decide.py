"""``tickcall decide``: decode one call for one turn and show everything (a demo of the engine).

    tickcall decide "x=+0.02 v=-0.31 a=+0.05 w=+0.42" --env CartPole-v1
    tickcall decide --model PATH --tools tools.json --template v2 "Turn on the flashlight"
"""

from __future__ import annotations

import argparse
import json

HELP = "decode one call for a turn with the SimpleTool engine and print heads, call and timings"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("query", help="the user turn: observation text and/or instruction")
    p.add_argument("--model", help="model folder (default: the shipped model for --env)")
    p.add_argument("--env", default=None, help="env whose tools to offer (default: tickcall/Arena-v0)")
    p.add_argument("--tools", help="JSON file with a list of tools (OpenAI or BFCL style) instead of --env")
    p.add_argument("--template", help="v1, v2 or compact (default: the model's own)")
    p.add_argument("--system", help="system prompt (v2, compact)")
    p.add_argument("--history", action="append", default=[], help="a history item, e.g. 'move(x=3)'")
    p.add_argument("--backend", default="transformers", help="transformers or vllm")
    p.add_argument("--repeat", type=int, default=1, help="decide N times and report the last (warm) one")


def run(args: argparse.Namespace) -> int:
    from tickcall.models.format import Turn
    from tickcall.models.loading import load_engine

    env_id = args.env or "tickcall/Arena-v0"
    if args.model:
        model = args.model
    else:
        from tickcall.models.shipped import default_model_path

        model = default_model_path(env_id)
    if args.tools:
        with open(args.tools) as fh:
            tools = json.load(fh)
    else:
        from tickcall.envs.binding import make_binding

        tools = make_binding(env_id).tools
    engine = load_engine({"backend": args.backend, "model": str(model)})
    reg = engine.register(tools, system=args.system, template=args.template)
    turn = Turn(args.query, list(args.history))
    for _ in range(max(1, args.repeat)):
        d = engine.decide(reg.handle, turn)
    print(f"model     {model} ({engine.backend}, template {reg.template.name}, {reg.prefix_tokens} cached prefix tokens)")
    for head, text in d.heads.items():
        print(f"  <{head}> {text!r}  ({d.generated_tokens[head]} tokens)")
    call = f"{d.call.name}({json.dumps(d.call.arguments, ensure_ascii=False)})" if d.call else "-"
    print(f"call      {call}")
    print(f"legal     {d.legal} ({d.reason})")
    print("timings   " + ", ".join(f"{k} {v:.2f} ms" for k, v in d.timings_ms.items()))
    engine.close()
    return 0 if d.legal else 1
