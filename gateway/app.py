"""Wiring: config -> Gateway + listeners (+ signals, graceful shutdown).

In-process use (tests, embedding)::

    async with GatewayApp(config) as app:      # ports 0 in the config -> ephemeral
        app.ws_url      # "ws://127.0.0.1:<port>/v2"
        app.http_port, app.pg_port, app.pg_dsn("alice", "secret", "app")

Command line use: :func:`run_forever` (``wirepool serve``) runs :func:`run`
under uvloop when available.  SIGINT/SIGTERM: stop accepting, let running
transactions finish for up to ``shutdown_timeout`` (``Gateway.shutdown``), then
close everything.  A second signal aborts the wait.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import signal
from typing import Any, Awaitable, Callable, Mapping
from urllib.parse import quote

from gateway.config import Config
from gateway.http import HttpListener, HttpRequest, HttpResponse
from gateway.metrics import CONTENT_TYPE, make_registry, render
from gateway.observe import collect
from gateway.status import register as register_status
from gateway.cache_admin import register as register_cache
from gateway.listen_sse import register as register_listen
from gateway.http_protocol import register as register_http_protocol
from gateway.neon_sql import register as register_neon_sql
from gateway.sockets import start_on
from gateway.tcp import TcpListener
from gateway.tls import ServerTls
from gateway.linger import active as linger_active

log = logging.getLogger("wirepool")

WS_PATH = "/v2"
WS_SLACK = 1 << 20  # a WebSocket message may hold several Postgres messages


def _client_host(host: str) -> str:
    if host in ("0.0.0.0", "", "*"):
        return "127.0.0.1"
    if host == "::":
        return "::1"
    return host


def _url_host(host: str) -> str:
    h = _client_host(host)
    return f"[{h}]" if ":" in h else h


class GatewayApp:
    """A Gateway plus its listeners, startable in-process.

    ``gateway``: an object with the ``gateway.core.Gateway`` interface; by
    default ``Gateway(config)`` is created.
    """

    def __init__(self, config: Config, *, gateway: Any = None, workers: Any = None) -> None:
        self.config = config
        self.gateway: Any = gateway
        #: gateway.workers.WorkerContext when this process is one of several (or advertises itself)
        self.workers: Any = workers
        self.cluster: Any = None
        self.http: HttpListener | None = None
        self.tcp: TcpListener | None = None
        self._shutting_down = False
        self._stopped = False
        self._registry: Any = None
        #: the listeners' certificate (gateway/tls.py), None without TLS
        self.tls: ServerTls | None = None
        #: listening sockets received from the process taken over ("listen", "pg_listen" -> sockets;
        #: gateway/takeover.py), or a worker's share of the supervisor's (gateway/workers.py)
        self.inherited: dict[str, list[Any]] = {}
        #: the control socket server offering the sockets to a successor (gateway/takeover.py)
        self.control: Any = None

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        cfg = self.config
        g = cfg.gateway
        if self.gateway is None:
            from gateway.core import Gateway  # written by the gateway-pool engineer
            self.gateway = Gateway(cfg)
        await self.gateway.start()
        try:
            if g.tls_cert_file and g.tls_key_file and self.tls is None:
                self.tls = ServerTls(g.tls_cert_file, g.tls_key_file)
                self.tls.start_watching(g.tls_reload_interval)
            ctx = self.tls.context if self.tls is not None else None
            self.http = HttpListener(g.listen[0], g.listen[1],
                                     ws_max_message_size=g.max_message_size + WS_SLACK,
                                     ssl_context=ctx)
            self.http.header_timeout = g.client_login_timeout
            self.http.min_body_rate = g.http_min_body_rate
            limits = getattr(self.gateway, "limits", None)
            if limits is not None:
                self.http.limits = limits
            self.http.add_websocket(WS_PATH, self.gateway.handle_client)
            # The driver's ws:// DSN may put something else in the path: any
            # non-HTTP path upgrades too (routing is by the StartupMessage's database).
            self.http.ws_default = self.gateway.handle_client
            self.http.add_route("GET", "/healthz", self._healthz)
            self.http.add_route("GET", "/metrics", self._metrics)
            register_neon_sql(self)  # POST/OPTIONS /sql (Neon-compatible, gateway/neon_sql.py)
            register_http_protocol(self)  # POST /pg, /pg/cancel (protocol over HTTP, gateway/http_protocol.py)
            register_status(self)  # GET /status (admin HTML page, gateway/status.py)
            register_cache(self)  # POST /cache/invalidate (gateway/cache_admin.py)
            register_listen(self)  # GET /listen (LISTEN as Server-Sent Events, gateway/listen_sse.py)
            if self.workers is not None:  # workers / instances: one gateway seen from outside
                from gateway.cluster import Cluster
                self.cluster = Cluster(self, self.workers)
                self.cluster.register()
            self._time_routes()
            self._registry = make_registry(self._gateway_stats, self.listener_stats,
                                           lambda: collect(self.gateway, self._shed_totals()))
            await start_on(self.http, self.inherited.get("listen", []))
            if self.cluster is not None:
                await self.cluster.start()
            if g.pg_listen is not None:
                self.tcp = TcpListener(g.pg_listen[0], g.pg_listen[1], self.gateway.handle_client,
                                       ssl_context=ctx)
                await start_on(self.tcp, self.inherited.get("pg_listen", []))
        except BaseException:
            await self._close_listeners()
            await self._close_gateway()
            raise
        log.info("listening: http+ws %s%s", self.http_url,
                 f", postgres {self.pg_host}:{self.pg_port}" if self.tcp else "")

    async def shutdown(self, timeout: float | None = None) -> None:
        """Stop accepting; let sessions finish up to ``timeout``; close everything. Idempotent."""
        if self._stopped:
            return
        self._shutting_down = True
        t = self.config.gateway.shutdown_timeout if timeout is None else timeout
        if self.http is not None:
            self.http.stop_accepting()
            await self.http.close_idle_http()
        if self.tcp is not None:
            self.tcp.stop_accepting()
        try:
            if self.gateway is not None:
                await self.gateway.shutdown(t)
        finally:
            self._stopped = True
            await self._close_listeners()
            await self._close_gateway()

    def reload_tls(self) -> bool:
        """Re-read the certificate files (SIGHUP); False if unchanged config or a broken pair."""
        return self.tls.reload() if self.tls is not None else False

    async def _close_listeners(self) -> None:
        if self.tls is not None:
            self.tls.stop()
        if self.http is not None:
            await self.http.close()
        if self.tcp is not None:
            await self.tcp.close()
        if self.cluster is not None:
            await self.cluster.close()

    async def _close_gateway(self) -> None:
        if self.gateway is not None:
            try:
                await self.gateway.close()
            except Exception:
                log.exception("gateway close failed")

    async def __aenter__(self) -> "GatewayApp":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.shutdown()

    # ------------------------------------------------------------------ addresses
    @property
    def http_host(self) -> str:
        return _client_host(self.config.gateway.listen[0])

    @property
    def http_port(self) -> int:
        assert self.http is not None
        return self.http.port

    @property
    def http_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{_url_host(self.config.gateway.listen[0])}:{self.http_port}"

    @property
    def ws_url(self) -> str:
        return f"{'wss' if self.tls else 'ws'}://{_url_host(self.config.gateway.listen[0])}:{self.http_port}{WS_PATH}"

    @property
    def pg_host(self) -> str | None:
        pl = self.config.gateway.pg_listen
        return None if pl is None else _client_host(pl[0])

    @property
    def pg_port(self) -> int | None:
        return None if self.tcp is None else self.tcp.port

    def pg_dsn(self, user: str, password: str | None, database: str) -> str:
        """``postgresql://`` URL through ``pg_listen``."""
        assert self.tcp is not None, "pg_listen is disabled"
        pl = self.config.gateway.pg_listen
        assert pl is not None
        auth = quote(user, safe="") + (":" + quote(password, safe="") if password is not None else "")
        return f"postgresql://{auth}@{_url_host(pl[0])}:{self.pg_port}/{quote(database, safe='')}"

    def ws_dsn(self, user: str, password: str | None, database: str) -> str:
        """``ws://`` (``wss://`` with TLS) DSN for the driver (endpoint /v2, database as ``dbname``)."""
        auth = quote(user, safe="") + (":" + quote(password, safe="") if password is not None else "")
        return (f"{'wss' if self.tls else 'ws'}://{auth}@{_url_host(self.config.gateway.listen[0])}:{self.http_port}{WS_PATH}"
                f"?dbname={quote(database, safe='')}")

    # ------------------------------------------------------------------ HTTP routes
    def is_ready(self) -> bool:
        if self._shutting_down or self.gateway is None:
            return False
        try:
            return bool(self.gateway.is_ready())
        except Exception:
            return False

    async def _healthz(self, req: HttpRequest) -> HttpResponse:
        ready = self.is_ready()
        check = getattr(self.gateway, "check_ready", None)
        if ready and check is not None:
            try:
                ready = bool(await check())
            except Exception:
                ready = False
        if ready:
            return HttpResponse(200, b"ok\n", headers=[("cache-control", "no-store")])
        return HttpResponse(503, b"unavailable\n", headers=[("cache-control", "no-store")])

    def _gateway_stats(self) -> Mapping[str, Any]:
        return self.gateway.stats() if self.gateway is not None else {}

    def listener_stats(self) -> dict[str, Any]:
        http, tcp = self.http, self.tcp
        return {
            "http_connections": len(http.connections) if http else 0,
            "http_connections_accepted": http.accepted_total if http else 0,
            "ws_open": http.ws_open if http else 0,
            "ws_opened": http.ws_opened_total if http else 0,
            "tcp_connections": len(tcp.connections) if tcp else 0,
            "tcp_connections_accepted": tcp.accepted_total if tcp else 0,
            "ready": 1 if self.is_ready() else 0,
            "http_forwarded": self.cluster.forwarded if self.cluster is not None else 0,
            # closed after an error, still reading what the client sends (gateway/linger.py)
            "lingering_connections": linger_active(),
        }

    def _shed_totals(self) -> dict[str, int]:
        limits = getattr(self.gateway, "limits", None)
        return dict(limits.shed_log.totals) if limits is not None else {}

    def _time_routes(self) -> None:
        """HTTP request duration by endpoint (wirepool_http_request_duration_seconds)."""
        obs = getattr(self.gateway, "obs", None)
        if obs is None or self.http is None:
            return
        loop_time = asyncio.get_running_loop().time
        routes = self.http.routes
        for key, handler in list(routes.items()):
            def timed(handler: Any = handler, endpoint: str = key[1]) -> Any:
                async def run(req: HttpRequest) -> HttpResponse:
                    t0 = loop_time()
                    try:
                        resp: HttpResponse = await handler(req)
                        return resp
                    finally:
                        obs.http_done(endpoint, loop_time() - t0)
                return run
            routes[key] = timed()

    async def _metrics(self, req: HttpRequest) -> HttpResponse:
        return HttpResponse(200, render(self._registry), CONTENT_TYPE)


