"""The GPU check (``scripts/gpu_check.sh``): decide latency of SmolLM2-135M- and Qwen2.5-0.5B-shaped
models with random bf16 weights, through the transformers backend, eager and with CUDA graphs.

Made for a CUDA machine that has torch and transformers and little else: nothing is downloaded, the
models are built here from their configurations (random weights, a small SimpleTool tokenizer whose
ids lie below the model's vocabulary), written to a temporary folder and loaded by ``HFEngine``.
Random weights never stop on their own, so every head decodes exactly ``--head-tokens`` tokens
(``engine.forced_lengths``).

Grid: model x mode (``eager``; ``graphs``: ``models.cuda_graphs.GraphedLM``) x heads (1: a tool without
arguments, the function head only; 8: a tool with 7 arguments, on a model with ``max_heads`` 7) x
concurrency (decides per ``decide_batch``, one registration shared as the policy service shares one
tool set). Latency: the whole ``decide_batch``, milliseconds, CUDA synchronised before and after;
warm-ups (graph captures among them) excluded. Eager and graphs alternate cell by cell, on the same
turns; ``same_tokens_as_eager`` is the share of heads whose greedy tokens the graphs path reproduced.

The check budgets itself: each model gets an equal share of what is left of ``--budget-s`` and each
cell an equal share of its model's; a cell stops taking samples when its share is spent, cells not
reached are listed under ``skipped``. The JSON is rewritten after every cell, so a run killed from
outside still leaves what it measured.

Run as ``python -m tickcall.bench.gpu_check`` with the repository root on ``PYTHONPATH``; no install
is needed: ``bootstrap`` maps ``tickcall.models`` to ``models/`` itself (as the editable install does)
and stands in for the two libraries the import chain names but a forced-length decide never uses.
"""

from __future__ import annotations

import argparse
import importlib.machinery
import importlib.util
import json
import os
import platform
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
SCHEMA = "tickcall.gpu_check/1"

# The two architectures, as their published config.json files give them (no download: the numbers).
MODELS: dict[str, dict[str, Any]] = {
    "smollm2-135m": {
        "family": "llama",
        "hidden": 576,
        "layers": 30,
        "heads": 9,
        "kv_heads": 3,
        "intermediate": 1536,
        "vocab": 49152,
        "rope_theta": 100000.0,
        "max_positions": 8192,
        "rms_eps": 1e-5,
    },
    "qwen2.5-0.5b": {
        "family": "qwen2",
        "hidden": 896,
        "layers": 24,
        "heads": 14,
        "kv_heads": 2,
        "intermediate": 4864,
        "vocab": 151936,
        "rope_theta": 1000000.0,
        "max_positions": 32768,
        "rms_eps": 1e-6,
    },
}
# --tiny: the same families scaled down (tests, and a smoke run of the script in seconds)
TINY: dict[str, dict[str, Any]] = {
    "smollm2-135m": {
        "hidden": 96,
        "layers": 2,
        "heads": 6,
        "kv_heads": 2,
        "intermediate": 192,
        "vocab": 1024,
        "max_positions": 2048,
    },
    "qwen2.5-0.5b": {
        "hidden": 64,
        "layers": 2,
        "heads": 4,
        "kv_heads": 2,
        "intermediate": 160,
        "vocab": 2048,
        "max_positions": 2048,
    },
}
MAX_HEADS = 7  # argument heads of the built models: the 8-head cell is a tool with 7 arguments
TOKENIZER_VOCAB = 512  # the SimpleTool tokenizer's size; every id is below both models' vocabularies
STUBBABLE = ("xgrammar", "jsonschema")  # imported by the engine's modules, unused by a forced decide


# --------------------------------------------------------------------------- imports without an install
class _Missing(types.ModuleType):
    """Stands in for ``xgrammar`` where it is not installed: importing works, any use says why."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        raise ImportError(f"{self.__name__} is not installed here (the GPU check runs with constrain=False)")


def _jsonschema_stand_in() -> types.ModuleType:
    """Where ``jsonschema`` is missing: ``models.tools`` checks tool schemas against the metaschema with
    it; the check's own two tools are fixed and valid, so the stand-in accepts every schema."""
    mod = types.ModuleType("jsonschema")

    class SchemaError(Exception):
        pass

    class _Accepting:
        @staticmethod
        def check_schema(schema: Any) -> None:
            return None

    mod.SchemaError = SchemaError
    mod.Draft7Validator = _Accepting
    mod.validators = types.SimpleNamespace(validator_for=lambda schema, default=None: _Accepting)
    return mod


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a finder that refuses the name: as good as missing
        return False


