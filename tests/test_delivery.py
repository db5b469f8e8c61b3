"""Issue 4: delivery guarantees with real processes and real signals. Every stored record
is processed, in effect once, whatever crashes: a server dying between commit and enqueue,
a worker SIGKILLed mid-job, a job that raises or kills its worker, SIGTERM/SIGINT during a
drain, Redis going away for a while."""
import copy
import json
import os
import signal
import subprocess
import time

import psutil
import pytest
import redis
import requests

from pagesync import procs, queue, stats, store
from pagesync.config import Settings
from pagesync.queue import make_huey

from .helpers import assert_one_outage, reference, row_count, wait_for, worker_log

FAST = dict(worker_heartbeat=0.5, reconcile_interval=1)


# ---------------------------------------------------------------- helpers

def states(st) -> dict:
    """{state: count} straight from the jobs table (pending kept apart from queued)."""
    rows = st.conn().execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()
    return {r[0]: r[1] for r in rows}


def job(st, record_id: str) -> dict:
    row = st.conn().execute("SELECT * FROM jobs WHERE record_id = ?", (record_id,)).fetchone()
    return dict(row) if row else {}


def all_processed(st) -> None:
    """Every stored record has a done job at its latest revision, and the rollups equal a
    fresh computation from the stored records (nothing lost, nothing counted twice)."""
    conn = st.conn()
    for table in ("page_visits", "tab_aggregates"):
        behind = conn.execute(f"SELECT id FROM {table} WHERE processed_revision IS NULL "
                              f"OR processed_revision < revision").fetchall()
        assert not behind, f"{table} not processed: {[r[0] for r in behind]}"
    assert set(states(st)) == {"done"}, states(st)
    check = stats.verify(conn, st.settings.timezone)
    assert check["equal"], check["differences"]
    visits = conn.execute("SELECT COALESCE(SUM(visits), 0) FROM rollups").fetchone()[0]
    assert visits == row_count(conn, "page_visits")


def both_payloads():
    return reference("extension_visits.json"), reference("extension_aggregates.json")


def sync_both(st, token) -> int:
    """Sync the reference visits, then their aggregates (as the extension does); returns
    how many records that stored."""
    visits, aggs = both_payloads()
    sync_ok(st, token, visits)
    sync_ok(st, token, aggs)
    return len(visits["pageVisits"]) + len(aggs["tabAggregates"])


def broken_visits(n: int, word: str = "broken") -> list:
    """Valid visits whose id contains `word` (the worker's fail/kill fault matches it)."""
    base = reference("extension_visits.json")["pageVisits"][0]
    out = []
    for i in range(n):
        v = copy.deepcopy(base)
        v["id"] = v["visitId"] = f"pv_{word}_{i}"
        v["url"] = f"https://{word}.example/{i}"
        v["domain"] = f"{word}.example"
        v["tabId"] = 900 + i
        out.append(v)
    return out


def sync_ok(st, token, body):
    resp = st.sync(token, body)
    assert resp.status_code == 200, resp.text
    return resp.json()["data"]


def wait_exit(proc, timeout: float) -> int:
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
        raise AssertionError(f"process {proc.pid} still running after {timeout}s")


def failed_list(st) -> list:
    return json.loads(st.cli("jobs", "failed", "--json").stdout)


# ---------------------------------------------------------------- server dies after commit

@pytest.fixture(params=["sqlite", "sqlite-file", "redis"])
def any_queue(request, tmp_path):
    """The three queue layouts: SQLite inside the database (the default), SQLite in a
    separate file, Redis."""
    if request.param == "sqlite-file":
        return "sqlite:///" + str(tmp_path / "queue.db")
    if request.param == "redis":
        server = request.getfixturevalue("redis_server")
        redis.Redis.from_url(server.url).flushdb()
        return server.url
    return "sqlite"


