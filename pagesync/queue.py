"""The queue: one Huey instance per backend, bulk enqueue, and the reconciler.

The queue only delivers; the `jobs` table in SQLite says what is due. Every backend sits
behind the same calls: `make_huey`, `enqueue_jobs`, `dequeue_batch`, `queue_depth`. On the
embedded default the queue of pagesync jobs is the `jobs` table itself (`JobsTable`, a
Huey storage): a batch's jobs are written 'queued' in the batch's own transaction, so they
are stored and queued, or neither, and enqueueing costs nothing beyond the job rows.
"""
from __future__ import annotations

import logging
import sqlite3
import threading
import time
import uuid
from pathlib import Path

import redis
from huey import RedisHuey, SqliteHuey
from huey.registry import Message
from huey.serializer import Serializer
from huey.storage import SqliteStorage
from redis import ConnectionPool
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from . import store
from .config import Settings

log = logging.getLogger("pagesync.queue")
HUEY_NAME = "pagesync"
INSERT_MESSAGE = "INSERT INTO task (queue, data, priority) VALUES (?, ?, 0)"


class MessageSerializer(Serializer):
    """Huey's serializer (pickle), writing a task message as a plain tuple, tagged: Huey's
    `Message` is a named tuple, whose pickling runs Python code (5.9 us a message,
    measured), while a plain tuple is pickled in C (1.6 us); a batch sends 1000. Read
    back as a `Message`; messages pickled by Huey's own serializer read as before."""
    TAG = "pagesync.message.v1"

    def _serialize(self, data):
        if type(data) is Message:
            data = (self.TAG, *data)
        return super()._serialize(data)

    def _deserialize(self, data):
        value = super()._deserialize(data)
        if type(value) is tuple and value and value[0] == self.TAG:
            return Message(*value[1:])
        return value


class QueueStorage(SqliteStorage):
    """Huey's SQLite storage with synchronous=NORMAL: in WAL mode a commit is not fsynced
    (a lost message costs nothing: the reconciler delivers it again) but a checkpoint
    is, which matters when the queue shares the database file: a checkpoint run by this
    connection must never leave records a 200 answered for half on disk."""

    def _create_connection(self):
        try:
            conn = super()._create_connection()
        except sqlite3.OperationalError as exc:
            if store.is_busy(exc):
                raise
            raise store.cannot_open(exc, self.filename, "queue file ") from None
        conn.execute("PRAGMA synchronous = NORMAL")
        return conn


QUEUE_JOB = ("UPDATE jobs SET state = 'queued', enqueued_at = ? WHERE task = ? AND user_id = ? "
             "AND record_id = ? AND state IN ('pending', 'retrying')")
CLAIM_JOBS = ("UPDATE jobs SET state = 'running', started_at = :now, worker = :worker "
              "WHERE (task, user_id, record_id) IN (SELECT task, user_id, record_id FROM jobs "
              "WHERE state = 'queued' ORDER BY enqueued_at LIMIT :limit) "
              "RETURNING task, user_id, record_id, revision, enqueued_at")


