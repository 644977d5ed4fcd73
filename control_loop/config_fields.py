"""Field metadata for configuration dataclasses: one declaration per field gives its help text, its
check and its command-line flag, so validation, ``--help`` and the override map all come from it.

    rate_hz: float = setting(16.0, help="ticks per second (Hz)", check=number(lo=1, hi=60, unit="Hz"),
                             flag=Flag("--rate", metavar="HZ"))

A field's kind is one of ``number``, ``integer``, ``string``, ``choice``, ``boolean``, ``mapping``,
``endpoint``, ``number_or`` (a number or a word, ``threshold: auto``) or ``section``.

``check_fields(obj)`` validates every field of a dataclass instance (sections recursively, keys
dotted: ``service.bind``); ``cli_options(cls)`` lists the fields that have a flag. A check failure
raises ``ConfigError`` with one line naming the key and what it must be.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import MISSING, dataclass, field, fields
from typing import Any


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message names the key and the fix."""


@dataclass(frozen=True)
class Check:
    """How one value is checked. ``kind``: number, integer, string, choice, boolean, mapping,
    endpoint or section (a nested dataclass, ``section``). ``optional``: None is allowed (the
    field's help says what None means). Bounds are inclusive unless ``lo_open``."""

    kind: str
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    unit: str = ""
    choices: tuple[str, ...] = ()
    optional: bool = False
    section: type | None = None

    def __call__(self, value: Any, key: str) -> Any:
        """The normalised value (numbers as float), or ``ConfigError``."""
        if value is None and self.optional:
            return None
        return getattr(self, f"_{self.kind}")(value, key)

    @property
    def arg_type(self) -> Any:
        """The function argparse converts a flag's text with."""
        if self.kind == "number_or":
            return self._number_or_text
        return {"number": float, "integer": int}.get(self.kind, str)

    def _number_or_text(self, text: str) -> float | str:
        """A flag's text as a number when it reads as one, else as it is (``auto``): checked later."""
        try:
            return float(text)
        except ValueError:
            return text

    def _range(self, value: float, key: str, unit: str) -> None:
        lo, hi = self.lo, self.hi
        if lo is not None and (value <= lo if self.lo_open else value < lo):
            raise ConfigError(f"{key}: must be {'>' if self.lo_open else '>='} {lo:g}{unit}, got {value!r}")
        if hi is not None and value > hi:
            raise ConfigError(f"{key}: must be <= {hi:g}{unit}, got {value!r}")

    def _number(self, value: Any, key: str) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ConfigError(
                f"{key}: expected a number{' of ' + self.unit if self.unit else ''}, got {value!r}"
            )
        self._range(value, key, self.unit and " " + self.unit)
        return float(value)

    def _integer(self, value: Any, key: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected a whole number, got {value!r}")
        self._range(value, key, "")
        return value

    def _number_or(self, value: Any, key: str) -> float | str:
        """A number in range, or one of the words in ``choices`` (``threshold: auto``)."""
        if isinstance(value, str):
            if value in self.choices:
                return value
            raise ConfigError(f"{key}: expected a number or {' or '.join(self.choices)}, got {value!r}")
        return self._number(value, key)

    def _string(self, value: Any, key: str) -> str:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{key}: expected a non-empty string, got {value!r}")
        return value

    def _choice(self, value: Any, key: str) -> str:
        if value not in self.choices:
            raise ConfigError(f"{key}: must be one of {', '.join(self.choices)}; got {value!r}")
        return value

    def _boolean(self, value: Any, key: str) -> bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value

    def _mapping(self, value: Any, key: str) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise ConfigError(f"{key}: expected a mapping of names to values, got {value!r}")
        return dict(value)

    def _endpoint(self, value: Any, key: str) -> str:
        value = self._string(value, key)
        if not value.startswith(("tcp://", "ipc://", "inproc://")):
            raise ConfigError(f"{key}: expected a ZeroMQ endpoint like tcp://127.0.0.1:5555, got {value!r}")
        return value

    def _section(self, value: Any, key: str) -> Any:  # None passes __call__ when the section is optional
        if self.section is None or not isinstance(value, self.section):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return check_fields(value, prefix=f"{key}.")


def number(
    *,
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
    unit: str = "",
    optional: bool = False,
) -> Check:
    return Check("number", lo=lo, hi=hi, lo_open=lo_open, unit=unit, optional=optional)


def integer(*, lo: int | None = None, hi: int | None = None, optional: bool = False) -> Check:
    return Check("integer", lo=lo, hi=hi, optional=optional)


def number_or(*words: str, lo: float | None = None, hi: float | None = None, unit: str = "") -> Check:
    """A number in [lo, hi], or one of ``words`` (e.g. ``number_or("auto", lo=0)``)."""
    return Check("number_or", lo=lo, hi=hi, unit=unit, choices=words)


def string(*, optional: bool = False) -> Check:
    return Check("string", optional=optional)


def choice(*choices: str) -> Check:
    return Check("choice", choices=choices)


def boolean() -> Check:
    return Check("boolean")


def mapping() -> Check:
    return Check("mapping")


def zmq_endpoint(*, optional: bool = False) -> Check:
    return Check("endpoint", optional=optional)


def section(cls: type, *, optional: bool = False) -> Check:
    """A nested dataclass; ``optional``: the key may be null (the feature is off), its default then."""
    return Check("section", section=cls, optional=optional)


@dataclass(frozen=True)
class Flag:
    """A field's command-line option. ``group``: flags of one group exclude each other, and giving
    one unsets the other fields of the group. ``off``: the flag value that unsets the field
    (``--rt-priority 0``). A boolean field's flag is a switch that sets the opposite of its default."""

    name: str
    metavar: str | None = None
    group: str | None = None
    off: Any = None


def setting(
    default: Any = MISSING, *, help: str, check: Check, flag: Flag | str | None = None, factory: Any = MISSING
) -> Any:
    """A dataclass field carrying its help text, check and flag (see the module docstring)."""
    meta = {"help": help, "check": check, "flag": Flag(flag) if isinstance(flag, str) else flag}
    return field(default=default, default_factory=factory, metadata=meta)


@dataclass(frozen=True)
class CliOption:
    """One flag derived from a field: ``key`` is the dotted config key it overrides."""

    key: str
    flag: Flag
    help: str
    check: Check
    default: Any

    @property
    def dest(self) -> str:
        return self.key.replace(".", "_")

    @property
    def switch(self) -> bool:
        return self.check.kind == "boolean"


def _default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not MISSING else f.default


def cli_options(cls: type, prefix: str = "") -> list[CliOption]:
    """The fields of ``cls`` (and its sections) that have a flag, in declaration order."""
    out: list[CliOption] = []
    for f in fields(cls):
        check: Check = f.metadata["check"]
        if check.section is not None:
            out += cli_options(check.section, f"{prefix}{f.name}.")
        elif f.metadata.get("flag") is not None:
            out.append(CliOption(prefix + f.name, f.metadata["flag"], f.metadata["help"], check, _default(f)))
    return out


def describe(cls: type, prefix: str = "") -> list[tuple[str, str]]:
    """``(dotted key, help)`` for every field of ``cls`` and its sections."""
    out: list[tuple[str, str]] = []
    for f in fields(cls):
        section_cls = f.metadata["check"].section
        out += (
            describe(section_cls, f"{prefix}{f.name}.")
            if section_cls
            else [(prefix + f.name, f.metadata["help"])]
        )
    return out


def check_fields(obj: Any, prefix: str = "") -> Any:
    """A copy of the dataclass ``obj`` with every field checked and normalised; raises ConfigError."""
    values = {f.name: f.metadata["check"](getattr(obj, f.name), prefix + f.name) for f in fields(obj)}
    return dataclasses.replace(obj, **values)
