"""Zero-downtime restart and upgrade: a new process takes over the listening
sockets of a running one (docs/takeover.md).

The running ``wirepool serve`` offers its sockets on ``gateway.control_socket``
(a unix socket).  ``wirepool serve --takeover`` (or ``wirepool takeover``,
the systemd ``ExecReload``) connects there and::

    new -> old   TAKEOVER 1\\n
    old -> new   {"pid": .., "roles": ["listen", "pg_listen", ..], "forward": [<unix socket>, ..]}\\n
                 + the fds (SCM_RIGHTS, gateway/sockets.py; a role repeats per socket)
                 ... the new process starts its gateway on those sockets ...
    new -> old   GO\\n            (or it closes the connection: the old one carries on)
    old -> new   OK {"forward": [..]}\\n

The sockets are the *same* kernel sockets, so their accept queues survive:
no connection is refused or reset at any moment.  Either side may be a
``workers = N`` supervisor (gateway/handover.py): it offers every worker's
socket, and its workers' unix sockets as ``forward``.  After ``GO`` the old
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
import base64
import json
import logging
import os
import socket
from typing import Any, Callable

import h11

from driver.protocol import messages as m

from .http import HttpConnection, HttpRequest, HttpResponse
from .sockets import recv_more, recv_sockets, send_sockets

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

    def __init__(self, conn: socket.socket, pid: int, sockets: dict[str, list[socket.socket]],
                 info: dict[str, Any]) -> None:
        self.conn = conn
        self.pid = pid
        #: role ("listen", "pg_listen") -> its listening sockets (several from N workers)
        self.sockets = sockets
        self.info = info
        #: unix sockets where the running process's HTTP /pg sessions stay reachable
        self.forward: list[str] = _paths(info.get("forward"))

    def commit(self, timeout: float = 30.0) -> list[str]:
        """Tell the old process to stop accepting (blocking; the answer comes at once).
        Returns the unix sockets its HTTP /pg sessions are reachable at."""
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
        self.forward = self.forward or _paths(info.get("forward"))
        return self.forward

    def abort(self) -> None:
        """Starting failed: close our copies; the old process keeps serving (on all its sockets)."""
        from .reuseport import restore
        restore(self.sockets)
        self.conn.close()
        for socks in self.sockets.values():
            for s in socks:
                s.close()


def _paths(v: Any) -> list[str]:
    if isinstance(v, str):
        return [v]
    return [p for p in v if isinstance(p, str)] if isinstance(v, list) else []


def receive(path: str, timeout: float = 30.0) -> Handover:
    """Connect to the running gateway's control socket and receive its
    listening sockets (blocking)."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.settimeout(timeout)
    fds: list[int] = []
    try:
        conn.connect(path)
        conn.sendall(REQUEST)
        msg, fds = recv_sockets(conn)
    except OSError as exc:
        conn.close()
        raise TakeoverError(f"no running gateway answers on control_socket {path!r}: "
                            f"{exc.strerror or exc}") from None
    try:
        header = json.loads(msg.split(b"\n", 1)[0])
        roles = header["roles"]
        if not isinstance(roles, list) or not all(r in ROLES for r in roles):
            raise ValueError(f"roles {roles!r}")
        recv_more(conn, fds, len(roles))
        if len(roles) != len(fds):
            raise ValueError(f"{len(fds)} sockets for roles {roles!r}")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        conn.close()
        for fd in fds:
            os.close(fd)
        raise TakeoverError(f"bad answer on control_socket {path!r}: {msg[:200]!r} ({exc})") from None
    sockets: dict[str, list[socket.socket]] = {}
    for role, fd in zip(roles, fds):
        sockets.setdefault(str(role), []).append(socket.socket(fileno=fd))
    log.info("takeover: received %s from pid %s", ", ".join(
        f"{r} {_addr_of(ss[0])}" + (f" (x{len(ss)})" if len(ss) > 1 else "") for r, ss in sockets.items()),
        header.get("pid"))
    return Handover(conn, int(header.get("pid", 0)), sockets, header)


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


class Predecessor:
    """The process taken over, while it drains: requests for its HTTP ``/pg``
    sessions and cancels of its clients go to its unix sockets (one per worker
    of a ``workers = N`` predecessor: any of them routes to the others)."""

    def __init__(self, paths: list[str]) -> None:
        self.paths = list(paths)
        self.alive = bool(self.paths)

    @staticmethod
    def owner_index(token: str) -> int | None:
        """The worker index a token names, read without checking its MAC (the
        predecessor checks it): its owner worker holds the session, so it is asked
        first -- a sibling relaying for it may be exiting."""
        try:
            payload = base64.urlsafe_b64decode(token.partition(".")[0] + "==")
        except ValueError:
            return None
        return int.from_bytes(payload[32:34], "big") if len(payload) >= 38 else None

    def _order(self, index: int | None) -> list[str]:
        if index is not None and 0 <= index < len(self.paths):
            return [self.paths[index]] + [p for i, p in enumerate(self.paths) if i != index]
        return self.paths

    async def forward(self, req: HttpRequest, index: int | None = None) -> HttpResponse | None:
        """The predecessor's answer to ``req`` (worker ``index`` first); None once it is gone."""
        for path in self._order(index):
            try:
                return await forward_request(path, req)
            except (FileNotFoundError, ConnectionRefusedError):
                continue  # that worker has finished: another one routes to its siblings
            except (OSError, h11.ProtocolError, asyncio.IncompleteReadError):
                return None  # it went away during the request: its sessions with it
        self.alive = False
        return None

    async def cancel(self, process_id: int, secret_key: int) -> bool:
        """Pass a CancelRequest on as ``POST /pg/cancel`` (the predecessor looks in all its workers)."""
        req = HttpRequest("POST", "/pg/cancel", "/pg/cancel", {}, [], m.cancel_request(process_id, secret_key),
                          "takeover")
        return await self.forward(req) is not None


