"""One snapshot of queue and job state; `watch`, the dashboard and /metrics all read it."""
from __future__ import annotations

import time

from . import jobstate, store
from .config import hide_password
from .queue import queue_depth, queued_in_batch, scheduled_depth
from .store import TASKS

SHOWN_STATES = ("queued", "running", "retrying", "done", "failed")


def task_counts(conn) -> dict:
    """{task: {queued, running, retrying, done, failed}} from the jobs table
    ('pending' jobs are committed but not yet handed to the queue: shown as queued)."""
    counts = {task: dict.fromkeys(SHOWN_STATES, 0) for task in TASKS}
    for row in conn.execute("SELECT task, state, COUNT(*) AS n FROM jobs GROUP BY task, state"):
        state = "queued" if row["state"] == "pending" else row["state"]
        if row["task"] in counts and state in counts[row["task"]]:
            counts[row["task"]][state] += row["n"]
    return counts


def pending_count(conn) -> int:
    """Jobs committed with their records but not yet handed to the queue (Redis or a
    separate queue file away, or the moment between commit and enqueue): the reconciler
    delivers them. Counted among 'queued' in the per-task figures."""
    return conn.execute("SELECT COUNT(*) FROM jobs WHERE state = 'pending'").fetchone()[0]


def unsent_count(conn, depth: int, workers_: list, embedded: bool, now: float | None = None) -> int:
    """Jobs queued in SQLite whose messages the queue no longer has (a Redis restarted
    without its data). Counted only where it is sure: a queue apart from the database,
    empty, no worker taking from it, jobs queued over 5 s ago. A worker's reconciler sends
    them again (`watch` and the dashboard say so, as 'Enqueued' alone would not)."""
    if embedded or depth != 0 or any(w["state"] == "alive" for w in workers_):
        return 0
    return conn.execute("SELECT COUNT(*) FROM jobs WHERE state = 'queued' AND enqueued_at < ?",
                        ((now or time.time()) - 5,)).fetchone()[0]


