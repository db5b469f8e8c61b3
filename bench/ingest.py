"""Ingest: records per second stored through HTTP (1000-record extension batches, several
concurrent clients, a requests.Session per thread, bodies serialised beforehand), after a
warm-up of full-size batches of both kinds, and the p50/p99 latency of 100-record batches
sent one at a time."""
from __future__ import annotations

import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import psutil
import requests

from . import payloads
from .deploy import Deployment


class Poster:
    """POSTs pre-serialised bodies; one requests.Session per thread."""

    def __init__(self, url: str, token: str):
        self.url = url + "/api/v1/data/sync"
        self.headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        self.local = threading.local()

    def post(self, body: bytes) -> requests.Response:
        session = getattr(self.local, "session", None)
        if session is None:
            session = self.local.session = requests.Session()
        resp = session.post(self.url, data=body, headers=self.headers, timeout=120)
        if resp.status_code != 200:
            raise RuntimeError(f"HTTP {resp.status_code}: {resp.text[:300]}")
        return resp


def throughput(poster: Poster, bodies: list, clients: int) -> float:
    """Records per second for all `bodies` sent by `clients` concurrent clients."""
    records = sum(n for _, n in bodies)
    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(lambda b: poster.post(b[0]), bodies))
    return records / (time.perf_counter() - started)


def latencies(poster: Poster, bodies: list) -> dict:
    """p50/p99 in milliseconds of requests sent one after another."""
    times = []
    for body, _ in bodies:
        t = time.perf_counter()
        poster.post(body)
        times.append((time.perf_counter() - t) * 1000)
    q = statistics.quantiles(times, n=100, method="inclusive")
    return {"p50_ms": statistics.median(times), "p99_ms": q[98]}


def measure_ingest(mode: str = "bulk", records: int = 20000, clients: int = 4,
                   latency_requests: int = 100, queue: str = "sqlite",
                   server_args: list | None = None) -> dict:
    """One fresh deployment (no worker running: ingest only), `mode` 'bulk' or 'naive'."""
    big = payloads.bodies(records, 1000, seed=11)
    small = payloads.bodies(latency_requests * 100, 100, seed=12)[:latency_requests]
    warm = payloads.bodies(8000, 1000, seed=13)  # other records, both kinds, full size
    with Deployment(queue, env={"PAGESYNC_ENQUEUE_MODE": mode}) as d:
        server = d.start_server(server_args)
        poster = Poster(d.url, d.token())
        poster.post(small[-1][0])
        # warm up, from every client: connections, and the statements of each batch size
        # compiled (each server process compiles its own once)
        throughput(poster, warm, clients)
        cpu = tree_cpu(server)
        rate = throughput(poster, big, clients)
        cpu = tree_cpu(server) - cpu
        lat = latencies(poster, small[:-1])
        stored = _stored(d)
    expected = records + sum(n for _, n in small) + sum(n for _, n in warm)
    if stored != expected:
        raise RuntimeError(f"stored {stored} records, expected {expected}")
    return {"records_per_s": rate, "records_per_cpu_s": records / cpu, **lat}


def tree_cpu(proc) -> float:
    """CPU seconds (user + system) used so far by a process and its children: the
    server's cost per record, whatever else the machine is busy with."""
    root = psutil.Process(proc.pid)
    total = 0.0
    for p in [root, *root.children(recursive=True)]:
        t = p.cpu_times()
        total += t.user + t.system
    return total


def _stored(d: Deployment) -> int:
    conn = d.conn()
    try:
        return sum(conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                   for t in ("page_visits", "tab_aggregates"))
    finally:
        conn.close()


if __name__ == "__main__":
    import sys
    print(measure_ingest(sys.argv[1] if len(sys.argv) > 1 else "bulk"))
