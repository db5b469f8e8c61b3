"""Each record's processing state in SQLite (table `jobs`): the source of truth.

States: pending (committed, not yet handed to the queue) -> queued -> running -> done;
a failure goes to retrying (a delayed attempt is scheduled) and, past the retry limit,
to failed (the dead list), from where an operator retries or discards it.
"""
from __future__ import annotations

import random
import time

from . import store
from .store import transaction

RETRYABLE_STATES = ("failed", "discarded")


def backoff_delay(attempt: int, base: float, cap: float = 3600.0) -> float:
    """Exponential backoff with jitter: base * 2^(attempt-1), +-10%, capped."""
    delay = min(cap, base * (2 ** max(0, attempt - 1)))
    return round(delay * random.uniform(0.9, 1.1), 3)


def verdict(row, revision: int, max_attempts: int) -> str:
    """What to do with a delivered job given its row: 'run', 'skip' or 'exhausted'."""
    if row is None or row["state"] in RETRYABLE_STATES:
        return "skip"
    if row["state"] == "done" and (row["done_revision"] or 0) >= revision:
        return "skip"
    return "exhausted" if row["attempts"] + 1 > max_attempts else "run"


def _job_row(conn, task: str, user_id: int, record_id: str):
    return conn.execute("SELECT * FROM jobs WHERE task = ? AND user_id = ? AND record_id = ?",
                        (task, user_id, record_id)).fetchone()


def begin(conn, task: str, user_id: int, record_id: str, revision: int, worker: str,
          max_attempts: int) -> str:
    """Count the attempt before running it (so a job that kills its worker still uses up
    its attempts). Returns 'run', 'skip' (nothing to do) or 'exhausted'."""
    now = time.time()
    with transaction(conn):
        row = _job_row(conn, task, user_id, record_id)
        outcome = verdict(row, revision, max_attempts)
        if outcome == "exhausted":
            conn.execute(
                "UPDATE jobs SET state = 'failed', finished_at = ?, error = COALESCE(error, ?) "
                "WHERE task = ? AND user_id = ? AND record_id = ?",
                (now, f"gave up after {row['attempts']} attempts: the worker running it died "
                      "(killed, out of memory or crashed) before it finished",
                 task, user_id, record_id))
            record_event(conn, task, "failed", now)
        elif outcome == "run":
            conn.execute(
                "UPDATE jobs SET state = 'running', attempts = ?, started_at = ?, worker = ? "
                "WHERE task = ? AND user_id = ? AND record_id = ?",
                (row["attempts"] + 1, now, worker, task, user_id, record_id))
    return outcome


def begin_many(conn, jobs: list, worker: str, max_attempts: int) -> list[str]:
    """begin() for a batch of jobs in one transaction; one verdict per job: 'run' (attempt
    counted and committed), 'skip' (nothing to do, or the same job earlier in the batch) or
    'alone'. A job that already had an attempt (a retry, or a redelivery after its worker
    died) is left untouched and answered 'alone': the caller runs it on its own with
    begin(), so a job that kills its worker takes its batch-mates down at most once."""
    now = time.time()
    out, running, seen = [], [], set()
    with transaction(conn):
        for task, user_id, record_id, revision in jobs:
            key = (task, user_id, record_id)
            row = None if key in seen else _job_row(conn, *key)
            outcome = verdict(row, revision, max_attempts)
            if outcome != "skip" and row["attempts"] > 0:
                outcome = "alone"
            elif outcome == "run":
                running.append((now, worker, *key))
            seen.add(key)
            out.append(outcome)
        conn.executemany(
            "UPDATE jobs SET state = 'running', attempts = attempts + 1, started_at = ?, "
            "worker = ? WHERE task = ? AND user_id = ? AND record_id = ?", running)
    return out


def finish(conn, task: str, user_id: int, record_id: str, processed_revision: int,
           record: bool = True) -> None:
    """Inside the processing transaction: done, unless a newer revision arrived meanwhile.
    `record=False` leaves the 'done' event to the caller (record_events, for a batch)."""
    now = time.time()
    conn.execute(
        "UPDATE jobs SET done_revision = ?, finished_at = ?, error = NULL, traceback = NULL, "
        "state = CASE WHEN revision <= ? THEN 'done' ELSE state END "
        "WHERE task = ? AND user_id = ? AND record_id = ?",
        (processed_revision, now, processed_revision, task, user_id, record_id))
    if record:
        record_event(conn, task, "done", now)


def fail(conn, task: str, user_id: int, record_id: str, error: str, tb: str,
         max_attempts: int, base_delay: float, keep: int) -> float | None:
    """Record a failed attempt. Returns the delay before the next attempt, or None when
    the job goes to the failed list."""
    now = time.time()
    with transaction(conn):
        row = conn.execute("SELECT attempts FROM jobs WHERE task = ? AND user_id = ? AND "
                           "record_id = ?", (task, user_id, record_id)).fetchone()
        attempts = row["attempts"] if row else max_attempts
        final = attempts >= max_attempts
        delay = None if final else backoff_delay(attempts, base_delay)
        conn.execute(
            "UPDATE jobs SET state = ?, error = ?, traceback = ?, finished_at = ?, "
            "next_attempt_at = ? WHERE task = ? AND user_id = ? AND record_id = ?",
            ("failed" if final else "retrying", error[:2000], tb[-20000:], now,
             None if final else now + delay, task, user_id, record_id))
        record_event(conn, task, "failed" if final else "retrying", now)
        if final:
            prune_failed(conn, keep)
    return delay


