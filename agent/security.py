"""Bind policy and ZMQ CURVE setup for the policy service and its clients.

A bind that is reachable from other machines (tcp other than 127.0.0.0/8, ::1 or localhost) is refused
unless CURVE keys are configured or ``allow_insecure`` is set explicitly. Keys are files in the
zmq.auth certificate format (``tickcall serve --gen-keys DIR`` writes them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tickcall.agent.config import CurveConfig

LOOPBACK_HOSTS = ("127.", "localhost", "[::1]", "::1")


def is_local_endpoint(endpoint: str) -> bool:
    """True for ipc://, inproc:// and tcp:// on a loopback address."""
    if endpoint.startswith(("ipc://", "inproc://")):
        return True
    if not endpoint.startswith("tcp://"):
        return False
    host = endpoint[len("tcp://"):].rsplit(":", 1)[0]
    return host.startswith(LOOPBACK_HOSTS)


def check_bind(endpoint: str, curve: CurveConfig | None, allow_insecure: bool) -> None:
    """Raise ValueError for an exposed bind without CURVE (unless explicitly allowed)."""
    if is_local_endpoint(endpoint) or allow_insecure:
        return
    if curve is None or not curve.server_secret:
        raise ValueError(
            f"refusing to bind {endpoint} without authentication: it is reachable from other machines. "
            "Configure curve.server_secret (tickcall serve --gen-keys DIR), bind 127.0.0.1, "
            "or set allow_insecure: true")


def generate_keys(folder: str | Path, names: tuple[str, ...] = ("server", "client")) -> dict[str, Path]:
    """Write ``NAME.key`` (public) and ``NAME.key_secret`` for each name; return name -> secret path."""
    import zmq.auth

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for name in names:
        _public, secret = zmq.auth.create_certificates(str(folder), name)
        out[name] = Path(secret)
    return out


def _load(path: str | Path, secret: bool) -> tuple[bytes, bytes | None]:
    import zmq.auth

    public, sec = zmq.auth.load_certificate(str(path))
    if secret and not sec:
        raise ValueError(f"{path}: no secret key in this file (use the .key_secret file)")
    return public, sec


def setup_server_curve(ctx: Any, sock: Any, curve: CurveConfig) -> Any:
    """Make ``sock`` a CURVE server. Returns the authenticator thread (stop it on close) or None."""
    import zmq
    from zmq.auth.thread import ThreadAuthenticator

    public, secret = _load(curve.server_secret, secret=True)
    auth = None
    auth = ThreadAuthenticator(ctx)
    auth.start()
    if curve.client_keys:
        if not Path(curve.client_keys).is_dir():
            raise ValueError(f"curve.client_keys {curve.client_keys!r} is not a folder of .key files")
        auth.configure_curve(domain="*", location=str(curve.client_keys))
    else:
        auth.configure_curve(domain="*", location=zmq.auth.CURVE_ALLOW_ANY)
    sock.curve_secretkey = secret
    sock.curve_publickey = public
    sock.curve_server = True
    return auth


def setup_client_curve(sock: Any, curve: CurveConfig) -> None:
    """Make ``sock`` a CURVE client of the server whose public key file is ``curve.server_public``."""
    import zmq

    if not curve.server_public:
        raise ValueError("curve.server_public (the server's .key file) is required on the client")
    server_public, _ = _load(curve.server_public, secret=False)
    if curve.client_secret:
        public, secret = _load(curve.client_secret, secret=True)
    else:
        public, secret = zmq.curve_keypair()
    sock.curve_secretkey = secret
    sock.curve_publickey = public
    sock.curve_serverkey = server_public
