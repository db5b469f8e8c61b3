"""Issue 6: the worker. Pickup latency when idle, thread and process workers that drain
everything and stop on SIGTERM/SIGINT, exact rollups with several workers, batches that
keep every job's own outcome, and bulk enqueue that really is bulk."""
import copy
import json
import multiprocessing
import os
import pickle
import signal
import sqlite3
import threading
import time
import uuid

import psutil
import pytest
import redis
from hypothesis import HealthCheck, given, settings as hyp_settings, strategies as hst

from pagesync import jobs, jobstate, payload, queue, stats, store
from pagesync.config import Settings
from pagesync import worker as worker_mod
from pagesync.worker import (BATCH_SECONDS, BatchWorker, Outages, PagesyncScheduler,
                             next_batch_size)

from .helpers import assert_one_outage, reference, row_count, wait_for, worker_log
from .test_rollups_exact import make_scenario

FAST = dict(worker_heartbeat=0.5, reconcile_interval=1)


def states(st) -> dict:
    rows = st.conn().execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()
    return {r[0]: r[1] for r in rows}


def sync_ok(st, token, body) -> dict:
    resp = st.sync(token, body)
    assert resp.status_code == 200, resp.text
    return resp.json()["data"]


def visits_body(n: int, prefix: str = "pv", start: int = 1764547200000, tabs: int = 7) -> dict:
    """n valid extension visits over a few tabs, hosts and two days."""
    hosts = ("en.wikipedia.org", "github.com", "news.bbc.co.uk", "www.youtube.com", "x.com")
    out = []
    for i in range(n):
        started = start + i * 97_000
        out.append({"id": f"{prefix}_{started}_{i % tabs}", "url": f"https://{hosts[i % 5]}/p/{i}",
                    "title": f"page {i}", "startedAt": started, "duration": 1000 + 7919 * i % 600_000,
                    "activeDuration": 500 + 3571 * i % 1000, "tabId": i % tabs})
    return {"pageVisits": out, "tabAggregates": [], "anonymousClientId": "anon_worker_test"}


def exact(st) -> None:
    """Every record processed at its latest revision; rollups equal a fresh computation."""
    conn = st.conn()
    for table in ("page_visits", "tab_aggregates"):
        behind = conn.execute(f"SELECT COUNT(*) FROM {table} WHERE processed_revision IS NULL "
                              f"OR processed_revision < revision").fetchone()[0]
        assert behind == 0, f"{behind} {table} not processed"
    check = stats.verify(conn, "UTC")
    assert check["equal"], check["differences"]
    assert conn.execute("SELECT SUM(visits) FROM rollups").fetchone()[0] == row_count(conn, "page_visits")


def worker_children(proc) -> list:
    try:
        return psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def wait_exit(proc, timeout: float) -> int:
    proc.wait(timeout)
    return proc.returncode


# ---------------------------------------------------------------- pickup latency

def test_idle_worker_picks_up_a_new_job_within_a_second(stack_factory, queue_url):
    st = stack_factory(queue_url, **FAST)
    st.start_server()
    token = st.token()
    st.start_worker()
    wait_for(lambda: any(w["state"] == "alive" for w in st.snapshot()["workers"]), 20,
             "the worker's heartbeat")
    body = reference("extension_visits.json")
    latencies = []
    for i, visit in enumerate(body["pageVisits"][:3]):
        time.sleep(1.5)  # idle long enough for the polling to back off fully
        sent = time.time()
        assert sync_ok(st, token, {"pageVisits": [visit]})["jobs_enqueued"] == 1
        row = wait_for(lambda: st.conn().execute(
            "SELECT started_at, finished_at, state FROM jobs WHERE record_id = ? AND state = 'done'",
            (visit["id"],)).fetchone(), 10, "the new job done")
        latencies.append(row["started_at"] - sent)
    assert all(0 <= lat < 1.0 for lat in latencies), latencies


# ---------------------------------------------------------------- drain and stop

