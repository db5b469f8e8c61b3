"""How far any server could get from the naive baseline by enqueueing faster.

The naive baseline is the same server with one queue commit per job, so its CPU per
record is (everything else) + (the naive enqueue step). A server whose enqueue step cost
nothing, and whose everything else was only the bare minimum, would reach
(bare + naive step) / bare. The bare minimum measured here (CPU time, as the server's
per-record figures are): parse each 1000-record body
with orjson and write every record (its JSON) and one job row per record in one fsynced
transaction per batch (WAL, synchronous=FULL, as the server's 200 requires): no HTTP, no
validation, no sanitising, no merge with stored versions. In process, same bodies as the
ingest benchmark.

    python -m bench.ceiling
"""
from __future__ import annotations

import shutil
import sqlite3
import tempfile
import time
from pathlib import Path

import orjson

from . import payloads

SCHEMA = (
    "CREATE TABLE records (user_id INTEGER, id TEXT, data TEXT, PRIMARY KEY (user_id, id)) "
    "WITHOUT ROWID",
    "CREATE TABLE jobs (task TEXT, user_id INTEGER, record_id TEXT, state TEXT, "
    "PRIMARY KEY (task, user_id, record_id)) WITHOUT ROWID",
)


def record_id(rec: dict) -> str:
    return rec.get("id") or rec.get("visitId") or f"tab_{rec.get('startTime')}_{rec.get('tabId')}"


def measure_bare(records: int = 30000) -> float:
    """CPU microseconds per record of the bare parse-and-store loop (the fsync waits,
    which use no CPU, are left out as they are from the server's figures)."""
    bodies = payloads.bodies(records, 1000, seed=11)
    folder = Path(tempfile.mkdtemp(prefix="pagesync-ceiling-"))
    try:
        conn = sqlite3.connect(folder / "bare.db", isolation_level=None)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        for ddl in SCHEMA:
            conn.execute(ddl)
        started = time.process_time()
        for raw, _ in bodies:
            body = orjson.loads(raw)
            rows = [(1, record_id(r), orjson.dumps(r, option=orjson.OPT_SORT_KEYS).decode())
                    for r in body["pageVisits"] or body["tabAggregates"]]
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany("INSERT INTO records VALUES (?, ?, ?)", rows)
            conn.executemany("INSERT INTO jobs VALUES ('job', ?, ?, 'pending')",
                             [(u, i) for u, i, _ in rows])
            conn.execute("COMMIT")
        elapsed = time.process_time() - started
        conn.close()
        return elapsed / sum(n for _, n in bodies) * 1e6
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    print(f"bare parse-and-store: {measure_bare():.1f} us/record")
