"""SQLite storage: schema, tokens, batch writes, job state and rollups.

The database is the source of truth: records, each record's processing state (table
`jobs`), and the rollups. The queue only delivers job messages.
"""
from __future__ import annotations

import hashlib
import functools
import hmac
import json
import logging
import math
import os
import secrets
import socket
import sqlite3
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass

import orjson
import sqlite_utils

from . import payload as P
from .body import stored_loads

log = logging.getLogger("pagesync.store")

TASK_VISIT = "ProcessPageVisit"
TASK_AGGREGATE = "ProcessTabAggregate"
TASKS = (TASK_VISIT, TASK_AGGREGATE)
TABLE_OF = {TASK_VISIT: "page_visits", TASK_AGGREGATE: "tab_aggregates"}
JOB_STATES = ("pending", "queued", "running", "retrying", "done", "failed", "discarded")
TOKEN_PREFIX = "psk_"


class StorageBusy(Exception):
    """The database stayed locked past the timeout: answer 503 with Retry-After."""


SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS tokens (
    id INTEGER PRIMARY KEY, user_id INTEGER NOT NULL REFERENCES users(id),
    token_hash TEXT NOT NULL UNIQUE, prefix TEXT NOT NULL, created_at REAL NOT NULL,
    revoked_at REAL, last_used_at REAL);
CREATE TABLE IF NOT EXISTS page_visits (
    user_id INTEGER NOT NULL, id TEXT NOT NULL, started_at INTEGER,
    tab_id INTEGER, client_id TEXT, data TEXT NOT NULL,
    revision INTEGER NOT NULL, received_at REAL, updated_at REAL,
    norm_url TEXT, host TEXT, site TEXT, category TEXT, engagement REAL, unread INTEGER,
    applied TEXT, processed_revision INTEGER, processed_at REAL,
    PRIMARY KEY (user_id, id));
CREATE INDEX IF NOT EXISTS page_visits_tab ON page_visits (user_id, client_id, tab_id, started_at);
CREATE TABLE IF NOT EXISTS tab_aggregates (
    user_id INTEGER NOT NULL, id TEXT NOT NULL, tab_id INTEGER, client_id TEXT,
    start_ms INTEGER, page_visit_id TEXT, data TEXT NOT NULL,
    revision INTEGER NOT NULL, received_at REAL, updated_at REAL,
    linked_visit_id TEXT, tab_seconds INTEGER, top_host TEXT,
    applied TEXT, processed_revision INTEGER, processed_at REAL,
    PRIMARY KEY (user_id, id));
CREATE INDEX IF NOT EXISTS tab_aggregates_tab ON tab_aggregates (user_id, client_id, tab_id, start_ms);
CREATE INDEX IF NOT EXISTS tab_aggregates_visit ON tab_aggregates (user_id, page_visit_id);
CREATE TABLE IF NOT EXISTS jobs (
    task TEXT NOT NULL, user_id INTEGER NOT NULL, record_id TEXT NOT NULL,
    revision INTEGER NOT NULL, state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
    created_at REAL, enqueued_at REAL, started_at REAL, finished_at REAL,
    done_revision INTEGER, next_attempt_at REAL, error TEXT, traceback TEXT, worker TEXT,
    PRIMARY KEY (task, user_id, record_id)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, enqueued_at);
CREATE TABLE IF NOT EXISTS rollups (
    user_id INTEGER NOT NULL, day TEXT NOT NULL, host TEXT NOT NULL, site TEXT NOT NULL,
    visits INTEGER NOT NULL DEFAULT 0, seconds INTEGER NOT NULL DEFAULT 0,
    active_seconds INTEGER NOT NULL DEFAULT 0, tab_seconds INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, day, host)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS syncs (
    id TEXT PRIMARY KEY, user_id INTEGER NOT NULL, received_at REAL NOT NULL,
    visits INTEGER, aggregates INTEGER, rejected INTEGER, warnings INTEGER, jobs INTEGER,
    client TEXT);
CREATE TABLE IF NOT EXISTS workers (
    name TEXT PRIMARY KEY, pid INTEGER, hostname TEXT, started_at REAL, last_seen REAL,
    concurrency INTEGER, kind TEXT, queue TEXT, state TEXT);
