"""`pagesync worker`: the Huey consumer plus what Huey lacks for our guarantees and speed:
workers that take jobs in batches, a supervisor (heartbeat, so jobs of a dead worker are
found; the reconciler; pruning), and a graceful shutdown on SIGTERM as well as SIGINT.

Process workers: the consumer's main process keeps no thread and no SQLite connection, so
forking a worker (at start, or to replace a dead one) never copies a held lock; the
supervisor is one more child of the consumer, and every process opens its own connections
(the job runner's pool is keyed by pid)."""
from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import time

import redis
from huey.consumer import BaseProcess, Consumer, ProcessEnvironment, Worker

from . import jobs, jobstate, processing, store
from .config import Settings
from .queue import dequeue_batch, make_huey, reconcile

log = logging.getLogger("pagesync.worker")
PR_SET_PDEATHSIG = 1  # prctl(2)
# A batch grows while it takes less than this, and shrinks when it takes more: fast jobs go
# in batches (one transaction each), slow ones one at a time, and the work in flight at a
# shutdown stays short.
BATCH_SECONDS = 0.2


def next_batch_size(size: int, taken: int, seconds: float, limit: int) -> int:
    """The next batch size: halved when a batch ran past BATCH_SECONDS, doubled (up to
    `limit`) when a full batch took under half of it."""
    if seconds > BATCH_SECONDS:
        return max(1, size // 2)
    if taken >= size and seconds < BATCH_SECONDS / 2:
        return min(max(1, limit), size * 2)
    return min(size, max(1, limit))


class BatchWorker(Worker):
    """A Huey worker that dequeues up to `size` messages at once and runs pagesync's tasks
    through JobRunner.run_many; other messages (and messages not yet due) go through
    Huey's own execute."""

    def __init__(self, huey, stop_flag, default_delay, max_delay, backoff, max_tasks=None,
                 settings: Settings | None = None):
        super().__init__(huey, stop_flag, default_delay, max_delay, backoff, max_tasks)
        self.settings = settings
        self.size = 1

    def loop(self, now=None):
        try:
            messages = dequeue_batch(self.huey, self.size)
        except Exception:
            self._logger.exception("Error reading from queue")
            self.sleep()
            return
        if not messages:
            if not self.huey.storage.blocking:
                self.sleep()
            return
        self.delay = self.default_delay
        started = time.monotonic()
        self.run_messages(messages, now)
        self.size = next_batch_size(self.size, len(messages), time.monotonic() - started,
                                    self.settings.worker_batch)

    def run_messages(self, messages: list, now=None) -> None:
        ours, tasks = [], []
        for data in messages:
            try:
                task = self.huey.deserialize_task(data)
            except Exception:
                self._logger.exception("Dropped a message that cannot be read")
                continue
            if task.name in self.huey.pagesync_tasks and self.huey.ready_to_run(task, now):
                ours.append(task)
            else:
                self.execute(task, now)
        jobs_ = [(t.name, *t.args) for t in ours]
        self.huey._tasks_in_flight.update(ours)  # a process worker can be interrupted
        try:
            retries = jobs.runner_for(self.settings).run_many(jobs_) if jobs_ else []
        finally:
            self.huey._tasks_in_flight.difference_update(ours)
        for job, delay in retries:
            jobs.schedule_retry(self.huey, job, delay)

    def execute(self, task, now=None) -> None:
        try:
            self.huey.execute(task, now)
        except Exception:
            self._logger.exception("Unhandled error during execution of task %s.", task.id)


class Supervisor(BaseProcess):
    """Heartbeat, reconciler and pruning: one more thread or process of the consumer."""
    process_name = "Supervisor"

    def __init__(self, huey, stop_flag, settings: Settings, workers: int, kind: str, pid: int):
        super().__init__(huey, stop_flag)
        self.settings, self.workers, self.kind, self.pid = settings, workers, kind, pid
        self.name_ = jobs.WORKER_NAME["name"]
        self.conn = self.queue = None
        self.next_reconcile = 0.0
        self.next_prune = 0.0  # at start, then every 5 minutes

    def initialize(self) -> None:
        # opened here, in the thread or process that uses them: never shared across a fork
        self.conn = store.connect(self.settings.db, durable=False)
        self.queue = make_huey(self.settings)

    def loop(self, now=None) -> None:
        try:
            self.beat()
            if time.monotonic() >= self.next_reconcile:
                reconcile(self.conn, self.queue, self.settings, keep_going=self.between_chunks)
                self.next_reconcile = time.monotonic() + self.settings.reconcile_interval
            if time.monotonic() >= self.next_prune:
                prune(self.conn, self.settings)
                self.next_prune = time.monotonic() + 300
        except Exception:
            self._logger.exception("supervisor round failed; trying again")
        self.stop_flag.wait(self.settings.worker_heartbeat)

    def beat(self) -> None:
        beat(self.conn, self.settings, self.name_, self.pid, self.workers, self.kind, "running")

    def between_chunks(self) -> bool:
        """A long reconcile pass (many jobs lost in an outage) beats as it goes, so this
        worker does not look dead to the other consumers, and ends when the worker stops."""
        self.beat()
        return not self.stop_flag.is_set()

    def shutdown(self) -> None:
        if self.conn is not None:
            self.conn.close()


def beat(conn, settings: Settings, name: str, pid: int, workers: int, kind: str,
         state: str) -> None:
    now = time.time()
    with store.transaction(conn):
        conn.execute(
            "INSERT INTO workers (name, pid, hostname, started_at, last_seen, concurrency, "
            "kind, queue, state) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO "
            "UPDATE SET last_seen = excluded.last_seen, state = excluded.state",
            (name, pid, socket.gethostname(), now, now, workers, kind,
             settings.describe_queue(), state))
        conn.execute("DELETE FROM workers WHERE last_seen < ?", (now - settings.workers_keep,))


def prune(conn, settings: Settings) -> None:
    """Keep what would grow without bound bounded: job events past events_keep, the log
    of sync requests past syncs_keep, and the failed list past failed_keep (jobs that
    exhaust their attempts by killing their worker reach it without the pruning a raised
    error gets)."""
    jobstate.prune_events(conn, settings.events_keep)
    store.prune_syncs(conn, settings.syncs_keep)
    with store.transaction(conn):
        jobstate.prune_failed(conn, settings.failed_keep)


class RepeatedErrors(logging.Filter):
    """An error that repeats (the queue is down: every poll fails) is logged once per
    `every` seconds, with its traceback only the first time (never for a connection
    error: the message says it all); rendering tracebacks at each poll would burn the
    CPU the worker is meant to leave alone while it waits."""

    def __init__(self, every: float = 30.0):
        super().__init__()
        self.every, self.last = every, {}

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.exc_info or record.exc_info[1] is None:
            return True
        exc = record.exc_info[1]
        key = (record.name, record.msg, type(exc))
        now = time.monotonic()
        if key in self.last and now - self.last[key] < self.every:
            return False
        if key in self.last or isinstance(exc, CONNECTION_ERRORS):
            again = " (still failing)" if key in self.last else ""
            record.msg, record.args = f"{record.getMessage()}: {exc}{again}", ()
            record.exc_info = record.exc_text = None
        self.last[key] = now
        return True


CONNECTION_ERRORS = (OSError, redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
QUIET_LOGGERS = ("huey.consumer.Worker", "huey.consumer.Scheduler", "huey.consumer.Supervisor",
                 "pagesync.queue")


class GracefulProcessEnvironment(ProcessEnvironment):
    """Process children ignore SIGINT and SIGTERM (a Ctrl-C reaches the whole process
    group; only the parent decides), and are interrupted past the shutdown timeout by
    SIGUSR1."""

    def __init__(self, graceful, interrupt):
        super().__init__(signal.SIGTERM, signal.SIGUSR1)

    def init_child(self, process):
        super().init_child(process)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        die_with_parent(self.parent_pid)

    def create_process(self, runnable, name):
        self.parent_pid = os.getpid()
        return super().create_process(runnable, name)


def die_with_parent(parent_pid: int) -> None:
    """Linux: this child gets SIGKILL when the consumer dies (kill -9, OOM killer) instead
    of living on as an orphan that still takes jobs, and heartbeats under the dead worker's
    name, so its jobs would never be handed to the next worker. Dead, its running jobs are
    found by the reconciler like any dead worker's."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: no such call
        return
    if os.getppid() != parent_pid:  # the consumer died before prctl took effect
        os._exit(1)


class PagesyncConsumer(Consumer):
    """Huey's consumer with BatchWorker workers and the Supervisor, started after the
    workers (so no thread exists when they are forked)."""
    worker_class = BatchWorker

    def __init__(self, huey, settings: Settings, **options):
        self.settings = settings
        super().__init__(huey, **options)
        self.supervisor = self._new_supervisor()
        # Both SIGTERM (systemd, Docker, Kubernetes) and SIGINT (Ctrl-C) stop gracefully.
        self._signal_actions[signal.SIGINT] = (False, True)
        self._signal_actions[signal.SIGTERM] = (False, True)

    def get_environment(self, worker_type):
        if worker_type == "process":
            return GracefulProcessEnvironment(self._graceful_sig, self._interrupt_sig)
        return super().get_environment(worker_type)

    def _create_worker(self):
        return self.worker_class(
            huey=self.huey, stop_flag=self.stop_flag, default_delay=self.default_delay,
            max_delay=self.max_delay, backoff=self.backoff, max_tasks=self.max_tasks,
            settings=self.settings)

    def _new_supervisor(self):
        sup = Supervisor(self.huey, self.stop_flag, self.settings, self.workers,
                         self.worker_type, os.getpid())
        return self._create_process(sup, "Supervisor")

    def start(self):
        super().start()
        self.supervisor.start()

    def _join_workers(self):
        done = super()._join_workers()
        self.supervisor.join(self.settings.worker_heartbeat + 1)
        return done

    def check_worker_health(self):
        healthy = super().check_worker_health()
        if not self.environment.is_alive(self.supervisor):
            self._logger.warning("Supervisor died, restarting.")
            self.supervisor = self._new_supervisor()
            self.supervisor.start()
        return healthy


def run_worker(settings: Settings, workers: int = 2, kind: str = "thread") -> None:
    """Run the consumer until SIGTERM/SIGINT; in-flight jobs finish within
    settings.shutdown_timeout, the rest go back to the queue via the reconciler."""
    store.init_db(settings.db)
    repeated = RepeatedErrors()
    for name in QUIET_LOGGERS:
        logging.getLogger(name).addFilter(repeated)
    processing.warm_up()  # before forking: process workers share the parsed suffix list
    huey = make_huey(settings)
    consumer = PagesyncConsumer(
        huey, settings, workers=workers, worker_type=kind, initial_delay=0.02, backoff=1.5,
        max_delay=0.25, scheduler_interval=1, periodic=True, check_worker_health=True,
        health_check_interval=5, shutdown_timeout=settings.shutdown_timeout,
        graceful_signal="TERM")
    name = jobs.WORKER_NAME["name"]
    log.info("worker %s: %d %s worker(s) on %s, database %s", name, workers, kind,
             settings.describe_queue(), settings.db)
    try:
        consumer.run()
    finally:
        conn = store.connect(settings.db, durable=False)
        try:
            store.with_retry(lambda: beat(conn, settings, name, os.getpid(), workers, kind,
                                          "stopped"))
        finally:
            conn.close()
        log.info("worker %s stopped", name)
