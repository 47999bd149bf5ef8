"""Login flood (issue 11 F5): a normal client's latency while wrong passwords pour in.

``python -m bench.login_flood [--rate 1000] [--seconds 10] [--repeat 3]``

Starts a private PostgreSQL and ``wirepool serve`` (auth_type = "password", so
every failed pg_listen login costs the gateway one PBKDF2), then for each
configuration runs, ``--repeat`` times:

* ``baseline``      -- only the normal client;
* ``flood``         -- plus a flooder process sending ``--rate`` failed logins/s
                       from 127.0.0.2, throttle off (``auth_failure_delay = 0``):
                       the worst case, as if every attempt came from a new address;
                       what protects the normal client is PBKDF2 running in the
                       thread pool (``auth_max_concurrent``), off the event loop;
* ``flood+throttle``-- the same flood with the default throttle (one address).

The normal client (127.0.0.1) runs ``select 1`` back to back on one pg_listen
connection and opens a fresh connection every 0.5 s.  Printed per
configuration: the normal client's p50/p99/max query latency (median and spread
over the repeats), its fresh-login p50, and per second the flood's attempts
that were checked and failed (one PBKDF2 each) and those the throttle refused
before any check.  Target: at 1,000 failed logins/s, normal p99 < 20 ms.

It also prints, measured in this process in the same run, the median cost of a
failed cleartext check for an unknown user, a plaintext user and a SCRAM-
verifier user (they should be equal: one PBKDF2 each).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import time
from typing import Any

from .env import BENCH_DB, BenchCluster, Gateway
from .preauth_memory import normal_client

FLOOD_SOURCE = "127.0.0.2"


# ------------------------------------------------------------------ flooder (child process)

async def _one_failed_login(port: int, payload: bytes) -> str:
    """Startup + wrong password in one write: "checked" when the gateway asked
    for the password then failed it, "refused" when the throttle refused the
    attempt before any check, "" otherwise."""
    try:
        r, w = await asyncio.open_connection("127.0.0.1", port, local_addr=(FLOOD_SOURCE, 0))
    except OSError:
        return ""
    try:
        w.write(payload)
        data = await asyncio.wait_for(r.read(), 30)
        if data[:1] == b"R" and data[9:10] == b"E":
            return "checked"
        return "refused" if data[:1] == b"E" else ""
    except (OSError, asyncio.TimeoutError):
        return ""
    finally:
        w.close()


async def flood(port: int, rate: float, seconds: float) -> dict[str, Any]:
    from driver.protocol import messages as m

    loop = asyncio.get_running_loop()
    counts = {"checked": 0, "refused": 0, "": 0}
    sent = 0
    tasks: set[asyncio.Task[str]] = set()
    start = loop.time()
    end = start + seconds

    def done(t: asyncio.Task[str]) -> None:
        tasks.discard(t)
        if not t.cancelled():
            counts[t.result()] += 1

    while loop.time() < end:
        due = int((loop.time() - start) * rate)
        while sent < due and len(tasks) < 800:
            payload = (m.startup_message({"user": f"user{sent % 50}", "database": BENCH_DB})
                       + m.password_message(f"guess{sent}"))
            t = loop.create_task(_one_failed_login(port, payload))
            t.add_done_callback(done)
            tasks.add(t)
            sent += 1
        await asyncio.sleep(0.002)
    elapsed = loop.time() - start
    if tasks:
        await asyncio.wait(tasks, timeout=10)
    return {"sent": sent, "checked": counts["checked"] / elapsed, "refused": counts["refused"] / elapsed}


# ------------------------------------------------------------------ normal client
# (the same measuring client as the pre-auth memory bench: select 1 in a loop, a login every 0.5 s)


async def one_run(gw: Gateway, rate: float, seconds: float, with_flood: bool) -> dict[str, float]:
    proc = None
    if with_flood:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.login_flood", "--flood-worker", str(gw.pg_port), str(rate), str(seconds),
            stdout=asyncio.subprocess.PIPE)
        await asyncio.sleep(0.5)  # let the flood reach its rate before measuring (warm-up, not synchronisation)
    res = await normal_client(gw.tcp_kwargs(), seconds - 1 if with_flood else seconds)
    if proc is not None:
        out, _ = await proc.communicate()
        words = out.decode().split()
        res["checked_s"], res["refused_s"] = float(words[-2]), float(words[-1])
    return res


# ------------------------------------------------------------------ uniform cost (in-process)

def uniform_cost(n: int = 200) -> dict[str, float]:
    from driver.protocol.auth import ScramVerifier
    from gateway.auth import Authenticator
    from gateway.config import UserConfig

    users = {"plain": UserConfig("plain", "plain-secret"),
             "verif": UserConfig("verif", str(ScramVerifier.from_password("verif-secret")))}
    auth = Authenticator("password", users)
    out: dict[str, float] = {}
    times: dict[str, list[float]] = {"unknown": [], "plaintext": [], "verifier": []}
    kinds = [("unknown", "nobody"), ("plaintext", "plain"), ("verifier", "verif")]
    for i in range(n):  # interleaved in a random order, so load changes hit all three alike
        random.shuffle(kinds)
        for label, user in kinds:
            t0 = time.perf_counter()
            assert not auth.check_password(user, f"wrong{i}")
            times[label].append(time.perf_counter() - t0)
    for label, ts in times.items():
        out[label] = 1000 * statistics.median(ts)
    out["pbkdf2_per_check"] = auth.derivations / (3 * n)
    return out


def _spread(values: list[float]) -> str:
    med = statistics.median(values)
    return f"{med:7.2f} ({min(values):.2f}-{max(values):.2f})"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.login_flood", description=__doc__.split("\n")[0])
    ap.add_argument("--rate", type=float, default=1000.0, help="failed logins per second (default 1000)")
    ap.add_argument("--seconds", type=float, default=10.0, help="duration of each run (default 10)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per configuration (default 3)")
    ap.add_argument("--flood-worker", nargs=3, metavar=("PORT", "RATE", "SECONDS"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.flood_worker:
        port, rate, seconds = int(a.flood_worker[0]), float(a.flood_worker[1]), float(a.flood_worker[2])
        r = asyncio.run(flood(port, rate, seconds))
        print(f"sent {r['sent']} {r['checked']:.1f} {r['refused']:.1f}")
        return 0

    cost = uniform_cost()
    per = cost.pop("pbkdf2_per_check")
    print("failed cleartext check, median ms (same run, interleaved): "
          + ", ".join(f"{k} {v:.3f}" for k, v in cost.items())
          + f"  (max/min {max(cost.values()) / min(cost.values()):.2f}); PBKDF2 runs per check: {per:.2f}")
    load0 = os.getloadavg()
    cluster = BenchCluster()
    rows: dict[str, list[dict[str, float]]] = {}
    try:
        configs = [("baseline", {"auth_failure_delay": 0.0}, False),
                   ("flood", {"auth_failure_delay": 0.0}, True),
                   ("flood+throttle", {}, True)]
        for name, extra, with_flood in configs:
            gw = Gateway(cluster, auth_type="password", extra=extra)
            gw.start()
            try:
                for _ in range(a.repeat):
                    rows.setdefault(name, []).append(asyncio.run(one_run(gw, a.rate, a.seconds, with_flood)))
            finally:
                gw.stop()
    finally:
        cluster.close()
    load1 = os.getloadavg()
    print(f"\nnormal client (select 1 on pg_listen), {a.repeat} runs of {a.seconds:g}s each, "
          f"flood target {a.rate:g} failed logins/s; median (min-max); load average {load0[0]:.1f} at the "
          f"start, {load1[0]:.1f} at the end ({os.cpu_count()} cores):")
    print(f"{'config':16} {'p50 ms':>20} {'p99 ms':>20} {'max ms':>20} {'login p50 ms':>20} "
          f"{'checked fails/s':>20} {'refused/s':>20}")
    base_p99 = statistics.median(r["p99_ms"] for r in rows["baseline"])
    for name, rs in rows.items():
        print(f"{name:16} {_spread([r['p50_ms'] for r in rs]):>20} {_spread([r['p99_ms'] for r in rs]):>20} "
              f"{_spread([r['max_ms'] for r in rs]):>20} {_spread([r['login_p50_ms'] for r in rs]):>20} "
              f"{_spread([r.get('checked_s', 0.0) for r in rs]):>20} "
              f"{_spread([r.get('refused_s', 0.0) for r in rs]):>20}")
    for name, rs in rows.items():
        p99 = statistics.median(r["p99_ms"] for r in rs)
        print(f"{name}: p99 {p99:.2f} ms = {p99 / base_p99:.2f}x baseline; target < 20 ms: "
              f"{'met' if p99 < 20 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
