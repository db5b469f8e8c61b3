"""Drain: jobs per second processed by the worker (the real processing), on the SQLite
queue and on Redis, against a plain consumer (stock Huey Consumer options, one worker).

The records are stored through the server first (no worker running); then the worker
starts and the rate is taken from the jobs' own finish times (first to last job done), so
process start-up is not counted for either side."""
from __future__ import annotations

import time

from . import payloads
from .deploy import Deployment
from .ingest import Poster


def fill(d: Deployment, n_jobs: int, seed: int = 31) -> int:
    d.start_server()
    poster = Poster(d.url, d.token())
    bodies = payloads.bodies(n_jobs, 1000, seed)
    for body, _ in bodies:
        poster.post(body)
    return sum(n for _, n in bodies)


def wait_done(d: Deployment, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while d.jobs_left():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{d.jobs_left()} jobs still not done after {timeout}s")
        time.sleep(0.2)


def finished_rate(d: Deployment) -> tuple[int, float]:
    conn = d.conn()
    try:
        n, first, last = conn.execute(
            "SELECT COUNT(*), MIN(finished_at), MAX(finished_at) FROM jobs WHERE state = 'done'"
        ).fetchone()
    finally:
        conn.close()
    return n, (n - 1) / max(last - first, 1e-6)


def measure_drain(queue_url: str = "sqlite", n_jobs: int = 5000, workers: int = 2,
                  kind: str = "thread", plain: bool = False, timeout: float = 300) -> float:
    """Jobs per second. `plain`: the baseline consumer instead of `pagesync worker`."""
    with Deployment(queue_url) as d:
        expected = fill(d, n_jobs)
        if plain:
            d.start_plain_consumer()
        else:
            d.start_worker(workers, kind)
        wait_done(d, timeout)
        done, rate = finished_rate(d)
    if done != expected:
        raise RuntimeError(f"{done} jobs done, expected {expected}")
    return rate


if __name__ == "__main__":
    import sys
    q = sys.argv[1] if len(sys.argv) > 1 else "sqlite"
    print("worker", measure_drain(q, 3000))
    print("plain", measure_drain(q, 3000, plain=True))