@pytest.mark.parametrize("kind", ["thread", "process"])
def test_workers_drain_everything_then_stop_on_sigterm(stack_factory, queue_url, kind):
    st = stack_factory(queue_url, **FAST)
    st.start_server()
    token = st.token()
    visits, aggs = reference("extension_visits.json"), reference("extension_aggregates.json")
    sync_ok(st, token, visits)
    sync_ok(st, token, aggs)
    sync_ok(st, token, visits_body(300))
    total = len(visits["pageVisits"]) + len(aggs["tabAggregates"]) + 300
    worker = st.start_worker(workers=2, kind=kind)
    st.wait_drained(60)
    assert states(st) == {"done": total}
    exact(st)
    snap = st.snapshot()
    assert snap["queue_depth"] == 0
    (me,) = [w for w in snap["workers"] if w["pid"] == worker.pid]
    assert me["kind"] == kind and me["state"] == "alive"
    if kind == "process":  # two workers, the scheduler and the supervisor
        assert len(worker_children(worker)) == 4
    children = worker_children(worker)
    t0 = time.monotonic()
    worker.send_signal(signal.SIGTERM)
    assert wait_exit(worker, 10) == 0
    assert time.monotonic() - t0 < 5
    assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    assert [w["state"] for w in st.snapshot()["workers"] if w["pid"] == worker.pid] == ["stopped"]


@pytest.mark.parametrize("how", ["SIGTERM", "Ctrl-C"])
def test_process_workers_finish_in_flight_jobs_on_signal(stack_factory, how):
    """Ctrl-C in a terminal sends SIGINT to the whole process group, children included:
    only the parent decides, and the jobs in flight finish."""
    st = stack_factory(shutdown_timeout=10, **FAST)
    st.start_server()
    token = st.token()
    sync_ok(st, token, reference("extension_visits.json"))
    worker = st.start_worker(workers=2, kind="process", extra_env={"PAGESYNC_FAULT": "slow-job:0.6"})
    wait_for(lambda: states(st).get("done", 0) >= 1 and states(st).get("running", 0) >= 1, 30,
             "a drain in progress")
    if how == "SIGTERM":
        worker.send_signal(signal.SIGTERM)
    else:
        os.killpg(worker.pid, signal.SIGINT)  # the worker leads its own process group
    assert wait_exit(worker, 15) == 0
    after = states(st)
    assert after.get("running", 0) == 0, after  # in-flight jobs finished
    assert 0 < after["done"] < len(reference("extension_visits.json")["pageVisits"]), after
    conn = st.conn()
    errors = conn.execute("SELECT COUNT(*) FROM jobs WHERE error IS NOT NULL").fetchone()[0]
    assert errors == 0  # nothing was interrupted half-way
    st.start_worker(workers=2, kind="process")
    st.wait_drained(30)
    exact(st)


def test_four_workers_exact_rollups_while_records_keep_changing(stack_factory, queue_url):
    st = stack_factory(queue_url, **FAST)
    st.start_server()
    token = st.token()
    st.start_worker(workers=4, kind="thread")
    body = visits_body(900)
    sync_ok(st, token, body)
    sync_ok(st, token, reference("extension_aggregates.json"))
    sync_ok(st, token, reference("extension_visits.json"))
    for round_ in range(3):  # open visits sent again, longer, while the workers drain
        longer = copy.deepcopy(body)
        for v in longer["pageVisits"][round_::4]:
            v["duration"] += 60_000 * (round_ + 1)
            v["activeDuration"] += 1000
        body = longer
        sync_ok(st, token, longer)
    st.wait_drained(60)
    assert set(states(st)) == {"done"}
    exact(st)


# ---------------------------------------------------------------- batches, in process

def stored_jobs(tmp_path, n: int, prefix: str = "pv") -> tuple:
    settings = Settings(db=str(tmp_path / "batch.db"), retries=2)
    store.init_db(settings.db)
    conn = store.connect(settings.db)
    store.create_token(conn, "alice")
    batch = payload.parse_batch(visits_body(n, prefix), int(time.time() * 1000))
    saved = store.save_batch(conn, 1, batch)
    return settings, conn, saved["jobs"]


def job_rows(conn) -> dict:
    return {r["record_id"]: dict(r) for r in conn.execute("SELECT * FROM jobs")}