CREATE TABLE IF NOT EXISTS job_events (
    ts REAL NOT NULL, task TEXT NOT NULL, outcome TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS job_events_ts ON job_events (ts);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


# ---------------------------------------------------------------- connections

class Connection(sqlite3.Connection):
    """A connection that knows its lock timeout (`lock_timeout`, seconds). `polls`: its
    busy timeout is 0 for good, since it only ever writes inside `begin_immediate`, which
    polls for the lock itself (the server's batch writer)."""
    lock_timeout = 10.0
    polls = False


def cannot_open(exc: sqlite3.OperationalError, path: str, what: str = "") -> sqlite3.OperationalError:
    """sqlite3's 'unable to open database file' names no file: the error again, naming it
    (`what`: e.g. 'queue file ') and its likely cause."""
    why = "it is a folder, not a database file" if os.path.isdir(path) else \
        "does its folder exist, and may this user write there?"
    return sqlite3.OperationalError(f"{exc}: {what}{path} ({why})")


def connect(path: str, durable: bool = True, timeout: float = 10.0,
            polls: bool = False) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit), WAL journal.
    `durable` fsyncs each commit (the server: a 200 means the batch is on disk)."""
    try:
        conn = sqlite3.connect(path, timeout=timeout, isolation_level=None,
                               check_same_thread=False, factory=Connection)
    except sqlite3.OperationalError as exc:
        raise cannot_open(exc, path) from None
    conn.row_factory = sqlite3.Row
    conn.lock_timeout, conn.polls = timeout, polls
    conn.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
    deadline = time.monotonic() + timeout
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            break
        except sqlite3.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)
    conn.execute(f"PRAGMA synchronous = {'FULL' if durable else 'NORMAL'}")
    conn.execute("PRAGMA foreign_keys = ON")
    if polls:
        conn.execute("PRAGMA busy_timeout = 0")
    return conn


def init_db(path: str, upgrade: bool = True, timeout: float = 10.0) -> None:
    """Create the schema (idempotent: missing tables only), through sqlite-utils, and with
    `upgrade`, bring a database of an earlier layout up to date (serve and worker do; a
    command that only looks leaves the layout to them, so an older server still running
    on the file keeps working until it is stopped)."""
    try:
        conn = connect(path, timeout=timeout)
    except sqlite3.OperationalError as exc:
        if is_busy(exc):
            raise StorageBusy(str(exc)) from exc
        raise
    try:
        db = sqlite_utils.Database(conn)
        with_retry(lambda: db.executescript(SCHEMA), timeout)
        if upgrade:
            with_retry(lambda: upgrade_layout(conn), timeout)
    finally:
        conn.close()


def try_write(path: str, timeout: float = 2.0) -> None:
    """Take the database's write lock and give it back (StorageBusy if another process
    keeps it past `timeout`)."""
    conn = connect(path, timeout=timeout)
    try:
        with transaction(conn):
            pass
    finally:
        conn.close()


# Earlier layouts of the record tables, brought up to date by rebuilding the table (once,
# in one transaction): rows that held the url and title twice and a hash of `data` (each
# made a 1000-record batch dearer to write), and tables WITHOUT ROWID. A WITHOUT ROWID
# table keeps whole rows in its key's b-tree, which suits small rows; a record's row is
# ~700 bytes, five to a page, and a batch's inserts cost ~40% more CPU there (measured)
# than in a rowid table with (user_id, id) as its unique index.
RECORD_TABLES = ("page_visits", "tab_aggregates")


def stale_layout(conn, table: str) -> str | None:
    """Why `table` must be rebuilt (None: it is up to date, or not there yet)."""
    row = conn.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?",
                       (table,)).fetchone()
    if row is None:
        return None
    why = []
    if "WITHOUT ROWID" in row[0].upper():
        why.append("rows moved out of a WITHOUT ROWID table")
    gone = sorted(table_columns(conn, table) - set(schema_columns(table)))
    if gone:
        why.append(f"dropped {', '.join(gone)}")
    return ", ".join(why) or None


def table_ddl(table: str) -> str:
    """The CREATE TABLE statement of `table` in SCHEMA."""
    start = SCHEMA.index(f"CREATE TABLE IF NOT EXISTS {table} (")
    return SCHEMA[start:SCHEMA.index(";", start) + 1]


@functools.lru_cache(maxsize=None)
def schema_columns(table: str) -> tuple:
    conn = sqlite3.connect(":memory:")
    conn.execute(table_ddl(table))
    return tuple(row[1] for row in conn.execute(f"PRAGMA table_info({table})"))


def upgrade_layout(conn) -> None:
    """Rebuild each record table of an earlier layout (see RECORD_TABLES): in one
    transaction, so another process starting at the same time waits, then finds it done."""
    if not any(stale_layout(conn, t) for t in RECORD_TABLES):
        return
    done = []
    with transaction(conn):
        for table in RECORD_TABLES:
            why = stale_layout(conn, table)
            if why is None:
                continue
            started = time.monotonic()
            columns = ", ".join(c for c in schema_columns(table)
                                if c in table_columns(conn, table))
            conn.execute(table_ddl(table).replace(f"EXISTS {table} (", f"EXISTS {table}_new ("))
            rows = conn.execute(f"INSERT INTO {table}_new ({columns}) SELECT {columns} "
                                f"FROM {table}").rowcount
            conn.execute(f"DROP TABLE {table}")
            conn.execute(f"ALTER TABLE {table}_new RENAME TO {table}")
            done.append(f"{table} ({why}; {rows} rows, {time.monotonic() - started:.1f} s)")
        for statement in SCHEMA.split(";"):  # the indexes, dropped with the old tables
            if "CREATE INDEX" in statement:
                conn.execute(statement)
    if done:
        log.info("database layout upgraded: %s", "; ".join(done))
        log.warning("the rollups were made by an earlier version, whose rules may have "
                    "differed (host keys): `pagesync jobs reprocess` makes them again")


def table_columns(conn, table: str) -> set:
    return {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}


def with_retry(fn, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while True:
        try:
            return fn()
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
            if time.monotonic() > deadline:
                raise StorageBusy(str(exc)) from exc
            time.sleep(0.05)


@contextmanager
def transaction(conn: sqlite3.Connection, immediate: bool = True):
    """BEGIN IMMEDIATE ... COMMIT, rolled back on error; busy past the timeout -> StorageBusy."""
    try:
        if immediate:
            begin_immediate(conn)
        else:
            conn.execute("BEGIN")
    except sqlite3.OperationalError as exc:
        if is_busy(exc):
            raise StorageBusy(str(exc)) from exc
        raise
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    else:
        try:
            conn.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            conn.execute("ROLLBACK")
            raise StorageBusy(str(exc)) from exc


def is_busy(exc: sqlite3.OperationalError) -> bool:
    return "locked" in str(exc) or "busy" in str(exc)


def begin_immediate(conn: sqlite3.Connection) -> None:
    """Take the write lock, trying again every millisecond until the connection's busy
    timeout. SQLite's own busy handler sleeps 1, 2, 5 ... up to 100 ms between tries, so
    a writer could sleep long after the lock was free (other server or worker processes
    hold it for a few milliseconds at a time)."""
    if getattr(conn, "polls", False):  # its busy timeout is 0 already
        return _poll_begin(conn, conn.lock_timeout)
    timeout = getattr(conn, "lock_timeout", None)  # Huey's own connections: ask SQLite
    timeout_ms = int(timeout * 1000) if timeout is not None else \
        conn.execute("PRAGMA busy_timeout").fetchone()[0]
    conn.execute("PRAGMA busy_timeout = 0")
    try:
        _poll_begin(conn, timeout_ms / 1000)
    finally:
        conn.execute(f"PRAGMA busy_timeout = {timeout_ms}")


def _poll_begin(conn, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            conn.execute("BEGIN IMMEDIATE")
            return
        except sqlite3.OperationalError as exc:
            if not is_busy(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.001)


class Checkpointer:
    """Copies the write-ahead log back into the database file from a thread of its own,
    every `interval` s (a PASSIVE checkpoint: it waits for nobody). Without it SQLite
    does that inside a commit once the log passes 1000 pages, while the committing
    server holds the write lock. The server's writer keeps a larger threshold of its
    own (WRITER_AUTOCHECKPOINT) as a backstop."""

    def __init__(self, path: str, interval: float = 0.2):
        self.path, self.interval = path, interval
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.run, name="checkpointer", daemon=True)

    def start(self) -> "Checkpointer":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopped.set()

    def run(self) -> None:
        conn = connect(self.path, durable=True, timeout=1.0)
        try:
            while not self.stopped.wait(self.interval):
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.Error:  # busy or away: the next round, or a commit, does it
                    pass
        finally:
            conn.close()


WRITER_AUTOCHECKPOINT = 8000  # pages (32 MB of log) before a commit checkpoints itself


class ConnectionPool:
    """One connection per thread (sqlite3 connections are not shared across threads)."""

    def __init__(self, path: str, durable: bool = True, timeout: float = 10.0):
        self.path, self.durable, self.timeout = path, durable, timeout
        self._local = threading.local()

    def get(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = connect(self.path, self.durable, self.timeout)
        return conn


# ---------------------------------------------------------------- users and tokens

def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def create_token(conn, name: str) -> str:
    """Create the user if needed and a new token for it; returns the token (shown once)."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    now = time.time()
    with transaction(conn):
        conn.execute("INSERT OR IGNORE INTO users (name, created_at) VALUES (?, ?)", (name, now))
        user_id = conn.execute("SELECT id FROM users WHERE name = ?", (name,)).fetchone()[0]
        conn.execute(
            "INSERT INTO tokens (user_id, token_hash, prefix, created_at) VALUES (?, ?, ?, ?)",
            (user_id, hash_token(token), token[:10], now))
    return token