def record_event(conn, task: str, outcome: str, now: float) -> None:
    """A finished attempt: one row for throughput, plus a lifetime counter (jobs_done,
    jobs_retrying, jobs_failed) for the dashboard's processed/failed totals and /metrics."""
    conn.execute("INSERT INTO job_events (ts, task, outcome) VALUES (?, ?, ?)", (now, task, outcome))
    store.bump_counter(conn, f"jobs_{outcome}", 1)


def record_events(conn, tasks: list, outcome: str, now: float) -> None:
    """record_event for many finished attempts at once (one statement each)."""
    conn.executemany("INSERT INTO job_events (ts, task, outcome) VALUES (?, ?, ?)",
                     [(now, task, outcome) for task in tasks])
    store.bump_counter(conn, f"jobs_{outcome}", len(tasks))


def prune_failed(conn, keep: int) -> None:
    """The failed list is capped: the oldest beyond `keep` are discarded."""
    conn.execute(
        "UPDATE jobs SET state = 'discarded', traceback = NULL WHERE state = 'failed' AND "
        "(task, user_id, record_id) IN (SELECT task, user_id, record_id FROM jobs WHERE "
        "state = 'failed' ORDER BY finished_at DESC LIMIT -1 OFFSET ?)", (keep,))


def prune_events(conn, older_than: float = 3600.0) -> None:
    with transaction(conn):
        conn.execute("DELETE FROM job_events WHERE ts < ?", (time.time() - older_than,))


# ---------------------------------------------------------------- operator actions

def failed_jobs(conn, limit: int = 100) -> list[dict]:
    rows = conn.execute(
        "SELECT j.task, u.name AS user, j.user_id, j.record_id, j.attempts, j.error, "
        "j.traceback, j.finished_at FROM jobs j JOIN users u ON u.id = j.user_id "
        "WHERE j.state = 'failed' ORDER BY j.finished_at DESC LIMIT ?", (limit,)).fetchall()
    return [dict(r, id=job_id(r["task"], r["user_id"], r["record_id"])) for r in rows]


def job_id(task: str, user_id: int, record_id: str) -> str:
    short = "visit" if task == store.TASK_VISIT else "aggregate"
    return f"{short}:{user_id}:{record_id}"


def parse_job_id(value: str) -> tuple:
    kind, _, rest = value.partition(":")
    user, _, record_id = rest.partition(":")
    task = {"visit": store.TASK_VISIT, "aggregate": store.TASK_AGGREGATE}.get(kind)
    if task is None or not user.isdigit() or not record_id:
        raise ValueError(f"not a job id: {value!r} (expected visit:USER_ID:RECORD or "
                         "aggregate:USER_ID:RECORD, USER_ID being the user's number, as in the "
                         "id column of `pagesync jobs failed`)")
    return task, int(user), record_id


def _select_failed(conn, ids: list | None) -> list:
    if ids is None:
        rows = conn.execute("SELECT task, user_id, record_id, revision FROM jobs "
                            "WHERE state = 'failed'").fetchall()
        return [tuple(r) for r in rows]
    out = []
    for value in ids:
        task, user_id, record_id = parse_job_id(value)
        row = conn.execute("SELECT task, user_id, record_id, revision FROM jobs WHERE task = ? "
                           "AND user_id = ? AND record_id = ? AND state = 'failed'",
                           (task, user_id, record_id)).fetchone()
        if row is None:
            raise LookupError(f"no failed job {value}")
        out.append(tuple(row))
    return out


def _move_failed(conn, ids: list | None, set_sql: str, extra: tuple = ()) -> list:
    """Apply `UPDATE jobs SET <set_sql>` to the chosen failed jobs; returns them."""
    with transaction(conn):
        jobs = _select_failed(conn, ids)
        conn.executemany(f"UPDATE jobs SET {set_sql} WHERE task = ? AND user_id = ? AND record_id = ?",
                         [(*extra, *job[:3]) for job in jobs])
    return jobs


def retry(conn, ids: list | None) -> list:
    """Failed jobs back to pending with fresh attempts; returns the jobs to enqueue."""
    return _move_failed(conn, ids, "state = 'pending', attempts = 0, error = NULL, traceback = NULL, "
                        "created_at = ?, next_attempt_at = NULL", (time.time(),))


def reprocess(conn, task: str | None = None) -> int:
    """Every processed job (of `task`, or both) back to pending, so the current processing
    rules run again on every stored record (after an upgrade that changed them). Each run
    swaps the record's old rollup contribution for the new one, so the rollups end up as a
    fresh computation would give. The worker's reconciler delivers them, in chunks."""
    with transaction(conn):
        return conn.execute(
            "UPDATE jobs SET state = 'pending', attempts = 0, created_at = 0, enqueued_at = NULL, "
            "next_attempt_at = NULL, error = NULL, traceback = NULL "
            "WHERE state = 'done'" + (" AND task = ?" if task else ""),
            (task,) if task else ()).rowcount


def discard(conn, ids: list | None) -> int:
    return len(_move_failed(conn, ids, "state = 'discarded', traceback = NULL"))