def test_server_killed_between_commit_and_enqueue_loses_nothing(stack_factory, any_queue):
    st = stack_factory(any_queue, **FAST)
    st.start_server(extra_env={"PAGESYNC_FAULT": "exit-after-commit"})
    token = st.token()
    visits, _ = both_payloads()
    with pytest.raises(requests.ConnectionError):  # no 200: the extension will resend
        st.sync(token, visits)
    assert wait_exit(st.server, 10) == 3
    n = len(visits["pageVisits"])
    assert row_count(st.conn(), "page_visits") == n  # committed before the crash
    huey = make_huey(st.settings)
    assert states(st) == {"queued": n}  # committed with the batch
    if st.settings.queue_in_db:
        assert queue.queue_depth(huey) == n  # the rows are the messages: nothing lost
    else:
        assert queue.queue_depth(huey) == 0  # ...but their messages were never sent
    # The server comes back; the extension resends the batch: same rows, no new jobs.
    st.start_server()
    again = sync_ok(st, token, visits)
    assert again["jobs_enqueued"] == 0
    assert set(states(st)) == {"queued"}
    # the worker's reconciler finds the lost messages (queue empty, queued over 5 s ago)
    st.start_worker()
    st.wait_drained(30)
    all_processed(st)
    assert queue.queue_depth(huey) == 0


def test_default_layout_is_one_database_file(stack_factory, tmp_path):
    """The embedded default keeps records, job state and the queue in one SQLite file."""
    st = stack_factory()
    st.start_server()
    sync_both(st, st.token())
    st.start_worker()
    st.wait_drained(30)
    all_processed(st)
    assert sorted(p.name for p in tmp_path.glob("*.db")) == ["pagesync.db"]
    tables = {r[0] for r in st.conn().execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"page_visits", "jobs", "task", "schedule"} <= tables


# ---------------------------------------------------------------- worker SIGKILLed mid-job

def test_worker_sigkilled_mid_jobs_restart_processes_everything_once(stack_factory, queue_url):
    st = stack_factory(queue_url, **FAST)
    st.start_server()
    token = st.token()
    total = sync_both(st, token)
    worker = st.start_worker(extra_env={"PAGESYNC_FAULT": "slow-job:0.4"})
    wait_for(lambda: states(st).get("done", 0) >= 2 and states(st).get("running", 0) >= 1,
             30, "some jobs done and some running")
    worker.send_signal(signal.SIGKILL)
    assert wait_exit(worker, 5) == -signal.SIGKILL
    left = states(st)
    assert left.get("running", 0) >= 1 and left.get("done", 0) < total, left
    st.start_worker()
    st.wait_drained(40)
    all_processed(st)
    assert states(st) == {"done": total}
    assert make_huey(st.settings).storage.result_store_size() == 0  # results=False


def test_process_worker_sigkilled_takes_its_children_along(stack_factory):
    """kill -9 (or the OOM killer) on a --kind process worker: its children must not live
    on as orphans that keep taking jobs and heartbeating under the dead worker's name."""
    st = stack_factory(**FAST)
    st.start_server()
    token = st.token()
    visits, aggs = both_payloads()
    sync_ok(st, token, visits)
    sync_ok(st, token, aggs)
    worker = st.start_worker(kind="process", extra_env={"PAGESYNC_FAULT": "slow-job:0.4"})
    wait_for(lambda: states(st).get("done", 0) >= 2 and states(st).get("running", 0) >= 1,
             30, "some jobs done and some running")
    children = psutil.Process(worker.pid).children(recursive=True)
    assert len(children) >= 3  # two workers and the supervisor
    worker.send_signal(signal.SIGKILL)
    assert wait_exit(worker, 5) == -signal.SIGKILL
    gone, alive = psutil.wait_procs(children, timeout=5)
    for p in alive:
        p.kill()
    assert not alive, [p.pid for p in alive]
    st.start_worker(kind="process")
    st.wait_drained(40)
    all_processed(st)


# ---------------------------------------------------------------- a job that raises

def watch_attempts(st, record_id: str, timeout: float) -> dict:
    """Poll one job's row until it is failed: {attempt: (started, finished, next_at)}."""
    seen, deadline = {}, time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = job(st, record_id)
        if row.get("attempts"):
            seen[row["attempts"]] = (row["started_at"], row["finished_at"], row["next_attempt_at"])
        if row.get("state") == "failed":
            return seen
        time.sleep(0.02)
    raise AssertionError(f"{record_id} not failed after {timeout}s: {job(st, record_id)}")