ReadyCallback = Callable[[GatewayApp], "Awaitable[None] | None"]


async def run(config: Config, *, ready_callback: ReadyCallback | None = None, gateway: Any = None,
              config_path: str | None = None, takeover: bool = False, workers: Any = None) -> None:
    """Run until SIGINT/SIGTERM (or the admin SHUTDOWN, or a successor's
    takeover), then shut down gracefully.  SIGHUP reloads ``config_path``
    (gateway/reload.py) and the TLS certificate.  ``takeover``: serve the
    listening sockets of the gateway running on ``control_socket`` (gateway/takeover.py).
    ``workers``: this process is one of ``workers = N`` (gateway/workers.py)."""
    from gateway import reload as _reload
    from gateway import reuseport as _reuseport
    from gateway import takeover as _takeover
    loop = asyncio.get_running_loop()
    ctl_path = config.gateway.control_socket
    if workers is None:
        from gateway.workers import single_context
        workers = single_context(config)  # advertise_url: /pg tokens name this instance
    app = GatewayApp(config, gateway=gateway, workers=workers)
    worker = workers is not None and workers.count > 1  # one of a supervisor's (takeover is the supervisor's)
    if worker:
        app.inherited = {role: workers.listener_sockets(role) for role in ("listen", "pg_listen")}
    retiring: list[Any] = workers.retiring if worker else []  # past this gateway's count (gateway/reuseport.py)
    handover = None
    if takeover:
        if not ctl_path:
            raise _takeover.TakeoverError("--takeover needs gateway.control_socket")
        handover = await asyncio.to_thread(_takeover.receive, ctl_path)
        app.inherited = handover.sockets
        retiring = _reuseport.shrink(handover.sockets, 1)  # a lone process keeps one socket per address
    try:
        await app.start()
        if handover is not None:
            pred = _takeover.Predecessor(await asyncio.to_thread(handover.commit))
            if app.cluster is not None:
                app.cluster.predecessor = pred
            else:
                _takeover.install_forwarding(app, pred)
        _reuseport.start_retiring(app, retiring)
    except BaseException:
        if handover is not None:
            handover.abort()
        await app.shutdown(0)
        raise
    if workers is not None and workers.count > 1:  # a reload applies this worker's share (gateway/workers.py)
        from gateway.workers import worker_config
        app.gateway.config_transform = lambda c: worker_config(c, workers.index, workers.count)
    stop = asyncio.Event()
    signals = 0
    how: dict[str, Any] = {"mode": "WAIT_FOR_SERVERS", "timeout": None}

    def request_shutdown(timeout: float | None, mode: str = "WAIT_FOR_SERVERS") -> None:
        how.update(mode=mode, timeout=timeout)
        stop.set()
    app.gateway.config_path = config_path
    app.gateway.shutdown_hook = request_shutdown
    control = None
    if ctl_path and not worker:
        control = _takeover.ControlServer(app, ctl_path, lambda: request_shutdown(None, "TAKEOVER"))
        try:
            await control.start()
            app.control = control
        except BaseException:
            await app.shutdown(0)
            raise
    _reload.write_pid_file(config.gateway.pid_file)

    def on_hup() -> None:
        if app.tls is not None:
            app.reload_tls()
        if config_path is not None:
            _reload.reload_from_file(app.gateway)

    def on_signal(signame: str) -> None:
        nonlocal signals
        signals += 1
        if signals == 1:
            log.info("%s: shutting down (waiting up to %.0fs for running transactions)",
                     signame, config.gateway.shutdown_timeout)
            stop.set()
        else:
            log.warning("%s again: closing now", signame)
            if shutdown_task is not None:
                shutdown_task.cancel()

    shutdown_task: asyncio.Task[None] | None = None
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, on_signal, sig.name)
            installed.append(sig)
        except (NotImplementedError, RuntimeError):  # pragma: no cover - not the main thread / Windows
            pass
    if worker:  # the supervisor handed the sockets to a successor (gateway/handover.py)
        loop.add_signal_handler(signal.SIGUSR2, request_shutdown, None, "TAKEOVER")
        installed.append(signal.SIGUSR2)
    if (app.tls is not None or config_path is not None) and hasattr(signal, "SIGHUP"):
        try:  # SIGHUP: reload the TLS certificate (docs/tls.md) and the config (docs/reload.md)
            loop.add_signal_handler(signal.SIGHUP, on_hup)
            installed.append(signal.SIGHUP)
        except (NotImplementedError, RuntimeError):  # pragma: no cover
            pass
    try:
        if ready_callback is not None:
            r = ready_callback(app)
            if inspect.isawaitable(r):
                await r
        if not worker:
            _takeover.signal_ready()
        await stop.wait()
        shutdown_task = loop.create_task(_takeover.shutdown_app(app, how["mode"], how["timeout"]))
        try:
            await shutdown_task
        except asyncio.CancelledError:
            if not shutdown_task.cancelled():
                raise
            app._stopped = True
            await app._close_listeners()
            await app._close_gateway()
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
        if not app._stopped:
            await app.shutdown(0)
        if control is not None:
            control.close()
        _reload.remove_pid_file(config.gateway.pid_file)


def install_uvloop() -> bool:
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True


def run_forever(config: Config, *, ready_callback: ReadyCallback | None = None,
                config_path: str | None = None, takeover: bool = False) -> int:
    """Blocking entry point of ``wirepool serve``; returns the exit status."""
    if config.gateway.workers > 1 and ready_callback is None:
        from gateway.workers import serve
        return serve(config, config_path, takeover=takeover)
    install_uvloop()
    try:
        asyncio.run(run(config, ready_callback=ready_callback, config_path=config_path, takeover=takeover))
    except KeyboardInterrupt:  # pragma: no cover - signal before handlers were installed
        return 130
    except OSError as e:
        log.error("cannot start: %s", e)
        return 1
    return 0