def bootstrap() -> dict[str, Any]:
    """Make ``tickcall.models`` importable from this checkout without an install, and stand in for
    missing ``xgrammar``/``jsonschema``. Returns what it did (``stand_ins``, where ``tickcall.models``
    comes from). Idempotent; a ``tickcall.models`` already imported is left as it is."""
    import tickcall

    stand_ins = []
    for name in STUBBABLE:
        if name not in sys.modules and not _importable(name):
            sys.modules[name] = _Missing(name) if name == "xgrammar" else _jsonschema_stand_in()
            stand_ins.append(name)
    if "tickcall.models" not in sys.modules:
        # models/__init__.py re-exports the stand-in engines, whose imports (rstr, ...) this check
        # does not need: the package is set up bare and its modules load on demand from models/.
        spec = importlib.machinery.ModuleSpec("tickcall.models", None, is_package=True)
        spec.submodule_search_locations = [str(REPO / "models")]
        mod = importlib.util.module_from_spec(spec)
        sys.modules["tickcall.models"] = mod
        tickcall.models = mod
    where = list(getattr(sys.modules["tickcall.models"], "__path__", []))
    return {"stand_ins": stand_ins, "tickcall_models": where[0] if where else None}


# --------------------------------------------------------------------------- models
def model_config(name: str, tiny: bool) -> dict[str, Any]:
    """The architecture numbers of ``name`` (``MODELS``), scaled down by ``TINY`` with ``tiny``."""
    cfg = dict(MODELS[name])
    if tiny:
        cfg.update(TINY[name])
    return cfg