class JobsTable(QueueStorage):
    """The embedded queue (the SQLite queue inside the database file): Huey's SQLite
    storage whose queue of pagesync jobs is the `jobs` table. A job in state 'queued' is
    a message waiting; enqueueing one sets it queued, taking one (`claim`) sets it
    running on this worker, in one statement, so two workers never take the same job.
    The messages Huey hands to the consumer are made from the rows. Anything else (other
    tasks, and messages of a database from before this queue) uses Huey's `task` table."""
    huey = None  # set by make_huey: messages are made and read with its registry

    def enqueue(self, data, priority=None):
        """One message, as Huey's SQLite storage enqueues one (its own transaction)."""
        job = self.job_of(data)
        if job is None:
            return super().enqueue(data, priority)
        self.sql(QUEUE_JOB, (time.time(), *job[:3]), commit=True)

    def job_of(self, data: bytes) -> tuple | None:
        """(task, user_id, record_id, revision) when the message is a pagesync job."""
        try:
            message = self.huey.serializer.deserialize(data)
        except Exception:
            return None
        if message.name in self.huey.pagesync_tasks and len(message.args) == 3 \
                and not message.kwargs:
            return (message.name, *message.args)
        return None

    def queue_jobs(self, jobs: list, now: float | None = None) -> None:
        """Put committed jobs in the queue (those pending, or waiting for a retry)."""
        now = now or time.time()
        with self.lock, store.transaction(self.conn):
            self.conn.executemany(QUEUE_JOB, [(now, task, user_id, record_id)
                                              for task, user_id, record_id, _ in jobs])

    def claim(self, limit: int) -> list[tuple]:
        """Take up to `limit` queued jobs, oldest first: they are running on this worker."""
        from .jobs import WORKER_NAME

        if not self.sql("SELECT 1 FROM jobs WHERE state = 'queued' LIMIT 1", results=True):
            return []  # the usual idle case, without taking the write lock
        with self.lock, store.transaction(self.conn):
            rows = self.conn.execute(CLAIM_JOBS, {"now": time.time(), "limit": limit,
                                                  "worker": WORKER_NAME["jobs"]}).fetchall()
        return [tuple(row[:4]) for row in sorted(rows, key=lambda r: (r[4] or 0, r[2]))]

    def take(self, limit: int) -> list[bytes]:
        """Up to `limit` messages: claimed jobs, else messages of Huey's task table."""
        jobs = self.claim(limit)
        if jobs:
            return job_messages(self.huey, jobs)
        return _sqlite_dequeue(self, limit) if limit > 1 else _single(super().dequeue())

    def dequeue(self):
        messages = self.take(1)
        return messages[0] if messages else None

    def queue_size(self):
        queued = self.sql("SELECT COUNT(*) FROM jobs WHERE state = 'queued'", results=True)[0][0]
        return queued + super().queue_size()

    def enqueued_items(self, limit=None):
        rows = self.sql("SELECT task, user_id, record_id, revision FROM jobs WHERE state = "
                        "'queued' ORDER BY enqueued_at LIMIT ?", (-1 if limit is None else limit,),
                        results=True)
        items = job_messages(self.huey, [tuple(r) for r in rows])
        more = None if limit is None else limit - len(items)
        return items + (super().enqueued_items(more) if more is None or more > 0 else [])

    def flush_queue(self):
        """The queued jobs are out of the queue again (pending: the reconciler delivers
        them later), and Huey's own messages are dropped."""
        self.sql("UPDATE jobs SET state = 'pending' WHERE state = 'queued'", commit=True)
        super().flush_queue()


def _single(message) -> list:
    return [] if message is None else [message]


def make_huey(settings: Settings):
    """The Huey instance for the configured backend, with both tasks registered."""
    from . import jobs  # registers the tasks on the instance

    if settings.queue_kind == "redis":
        huey = RedisHuey(HUEY_NAME, connection_pool=redis_pool(settings.queue), results=False,
                         serializer=MessageSerializer(),
                         blocking=True, read_timeout=1)
    else:
        storage = JobsTable if settings.queue_in_db else QueueStorage
        huey = SqliteHuey(HUEY_NAME, filename=settings.queue_path, results=False,
                          serializer=MessageSerializer(),
                          timeout=10, storage_class=storage)
        huey.storage.huey = huey
    jobs.register(huey, settings)
    return huey


def queued_in_batch(huey) -> bool:
    """The queue is the jobs table: a batch's jobs are queued as it commits."""
    return isinstance(huey.storage, JobsTable)


REDIS_TIMEOUT = 2.0  # seconds; more than a worker's blocking pop waits (read_timeout 1 s)


def redis_pool(url: str):
    """Fail fast while Redis is away: redis-py retries each call 10 times by default
    (about 5 s), which would hold every sync request. Two quick retries still cover a
    stale pooled connection after a Redis restart (a connection error, at once); a Redis
    that does not answer (hung, or its host gone) costs one REDIS_TIMEOUT, not three.
    The reconciler delivers the rest."""
    retry = Retry(ExponentialBackoff(cap=0.1, base=0.02), 2,
                  supported_errors=(redis.ConnectionError,))
    return ConnectionPool.from_url(url, retry=retry, socket_connect_timeout=REDIS_TIMEOUT,
                                   socket_timeout=REDIS_TIMEOUT)