def test_raising_job_backs_off_then_lands_in_failed_list(stack_factory):
    st = stack_factory(retries=3, retry_base_delay=0.5, **FAST)
    st.start_server()
    token = st.token()
    visits, _ = both_payloads()
    sync_ok(st, token, {"pageVisits": visits["pageVisits"] + broken_visits(1)})
    st.start_worker(extra_env={"PAGESYNC_FAULT": "fail-record:broken"})
    history = watch_attempts(st, "pv_broken_0", 30)
    assert sorted(history) == [1, 2, 3, 4]  # the first run and 3 retries
    gaps, planned = [], []
    for k in (1, 2, 3):
        started, finished, next_at = history[k]
        planned.append(next_at - finished)
        gaps.append(history[k + 1][0] - finished)
        # base * 2^(k-1), with +-10% jitter
        assert 0.5 * 2 ** (k - 1) * 0.89 <= planned[-1] <= 0.5 * 2 ** (k - 1) * 1.11, planned
        assert gaps[-1] >= planned[-1] - 0.05, (gaps, planned)  # never early
        assert gaps[-1] <= planned[-1] + 4, (gaps, planned)  # a scheduler tick, plus load
    assert gaps[2] > gaps[0], gaps
    assert history[4][2] is None  # no further attempt planned
    [failed] = failed_list(st)
    assert failed["id"] == "visit:1:pv_broken_0" and failed["attempts"] == 4
    assert failed["error"] == "RuntimeError: injected failure for pv_broken_0"
    assert failed["traceback"].startswith("Traceback") and "apply_fault" in failed["traceback"]
    table = st.cli("jobs", "failed", env={"COLUMNS": "200"}).stdout
    assert "visit:1:pv_broken_0" in table and "injected failure" in table
    st.wait_drained(10)
    assert states(st) == {"done": len(visits["pageVisits"]), "failed": 1}


def test_operator_retries_and_discards_failed_jobs(stack_factory):
    st = stack_factory(retries=0, **FAST)
    st.start_server()
    token = st.token()
    visits, _ = both_payloads()
    broken = broken_visits(3)
    broken[1]["id"] = broken[1]["visitId"] = "pv_broken_[/b]_1"  # ids come from clients
    sync_ok(st, token, {"pageVisits": visits["pageVisits"][:3] + broken})
    worker = st.start_worker(extra_env={"PAGESYNC_FAULT": "fail-record:broken"})
    wait_for(lambda: states(st).get("failed") == 3, 20, "three failed jobs")
    table = st.cli("jobs", "failed", env={"COLUMNS": "120"}).stdout
    for i in ("0", "[/b]_1", "2"):
        assert f"visit:1:pv_broken_{i}" in table
        assert f"RuntimeError: injected failure for pv_broken_{i}" in table
    # operator mistakes get a clear message and change nothing
    assert st.cli("jobs", "retry", check=False).returncode == 2
    bad = st.cli("jobs", "retry", "pv_broken_0", check=False)
    assert bad.returncode == 1 and "not a job id" in bad.stderr
    missing = st.cli("jobs", "discard", "visit:1:pv_nope", check=False)
    assert missing.returncode == 1 and "no failed job visit:1:pv_nope" in missing.stderr
    assert states(st) == {"done": 3, "failed": 3}
    # fix the cause (a worker without the fault); discard one, retry one, then the rest
    assert procs.stop(worker, timeout=20) == 0
    st.start_worker()
    out = json.loads(st.cli("jobs", "discard", "visit:1:pv_broken_2", "--json").stdout)
    assert out == {"discarded": 1}
    out = json.loads(st.cli("jobs", "retry", "visit:1:pv_broken_0", "--json").stdout)
    assert out == {"retried": 1, "enqueued": True}
    wait_for(lambda: job(st, "pv_broken_0")["state"] == "done", 15, "the retried job done")
    assert "Retrying 1 job(s)" in st.cli("jobs", "retry", "--all").stdout
    st.wait_drained(15)
    assert [job(st, f"pv_broken_{i}")["state"] for i in ("0", "[/b]_1", "2")] == [
        "done", "done", "discarded"]
    assert failed_list(st) == []
    assert row_count(st.conn(), "page_visits") == 6  # the discarded job's record is kept


