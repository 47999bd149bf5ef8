"""driver.codecs imports uuid, ipaddress and decimal (and compiles its text
regexes) at the first value that needs them, not at import: in Pyodide these
modules are compiled from sources at every start (see codecs/_core.LazyGlobal)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

LAZY = ("uuid", "ipaddress", "decimal", "numbers", "urllib.parse")


def run(code: str) -> str:
    # -S: the site module of an editable install imports urllib.parse itself
    return subprocess.run([sys.executable, "-S", "-c", "import sys; " + code], cwd=ROOT,
                          capture_output=True, text=True, check=True).stdout.strip()


def test_import_loads_none_of_them() -> None:
    out = run(f"import driver.codecs as c; print(sorted(m for m in {LAZY!r} if m in sys.modules)); "
              "from driver.codecs import _text as T; print(type(T._TS).__name__)")
    assert out.splitlines() == ["[]", "LazyGlobal"]


def test_first_value_loads_and_rebinds() -> None:
    out = run("from driver.codecs import _binary as B, _text as T; import driver.codecs; "
              "print(B.decode_numeric(B.encode_numeric('1.50')), T.decode_uuid(b'12345678-1234-5678-1234-567812345678'), "
              "B.decode_inet(B.encode_inet('10.1.2.3')), T.decode_timestamp(b'2024-01-02 03:04:05'), "
              "isinstance(B.decode_numeric(B.encode_numeric(2)), B.Decimal)); "
              "print(type(B.Decimal).__name__, type(T.uuid).__name__, type(B.ipaddress).__name__, "
              "type(T._TS).__name__)")
    first, second = out.splitlines()
    assert first == "1.50 12345678-1234-5678-1234-567812345678 10.1.2.3 2024-01-02 03:04:05 True"
    assert second == "type module module Pattern"