class QueueRefused(Exception):
    """Redis answered, with an error no wait will mend (a database number it does not
    have, a wrong password): a setting to fix, not an outage to sit out."""


def check_at_start(settings: Settings) -> str:
    """Ask the queue once as serve or worker starts. A Redis that refuses raises
    QueueRefused; one that does not answer is an outage, which the command rides out (its
    words are returned for a warning); '' when it answers, and for the SQLite queue."""
    if settings.queue_kind != "redis":
        folder = Path(settings.queue_path).parent
        if not settings.queue_in_db and not folder.is_dir():
            raise QueueRefused(f"queue file {settings.queue_path}: its folder {folder} does not exist")
        return ""
    pool = redis_pool(settings.queue)
    try:
        redis.Redis(connection_pool=pool).ping()
    except (redis.AuthenticationError, redis.ResponseError) as exc:
        hint = "; a password goes in the URL: redis://:PASSWORD@HOST:PORT/DB" \
            if "auth" in str(exc).lower() else ""
        raise QueueRefused(f"queue {settings.describe_queue()}: Redis refused it ({exc}){hint}") from None
    except redis.RedisError as exc:
        return (f"queue {settings.describe_queue()} does not answer ({type(exc).__name__}: {exc}); "
                "going on: syncs are stored, and their jobs delivered once it answers")
    finally:
        pool.disconnect()
    return ""


def job_messages(huey, jobs: list) -> list[bytes]:
    """Serialised Huey messages for [(task, user_id, record_id, revision)]: one message
    built by Huey per task name, then copied with a fresh id and the job's arguments
    (a fifth of the cost of building a Task object per job)."""
    templates: dict = {}
    out = []
    serialize = huey.serializer.serialize
    batch_id = str(uuid.uuid4())  # message ids: unique per batch, then a counter
    for i, (task, user_id, record_id, revision) in enumerate(jobs):
        t = templates.get(task)
        if t is None:
            m = huey._registry.create_message(huey.pagesync_tasks[task].s(0, "", 0))
            t = templates[task] = (type(m), m[1:6], m[7:])  # all but the id and the args
        cls, head, tail = t
        out.append(serialize(tuple.__new__(cls, (f"{batch_id}-{i}", *head,
                                                 (user_id, record_id, revision), *tail))))
    return out


def enqueue_one_by_one(huey, jobs: list) -> None:
    """The naive way (bench baseline only): one queue write and commit per job."""
    wrappers = huey.pagesync_tasks
    for task, user_id, record_id, revision in jobs:
        huey.enqueue(wrappers[task].s(user_id, record_id, revision))


def enqueue_jobs(huey, jobs: list) -> None:
    """Enqueue many jobs in one round trip (Redis) or one transaction (SQLite)."""
    if not jobs:
        return
    storage = huey.storage
    if isinstance(storage, JobsTable):
        storage.queue_jobs(jobs)
        return
    messages = job_messages(huey, jobs)
    if isinstance(huey, RedisHuey):
        for i in range(0, len(messages), 1000):
            storage.conn.lpush(storage.queue_key, *messages[i:i + 1000])
    else:
        rows = [(storage.name, m) for m in messages]
        with storage.lock, store.transaction(storage.conn):
            storage.conn.executemany(INSERT_MESSAGE, rows)


def dequeue_batch(huey, limit: int) -> list[bytes]:
    """Take up to `limit` messages off the queue in one round trip (Redis: RPOP with a
    count) or one transaction (SQLite: DELETE ... RETURNING). When nothing is waiting,
    Redis blocks on BRPOP for a moment, so an idle worker picks a new job up at once."""
    storage = huey.storage
    if isinstance(storage, JobsTable):
        return storage.take(limit)
    if limit > 1 and isinstance(huey, RedisHuey):
        items = _redis_pop(storage, limit)
        if items:
            return items
    elif limit > 1:
        return _sqlite_dequeue(storage, limit)
    data = storage.dequeue()
    return [] if data is None else [data]


