"""The enqueue step alone: what handing one batch's jobs to the queue costs per job, bulk
(one transaction / one round trip) against one by one with a commit each (`huey.enqueue`).
In process, the same stored batches for both: a 1000-record batch is saved, then its
jobs delivered and marked queued (`queue.deliver`), timed. This is the part of ingest that
bulk enqueue changes; parsing and the batch write are the same in both modes.

    python -m bench.enqueue --queue sqlite
    python -m bench.enqueue --queue redis://127.0.0.1:6379/0
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from pagesync import payload, queue, store
from pagesync.config import Settings

from .drain import make_visits


def measure_enqueue(queue_url: str = "sqlite", mode: str = "bulk", batches: int = 5,
                    size: int = 1000) -> float:
    """Median microseconds per job to deliver one `size`-job batch, in `mode`."""
    folder = Path(tempfile.mkdtemp(prefix="pagesync-enqueue-"))
    try:
        settings = Settings(db=str(folder / "pagesync.db"), queue=queue_url)
        store.init_db(settings.db)
        conn = store.connect(settings.db)
        store.create_token(conn, "bench")
        huey = queue.make_huey(settings)
        huey.flush()
        visits = make_visits(size * batches, seed=7)
        per_job = []
        for i in range(batches):
            body = {"pageVisits": visits[i * size:(i + 1) * size], "anonymousClientId": "anon"}
            saved = store.save_batch(conn, 1, payload.parse_batch(body, int(time.time() * 1000)))
            started = time.perf_counter()
            if not queue.deliver(conn, huey, saved["jobs"], mode):
                raise RuntimeError("could not enqueue")
            per_job.append((time.perf_counter() - started) / len(saved["jobs"]) * 1e6)
        huey.flush()
        conn.close()
        return statistics.median(per_job)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--queue", default="sqlite")
    a = ap.parse_args(argv)
    bulk, naive = measure_enqueue(a.queue, "bulk"), measure_enqueue(a.queue, "naive")
    print(f"bulk {bulk:.1f} us/job, one by one {naive:.1f} us/job: {naive / bulk:.1f}x")


if __name__ == "__main__":
    main()
