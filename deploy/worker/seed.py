"""Create the ``quotes`` table and load quotes.json into it (CPython, the wirepool driver).

    python deploy/worker/seed.py --dsn 'ws://alice:secret@127.0.0.1:8432/quotes' [--file quotes.json] [--reset]

Any driver DSN works: ``postgresql://`` straight to Postgres (or the
gateway's pg_listen), ``ws://`` / ``http://`` through the gateway.  Without
``--reset`` an already seeded table is left alone (idempotent); with it the
table is emptied and reloaded.  All rows go in one transaction, in one
pipelined ``executemany`` batch.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))  # the checkout root: import driver

import driver  # noqa: E402

SCHEMA = """
create table if not exists quotes (
    id         bigserial primary key,
    text       text not null check (length(text) between 1 and 500),
    author     text not null check (length(author) between 1 and 100),
    created_at timestamptz not null default now()
);
create index if not exists quotes_author_idx on quotes (author);
"""


def load_quotes(path: Path) -> list[dict[str, str]]:
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, list) or not all(isinstance(q, dict) and q.get("text") and q.get("author")
                                             for q in data):
        raise SystemExit(f"{path}: expected a JSON list of {{\"text\", \"author\"}} objects")
    return data


async def seed(dsn: str, file: Path = HERE / "quotes.json", *, reset: bool = False,
               **connect_kw: Any) -> int:
    """Create the table, load the quotes unless already loaded; return the row count."""
    quotes = load_quotes(file)
    conn = await driver.connect(dsn, statement_cache_size=0, **connect_kw)
    try:
        await conn.execute(SCHEMA)
        async with conn.transaction():
            if reset:
                await conn.execute("truncate quotes restart identity")
            if await conn.fetchval("select count(*) from quotes") == 0:
                await conn.executemany("insert into quotes (text, author) values ($1, $2)",
                                       [(q["text"], q["author"]) for q in quotes])
        count: int = await conn.fetchval("select count(*) from quotes")
        return count
    finally:
        await conn.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dsn", default=os.environ.get("DATABASE_URL"), help="driver DSN (default: $DATABASE_URL)")
    ap.add_argument("--file", type=Path, default=HERE / "quotes.json")
    ap.add_argument("--reset", action="store_true", help="empty the table and reload it")
    args = ap.parse_args()
    if not args.dsn:
        ap.error("--dsn or DATABASE_URL is required")
    n = asyncio.run(seed(args.dsn, args.file, reset=args.reset))
    print(f"quotes: {n} rows")


if __name__ == "__main__":
    main()
