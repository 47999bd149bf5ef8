"""Zero-downtime restart and upgrade: a new process takes over the listening
sockets of a running one (docs/takeover.md).

The running ``wirepool serve`` offers its sockets on ``gateway.control_socket``
(a unix socket).  ``wirepool serve --takeover`` (or ``wirepool takeover``,
the systemd ``ExecReload``) connects there and::

    new -> old   TAKEOVER 1\\n
    old -> new   {"pid": .., "roles": ["listen", "pg_listen"]}\\n   + the fds (SCM_RIGHTS)
                 ... the new process starts its gateway on those sockets ...
    new -> old   GO\\n            (or it closes the connection: the old one carries on)
    old -> new   OK {"forward": "<unix socket>"}\\n

The sockets are the *same* kernel sockets, so their accept queues survive:
no connection is refused or reset at any moment.  After ``GO`` the old
process stops accepting, answers HTTP requests with ``connection: close``
and waits for its clients to leave (at most half of ``shutdown_timeout``),
then shuts down gracefully with the rest of it (idle sessions end at once,
transactions finish) and exits.  HTTP ``/pg`` sessions live in the old
process: the new one forwards requests carrying a session token it did not
sign to the old one's ``forward`` socket while that one is alive.

Also here: the shutdown modes of the admin ``SHUTDOWN`` (:func:`shutdown_app`)
and systemd's readiness notification (:func:`notify`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
from typing import Any, Callable

import h11

from .http import HttpConnection, HttpRequest, HttpResponse

log = logging.getLogger("wirepool.gateway.takeover")

REQUEST = b"TAKEOVER 1\n"
ROLES = ("listen", "pg_listen")
#: the request headers not forwarded to the old process (hop-by-hop, or rewritten)
_HOP = frozenset({"connection", "keep-alive", "content-length", "transfer-encoding", "host", "upgrade"})


class TakeoverError(OSError):
    """The takeover could not be done (nothing was changed in the running process)."""


# ---------------------------------------------------------------- new process side
class Handover:
    """Sockets received from the running process; :meth:`commit` makes it let go."""

    def __init__(self, conn: socket.socket, pid: int, sockets: dict[str, socket.socket]) -> None:
        self.conn = conn
        self.pid = pid
        self.sockets = sockets
        self.forward: str | None = None

    def commit(self, timeout: float = 30.0) -> str | None:
        """Tell the old process to stop accepting (blocking; the answer comes at once).
        Returns the unix socket path its HTTP /pg sessions are reachable at."""
        self.conn.settimeout(timeout)
        try:
            self.conn.sendall(b"GO\n")
            line = _read_line_blocking(self.conn)
        except OSError as exc:
            raise TakeoverError(f"the running gateway (pid {self.pid}) did not confirm the takeover: {exc}") from None
        finally:
            self.conn.close()
        if not line.startswith(b"OK"):
            raise TakeoverError(f"the running gateway (pid {self.pid}) refused the takeover: {line!r}")
        info = json.loads(line[2:].strip() or b"{}")
        self.forward = info.get("forward")
        return self.forward

    def abort(self) -> None:
        """Starting failed: close our copies; the old process keeps serving."""
        self.conn.close()
        for s in self.sockets.values():
            s.close()


def receive(path: str, timeout: float = 30.0) -> Handover:
    """Connect to the running gateway's control socket and receive its
    listening sockets (blocking)."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.settimeout(timeout)
    try:
        conn.connect(path)
        conn.sendall(REQUEST)
        msg, fds, _flags, _addr = socket.recv_fds(conn, 65536, 8)
    except OSError as exc:
        conn.close()
        raise TakeoverError(f"no running gateway answers on control_socket {path!r}: "
                            f"{exc.strerror or exc}") from None
    try:
        header = json.loads(msg.split(b"\n", 1)[0])
        roles = header["roles"]
        if not isinstance(roles, list) or len(roles) != len(fds):
            raise ValueError(f"{len(fds)} sockets for roles {roles!r}")
    except (ValueError, KeyError, TypeError) as exc:
        conn.close()
        for fd in fds:
            os.close(fd)
        raise TakeoverError(f"bad answer on control_socket {path!r}: {msg[:200]!r} ({exc})") from None
    sockets = {str(role): socket.socket(fileno=fd) for role, fd in zip(roles, fds)}
    log.info("takeover: received %s from pid %s", ", ".join(
        f"{r} {_addr_of(s)}" for r, s in sockets.items()), header.get("pid"))
    return Handover(conn, int(header.get("pid", 0)), sockets)


