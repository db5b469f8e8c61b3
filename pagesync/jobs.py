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
WORKER_NAME = {"name": store.worker_name()}


class JobRunner:
    """Runs one job message against the database; one per worker process."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.pool = store.ConnectionPool(settings.db, durable=False)
        self.max_attempts = settings.retries + 1

    def run(self, task: str, user_id: int, record_id: str, revision: int):
        """Returns None when done or skipped, or the retry delay after a failure."""
        conn = self.pool.get()
        verdict = store.with_retry(lambda: jobstate.begin(
            conn, task, user_id, record_id, revision, WORKER_NAME["name"], self.max_attempts))
        if verdict != "run":
            return None
        try:
            apply_fault(self.settings.fault, task, record_id)
            store.with_retry(lambda: self._process(conn, task, user_id, record_id))
            log.info("%s %s:%s done", task, user_id, record_id)
            return None
        except Exception as exc:
            log.warning("%s %s:%s failed: %s", task, user_id, record_id, exc)
            return store.with_retry(lambda: jobstate.fail(
                conn, task, user_id, record_id, f"{type(exc).__name__}: {exc}",
                traceback.format_exc(), self.max_attempts, self.settings.retry_base_delay,
                self.settings.failed_keep))

    def _process(self, conn, task, user_id, record_id):
        with store.transaction(conn):
            row = store.load_record(conn, task, user_id, record_id)
            if row is None:  # the record is gone: nothing to process
                jobstate.finish(conn, task, user_id, record_id, 1 << 30)
                return
            done = PROCESSORS[task](conn, row, self.settings.timezone)
            jobstate.finish(conn, task, user_id, record_id, done)


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
                wrappers[task_name].schedule(args=(user_id, record_id, revision), delay=delay)
        job.__name__ = task_name
        job.__module__ = __name__
        return huey.task(name=task_name)(job)

    wrappers = {name: make(name) for name in (TASK_VISIT, TASK_AGGREGATE)}
    huey.pagesync_tasks = wrappers