def build_model(name: str, folder: Path, *, tiny: bool = False, seed: int = 0, device: str = "cpu") -> Path:
    """Write a random-weight bf16 model of architecture ``name`` with a SimpleTool tokenizer of
    ``MAX_HEADS`` argument heads to ``folder``. Weights are drawn on ``device`` (fast on a GPU)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    from tickcall.models.format import max_heads_meta
    from tickcall.models.tiny import PAD_TOKEN, build_tokenizer, default_corpus

    c = model_config(name, tiny)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(default_corpus(), TOKENIZER_VOCAB, MAX_HEADS)
    if len(tokenizer) > c["vocab"]:
        raise ValueError(
            f"tokenizer of {len(tokenizer)} ids does not fit the model's vocabulary of {c['vocab']}"
        )
    tokenizer.save_pretrained(folder)
    config_cls, model_cls = (
        (LlamaConfig, LlamaForCausalLM) if c["family"] == "llama" else (Qwen2Config, Qwen2ForCausalLM)
    )
    config = config_cls(
        vocab_size=c["vocab"],
        hidden_size=c["hidden"],
        intermediate_size=c["intermediate"],
        num_hidden_layers=c["layers"],
        num_attention_heads=c["heads"],
        num_key_value_heads=c["kv_heads"],
        max_position_embeddings=c["max_positions"],
        rope_theta=c["rope_theta"],
        rms_norm_eps=c["rms_eps"],
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.convert_tokens_to_ids(PAD_TOKEN),
    )
    torch.manual_seed(seed)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # draw the weights in bf16: half the memory and time
    try:
        with torch.device(device):
            model = model_cls(config)
    finally:
        torch.set_default_dtype(default)
    model.save_pretrained(folder)
    (folder / "tickcall.json").write_text(json.dumps({"template": "v2", **max_heads_meta(MAX_HEADS)}))
    del model
    return folder


def tools() -> dict[int, list[dict[str, Any]]]:
    """heads -> the tool set of that cell: 1 head, a tool without arguments; 8 heads, 7 arguments."""
    wait = {
        "name": "wait",
        "description": "Do nothing this tick.",
        "parameters": {"type": "object", "properties": {}},
    }
    props = {f"p{i}": {"type": "number", "description": f"set-point {i}"} for i in range(1, MAX_HEADS + 1)}
    configure = {
        "name": "configure",
        "description": "Set all seven set-points.",
        "parameters": {"type": "object", "properties": props, "required": list(props)},
    }
    return {1: [wait], 1 + MAX_HEADS: [configure]}


def turns(n: int) -> list:
    """``n`` distinct observation turns of the same token length (digits are one token each)."""
    from tickcall.models.format import Turn

    return [
        Turn(f"x=+0.{i % 1000:03d} v=-0.{(7 * i) % 1000:03d} angle=12.5 target={i % 10}", ["wait()"])
        for i in range(n)
    ]


# --------------------------------------------------------------------------- measuring
def device_info(device: str) -> dict[str, Any]:
    import torch
    import transformers

    info: dict[str, Any] = {
        "kind": device,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    if device == "cuda":
        p = torch.cuda.get_device_properties(0)
        info.update(
            name=torch.cuda.get_device_name(0),
            capability=f"{p.major}.{p.minor}",
            memory_gib=round(p.total_memory / 2**30, 1),
            cudnn=torch.backends.cudnn.version(),
        )
    else:
        info["name"] = _cpu_name()
    return info


def _cpu_name() -> str:
    try:  # Linux: the model name; elsewhere what platform knows
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _percentile(values: list[float], q: float) -> float:
    from tickcall.timing import percentile

    return round(percentile(values, q), 3)


def measure(
    engine, handle: str, concurrency: int, *, warmup: int, reps: int, until: float, sync
) -> dict[str, Any]:
    """``warmup`` + up to ``reps`` timed ``decide_batch`` calls of ``concurrency`` turns, stopping early
    at ``until`` (time.monotonic) once one sample is in. Latencies in ms."""
    requests = [(handle, t) for t in turns(concurrency)]
    total, prefill, decode = [], [], []
    for i in range(warmup + reps):
        if i > warmup and time.monotonic() > until:
            break
        sync()
        t0 = time.perf_counter()
        decisions = engine.decide_batch(requests)
        sync()
        ms = (time.perf_counter() - t0) * 1e3
        if i >= warmup:
            total.append(ms)
            prefill.append(decisions[0].timings_ms["prefill"])
            decode.append(decisions[0].timings_ms["decode"])
    return {
        "n": len(total),
        "p50_ms": _percentile(total, 50),
        "p90_ms": _percentile(total, 90),
        "prefill_p50_ms": _percentile(prefill, 50),
        "decode_p50_ms": _percentile(decode, 50),
        "generated_tokens": sum(decisions[0].generated_tokens.values()),
        "_tokens": [list(d.head_token_ids.values()) for d in decisions],
    }


def same_tokens(a: list[list[list[int]]], b: list[list[list[int]]]) -> float:
    """The share of heads (over all decides of a batch) that decoded the same tokens in ``a`` and ``b``."""
    pairs = [(x, y) for da, db in zip(a, b, strict=True) for x, y in zip(da, db, strict=True)]
    return round(sum(x == y for x, y in pairs) / len(pairs), 4)


def run_model(name: str, args: argparse.Namespace, report: dict[str, Any], until: float, save) -> None:
    """Build, load and measure one model; appends to ``report`` (``results``, ``skipped``, ``models``)."""
    import torch

    from tickcall.models.cuda_graphs import GraphedLM
    from tickcall.models.hf_engine import HFEngine

    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    cells = [(h, c) for h in (1, 1 + MAX_HEADS) for c in args.concurrency]
    with tempfile.TemporaryDirectory(prefix=f"gpu_check_{name}_") as tmp:
        t0 = time.monotonic()
        build_model(name, Path(tmp), tiny=args.tiny, device=args.device)
        t1 = time.monotonic()
        engine = HFEngine(
            tmp,
            device=args.device,
            dtype="bfloat16",
            constrain=report["constrain"],
            max_new_tokens=args.head_tokens,
            threads=args.threads,
        )
        t2 = time.monotonic()
    model = {
        "config": model_config(name, args.tiny),
        "params": engine.n_params,
        "build_s": round(t1 - t0, 1),
        "load_s": round(t2 - t1, 1),
        "dtype": str(engine.lm.dtype).replace("torch.", ""),
    }
    report["models"][name] = model
    eager = engine.lm
    graphed = GraphedLM(eager, model["config"]["max_positions"]) if "graphs" in args.modes else None
    regs = {h: engine.register(tools()[h]) for h, _ in cells}
    for i, (heads, conc) in enumerate(cells):
        reg = regs[heads]
        engine.forced_lengths = {h: args.head_tokens for h in reg.heads}
        tokens: dict[str, list] = {}  # mode -> head tokens of its last decide in this cell
        for mode in args.modes:
            cell = {
                "model": name,
                "mode": mode,
                "heads": len(reg.heads),
                "concurrency": conc,
                "rows": conc * len(reg.heads),
                "head_tokens": args.head_tokens,
            }
            if time.monotonic() > until:
                report["skipped"].append({**cell, "why": "budget", "reason": "time budget spent"})
                continue
            if mode == "graphs" and graphed.fallback is not None and args.quick:
                report["skipped"].append(
                    {
                        **cell,
                        "why": "fallback",
                        "reason": f"graphs fell back ({graphed.fallback}); "
                        "--quick does not time the eager path twice",
                    }
                )
                continue
            engine.lm = graphed if mode == "graphs" else eager
            left = len(cells) - i  # this cell and the ones after it share what is left
            share = (until - time.monotonic()) / (left * len(args.modes))
            try:
                cell.update(
                    measure(
                        engine,
                        reg.handle,
                        conc,
                        warmup=args.warmup,
                        reps=args.reps,
                        until=time.monotonic() + share,
                        sync=sync,
                    )
                )
            except Exception as exc:  # out of memory at 64 x 8 rows, a failed kernel: say so, go on
                report["skipped"].append(
                    {**cell, "why": "error", "reason": f"{type(exc).__name__}: {str(exc)[:300]}"}
                )
                if args.device == "cuda":
                    torch.cuda.empty_cache()
                continue
            finally:
                engine.lm = eager
            tokens[mode] = cell.pop("_tokens")
            if mode == "graphs":
                cell["graphs"] = graphed.stats()
                if "eager" in tokens:  # the same turns and lengths: greedy tokens should match eager's
                    cell["same_tokens_as_eager"] = same_tokens(tokens["eager"], tokens["graphs"])
            report["results"].append(cell)
            print_row(cell)
            save()
    if graphed is not None:
        model["graphs"] = graphed.stats()
    engine.close()
    del engine, eager, graphed
    if args.device == "cuda":
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------- the command
HEADER = (
    f"{'model':<14} {'mode':<7} {'heads':>5} {'conc':>5} {'rows':>5} {'P50 ms':>9} {'P90 ms':>9} {'n':>4}"
)


def print_row(cell: dict[str, Any]) -> None:
    note = ""
    if cell["mode"] == "graphs" and cell.get("graphs", {}).get("fallback"):
        note = "  (fell back to eager)"
    if "same_tokens_as_eager" in cell:
        note += f"  same tokens as eager: {cell['same_tokens_as_eager']:.0%}"
    print(
        f"{cell['model']:<14} {cell['mode']:<7} {cell['heads']:>5} {cell['concurrency']:>5} {cell['rows']:>5} "
        f"{cell['p50_ms']:>9.2f} {cell['p90_ms']:>9.2f} {cell['n']:>4}{note}",
        flush=True,
    )


def _int_list(text: str) -> list[int]:
    try:
        out = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas, got {text!r}") from None
    if not out or any(x < 1 for x in out):
        raise argparse.ArgumentTypeError(f"expected positive integers separated by commas, got {text!r}")
    return out


def _choices(allowed: tuple[str, ...]):
    def parse(text: str) -> list[str]:
        out = [x.strip() for x in text.split(",") if x.strip()]
        bad = [x for x in out if x not in allowed]
        if not out or bad:
            raise argparse.ArgumentTypeError(
                f"choose from {', '.join(allowed)} (comma-separated), got {text!r}"
            )
        return out

    return parse


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options (the ``tickcall bench`` convention: ``add_arguments`` and ``run``)."""
    p.add_argument(
        "--device",
        choices=("cuda", "cpu", "auto"),
        default="auto",
        help="where the models run (auto: cuda when there is one)",
    )
    p.add_argument(
        "--out",
        "--json",
        dest="out",
        default="gpu_check.json",
        help="JSON report (rewritten after every cell)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="fewer samples (--reps 5 --warmup 1), concurrency 1 and 8; graphs that fall back are not timed",
    )
    p.add_argument(
        "--tiny", action="store_true", help="the same architectures scaled down to a few layers (tests)"
    )
    p.add_argument("--models", type=_choices(tuple(MODELS)), default=list(MODELS), help="comma-separated")
    p.add_argument(
        "--modes", type=_choices(("eager", "graphs")), default=["eager", "graphs"], help="comma-separated"
    )
    p.add_argument("--concurrency", type=_int_list, default=None, help="decides per batch (default 1,8,64)")
    p.add_argument("--head-tokens", type=int, default=8, help="tokens every head decodes (forced)")
    p.add_argument("--reps", type=int, default=None, help="timed decides per cell, at most (default 50)")
    p.add_argument("--warmup", type=int, default=None, help="untimed decides per cell (default 3)")
    p.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help="stop measuring after this many seconds from the start and write what is in "
        "(default 420, 150 with --quick)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default 1 with --device cpu: on a shared 2-core machine a second "
        "thread stalled a SmolLM2 decide from 0.7 s to 6 s)",
    )


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="scripts/gpu_check.sh", description=__doc__.split("\n\n")[0])
    add_arguments(p)
    return p


