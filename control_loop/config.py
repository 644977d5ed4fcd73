"""Run configuration: a dataclass, a YAML loader, and validation with clear errors.

A config file (``configs/run*.yaml``) holds any subset of the ``RunConfig`` fields; missing fields take
their defaults, unknown keys are refused (with a suggestion), and every value is checked for type and
range. Command-line options override the file (``load_run_config(path, overrides)``).

Units: rates in Hz, durations in seconds (``_s``), deadlines and timeouts in milliseconds (``_ms``).
"""

from __future__ import annotations

import difflib
import math
import os
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from tickcall.configs import config_path

IN_FLIGHT_POLICIES = ("skip", "supersede")
FALLBACKS = ("hold", "default", "noop")
BACKENDS = ("transformers", "noop", "vllm")
DEFAULT_CONFIG = config_path("run.yaml")
MIN_RATE_HZ = 1.0    # the loop's supported rates (Hz); the rate keeper itself takes any positive rate
MAX_RATE_HZ = 60.0


class ConfigError(ValueError):
    """A run configuration value that cannot be used; the message names the key and the fix."""


@dataclass
class ServiceConfig:
    """Where the policy service is. ``endpoint`` set: use a running service (``tickcall serve``);
    otherwise start one as a Ray actor bound to ``bind`` (port 0 = any free port)."""

    endpoint: str | None = None
    bind: str = "tcp://127.0.0.1:0"
    timeout_ms: float = 5000.0
    max_restarts: int = 3


@dataclass
class RunConfig:
    """Everything ``tickcall run`` needs. See configs/run.yaml for a commented example."""

    env: str = "tickcall/Arena-v0"
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    model: str | None = None
    backend: str = "transformers"
    device: str = "cpu"
    template: str | None = None
    engine_options: dict[str, Any] = field(default_factory=dict)
    rate_hz: float = 16.0
    duration_s: float | None = 60.0
    episodes: int | None = None
    deadline_ms: float | None = None          # None: one period (the reply must beat the next tick)
    in_flight: str = "skip"                   # previous request unanswered: skip this tick | supersede
    in_flight_timeout_ms: float | None = None  # None: 4 deadlines; then an unanswered request is dropped
    fallback: str = "hold"                    # no legal call by the deadline: hold | default | noop
    history: int | None = None                # recent calls in the turn's history line; None: the model's
                                              # tickcall.json history_len (what it was trained with), else 4
    seed: int = 0
    service: ServiceConfig = field(default_factory=ServiceConfig)
    report_dir: str | None = None
    plots: bool = True
    progress: bool = True
    warn_interval_s: float = 5.0
    rt_priority: int | None = None            # SCHED_FIFO priority 1-99 for the loop thread (Linux)

    # ---------------------------------------------------------------- derived values
    @property
    def period_ms(self) -> float:
        return 1e3 / self.rate_hz

    @property
    def effective_deadline_ms(self) -> float:
        return self.period_ms if self.deadline_ms is None else float(self.deadline_ms)

    @property
    def effective_in_flight_timeout_ms(self) -> float:
        if self.in_flight_timeout_ms is not None:
            return float(self.in_flight_timeout_ms)
        return 4.0 * self.effective_deadline_ms

    def engine_spec(self) -> dict[str, Any]:
        """The spec handed to ``models.loading.load_engine`` (by the policy service)."""
        spec: dict[str, Any] = {"backend": self.backend}
        if self.backend != "noop":
            spec["device"] = self.device
        if self.model is not None:
            spec["model"] = self.model
        if self.template is not None and self.backend != "noop":
            spec["template"] = self.template
        spec.update(self.engine_options)
        return spec

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- validation


def _num(value: Any, key: str, *, lo: float | None = None, hi: float | None = None,
         lo_open: bool = False, unit: str = "", allow_none: bool = False) -> float | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{key}: expected a number{' of ' + unit if unit else ''}, got {value!r}")
    if lo is not None and (value <= lo if lo_open else value < lo):
        raise ConfigError(f"{key}: must be {'>' if lo_open else '>='} {lo:g}{unit and ' ' + unit}, got {value!r}")
    if hi is not None and value > hi:
        raise ConfigError(f"{key}: must be <= {hi:g}{unit and ' ' + unit}, got {value!r}")
    return float(value)


