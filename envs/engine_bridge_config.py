"""Engine bridge settings (``BridgeConfig``), checked once, with the bind policy of agent/security.py.

Times are milliseconds (``*_ms``). The bridge binds ``127.0.0.1`` unless told otherwise; any bind that
is not local needs CURVE (``curve_secret_key``: the path of the bridge's ``.key_secret`` certificate
file, as ``tickcall serve --gen-keys DIR`` writes it) unless ``allow_insecure`` is set.
"""

from __future__ import annotations

from dataclasses import dataclass

from tickcall.agent.config import CurveConfig
from tickcall.agent.security import check_bind
from tickcall.envs.engine_bridge_messages import (
    DEFAULT_HEARTBEAT_MISSES,
    DEFAULT_HEARTBEAT_MS,
    DEFAULT_MAX_MSG_BYTES,
)

DEFAULT_ENDPOINT = "tcp://127.0.0.1:5560"


class BridgeConfigError(ValueError):
    """A bridge configuration that must not run (e.g. an exposed bind without CURVE)."""


@dataclass
class BridgeConfig:
    """Bridge settings; ``endpoint`` is bound (ROUTER). ``curve_client_keys``: optional folder of the
    public ``.key`` files of the engines allowed to connect (without it any engine that knows the
    bridge's public key may)."""

    endpoint: str = DEFAULT_ENDPOINT
    heartbeat_ms: float = DEFAULT_HEARTBEAT_MS
    heartbeat_misses: int = DEFAULT_HEARTBEAT_MISSES
    max_msg_bytes: int = DEFAULT_MAX_MSG_BYTES
    ack_timeout_ms: float = 1000.0
    result_timeout_ms: float = 10_000.0  # 0 disables the result timeout
    max_obs_age_ms: float = 500.0  # older observations are stale and never returned
    errors_per_second: int = 20  # error replies per peer per second; the rest are only counted
    curve_secret_key: str | None = None
    curve_client_keys: str | None = None
    allow_insecure: bool = False
    # protocol 1.2: observations with ``played`` the bridge keeps, oldest first, for a recorder
    # (``EngineBridge.take_played``); 0 keeps none (a live run only needs the newest observation)
    keep_played: int = 0

    def __post_init__(self) -> None:
        if not 10 <= self.heartbeat_ms <= 60_000:
            raise BridgeConfigError(f"heartbeat_ms={self.heartbeat_ms} must be within 10..60000")
        if self.heartbeat_misses < 2:
            raise BridgeConfigError("heartbeat_misses must be >= 2")
        if self.max_msg_bytes < 1024:
            raise BridgeConfigError("max_msg_bytes must be >= 1024")
        if self.ack_timeout_ms <= 0 or self.max_obs_age_ms <= 0:
            raise BridgeConfigError("ack_timeout_ms and max_obs_age_ms must be > 0")
        if self.keep_played < 0:
            raise BridgeConfigError("keep_played must be >= 0 (observations with played kept)")

    @property
    def curve(self) -> CurveConfig | None:
        """The CURVE server settings, or None when the bridge runs without CURVE."""
        if not self.curve_secret_key:
            return None
        return CurveConfig(server_secret=self.curve_secret_key, client_keys=self.curve_client_keys)

    def check_bind(self) -> None:
        """Raise BridgeConfigError for an exposed bind without CURVE (agent.security's one rule)."""
        try:
            check_bind(self.endpoint, self.curve, self.allow_insecure)
        except ValueError as exc:
            raise BridgeConfigError(str(exc)) from None
