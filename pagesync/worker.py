"""`pagesync worker`: the Huey consumer plus what Huey lacks for our guarantees and speed:
workers that take jobs in batches, a supervisor (heartbeat, so jobs of a dead worker are
found; the reconciler; pruning), and a graceful shutdown on SIGTERM as well as SIGINT.

Process workers: the consumer's main process keeps no thread and no SQLite connection (it
opens them only to put a dead child's jobs back in the queue, and closes them), so
forking a worker (at start, or to replace a dead one) never copies a held lock; the
supervisor is one more child of the consumer, and every process opens its own connections
(the job runner's pool is keyed by pid)."""
from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import socket
import sqlite3
import threading
import time
from contextlib import contextmanager

import redis
from huey.consumer import BaseProcess, Consumer, ProcessEnvironment, Scheduler, Worker

from . import jobs, jobstate, processing, store
from .config import Settings
from .queue import OUTAGE_WORDS, dequeue_batch, let_go, make_huey, reclaim, reconcile

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


# ---------------------------------------------------------------- outages

REMINDER_SECONDS = 60.0
OUTAGES = ("database", "queue")
WORDS = OUTAGE_WORDS


def outage_of(exc: BaseException, busy: str = "database") -> str | None:
    """The expected outage an error means, or None for an unexpected error: a Redis queue
    that does not answer ("queue"), or a SQLite file locked past its timeout (`busy`:
    "database", or "queue" for an operation on a queue in its own SQLite file)."""
    if isinstance(exc, (redis.ConnectionError, redis.TimeoutError, ConnectionError)):
        return "queue"
    if isinstance(exc, store.StorageBusy) or (
            isinstance(exc, sqlite3.OperationalError) and store.is_busy(exc)):
        return busy
    return None


class Outages:
    """A busy database or an unreachable queue is an expected condition, not a bug: the
    worker keeps retrying and recovers by itself. So it is logged like one, once for the
    whole consumer: a WARNING line (no traceback) when the first error shows it, a
    reminder at most every `reminder` s while it lasts, and an INFO line with how long it
    lasted when an operation that needs it succeeds again.

    Shared by the consumer's threads, and by its processes: the state lives in shared
    memory made before they fork. Callers report errors with `failed(exc)` (False: not an
    outage, log it as the error it is) and successes with `ok(outage)`: only after an
    operation that fails while the outage lasts (a write to the database, a call to Redis),
    so a read that SQLite allows under a lock never ends an outage early."""

    def __init__(self, reminder: float = REMINDER_SECONDS, clock=time.monotonic,
                 logger: logging.Logger | None = None):
        self.reminder, self.clock, self.log = reminder, clock, logger or log
        size = 3 * len(OUTAGES)  # per outage: on (0/1), since, last said
        try:
            ctx = multiprocessing.get_context("fork")
            self.state, self.lock = ctx.RawArray("d", size), ctx.Lock()
        except ValueError:  # no fork on this platform: thread workers only
            self.state, self.lock = [0.0] * size, threading.Lock()

    @contextmanager
    def _locked(self):
        # a process killed while holding the lock must not stop the others: at worst a
        # line is said twice
        got = self.lock.acquire(timeout=1.0)
        try:
            yield
        finally:
            if got:
                self.lock.release()

    def failed(self, exc: BaseException, busy: str = "database") -> bool:
        """Log an expected outage (once, then a reminder now and then) and return True;
        return False, logging nothing, for any other error."""
        outage = outage_of(exc, busy)
        if outage is None:
            return False
        i, now, said = 3 * OUTAGES.index(outage), self.clock(), None
        starts, lasts, _ = WORDS[outage]
        with self._locked():
            if not self.state[i]:
                self.state[i], self.state[i + 1], self.state[i + 2] = 1, now, now
                said = f"{starts} ({type(exc).__name__}: {exc}); the worker keeps retrying"
            elif now - self.state[i + 2] >= self.reminder:
                self.state[i + 2] = now
                said = (f"{lasts} after {now - self.state[i + 1]:.0f} s "
                        f"({type(exc).__name__}: {exc})")
        if said:
            self.log.warning(said)
        return True

    def ok(self, outage: str) -> None:
        """An operation that needs `outage`'s resource succeeded: the outage, if any, is over."""
        i = 3 * OUTAGES.index(outage)
        if not self.state[i]:  # the usual case, without the lock
            return
        with self._locked():
            if not self.state[i]:
                return
            self.state[i] = 0
            lasted = self.clock() - self.state[i + 1]
        self.log.info("%s after %.0f s", WORDS[outage][2], lasted)

    def active(self, outage: str) -> bool:
        return bool(self.state[3 * OUTAGES.index(outage)])