def test_a_failing_job_in_a_batch_fails_alone(tmp_path):
    _, conn, todo = stored_jobs(tmp_path, 40)
    bad = todo[13]
    settings = Settings(db=conn.execute("PRAGMA database_list").fetchone()["file"],
                        fault=f"fail-record:{bad[2]}", retries=2)
    retries = jobs.JobRunner(settings).run_many(todo)
    assert [job for job, _ in retries] == [bad] and retries[0][1] > 0
    rows = job_rows(conn)
    assert {r["state"] for k, r in rows.items() if k != bad[2]} == {"done"}
    assert rows[bad[2]]["state"] == "retrying"
    assert rows[bad[2]]["error"] == f"RuntimeError: injected failure for {bad[2]}"
    assert {r["attempts"] for r in rows.values()} == {1}  # counted once each, in one go


def test_an_error_inside_the_batch_transaction_is_isolated(tmp_path):
    settings, conn, todo = stored_jobs(tmp_path, 30)
    victim = todo[7][2]
    with store.transaction(conn):  # a record the processing cannot read
        conn.execute("UPDATE page_visits SET data = '{broken' WHERE id = ?", (victim,))
    retries = jobs.JobRunner(settings).run_many(todo)
    assert [job[2] for job, _ in retries] == [victim]
    rows = job_rows(conn)
    assert rows[victim]["state"] == "retrying" and "JSONDecodeError" in rows[victim]["error"]
    assert sum(r["state"] == "done" for r in rows.values()) == 29
    assert conn.execute("SELECT SUM(visits) FROM rollups").fetchone()[0] == 29


def test_a_job_with_an_earlier_attempt_runs_alone_and_duplicates_run_once(tmp_path):
    settings, conn, todo = stored_jobs(tmp_path, 10)
    with store.transaction(conn):  # as if its worker died mid-job once
        conn.execute("UPDATE jobs SET state = 'running', attempts = 1 WHERE record_id = ?",
                     (todo[3][2],))
    verdicts = jobstate.begin_many(conn, todo + todo[:2], "w", 3)
    assert verdicts == ["run"] * 3 + ["alone"] + ["run"] * 6 + ["skip", "skip"]
    rows = job_rows(conn)
    assert rows[todo[3][2]]["attempts"] == 1  # untouched: begin() counts it when it runs alone
    assert {rows[j[2]]["attempts"] for j in todo if j != todo[3]} == {1}
    assert {rows[j[2]]["state"] for j in todo} == {"running"}


def test_batch_size_grows_for_fast_jobs_and_shrinks_for_slow_ones():
    size = 1
    for _ in range(10):
        size = next_batch_size(size, size, 0.001, 100)
    assert size == 100
    assert next_batch_size(100, 100, BATCH_SECONDS * 3, 100) == 50
    assert next_batch_size(1, 1, 0.6, 100) == 1  # a slow job: one at a time
    assert next_batch_size(8, 3, 0.001, 100) == 8  # the queue ran dry: no reason to grow
    assert next_batch_size(64, 64, 0.001, 10) == 10  # a smaller limit is obeyed at once


# ---------------------------------------------------------------- bulk enqueue

def test_sqlite_bulk_enqueue_is_one_transaction(tmp_path):
    """On the embedded queue the jobs table is the queue: enqueueing many committed jobs is
    one transaction, and workers take them oldest first, each job once."""
    settings = Settings(db=str(tmp_path / "q.db"))
    store.init_db(settings.db)
    conn = store.connect(settings.db)
    todo = [(store.TASK_VISIT, 1, f"pv_{i:04d}", 1) for i in range(2500)]
    with store.transaction(conn):
        conn.executemany("INSERT INTO jobs (task, user_id, record_id, revision, state, created_at) "
                         "VALUES (?, ?, ?, ?, 'pending', 0)", todo)
    huey = queue.make_huey(settings)
    statements = []
    huey.storage.conn.set_trace_callback(statements.append)
    queue.enqueue_jobs(huey, todo)
    verbs = [s.split()[0].upper() for s in statements]
    assert verbs.count("BEGIN") == 1 and verbs.count("COMMIT") == 1, verbs[:5]
    assert verbs.count("UPDATE") == 2500
    assert huey.pending_count() == 2500
    taken = queue.dequeue_batch(huey, 100)
    assert [huey.deserialize_task(m).args for m in taken] == [(1, f"pv_{i:04d}", 1) for i in range(100)]
    assert huey.pending_count() == 2400
    rest = queue.dequeue_batch(huey, 5000)
    assert len(rest) == 2400 and queue.dequeue_batch(huey, 100) == []
    assert {huey.deserialize_task(m).args[1] for m in taken + rest} == {job[2] for job in todo}
    counts = dict(conn.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall())
    assert counts == {"running": 2500}  # taken: a worker's until it runs them