def _addr_of(s: socket.socket) -> str:
    try:
        a = s.getsockname()
        return f"{a[0]}:{a[1]}" if isinstance(a, tuple) else str(a)
    except OSError:
        return "?"


def _read_line_blocking(conn: socket.socket) -> bytes:
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = conn.recv(4096)
        if not chunk:
            break
        buf += chunk
        if len(buf) > 65536:
            break
    return buf.strip()


def install_forwarding(app: Any, path: str) -> None:
    """``POST /pg`` with a session token this process did not sign goes to the
    old process's ``path`` while it lives; ``/pg/cancel`` goes there too."""
    routes = app.http.routes
    pg = routes.get(("POST", "/pg"))
    cancel = routes.get(("POST", "/pg/cancel"))
    state = {"alive": True}

    async def forward(req: HttpRequest) -> HttpResponse | None:
        if not state["alive"]:
            return None
        try:
            return await forward_request(path, req)
        except (OSError, h11.ProtocolError, asyncio.IncompleteReadError):
            state["alive"] = False  # the old process is gone: its sessions with it
            return None

    if pg is not None:
        async def pg_route(req: HttpRequest) -> HttpResponse:
            token = (req.header("wirepool-session") or "").strip()
            if token and token.lower() != "new" and state["alive"] and not _signed_here(app, token):
                resp = await forward(req)
                if resp is not None:
                    return resp
            out: HttpResponse = await pg(req)
            return out
        routes[("POST", "/pg")] = pg_route
    if cancel is not None:
        async def cancel_route(req: HttpRequest) -> HttpResponse:
            await forward(req)
            out: HttpResponse = await cancel(req)
            return out
        routes[("POST", "/pg/cancel")] = cancel_route


def _signed_here(app: Any, token: str) -> bool:
    from .http_exec import HttpExecError, get_executor
    try:
        get_executor(app.gateway)._lookup(token)
    except HttpExecError as e:
        # 401: not signed by this process; 410: signed with a shared secret
        # (cluster_secret) but unknown here -- the old process may hold it
        return e.status not in (401, 410)
    return True


async def forward_request(path: str, req: HttpRequest) -> HttpResponse:
    """One HTTP/1.1 request over a unix socket (``connection: close``)."""
    reader, writer = await asyncio.open_unix_connection(path)
    try:
        c = h11.Connection(h11.CLIENT)
        headers = [(k, v) for k, v in req.headers if k not in _HOP]
        headers += [("host", "wirepool"), ("connection", "close"), ("content-length", str(len(req.body)))]
        writer.write((c.send(h11.Request(method=req.method, target=req.target, headers=headers)) or b"")
                     + (c.send(h11.Data(data=req.body)) if req.body else b"")
                     + (c.send(h11.EndOfMessage()) or b""))
        status, ctype, out_headers, body = 0, None, [], bytearray()
        while True:
            ev = c.next_event()
            if ev is h11.NEED_DATA:
                data = await reader.read(65536)
                c.receive_data(data)
                if not data and c.their_state is not h11.DONE:
                    raise asyncio.IncompleteReadError(bytes(body), None)
                continue
            if isinstance(ev, h11.Response):
                status = ev.status_code
                for k, v in ev.headers:
                    name, value = k.decode("latin-1").lower(), v.decode("latin-1")
                    if name == "content-type":
                        ctype = value
                    elif name not in ("content-length", "connection", "transfer-encoding"):
                        out_headers.append((name, value))
            elif isinstance(ev, h11.Data):
                body += ev.data
            elif isinstance(ev, (h11.EndOfMessage, h11.ConnectionClosed)):
                break
        return HttpResponse(status, bytes(body), ctype, out_headers)
    finally:
        writer.close()