def install_forwarding(app: Any, pred: Predecessor) -> None:
    """A lone process (no gateway/cluster.py) that took over: ``POST /pg`` with a
    session token it did not sign goes to the predecessor while it lives, and
    CancelRequests (pg_listen, ``/pg/cancel``) for sessions it does not hold too."""
    routes = app.http.routes
    pg = routes.get(("POST", "/pg"))
    gw = app.gateway

    if pg is not None:
        async def pg_route(req: HttpRequest) -> HttpResponse:
            token = (req.header("wirepool-session") or "").strip()
            if token and token.lower() != "new" and pred.alive and not _signed_here(app, token):
                resp = await pred.forward(req, pred.owner_index(token))
                if resp is not None:
                    return resp
            out: HttpResponse = await pg(req)
            return out
        routes[("POST", "/pg")] = pg_route
    local_cancel = gw.handle_cancel

    async def handle_cancel(process_id: int, secret_key: int) -> None:
        s = gw.sessions.get(process_id)
        if s is None or s.secret_key != secret_key:
            if pred.alive:
                await pred.cancel(process_id, secret_key)
            return
        await local_cancel(process_id, secret_key)
    gw.handle_cancel = handle_cancel


def _signed_here(app: Any, token: str) -> bool:
    from .http_exec import HttpExecError, get_executor
    try:
        get_executor(app.gateway)._lookup(token)
    except HttpExecError as e:
        # 401: not signed by this process (a lone process signs with a secret of
        # its own: a 410 is one of its own sessions, gone)
        return e.status != 401
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
def bind_control(path: str) -> socket.socket:
    """The control socket (mode 0600); refused while a running gateway answers on it."""
    if os.path.exists(path):
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)  # stale: left by a process that died
        else:
            raise TakeoverError(f"control_socket {path!r} is in use by a running gateway "
                                "(use `wirepool serve --takeover` to replace it)")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        os.chmod(path, 0o600)
        sock.listen(4)
    except BaseException:
        sock.close()
        raise
    return sock


def offer_header(roles: list[str], forward: list[str], **extra: Any) -> bytes:
    return json.dumps({"pid": os.getpid(), "roles": roles, "forward": forward, **extra}).encode() + b"\n"


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
        sock = bind_control(self.path)
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
        retiring = {s.fileno() for s in getattr(self.app, "retiring", ())}  # not passed on (gateway/reuseport.py)
        for role, listener in zip(ROLES, (self.app.http, self.app.tcp)):
            server = getattr(listener, "server", None)
            for s in (server.sockets if server is not None else ()):
                if s.fileno() in retiring:
                    continue
                roles.append(role)
                fds.append(s.fileno())
        return roles, fds

    async def _start_forward(self) -> None:
        """A unix socket serving this process's HTTP routes, for the successor's /pg forwarding."""
        if self.forward_server is not None:
            return
        loop = asyncio.get_running_loop()
        path = f"{self.path}.{os.getpid()}.pg"
        try:
            if os.path.exists(path):
                os.unlink(path)
            http = self.app.http

            def forwarded() -> HttpConnection:
                self.forwarded += 1
                return HttpConnection(http)
            self.forward_server = await loop.create_unix_server(forwarded, path)
            self.forward_path = path
        except OSError as exc:
            log.warning("takeover: cannot serve /pg sessions to the successor on %s: %s", path, exc)

    def _stop_forward(self) -> None:
        if self.forward_server is not None:
            self.forward_server.close()
            self.forward_server = None
        if self.forward_path:
            try:
                os.unlink(self.forward_path)
            except OSError:
                pass
            self.forward_path = None

    async def _serve(self, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        conn.setblocking(False)
        line = await asyncio.wait_for(_read_line(loop, conn), 10)
        if line != REQUEST.strip():
            await loop.sock_sendall(conn, b"ERR unknown request\n")
            return
        roles, fds = self._listening()
        await self._start_forward()
        forward = [self.forward_path] if self.forward_path else []
        conn.setblocking(True)
        try:
            send_sockets(conn, offer_header(roles, forward, retiring=len(getattr(self.app, "retiring", ()))), fds)
        finally:
            conn.setblocking(False)
        log.info("takeover: offered %s to a successor; waiting for it to start", ", ".join(roles))
        try:
            line = await asyncio.wait_for(_read_line(loop, conn), 300)
        except asyncio.TimeoutError:
            line = b""
        if line != b"GO":
            log.warning("takeover: the successor gave up (%r); still serving", line[:100])
            self._stop_forward()
            return
        self.handed_over = True
        self.stop_accepting()
        self._unlink()
        await loop.sock_sendall(conn, b"OK " + json.dumps({"forward": forward}).encode() + b"\n")
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
        self._stop_forward()


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
    if http is not None and any(c._in_handler or c.ws is not None for c in http.connections):
        return False
    internal = getattr(getattr(app, "cluster", None), "_internal", None)  # requests forwarded by others
    return internal is None or not any(c._in_handler for c in internal.connections)


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
        log.info("%s: pid %d stopped accepting (%s)", mode, os.getpid(), accepted(app))
        deadline = loop.time() + t
        first = loop.time() + t / 2
        while loop.time() < first and not clients_gone(app):
            await asyncio.sleep(0.05)
        left = len(getattr(app.gateway, "_all_sessions", ()))
        log.info("%s: pid %d: %s; %d sessions left, %d HTTP connections (%s)", mode, os.getpid(),
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
