"""TLS on every hop (docs/tls.md).

* :class:`ServerTls` -- the certificate of ``listen`` (https://, wss://) and
  ``pg_listen`` (SSLRequest -> ``S``).  One :class:`ssl.SSLContext` shared by
  both listeners; :meth:`ServerTls.reload` re-reads the files *into that same
  context* (new handshakes use the new certificate, open connections keep
  theirs), after checking the new pair in a scratch context so a half-written
  or mismatched pair is logged and ignored, never served.  Reloads happen when
  the files' mtime/size change (polled every ``tls_reload_interval`` seconds)
  and on SIGHUP (``wirepool serve``).
* :func:`upstream_context` / :func:`negotiate_upstream` -- the gateway's TLS
  to PostgreSQL per ``[databases.NAME] sslmode`` / ``sslrootcert`` with
  libpq's meanings: ``disable`` (never), ``prefer`` (if the server offers it,
  unverified), ``require`` (always, unverified), ``verify-ca`` (chain checked
  against ``sslrootcert`` or the system store), ``verify-full`` (and the host
  name).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
from typing import Any

from driver.protocol import messages as m

log = logging.getLogger("wirepool.gateway.tls")

__all__ = ["ServerTls", "make_server_ssl_context", "upstream_context", "negotiate_upstream",
           "UpstreamTlsError"]


def make_server_ssl_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """A server context (TLS 1.2+) with the certificate chain and key loaded."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert_file, key_file)
    return ctx


def _stamp(paths: tuple[str, ...]) -> tuple[Any, ...]:
    out: list[Any] = []
    for p in paths:
        try:
            st = os.stat(p)
            out.append((st.st_mtime_ns, st.st_size, st.st_ino))
        except OSError:
            out.append(None)
    return tuple(out)


class ServerTls:
    """The listeners' certificate, reloadable without a restart."""

    def __init__(self, cert_file: str, key_file: str) -> None:
        self.cert_file = cert_file
        self.key_file = key_file
        self._stamp = _stamp((cert_file, key_file))
        self.context = make_server_ssl_context(cert_file, key_file)
        self.reloads = 0
        self.reload_errors = 0
        self._task: asyncio.Task[None] | None = None

    def reload(self) -> bool:
        """Re-read the files into the live context; False (and the old
        certificate kept) when the new pair does not load."""
        stamp = _stamp((self.cert_file, self.key_file))
        try:
            make_server_ssl_context(self.cert_file, self.key_file)  # validate first
            self.context.load_cert_chain(self.cert_file, self.key_file)
        except (OSError, ssl.SSLError, ValueError) as exc:
            self.reload_errors += 1
            self._stamp = stamp  # do not retry the same broken files in a loop
            log.error("TLS certificate reload failed, keeping the previous one: %s", exc)
            return False
        self._stamp = stamp
        self.reloads += 1
        log.info("TLS certificate reloaded from %s", self.cert_file)
        return True

    def reload_if_changed(self) -> bool:
        if _stamp((self.cert_file, self.key_file)) == self._stamp:
            return False
        return self.reload()

    def start_watching(self, interval: float) -> None:
        if interval > 0 and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._watch(interval))

    async def _watch(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                self.reload_if_changed()
            except Exception:  # pragma: no cover - never let the watcher die
                log.exception("TLS certificate check failed")

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None


# --------------------------------------------------------------------------- upstream

class UpstreamTlsError(Exception):
    """TLS to the upstream was required and could not be had."""


_upstream_cache: dict[tuple[str, str | None], ssl.SSLContext] = {}


def upstream_context(sslmode: str, sslrootcert: str | None) -> ssl.SSLContext | None:
    """The client context for ``sslmode`` (None for ``disable``); cached."""
    if sslmode == "disable":
        return None
    key = (sslmode, sslrootcert)
    ctx = _upstream_cache.get(key)
    if ctx is not None:
        return ctx
    if sslmode in ("verify-ca", "verify-full"):
        ctx = ssl.create_default_context(cafile=sslrootcert)
        ctx.check_hostname = sslmode == "verify-full"
    else:  # prefer / require: encrypted, not authenticated (libpq's meaning)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    _upstream_cache[key] = ctx
    return ctx


async def negotiate_upstream(host: str, port: int, sslmode: str) -> tuple[socket.socket, bool]:
    """Connect to ``host:port`` and, unless ``disable``, send an SSLRequest.
    Returns the connected socket and whether the server agreed to TLS (the
    caller then wraps the socket).  Raises :class:`UpstreamTlsError` when TLS
    is required and refused, OSError when the connection fails."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    last: OSError | None = None
    sock: socket.socket | None = None
    for family, type_, proto, _, addr in infos:
        s = socket.socket(family, type_, proto)
        s.setblocking(False)
        try:
            await loop.sock_connect(s, addr)
        except OSError as exc:
            s.close()
            last = exc
            continue
        sock = s
        break
    if sock is None:
        raise last if last is not None else OSError(f"cannot resolve {host}")
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if sslmode == "disable":
            return sock, False
        await loop.sock_sendall(sock, m.ssl_request())
        answer = await loop.sock_recv(sock, 1)
        if answer == b"S":
            return sock, True
        if answer == b"N":
            if sslmode == "prefer":
                return sock, False
            raise UpstreamTlsError("the server does not support TLS, but sslmode requires it")
        if not answer:
            raise OSError("server closed the connection during the TLS negotiation")
        # 'E' (a pre-7.x server, or a startup error): nothing sensible to do.
        raise UpstreamTlsError(f"unexpected answer to SSLRequest: {answer!r}")
    except BaseException:
        sock.close()
        raise
