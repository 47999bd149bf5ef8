"""Single configuration values: addresses, numbers, strings, paths, URLs, environment references.

Each function validates one TOML value at a dotted ``key`` and raises
:class:`~gateway.config_model.ConfigError` naming that key.  A float is accepted
where an int is given (``30`` means 30.0 s); a bool is never a number.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Mapping

from gateway.config_model import ConfigError, GatewaySettings

#: peer_id: 1..16383 as PgBouncer's (14 bits of the cancel key, gateway/peers.py)
MAX_PEER_ID = 16383


def parse_address(text: str, key: str) -> tuple[str, int]:
    """``"host:port"`` / ``"[v6]:port"`` -> ``(host, port)``; port 0 = ephemeral."""
    if not isinstance(text, str):
        raise ConfigError(key, f'expected a string "host:port", got {_tname(text)}')
    s = text.strip()
    if s.startswith("["):
        end = s.find("]")
        if end < 0 or s[end + 1:end + 2] != ":":
            raise ConfigError(key, f'invalid address {text!r}: expected "[ipv6]:port"')
        host, port_text = s[1:end], s[end + 2:]
    else:
        host, sep, port_text = s.rpartition(":")
        if not sep:
            raise ConfigError(key, f'invalid address {text!r}: expected "host:port"')
        if ":" in host:
            raise ConfigError(key, f'invalid address {text!r}: write IPv6 hosts as "[addr]:port"')
    if not host:
        raise ConfigError(key, f'invalid address {text!r}: missing host (use "0.0.0.0:port" for all interfaces)')
    if any(c.isspace() for c in host) or "/" in host:
        raise ConfigError(key, f"invalid address {text!r}: bad host")
    if not port_text.isascii() or not port_text.isdigit():
        raise ConfigError(key, f"invalid address {text!r}: port must be a number")
    port = int(port_text)
    if port > 65535:
        raise ConfigError(key, f"invalid address {text!r}: port must be 0..65535")
    return host, port


def parse_workers(v: Any, key: str) -> int:
    """``workers``: a positive integer or ``"auto"`` (the machine's cores)."""
    if v == "auto":
        return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))
    return _int(v, key, minimum=1, maximum=256)


def parse_advertise_url(v: Any, key: str) -> str:
    """``advertise_url``: ``http(s)://host:port`` after ``$VAR`` expansion (no path)."""
    from urllib.parse import urlsplit
    s = os.path.expandvars(_str(v, key, nonempty=True)).rstrip("/")
    try:
        u = urlsplit(s)
        port = u.port
    except ValueError as e:
        raise ConfigError(key, f"invalid URL {s!r}: {e}") from None
    if u.scheme not in ("http", "https") or not u.hostname or port is None or u.path or u.query:
        raise ConfigError(key, f'invalid URL {s!r}: expected "http://host:port" (https: too)')
    if "$" in s:
        raise ConfigError(key, f"unset environment variable in {s!r}")
    return s


def parse_peers(v: Any, key: str) -> tuple[tuple[int, str], ...]:
    """``[gateway.peers]``: ``<peer_id> = "http://host:port"`` for every instance."""
    out = []
    for k, url in _table(v, key).items():
        if not (k.isascii() and k.isdigit() and 1 <= int(k) <= MAX_PEER_ID):
            raise ConfigError(f"{key}.{k}", f"peer ids are numbers 1..{MAX_PEER_ID}")
        out.append((int(k), parse_advertise_url(url, f"{key}.{k}")))
    return tuple(sorted(out))


def check_peering(g: "GatewaySettings") -> None:
    if not g.peers and not g.peer_id:
        return
    if g.peer_id and g.peer_id not in dict(g.peers):
        raise ConfigError("gateway.peer_id", f"{g.peer_id} is not in [gateway.peers]")
    if g.peers and not g.peer_id:
        raise ConfigError("gateway.peer_id", "required with [gateway.peers] (this instance's number there)")
    if g.cluster_secret is None:
        raise ConfigError("gateway.cluster_secret", "required with peer_id (the instances must share it)")


