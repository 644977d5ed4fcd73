"""The one bind policy and CURVE key handling, for every ZMQ server of tickcall.

Used by the policy service (``agent/server.py``) and the engine bridge (``envs/engine_bridge*.py``),
so both answer these questions the same way:

* **Is this bind local?** ``is_local_endpoint``: ``ipc://`` and ``inproc://``, or ``tcp://`` on a
  literal loopback address (127.0.0.0/8, ``::1``, bracketed or not) or the name ``localhost``.
  Everything else is exposed: other names (``127.example.com`` and ``localhost.evil`` resolve
  anywhere), ``*``, ``0.0.0.0``, interface names, other transports (``udp://``, ``ws://``, ``pgm://``).
  Servers bind ``127.0.0.1`` unless told otherwise.
* **Is CURVE required?** For every bind that is not local (``check_bind``). The only way around it is
  an explicit ``allow_insecure`` (a trusted network), which is logged as a warning.
* **How are keys loaded?** Only from zmq.auth certificate files (``tickcall serve --gen-keys DIR``
  writes ``NAME.key`` and ``NAME.key_secret``), never from raw key strings in configs or command
  lines. A CURVE server may restrict clients to a folder of their public ``.key`` files; without one
  any client that knows the server's public key connects (encrypted, unauthenticated).

Nothing here ever unpickles anything; keys are text files.
"""

from __future__ import annotations

import ipaddress
import logging
from pathlib import Path
from typing import Any

from tickcall.agent.config import CurveConfig

log = logging.getLogger("tickcall.security")

LOCAL_TRANSPORTS = ("ipc://", "inproc://")


def endpoint_host(endpoint: str) -> str | None:
    """The host of a ``tcp://HOST:PORT`` endpoint (brackets removed), or None for other transports."""
    if not endpoint.startswith("tcp://"):
        return None
    host = endpoint[len("tcp://") :].rsplit(":", 1)[0]
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def is_local_endpoint(endpoint: str) -> bool:
    """True when only this machine can reach ``endpoint`` (see module docstring)."""
    if endpoint.startswith(LOCAL_TRANSPORTS):
        return True
    host = endpoint_host(endpoint)
    if host is None:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name or an interface: not known to be loopback
        return False


def curve_required(endpoint: str) -> bool:
    """True when binding ``endpoint`` needs CURVE (any bind that is not local)."""
    return not is_local_endpoint(endpoint)


def check_bind(endpoint: str, curve: CurveConfig | None, allow_insecure: bool) -> None:
    """Raise ValueError for an exposed bind without CURVE keys (unless ``allow_insecure``)."""
    if not curve_required(endpoint) or (curve is not None and curve.server_secret):
        return
    if allow_insecure:
        log.warning(
            "binding %s without CURVE (allow_insecure): anyone who can reach it may connect", endpoint
        )
        return
    raise ValueError(
        f"refusing to bind {endpoint} without authentication (ZMQ CURVE): it is reachable from other "
        "machines. Bind 127.0.0.1, configure a CURVE server secret key file (tickcall serve "
        "--gen-keys DIR writes one), or set allow_insecure on a trusted network"
    )


def check_http_bind(host: str, port: int, allow_insecure: bool) -> None:
    """Raise ValueError for an HTTP door on an address other machines can reach, unless
    ``allow_insecure``: HTTP carries no CURVE, so loopback (``is_local_endpoint``) is the only
    protection it has. The message says what to bind or pass instead (one line)."""
    if is_local_endpoint(f"tcp://{host}:{port}"):
        return
    shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if allow_insecure:
        log.warning("serving HTTP on %s (allow_insecure): anyone who can reach it may call the policy", shown)
        return
    raise ValueError(
        f"refusing to bind the HTTP door to {shown}: it is reachable from other machines and HTTP carries "
        "no authentication (no CURVE). Bind 127.0.0.1 (e.g. --http 127.0.0.1:8899), or pass --insecure "
        "(allow_insecure: true) on a trusted network"
    )


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


def load_public_key(path: str | Path) -> bytes:
    """The z85 public key in a certificate file (``.key`` or ``.key_secret``)."""
    return _load(path)[0]


def load_secret_key(path: str | Path) -> tuple[bytes, bytes]:
    """(public, secret) z85 keys from a ``.key_secret`` certificate file."""
    public, secret = _load(path)
    if not secret:
        raise ValueError(f"{path}: no secret key in this file (use the .key_secret file)")
    return public, secret


def _load(path: str | Path) -> tuple[bytes, bytes | None]:
    import zmq.auth

    if not Path(path).is_file():
        raise ValueError(
            f"CURVE key file {str(path)[:80]!r} not found: keys are certificate files "
            "(tickcall serve --gen-keys DIR), never raw key strings"
        )
    try:
        return zmq.auth.load_certificate(str(path))
    except Exception as exc:  # zmq.auth raises ValueError/KeyError/... for a file that is no certificate
        raise ValueError(f"{path}: not a zmq.auth certificate file ({exc})") from None


def setup_server_curve(ctx: Any, sock: Any, curve: CurveConfig) -> Any:
    """Make ``sock`` a CURVE server. Returns the authenticator thread: stop it before closing ``ctx``."""
    import zmq
    from zmq.auth.thread import ThreadAuthenticator

    if not curve.server_secret:
        raise ValueError("a CURVE server needs its secret key file (curve.server_secret)")
    public, secret = load_secret_key(curve.server_secret)
    if curve.client_keys and not Path(curve.client_keys).is_dir():
        raise ValueError(f"curve.client_keys {curve.client_keys!r} is not a folder of .key files")
    auth = ThreadAuthenticator(ctx)
    auth.start()
    if curve.client_keys:
        auth.configure_curve(domain="*", location=str(curve.client_keys))
        # the server's own key pair is authorised too: the HTTP door in front of it (a client of its own
        # server, ``tickcall serve --http``) connects with it. Whoever holds that secret key can be the
        # server anyway, so this lets no one in who could not already get in.
        auth.certs.setdefault("*", {})[public] = True
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
    server_public = load_public_key(curve.server_public)
    if curve.client_secret:
        public, secret = load_secret_key(curve.client_secret)
    else:
        public, secret = zmq.curve_keypair()
    sock.curve_secretkey = secret
    sock.curve_publickey = public
    sock.curve_serverkey = server_public
