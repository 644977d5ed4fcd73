"""Type and value checks of the policy service's settings (``ServeConfig``), one message per mistake.

Every check raises ``ValueError`` with a one-line message that names the setting, what was given and
what to write instead, so ``tickcall serve`` can print it as is (docs/protocol.md, configs/serve.yaml).
A YAML file is read by PyYAML (YAML 1.1), which takes ``1e9`` and ``32MB`` for text: numbers must be
written as digits, and the message says so.

Only the shape of the settings is checked here; whether a model folder loads, or a bind is allowed
without CURVE (``agent.security.check_bind``), is decided by the code that uses them.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from typing import Any

# backends that build without a model folder, and the one that takes a callable (agent/engines.py)
NO_MODEL_BACKENDS = ("noop", "random")
FACTORY_BACKEND = "factory"

# tcp://HOST:PORT, HOST a name, an IPv4 address, *, or an IPv6 address (bracketed or not, as ZMQ
# takes it: the port is after the last colon); PORT 0-65535 or *
_TCP = re.compile(r"^tcp://([^\s/]+):(\d{1,5}|\*)$")


def _shown(value: Any) -> str:
    """``value`` as the user wrote it, kept short (a long string would make the line unreadable)."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _not_number_hint(value: Any) -> str:
    """Why a string is not a number: YAML 1.1 reads ``1e9`` (no dot) as text."""
    if isinstance(value, str) and re.fullmatch(r"[+-]?\d+(\.\d*)?[eE][+-]?\d+", value.strip()):
        return " (YAML reads 1e9 as text)"
    return ""


def check_int(name: str, value: Any, low: int, example: int) -> None:
    """``value`` is an integer (not a bool) ``>= low``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(
            f"{name} {_shown(value)} is not a whole number{_not_number_hint(value)}; "
            f"write digits, e.g. {name}: {example}"
        )
    if value < low:
        raise ValueError(f"{name} {value} is too small; use {low} or more, e.g. {name}: {example}")


def check_number(name: str, value: Any, low: float, high: float, example: float) -> None:
    """``value`` is a finite int or float in ``[low, high]``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(
            f"{name} {_shown(value)} is not a number{_not_number_hint(value)}; "
            f"write one, e.g. {name}: {example:g}"
        )
    if not low <= value <= high:
        raise ValueError(
            f"{name} {value:g} is outside {low:g}-{high:g}; pick a value in that range, "
            f"e.g. {name}: {example:g}"
        )


def check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name} {_shown(value)} is not true or false; write {name}: true or {name}: false")


def check_endpoint(name: str, value: Any) -> None:
    """A ZMQ endpoint the server can bind: ``tcp://HOST:PORT``, ``ipc://PATH`` or ``inproc://NAME``.

    Other transports pass (``scheme://...``) and meet the bind policy, which treats them as exposed.
    """
    example = f"{name}: tcp://127.0.0.1:5555 (or ipc:///tmp/tickcall.sock)"
    if not isinstance(value, str) or "://" not in value:
        raise ValueError(
            f"{name} {_shown(value)} is not a ZMQ endpoint; write TRANSPORT://ADDRESS, e.g. {example}"
        )
    scheme, _, rest = value.partition("://")
    if scheme == "tcp":
        match = _TCP.match(value)
        if not match or (match.group(2) != "*" and int(match.group(2)) > 65535):
            raise ValueError(
                f"{name} {_shown(value)} is not a tcp endpoint (tcp://HOST:PORT, PORT 0-65535 "
                f"or *); write e.g. {example}"
            )
    elif not rest:
        raise ValueError(f"{name} {_shown(value)} has no address after {scheme}://; write e.g. {example}")


def check_engine_spec(value: Any, backends: tuple[str, ...]) -> None:
    """``engine`` is a mapping with a known ``backend``; model backends name a ``model`` folder.

    ``backends``: the model backends of ``models.loading`` (transformers, vllm...); the spec may leave
    ``backend`` out (noop).
    """
    known = (*NO_MODEL_BACKENDS, *[b for b in backends if b not in NO_MODEL_BACKENDS], FACTORY_BACKEND)
    if not isinstance(value, Mapping):
        raise ValueError(
            f"engine {_shown(value)} is not a mapping; write e.g. engine: {{backend: noop}} or "
            "engine: {backend: transformers, model: PATH}"
        )
    backend = value.get("backend", "noop")
    if not isinstance(backend, str) or backend not in known:
        raise ValueError(f"engine.backend {_shown(backend)} is unknown; choose from {', '.join(known)}")
    if backend == FACTORY_BACKEND:
        if not isinstance(value.get("factory"), str):
            raise ValueError("engine.backend factory needs engine.factory: 'package.module:callable'")
    elif backend not in NO_MODEL_BACKENDS:
        model = value.get("model")
        if not isinstance(model, (str, os.PathLike)) or not str(model).strip():
            raise ValueError(
                f"engine.backend {backend} needs engine.model, a model folder "
                f"(e.g. models/shipped/NAME), got {_shown(model)}; or use backend noop or random"
            )


def check_curve(value: Any, known: tuple[str, ...]) -> None:
    """``curve`` is a mapping of ``known`` keys to key file paths (or null)."""
    if not isinstance(value, Mapping):
        raise ValueError(
            f"curve {_shown(value)} is not a mapping; write curve: {{server_secret: "
            "keys/server.key_secret} (tickcall serve --gen-keys DIR writes the files)"
        )
    unknown = sorted(str(k) for k in set(value) - set(known))
    if unknown:
        raise ValueError(f"curve has unknown keys {unknown}; known: {', '.join(known)}")
    for key, path in value.items():
        if path is not None and not isinstance(path, str):
            raise ValueError(f"curve.{key} {_shown(path)} is not a file path; write the path of a key file")