def list_tokens(conn) -> list[dict]:
    rows = conn.execute(
        "SELECT u.name, t.prefix, t.created_at, t.revoked_at, t.last_used_at FROM tokens t "
        "JOIN users u ON u.id = t.user_id ORDER BY u.name, t.created_at").fetchall()
    return [dict(r) for r in rows]


def revoke_tokens(conn, name: str) -> int:
    with transaction(conn):
        cur = conn.execute(
            "UPDATE tokens SET revoked_at = ? WHERE revoked_at IS NULL AND user_id = "
            "(SELECT id FROM users WHERE name = ?)", (time.time(), name))
    return cur.rowcount


def user_for_token(conn, token: str) -> dict | None:
    """The user a live token belongs to (None for unknown or revoked tokens)."""
    if not token or len(token) > 200:
        return None
    digest = hash_token(token)
    row = conn.execute(
        "SELECT t.id AS token_id, t.token_hash, t.revoked_at, u.id, u.name FROM tokens t JOIN users u "
        "ON u.id = t.user_id WHERE t.token_hash = ?", (digest,)).fetchone()
    if row is None or not hmac.compare_digest(row["token_hash"], digest) or row["revoked_at"]:
        return None
    return {"id": row["id"], "name": row["name"], "token_id": row["token_id"]}


