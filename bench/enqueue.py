"""The enqueue step alone: what handing one batch's jobs to the queue adds to storing the
batch, per job, bulk against one by one with a commit each (`huey.enqueue`), in process.

The same 1000-record batches are stored three ways on fresh databases, each timed from
the batch write to the jobs being queued:
  none:  the batch write alone (`store.save_batch`, its jobs left 'pending');
  bulk:  what the server does: the jobs are written 'queued' in the batch's own
         transaction; on the embedded SQLite queue that is all (the jobs table is the
         queue), on Redis one LPUSH after the commit (`queue.deliver`);
  naive: the batch write, then `huey.enqueue` job by job (`queue.deliver(mode="naive")`).
The enqueue step is (bulk or naive) - none. Parsing, validation and the fsynced batch
write cost the same in every mode.

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

MODES = ("none", "bulk", "naive")


def store_batches(queue_url: str, mode: str, batches: int, size: int) -> list[float]:
    """Seconds per batch to store `batches` batches of `size` visits and enqueue in `mode`."""
    folder = Path(tempfile.mkdtemp(prefix="pagesync-enqueue-"))
    try:
        settings = Settings(db=str(folder / "pagesync.db"), queue=queue_url)
        store.init_db(settings.db)
        conn = store.connect(settings.db)
        store.create_token(conn, "bench")
        huey = queue.make_huey(settings)
        huey.flush()
        in_table = queue.queued_in_batch(huey)
        visits = make_visits(size * batches, seed=7)
        now = int(time.time() * 1000)
        parsed = [payload.parse_batch({"pageVisits": visits[i * size:(i + 1) * size],
                                       "anonymousClientId": "anon"}, now)
                  for i in range(batches)]
        times = []
        for batch in parsed:
            started = time.perf_counter()
            saved = store.save_batch(conn, 1, batch, queued=mode == "bulk")
            sends = mode == "naive" or (mode == "bulk" and not in_table)
            if sends and not queue.deliver(conn, huey, saved["jobs"], mode,
                                           committed_queued=mode == "bulk"):
                raise RuntimeError("could not enqueue")
            times.append(time.perf_counter() - started)
        huey.flush()
        conn.close()
        return times
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def measure_enqueue(queue_url: str = "sqlite", batches: int = 9, size: int = 1000) -> dict:
    """Median microseconds per job of the enqueue step, {'bulk': us, 'naive': us}, and of
    the batch write alone ('none')."""
    per_job = {m: statistics.median(store_batches(queue_url, m, batches, size)) / size * 1e6
               for m in MODES}
    return {"none": per_job["none"],
            "bulk": max(per_job["bulk"] - per_job["none"], 0.01),
            "naive": per_job["naive"] - per_job["none"]}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--queue", default="sqlite")
    a = ap.parse_args(argv)
    r = measure_enqueue(a.queue)
    print(f"batch write alone {r['none']:.1f} us/record; enqueue step: bulk {r['bulk']:.1f} "
          f"us/job, one by one {r['naive']:.1f} us/job: {r['naive'] / r['bulk']:.1f}x")


if __name__ == "__main__":
    main()
