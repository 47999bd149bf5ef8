"""The ``wirepool`` console script.

    wirepool check --config PATH     validate, print the effective settings (secrets masked)
    wirepool serve --config PATH     run the gateway
    wirepool serve                   embedded PostgreSQL (pgserver) + generated config
    wirepool reload --config PATH    SIGHUP to the running gateway (its gateway.pid_file)
    wirepool serve --config PATH --takeover   take over the ports of the running gateway
    wirepool takeover --config PATH  the same, in the background; returns once it serves (systemd ExecReload)

Exit codes: 0 ok, 2 configuration error (``error: <key>: <reason>`` on stderr),
1 any other failure.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Sequence

from gateway.config import (Config, ConfigError, config_to_display, display_to_toml, load_config,
                            parse_address)

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2


def _config_error(e: ConfigError) -> int:
    print(f"error: {e}", file=sys.stderr)
    return EXIT_CONFIG


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wirepool", description="Postgres over WebSocket/HTTP/TCP with transaction pooling")
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("check", help="validate a config file and print the effective settings")
    c.add_argument("--config", "-c", required=True, metavar="PATH")
    s = sub.add_parser("serve", help="run the gateway (no --config: embedded PostgreSQL)")
    s.add_argument("--config", "-c", metavar="PATH")
    s.add_argument("--listen", metavar="HOST:PORT", help="override gateway.listen (HTTP + WebSocket)")
    s.add_argument("--pg-listen", metavar="HOST:PORT",
                   help='override gateway.pg_listen (plain Postgres protocol; "" disables)')
    s.add_argument("--data-dir", metavar="DIR", help="embedded mode: where PostgreSQL keeps its data")
    s.add_argument("--log-level", choices=("debug", "info", "warning", "error", "critical"))
    s.add_argument("--takeover", action="store_true",
                   help="take over the listening sockets of the gateway running on gateway.control_socket "
                        "(zero-downtime restart/upgrade, docs/takeover.md)")
    t = sub.add_parser("takeover", help="start a new gateway that takes over the running one; "
                                        "return once it serves (for systemd's ExecReload)")
    t.add_argument("--config", "-c", required=True, metavar="PATH")
    t.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the new process (default 120)")
    r = sub.add_parser("reload", help="make the running gateway re-read its config (SIGHUP via gateway.pid_file)")
    r.add_argument("--config", "-c", required=True, metavar="PATH")
    r.add_argument("--pid-file", metavar="PATH", help="override gateway.pid_file")
    return p


def _reload(args: argparse.Namespace) -> int:
    from gateway.reload import signal_reload
    try:
        cfg = load_config(args.config)
    except ConfigError as e:
        return _config_error(e)
    pid_file = args.pid_file or cfg.gateway.pid_file
    if not pid_file:
        print("error: gateway.pid_file: not set (the running gateway's pid is unknown)", file=sys.stderr)
        return EXIT_CONFIG
    try:
        pid = signal_reload(pid_file)
    except (OSError, ValueError) as e:
        print(f"error: cannot signal the gateway via {pid_file}: {e}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"sent SIGHUP to {pid}")
    return EXIT_OK


def _apply_overrides(cfg: Config, args: argparse.Namespace) -> Config:
    changes: dict[str, object] = {}
    if args.listen is not None:
        changes["listen"] = parse_address(args.listen, "--listen")
    if args.pg_listen is not None:
        changes["pg_listen"] = None if args.pg_listen == "" else parse_address(args.pg_listen, "--pg-listen")
    if args.log_level is not None:
        changes["log_level"] = args.log_level
    if not changes:
        return cfg
    new = cfg.with_gateway(**changes)
    g = new.gateway
    if g.pg_listen is not None and g.pg_listen[1] != 0 and g.pg_listen == g.listen:
        raise ConfigError("--pg-listen", f"port {g.pg_listen[1]} is already used by listen")
    return new


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def _check(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.config)
    except ConfigError as e:
        return _config_error(e)
    sys.stdout.write(f"# {args.config}: OK\n")
    sys.stdout.write(display_to_toml(config_to_display(cfg)))
    if cfg.gateway.workers > 1:
        from gateway.workers import budget_lines
        sys.stdout.write("\n".join(budget_lines(cfg)) + "\n")
    sys.stdout.flush()
    return EXIT_OK


def _serve(args: argparse.Namespace) -> int:
    from gateway import app

    if args.config is None:
        from gateway import embedded
        try:
            return embedded.serve_embedded(listen=args.listen, pg_listen=args.pg_listen,
                                           data_dir=args.data_dir, log_level=args.log_level or "info")
        except ConfigError as e:
            return _config_error(e)
        except embedded.EmbeddedError as e:
            print(f"error: embedded PostgreSQL: {e}", file=sys.stderr)
            return EXIT_FAILURE
    try:
        cfg = _apply_overrides(load_config(args.config), args)
    except ConfigError as e:
        return _config_error(e)
    _setup_logging(cfg.gateway.log_level)
    return app.run_forever(cfg, config_path=args.config, takeover=args.takeover)


def _takeover(args: argparse.Namespace) -> int:
    """Spawn ``wirepool serve --takeover`` and wait for its readiness line."""
    import os
    import select
    import subprocess
    import time
    try:
        cfg = load_config(args.config)
    except ConfigError as e:
        return _config_error(e)
    if not cfg.gateway.control_socket:
        print("error: gateway.control_socket: not set (needed to find the running gateway)", file=sys.stderr)
        return EXIT_CONFIG
    r, w = os.pipe()
    env = dict(os.environ, WIREPOOL_READY_FD=str(w))
    proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve", "--config", args.config, "--takeover"],
                            stdin=subprocess.DEVNULL, env=env, pass_fds=(w,), start_new_session=True)
    os.close(w)
    deadline = time.monotonic() + args.timeout
    line = b""
    with os.fdopen(r, "rb", buffering=0) as ready:
        while time.monotonic() < deadline and b"\n" not in line:
            if not select.select([ready], [], [], 0.2)[0]:
                if proc.poll() is not None:
                    break
                continue
            chunk = ready.read(64)
            if not chunk:
                break
            line += chunk
    if line.startswith(b"ready"):
        print(f"took over: the new gateway is pid {proc.pid}")
        return EXIT_OK
    if proc.poll() is None:
        proc.terminate()  # too slow: give up, the running gateway keeps serving (unless it already let go)
    print(f"error: the new gateway did not take over (exit status {proc.wait()})", file=sys.stderr)
    return EXIT_FAILURE


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    if args.command == "check":
        return _check(args)
    if args.command == "serve":
        return _serve(args)
    if args.command == "reload":
        return _reload(args)
    if args.command == "takeover":
        return _takeover(args)
    return EXIT_FAILURE  # pragma: no cover - argparse enforces the choice


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