def _redis_pop(storage, limit: int) -> list[bytes]:
    try:
        return storage.conn.rpop(storage.queue_key, limit) or []
    except redis.ResponseError:  # Redis before 6.2: no count; the same in one pipeline
        pipe = storage.conn.pipeline(transaction=True)
        for _ in range(limit):
            pipe.rpop(storage.queue_key)
        return [m for m in pipe.execute() if m is not None]


def _sqlite_dequeue(storage, limit: int) -> list[bytes]:
    if not storage.sql("SELECT 1 FROM task WHERE queue = ? LIMIT 1", (storage.name,), results=True):
        return []  # the usual idle case, without taking the write lock
    # store.transaction takes the write lock by polling every millisecond: the queue may
    # share the database with the server's batch writes (SQLite's own busy handler would
    # sleep up to 100 ms past the moment the lock is free)
    with storage.lock, store.transaction(storage.conn):
        rows = storage.conn.execute(
            "DELETE FROM task WHERE id IN (SELECT id FROM task WHERE queue = ? "
            "ORDER BY priority DESC, id LIMIT ?) RETURNING id, data", (storage.name, limit)
        ).fetchall()
    return [bytes(data) for _, data in sorted(rows)]


OUTAGE_WORDS = {  # outage: (when it starts, while it lasts, when it ends); worker.py too
    "database": ("database busy", "database still busy", "database available again"),
    "queue": ("queue unreachable", "queue still unreachable", "queue reachable again"),
}


class Reachability:
    """How a server or `watch` logs an outage it only runs into (the queue unreachable
    when /readyz, /metrics, the dashboard or a sync's enqueue look; the database busy
    when a sync answers 503): one WARNING when it starts, a reminder at most every
    `reminder` s, one INFO line with how long it lasted when it is over; not a line per
    request (Prometheus scrapes, dashboards poll, extensions retry). The worker's
    `Outages` does the same across its processes (shared memory), in the same words. A
    server sees the queue only when a request needs it, so its durations count from the
    first failure it saw, and a failure after a minute without any is a new outage (the
    queue may have been back in between, unseen)."""

    def __init__(self, what: str = "queue", reminder: float = 60.0, clock=time.monotonic):
        self.reminder, self.clock = reminder, clock
        self.starts, self.lasts, self.ends = OUTAGE_WORDS[what]
        self.since = self.said = None
        self.failed = float("-inf")  # when it last failed
        self.lock = threading.Lock()

    def failed_within(self, seconds: float) -> bool:
        """Down, and seen failing less than `seconds` ago."""
        return self.since is not None and self.clock() - self.failed < seconds

    def down(self, exc: BaseException, consequence: str = "") -> None:
        now = self.clock()
        with self.lock:
            unseen = now - self.failed > self.reminder  # no failure seen for a while
            self.failed = now
            first = self.since is None or unseen
            if not first and now - self.said < self.reminder:
                return
            self.since = self.since if not first else now
            self.said = now
            lasted = now - self.since
        if first:
            log.warning("%s (%s: %s)%s", self.starts, type(exc).__name__, exc, consequence)
        else:
            log.warning("%s (first seen %.0f s ago; %s: %s)", self.lasts, lasted,
                        type(exc).__name__, exc)

    def up(self) -> None:
        if self.since is None:  # the usual case, without the lock
            return
        with self.lock:
            if self.since is None:
                return
            lasted, self.since = self.clock() - self.since, None
        log.info("%s (first seen %s %.0f s before)", self.ends, self.starts.split()[-1], lasted)


REACHABILITY = Reachability("queue")
RETRY_QUEUE_AFTER = 5.0  # seconds a server leaves an unreachable queue alone between tries