def throughput(conn, window: float = 60.0, now: float | None = None) -> dict:
    """Jobs finished per second over the last `window` seconds, and per 5 s bucket."""
    now = now or time.time()
    rows = conn.execute("SELECT ts, outcome FROM job_events WHERE ts >= ?", (now - window,)).fetchall()
    done = sum(1 for r in rows if r["outcome"] == "done")
    failed = sum(1 for r in rows if r["outcome"] != "done")
    buckets = [0] * int(window // 5)
    for r in rows:
        if r["outcome"] == "done":
            i = min(len(buckets) - 1, int((now - r["ts"]) // 5))
            buckets[len(buckets) - 1 - i] += 1
    return {"window_seconds": window, "done_per_second": round(done / window, 2),
            "failed_per_second": round(failed / window, 2),
            "series": [round(b / 5, 2) for b in buckets]}


def workers(conn, heartbeat: float, now: float | None = None) -> list:
    now = now or time.time()
    rows = conn.execute("SELECT * FROM workers WHERE last_seen >= ? ORDER BY started_at",
                        (now - 300,)).fetchall()
    out = []
    for r in rows:
        alive = r["state"] != "stopped" and r["last_seen"] >= now - 3 * heartbeat - 1
        out.append({"name": r["name"], "pid": r["pid"], "hostname": r["hostname"],
                    "concurrency": r["concurrency"], "kind": r["kind"],
                    "queue": hide_password(r["queue"]),
                    "state": "alive" if alive else ("stopped" if r["state"] == "stopped" else "lost"),
                    "last_seen_seconds_ago": round(now - r["last_seen"], 1),
                    "started_at": r["started_at"]})
    return out


def in_flight(conn, limit: int = 50, now: float | None = None) -> list:
    now = now or time.time()
    rows = conn.execute(
        "SELECT task, user_id, record_id, attempts, started_at, worker FROM jobs "
        "WHERE state = 'running' ORDER BY started_at LIMIT ?", (limit,)).fetchall()
    return [{"task": r["task"], "user_id": r["user_id"], "record_id": r["record_id"],
             "attempts": r["attempts"], "worker": r["worker"],
             "age_seconds": round(now - (r["started_at"] or now), 1)} for r in rows]


def recent_failures(conn, limit: int = 10) -> list:
    rows = conn.execute(
        "SELECT task, user_id, record_id, attempts, error, finished_at, state FROM jobs "
        "WHERE state IN ('failed', 'retrying') ORDER BY finished_at DESC LIMIT ?", (limit,)).fetchall()
    return [dict(r) for r in rows]


def summary(totals: dict, counters: dict) -> dict:
    """The Sidekiq-style headline figures. processed / failed: lifetime counts of finished
    attempts (a failed attempt counts whether it is retried or not); enqueued: jobs waiting
    for a worker; retrying: jobs waiting for a retry; dead: the failed list."""
    return {"processed": counters.get("jobs_done", 0),
            "failed": counters.get("jobs_failed", 0) + counters.get("jobs_retrying", 0),
            "enqueued": totals["queued"], "retrying": totals["retrying"], "dead": totals["failed"]}


RECORD_INFO_SQL = {
    store.TASK_VISIT: "SELECT json_extract(data, '$.url') AS url, json_extract(data, '$.title') "
                      "AS title FROM page_visits WHERE user_id = ? AND id = ?",
    store.TASK_AGGREGATE: "SELECT json_extract(data, '$.current_url') AS url, NULL AS title "
                          "FROM tab_aggregates WHERE user_id = ? AND id = ?",
}


def record_info(conn, task: str, user_id: int, record_id: str) -> dict:
    """The url and title (visits only) of a stored record, for showing beside its jobs."""
    row = conn.execute(RECORD_INFO_SQL[task], (user_id, record_id)).fetchone()
    return {"url": row["url"], "title": row["title"]} if row else {"url": None, "title": None}


def failed_list(conn, limit: int = 25, traceback_chars: int = 6000) -> list:
    """The dead list with errors, (the end of) tracebacks and the record's url and title."""
    rows = jobstate.failed_jobs(conn, limit)
    for r in rows:
        r["traceback"] = (r["traceback"] or "")[-traceback_chars:]
        r.update(record_info(conn, r["task"], r["user_id"], r["record_id"]))
    return rows


def record_jobs(conn, record_id: str, limit: int = 20) -> list:
    """Every job of a record id (any user, both tasks) with its state, url and title."""
    out = []
    for task in TASKS:
        rows = conn.execute(
            "SELECT j.*, u.name AS user FROM jobs j JOIN users u ON u.id = j.user_id "
            "WHERE j.task = ? AND j.record_id = ? LIMIT ?", (task, record_id, limit)).fetchall()
        out += [{"id": jobstate.job_id(task, r["user_id"], record_id), "task": task,
                 "user": r["user"], "state": r["state"], "attempts": r["attempts"],
                 "revision": r["revision"], "done_revision": r["done_revision"],
                 "error": r["error"], "traceback": r["traceback"] or "",
                 "created_at": r["created_at"], "finished_at": r["finished_at"],
                 "worker": r["worker"], **record_info(conn, task, r["user_id"], record_id)}
                for r in rows]
    return out


def snapshot(conn, huey, heartbeat: float = 2.0) -> dict:
    tasks = task_counts(conn)
    totals = {state: sum(t[state] for t in tasks.values()) for state in SHOWN_STATES}
    counters = store.counters(conn)
    depth = queue_depth(huey)
    seen = workers(conn, heartbeat)
    return {
        "summary": summary(totals, counters),
        "generated_at": time.time(),
        "queue_depth": depth,
        "pending": pending_count(conn),
        "scheduled": scheduled_depth(huey) if depth >= 0 else -1,  # no second wait on a dead queue
        "tasks": tasks,
        "totals": totals,
        "throughput": throughput(conn),
        "workers": seen,
        "unsent": unsent_count(conn, depth, seen, queued_in_batch(huey)),
        "in_flight": in_flight(conn),
        "recent_failures": recent_failures(conn),
        "failed_jobs": failed_list(conn),
        "records": counters,
    }