# ---------------------------------------------------------------- a job that kills its worker

def test_job_killing_its_worker_ends_in_failed_list(stack_factory):
    """Like systemd Restart=always: the worker is restarted each time it dies. The attempt
    is counted before the job runs, so the killer stops after retries+1 attempts."""
    st = stack_factory(retries=1, worker_heartbeat=0.3, reconcile_interval=0.5)
    st.start_server()
    token = st.token()
    visits, _ = both_payloads()
    sync_ok(st, token, {"pageVisits": visits["pageVisits"] + broken_visits(1, "killer")})
    fault = {"PAGESYNC_FAULT": "kill-record:killer"}
    worker, deaths = st.start_worker(workers=1, extra_env=fault), []
    deadline = time.monotonic() + 60
    while job(st, "pv_killer_0").get("state") != "failed":
        assert time.monotonic() < deadline, (deaths, job(st, "pv_killer_0"), st.logs())
        if worker.poll() is not None:
            deaths.append(worker.returncode)
            worker = st.start_worker(workers=1, extra_env=fault)
        time.sleep(0.05)
    assert deaths == [-signal.SIGKILL] * 2
    killer = job(st, "pv_killer_0")
    assert killer["attempts"] == 2
    assert "gave up after 2 attempts" in killer["error"] and "died" in killer["error"]
    st.wait_drained(20)
    assert states(st) == {"done": len(visits["pageVisits"]), "failed": 1}
    assert [f["id"] for f in failed_list(st)] == ["visit:1:pv_killer_0"]
    assert procs.stop(worker, timeout=20) == 0


@pytest.mark.parametrize("backend", ["sqlite", "queue-file", "redis"])
def test_job_killing_a_process_worker_child_is_not_stuck_running(stack_factory, backend, request,
                                                                 tmp_path):
    """With --kind process only the child dies; its parent keeps heartbeating. The parent
    sees the child die (within 5 s) and puts the jobs it was running back in the queue at
    once, not after lost_after (here 300 s): the killer runs again, then fails."""
    queue_url = {"sqlite": "sqlite", "queue-file": f"sqlite:///{tmp_path / 'queue.db'}"}.get(backend) \
        or request.getfixturevalue("queue_url_redis")  # the parent sends messages (and closes them)
    st = stack_factory(queue_url, retries=1, lost_after=300, **FAST)
    st.start_server()
    token = st.token()
    visits, _ = both_payloads()
    sync_ok(st, token, {"pageVisits": visits["pageVisits"] + broken_visits(1, "killer")})
    worker = st.start_worker(workers=1, kind="process",
                             extra_env={"PAGESYNC_FAULT": "kill-record:killer"})
    wait_for(lambda: job(st, "pv_killer_0").get("state") == "failed", 40,
             "the killer job in the failed list")
    assert worker.poll() is None  # the parent survived; Huey restarted the child
    assert job(st, "pv_killer_0")["attempts"] == 2
    st.wait_drained(20)
    assert states(st) == {"done": len(visits["pageVisits"]), "failed": 1}
    assert procs.stop(worker, timeout=20) == 0
    log = " ".join(worker_log(st).split())
    assert log.count("job(s) they were running went back to the queue") == 2, log


# ---------------------------------------------------------------- graceful shutdown

@pytest.mark.parametrize("sig, kind", [(signal.SIGTERM, "thread"), (signal.SIGINT, "thread"),
                                       (signal.SIGTERM, "process"), (signal.SIGINT, "process")],
                         ids=["SIGTERM", "SIGINT", "SIGTERM-process", "Ctrl-C-process-group"])
