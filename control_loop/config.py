"""Run configuration: the dataclasses, a YAML loader, and validation with clear errors.

Each field is declared once, with its help text, its check and (for some) its ``tickcall run`` flag
(``config_fields.setting``); validation, the command-line options and their override map are
derived from those declarations. ``LoopSettings`` holds the loop's own fields and ``RunConfig``
extends it with everything else a run needs, so the loop never keeps a copy of a field.

A config file (``configs/run*.yaml``) holds any subset of the ``RunConfig`` fields; missing fields take
their defaults, unknown keys are refused (with a suggestion), and every value is checked for type and
range. Command-line options override the file (``load_run_config(path, overrides)``).

Units: rates in Hz, durations in seconds (``_s``), deadlines and timeouts in milliseconds (``_ms``).
"""

from __future__ import annotations

import difflib
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from tickcall.configs import config_path
from tickcall.control_loop.config_fields import (
    ConfigError,
    Flag,
    boolean,
    check_fields,
    choice,
    integer,
    mapping,
    number,
    number_or,
    section,
    setting,
    string,
    zmq_endpoint,
)

__all__ = [
    "BACKENDS",
    "CascadeConfig",
    "DEFAULT_CONFIG",
    "DEFAULT_HISTORY",
    "FALLBACKS",
    "IN_FLIGHT_POLICIES",
    "ConfigError",
    "LoopSettings",
    "RunConfig",
    "ServiceConfig",
    "from_dict",
    "load_run_config",
    "validate",
]

IN_FLIGHT_POLICIES = ("skip", "supersede")
FALLBACKS = ("hold", "default", "noop")
BACKENDS = ("transformers", "noop", "vllm", "random")
MODEL_FREE = ("noop", "random")  # backends that need no model folder (models.loading.MODEL_FREE)
DEFAULT_CONFIG = config_path("run.yaml")
MIN_RATE_HZ = 1.0  # the loop's supported rates (Hz); the rate keeper itself takes any positive rate
MAX_RATE_HZ = 60.0
DEFAULT_HISTORY = 4  # history items per turn when neither the config nor the model folder says
MAX_REPLICAS = 64  # policy service replicas one run may start


@dataclass
class LoopSettings:
    """The control loop's own knobs: what ``ControlLoop`` reads. ``RunConfig`` is a ``LoopSettings``."""

    rate_hz: float = setting(
        16.0,
        help=f"ticks (decisions) per second, {MIN_RATE_HZ:g}-{MAX_RATE_HZ:g} Hz",
        check=number(lo=MIN_RATE_HZ, hi=MAX_RATE_HZ, unit="Hz"),
        flag=Flag("--rate", metavar="HZ"),
    )
    deadline_ms: float | None = setting(
        None,
        help="reply budget per tick in ms, from the tick's scheduled start; null: one period",
        check=number(lo=0, lo_open=True, unit="ms", optional=True),
        flag=Flag("--deadline-ms", metavar="MS"),
    )
    in_flight: str = setting(
        "skip",
        help="when the previous request is still unanswered at the next tick: skip (record the "
        "tick as skipped) or supersede (send anyway; the older tick turns late)",
        check=choice(*IN_FLIGHT_POLICIES),
        flag="--in-flight",
    )
    in_flight_timeout_ms: float | None = setting(
        None,
        help="drop an unanswered request after this many ms (at least the deadline); null: 4 deadlines",
        check=number(lo=0, lo_open=True, unit="ms", optional=True),
    )
    fallback: str = setting(
        "hold",
        help="what acts when no legal call arrives by the deadline: hold (keep the last action), "
        "default (the binding's default action) or noop (the env's no-op)",
        check=choice(*FALLBACKS),
        flag="--fallback",
    )
    history: int | None = setting(
        None,
        help="recent calls (with the status of calls in flight) in each turn's history line; null: "
        f"the model's history_len from its tickcall.json (what it was trained with), else {DEFAULT_HISTORY}",
        check=integer(lo=0, optional=True),
    )
    warn_interval_s: float = setting(
        5.0, help="at most one 'falling behind' warning per this many seconds", check=number(lo=0, unit="s")
    )
    rt_priority: int | None = setting(
        None,
        help="SCHED_FIFO priority 1-99 of the loop thread (Linux; refused: normal priority and a "
        "warning); null: normal priority",
        check=integer(lo=1, hi=99, optional=True),
        flag=Flag("--rt-priority", metavar="N", off=0),
    )

    @property
    def period_s(self) -> float:
        return 1.0 / self.rate_hz

    @property
    def deadline_s(self) -> float:
        return self.period_s if self.deadline_ms is None else self.deadline_ms / 1e3

    @property
    def in_flight_timeout_s(self) -> float:
        if self.in_flight_timeout_ms is None:
            return 4.0 * self.deadline_s
        return max(self.in_flight_timeout_ms / 1e3, self.deadline_s)

    @property
    def history_len(self) -> int:
        """History items per turn (``history``, or ``DEFAULT_HISTORY`` when unset)."""
        return DEFAULT_HISTORY if self.history is None else int(self.history)

    @classmethod
    def from_run_config(cls, cfg: LoopSettings) -> LoopSettings:
        """The loop's fields of a ``RunConfig`` (a plain ``LoopSettings``, cheap to send to an actor)."""
        return cls(**{f.name: getattr(cfg, f.name) for f in fields(cls)})