def test_redis_bulk_enqueue_is_one_lpush_per_thousand(tmp_path, redis_server):
    queue_url = redis_server.url
    redis.Redis.from_url(queue_url).flushdb()
    settings = Settings(db=str(tmp_path / "q.db"), queue=queue_url)
    huey = queue.make_huey(settings)
    r = redis.Redis.from_url(queue_url)

    def lpush_calls():
        return r.info("commandstats").get("cmdstat_lpush", {}).get("calls", 0)

    before = lpush_calls()
    queue.enqueue_jobs(huey, [(store.TASK_VISIT, 1, f"pv_{i}", 1) for i in range(2500)])
    assert lpush_calls() - before == 3
    assert huey.pending_count() == 2500
    taken = queue.dequeue_batch(huey, 100)
    assert [huey.deserialize_task(m).args for m in taken] == [(1, f"pv_{i}", 1) for i in range(100)]
    assert huey.pending_count() == 2400
    r.delete(huey.storage.queue_key)


def test_messages_are_plain_tuples_read_back_as_huey_messages(tmp_path):
    """A batch's messages are pickled as tagged plain tuples (pickled in C); the worker
    reads them as Huey's own messages, and messages Huey pickled itself (a queue left by
    an earlier version) still read."""
    huey = queue.make_huey(Settings(db=str(tmp_path / "q.db")))
    data = queue.job_messages(huey, [(store.TASK_VISIT, 7, "pv_1", 3)])[0]
    assert type(pickle.loads(data)) is tuple
    task = huey.deserialize_task(data)
    assert (task.name, task.args) == (huey.pagesync_tasks[store.TASK_VISIT].name, (7, "pv_1", 3))
    own = pickle.dumps(huey._registry.create_message(huey.pagesync_tasks[store.TASK_AGGREGATE].s(
        1, "tab_1_2", 1)), pickle.HIGHEST_PROTOCOL)
    assert huey.deserialize_task(own).args == (1, "tab_1_2", 1)
    assert huey.serializer.deserialize(huey.serializer.serialize({"k": (1, 2)})) == {"k": (1, 2)}


# ---------------------------------------------------------------- batches keep rollups exact

@hyp_settings(max_examples=40, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rng=hst.randoms(use_true_random=False), users=hst.integers(1, 3),
       tz=hst.sampled_from(["UTC", "Europe/Paris"]))
def test_batches_of_any_size_keep_rollups_exact(tmp_path, rng, users, tz):
    """The random scenarios of test_rollups_exact (re-sends, stale sends, tab links), run
    through run_many in batches of random sizes, with duplicate deliveries in a batch."""
    s = Settings(db=str(tmp_path / f"b{uuid.uuid4().hex}.db"), timezone=tz)
    store.init_db(s.db)
    conn = store.connect(s.db, durable=False)
    for u in range(users):
        store.create_token(conn, f"u{u}")
    ids = [store.user_id_by_name(conn, f"u{u}") for u in range(users)]
    runner, outbox = jobs.JobRunner(s), []
    for user, body in make_scenario(rng, users):
        saved = store.save_batch(conn, ids[user], payload.parse_batch(body, int(time.time() * 1000)))
        outbox += saved["jobs"]
        if outbox and rng.random() < 0.5:  # the worker takes a batch meanwhile, duplicates too
            rng.shuffle(outbox)
            size = rng.randint(1, len(outbox))
            batch, outbox = outbox[:size], outbox[size:]
            assert runner.run_many(batch + rng.sample(batch, k=min(2, len(batch)))) == []
    while outbox:
        size = rng.randint(1, 40)
        batch, outbox = outbox[:size], outbox[size:]
        assert runner.run_many(batch) == []
    states_ = {r[0] for r in conn.execute("SELECT DISTINCT state FROM jobs")}
    assert states_ == {"done"}
    check = stats.verify(conn, tz)
    assert check["equal"], check["differences"]