def test_signal_during_drain_exits_0_and_loses_nothing(stack_factory, sig, kind):
    """SIGTERM goes to the worker's pid (systemd, Docker); Ctrl-C in a terminal sends
    SIGINT to its whole process group, children included."""
    st = stack_factory(shutdown_timeout=5, **FAST)
    st.start_server()
    token = st.token()
    total = sync_both(st, token)
    worker = st.start_worker(kind=kind, extra_env={"PAGESYNC_FAULT": "slow-job:0.5"})
    wait_for(lambda: states(st).get("done", 0) >= 1 and states(st).get("running", 0) >= 1,
             30, "a drain in progress")
    t0 = time.monotonic()
    if sig == signal.SIGINT and kind == "process":
        os.killpg(worker.pid, sig)  # the worker leads its own session (start_new_session)
    else:
        worker.send_signal(sig)
    assert wait_exit(worker, 15) == 0
    assert time.monotonic() - t0 < 5 + 2
    after = states(st)
    assert after.get("running", 0) == 0, after  # in-flight jobs finished
    assert after.get("done", 0) < total, after  # and it stopped taking new ones
    st.start_worker()
    st.wait_drained(30)
    all_processed(st)


@pytest.mark.parametrize("kind", ["thread", "process"])
def test_shutdown_timeout_cuts_long_jobs_which_run_again_later(stack_factory, kind):
    st = stack_factory(shutdown_timeout=1, **FAST)
    st.start_server()
    token = st.token()
    visits, _ = both_payloads()
    sync_ok(st, token, visits)
    worker = st.start_worker(kind=kind, extra_env={"PAGESYNC_FAULT": "slow-job:60"})
    wait_for(lambda: states(st).get("running", 0) == 2, 30, "two long jobs running")
    t0 = time.monotonic()
    worker.send_signal(signal.SIGTERM)
    assert wait_exit(worker, 10) == 0
    assert time.monotonic() - t0 < 1 + 3
    assert states(st).get("running") == 2  # cut short, on a worker marked stopped
    st.start_worker()
    st.wait_drained(30)
    all_processed(st)


# ---------------------------------------------------------------- Redis away for a while

def test_a_hung_redis_costs_syncs_seconds_not_minutes(stack_factory, dedicated_redis):
    """A Redis that accepts connections but does not answer (stopped, or its host gone):
    the first sync waits one socket timeout for it, the next ones (within 5 s) do not wait
    at all; every sync is stored (200, its jobs pending) and processed once it is back."""
    st = stack_factory(dedicated_redis.url, **FAST)
    st.start_server()
    token = st.token()
    visits, aggs = both_payloads()
    sync_ok(st, token, visits)
    dedicated_redis.proc.send_signal(signal.SIGSTOP)
    times = []
    for i in range(4):
        t0 = time.monotonic()
        batch = {"pageVisits": [{**v, "id": f"{v['id']}_hung{i}"} for v in visits["pageVisits"]]}
        sync_ok(st, token, batch)
        times.append(time.monotonic() - t0)
    assert times[0] < queue.REDIS_TIMEOUT + 1.5, times
    assert max(times[1:]) < 1.0, times
    n = len(visits["pageVisits"])
    assert states(st) == {"queued": n, "pending": 4 * n}
    dedicated_redis.proc.send_signal(signal.SIGCONT)
    st.start_worker()
    st.wait_drained(40)
    all_processed(st)