@dataclass
class ServiceConfig:
    """Where the policy service is. ``endpoint`` set: use a running service (``tickcall serve``);
    otherwise start one as a Ray actor bound to ``bind`` (port 0 = any free port)."""

    endpoint: str | None = setting(
        None,
        help="use a running policy service (tickcall serve) at this ZeroMQ endpoint instead of starting one",
        check=zmq_endpoint(optional=True),
        flag=Flag("--endpoint", metavar="URL"),
    )
    bind: str = setting(
        "tcp://127.0.0.1:0",
        help="where a started service binds (port 0: any free port; loopback unless "
        "CURVE keys are configured)",
        check=zmq_endpoint(),
    )
    timeout_ms: float = setting(
        5000.0, help="client-side timeout of one request, ms", check=number(lo=0, lo_open=True, unit="ms")
    )
    max_restarts: int = setting(3, help="Ray restarts of a started service that dies", check=integer(lo=0))
    connect_timeout_s: float = setting(
        15.0,
        help="with endpoint: how long the driver waits for the running service to answer hello "
        "before giving up, s",
        check=number(lo=0, lo_open=True, unit="s"),
        flag=Flag("--connect-timeout", metavar="S"),
    )


CASCADE_INTENTS = ("none", "turn")  # control_loop.cascade.INTENTS (kept here: config imports no policy code)


@dataclass
class CascadeConfig:
    """A big model beside the run's (small) model: ``control_loop.cascade`` (docs/cascade.md). The big model
    decides at ``big_rate_hz`` off the tick's critical path; a tick whose small reply's confidence is below
    ``threshold`` takes the big model's newest call when it is at most ``max_age_ms`` old."""

    model: str | None = setting(
        None,
        help="the big model's folder (SimpleTool format); null with a model-free backend or an endpoint",
        check=string(optional=True),
        flag=Flag("--cascade-model", metavar="PATH"),
    )
    backend: str = setting(
        "transformers",
        help="the big model's decoding engine",
        check=choice(*BACKENDS),
        flag="--cascade-backend",
    )
    endpoint: str | None = setting(
        None,
        help="use a running policy service (tickcall serve) as the big model instead of starting one",
        check=zmq_endpoint(optional=True),
        flag=Flag("--cascade-endpoint", metavar="URL"),
    )
    big_rate_hz: float = setting(
        4.0,
        help="how often the big model is asked, Hz (never more than one request in flight)",
        check=number(lo=0, lo_open=True, hi=MAX_RATE_HZ, unit="Hz"),
        flag=Flag("--big-rate", metavar="HZ"),
    )
    threshold: float | str = setting(
        "auto",
        help="small-model confidence (smallest chosen-token probability, 0-1) below which a tick takes "
        "the big model's call; above 1: every tick; auto: calibrated from calibrate_from",
        check=number_or("auto", lo=0),
        flag=Flag("--threshold", metavar="X"),
    )
    calibrate_from: str | None = setting(
        None,
        help="with threshold auto: a cascade run's report folder (or ticks.jsonl) whose reliability curve "
        "sets the threshold",
        check=string(optional=True),
        flag=Flag("--cascade-calibrate", metavar="RUN"),
    )
    calibrate_target: float = setting(
        0.95,
        help="with threshold auto: the agreement with the big model the trusted confidence bins must reach",
        check=number(lo=0, lo_open=True, hi=1),
    )
    max_age_ms: float = setting(
        500.0,
        help="the oldest big decision a tick may take, ms (from its request's send)",
        check=number(lo=0, lo_open=True, hi=3_600_000, unit="ms"),
        flag=Flag("--max-age-ms", metavar="MS"),
    )
    intent: str = setting(
        "none",
        help="turn: put the big model's newest call in the small model's turn as an 'intent: CALL' "
        "environment line (today's students were not trained with it); none: do not",
        check=choice(*CASCADE_INTENTS),
        flag="--intent",
    )
    engine_options: dict[str, Any] = setting(
        help="passed to the big model's engine", check=mapping(), factory=dict
    )

    def engine_spec(self, device: str) -> dict[str, Any]:
        """The big service's engine spec (``agent.engines.build_engine``)."""
        spec: dict[str, Any] = {"backend": self.backend}
        if self.backend not in MODEL_FREE:
            spec["device"] = device
        if self.model is not None:
            spec["model"] = self.model
        spec.update(self.engine_options)
        return spec


