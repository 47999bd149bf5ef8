"""``python -m bench identity``: the cost of never handing a server from one
``[users]`` identity to another without a reset (issue 10).

Two ways to keep identities apart, measured on the same workload:

- ``discard``: one transaction-mode pool of ``--pool`` servers shared by both
  identities; a server that last served the other identity gets
  ``DISCARD ALL`` before it serves this one (the gateway's behaviour,
  docs/pooling-semantics.md), which also drops its prepared statements, so
  they are parsed again;
- ``per-user``: one pool per identity (two ``[databases]`` entries on the same
  upstream database and role), ``--pool`` / 2 servers each (the same number
  of servers in all), so a server never changes identity and is never reset;
- ``per-user-full``: one pool per identity of ``--pool`` servers each (twice
  the servers: what a per-user pool costs when each identity must get the
  full pool at its peak).

Workload: ``--clients`` asyncpg clients (default statement cache, so the
gateway's prepared-statement registry is in play), half ``alice`` and half
``bob``, each running ``SELECT val FROM items WHERE id = $1`` back to back for
``--seconds``; the two identities' transactions interleave on the servers.
Each configuration runs in its own gateway process (started once, warmed up),
rounds alternate between configurations; printed: transactions per second,
median [min - max] over ``--rounds``, and the ratio of medians to ``discard``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from typing import Any

from . import env as E

USERS = {"alice": "alice-pw", "bob": "bob-pw"}
CONFIGS = ("discard", "per-user", "per-user-full")


class IdentityGateway(E.Gateway):
    """The gateway with two edge identities, one shared pool or one pool each."""

    def __init__(self, cluster: E.BenchCluster, layout: str, pool: int) -> None:
        super().__init__(cluster, pool_size=pool)
        self.layout = layout
        E.Gateway._probed = True  # the harness's one-off uvloop probe session is not wanted here

    def config_text(self) -> str:
        c = self.cluster
        up = (f'host = "{c.host}"\nport = {c.port}\ndbname = "{E.BENCH_DB}"\n'
              f'user = "{E.BENCH_USER}"\npassword = "{E.BENCH_PASSWORD}"\n')
        if self.layout == "discard":
            dbs = f"[databases.shared]\n{up}pool_size = {self.pool_size}\n"
        else:
            each = self.pool_size // 2 if self.layout == "per-user" else self.pool_size
            dbs = "".join(f"[databases.{u}_db]\n{up}pool_size = {each}\n" for u in USERS)
        users = "".join(f'[users.{u}]\npassword = "{p}"\n' for u, p in USERS.items())
        return (f'[gateway]\nlisten = "127.0.0.1:{self.port}"\npg_listen = "127.0.0.1:{self.pg_port}"\n'
                f'auth_type = "scram-sha-256"\npool_mode = "transaction"\nmax_prepared_statements = 200\n'
                f'log_level = "warning"\n{dbs}{users}')

    def dsn(self, user: str) -> str:
        db = "shared" if self.layout == "discard" else f"{user}_db"
        return f"postgresql://{user}:{USERS[user]}@127.0.0.1:{self.pg_port}/{db}"


async def one_round(gw: IdentityGateway, clients: int, seconds: float) -> float:
    import asyncpg

    users = [("alice", "bob")[i % 2] for i in range(clients)]
    conns = [await asyncpg.connect(gw.dsn(u)) for u in users]
    count = 0
    try:
        stop = time.perf_counter() + seconds

        async def work(conn: Any, k: int) -> None:
            nonlocal count
            i = k
            while time.perf_counter() < stop:
                i = i % E.ITEMS + 1
                assert await conn.fetchval(E.QUERY, i) == f"item-{i}"
                count += 1
        t0 = time.perf_counter()
        await asyncio.gather(*(work(c, k * 997) for k, c in enumerate(conns)))
        return count / (time.perf_counter() - t0)
    finally:
        for c in conns:
            await c.close()


def run(configs: list[str], pool: int, clients: int, seconds: float, rounds: int) -> dict[str, list[float]]:
    cluster = E.BenchCluster()
    gws: dict[str, IdentityGateway] = {}
    try:
        for name in configs:
            gws[name] = IdentityGateway(cluster, name, pool)
            gws[name].start()
        out: dict[str, list[float]] = {name: [] for name in configs}
        for name in configs:  # warm-up: logins, pools filled, statements prepared
            asyncio.run(one_round(gws[name], clients, min(1.0, seconds)))
        for r in range(rounds):
            order = configs if r % 2 == 0 else configs[::-1]
            for name in order:
                out[name].append(asyncio.run(one_round(gws[name], clients, seconds)))
        return out
    finally:
        for g in gws.values():
            g.stop()
        cluster.close()


def report(res: dict[str, list[float]], pool: int, clients: int, seconds: float, rounds: int) -> None:
    print(f"identity switch: {clients} asyncpg clients (alice/bob alternating), {pool} servers shared "
          f"vs per-user pools; {rounds} rounds x {seconds:g}s; transactions/s median [min - max]")
    base = statistics.median(res["discard"]) if "discard" in res else None
    for name, v in res.items():
        med = statistics.median(v)
        ratio = f"{med / base:6.2f}x" if base else ""
        servers = pool if name != "per-user-full" else 2 * pool
        print(f"{name:14} {servers:3d} servers {med:9.0f} [{min(v):7.0f} - {max(v):7.0f}]  {ratio} vs discard")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench identity", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pool", type=int, default=4, help="servers of the shared pool (even)")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--configs", default=",".join(CONFIGS))
    a = ap.parse_args(argv)
    configs = [c for c in a.configs.split(",") if c]
    bad = [c for c in configs if c not in CONFIGS]
    if bad:
        ap.error(f"unknown configuration(s) {bad}; choose from {', '.join(CONFIGS)}")
    res = run(configs, a.pool, a.clients, a.seconds, a.rounds)
    report(res, a.pool, a.clients, a.seconds, a.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