def test_redis_down_syncs_still_200_and_everything_processed_after(stack_factory, dedicated_redis):
    st = stack_factory(dedicated_redis.url, **FAST)
    st.start_server()
    token = st.token()
    visits, aggs = both_payloads()
    sync_ok(st, token, visits)  # queued in Redis...
    dedicated_redis.stop()  # ...and lost with it (no persistence)
    t0 = time.monotonic()
    data = sync_ok(st, token, aggs)
    assert time.monotonic() - t0 < 5
    assert data["jobs_enqueued"] == len(aggs["tabAggregates"])
    assert states(st) == {"queued": len(visits["pageVisits"]),
                          "pending": len(aggs["tabAggregates"])}
    assert requests.get(st.url + "/readyz", timeout=5).status_code == 503
    # what watch shows: the outage, and the jobs waiting in SQLite for it to end
    snap = st.snapshot()
    assert snap["queue_depth"] == -1 and snap["pending"] == len(aggs["tabAggregates"])
    screen = " ".join(st.cli("watch", "--once").stdout.split())
    assert (f"The queue is unreachable. Syncs are still stored; {len(aggs['tabAggregates'])} "
            "jobs wait in SQLite") in screen
    assert f"awaiting delivery {len(aggs['tabAggregates'])}" in screen
    assert "scheduled retries unknown" in screen  # not 0: the queue did not say
    metrics = requests.get(st.url + "/metrics", timeout=10).text.splitlines()
    pending = [line for line in metrics if line.startswith("pagesync_jobs_pending ")]
    assert pending == [f"pagesync_jobs_pending {float(len(aggs['tabAggregates']))}"]
    assert "pagesync_queue_scheduled NaN" in metrics
    worker = st.start_worker()
    time.sleep(1.5)
    cpu = psutil.Process(worker.pid)
    before = sum(cpu.cpu_times()[:2])
    time.sleep(2)
    assert (sum(cpu.cpu_times()[:2]) - before) / 2 < 0.25  # waits, does not spin
    assert worker.poll() is None
    assert states(st).get("done", 0) == 0
    dedicated_redis.start()
    st.wait_drained(40)
    all_processed(st)
    assert worker.poll() is None
    snap = st.snapshot()
    assert snap["pending"] == 0 and snap["queue_depth"] == 0
    assert "unreachable" not in st.cli("watch", "--once").stdout
    # the outage in the log: one warning, no traceback, and when it ended
    log = worker_log(st)
    assert_one_outage(log, "queue unreachable", "queue reachable again")


def lost_jobs(conn, prefix: str, n: int, created_at: float) -> None:
    """n pending jobs as a sync leaves them while the queue is away."""
    with store.transaction(conn):
        conn.executemany(
            "INSERT INTO jobs (task, user_id, record_id, revision, state, created_at) "
            "VALUES (?, 1, ?, 1, 'pending', ?)",
            [(store.TASK_VISIT, f"{prefix}_{i}", created_at) for i in range(n)])


def test_one_reconcile_pass_delivers_every_lost_job(tmp_path, queue_url, caplog):
    """After a long outage the worker gets every lost job from one pass (chunk after
    chunk), not one chunk per PAGESYNC_RECONCILE_INTERVAL."""
    settings = Settings(db=str(tmp_path / "r.db"), queue=queue_url)
    store.init_db(settings.db)
    conn, huey = store.connect(settings.db), make_huey(settings)
    lost_jobs(conn, "lost", 35, time.time() - 600)
    lost_jobs(conn, "fresh", 2, time.time())  # pending under 5 s: its own enqueue may come
    assert queue.reconcile(conn, huey, settings, limit=10) == 35
    assert queue.queue_depth(huey) == 35
    counts = conn.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()
    assert {r[0]: r[1] for r in counts} == {"queued": 35, "pending": 2}
    assert queue.reconcile(conn, huey, settings, limit=10) == 0  # on their way: not due again

    # bounded: past its time budget, or when the worker stops, a pass leaves the rest
    lost_jobs(conn, "late", 25, time.time() - 600)
    with caplog.at_level("WARNING", logger="pagesync.queue"):
        assert queue.reconcile(conn, huey, settings, limit=10, budget=0) == 10
    assert "15 due jobs left for its next pass" in caplog.text
    assert queue.reconcile(conn, huey, settings, limit=10, keep_going=lambda: False) == 10
    assert queue.reconcile(conn, huey, settings, limit=10) == 5
    assert queue.queue_depth(huey) == 60
    huey.flush()


# ---------------------------------------------------------------- bounded growth