@dataclass
class RunConfig(LoopSettings):
    """Everything ``tickcall run`` needs. See configs/run.yaml for a commented example."""

    env: str = setting(
        "tickcall/Arena-v0",
        help="gymnasium id (tickcall/Arena-v0, CartPole-v1, ...) or "
        "engine:tcp://HOST:PORT for an external game engine",
        check=string(),
        flag=Flag("--env", metavar="ID"),
    )
    env_kwargs: dict[str, Any] = setting(help="keyword arguments for the env", check=mapping(), factory=dict)
    engine_wait_s: float = setting(
        60.0,
        help="engine:... envs: how long to wait for the engine's hello and first observation, s "
        "(env_kwargs wait_s overrides it)",
        check=number(lo=0, lo_open=True, unit="s"),
        flag=Flag("--wait-s", metavar="S"),
    )
    agents: int | None = setting(
        None,
        help="multi-agent envs (tickcall/CrowdArena-v0, pettingzoo:MODULE:FUNCTION; engine:... with N > 1: "
        "an engine's NPC crowd) only: how many agents one loop ticks, each decided every tick, all in one "
        "batch (docs/multi-agent.md); null: the env's default",
        check=integer(lo=1, optional=True),
        flag=Flag("--agents", metavar="N"),
    )
    replicas: int = setting(
        1,
        help="multi-agent envs: policy service replicas Ray places (one GPU each where there are GPUs); "
        "agents stay with one replica and move when it dies; 1: one service",
        check=integer(lo=1, hi=MAX_REPLICAS),
        flag=Flag("--replicas", metavar="M"),
    )
    ray_address: str | None = setting(
        None,
        help="join the Ray cluster at this address (what `ray start --head` prints, e.g. 10.0.0.5:6379) "
        "instead of starting a local, loopback-only Ray; null: a local Ray",
        check=string(optional=True),
        flag=Flag("--ray-address", metavar="ADDR"),
    )
    distill_every_s: float | None = setting(
        None,
        help="cascade runs: every S seconds fine-tune the small model on the big model's newest decisions "
        "in a background process and hot-swap it into the small service (docs/cascade.md); null: never",
        check=number(lo=0, lo_open=True, unit="s", optional=True),
        flag=Flag("--distill-every", metavar="S"),
    )
    distill_steps: int = setting(
        200,
        help="optimizer steps of each distillation round (with --distill-every)",
        check=integer(lo=1),
        flag=Flag("--distill-steps", metavar="N"),
    )
    model: str | None = setting(
        None,
        help="SimpleTool-format model folder; null: the shipped model for the env",
        check=string(optional=True),
        flag=Flag("--model", metavar="PATH"),
    )
    backend: str = setting("transformers", help="decoding engine", check=choice(*BACKENDS), flag="--backend")
    device: str = setting(
        "cpu", help="device of the transformers backend: cpu, cuda or auto", check=string(), flag="--device"
    )
    template: str | None = setting(
        None, help="prompt template (v1, v2, compact); null: the model's own", check=string(optional=True)
    )
    constrain: bool = setting(
        True,
        help="decode every head under its tool-schema grammar (legal calls by construction; "
        "docs/constrained-decoding.md)",
        check=boolean(),
        flag="--no-constrain",
    )
    assembly: str = setting(
        "strict",
        help="head texts -> call: strict (SimpleTool's format rules) or lenient (its server's readings)",
        check=choice("strict", "lenient"),
        flag="--assembly",
    )
    engine_options: dict[str, Any] = setting(
        help="passed to the engine (e.g. max_new_tokens, threads)", check=mapping(), factory=dict
    )
    duration_s: float | None = setting(
        60.0,
        help="run length in seconds (with episodes: whichever ends first)",
        check=number(lo=0, lo_open=True, unit="s", optional=True),
        flag=Flag("--duration", metavar="S", group="end"),
    )
    episodes: int | None = setting(
        None,
        help="run until this many episodes have finished",
        check=integer(lo=1, optional=True),
        flag=Flag("--episodes", metavar="N", group="end"),
    )
    seed: int = setting(0, help="base seed; episode i resets with seed + i", check=integer(), flag="--seed")
    service: ServiceConfig = setting(
        help="the policy service", check=section(ServiceConfig), factory=ServiceConfig
    )
    cascade: CascadeConfig | None = setting(
        None,
        help="a big model beside the run's model, routed by confidence (docs/cascade.md); null: off",
        check=section(CascadeConfig, optional=True),
    )
    report_dir: str | None = setting(
        None,
        help="report folder; null: reports/run-<UTC time>/",
        check=string(optional=True),
        flag=Flag("--report", metavar="DIR"),
    )
    plots: bool = setting(
        True,
        help="write the plots (latency_cdf.png, timeline.png) next to report.json",
        check=boolean(),
        flag="--no-plots",
    )
    progress: bool = setting(True, help="print a live progress line", check=boolean(), flag="--quiet")

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
        if self.backend == "random":
            spec["seed"] = self.seed  # the run's seed also seeds the random calls (reproducible runs)
        if self.backend not in MODEL_FREE:
            spec["device"] = self.device
        if self.model is not None:
            spec["model"] = self.model
        if self.template is not None and self.backend not in MODEL_FREE:
            spec["template"] = self.template
        if self.backend not in MODEL_FREE:  # only what differs from the engines' own defaults
            if not self.constrain:
                spec["constrain"] = False
            if self.assembly != "strict":
                spec["assembly"] = self.assembly
        spec.update(self.engine_options)
        return spec

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- validation and loading


