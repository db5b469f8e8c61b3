"""The two Huey tasks, ProcessPageVisit and ProcessTabAggregate. Thin: count the attempt,
process inside one transaction (rules in processing.py, writes in rollups.py), record the
outcome; failures are retried with exponential backoff, then land in the failed list."""
from __future__ import annotations

import logging
import os
import signal
import threading
import time
import traceback

from . import jobstate, rollups, store
from .config import Settings
from .store import TASK_AGGREGATE, TASK_VISIT

log = logging.getLogger("pagesync.jobs")
PROCESSORS = {TASK_VISIT: rollups.process_visit, TASK_AGGREGATE: rollups.process_aggregate}
# "name": this worker's, as it beats in the workers table; "jobs": what its jobs' `worker`
# column says: the name, or name/PID in a process worker's child (set as it starts), so
# the jobs of a child that died can be told from its live siblings' (worker.reclaim).
WORKER_NAME = {"name": store.worker_name()}
WORKER_NAME["jobs"] = WORKER_NAME["name"]


def child_label(name: str, pid: int) -> str:
    return f"{name}/{pid}"


class JobRunner:
    """Runs job messages against the database; one per worker process (and thread)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.pool = store.ConnectionPool(settings.db, durable=False)
        self.max_attempts = settings.retries + 1
        # The threads of one process take turns here rather than in SQLite's busy
        # handler, which sleeps in steps of up to 100 ms while the other one writes.
        self.write_lock = threading.Lock()

    def _write(self, fn):
        with self.write_lock:
            return store.with_retry(fn)

    def run(self, task: str, user_id: int, record_id: str, revision: int):
        """Returns None when done or skipped, or the retry delay after a failure."""
        conn = self.pool.get()
        verdict = self._write(lambda: jobstate.begin(
            conn, task, user_id, record_id, revision, WORKER_NAME["jobs"], self.max_attempts))
        if verdict != "run":
            return None
        return self._execute(conn, (task, user_id, record_id, revision))

    def run_many(self, jobs: list) -> list:
        """Run a batch of jobs [(task, user_id, record_id, revision)] with one transaction to
        count their attempts and one to process them all; on an error the batch is processed
        again one job at a time, so only the failing job is retried. Returns
        [(job, retry delay)] for the jobs that failed and must be tried again."""
        if len(jobs) == 1:
            delay = self.run(*jobs[0])
            return [] if delay is None else [(jobs[0], delay)]
        conn = self.pool.get()
        verdicts = self._write(lambda: jobstate.begin_many(
            conn, jobs, WORKER_NAME["jobs"], self.max_attempts))
        outcomes = [(job, self.run(*job)) for job, v in zip(jobs, verdicts) if v == "alone"]
        batch = []
        for job in (job for job, v in zip(jobs, verdicts) if v == "run"):
            try:
                apply_fault(self.settings.fault, job[0], job[2])
                batch.append(job)
            except Exception as exc:
                outcomes.append((job, self._failed(conn, job, exc)))
        try:
            if batch:
                self._write(lambda: self._process(conn, batch))
                log.debug("%d jobs done", len(batch))
        except Exception as exc:  # a busy database says it all in one line
            log.warning("a batch of %d jobs failed (%s: %s); running them one by one",
                        len(batch), type(exc).__name__, exc,
                        exc_info=not isinstance(exc, store.StorageBusy))
            outcomes += [(job, self._execute(conn, job)) for job in batch]
        return [(job, delay) for job, delay in outcomes if delay is not None]

    def _execute(self, conn, job: tuple):
        """Process one job whose attempt is counted; None or the retry delay."""
        try:
            apply_fault(self.settings.fault, job[0], job[2])
            self._write(lambda: self._process(conn, [job]))
            log.debug("%s %s:%s done", job[0], job[1], job[2])
            return None
        except Exception as exc:
            return self._failed(conn, job, exc)

    def _failed(self, conn, job: tuple, exc: Exception):
        task, user_id, record_id, _ = job
        log.warning("%s %s:%s failed: %s", task, user_id, record_id, exc)
        return self._write(lambda: jobstate.fail(
            conn, task, user_id, record_id, f"{type(exc).__name__}: {exc}",
            traceback.format_exc(), self.max_attempts, self.settings.retry_base_delay,
            self.settings.failed_keep))

    def _process(self, conn, jobs: list) -> None:
        """Process jobs in one transaction: all of them or none."""
        with store.transaction(conn):
            for task, user_id, record_id, _ in jobs:
                row = store.load_record(conn, task, user_id, record_id)
                # a record that is gone has nothing to process
                done = (PROCESSORS[task](conn, row, self.settings.timezone)
                        if row is not None else 1 << 30)
                jobstate.finish(conn, task, user_id, record_id, done, record=False)
            jobstate.record_events(conn, [job[0] for job in jobs], "done", time.time())


def apply_fault(fault: str, task: str, record_id: str) -> None:
    """Test-only fault switch (PAGESYNC_FAULT): slow-job:SECONDS, fail-record:TEXT,
    kill-record:TEXT (the worker process dies, like a segfault or the OOM killer)."""
    if not fault:
        return
    kind, _, arg = fault.partition(":")
    if kind == "slow-job":
        time.sleep(float(arg))
    elif kind == "fail-record" and arg in record_id:
        raise RuntimeError(f"injected failure for {record_id}")
    elif kind == "kill-record" and arg in record_id:
        os.kill(os.getpid(), signal.SIGKILL)


_runners: dict = {}
_lock = threading.Lock()


def runner_for(settings: Settings) -> JobRunner:
    key = (os.getpid(), settings)
    with _lock:
        if key not in _runners:
            _runners[key] = JobRunner(settings)
        return _runners[key]


def register(huey, settings: Settings) -> None:
    """Register both tasks on a Huey instance (huey.pagesync_tasks maps name -> task)."""

    def make(task_name: str):
        def job(user_id: int, record_id: str, revision: int):
            delay = runner_for(settings).run(task_name, user_id, record_id, revision)
            if delay is not None:
                schedule_retry(huey, (task_name, user_id, record_id, revision), delay)
        job.__name__ = task_name
        job.__module__ = __name__
        return huey.task(name=task_name)(job)

    huey.pagesync_tasks = {name: make(name) for name in (TASK_VISIT, TASK_AGGREGATE)}


def schedule_retry(huey, job: tuple, delay: float) -> None:
    """The next attempt of a failed job, as a delayed Huey message (Huey's schedule)."""
    task, user_id, record_id, revision = job
    huey.pagesync_tasks[task].schedule(args=(user_id, record_id, revision), delay=delay)