def _int(value: Any, key: str, *, lo: int | None = None, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{key}: expected a whole number, got {value!r}")
    if lo is not None and value < lo:
        raise ConfigError(f"{key}: must be >= {lo}, got {value!r}")
    return value


def _choice(value: Any, key: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ConfigError(f"{key}: must be one of {', '.join(choices)}; got {value!r}")
    return value


def _str(value: Any, key: str, *, allow_none: bool = False) -> str | None:
    if value is None and allow_none:
        return None
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{key}: expected a non-empty string, got {value!r}")
    return value


def _bool(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    return value


def _mapping(value: Any, key: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise ConfigError(f"{key}: expected a mapping of names to values, got {value!r}")
    return dict(value)


def _check_keys(data: dict[str, Any], allowed: list[str], where: str) -> None:
    for key in data:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f"; known keys: {', '.join(allowed)}"
            raise ConfigError(f"{where}unknown key {key!r}{hint}")


def _endpoint(value: Any, key: str, *, allow_none: bool) -> str | None:
    value = _str(value, key, allow_none=allow_none)
    if value is not None and not value.startswith(("tcp://", "ipc://", "inproc://")):
        raise ConfigError(f"{key}: expected a ZeroMQ endpoint like tcp://127.0.0.1:5555, got {value!r}")
    return value


def validate(cfg: RunConfig) -> RunConfig:
    """Check every field; returns the config with numbers normalised. Raises ConfigError."""
    c = replace(cfg)
    c.env = _str(c.env, "env")
    c.env_kwargs = _mapping(c.env_kwargs, "env_kwargs")
    c.model = _str(c.model, "model", allow_none=True)
    c.backend = _choice(c.backend, "backend", BACKENDS)
    c.device = _str(c.device, "device")
    c.template = _str(c.template, "template", allow_none=True)
    c.engine_options = _mapping(c.engine_options, "engine_options")
    c.rate_hz = _num(c.rate_hz, "rate_hz", lo=MIN_RATE_HZ, hi=MAX_RATE_HZ, unit="Hz")
    c.duration_s = _num(c.duration_s, "duration_s", lo=0, lo_open=True, unit="s", allow_none=True)
    c.episodes = _int(c.episodes, "episodes", lo=1, allow_none=True)
    if c.duration_s is None and c.episodes is None:
        raise ConfigError("set duration_s (seconds) or episodes (count): the run needs an end")
    c.deadline_ms = _num(c.deadline_ms, "deadline_ms", lo=0, lo_open=True, unit="ms", allow_none=True)
    c.in_flight = _choice(c.in_flight, "in_flight", IN_FLIGHT_POLICIES)
    c.in_flight_timeout_ms = _num(c.in_flight_timeout_ms, "in_flight_timeout_ms", lo=0, lo_open=True,
                                  unit="ms", allow_none=True)
    if c.in_flight_timeout_ms is not None and c.in_flight_timeout_ms < c.effective_deadline_ms:
        raise ConfigError(f"in_flight_timeout_ms ({c.in_flight_timeout_ms:g}) must be >= the deadline "
                          f"({c.effective_deadline_ms:g} ms)")
    c.fallback = _choice(c.fallback, "fallback", FALLBACKS)
    c.history = _int(c.history, "history", lo=0, allow_none=True)
    c.seed = _int(c.seed, "seed")
    if not isinstance(c.service, ServiceConfig):
        raise ConfigError(f"service: expected a mapping, got {c.service!r}")
    s = replace(c.service)
    s.endpoint = _endpoint(s.endpoint, "service.endpoint", allow_none=True)
    s.bind = _endpoint(s.bind, "service.bind", allow_none=False)
    s.timeout_ms = _num(s.timeout_ms, "service.timeout_ms", lo=0, lo_open=True, unit="ms")
    s.max_restarts = _int(s.max_restarts, "service.max_restarts", lo=0)
    c.service = s
    c.report_dir = _str(c.report_dir, "report_dir", allow_none=True)
    c.plots = _bool(c.plots, "plots")
    c.progress = _bool(c.progress, "progress")
    c.warn_interval_s = _num(c.warn_interval_s, "warn_interval_s", lo=0, unit="s")
    c.rt_priority = _int(c.rt_priority, "rt_priority", lo=1, allow_none=True)
    if c.rt_priority is not None and c.rt_priority > 99:
        raise ConfigError(f"rt_priority: must be 1..99 (SCHED_FIFO), got {c.rt_priority}")
    return c


def from_dict(data: dict[str, Any], where: str = "") -> RunConfig:
    """Build and validate a RunConfig from a plain mapping (as read from YAML)."""
    prefix = f"{where}: " if where else ""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix}a run config must be a mapping of keys to values, got {type(data).__name__}")
    names = [f.name for f in fields(RunConfig)]
    _check_keys(data, names, prefix)
    data = dict(data)
    service = data.pop("service", None)
    if service is not None:
        if not isinstance(service, dict):
            raise ConfigError(f"{prefix}service: expected a mapping, got {service!r}")
        _check_keys(service, [f.name for f in fields(ServiceConfig)], f"{prefix}service: ")
    try:
        cfg = RunConfig(**data, service=ServiceConfig(**(service or {})))
        return validate(cfg)
    except ConfigError as exc:
        raise ConfigError(f"{prefix}{exc}") from None


def load_run_config(path: str | os.PathLike | None = None,
                    overrides: dict[str, Any] | None = None,
                    unset: tuple[str, ...] = ()) -> RunConfig:
    """Read a YAML config (default: configs/run.yaml when it exists), apply overrides, validate.

    ``overrides``: key -> value; ``None`` values are ignored, so argparse defaults can be passed
    straight in. Keys may be dotted (``service.endpoint``). ``unset``: top-level keys set to None
    first (``--episodes N`` on the command line unsets the file's ``duration_s``).
    """
    import yaml

    data: dict[str, Any] = {}
    where = ""
    if path is None and DEFAULT_CONFIG.exists():
        path = DEFAULT_CONFIG
    if path is not None:
        p = Path(path)
        where = str(p)
        if not p.exists():
            raise ConfigError(f"config file {p} does not exist")
        try:
            loaded = yaml.safe_load(p.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"{p}: not valid YAML: {exc}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: a run config must be a mapping of keys to values")
        data = dict(loaded)
    for key in unset:
        data[key] = None
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if "." in key:
            head, tail = key.split(".", 1)
            sub = data.get(head)
            sub = dict(sub) if isinstance(sub, dict) else {}
            sub[tail] = value
            data[head] = sub
        else:
            data[key] = value
    return from_dict(data, where)