def check_args(args: argparse.Namespace) -> str | None:
    """One line saying what is wrong with ``args``, or None. Fills the defaults --quick implies."""
    if args.concurrency is None:
        args.concurrency = [1, 8] if args.quick else [1, 8, 64]
    if args.reps is None:
        args.reps = 5 if args.quick else 50
    if args.warmup is None:
        args.warmup = 1 if args.quick else 3
    if args.budget_s is None:
        args.budget_s = 150.0 if args.quick else 420.0
    if args.head_tokens < 1 or args.reps < 1 or args.warmup < 0 or args.budget_s <= 0:
        return "--head-tokens and --reps must be at least 1, --warmup at least 0, --budget-s above 0"
    if args.threads is not None and args.threads < 1:
        return "--threads must be at least 1"
    if "graphs" in args.modes and args.warmup < 1:
        return "--warmup must be at least 1 with the graphs mode (the first decide of a layout captures)"
    return None


def main(argv: list[str] | None = None) -> int:
    return run(parser().parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Measure the grid ``args`` asks for; 0 once the report is written, 2 on bad input (one line)."""
    start = time.monotonic()
    problem = check_args(args)
    if problem:
        print(f"gpu_check: {problem}", file=sys.stderr)
        return 2
    try:
        import torch
        import transformers
    except ImportError as exc:
        print(
            f"gpu_check: {exc.name} is not installed; this check needs torch and transformers",
            file=sys.stderr,
        )
        return 2
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        print(
            f"gpu_check: --device cuda but torch {torch.__version__} sees no CUDA device; "
            "run with --device cpu to check the script itself",
            file=sys.stderr,
        )
        return 2
    if args.device == "cpu" and args.threads is None:
        args.threads = 1
    if args.threads:
        torch.set_num_threads(args.threads)  # before device_info records it (HFEngine sets it again)
    boot = bootstrap()
    transformers.utils.logging.disable_progress_bar()  # no "Loading weights" bars between table rows
    report: dict[str, Any] = {
        "schema": SCHEMA,
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "device": device_info(args.device),
        "args": {k: v for k, v in vars(args).items() if not k.startswith("_") and not callable(v)},
        "imports": boot,
        "constrain": "xgrammar" not in boot["stand_ins"],
        "timing": "whole decide_batch, ms; CUDA synchronised before and after; warm-ups excluded",
        "models": {},
        "results": [],
        "skipped": [],
        "complete": False,
    }
    out = Path(args.out)

    def save() -> None:
        report["elapsed_s"] = round(time.monotonic() - start, 1)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps(report, indent=2) + "\n")
        tmp.replace(out)  # atomic: a run killed mid-write leaves the previous report whole

    try:
        save()
    except OSError as exc:
        print(f"gpu_check: cannot write {out}: {exc.strerror}; choose another --out", file=sys.stderr)
        return 2
    dev = report["device"]
    print(
        f"gpu_check: {dev['name']} ({args.device}), torch {dev['torch']}, CUDA {dev['cuda']}, "
        f"transformers {dev['transformers']}; constrain={report['constrain']}"
        + (f"; stand-ins for {', '.join(boot['stand_ins'])}" if boot["stand_ins"] else ""),
        flush=True,
    )
    print(HEADER, flush=True)
    deadline = start + args.budget_s
    for i, name in enumerate(args.models):
        until = time.monotonic() + (deadline - time.monotonic()) / (len(args.models) - i)
        if time.monotonic() > deadline:
            report["skipped"].append(
                {"model": name, "why": "budget", "reason": "time budget spent before this model"}
            )
            continue
        try:
            run_model(name, args, report, until, save)
        except Exception as exc:  # one model failing (out of memory, a transformers change) keeps the others
            report["skipped"].append(
                {"model": name, "why": "error", "reason": f"{type(exc).__name__}: {str(exc)[:300]}"}
            )
            print(f"gpu_check: {name} failed: {type(exc).__name__}: {str(exc)[:300]}", file=sys.stderr)
        save()
    # complete: every cell measured, or skipped only because graphs fell back to the eager path
    report["complete"] = all(s["why"] == "fallback" for s in report["skipped"])
    save()
    print(
        f"gpu_check: {len(report['results'])} cells, {len(report['skipped'])} skipped, "
        f"{report['elapsed_s']} s -> {out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
