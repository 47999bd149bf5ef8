"""Local stand-in for Cloudflare's ``workers`` module (only what the quotes worker uses).

Mounted by run_local.cjs; the real runtime provides its own ``workers``.
``Response(body, status=, headers=)`` and ``Response.json(data, ...)`` as in
Cloudflare's Python Workers; ``WorkerEntrypoint`` stores ``ctx`` and ``env``.
"""

from __future__ import annotations

import json
from typing import Any


class Response:
    def __init__(self, body: str | bytes | None = None, status: int = 200,
                 headers: dict[str, str] | None = None, **_: Any) -> None:
        self.body = body.encode("utf-8") if isinstance(body, str) else (body or b"")
        self.status = status
        self.headers = dict(headers or {})

    @classmethod
    def json(cls, data: Any, status: int = 200, headers: dict[str, str] | None = None) -> "Response":
        h = {"content-type": "application/json"}
        h.update(headers or {})
        return cls(json.dumps(data), status=status, headers=h)


class WorkerEntrypoint:
    def __init__(self, ctx: Any = None, env: Any = None) -> None:
        self.ctx = ctx
        self.env = env