def test_failed_list_is_capped(stack_factory):
    st = stack_factory(retries=0, failed_keep=2, **FAST)
    st.start_server()
    token = st.token()
    sync_ok(st, token, {"pageVisits": broken_visits(5)})
    worker = st.start_worker(extra_env={"PAGESYNC_FAULT": "fail-record:broken"})
    st.wait_drained(20)
    wait_for(lambda: sum(states(st).values()) == states(st).get("failed", 0)
             + states(st).get("discarded", 0), 20, "every job failed or discarded")
    assert states(st) == {"failed": 2, "discarded": 3}
    assert procs.stop(worker, timeout=20) == 0
    kept = failed_list(st)
    newest = st.conn().execute("SELECT record_id FROM jobs WHERE state IN ('failed', 'discarded') "
                               "ORDER BY finished_at DESC LIMIT 2").fetchall()
    assert sorted(f["record_id"] for f in kept) == sorted(r[0] for r in newest)
    # a lower cap takes effect when a worker starts (its supervisor prunes at once)
    st.start_worker(extra_env={"PAGESYNC_FAILED_KEEP": "1"})
    wait_for(lambda: states(st) == {"failed": 1, "discarded": 4}, 15, "the failed list cut to 1")
    assert [f["record_id"] for f in failed_list(st)] == [newest[0][0]]


def test_the_log_of_syncs_is_pruned_when_a_worker_starts(stack_factory):
    st = stack_factory(**FAST)
    st.start_server()
    token = st.token()
    first = sync_ok(st, token, both_payloads()[0])["sync_id"]
    time.sleep(1.5)
    second = sync_ok(st, token, {"pageVisits": broken_visits(1)})["sync_id"]
    ids = lambda: [r[0] for r in st.conn().execute("SELECT id FROM syncs ORDER BY received_at")]
    assert ids() == [first, second]
    st.start_worker(extra_env={"PAGESYNC_SYNCS_KEEP": "1"})  # keep the last second only
    wait_for(lambda: ids() == [second], 15, "the older sync pruned")


def test_database_from_the_two_file_layout_is_processed_after_upgrade(stack_factory, tmp_path):
    """Jobs queued in a separate queue file (the earlier default, pagesync-queue.db) are
    delivered again by the reconciler once the worker runs on the one-file default."""
    old = stack_factory("sqlite:///" + str(tmp_path / "pagesync-queue.db"), **FAST)
    old.start_server()
    n = sync_both(old, old.token())
    old.stop()
    assert states(old) == {"queued": n}
    new = stack_factory(**FAST)  # same database, the default queue inside it
    assert new.settings.queue_in_db
    new.start_worker()
    new.wait_drained(40)
    all_processed(new)


def test_jobs_reprocess_corrects_rollups_made_by_older_rules(stack_factory):
    """After an upgrade that changed the processing rules (a host key, say), `pagesync jobs
    reprocess` runs every record again and the rollups end up as a fresh computation."""
    st = stack_factory("sqlite", **FAST)
    st.start_server()
    n = sync_both(st, st.token())
    st.start_worker()
    st.wait_drained(60)
    all_processed(st)
    for proc in st.workers:
        procs.stop(proc, timeout=20)
    st.workers.clear()

    # what an older version would have left: another key for one host, in the rollups and
    # in each record's applied contribution (kept consistent, as processing keeps them)
    conn = st.conn()
    host = conn.execute("SELECT host FROM rollups GROUP BY host ORDER BY SUM(visits) DESC").fetchone()[0]
    old = "old-rules." + host
    with store.transaction(conn):
        conn.execute("UPDATE rollups SET host = ? WHERE host = ?", (old, host))
        for table in ("page_visits", "tab_aggregates"):
            conn.execute(f"UPDATE {table} SET applied = replace(applied, ?, ?)",
                         (json.dumps(host), json.dumps(old)))
    assert not stats.verify(conn, st.settings.timezone)["equal"]

    out = json.loads(st.cli("jobs", "reprocess", "--json").stdout)
    assert out == {"reprocessing": n}
    assert st.snapshot()["pending"] == n
    st.start_worker()
    st.wait_drained(60)
    all_processed(st)
    assert not conn.execute("SELECT 1 FROM rollups WHERE host = ?", (old,)).fetchall()
    res = st.cli("jobs", "reprocess", "--task", "Nope", check=False)
    assert res.returncode == 2 and "--task must be one of" in res.stderr