def queue_outage(settings: Settings) -> str:
    """Which outage a busy queue is: the database's when the queue lives in it."""
    return "database" if settings.queue_in_db else "queue"


class BatchWorker(Worker):
    """A Huey worker that dequeues up to `size` messages at once and runs pagesync's tasks
    through JobRunner.run_many; other messages (and messages not yet due) go through
    Huey's own execute."""

    def __init__(self, huey, stop_flag, default_delay, max_delay, backoff, max_tasks=None,
                 settings: Settings | None = None, outages: Outages | None = None):
        super().__init__(huey, stop_flag, default_delay, max_delay, backoff, max_tasks)
        self.settings = settings
        self.outages = outages or Outages()
        self.queue_outage = queue_outage(settings)
        self.size = 1

    def loop(self, now=None):
        try:
            messages = dequeue_batch(self.huey, self.size)
        except Exception as exc:
            if not self.outages.failed(exc, self.queue_outage):
                self._logger.exception("Error reading from queue")
            self.sleep()
            return
        # Redis answered; SQLite took its write lock only if there was a message to take
        if messages or self.settings.queue_kind == "redis":
            self.outages.ok(self.queue_outage)
        if not messages:
            if not self.huey.storage.blocking:
                self.sleep()
            return
        self.delay = self.default_delay
        started = time.monotonic()
        try:
            ran = self.run_messages(messages, now)
        except Exception as exc:
            # The database stayed busy past its timeout (or the queue went away while
            # scheduling a retry): these jobs keep their state in the database and the
            # reconciler delivers them again, as when a worker dies; this one waits.
            if not self.outages.failed(exc):
                raise
            self.sleep()
            return
        if ran:
            self.outages.ok("database")
        self.size = next_batch_size(self.size, len(messages), time.monotonic() - started,
                                    self.settings.worker_batch)

    def run_messages(self, messages: list, now=None) -> int:
        """Run the messages; returns how many were pagesync jobs."""
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
        return len(ours)

    def execute(self, task, now=None) -> None:
        try:
            self.huey.execute(task, now)
        except Exception:
            self._logger.exception("Unhandled error during execution of task %s.", task.id)


class PagesyncScheduler(Scheduler):
    """Huey's scheduler (the retries of failed jobs wait in its schedule): its loop as in
    Huey 3.5, with a busy database or an unreachable queue reported as an outage rather
    than a traceback every second."""

    def __init__(self, huey, stop_flag, interval, periodic, outages: Outages, busy: str):
        super().__init__(huey, stop_flag, interval, periodic)
        self.outages, self.busy = outages, busy

    def loop(self, now=None):
        current = self._next_loop
        self._next_loop += self.interval
        if self._next_loop < time.monotonic():
            self._logger.debug("scheduler skipping iteration to avoid race.")
            self._next_loop = time.monotonic()
            return
        try:
            task_list = self.huey.read_schedule(now)  # a write: SQLite's lock, or Redis
        except Exception as exc:
            if not self.outages.failed(exc, self.busy):
                self._logger.exception("Error reading schedule.")
            task_list = []
        else:
            self.outages.ok(self.busy)
        for task in task_list:
            try:
                self.huey.enqueue(task)
            except Exception as exc:  # the job stays 'retrying': the reconciler has it
                if not self.outages.failed(exc, self.busy):
                    self._logger.exception("Error enqueueing %s.", task)
        if self.periodic and self._next_periodic <= time.monotonic():
            while self._next_periodic <= time.monotonic():
                self._next_periodic += self.periodic_task_seconds
            self.enqueue_periodic_tasks(now)
        self.sleep_for_interval(current, self.interval)


