"""The text of the per-tick user turn: observation text and history lines, one format for every path.

Training rows (``models.training``), the control loop, the futures layer, the engine bridge, the
direct-connect policy service and the lock-step ``ModelPolicy`` all render through this module, so a
student sees at run time exactly the bytes it was trained on.

**Observation text**: ``name=value`` pairs joined by single spaces, in the given order::

    x=+0.012 v=-0.340 n=3 ok=true s=NE z=null

* decimals (``precision`` > 0): an explicit sign and exactly ``precision`` decimals (``+0.012``,
  ``-3.400``); a value that rounds to zero prints ``+0.000`` (never ``-0.000``); non-finite values
  print ``nan``, ``+inf``, ``-inf``;
* integers (Python/NumPy integer values when no precision is forced, or any number with ``precision``
  0, rounded half to even): plain decimal, no ``+`` (``3``, ``-2``);
* booleans ``true``/``false``; None ``null``; strings as they are.

**History lines**: one item per recent or in-flight call, oldest first, as the AsyncFC layer tracks
them (``CallStatus``)::

    push(direction="left")@f3 done            scan(r=5)@f15 done: [2, 7]
    move(x=3)@f17 running 120ms               fire()@f16 failed: cooldown
    aim(target="@f15")@f18 waiting @f15       move(x=1)@f12 superseded by @f17

The call is ``models.calls.render_call`` (parameters in schema order, strings quoted); ``@fN`` is the
call's future id; ages are whole milliseconds. A ``done`` call shows its result only when the result
is JSON data (None, bool, number, string, list, dict): an actuator's bookkeeping object (e.g. an env's
apply receipt) says nothing to the model and is left out, so a set-point call reads ``... done``.
Results and errors are cut to ``max_chars`` characters with an ellipsis.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tickcall.models.calls import Call, render_call
from tickcall.models.format import Turn

DEFAULT_PRECISION = 3
DEFAULT_RESULT_CHARS = 40

# ---------------------------------------------------------------------------- observation text


def fmt_number(x: float, precision: int = DEFAULT_PRECISION, signed: bool = True) -> str:
    """``+0.012`` / ``-3.400`` (``signed``) or ``0.012``; a plain integer when ``precision`` is 0.

    A value that rounds to zero prints without a minus sign; NaN and infinities print as
    ``nan``/``+inf``/``-inf``."""
    x = float(x)
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "+inf" if x > 0 else "-inf"
    if precision <= 0:
        return str(int(round(x)))
    text = f"{x:+.{precision}f}" if signed else f"{x:.{precision}f}"
    if text.lstrip("+-").strip("0.") == "":  # all zeros: drop the sign of -0.000
        text = ("+" if signed else "") + text.lstrip("+-")
    return text


def _is_integer(value: Any) -> bool:
    import numpy as np

    return isinstance(value, int | np.integer)


def _is_bool(value: Any) -> bool:
    import numpy as np

    return isinstance(value, bool | np.bool_)


def fmt_value(value: Any, precision: int | None = None, signed: bool = True) -> str:
    """One observation value as text (see the module docstring).

    ``precision`` None: integers print as integers and other numbers with ``DEFAULT_PRECISION``
    decimals; an int forces that many decimals on every number (0: integers), whatever its type (a
    sender's 5.0 may arrive as the int 5)."""
    if value is None:
        return "null"
    if isinstance(value, str):
        return value
    if _is_bool(value):
        return "true" if value else "false"
    if precision is None:
        if _is_integer(value):
            return str(int(value))
        precision = DEFAULT_PRECISION
    return fmt_number(value, precision, signed)


def render_pairs(pairs: Iterable[tuple[str, str]]) -> str:
    """``name=text`` pairs (already formatted) joined by single spaces."""
    return " ".join(f"{name}={text}" for name, text in pairs)


def render_observation(values: Mapping[str, Any], precision: int | Mapping[str, int] | None = None,
                       signed: bool = True, units: Mapping[str, str] | None = None) -> str:
    """``name=value`` pairs in ``values``' order.

    ``precision``: None (integers as integers, other numbers ``DEFAULT_PRECISION`` decimals), an int
    for every value, or a per-name mapping (a name it lacks: None). ``units``: a suffix per name
    (``{"x": "m"}`` -> ``x=+0.500m``)."""
    units = units or {}

    def prec(name: str) -> int | None:
        return precision.get(name) if isinstance(precision, Mapping) else precision

    return render_pairs((k, fmt_value(v, prec(k), signed) + units.get(k, "")) for k, v in values.items())


# ---------------------------------------------------------------------------- history lines

#: AsyncFC call states (``control_loop.futures.CallState`` values), as plain strings: this room does
#: not import the loop's.
STATES = ("waiting", "queued", "running", "done", "failed", "timed_out", "superseded", "cancelled",
          "rejected")


@dataclass(frozen=True)
class CallStatus:
    """What one history line says about one call.

    ``call``: the rendered call (``render_call``); ``id``: its future id without ``@`` (``f17``);
    ``state``: one of ``STATES``; ``age_ms``: for ``running`` the time since it started, for
    ``queued`` since it was dispatched (ms, rounded to whole ms when shown); ``result``: a ``done``
    call's result (shown when JSON data, see the module docstring); ``error``: why a call failed,
    timed out, was cancelled or rejected; ``superseded_by``: the id of the newer call; ``waiting_on``:
    the ids a ``waiting`` call waits for."""

    call: str
    id: str
    state: str
    age_ms: float = 0.0
    result: Any = None
    error: str | None = None
    superseded_by: str | None = None
    waiting_on: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.state not in STATES:
            raise ValueError(f"unknown call state {self.state!r}; one of {', '.join(STATES)}")


def result_text(value: Any, max_chars: int = DEFAULT_RESULT_CHARS) -> str | None:
    """JSON text of a result (``", "``/``": "`` separators), cut to ``max_chars``; None when the value
    is not JSON data (an object, NaN) or is None."""
    if value is None:
        return None
    try:
        text = json.dumps(value, ensure_ascii=False, separators=(", ", ": "), allow_nan=False)
    except (TypeError, ValueError):
        return None
    return cut(text, max_chars)


def cut(text: str, max_chars: int) -> str:
    """``text`` cut to ``max_chars`` characters, the last one an ellipsis when it was longer."""
    return text if len(text) <= max_chars else text[: max_chars - 1] + "…"


def _ms(age_ms: float) -> str:
    return f"{max(0, round(age_ms))}ms"


def _id_num(call_id: str) -> int:
    return int(call_id[1:]) if call_id[1:].isdigit() else 0


def status_line(status: CallStatus, max_chars: int = DEFAULT_RESULT_CHARS) -> str:
    """The history line for one call (see the module docstring for the shapes)."""
    head = f"{status.call}@{status.id}"
    s = status.state
    if s == "running":
        return f"{head} running {_ms(status.age_ms)}"
    if s == "queued":
        return f"{head} queued {_ms(status.age_ms)}"
    if s == "waiting":
        return f"{head} waiting " + " ".join(f"@{r}" for r in sorted(status.waiting_on, key=_id_num))
    if s == "done":
        text = result_text(status.result, max_chars)
        return f"{head} done" if text is None else f"{head} done: {text}"
    if s == "superseded" and status.superseded_by:
        return f"{head} superseded by @{status.superseded_by}"
    if s == "timed_out":
        return f"{head} timed out: {status.error}" if status.error else f"{head} timed out"
    return f"{head} {s}: {cut(status.error, max_chars)}" if status.error else f"{head} {s}"


def history_lines(statuses: Iterable[CallStatus], max_chars: int = DEFAULT_RESULT_CHARS) -> list[str]:
    """The turn's history items for ``statuses`` (in the order given: oldest first)."""
    return [status_line(s, max_chars) for s in statuses]


def done_statuses(calls: Sequence[Call], param_order: Mapping[str, Sequence[str]] | None = None,
                  first_id: int = 1) -> list[CallStatus]:
    """Calls that each ran to completion before the next decision (lock-step), ids ``f{first_id}``..;
    no result shown. ``param_order``: tool name -> parameter names (schema order)."""
    order = param_order or {}
    return [CallStatus(render_call(c, tuple(order[c.name]) if c.name in order else None),
                       f"f{first_id + i}", "done") for i, c in enumerate(calls)]


def make_turn(obs_text: str, history: Sequence[str] = ()) -> Turn:
    """The per-tick user turn: the observation text as the query, the history items as given."""
    return Turn(query=obs_text, history=list(history))
