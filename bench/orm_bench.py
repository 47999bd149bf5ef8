"""SQLAlchemy ORM benchmark (issue 9): ``postgresql+asyncpg://`` vs ``postgresql+wirepool://``.

One run, same process, same private cluster, over TCP. Each round runs this
workload with one library, then with the other (the order alternates between
rounds), on freshly created tables:

- ``insert``: 2,000 ``Author`` objects via ``session.add_all`` (the ORM's
  insertmanyvalues batches with RETURNING), then 20,000 ``Book`` rows via
  ``session.execute(insert(Book), [dicts])`` (ORM bulk insert, insertmanyvalues);
- ``select``: 300 queries ``select(Book).join(Author).where(Author.name == ?)``
  plus 100 ``select(Author).options(selectinload(Author.books))`` lookups;
- ``update``: 2,000 ORM objects modified and flushed (executemany of UPDATEs),
  then 50 ``update(Book).where(...).values(price=Book.price * 1.01)`` statements;
- ``stream``: ``session.stream_scalars(select(Book).execution_options(yield_per=1000))``
  over all 20,000 books (a server-side cursor).

Reports per library the median and min-max spread of each phase and of the
whole round, and the ratio driver/asyncpg of the medians (target: total <= 1.15).

    python -m bench.orm_bench                 # private cluster, 5 rounds each
    python -m bench.orm_bench --rounds 9 --json /tmp/orm.json
    python -m bench.orm_bench --dsn postgresql://u:p@127.0.0.1:5432/db
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from sqlalchemy import ForeignKey, String, insert, select, update  # noqa: E402
from sqlalchemy.dialects import registry  # noqa: E402
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine  # noqa: E402
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship, selectinload  # noqa: E402

AUTHORS, BOOKS, SELECTS, LOADS, UPDATES, BULK_UPDATES = 2_000, 20_000, 300, 100, 2_000, 50
PHASES = ("insert", "select", "update", "stream")
LIBS = ("asyncpg", "wirepool")


class Base(DeclarativeBase):
    pass


class Author(Base):
    __tablename__ = "bench_author"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50), index=True)
    books: Mapped[list["Book"]] = relationship(back_populates="author")


class Book(Base):
    __tablename__ = "bench_book"
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(100))
    price: Mapped[float]
    author_id: Mapped[int] = mapped_column(ForeignKey("bench_author.id"), index=True)
    author: Mapped[Author] = relationship(back_populates="books")


def _ensure_dialect() -> None:
    """Resolve ``postgresql+wirepool`` even when wirepool is not pip-installed (entry point)."""
    try:
        registry.load("postgresql.wirepool")
    except Exception:
        registry.register("postgresql.wirepool", "driver.sqlalchemy_dialect", "PGDialect_wirepool")


async def one_round(url: str, scale: float) -> dict[str, float]:
    n_auth, n_books = max(10, int(AUTHORS * scale)), max(50, int(BOOKS * scale))
    engine = create_async_engine(url, pool_size=2)
    times: dict[str, float] = {}
    try:
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.drop_all)
            await conn.run_sync(Base.metadata.create_all)
        Session = async_sessionmaker(engine, expire_on_commit=False)
        async with Session() as s:
            await s.execute(select(1))  # connect + warm the pool outside the timings
        t0 = time.perf_counter()
        async with Session() as s, s.begin():
            s.add_all([Author(name=f"author {i}") for i in range(n_auth)])
            await s.flush()
            ids = (await s.scalars(select(Author.id))).all()
            await s.execute(insert(Book), [
                {"title": f"book {i}", "price": 10.0 + i % 90, "author_id": ids[i % len(ids)]}
                for i in range(n_books)])
        times["insert"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        async with Session() as s:
            found = 0
            for i in range(max(5, int(SELECTS * scale))):
                q = select(Book).join(Author).where(Author.name == f"author {i * 7 % n_auth}")
                found += len((await s.scalars(q)).all())
            for i in range(max(5, int(LOADS * scale))):
                a = await s.scalar(select(Author).where(Author.id == ids[i * 13 % len(ids)])
                                   .options(selectinload(Author.books)))
                assert a is not None
                found += len(a.books)
            assert found > 0
        times["select"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        async with Session() as s, s.begin():
            books = (await s.scalars(select(Book).order_by(Book.id)
                                     .limit(max(10, int(UPDATES * scale))))).all()
            for b in books:
                b.title = b.title + " (2nd ed.)"
            await s.flush()
            for i in range(max(5, int(BULK_UPDATES * scale))):
                await s.execute(update(Book).where(Book.author_id == ids[i % len(ids)])
                                .values(price=Book.price * 1.01))
        times["update"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        async with Session() as s, s.begin():
            n = 0
            result = await s.stream_scalars(select(Book).execution_options(yield_per=1000))
            async for _ in result:
                n += 1
            assert n == n_books
        times["stream"] = time.perf_counter() - t0
        times["total"] = sum(times[p] for p in PHASES)
    finally:
        await engine.dispose()
    return times


def summarize(samples: dict[str, list[dict[str, float]]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for lib, rounds in samples.items():
        out[lib] = {k: {"median": statistics.median(r[k] for r in rounds),
                        "min": min(r[k] for r in rounds), "max": max(r[k] for r in rounds)}
                    for k in PHASES + ("total",)}
    out["ratio"] = {k: out["wirepool"][k]["median"] / out["asyncpg"][k]["median"]
                    for k in PHASES + ("total",)}
    return out


def render(summary: dict[str, Any], rounds: int) -> str:
    lines = [f"SQLAlchemy ORM workload over TCP, {rounds} rounds each (median, min-max seconds)",
             f"{'phase':<8}{'asyncpg':>24}{'wirepool':>24}{'ratio':>8}"]
    for k in PHASES + ("total",):
        a, w = summary["asyncpg"][k], summary["wirepool"][k]
        lines.append(f"{k:<8}{a['median']:>9.3f} ({a['min']:.3f}-{a['max']:.3f})"
                     f"{w['median']:>9.3f} ({w['min']:.3f}-{w['max']:.3f}){summary['ratio'][k]:>7.2f}x")
    verdict = "OK" if summary["ratio"]["total"] <= 1.15 else "OVER TARGET"
    lines.append(f"target: wirepool total <= 1.15x asyncpg: {summary['ratio']['total']:.2f}x {verdict}")
    return "\n".join(lines)


async def run(dsn: str, rounds: int, scale: float) -> dict[str, Any]:
    _ensure_dialect()
    rest = dsn.split("://", 1)[1]
    urls = {"asyncpg": f"postgresql+asyncpg://{rest}", "wirepool": f"postgresql+wirepool://{rest}"}
    for lib in LIBS:  # warm-up round (imports, server caches), not counted
        await one_round(urls[lib], scale * 0.1)
    samples: dict[str, list[dict[str, float]]] = {lib: [] for lib in LIBS}
    for i in range(rounds):
        for lib in (LIBS if i % 2 == 0 else LIBS[::-1]):
            samples[lib].append(await one_round(urls[lib], scale))
    return summarize(samples)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dsn", help="postgresql://user:pw@host:port/db (default: a private cluster)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--scale", type=float, default=1.0, help="multiplies every workload size")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    cluster = None
    dsn = args.dsn
    if dsn is None:
        from tests.pgcluster import PgCluster

        cluster = PgCluster()
        dsn = cluster.dsn(PgCluster.SUPERUSER, PgCluster.SUPERUSER_PASSWORD)
    try:
        summary = asyncio.run(run(dsn, args.rounds, args.scale))
    finally:
        if cluster is not None:
            cluster.cleanup()
    print(render(summary, args.rounds))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