def queue_depth(huey, reach: Reachability = REACHABILITY) -> int:
    """Messages waiting, or -1: the queue is unreachable. Within RETRY_QUEUE_AFTER of a
    failure it is not asked again (a hung Redis costs each look a 2 s timeout, and the
    dashboard and Prometheus look every few seconds)."""
    if reach.failed_within(RETRY_QUEUE_AFTER):
        return -1
    try:
        depth = int(huey.pending_count())
    except Exception as exc:  # the queue is unreachable: callers show it as unknown
        reach.down(exc)
        return -1
    reach.up()
    return depth


def scheduled_depth(huey) -> int:
    try:
        return int(huey.scheduled_count())
    except Exception:
        return -1


def deliver(conn, huey, jobs: list, mode: str = "bulk", write=None,
            committed_queued: bool = False) -> bool:
    """Hand committed jobs to the queue and record that (through `write(fn, *args)` when
    given: the server's write lock). Jobs committed 'pending' are marked queued once the
    queue took them. `committed_queued`: the server's batches commit their jobs 'queued'
    already (no second write a batch); if the queue does not take them they go back to
    'pending', awaiting delivery. Either way, on failure the reconciler delivers them later."""
    if REACHABILITY.failed_within(RETRY_QUEUE_AFTER):
        # it failed moments ago: this sync does not wait for it again (one sync in
        # RETRY_QUEUE_AFTER s tries, the others answer at once)
        return _undelivered(conn, jobs, write, committed_queued)
    try:
        (enqueue_one_by_one if mode == "naive" else enqueue_jobs)(huey, jobs)
    except (redis.ConnectionError, redis.TimeoutError, ConnectionError) as exc:
        REACHABILITY.down(exc, "; jobs stay pending in SQLite and the worker's reconciler "
                               "delivers them when it is back")
        return _undelivered(conn, jobs, write, committed_queued)
    except Exception as exc:  # one line, no traceback: it sits in the request path
        log.warning("could not enqueue %d job(s) (%s: %s); the reconciler will deliver them",
                    len(jobs), type(exc).__name__, exc)
        return _undelivered(conn, jobs, write, committed_queued)
    REACHABILITY.up()
    if not committed_queued:
        try:
            (write or _call)(store.mark_enqueued, conn, jobs)
        except store.StorageBusy:
            log.warning("could not mark %d jobs queued (database busy); harmless", len(jobs))
    return True


def _undelivered(conn, jobs: list, write, committed_queued: bool) -> bool:
    if committed_queued:
        try:
            (write or _call)(store.mark_pending, conn, jobs)
        except store.StorageBusy:  # they stay 'queued': the reconciler finds them lost
            log.warning("could not mark %d undelivered jobs pending (database busy)", len(jobs))
    return False


def _call(fn, *args):
    return fn(*args)


DUE = """
    FROM jobs j LEFT JOIN workers w  -- a process worker's child marks its jobs NAME/PID
        ON w.name = substr(j.worker, 1, instr(j.worker || '/', '/') - 1)
    WHERE (j.state = 'pending' AND j.created_at < :pending_before)
       OR (j.state = 'queued' AND :messages_apart AND (j.enqueued_at < :lost_before
                                   OR (:queue_empty AND j.enqueued_at < :pending_before)))
       OR (j.state = 'running' AND (w.name IS NULL OR w.last_seen < :dead_before
                                    OR w.state = 'stopped' OR j.started_at < :lost_before))
       OR (j.state = 'retrying' AND j.next_attempt_at < :retry_before)
"""
RECONCILE_CHUNK = 5000
RECONCILE_BUDGET = 300.0  # seconds one pass may take before it leaves the rest to the next


def due_params(settings: Settings, queue_empty: bool, now: float) -> dict:
    """`messages_apart`: a queued job's message lives apart from its row (Redis, a queue
    file of its own), so it can be lost; on the embedded queue the row is the message."""
    return {
        "pending_before": now - 5, "lost_before": now - settings.lost_after,
        "queue_empty": 1 if queue_empty else 0, "messages_apart": 0 if settings.queue_in_db else 1,
        "dead_before": now - 3 * settings.worker_heartbeat - 1,
        "retry_before": now - max(settings.lost_after, 30),
    }