def user_id_by_name(conn, name: str) -> int | None:
    row = conn.execute("SELECT id FROM users WHERE name = ?", (name,)).fetchone()
    return row[0] if row else None


# ---------------------------------------------------------------- batch writes

def canonical(rec: dict) -> str:
    """A record as compact JSON with sorted keys: what is stored (as text)."""
    return canonical_bytes(rec).decode("utf-8")


def canonical_bytes(rec: dict) -> bytes:
    """canonical() as UTF-8 bytes: how a batch binds it (no text object to make and
    encode again), cast to TEXT by the statement."""
    try:
        return orjson.dumps(rec, option=orjson.OPT_SORT_KEYS)
    except TypeError:  # an integer past 64 bits (kept in metadata): the standard library
        return json.dumps(finite(rec), sort_keys=True, ensure_ascii=False,
                          separators=(",", ":")).encode("utf-8")


def finite(value):
    """Non-finite numbers (1e400 in metadata parses as infinity) as null, as orjson writes
    them: the stored JSON stays strict, so SQLite's JSON functions can read every row."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite(v) for v in value]
    return value


def _existing(conn, table: str, user_id: int, ids: list) -> dict:
    """{id: (data as UTF-8 bytes, revision)} of the stored versions of these records (one
    query)."""
    if not ids:
        return {}
    rows = conn.execute(f"SELECT id, CAST(data AS BLOB), revision FROM {table} WHERE user_id = ? "
                        f"AND id IN (SELECT value FROM json_each(?))", (user_id, orjson.dumps(ids)))
    return {r[0]: (r[1], r[2]) for r in rows}


def _changed(records, existing: dict, merge) -> list:
    """Merge each record with its stored version; keep only records whose content changed
    (their stored JSON would differ). Returns [(merged record, data json bytes, revision)]."""
    out = []
    for rec in records:
        old = existing.get(rec["id"])
        if old is None:
            out.append((rec, canonical_bytes(rec), 1))
            continue
        merged = merge(stored_loads(old[0]), rec)
        data = canonical_bytes(merged)
        if data != old[0]:
            out.append((merged, data, old[1] + 1))
    return out


@dataclass
class Writes:
    """What a batch writes: the changed records, as [(merged record, data json,
    revision)], their jobs, and the statements that write them ([(sql, params, rows it
    must change or None)])."""
    visits: list
    aggregates: list
    jobs: list
    statements: list


def plan(conn, user_id: int, batch: P.Batch, queued: bool = False,
         now: float | None = None) -> Writes:
    """Read the stored versions of a batch's records and work out its writes: merging,
    canonical JSON, the statements. Needs no write lock: each record's row is written only
    if it is still the version read (`save_batch` plans again, holding the lock, if another
    writer changed one meanwhile). `queued`: see save_batch."""
    now = time.time() if now is None else now
    changed = {}
    for table, records, merge in (("page_visits", batch.visits, P.merge_visit),
                                  ("tab_aggregates", batch.aggregates, P.merge_aggregate)):
        existing = _existing(conn, table, user_id, [r["id"] for r in records])
        changed[table] = _changed(records, existing, merge)
    visits, aggs = changed["page_visits"], changed["tab_aggregates"]
    jobs = [(TASK_VISIT, user_id, m["id"], rev) for m, _, rev in visits]
    jobs += [(TASK_AGGREGATE, user_id, m["id"], rev) for m, _, rev in aggs]
    statements = values_statements(VISIT_UPSERT, (user_id, now), [
        (m["id"], m["started_at"], _int_or_none(m["tab_id"]), m["client_id"], data, rev)
        for m, data, rev in visits], checked=True)
    statements += values_statements(AGG_UPSERT, (user_id, now), [
        (m["id"], _int_or_none(m["tab_id"]), m["client_id"], m["start_ms"],
         m["page_visit_id"], data, rev) for m, data, rev in aggs], checked=True)
    statements += values_statements(
        JOB_UPSERT, (user_id, "queued" if queued else "pending", now, now if queued else None),
        [(task, record_id, rev) for task, _, record_id, rev in jobs])
    return Writes(visits, aggs, jobs, statements)


class StalePlan(Exception):
    """Another writer changed a record between the plan and the write."""


# A batch's rows are written by one INSERT ... SELECT FROM (VALUES ...) per table, all
# rows bound at once: one call into SQLite, which gives up the GIL once (executemany gives
# it up and takes it back for each row, and while other requests are parsing, each take
# waits for the interpreter's switch interval). The VALUES list is padded with rows of
# NULLs, which the SELECT drops, to a power of two, so that a few SQL texts, each compiled
# once per connection, serve every batch size.
MAX_ROWS = 512  # rows per statement: SQLite compiles 1024 rows in ~4x the time of 512


@dataclass(frozen=True)
class Rows:
    """A statement over many rows: `head SELECT select FROM (VALUES ...) WHERE column1 IS
    NOT NULL tail`, `select` naming the shared parameters ?1..?n and each row's values
    column1, column2, ..."""
    head: str
    select: str
    tail: str


@functools.lru_cache(maxsize=128)
def values_sql(statement: Rows, shared: int, width: int, rows: int) -> str:
    first = shared + 1
    values = ", ".join("(" + ", ".join(f"?{first + width * k + j}" for j in range(width)) + ")"
                       for k in range(rows))
    return (f"{statement.head} SELECT {statement.select} FROM (VALUES {values}) "
            f"WHERE column1 IS NOT NULL {statement.tail}")


def values_statements(statement: Rows, shared: tuple, rows: list, checked: bool = False) -> list:
    """[(sql, params, rows it must change or None)] writing every row of `rows` (tuples of
    one width, the first value never NULL): one statement per MAX_ROWS rows. `checked`:
    the upsert changes a row only if it is still the version the plan read, so a
    statement that changed fewer rows than it holds met another writer's change."""
    out = []
    for i in range(0, len(rows), MAX_ROWS):
        chunk = rows[i:i + MAX_ROWS]
        size = 1 << (len(chunk) - 1).bit_length()  # the next power of two
        width = len(chunk[0])
        params = list(shared)
        for row in chunk:
            params.extend(row)
        params.extend((None,) * (width * (size - len(chunk))))
        out.append((values_sql(statement, len(shared), width, size), params,
                    len(chunk) if checked else None))
    return out