# ---------------------------------------------------------------- outages in the log

def test_an_outage_is_one_warning_a_reminder_a_minute_and_one_line_when_it_ends(caplog):
    clock = [1000.0]
    out = Outages(reminder=60, clock=lambda: clock[0])
    down = redis.ConnectionError("Connection refused.")
    with caplog.at_level("INFO", logger="pagesync.worker"):
        for t in range(0, 130, 2):  # every poll of every worker fails for 2 minutes
            clock[0] = 1000 + t
            assert out.failed(down)
        out.ok("database")  # the database was never away: nothing to say
        clock[0] = 1140
        out.ok("queue")
        out.ok("queue")
    said = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert said == [
        ("WARNING", "queue unreachable (ConnectionError: Connection refused.); "
                    "the worker keeps retrying"),
        ("WARNING", "queue still unreachable after 60 s (ConnectionError: Connection refused.)"),
        ("WARNING", "queue still unreachable after 120 s (ConnectionError: Connection refused.)"),
        ("INFO", "queue reachable again after 140 s")]
    assert all(r.exc_info is None for r in caplog.records)
    caplog.clear()
    # what counts as an outage, and of what
    assert not out.failed(RuntimeError("a bug"))
    assert not out.failed(sqlite3.OperationalError("no such table: jobs"))
    assert out.failed(store.StorageBusy("database is locked"))
    assert out.failed(sqlite3.OperationalError("database is locked"), busy="queue")
    assert [r.getMessage().split(" (")[0] for r in caplog.records] == [
        "database busy", "queue unreachable"]


def test_outages_are_shared_by_forked_worker_processes(caplog):
    """Process workers each see the outage; it is said once for the whole consumer."""
    out = Outages()
    ctx = multiprocessing.get_context("fork")
    child = ctx.Process(target=out.failed, args=(store.StorageBusy("database is locked"),))
    child.start()
    child.join(10)
    assert child.exitcode == 0 and out.active("database")
    with caplog.at_level("INFO", logger="pagesync.worker"):
        assert out.failed(store.StorageBusy("database is locked"))  # said by the child
        out.ok("database")
    assert [r.getMessage().split(" after")[0] for r in caplog.records] == [
        "database available again"]


def test_unexpected_errors_in_the_worker_loops_keep_their_traceback(tmp_path, monkeypatch,
                                                                     caplog):
    settings = Settings(db=str(tmp_path / "w.db"))
    store.init_db(settings.db)
    huey = queue.make_huey(settings)
    out = Outages()
    w = BatchWorker(huey, threading.Event(), 0.001, 0.001, 1.0, settings=settings, outages=out)
    errors = [RuntimeError("a bug"), store.StorageBusy("database is locked"),
              store.StorageBusy("database is locked")]

    def dequeue(huey_, size):
        raise errors.pop(0)

    monkeypatch.setattr(worker_mod, "dequeue_batch", dequeue)
    stopped = threading.Event()
    stopped.set()  # no waiting between rounds
    sched = PagesyncScheduler(huey, stopped, 1, False, out, "database")
    real_read = huey.read_schedule
    monkeypatch.setattr(huey, "read_schedule", lambda now=None: (_ for _ in ()).throw(
        ZeroDivisionError("another bug")))
    with caplog.at_level("INFO"):
        for _ in range(3):
            w.loop()
        sched.loop()
        monkeypatch.setattr(huey, "read_schedule", real_read)
        sched.loop()  # the schedule's write went through: the database is back
    said = [(r.levelname, r.getMessage().split(" (")[0], bool(r.exc_info))
            for r in caplog.records]
    assert said == [("ERROR", "Error reading from queue", True),
                    ("WARNING", "database busy", False),
                    ("ERROR", "Error reading schedule.", True),
                    ("INFO", "database available again after 0 s", False)]