def due_jobs(conn, settings: Settings, queue_empty: bool, now: float | None = None,
             limit: int = RECONCILE_CHUNK) -> list:
    """Jobs whose processing is due and whose message must be lost. A job running for
    longer than `lost_after` counts as lost even if its worker still beats: with process
    workers only the child running it may have died (OOM killer), not the heartbeating
    parent. Running it again is harmless (processing is idempotent)."""
    params = due_params(settings, queue_empty, now or time.time())
    rows = conn.execute(f"SELECT j.task, j.user_id, j.record_id, j.revision {DUE} LIMIT :limit",
                        {**params, "limit": limit}).fetchall()
    return [(r["task"], r["user_id"], r["record_id"], r["revision"]) for r in rows]


def count_due(conn, settings: Settings, queue_empty: bool, now: float) -> int:
    params = due_params(settings, queue_empty, now)
    return conn.execute(f"SELECT COUNT(*) {DUE}", params).fetchone()[0]


def reconcile(conn, huey, settings: Settings, limit: int = RECONCILE_CHUNK,
              budget: float = RECONCILE_BUDGET, keep_going=None) -> int:
    """Enqueue again every job that is due and not on its way. Returns how many.

    In chunks of `limit` until none is left: after a long queue outage the worker gets
    every lost job now, not one chunk per PAGESYNC_RECONCILE_INTERVAL. A chunk's jobs are
    not due again (enqueued_at is now), and every chunk is judged as of the pass's start
    (when the queue was seen empty). `keep_going()` runs after each chunk (the supervisor
    beats in it); the pass stops when it returns False (shutting down) or past `budget` s.
    While the queue does not answer, the pass raises its error at once (nothing can be
    delivered until it is back; the worker reports the outage)."""
    start, clock = time.time(), time.monotonic()
    empty = int(huey.pending_count()) == 0 and int(huey.scheduled_count()) == 0
    total = 0
    while True:
        done = reconcile_chunk(conn, huey, due_jobs(conn, settings, empty, start, limit))
        total += done
        if done < limit or (keep_going and not keep_going()):
            break
        if time.monotonic() - clock > budget:
            log.warning("reconciler stopped after %.0f s; %d due jobs left for its next pass",
                        budget, count_due(conn, settings, empty, start))
            break
    if total:
        log.info("reconciler re-enqueued %d jobs", total)
    return total


def reclaim(conn, huey, owners: list[str]) -> int:
    """Enqueue again the jobs running on `owners` (process workers' children that died:
    their jobs would otherwise wait PAGESYNC_LOST_AFTER s for the reconciler)."""
    marks = ", ".join("?" * len(owners))
    rows = conn.execute("SELECT task, user_id, record_id, revision FROM jobs "
                        f"WHERE state = 'running' AND worker IN ({marks})", owners).fetchall()
    return reconcile_chunk(conn, huey, [tuple(row) for row in rows])


def let_go(huey) -> None:
    """Close what `huey` opened in this process (a process worker's parent, before it
    forks again: a child must not inherit an open SQLite connection)."""
    storage = huey.storage
    if isinstance(storage, SqliteStorage):
        storage.close()
    else:
        storage.pool.disconnect()


def reconcile_chunk(conn, huey, jobs: list) -> int:
    """Enqueue `jobs` and mark them queued as of now (on the embedded queue, marking them
    queued is enqueueing them)."""
    if not jobs:
        return 0
    if not queued_in_batch(huey):
        enqueue_jobs(huey, jobs)
    now = time.time()
    with store.transaction(conn):
        conn.executemany(
            "UPDATE jobs SET state = 'queued', enqueued_at = ? WHERE task = ? AND user_id = ? "
            "AND record_id = ? AND revision = ? AND state NOT IN ('done', 'failed', 'discarded')",
            [(now, *job) for job in jobs])
    return len(jobs)