VISIT_UPSERT = Rows(
    "INSERT INTO page_visits (user_id, id, started_at, tab_id, client_id, data, revision, "
    "received_at, updated_at)",
    "?1, column1, column2, column3, column4, CAST(column5 AS TEXT), column6, ?2, ?2",
    "ON CONFLICT (user_id, id) DO UPDATE SET started_at = excluded.started_at, "
    "tab_id = excluded.tab_id, client_id = excluded.client_id, data = excluded.data, "
    "revision = excluded.revision, updated_at = excluded.updated_at "
    "WHERE page_visits.revision = excluded.revision - 1")
AGG_UPSERT = Rows(
    "INSERT INTO tab_aggregates (user_id, id, tab_id, client_id, start_ms, page_visit_id, data, "
    "revision, received_at, updated_at)",
    "?1, column1, column2, column3, column4, column5, CAST(column6 AS TEXT), column7, ?2, ?2",
    "ON CONFLICT (user_id, id) DO UPDATE SET tab_id = excluded.tab_id, "
    "client_id = excluded.client_id, start_ms = excluded.start_ms, "
    "page_visit_id = excluded.page_visit_id, data = excluded.data, "
    "revision = excluded.revision, updated_at = excluded.updated_at "
    "WHERE tab_aggregates.revision = excluded.revision - 1")
