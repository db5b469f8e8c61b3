"""Issue 6: several server processes on one database. `pagesync serve --processes 3` (three
processes sharing the port via SO_REUSEPORT, one SQLite database), many concurrent clients:
every answer is 200 (or 503 with Retry-After, never "database is locked" or a 500), and
every record is stored, and enqueued, exactly once."""
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import psutil
import requests

from bench import payloads
from pagesync import procs
from pagesync.config import Settings

from .helpers import row_count

CLIENTS = 10


def post_until_stored(url: str, token: str, body: bytes, seen: list) -> dict:
    """POST like the extension: on 503 wait Retry-After and send again."""
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    for _ in range(20):
        resp = requests.post(url + "/api/v1/data/sync", data=body, headers=headers, timeout=60)
        seen.append((resp.status_code, resp.headers.get("Retry-After"), resp.text[:200]))
        if resp.status_code != 503:
            return resp.json()
        time.sleep(float(resp.headers["Retry-After"]))
    raise AssertionError("still 503 after 20 tries")


def server_processes(proc) -> list:
    return [c for c in psutil.Process(proc.pid).children() if "serve" in " ".join(c.cmdline())]


def test_three_server_processes_one_database(stack_factory, queue_url):
    st = stack_factory(queue_url)
    server = st.start_server(args=["--processes", "3", "--threads", "8"])
    assert len(server_processes(server)) == 3
    token = st.token()
    own = payloads.bodies(CLIENTS * 300, batch=100, seed=21)  # every client its own records
    shared, n_shared = payloads.bodies(300, batch=300, seed=22)[0]  # and one same batch for all
    unique = sum(n for _, n in own) + n_shared
    work = [(body, 1) for body, _ in own] + [(shared, 0)] * CLIENTS
    seen: list = []
    with ThreadPoolExecutor(CLIENTS) as pool:
        answers = list(pool.map(lambda w: post_until_stored(st.url, token, w[0], seen), work))

    statuses = {code for code, _, _ in seen}
    assert statuses <= {200, 503}, [s for s in seen if s[0] not in (200, 503)][:3]
    assert all(retry for code, retry, _ in seen if code == 503)
    assert all(a["success"] for a in answers)
    conn = st.conn()
    stored = row_count(conn, "page_visits") + row_count(conn, "tab_aggregates")
    assert stored == unique
    assert row_count(conn, "jobs") == unique
    # the shared batch was enqueued once, by whichever server stored it first
    assert sum(a["data"]["jobs_enqueued"] for a in answers) == unique
    assert st.snapshot()["queue_depth"] == unique
    assert "locked" not in st.logs() and "unexpected error" not in st.logs()


def test_processes_share_the_load_and_stop_together(stack_factory):
    st = stack_factory()
    server = st.start_server(args=["--processes", "3"])
    children = server_processes(server)
    token = st.token()
    body = json.dumps({"pageVisits": [], "tabAggregates": []}).encode()
    for _ in range(30):  # fresh connections: the kernel spreads them over the processes
        assert post_until_stored(st.url, token, body, [])["success"]
    busy = [c for c in children if c.cpu_times().user + c.cpu_times().system > 0]
    assert len(busy) == 3
    st.stop()
    assert server.returncode == 0
    assert not any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in children)


def test_a_second_server_cannot_share_the_port(stack_factory, tmp_path):
    """SO_REUSEPORT would let a second `serve --processes` on another database join the
    port (the kernel splitting the syncs between two databases): it is refused."""
    st = stack_factory()
    server = st.start_server(args=["--processes", "2"])
    res = subprocess.run([sys.executable, "-m", "pagesync", "serve", "--processes", "2",
                          "--port", str(st.port), "--db", str(tmp_path / "other.db")],
                         capture_output=True, text=True, timeout=30,
                         env=procs.child_env(st.settings))
    assert res.returncode == 1, res.stderr
    assert f"port {st.port} on 127.0.0.1 is in use" in res.stderr
    assert server.poll() is None and len(server_processes(server)) == 2
    token = st.token()  # known to the first server's database only
    body = json.dumps({"pageVisits": [], "tabAggregates": []}).encode()
    for _ in range(20):  # fresh connections: every one reaches the first server
        assert post_until_stored(st.url, token, body, [])["success"]


# A child that exits at once (3), except the first one started, which stays up.
CHILD = """import os, sys, time
try:
    fd = os.open(sys.argv[1], os.O_CREAT | os.O_EXCL | os.O_WRONLY)
except FileExistsError:
    sys.exit(3)
os.write(fd, str(os.getpid()).encode())
time.sleep(600)
"""
# `pagesync serve` whose children are CHILD instead of real servers.
PARENT = """import sys
from pagesync import cli, multiserve
multiserve.child_args = lambda *a: [sys.executable, "-c", {child!r}, {marker!r}]
cli.main()
"""


def test_children_that_cannot_start_are_not_restarted_forever(tmp_path):
    marker = tmp_path / "survivor.pid"
    parent = PARENT.format(child=CHILD, marker=str(marker))
    env = procs.child_env(Settings(db=str(tmp_path / "p.db")))
    start = time.monotonic()
    res = subprocess.run([sys.executable, "-c", parent, "serve", "--processes", "2", "--port",
                          str(procs.free_port())], capture_output=True, text=True, timeout=60,
                         env=env)
    assert res.returncode == 1, res.stderr
    assert res.stderr.count("exited with 3; starting another") == 2  # then the 3rd: enough
    assert res.stderr.splitlines()[-1] == ("error: server processes keep exiting at start "
                                           "(exit code 3); giving up")
    assert "Traceback" not in res.stderr
    assert time.monotonic() - start < 30
    assert not psutil.pid_exists(int(marker.read_text()))  # the one still up was stopped


def test_a_locked_database_costs_a_sync_at_most_the_lock_budget(stack):
    """Three syncs at once while another process keeps the database locked: the waits for
    the server's own write lock and for SQLite's share one 5 s budget, so each is answered
    503 with Retry-After by then (the third used to get the server's lock at 5 s, then wait
    5 s more for SQLite's)."""
    import sqlite3

    from .helpers import post_sync, reference
    token, body = stack.token(), reference("extension_visits.json")
    blocker = sqlite3.connect(stack.settings.db, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")

    def timed(_):
        t0 = time.monotonic()
        resp = post_sync(stack.url, token, body)
        return resp.status_code, resp.headers.get("Retry-After"), time.monotonic() - t0
    try:
        with ThreadPoolExecutor(3) as pool:
            answers = list(pool.map(timed, range(3)))
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert [(code, bool(retry)) for code, retry, _ in answers] == [(503, True)] * 3, answers
    assert max(seconds for *_, seconds in answers) < 6.5, answers
    assert post_sync(stack.url, token, body).status_code == 200
