"""Run-time parameters as PostgreSQL spells them (sans-I/O).

The gateway answers a login itself, so the ParameterStatus values it sends
must be what Postgres would have reported for the client's startup
parameters: ``client_encoding=iso-8859-1`` is reported as ``LATIN1``,
``DateStyle=iso, dmy`` as ``ISO, DMY``, ``TimeZone=europe/paris`` as
``Europe/Paris``.  Clients rely on it (psycopg looks the reported encoding
up in its own table and refuses to connect with an unknown spelling).

* :func:`canonical` -- one value in Postgres' spelling (unknown values are
  returned unchanged: the server judges them when the value is applied, and
  the session then adopts what the server reports).
* :func:`parse_options` -- the ``options`` startup parameter
  (``-c name=value`` / ``--name=value``, backslash escapes a space), as
  PostgreSQL's ``pg_split_opts`` + ``process_postgres_switches`` read it.
"""

from __future__ import annotations

import re
from functools import lru_cache

__all__ = ["canonical", "canonical_encoding", "parse_options", "tracked_options", "OptionsError"]

#: Postgres' encoding names and aliases (src/common/encnames.c, ``pg_encname_tbl``),
#: keyed by the "clean" spelling: lower case, alphanumerics only.
_ENCODINGS: dict[str, str] = {
    "abc": "WIN1258", "alt": "WIN866", "big5": "BIG5", "euccn": "EUC_CN",
    "eucjis2004": "EUC_JIS_2004", "eucjp": "EUC_JP", "euckr": "EUC_KR", "euctw": "EUC_TW",
    "gb18030": "GB18030", "gbk": "GBK", "iso88591": "LATIN1", "iso885910": "LATIN6",
    "iso885913": "LATIN7", "iso885914": "LATIN8", "iso885915": "LATIN9", "iso885916": "LATIN10",
    "iso88592": "LATIN2", "iso88593": "LATIN3", "iso88594": "LATIN4", "iso88595": "ISO_8859_5",
    "iso88596": "ISO_8859_6", "iso88597": "ISO_8859_7", "iso88598": "ISO_8859_8",
    "iso88599": "LATIN5", "johab": "JOHAB", "koi8": "KOI8R", "koi8r": "KOI8R", "koi8u": "KOI8U",
    "latin1": "LATIN1", "latin2": "LATIN2", "latin3": "LATIN3", "latin4": "LATIN4",
    "latin5": "LATIN5", "latin6": "LATIN6", "latin7": "LATIN7", "latin8": "LATIN8",
    "latin9": "LATIN9", "latin10": "LATIN10", "mskanji": "SJIS", "muleinternal": "MULE_INTERNAL",
    "shiftjis": "SJIS", "shiftjis2004": "SHIFT_JIS_2004", "sjis": "SJIS", "sqlascii": "SQL_ASCII",
    "tcvn": "WIN1258", "tcvn5712": "WIN1258", "uhc": "UHC", "unicode": "UTF8", "utf8": "UTF8",
    "vscii": "WIN1258", "win": "WIN1251", "win1250": "WIN1250", "win1251": "WIN1251",
    "win1252": "WIN1252", "win1253": "WIN1253", "win1254": "WIN1254", "win1255": "WIN1255",
    "win1256": "WIN1256", "win1257": "WIN1257", "win1258": "WIN1258", "win866": "WIN866",
    "win874": "WIN874", "win932": "SJIS", "win936": "GBK", "win949": "UHC", "win950": "BIG5",
    "windows1250": "WIN1250", "windows1251": "WIN1251", "windows1252": "WIN1252",
    "windows1253": "WIN1253", "windows1254": "WIN1254", "windows1255": "WIN1255",
    "windows1256": "WIN1256", "windows1257": "WIN1257", "windows1258": "WIN1258",
    "windows866": "WIN866", "windows874": "WIN874", "windows932": "SJIS", "windows936": "GBK",
    "windows949": "UHC", "windows950": "BIG5",
}
_CLEAN = re.compile(r"[^a-z0-9]")

_DATE_STYLES = {"iso": "ISO", "sql": "SQL", "postgres": "Postgres", "german": "German"}
_DATE_ORDERS = {"ymd": "YMD", "dmy": "DMY", "euro": "DMY", "european": "DMY",
                "mdy": "MDY", "us": "MDY", "noneuro": "MDY", "noneuropean": "MDY"}
_BOOL_ON = {"on", "true", "yes", "1", "t", "y", "tr", "tru", "ye"}
_BOOL_OFF = {"off", "false", "no", "0", "f", "n", "of", "fa", "fal", "fals"}