def hold_database(path: str):
    """Another program's exclusive transaction on the database (a backup, a sqlite3 shell)."""
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    return holder


@pytest.mark.parametrize("kind", ["thread", "process"])
def test_a_locked_database_is_one_warning_then_one_line_when_it_is_free(stack_factory, kind):
    st = stack_factory(**FAST)
    st.start_server()
    token = st.token()
    worker = st.start_worker(kind=kind)
    wait_for(lambda: any(w["state"] == "alive" for w in st.snapshot()["workers"]), 20,
             "the worker's heartbeat")
    holder = hold_database(st.settings.db)
    try:  # past the 10 s busy timeout, the scheduler and the supervisor fail every round
        wait_for(lambda: "database busy" in worker_log(st), 30, "the worker to log the lock")
        time.sleep(2)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    wait_for(lambda: "database available again" in worker_log(st), 15, "the end of the outage")
    sync_ok(st, token, visits_body(20))
    st.wait_drained(30)  # it recovered by itself
    assert states(st) == {"done": 20}
    assert worker.poll() is None
    log = worker_log(st)
    assert_one_outage(log, "database busy", "database available again")


def test_redis_going_away_under_a_running_worker_is_one_warning(stack_factory, dedicated_redis):
    st = stack_factory(dedicated_redis.url, **FAST)
    st.start_server()
    token = st.token()
    worker = st.start_worker(kind="process")
    wait_for(lambda: any(w["state"] == "alive" for w in st.snapshot()["workers"]), 20,
             "the worker's heartbeat")
    dedicated_redis.stop()
    wait_for(lambda: "queue unreachable" in worker_log(st), 10, "the worker to log it")
    sync_ok(st, token, visits_body(20))  # pending while Redis is away
    time.sleep(4)  # polls, scheduler ticks, heartbeats and reconciles all fail meanwhile
    dedicated_redis.start()
    wait_for(lambda: "queue reachable again" in worker_log(st), 15, "the end of the outage")
    st.wait_drained(30)
    assert states(st) == {"done": 20}
    assert worker.poll() is None
    log = worker_log(st)
    assert_one_outage(log, "queue unreachable", "queue reachable again")


# ---------------------------------------------------------------- a locked database at start

def words(log: str) -> str:
    """A log with its lines' wrapping undone (Rich wraps at the terminal's width)."""
    return " ".join(log.split())


def hold_lock(path: str, seconds: float) -> threading.Thread:
    """Another process's transaction (a backup, a sqlite3 shell) held for `seconds`."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("BEGIN IMMEDIATE")

    def release():
        time.sleep(seconds)
        conn.execute("ROLLBACK")
        conn.close()
    thread = threading.Thread(target=release, daemon=True)
    thread.start()
    return thread


def test_worker_and_server_wait_for_a_locked_database_then_start(stack_factory):
    st = stack_factory()
    st.token()  # the database exists
    holder = hold_lock(st.settings.db, 5)
    worker = st.start_worker()
    server = st.start_server()  # answers /healthz only once the lock is gone
    holder.join()
    wait_for(lambda: "database available again" in words(worker_log(st)), 20, "the worker to start")
    log = words(worker_log(st))
    assert "waiting for it before starting" in log and log.count("database busy") == 1
    assert "Traceback" not in log and worker.poll() is None and server.poll() is None
    assert "waiting for it before starting" in words((st.tmp / "serve.log").read_text())


def test_sigterm_while_waiting_for_a_locked_database_exits_0(stack_factory):
    st = stack_factory()
    st.token()
    holder = hold_lock(st.settings.db, 8)
    worker = st.start_worker()
    wait_for(lambda: "waiting for it before starting" in words(worker_log(st)), 15,
             "the worker to wait")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(10) == 0
    assert "stopped while waiting for the database" in words(worker_log(st))
    holder.join()
