"""Micro-benchmark of driver.codecs.build_row_decoder (the driver's DataRow hot path).

Decodes 10,000 binary DataRow bodies of 6 columns (int4, int8, text, float8,
timestamptz, numeric) and prints rows/s.  Run: ``python bench/micro_codecs.py``.
"""

from __future__ import annotations

import datetime as dt
import struct
import sys
import time
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from driver.codecs import build_row_decoder, encoder_for, oids  # noqa: E402

N = 10_000
COLS = [oids.INT4, oids.INT8, oids.TEXT, oids.FLOAT8, oids.TIMESTAMPTZ, oids.NUMERIC]


def make_bodies() -> list[bytes]:
    encs = [encoder_for(o)[1] for o in COLS]
    base = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)
    bodies = []
    for i in range(N):
        vals = [i, i * 1_000_003, f"user-{i}@example.com", i / 7, base + dt.timedelta(seconds=i),
                Decimal(i) / 100]
        parts = [struct.pack("!h", len(COLS))]
        for enc, v in zip(encs, vals):
            b = enc(v)
            parts.append(struct.pack("!i", len(b)) + b)
        bodies.append(b"".join(parts))
    return bodies


def main() -> None:
    bodies = make_bodies()
    decode = build_row_decoder([(o, 1) for o in COLS])
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for b in bodies:
            decode(b)
        best = min(best, time.perf_counter() - t0)
    print(f"build_row_decoder: {N} rows x {len(COLS)} cols in {best * 1000:.1f} ms "
          f"-> {N / best:,.0f} rows/s (best of 5)")


if __name__ == "__main__":
    main()