def _env_ref(v: str, key: str) -> str:
    """``"$NAME"`` / ``"${NAME}"`` alone: the environment variable's value (e.g. from a Kubernetes Secret)."""
    import re
    mm = re.fullmatch(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))", v)
    if mm is None:
        return v
    name = mm.group(1) or mm.group(2)
    value = os.environ.get(name)
    if not value:
        raise ConfigError(key, f"environment variable {name} is not set")
    return value


def format_address(addr: tuple[str, int]) -> str:
    host, port = addr
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _tname(v: Any) -> str:
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, int):
        return "an integer"
    if isinstance(v, float):
        return "a float"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, list):
        return "an array"
    if isinstance(v, dict):
        return "a table"
    return type(v).__name__


def _int(v: Any, key: str, *, minimum: int | None = None, maximum: int | None = None) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ConfigError(key, f"expected an integer, got {_tname(v)}")
    if minimum is not None and v < minimum:
        raise ConfigError(key, f"must be >= {minimum}, got {v}")
    if maximum is not None and v > maximum:
        raise ConfigError(key, f"must be <= {maximum}, got {v}")
    return v


def _float(v: Any, key: str, *, positive: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ConfigError(key, f"expected a number of seconds, got {_tname(v)}")
    f = float(v)
    if not math.isfinite(f):
        raise ConfigError(key, f"must be a finite number, got {v}")
    if f < 0:
        raise ConfigError(key, f"must not be negative, got {v}")
    if positive and f == 0:
        raise ConfigError(key, "must be greater than 0")
    return f


def _str(v: Any, key: str, *, nonempty: bool = False) -> str:
    if not isinstance(v, str):
        raise ConfigError(key, f"expected a string, got {_tname(v)}")
    if nonempty and not v.strip():
        raise ConfigError(key, "must not be empty")
    if "\x00" in v:
        raise ConfigError(key, "must not contain NUL characters")
    return v


def _choice(v: Any, key: str, choices: tuple[str, ...]) -> str:
    s = _str(v, key)
    if s not in choices:
        raise ConfigError(key, f"unknown value {s!r} (expected one of: {', '.join(choices)})")
    return s


def _str_list(v: Any, key: str, what: str) -> tuple[str, ...]:
    """A TOML array of non-empty strings (``what`` names it in the error)."""
    if not isinstance(v, list):
        raise ConfigError(key, f"expected {what}, got {_tname(v)}")
    return tuple(_str(x, f"{key}[{i}]", nonempty=True) for i, x in enumerate(v))


def _path(v: Any, key: str, base_dir: Path | None, *, must_exist: bool = False) -> str:
    """A file path (``~`` expanded, relative to the config file's directory);
    ``must_exist``: it must name an existing file."""
    p = Path(_str(v, key, nonempty=True)).expanduser()
    if base_dir is not None and not p.is_absolute():
        p = base_dir / p
    if must_exist and not p.is_file():
        raise ConfigError(key, f"file not found: {str(p)!r}")
    return str(p)


def _table(v: Any, key: str) -> Mapping[str, Any]:
    if not isinstance(v, dict):
        raise ConfigError(key, f"expected a table, got {_tname(v)}")
    return v


def _unknown(section: Mapping[str, Any], allowed: set[str] | frozenset[str], prefix: str) -> None:
    for k in section:
        if k not in allowed:
            raise ConfigError(f"{prefix}.{k}" if prefix else k, "unknown key")


def _is_valid_scram_verifier(text: str) -> bool:
    try:
        from driver.protocol.auth import is_scram_verifier
    except ImportError:  # pragma: no cover - the driver always ships auth
        import base64
        import binascii
        try:
            scheme, params, keys = text.split("$")
            it, salt = params.split(":")
            sk, svk = keys.split(":")
            ok = scheme == "SCRAM-SHA-256" and it.isdigit() and int(it) > 0
            ok = ok and len(base64.b64decode(salt, validate=True)) > 0
            ok = ok and len(base64.b64decode(sk, validate=True)) == 32
            return ok and len(base64.b64decode(svk, validate=True)) == 32
        except (ValueError, binascii.Error):
            return False
    return is_scram_verifier(text)