JOB_UPSERT = Rows(
    "INSERT INTO jobs (task, user_id, record_id, revision, state, attempts, created_at, "
    "enqueued_at)", "column1, ?1, column2, column3, ?2, 0, ?3, ?4",
    "ON CONFLICT (task, user_id, record_id) DO UPDATE SET revision = excluded.revision, "
    "state = excluded.state, attempts = 0, created_at = excluded.created_at, "
    "enqueued_at = excluded.enqueued_at, next_attempt_at = NULL, error = NULL, traceback = NULL")


def save_batch(conn, user_id: int, batch: P.Batch, client: dict | None = None,
               queued: bool = False, token_id: int | None = None,
               writes: Writes | None = None) -> dict:
    """Write an accepted batch in one transaction: all of it or none of it. Returns the
    sync summary and its jobs ([(task, user_id, record_id, revision)]). `queued`: the
    jobs are written 'queued': on the embedded default (the jobs table is the queue,
    queue.JobsTable) they are in the queue as this commits; elsewhere the caller sends
    their messages right after (queue.deliver), and sets them back to 'pending' if the
    queue does not take them. Otherwise they are 'pending' until handed to the queue. `token_id`: the token that
    sent it, whose last sync time is set. `writes`: the batch's `plan` (with the same
    `queued`), made before the write lock was taken; if another writer changed one of its
    records since, the transaction is rolled back and the batch planned again."""
    if writes is not None:
        try:
            return _write_batch(conn, user_id, batch, client, queued, token_id, writes)
        except StalePlan:
            pass
    return _write_batch(conn, user_id, batch, client, queued, token_id, None)


def _write_batch(conn, user_id, batch, client, queued, token_id, writes) -> dict:
    now = time.time()
    sync_id = "sync_" + uuid.uuid4().hex[:16]
    with transaction(conn):
        if writes is None:  # planned holding the lock: nobody else writes meanwhile
            writes = plan(conn, user_id, batch, queued, now)
        for sql, params, expected in writes.statements:
            changed = conn.execute(sql, params).rowcount
            if expected is not None and changed != expected:
                raise StalePlan
        conn.execute(
            "INSERT INTO syncs (id, user_id, received_at, visits, aggregates, rejected, warnings, "
            "jobs, client) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (sync_id, user_id, now, len(batch.visits), len(batch.aggregates), len(batch.rejected),
             len(batch.warnings), len(writes.jobs), json.dumps(client or {})))
        bump_counters(conn, {"records_ingested": len(batch.visits) + len(batch.aggregates),
                             "records_rejected": len(batch.rejected)})
        if token_id is not None:
            conn.execute("UPDATE tokens SET last_used_at = ? WHERE id = ?", (now, token_id))
    return {"sync_id": sync_id, "jobs": writes.jobs}