# ---------------------------------------------------------------- old process side
class ControlServer:
    """Offers this process's listening sockets to a successor on ``path``."""

    def __init__(self, app: Any, path: str, on_handover: Callable[[], None]) -> None:
        self.app = app
        self.path = path
        self.on_handover = on_handover
        self.sock: socket.socket | None = None
        self.task: asyncio.Task[None] | None = None
        self.forward_server: Any = None
        self.forward_path: str | None = None
        self.handed_over = False
        #: connections of the successor forwarding /pg requests (not counted as accepted)
        self.forwarded = 0

    async def start(self) -> None:
        if os.path.exists(self.path):
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(self.path)
            except OSError:
                os.unlink(self.path)  # stale: left by a process that died
            else:
                raise TakeoverError(f"control_socket {self.path!r} is in use by a running gateway "
                                    "(use `wirepool serve --takeover` to replace it)")
            finally:
                probe.close()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(self.path)
        os.chmod(self.path, 0o600)
        sock.listen(4)
        sock.setblocking(False)
        self.sock = sock
        self.task = asyncio.get_running_loop().create_task(self._accept_loop())

    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        assert self.sock is not None
        while not self.handed_over:
            conn, _ = await loop.sock_accept(self.sock)
            try:
                await self._serve(conn)
            except Exception:
                log.exception("takeover: control connection failed")
            finally:
                conn.close()

    def _listening(self) -> tuple[list[str], list[int]]:
        roles, fds = [], []
        for role, listener in zip(ROLES, (self.app.http, self.app.tcp)):
            server = getattr(listener, "server", None)
            if server is None or not server.sockets:
                continue
            if len(server.sockets) > 1:
                log.warning("takeover: %s has %d sockets; only the first is handed over", role, len(server.sockets))
            roles.append(role)
            fds.append(server.sockets[0].fileno())
        return roles, fds

    async def _serve(self, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        conn.setblocking(False)
        line = await asyncio.wait_for(_read_line(loop, conn), 10)
        if line != REQUEST.strip():
            await loop.sock_sendall(conn, b"ERR unknown request\n")
            return
        roles, fds = self._listening()
        header = json.dumps({"pid": os.getpid(), "roles": roles}).encode() + b"\n"
        socket.send_fds(conn, [header], fds)
        log.info("takeover: offered %s to a successor; waiting for it to start", ", ".join(roles))
        try:
            line = await asyncio.wait_for(_read_line(loop, conn), 300)
        except asyncio.TimeoutError:
            line = b""
        if line != b"GO":
            log.warning("takeover: the successor gave up (%r); still serving", line[:100])
            return
        self.handed_over = True
        self.stop_accepting()
        self.forward_path = f"{self.path}.{os.getpid()}.pg"
        try:
            if os.path.exists(self.forward_path):
                os.unlink(self.forward_path)
            http = self.app.http
            def forwarded() -> HttpConnection:
                self.forwarded += 1
                return HttpConnection(http)
            self.forward_server = await loop.create_unix_server(forwarded, self.forward_path)
        except OSError as exc:
            log.warning("takeover: cannot serve /pg sessions to the successor on %s: %s", self.forward_path, exc)
            self.forward_path = None
        self._unlink()
        await loop.sock_sendall(conn, b"OK " + json.dumps({"forward": self.forward_path}).encode() + b"\n")
        log.info("takeover: handed over; finishing the clients of this process (%s)", accepted(self.app))
        self.on_handover()

    def stop_accepting(self) -> None:
        app = self.app
        if app.http is not None:
            app.http.stop_accepting()
            app.http.draining = True
        if app.tcp is not None:
            app.tcp.stop_accepting()

    def _unlink(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
            try:
                os.unlink(self.path)
            except OSError:
                pass

    def close(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()
        self._unlink()  # not once handed over: the path belongs to the successor then
        if self.forward_server is not None:
            self.forward_server.close()
            self.forward_server = None
        if self.forward_path:
            try:
                os.unlink(self.forward_path)
            except OSError:
                pass


async def _read_line(loop: asyncio.AbstractEventLoop, conn: socket.socket) -> bytes:
    buf = b""
    while not buf.endswith(b"\n") and len(buf) < 4096:
        chunk = await loop.sock_recv(conn, 4096)
        if not chunk:
            break
        buf += chunk
    return buf.strip()


# ---------------------------------------------------------------- shutdown modes
def accepted(app: Any) -> str:
    """Connections accepted so far on the listening sockets (for the log)."""
    ctl = getattr(app, "control", None)
    fwd = ctl.forwarded if ctl is not None else 0
    http = app.http.accepted_total - fwd if app.http else 0
    return f"accepted: {http} http, {app.tcp.accepted_total if app.tcp else 0} tcp; {fwd} forwarded /pg"


def clients_gone(app: Any) -> bool:
    """No session left, and no HTTP request being served."""
    gw = app.gateway
    if gw is not None and getattr(gw, "_all_sessions", None):
        return False
    http = app.http
    return http is None or not any(c._in_handler or c.ws is not None for c in http.connections)


async def shutdown_app(app: Any, mode: str, timeout: float | None) -> None:
    """``SHUTDOWN`` (mode ``""``: at once), ``WAIT_FOR_SERVERS`` (= SIGTERM:
    idle sessions end now, transactions finish within the timeout),
    ``WAIT_FOR_CLIENTS`` and ``TAKEOVER`` (stop accepting, let the clients
    leave by themselves for half the timeout, then WAIT_FOR_SERVERS with the rest)."""
    t = app.config.gateway.shutdown_timeout if timeout is None else timeout
    if mode in ("WAIT_FOR_CLIENTS", "TAKEOVER"):
        loop = asyncio.get_running_loop()
        if app.http is not None:
            app.http.stop_accepting()
            app.http.draining = True
        if app.tcp is not None:
            app.tcp.stop_accepting()
        deadline = loop.time() + t
        first = loop.time() + t / 2
        while loop.time() < first and not clients_gone(app):
            await asyncio.sleep(0.05)
        left = len(getattr(app.gateway, "_all_sessions", ()))
        log.info("%s: %s; %d sessions left, %d HTTP connections (%s)", mode,
                 "every client left" if clients_gone(app) else "stopped waiting for clients", left,
                 len(app.http.connections) if app.http else 0, accepted(app))
        t = max(0.0, deadline - loop.time())
    await app.shutdown(t)


# ---------------------------------------------------------------- systemd
def notify(state: str) -> bool:
    """sd_notify(3) without libsystemd: one datagram to $NOTIFY_SOCKET."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.connect(addr)
            s.sendall(state.encode())
        return True
    except OSError as exc:
        log.warning("sd_notify to %s failed: %s", addr, exc)
        return False


def signal_ready() -> None:
    """Tell systemd (Type=notify, NotifyAccess=all) that this process is the
    service's main process now, and ``wirepool takeover`` (WIREPOOL_READY_FD) that we serve."""
    notify(f"MAINPID={os.getpid()}\nREADY=1")
    fd = os.environ.pop("WIREPOOL_READY_FD", None)
    if fd is not None:
        try:
            os.write(int(fd), f"ready {os.getpid()}\n".encode())
            os.close(int(fd))
        except (OSError, ValueError):
            pass
