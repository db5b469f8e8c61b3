"""Drain throughput of `pagesync worker` with real processing.

`measure_drain(queue_url, n_jobs, workers, kind)` stores `n_jobs` page visits (through the
same code path as the sync API: parse, save in batches, enqueue), then starts a real
`pagesync worker` process and times from its start until every job is 'done' in the jobs
table. Returns jobs per second. `workers`/`kind` None means the worker's defaults (no flags).

    python -m bench.drain --jobs 5000 --queue sqlite
    python -m bench.drain --jobs 5000 --queue redis://127.0.0.1:6379/0 --workers 4 --kind process
"""
from __future__ import annotations

import argparse
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pagesync import payload, procs, queue, stats, store
from pagesync.config import Settings

HOSTS = ("en.wikipedia.org", "github.com", "news.bbc.co.uk", "www.youtube.com", "docs.python.org",
         "mail.google.com", "reddit.com", "arxiv.org", "example.com", "shop.amazon.co.uk")
START_MS = 1764547200000  # 2025-12-01


def make_visits(n: int, seed: int = 1) -> list[dict]:
    """n extension-dialect visits over 20 tabs, 7 days and 10 hosts."""
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        start = START_MS + rnd.randrange(7 * 86400) * 1000
        tab = rnd.randrange(20)
        duration = rnd.randrange(1, 900_000)
        host = rnd.choice(HOSTS)
        out.append({"id": f"pv_{start}_{tab}_{i}", "url": f"https://{host}/page/{i}?utm_source=x",
                    "title": f"page {i}", "startedAt": start, "duration": duration,
                    "activeDuration": rnd.randrange(duration), "tabId": tab, "domain": host})
    return out


def store_jobs(settings: Settings, n_jobs: int) -> None:
    """Store n_jobs visits and enqueue one job each, like the server does."""
    store.init_db(settings.db)
    conn = store.connect(settings.db, durable=False)
    store.create_token(conn, "bench")
    user_id = store.user_id_by_name(conn, "bench")
    huey = queue.make_huey(settings)
    visits = make_visits(n_jobs)
    for i in range(0, len(visits), 1000):
        body = {"pageVisits": visits[i:i + 1000], "anonymousClientId": "anon_bench"}
        batch = payload.parse_batch(body, int(time.time() * 1000))
        assert not batch.rejected, batch.rejected[:3]
        saved = store.save_batch(conn, user_id, batch)
        if not queue.deliver(conn, huey, saved["jobs"]):
            raise RuntimeError("could not enqueue")
    conn.close()


def done_count(conn) -> int:
    return conn.execute("SELECT COUNT(*) FROM jobs WHERE state = 'done'").fetchone()[0]


def flush_queue(settings: Settings) -> None:
    if settings.queue_kind == "redis":
        import redis
        redis.Redis.from_url(settings.queue).flushdb()


def measure_drain(queue_url: str = "sqlite", n_jobs: int = 5000, workers: int | None = None,
                  kind: str | None = None, timeout: float = 300.0, verify: bool = True) -> float:
    """Jobs per second for one drain of n_jobs visit jobs by a real worker process, from
    the first job started to the last job finished (the jobs table's own timestamps)."""
    return drain_figures(queue_url, n_jobs, workers, kind, timeout, verify)["jobs_per_second"]


