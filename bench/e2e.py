"""End to end on the embedded default (SQLite database, SQLite queue): `pagesync replay` of
a file of 50,000 extension records to a real server while a real worker processes them;
timed from replay start until every job is done. Meanwhile psutil samples the resident
memory of the server's and the worker's process trees; the peaks are reported."""
from __future__ import annotations

import subprocess
import sys
import threading
import time

import psutil

from pagesync import procs

from . import payloads
from .deploy import Deployment


class PeakRss(threading.Thread):
    """Peak RSS (bytes) of each named process tree, sampled every `interval` seconds."""

    def __init__(self, trees: dict, interval: float = 0.1):
        super().__init__(daemon=True)
        self.trees = {name: psutil.Process(p.pid) for name, p in trees.items()}
        self.peak = dict.fromkeys(trees, 0)
        self.interval, self.stopped = interval, threading.Event()

    def run(self):
        while not self.stopped.wait(self.interval):
            for name, proc in self.trees.items():
                self.peak[name] = max(self.peak[name], tree_rss(proc))

    def stop(self) -> dict:
        self.stopped.set()
        self.join()
        return self.peak


def tree_rss(proc: psutil.Process) -> int:
    total = 0
    try:
        for p in [proc, *proc.children(recursive=True)]:
            total += p.memory_info().rss
    except psutil.Error:
        pass
    return total


def measure_e2e(records: int = 50000, naive: bool = False, concurrency: int = 2,
                timeout: float = 600) -> dict:
    """`naive`: the baseline (one-by-one enqueue, plain consumer)."""
    env = {"PAGESYNC_ENQUEUE_MODE": "naive" if naive else "bulk"}
    with Deployment("sqlite", env=env) as d:
        path = d.dir / "payloads.json"
        n = payloads.write_file(path, records, 1000, seed=41)
        server = d.start_server()
        worker = d.start_plain_consumer() if naive else d.start_worker(None)
        token = d.token()
        sampler = PeakRss({"server": server, "worker": worker})
        sampler.start()
        started = time.perf_counter()
        replay = subprocess.run(
            [sys.executable, "-m", "pagesync", "replay", str(path), "--url", d.url, "--token",
             token, "--concurrency", str(concurrency), "--json"],
            env=procs.child_env(d.settings), capture_output=True, text=True, timeout=timeout)
        if replay.returncode != 0:
            raise RuntimeError(f"replay failed: {replay.stdout[-500:]} {replay.stderr[-500:]}")
        replayed = time.perf_counter() - started
        d.wait_done(timeout)
        seconds = time.perf_counter() - started
        peak = sampler.stop()
        done = d.jobs_done()
    if done != n:
        raise RuntimeError(f"{done} jobs done, expected {n}")
    return {"records": n, "seconds": seconds, "replay_seconds": replayed,
            "server_rss_mb": peak["server"] / 2**20, "worker_rss_mb": peak["worker"] / 2**20}


if __name__ == "__main__":
    print(measure_e2e(int(sys.argv[1]) if len(sys.argv) > 1 else 50000))
