"""Configuration of the policy service (``tickcall serve --config FILE``; configs/serve*.yaml).

All sizes are bytes, all times milliseconds.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

DEFAULT_BIND = "tcp://127.0.0.1:5555"

# Serve settings that must be integers >= 1 (poll_ms 0 would make the idle server busy-spin).
_POSITIVE_INTS = (
    "max_batch",
    "max_registrations",
    "poll_ms",
    "max_turn_tokens",
    "max_prefix_tokens",
    "max_streams_per_client",
    "max_queued_bytes_per_client",
    "max_registrations_per_client",
    "step_tokens",
)


@dataclass
class CurveConfig:
    """ZMQ CURVE keys, from files written by ``tickcall serve --gen-keys DIR`` (zmq.auth format).

    Server side: ``server_secret`` (the server's ``.key_secret`` file) and optionally ``client_keys``
    (a folder of authorised clients' ``.key`` public files; without it any client that knows the server's
    public key may connect, encrypted but unauthenticated). Client side: ``server_public`` (the server's
    ``.key`` file) and ``client_secret`` (the client's ``.key_secret`` file; a fresh key pair is made
    when absent, which only a server without ``client_keys`` accepts).
    """

    server_secret: str | None = None
    client_keys: str | None = None
    server_public: str | None = None
    client_secret: str | None = None


@dataclass
class ServeConfig:
    """Everything the policy service needs.

    ``engine``: the engine spec for ``agent.engines.build_engine`` (``{"backend": "noop"}``,
    ``{"backend": "transformers", "model": PATH}``...). ``bind``: a ZMQ endpoint; tcp binds other than
    loopback need ``curve`` or ``allow_insecure``. ``max_message_bytes``: larger requests get an
    ``oversized`` error; ``hard_max_message_bytes`` (ZMQ_MAXMSGSIZE; default 4x + 64 KiB) drops the
    connection of a peer that sends more, unanswered. ``max_batch``: most decides in one
    ``decide_batch`` call. ``max_registrations``: distinct tool sets kept (least recently used evicted).
    ``gather_ms``: when fewer decides are queued than the previous batch held, the engine thread waits
    up to this long for the others before decoding (0: never wait; a lone client never waits).
    ``poll_ms``: idle wake-up period of the serving loop (stop checks only; requests wake it at once).

    Resource control (docs/protocol.md, codes ``too_long`` and ``over_quota``): ``max_turn_tokens``
    bounds one decide's per-tick suffix and ``max_prefix_tokens`` a registered tool prefix (tokens of the
    engine's own tokenizer, counted before any forward pass; both also capped by the model's context
    length where the engine knows it). ``max_streams_per_client`` and ``max_queued_bytes_per_client``
    (wire bytes) bound one client's queued decides; ``max_registrations_per_client`` bounds the tool sets
    one client holds (its own oldest is released first, never another client's).

    Scheduling (docs/protocol.md "Scheduling"; issue 19, one client cannot starve the others): each
    engine step takes at most one decide per client per round, clients in turn (nearest deadline first,
    then the client served longest ago), until ``max_batch`` decides or ``step_tokens`` turn tokens to
    prefill (the first decide always fits). ``prefill_chunk_tokens``: a turn with more than twice this
    many tokens to prefill is prefilled this many per engine step (after the step's batch, one chunk
    per such turn, in rounds of one turn per client within what the batch left of ``step_tokens``)
    down to its last token, then batched like a short decide, so a long turn holds the engine for one
    chunk at a time, not for its whole prefill, and many long turns still advance together; 0 turns
    chunking off (engines without ``prefill_chunk`` never chunk). ``prefill_chunk_ms``: a turn is
    chunked only when its whole prefill would hold the engine longer than this (ms, estimated from the
    service's measured prefill cost per token; before the first measurement every turn over the size
    counts): on a small model a 100-token turn costs about a millisecond and is batched whole. A turn's
    size is what the engine would prefill now (less what its turn-prefix cache reuses), and turns are
    chunked only while another client has had decides queued in the last second (a client alone gets
    its turns whole).
    """

    engine: dict[str, Any] = field(default_factory=lambda: {"backend": "noop"})
    bind: str = DEFAULT_BIND
    max_message_bytes: int = 1 << 20
    hard_max_message_bytes: int | None = None
    max_batch: int = 32
    max_registrations: int = 256
    gather_ms: float = 1.0
    poll_ms: int = 100
    max_turn_tokens: int = 512
    max_prefix_tokens: int = 4096
    max_streams_per_client: int = 16
    max_queued_bytes_per_client: int = 4 << 20
    max_registrations_per_client: int = 16
    step_tokens: int = 4096
    prefill_chunk_tokens: int = 32
    prefill_chunk_ms: float = 5.0
    curve: CurveConfig | None = None
    allow_insecure: bool = False
    num_gpus: float | None = None  # Ray actor: None = 1 when the cluster has a GPU, else 0
    num_cpus: float = 1.0  # Ray actor's CPU reservation (0 lets it start on a fully reserved node)
    max_restarts: int = -1  # Ray actor restarts (-1: forever)
    # The SimpleTool HTTP door (agent/http_door.py HttpDoorConfig: HOST:PORT or a mapping of its fields,
    # checked here with the other settings and kept as that mapping); None: no HTTP door.
    # ``tickcall serve --http`` sets it.
    http: str | dict[str, Any] | None = None

    def __post_init__(self) -> None:
        """Check every setting's type and range (``agent.config_check``); ValueError names the first bad one."""
        from tickcall.agent import config_check as check
        from tickcall.models.loading import BACKENDS

        if self.curve is not None and not isinstance(self.curve, CurveConfig):
            check.check_curve(self.curve, tuple(f.name for f in fields(CurveConfig)))
            self.curve = CurveConfig(**self.curve)
        check.check_engine_spec(self.engine, BACKENDS)
        check.check_endpoint("bind", self.bind)
        check.check_int("max_message_bytes", self.max_message_bytes, 1024, 1 << 20)
        if self.hard_max_message_bytes is not None:
            check.check_int(
                "hard_max_message_bytes",
                self.hard_max_message_bytes,
                self.max_message_bytes,
                4 * self.max_message_bytes + 65536,
            )
        check.check_number("gather_ms", self.gather_ms, 0, 100, 1.0)
        for name in _POSITIVE_INTS:
            check.check_int(name, getattr(self, name), 1, getattr(ServeConfig, name))
        check.check_int("prefill_chunk_tokens", self.prefill_chunk_tokens, 0, 32)
        check.check_number("prefill_chunk_ms", self.prefill_chunk_ms, 0, 10_000, 5.0)
        check.check_bool("allow_insecure", self.allow_insecure)
        if self.num_gpus is not None:
            check.check_number("num_gpus", self.num_gpus, 0, 1024, 1)
        check.check_number("num_cpus", self.num_cpus, 0, 1024, 1)
        check.check_int("max_restarts", self.max_restarts, -1, -1)
        if self.http is not None:  # its shape now, not after an engine has loaded (its bind policy: serve)
            from tickcall.agent.http_door import HttpDoorConfig

            self.http = HttpDoorConfig.from_value(self.http).to_dict()

    @property
    def hard_limit(self) -> int:
        return self.hard_max_message_bytes or 4 * self.max_message_bytes + 65536

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ServeConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(str(key) for key in set(data) - known)
        if unknown:
            raise ValueError(f"unknown serve config keys {unknown}; known: {', '.join(sorted(known))}")
        return cls(**data)

    @classmethod
    def from_yaml(cls, path: str | Path) -> ServeConfig:
        import yaml

        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except OSError as exc:
            raise ValueError(
                f"cannot read {path}: {exc.strerror or exc}; give an existing serve YAML "
                "(configs/serve.yaml is an example)"
            ) from None
        except UnicodeDecodeError:
            raise ValueError(f"{path} is not UTF-8 text; give a serve YAML file") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
            problem = getattr(exc, "problem", None) or type(exc).__name__
            raise ValueError(f"{path} is not valid YAML{where} ({problem}); fix the syntax") from None
        if not isinstance(data, dict):
            raise ValueError(
                f"{path}: a serve config is a YAML mapping (key: value lines), not a {type(data).__name__}"
            )
        try:
            return cls.from_dict(data)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None