def drain_figures(queue_url: str = "sqlite", n_jobs: int = 5000, workers: int | None = None,
                  kind: str | None = None, timeout: float = 300.0, verify: bool = True) -> dict:
    """{"jobs_per_second": first start to last finish, "wall_jobs_per_second": from
    spawning the worker (interpreter start and imports included) to the last finish,
    "jobs_per_cpu_second": jobs per CPU second the worker's processes used}."""
    with tempfile.TemporaryDirectory(prefix="pagesync-drain-") as tmp:
        settings = Settings(db=str(Path(tmp) / "bench.db"), queue=queue_url)
        flush_queue(settings)
        store_jobs(settings, n_jobs)
        args = ["worker"]
        if workers is not None:
            args += ["--workers", str(workers)]
        if kind is not None:
            args += ["--kind", kind]
        conn = store.connect(settings.db, durable=False)
        started = time.perf_counter()
        proc = procs.spawn(args, settings, Path(tmp) / "worker.log")
        try:
            while done_count(conn) < n_jobs:
                if proc.poll() is not None:
                    raise RuntimeError("worker exited early:\n" + (Path(tmp) / "worker.log").read_text())
                if time.perf_counter() - started > timeout:
                    raise TimeoutError(f"{done_count(conn)}/{n_jobs} done after {timeout}s")
                time.sleep(0.01)
            elapsed = time.perf_counter() - started
            cpu = cpu_seconds(proc.pid)
        finally:
            code = procs.stop(proc, timeout=30)
        if code != 0:
            raise RuntimeError(f"worker exited {code} on SIGTERM")
        if verify and not stats.verify(conn, "UTC")["equal"]:
            raise AssertionError("rollups differ from a fresh computation")
        first, last = conn.execute("SELECT MIN(started_at), MAX(finished_at) FROM jobs").fetchone()
        conn.close()
        flush_queue(settings)
        return {"jobs_per_second": n_jobs / (last - first), "wall_jobs_per_second": n_jobs / elapsed,
                "jobs_per_cpu_second": n_jobs / cpu}


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its children so far (start-up included): on a
    shared, loaded machine this says more about the worker's own cost than the wall clock."""
    import psutil

    root = psutil.Process(pid)
    total = 0.0
    for p in [root, *root.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def measure_pickup(queue_url: str = "sqlite", samples: int = 5, idle: float = 1.5) -> list[float]:
    """Seconds from enqueueing one job to a real, idle worker starting it (each sample
    after `idle` seconds without work, so the worker's polling has backed off fully)."""
    with tempfile.TemporaryDirectory(prefix="pagesync-pickup-") as tmp:
        settings = Settings(db=str(Path(tmp) / "bench.db"), queue=queue_url)
        flush_queue(settings)
        store.init_db(settings.db)
        conn = store.connect(settings.db, durable=False)
        store.create_token(conn, "bench")
        huey = queue.make_huey(settings)
        proc = procs.spawn(["worker"], settings, Path(tmp) / "worker.log")
        out = []
        try:
            for i, visit in enumerate(make_visits(samples + 1)):
                time.sleep(idle if i else 3.0)  # the first wait covers the worker's start-up
                batch = payload.parse_batch({"pageVisits": [visit]}, int(time.time() * 1000))
                saved = store.save_batch(conn, 1, batch)
                sent = time.time()
                queue.deliver(conn, huey, saved["jobs"])
                while True:
                    row = conn.execute("SELECT started_at FROM jobs WHERE record_id = ? AND "
                                       "state = 'done'", (visit["id"],)).fetchone()
                    if row:
                        break
                    time.sleep(0.005)
                if i:
                    out.append(row[0] - sent)
        finally:
            procs.stop(proc, timeout=30)
            conn.close()
            flush_queue(settings)
        return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=5000)
    ap.add_argument("--queue", default="sqlite")
    ap.add_argument("--workers", type=int)
    ap.add_argument("--kind", choices=("thread", "process"))
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--pickup", action="store_true", help="measure idle pickup latency instead")
    a = ap.parse_args(argv)
    if a.pickup:
        lat = measure_pickup(a.queue)
        print(f"{a.queue}: idle pickup latency max {max(lat):.3f} s, "
              f"samples {[round(x, 3) for x in lat]}")
        return
    for _ in range(a.runs):
        fig = drain_figures(a.queue, a.jobs, a.workers, a.kind)
        print(f"{a.queue} workers={a.workers or 'default'} kind={a.kind or 'default'}: "
              f"{a.jobs} jobs, {fig['jobs_per_second']:,.0f} jobs/s "
              f"({fig['wall_jobs_per_second']:,.0f}/s counting worker start-up, "
              f"{fig['jobs_per_cpu_second']:,.0f} jobs per CPU second)", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
