"""The pieces of :mod:`urllib.parse` the driver needs, without importing it.

``urllib.parse`` imports :mod:`ipaddress`; Pyodide ships its standard library
as sources and compiles them at every start, and the two cost ~190 ms of CPU
there (ipaddress alone ~130 ms) -- more than the whole driver's connect path.
These functions give the same results as their ``urllib.parse`` namesakes
(``tests/driver/test_urls.py`` compares them on generated inputs); a URL
outside the plain-ASCII subset handled here (brackets of an IPv6 host,
spaces, control or non-ASCII characters) is handed to ``urllib.parse`` itself,
so its checks and quirks stay the reference.
"""

from __future__ import annotations

__all__ = ["urlsplit", "unquote", "quote", "quote_plus", "urlencode", "parse_qsl"]

_HEX = frozenset("0123456789abcdefABCDEF")
_ALWAYS_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-~")


def _plain(url: str) -> bool:
    """Printable ASCII without brackets: what :func:`urlsplit` splits itself."""
    return url.isascii() and url.isprintable() and " " not in url and "[" not in url \
        and "]" not in url


def urlsplit(url: str) -> tuple[str, str, str, str, str]:
    """``(scheme, netloc, path, query, fragment)`` as ``urllib.parse.urlsplit``."""
    scheme, colon, rest = url.partition(":")
    if not (_plain(url) and colon and scheme[:1].isalpha()
            and all(c.isalnum() or c in "+-." for c in scheme)):
        from urllib.parse import urlsplit as split

        return tuple(split(url))  # type: ignore[return-value]
    netloc = ""
    if rest[:2] == "//":
        end = len(rest)
        for c in "/?#":
            i = rest.find(c, 2)
            if 0 <= i < end:
                end = i
        netloc, rest = rest[2:end], rest[end:]
    rest, _, fragment = rest.partition("#")
    path, _, query = rest.partition("?")
    return scheme.lower(), netloc, path, query, fragment


def unquote(s: str) -> str:
    """Percent-decoding (UTF-8, errors replaced), as ``urllib.parse.unquote``."""
    if "%" not in s:
        return s
    if not s.isascii():
        from urllib.parse import unquote as decode

        return decode(s)
    parts = s.split("%")
    out = bytearray(parts[0].encode("ascii"))
    for part in parts[1:]:
        if len(part) >= 2 and part[0] in _HEX and part[1] in _HEX:
            out.append(int(part[:2], 16))
            out += part[2:].encode("ascii")
        else:
            out += b"%" + part.encode("ascii")
    return out.decode("utf-8", "replace")


def quote(s: str, safe: str = "/") -> str:
    """Percent-encoding of UTF-8, as ``urllib.parse.quote``."""
    keep = _ALWAYS_SAFE.union(safe)
    if all(c in keep for c in s):
        return s
    return "".join(chr(b) if chr(b) in keep else f"%{b:02X}" for b in s.encode("utf-8"))


def quote_plus(s: str, safe: str = "") -> str:
    """As ``urllib.parse.quote_plus``: spaces become ``+``."""
    if " " in s:
        return quote(s, safe + " ").replace(" ", "+")
    return quote(s, safe)


def urlencode(params: dict[str, str]) -> str:
    """``k=v&k2=v2`` of a mapping of strings, as ``urllib.parse.urlencode``."""
    return "&".join(f"{quote_plus(str(k))}={quote_plus(str(v))}" for k, v in params.items())


def parse_qsl(qs: str, keep_blank_values: bool = False,
              strict_parsing: bool = False) -> list[tuple[str, str]]:
    """``[(name, value), ...]`` of a query string, as ``urllib.parse.parse_qsl``."""
    out: list[tuple[str, str]] = []
    if not qs:
        return out
    for field in qs.split("&"):
        if not field and not strict_parsing:
            continue
        name, eq, value = field.partition("=")
        if not eq:
            if strict_parsing:
                raise ValueError(f"bad query field: {field!r}")
            if not keep_blank_values:
                continue
        if value or keep_blank_values:
            out.append((unquote(name.replace("+", " ")), unquote(value.replace("+", " "))))
    return out