def canonical_encoding(value: str) -> str:
    """``iso-8859-1`` -> ``LATIN1``; unknown names unchanged."""
    return _ENCODINGS.get(_CLEAN.sub("", value.lower()), value)


def _datestyle(value: str, default: str | None) -> str:
    """``iso, dmy`` -> ``ISO, DMY`` (what ``SHOW DateStyle`` says).  A part left
    out keeps the server default's (without ``default``: only the given part,
    e.g. ``SQL``); ``German`` alone implies ``DMY``."""
    style = order = None
    for tok in re.split(r"[\s,]+", value.strip().lower()):
        if not tok:
            continue
        if tok in _DATE_STYLES:
            style = _DATE_STYLES[tok]
        elif tok in _DATE_ORDERS:
            order = _DATE_ORDERS[tok]
        elif tok != "default":
            return value  # invalid: the server will say so
    if order is None and style == "German":
        order = "DMY"
    if default is None and (style is None or order is None):
        return style or order or value  # completed once the server's default is known
    d_style, _, d_order = (default or "ISO, MDY").partition(", ")
    return f"{style or d_style}, {order or d_order or 'MDY'}"


@lru_cache(maxsize=1)
def _zones() -> dict[str, str]:
    try:
        import zoneinfo
        names = zoneinfo.available_timezones()
    except Exception:  # pragma: no cover - no tz database: values pass unchanged
        names = set()
    out = {n.lower(): n for n in names}
    out.update({"utc": "UTC", "gmt": "GMT", "zulu": "Zulu"})
    return out


@lru_cache(maxsize=512)
def canonical(name: str, value: str, default: str | None = None) -> str:
    """``value`` of parameter ``name`` (Postgres' spelling of the name) as
    Postgres reports it; ``default`` is the server's current value (DateStyle
    keeps the parts the client left out)."""
    if name == "client_encoding":
        return canonical_encoding(value)
    if name == "DateStyle":
        return _datestyle(value, default)
    if name == "TimeZone":
        return _zones().get(value.lower(), value)
    if name == "IntervalStyle":
        return value.lower()
    if name == "standard_conforming_strings":
        v = value.strip().lower()
        return "on" if v in _BOOL_ON else "off" if v in _BOOL_OFF else value
    return value


class OptionsError(ValueError):
    """An ``options`` startup parameter the gateway cannot take (``sqlstate``
    for the client's FATAL)."""

    def __init__(self, message: str, sqlstate: str = "08P01") -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


def _split(value: str) -> list[str]:
    """Whitespace-separated words; ``\\`` escapes the next character (pg_split_opts)."""
    words: list[str] = []
    cur: list[str] = []
    in_word = False
    i = 0
    while i < len(value):
        ch = value[i]
        if ch.isspace():
            if in_word:
                words.append("".join(cur))
                cur, in_word = [], False
        elif ch == "\\" and i + 1 < len(value):
            i += 1
            cur.append(value[i])
            in_word = True
        else:
            cur.append(ch)
            in_word = True
        i += 1
    if in_word:
        words.append("".join(cur))
    return words


def parse_options(value: str) -> list[tuple[str, str]]:
    """``-c a=1 --b=2 -cc=3`` -> ``[("a", "1"), ("b", "2"), ("c", "3")]``.

    Only the forms that set a run-time parameter are accepted (other backend
    switches make no sense through a pool): OptionsError otherwise."""
    out: list[tuple[str, str]] = []
    words = _split(value)
    i = 0
    while i < len(words):
        w = words[i]
        if w == "-c":
            i += 1
            if i >= len(words):
                raise OptionsError('invalid "options": -c requires a name=value argument')
            arg = words[i]
        elif w.startswith("-c"):
            arg = w[2:]
        elif w.startswith("--"):
            arg = w[2:]
        else:
            raise OptionsError(f'invalid "options": unsupported switch "{w}" (only -c name=value '
                               "and --name=value are accepted)")
        name, eq, val = arg.partition("=")
        if not eq or not name:
            raise OptionsError(f'invalid "options": "{arg}" is not name=value')
        out.append((name.replace("-", "_"), val))
        i += 1
    return out


def tracked_options(value: str, tracked: dict[str, str]) -> dict[str, str]:
    """The ``options`` startup parameter as ``{canonical name: canonical value}``
    for the ``tracked`` parameters (lower-case name -> Postgres' name);
    OptionsError for anything else."""
    out: dict[str, str] = {}
    for name, val in parse_options(value):
        canon = tracked.get(name.lower())
        if canon is None:
            raise OptionsError(f'parameter "{name}" cannot be set in "options" through the gateway; '
                               f"supported: {', '.join(tracked.values())}", "0A000")
        out[canon] = canonical(canon, val)
    return out
