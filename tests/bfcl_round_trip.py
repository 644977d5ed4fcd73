"""The BFCL round trip: each ground-truth call -> head texts -> ``assemble`` -> the same call, legal.

One tally per category, shared by ``test_format.py`` (which asserts it) and ``test_bfcl_table.py``
(which prints it for docs/simpletool-format.md). Invariants the tally is built on:

* A question's tool set is normalised as a policy would (``normalize_tools``); a refused set counts
  as refused, by reason (more than 6 parameters, or a schema tickcall cannot offer), never as a failure.
* BFCL lists acceptable values per parameter; ``""`` means "may be omitted". Dict values (and dicts
  inside lists) hold such option lists per key, as BFCL's ``dict_checker`` reads them. The answer we
  round-trip takes, per parameter, the first option that is legal under the tool's own schema
  (omission is legal for a parameter that is not required): BFCL's first option where it is legal,
  the next acceptable one where it is not.
* A call with no legal option for some parameter (or a required parameter BFCL leaves out, or a key
  the tool does not have) is "answer illegal under its schema": counted with its id and reason, not
  round-tripped (a value the schema refuses cannot come back legal).
* Java and JavaScript: BFCL's v4 ground truth holds values (``true``, ``50``, ``{"limit": [50]}``),
  the result of its own source-literal converter, so the round trip compares those values under the
  JSON schema our converter derives from the Java/JS type names. Where the answer is a source
  expression or a variable name for an object/array/number parameter (``"textBuffer"`` for a
  ``char[]``), it is an answer illegal under its schema: BFCL accepts it only in its
  "string representation" world, which is not tickcall's contract.
* ``parallel_multiple``: each ground-truth call is checked alone against the question's tool set.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tickcall.models.assembly import assemble
from tickcall.models.calls import Call
from tickcall.models.format import encode_call_heads, heads_for
from tickcall.models.tools import (
    ToolSchemaError,
    ToolSpec,
    normalize_tools,
    validate_arguments,
    validate_value,
)

CATEGORIES = (
    "simple_python",
    "multiple",
    "live_simple",
    "live_multiple",
    "parallel_multiple",
    "simple_java",
    "simple_javascript",
)

_OMIT = object()  # BFCL's "" option: the parameter may be left out


@dataclass
class Tally:
    """What one category's round trip saw. ``failures`` must stay empty: each is our bug."""

    category: str
    tool_sets: int = 0
    refused_arity: int = 0  # tool sets with a tool over 6 parameters
    refused_schema: int = 0  # tool sets with a schema tickcall refuses (e.g. an empty type name)
    calls: int = 0  # ground-truth calls of the accepted tool sets
    round_tripped: int = 0  # came back equal and legal
    later_option: int = 0  # of those, calls where BFCL's first option was illegal and a later one used
    answer_illegal: list[tuple[str, str]] = field(default_factory=list)  # (id, reason)
    failures: list[str] = field(default_factory=list)


def data_dir() -> Path | None:
    """The installed BFCL data folder, or None where bfcl-eval is not installed."""
    try:
        import bfcl_eval
    except ImportError:
        return None
    return Path(bfcl_eval.__file__).parent / "data"


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _resolve(value: Any) -> Any:
    """A chosen option with its nested option lists (dict values) resolved to their first option."""
    if isinstance(value, dict) and all(isinstance(v, list) for v in value.values()):
        out = {}
        for key, opts in value.items():
            choice = next(iter(_options(opts)), _OMIT)
            if choice is not _OMIT:
                out[key] = choice
        return out
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        return [_resolve(v) for v in value]
    return value


def _options(opts: list[Any]) -> list[Any]:
    return [_OMIT if o == "" else _resolve(o) for o in opts]


def _acceptable(option: Any, spec: ToolSpec, pname: str) -> bool:
    if option is _OMIT:
        return pname not in spec.required
    return validate_value(option, spec.properties[pname], pname) is None


def answer_call(spec: ToolSpec, params: dict[str, list[Any]]) -> tuple[Call, bool]:
    """The call to round-trip for one ground-truth entry, and whether a later option was needed."""
    args: dict[str, Any] = {}
    later = False
    for pname, opts in params.items():
        options = _options(opts)
        if pname not in spec.properties:
            args[pname] = next((o for o in options if o is not _OMIT), None)  # validation names it
            continue
        good = [o for o in options if _acceptable(o, spec, pname)]
        later |= bool(good) and good[0] is not options[0]
        choice = (good or options or [_OMIT])[0]
        if choice is not _OMIT:
            args[pname] = choice
    ordered = {p: args[p] for p in spec.param_names if p in args}
    ordered.update({p: v for p, v in args.items() if p not in spec.properties})
    return Call(spec.name, ordered), later


@functools.cache
def round_trip(category: str) -> Tally:
    """Run the round trip over one category (cached: the test and the table share one run)."""
    data = data_dir()
    assert data is not None, "bfcl-eval is not installed"
    questions = {q["id"]: q for q in _lines(data / f"BFCL_v4_{category}.json")}
    tally = Tally(category)
    for answer in _lines(data / "possible_answer" / f"BFCL_v4_{category}.json"):
        tally.tool_sets += 1
        try:
            specs = normalize_tools(questions[answer["id"]]["function"])
        except ToolSchemaError as exc:
            if "at most 6" in str(exc):
                tally.refused_arity += 1
            else:
                tally.refused_schema += 1
            continue
        tools = {s.name: s for s in specs}
        heads = heads_for(specs)
        for entry in answer["ground_truth"]:
            ((name, params),) = entry.items()
            tally.calls += 1
            call, later = answer_call(tools[name], params)
            why = validate_arguments(tools[name], call.arguments)
            if why:
                tally.answer_illegal.append((answer["id"], why))
                continue
            back = assemble(encode_call_heads(call, tools[name], heads), tools)
            if back.call != call or not back.legal:
                tally.failures.append(f"{answer['id']}: {call} -> {back.call} ({back.reason})")
                continue
            tally.round_tripped += 1
            tally.later_option += later
    return tally