OLD_LAYOUT = """
CREATE TABLE page_visits (
    user_id INTEGER NOT NULL, id TEXT NOT NULL, url TEXT, title TEXT, started_at INTEGER,
    tab_id INTEGER, client_id TEXT, data TEXT NOT NULL, content_hash TEXT NOT NULL,
    revision INTEGER NOT NULL, received_at REAL, updated_at REAL,
    norm_url TEXT, host TEXT, site TEXT, category TEXT, engagement REAL, unread INTEGER,
    applied TEXT, processed_revision INTEGER, processed_at REAL,
    PRIMARY KEY (user_id, id)) WITHOUT ROWID;
CREATE TABLE tab_aggregates (
    user_id INTEGER NOT NULL, id TEXT NOT NULL, tab_id INTEGER, client_id TEXT,
    start_ms INTEGER, page_visit_id TEXT, data TEXT NOT NULL, content_hash TEXT NOT NULL,
    revision INTEGER NOT NULL, received_at REAL, updated_at REAL,
    linked_visit_id TEXT, tab_seconds INTEGER, top_host TEXT,
    applied TEXT, processed_revision INTEGER, processed_at REAL,
    PRIMARY KEY (user_id, id)) WITHOUT ROWID;
CREATE TABLE jobs (
    task TEXT NOT NULL, user_id INTEGER NOT NULL, record_id TEXT NOT NULL,
    revision INTEGER NOT NULL, state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
    created_at REAL, enqueued_at REAL, started_at REAL, finished_at REAL,
    done_revision INTEGER, next_attempt_at REAL, error TEXT, traceback TEXT, worker TEXT,
    PRIMARY KEY (task, user_id, record_id)) WITHOUT ROWID;
"""


def test_a_database_of_the_earlier_layout_is_upgraded_and_keeps_its_records(stack_factory, tmp_path):
    """Records written when rows held the url and title twice and a content hash: serve
    (or worker) drops those columns, other commands leave them (an older server may still
    be writing); the records, their jobs and re-sends work on."""
    conn = store.connect(str(tmp_path / "pagesync.db"))
    conn.executescript(OLD_LAYOUT)
    visits = reference("extension_visits.json")
    first = visits["pageVisits"][0]
    rec = store.P.parse_batch({"pageVisits": [first]}, int(time.time() * 1000)).visits[0]
    conn.execute("INSERT INTO page_visits (user_id, id, url, title, started_at, data, content_hash, "
                 "revision) VALUES (1, ?, ?, ?, ?, ?, 'h', 1)",
                 (rec["id"], rec["url"], rec["title"], rec["started_at"], store.canonical(rec)))
    conn.execute("INSERT INTO jobs (task, user_id, record_id, revision, state, created_at, "
                 "enqueued_at) VALUES (?, 1, ?, 1, 'queued', 0, 0)", (store.TASK_VISIT, rec["id"]))
    conn.close()
    st = stack_factory(**FAST)
    for looking in (["watch", "--once"], ["stats", "--days", "1"], ["jobs", "failed"]):
        st.cli(*looking)
        assert "content_hash" in store.table_columns(st.conn(), "page_visits"), looking
    st.start_server()
    token = st.token()  # the first user: the row above is hers
    assert "content_hash" not in store.table_columns(st.conn(), "page_visits")
    assert "url" not in store.table_columns(st.conn(), "page_visits")
    assert not any(store.stale_layout(st.conn(), t) for t in store.RECORD_TABLES)
    assert "WITHOUT ROWID" not in st.conn().execute(
        "SELECT sql FROM sqlite_master WHERE name = 'tab_aggregates'").fetchone()[0]
    assert "database layout upgraded: page_visits (rows moved out of a" in st.logs()
    assert "pagesync jobs reprocess" in " ".join(st.logs().split())
    again = sync_ok(st, token, {"pageVisits": [first]})
    assert again["jobs_enqueued"] == 0  # the stored record, unchanged: no new job
    n = sync_both(st, token)
    st.start_worker()
    st.wait_drained(40)
    all_processed(st)
    assert row_count(st.conn(), "page_visits") == len(visits["pageVisits"]) and n