class Supervisor(BaseProcess):
    """Heartbeat, reconciler and pruning: one more thread or process of the consumer."""
    process_name = "Supervisor"

    def __init__(self, huey, stop_flag, settings: Settings, workers: int, kind: str, pid: int,
                 outages: Outages | None = None):
        super().__init__(huey, stop_flag)
        self.settings, self.workers, self.kind, self.pid = settings, workers, kind, pid
        self.outages = outages or Outages()
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
            self.outages.ok("database")
            if time.monotonic() >= self.next_reconcile:
                reconcile(self.conn, self.queue, self.settings, keep_going=self.between_chunks)
                if self.settings.queue_kind == "redis":  # it asked Redis for the depth
                    self.outages.ok("queue")
                self.next_reconcile = time.monotonic() + self.settings.reconcile_interval
            if time.monotonic() >= self.next_prune:
                prune(self.conn, self.settings)
                self.next_prune = time.monotonic() + 300
        except Exception as exc:
            if not self.outages.failed(exc):
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
    """An unexpected error that repeats (every poll fails the same way) is logged once per
    `every` seconds, with its traceback only the first time (never for a connection
    error: the message says it all); rendering tracebacks at each poll would burn the
    CPU the worker is meant to leave alone. Expected outages (a busy database, an
    unreachable queue) never get here: `Outages` reports them."""

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
        jobs.WORKER_NAME["jobs"] = jobs.child_label(jobs.WORKER_NAME["name"], os.getpid())

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
    scheduler_class = PagesyncScheduler

    def __init__(self, huey, settings: Settings, **options):
        self.settings = settings
        self.outages = Outages()  # before any thread or process: shared by all of them
        super().__init__(huey, **options)
        self.supervisor = self._new_supervisor()
        # Both SIGTERM (systemd, Docker, Kubernetes) and SIGINT (Ctrl-C) stop gracefully.
        self._signal_actions[signal.SIGINT] = (False, True)
        self._signal_actions[signal.SIGTERM] = (False, True)
        if self.worker_type != "process":  # forked workers must not inherit the handlers
            # Huey sets them once its threads run: a SIGTERM meanwhile would kill the
            # process instead of stopping it (exit 0) as soon as it has started
            self._set_signal_handlers()

    def get_environment(self, worker_type):
        if worker_type == "process":
            return GracefulProcessEnvironment(self._graceful_sig, self._interrupt_sig)
        return super().get_environment(worker_type)

    def _create_worker(self):
        return self.worker_class(
            huey=self.huey, stop_flag=self.stop_flag, default_delay=self.default_delay,
            max_delay=self.max_delay, backoff=self.backoff, max_tasks=self.max_tasks,
            settings=self.settings, outages=self.outages)

    def _create_scheduler(self):
        return self.scheduler_class(
            huey=self.huey, stop_flag=self.stop_flag, interval=self.scheduler_interval,
            periodic=self.periodic, outages=self.outages, busy=queue_outage(self.settings))

    def _new_supervisor(self):
        sup = Supervisor(self.huey, self.stop_flag, self.settings, self.workers,
                         self.worker_type, os.getpid(), self.outages)
        return self._create_process(sup, "Supervisor")

    def start(self):
        super().start()
        self.supervisor.start()

    def _join_workers(self):
        done = super()._join_workers()
        self.supervisor.join(self.settings.worker_heartbeat + 1)
        return done

    def check_worker_health(self):
        dead = [proc.pid for _, proc in self.worker_threads
                if self.worker_type == "process" and not self.environment.is_alive(proc)]
        healthy = super().check_worker_health()  # Huey starts a child in each one's place
        if dead:
            self.reclaim(dead)
        if not self.environment.is_alive(self.supervisor):
            self._logger.warning("Supervisor died, restarting.")
            self.supervisor = self._new_supervisor()
            self.supervisor.start()
        return healthy

    def reclaim(self, pids: list[int]) -> None:
        """The jobs a dead child was running go back to the queue now. If that fails (the
        queue or the database is away), the reconciler finds them after PAGESYNC_LOST_AFTER s."""
        owners = [jobs.child_label(jobs.WORKER_NAME["name"], pid) for pid in pids]
        conn = store.connect(self.settings.db, durable=False)
        try:
            count = store.with_retry(lambda: reclaim(conn, self.huey, owners))
        except (sqlite3.Error, store.StorageBusy, redis.RedisError) as exc:
            log.warning("the jobs of worker child(ren) %s that died wait for the reconciler "
                        "(%s: %s)", ", ".join(map(str, pids)), type(exc).__name__, exc)
            return
        finally:
            conn.close()
            let_go(self.huey)
        log.warning("worker child(ren) %s died: %d job(s) they were running went back to the "
                    "queue", ", ".join(map(str, pids)), count)


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
