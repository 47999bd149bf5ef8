"""driver.urls gives urllib.parse's results (it exists so that the connect path
does not import urllib.parse and ipaddress: see its docstring)."""

from __future__ import annotations

import subprocess
import sys
import urllib.parse as up
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from driver import urls

ROOT = Path(__file__).resolve().parents[2]

# URL-ish text: the characters that matter to the splitter, percent escapes, and
# some that send it to urllib.parse (brackets, spaces, controls, non-ASCII)
_ATOMS = st.sampled_from(list("aZ09:/?#@&=+%.-_~!$'()*,;[] \t\n\x00éΩ") + [
    "%41", "%e2%82%ac", "%zz", "%", "%C3", "://", "postgresql://", "ws://", "u:p@", "[::1]"])
URLISH = st.lists(_ATOMS, max_size=20).map("".join)


def check_split(url: str) -> None:
    try:
        expected = tuple(up.urlsplit(url))
    except ValueError as e:
        try:
            urls.urlsplit(url)
        except ValueError as mine:
            assert str(mine) == str(e)
        else:
            raise AssertionError(f"no ValueError for {url!r}")
        return
    assert urls.urlsplit(url) == expected


@given(URLISH)
def test_urlsplit(url: str) -> None:
    check_split(url)


@given(st.sampled_from(["postgresql", "ws", "wss", "http", "HTTPS", "x-y+z.1"]), URLISH)
def test_urlsplit_urls(scheme: str, rest: str) -> None:
    check_split(f"{scheme}://{rest}")


@given(URLISH)
def test_unquote(s: str) -> None:
    assert urls.unquote(s) == up.unquote(s)


_TEXT = st.text(alphabet=st.sampled_from(list("aZ09 _.-~/:[]@%+&=?#\x00\x7féΩ€\U0001f600\ud800")),
                max_size=12)


@given(_TEXT, st.sampled_from(["", "/", "[]:", "@"]))
def test_quote(s: str, safe: str) -> None:
    try:
        expected = up.quote(s, safe=safe)
    except UnicodeEncodeError:  # a lone surrogate
        return
    assert urls.quote(s, safe) == expected
    assert urls.quote_plus(s, safe) == up.quote_plus(s, safe=safe)


@given(st.dictionaries(_TEXT, _TEXT, max_size=4))
def test_urlencode(params: dict[str, str]) -> None:
    try:
        expected = up.urlencode(params)
    except UnicodeEncodeError:
        return
    assert urls.urlencode(params) == expected


@given(URLISH, st.booleans(), st.booleans())
def test_parse_qsl(qs: str, keep_blank: bool, strict: bool) -> None:
    try:
        expected = up.parse_qsl(qs, keep_blank_values=keep_blank, strict_parsing=strict)
    except ValueError as e:
        try:
            urls.parse_qsl(qs, keep_blank, strict)
        except ValueError as mine:
            assert str(mine) == str(e)
        else:
            raise AssertionError(f"no ValueError for {qs!r}")
        return
    assert urls.parse_qsl(qs, keep_blank, strict) == expected


def test_connect_path_does_not_import_urllib_parse() -> None:
    """Parsing a ws:// DSN with its query (what every connect does) leaves
    urllib.parse and ipaddress unimported (``-S``: the site module of an
    editable install imports urllib.parse via pathlib itself)."""
    code = ("import sys; from driver.dsn import parse_dsn; from driver import login; "
            "d = 'ws://u:p%40ss@gw.example:8432/app?pipeline_connect=password&lazy_connect=true'; "
            "p = parse_dsn(d, environ={}); login.dsn_flag(d, 'lazy_connect', False); "
            "login.dsn_pipeline_mode(d); p.url_with_query(token='t k'); "
            "print(p.password, sorted(m for m in ('urllib.parse', 'ipaddress') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-S", "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "p@ss []"
