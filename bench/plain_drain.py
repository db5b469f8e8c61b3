"""The drain baseline: the same jobs (bench.drain.store_jobs) drained by a plain consumer
(bench/plain_consumer.py: stock Huey Consumer options, one worker), timed the same way as
bench.drain (first job started to last job finished, from the jobs table)."""
from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pagesync import procs, store
from pagesync.config import Settings

from .drain import done_count, flush_queue, store_jobs


def measure_plain_drain(queue_url: str = "sqlite", n_jobs: int = 5000,
                        timeout: float = 300.0) -> float:
    with tempfile.TemporaryDirectory(prefix="pagesync-plain-") as tmp:
        settings = Settings(db=str(Path(tmp) / "bench.db"), queue=queue_url)
        flush_queue(settings)
        store_jobs(settings, n_jobs)
        conn = store.connect(settings.db, durable=False)
        log = open(Path(tmp) / "worker.log", "ab")
        proc = subprocess.Popen([sys.executable, "-m", "bench.plain_consumer"],
                                env=procs.child_env(settings), stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        started = time.perf_counter()
        try:
            while done_count(conn) < n_jobs:
                if proc.poll() is not None:
                    raise RuntimeError("plain consumer exited early")
                if time.perf_counter() - started > timeout:
                    raise TimeoutError(f"{done_count(conn)}/{n_jobs} done after {timeout}s")
                time.sleep(0.02)
        finally:
            procs.stop(proc, timeout=30)
            log.close()
        first, last = conn.execute("SELECT MIN(started_at), MAX(finished_at) FROM jobs").fetchone()
        conn.close()
        flush_queue(settings)
        return n_jobs / (last - first)