def validate(cfg: RunConfig) -> RunConfig:
    """Check every field (its declared check), then the rules that join fields; returns the config
    with numbers normalised. Raises ConfigError."""
    c = check_fields(cfg)
    if c.duration_s is None and c.episodes is None:
        raise ConfigError("set duration_s (seconds) or episodes (count): the run needs an end")
    if c.in_flight_timeout_ms is not None and c.in_flight_timeout_ms < c.effective_deadline_ms:
        raise ConfigError(
            f"in_flight_timeout_ms ({c.in_flight_timeout_ms:g}) must be >= the deadline "
            f"({c.effective_deadline_ms:g} ms)"
        )
    if c.cascade is not None:
        _check_cascade(c.cascade)
    if c.replicas > 1 and c.service.endpoint is not None:
        raise ConfigError(
            f"replicas {c.replicas} starts {c.replicas} policy services, but service.endpoint names a running "
            "one: drop --endpoint, or run with --replicas 1"
        )
    if c.replicas > 1 and c.cascade is not None:
        raise ConfigError("replicas > 1 is for multi-agent runs, which have no cascade: drop one of them")
    return c


def _check_cascade(c: CascadeConfig) -> None:
    """The rules that join the cascade's fields (each field's own check has run)."""
    if c.model is None and c.endpoint is None and c.backend not in MODEL_FREE:
        raise ConfigError(
            "cascade: name the big model: --cascade-model PATH (cascade.model), a running service "
            "(--cascade-endpoint URL), or cascade.backend random"
        )
    if c.threshold == "auto" and c.calibrate_from is None:
        raise ConfigError(
            "cascade.threshold is auto but nothing to calibrate from: give --threshold X (0 keeps every "
            "tick on the small model and records the pairs) or --cascade-calibrate RUN (a cascade "
            "run's report folder)"
        )
    if c.threshold != "auto" and c.calibrate_from is not None:
        raise ConfigError(
            f"cascade: threshold {c.threshold:g} and calibrate_from both given; set threshold to auto "
            "to calibrate, or drop calibrate_from"
        )


def _check_keys(data: dict[str, Any], allowed: list[str], where: str) -> None:
    for key in data:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f"; known keys: {', '.join(allowed)}"
            raise ConfigError(f"{where}unknown key {key!r}{hint}")


def _build(cls: type, data: dict[str, Any], where: str = "") -> Any:
    """``cls(**data)`` with unknown keys refused and sections (nested mappings) built in turn."""
    _check_keys(data, [f.name for f in fields(cls)], where)
    kwargs: dict[str, Any] = {}
    for f in fields(cls):
        if f.name not in data:
            continue
        value, section_cls = data[f.name], f.metadata["check"].section
        if section_cls is not None:
            if value is None:
                continue
            if not isinstance(value, dict):
                raise ConfigError(f"{where}{f.name}: expected a mapping, got {value!r}")
            value = _build(section_cls, value, f"{where}{f.name}: ")
        kwargs[f.name] = value
    return cls(**kwargs)


def from_dict(data: dict[str, Any], where: str = "") -> RunConfig:
    """Build and validate a RunConfig from a plain mapping (as read from YAML)."""
    prefix = f"{where}: " if where else ""
    if not isinstance(data, dict):
        raise ConfigError(
            f"{prefix}a run config must be a mapping of keys to values, got {type(data).__name__}"
        )
    try:
        return validate(_build(RunConfig, data))
    except ConfigError as exc:
        raise ConfigError(f"{prefix}{exc}") from None


def load_run_config(
    path: str | os.PathLike | None = None,
    overrides: dict[str, Any] | None = None,
    unset: tuple[str, ...] = (),
) -> RunConfig:
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