def prune_syncs(conn, older_than: float) -> int:
    """Forget the log rows of sync requests received more than `older_than` s ago."""
    with transaction(conn):
        return conn.execute("DELETE FROM syncs WHERE received_at < ?",
                            (time.time() - older_than,)).rowcount


def _int_or_none(value):
    return value if isinstance(value, int) else None


def bump_counter(conn, name: str, amount: int) -> None:
    bump_counters(conn, {name: amount})


def bump_counters(conn, amounts: dict) -> None:
    """Add to several counters in one statement (those whose amount is not 0)."""
    rows = [(name, amount) for name, amount in amounts.items() if amount]
    if rows:
        conn.execute("INSERT INTO counters (name, value) VALUES " + ", ".join(["(?, ?)"] * len(rows))
                     + " ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
                     [v for row in rows for v in row])


def counters(conn) -> dict:
    return {r["name"]: r["value"] for r in conn.execute("SELECT name, value FROM counters")}


MARK_QUEUED = Rows(  # looked up by primary key, row by row
    "UPDATE jobs SET state = 'queued', enqueued_at = ?1 FROM (",
    "column1 AS task, column2 AS user_id, column3 AS record_id, column4 AS revision",
    ") AS j WHERE jobs.task = j.task AND jobs.user_id = j.user_id AND jobs.record_id = j.record_id "
    "AND jobs.revision = j.revision AND jobs.state IN ('pending', 'queued')")


MARK_PENDING = Rows(
    "UPDATE jobs SET state = 'pending' FROM (",
    "column1 AS task, column2 AS user_id, column3 AS record_id, column4 AS revision",
    ") AS j WHERE jobs.task = j.task AND jobs.user_id = j.user_id AND jobs.record_id = j.record_id "
    "AND jobs.revision = j.revision AND jobs.state = 'queued'")


def mark_enqueued(conn, jobs: list, now: float | None = None) -> None:
    """After the queue accepted the messages: pending -> queued (same revision only)."""
    _mark(conn, MARK_QUEUED, (now or time.time(),), jobs)


def mark_pending(conn, jobs: list) -> None:
    """Jobs committed 'queued' whose messages the queue did not take: pending, awaiting
    delivery (the reconciler delivers them; same revision only)."""
    _mark(conn, MARK_PENDING, (), jobs)


def _mark(conn, statement: Rows, shared: tuple, jobs: list) -> None:
    with transaction(conn):
        for sql, params, _ in values_statements(statement, shared, jobs):
            conn.execute(sql, params)


# ---------------------------------------------------------------- reading

def load_record(conn, task: str, user_id: int, record_id: str):
    row = conn.execute(f"SELECT * FROM {TABLE_OF[task]} WHERE user_id = ? AND id = ?",
                       (user_id, record_id)).fetchone()
    return row


def all_records(conn, table: str) -> dict:
    """{user_id: [canonical record, ...]} for a fresh recomputation."""
    out: dict = {}
    for row in conn.execute(f"SELECT user_id, data FROM {table} ORDER BY user_id, id"):
        out.setdefault(row["user_id"], []).append(json.loads(row["data"]))
    return out


def rollup_rows(conn, user_id: int | None = None) -> dict:
    sql = "SELECT user_id, day, host, visits, seconds, active_seconds, tab_seconds FROM rollups"
    rows = conn.execute(sql + (" WHERE user_id = ?" if user_id is not None else ""),
                        (user_id,) if user_id is not None else ()).fetchall()
    return {(r["user_id"], r["day"], r["host"]): [r["visits"], r["seconds"], r["active_seconds"],
                                                   r["tab_seconds"]] for r in rows}


def worker_name() -> str:
    return f"{socket.gethostname()}:{uuid.uuid4().hex[:6]}"
