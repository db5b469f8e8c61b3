"""CLI misuse ends with one clear line and a non-zero exit, never a traceback or data loss."""
import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager

from .helpers import SAMPLES


def run(*args, env=None, timeout=60):
    e = {k: v for k, v in os.environ.items() if not k.startswith("PAGESYNC_")}
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "pagesync", *args], capture_output=True, text=True,
                          env=e, timeout=timeout)


@contextmanager
def running_worker(*args):
    """`pagesync worker ARGS` until it says it runs: yields what it logged until then (its
    lines' wrapping undone), then SIGTERM, which must end it with exit 0."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAGESYNC_")}
    proc = subprocess.Popen([sys.executable, "-m", "pagesync", "worker", *args],
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        lines = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            lines.append(proc.stderr.readline())
            if "thread worker(s) on" in lines[-1]:  # running: SIGTERM now stops it cleanly
                break
        yield " ".join(" ".join(lines).split())
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0


def test_bad_settings_are_refused_with_a_reason(tmp_path):
    db = str(tmp_path / "p.db")
    cases = [
        (["serve", "--db", db, "--queue", "reddis://127.0.0.1:6379/0"], {}, "is not understood"),
        (["worker", "--db", db], {"PAGESYNC_TIMEZONE": "Mars/Olympus"}, "timezone 'Mars/Olympus' is unknown"),
        (["worker", "--db", db], {"PAGESYNC_RETRIES": "abc"}, "is not a whole number"),
        (["worker", "--db", db], {"PAGESYNC_MAX_JSON_DEPTH": "1e3"}, "is not a whole number"),
        (["worker", "--db", db], {"PAGESYNC_RECONCILE_INTERVAL": "nan"}, "PAGESYNC_RECONCILE_INTERVAL must be"),
        (["worker", "--db", db], {"PAGESYNC_LOST_AFTER": "inf"}, "PAGESYNC_LOST_AFTER must be"),
        (["worker", "--db", db], {"PAGESYNC_RETRY_BASE_DELAY": "x"}, "is not a number"),
        (["worker", "--db", db, "--log-level", "LOUD"], {}, "--log-level must be one of"),
        (["serve", "--db", db, "--log-level", "verbose"], {}, "--log-level must be one of"),
        (["serve", "--db", db, "--host", "999.1.1.1", "--port", "18556"], {}, "cannot listen on 999.1.1.1"),
        (["serve", "--db", db], {"PAGESYNC_MAX_BODY_BYTES": "-1"}, "PAGESYNC_MAX_BODY_BYTES must be a positive finite number"),
        (["stats", "--db", str(tmp_path / "typo.db")], {}, "no database at"),
        (["token", "create", "x", "--db", str(tmp_path)], {},
         f"unable to open database file: {tmp_path} (it is a folder, not a database file)"),
        (["serve", "--db", str(tmp_path / "no" / "x.db")], {}, f"{tmp_path / 'no' / 'x.db'} (does its folder"),
        (["serve", "--db", ""], {}, "the database file is empty: pass --db FILE or set PAGESYNC_DB"),
        (["worker", "--db", " "], {}, "the database file is empty"),
        (["worker", "--db", db, "--queue", f"sqlite:///{tmp_path}/no/q.db"], {},
         f"queue file {tmp_path}/no/q.db: its folder {tmp_path}/no does not exist"),
        (["worker", "--db", db, "--queue", "redis://127.0.0.1:1/abc"], {},
         "the part after HOST:PORT/ must be a database number (redis://HOST:PORT/0), got 'abc'"),
        (["serve", "--db", db, "--queue", "redis://127.0.0.1:1/0?colour=blue"], {},
         "is not understood by the Redis client"),
        (["watch", "--db", db, "--queue", "redis://:s3cret@127.0.0.1:x/0"], {},
         "queue 'redis://:***@127.0.0.1:x/0' has an invalid port"),
        (["serve", "--db", db], {"PAGESYNC_QUEUE": "redis://:s3cret@[::1:6379/0"},
         "queue 'redis://:***@[::1:6379/0' is not understood"),
        (["worker", "--db", db, "--queue", "redis://127.0.0.1:1/0?db=9&password=s3cret"], {},
         "queue 'redis://127.0.0.1:1/0?db=9&password=***' gives the database number twice"),
    ]
    for args, env, text in cases:
        res = run(*args, env=env)
        assert res.returncode in (1, 2), (args, res.returncode, res.stderr)
        assert text in res.stderr, (args, res.stderr)
        assert "Traceback" not in res.stderr and "s3cret" not in res.stderr
    assert not (tmp_path / "typo.db").exists()


def test_demo_refuses_a_folder_it_did_not_make(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    res = run("demo", "--workdir", str(tmp_path), "--payloads", str(SAMPLES))
    assert res.returncode == 2
    assert "not empty" in " ".join(res.stdout.split())
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_replay_stops_soon_when_the_server_is_unreachable():
    start = time.monotonic()
    res = run("replay", str(SAMPLES), "--url", "http://127.0.0.1:9", "--token", "x",
              "--batch-size", "20", "--retries", "1", "--json")
    assert res.returncode == 1
    assert time.monotonic() - start < 20
    out = json.loads(res.stdout)
    assert out["not_sent"] == "the server was unreachable"
    assert out["records_unsent"] > 0 and out["records_failed"] + out["records_unsent"] == out["records"]
    assert len(out["failures"]) == 1  # the request that found it away; the rest said once
    assert run("replay", str(SAMPLES), "--url", "notaurl", "--token", "x").returncode == 2


def test_numeric_options_out_of_range_are_refused(tmp_path):
    db = str(tmp_path / "p.db")
    assert run("token", "create", "x", "--db", db).returncode == 0
    cases = [
        (["stats", "--days", "100000000"], "--days"), (["stats", "--days", "0"], "--days"),
        (["stats", "--limit", "-5"], "--limit"), (["stats", "--limit", "0"], "--limit"),
        (["jobs", "failed", "--limit", "-1"], "--limit"),
        (["jobs", "failed", "--limit", "100000000000000000000"], "--limit"),
        (["watch", "--once", "--interval", "1e400"], "--interval"),
        (["watch", "--once", "--interval", "nan"], "--interval"),
    ]
    for args, option in cases:
        res = run(*args, "--db", db)
        assert res.returncode == 2, (args, res.returncode, res.stdout, res.stderr)
        assert f"Invalid value for '{option}'" in res.stderr, (args, res.stderr)
        assert "Traceback" not in res.stderr
    for args, option in [(["replay", db, "--token", "x", "--retries", "-1"], "--retries"),
                         (["replay", db, "--token", "x", "--concurrency", "1000"], "--concurrency"),
                         (["demo", "--timeout", "-3", "--payloads", str(tmp_path)], "--timeout"),
                         (["demo", "--timeout", "nan", "--payloads", str(tmp_path)], "--timeout")]:
        res = run(*args)
        assert res.returncode == 2 and f"Invalid value for '{option}'" in res.stderr, (args, res.stderr)
    res = run("stats", "--db", db, "--date", "0001-01-02", "--days", "5")
    assert res.returncode == 2 and "reaches before year 1" in res.stderr and "Traceback" not in res.stderr


def test_serve_refuses_a_port_out_of_range(tmp_path):
    db = str(tmp_path / "p.db")
    for args in (["--port", "99999"], ["--port", "0"], ["--port", "99999", "--processes", "2"],
                 ["--port", "0", "--processes", "2"]):
        res = run("serve", "--db", db, *args, timeout=30)
        assert res.returncode == 2, (args, res.returncode, res.stderr)
        assert "Invalid value for '--port'" in res.stderr, (args, res.stderr)
        assert "Traceback" not in res.stderr and "serving on" not in res.stderr


def test_serve_processes_refuses_a_port_in_use(stack, tmp_path):
    """A plain `pagesync serve` holds the port: the children would only fail to bind,
    restarted forever. One line instead, at once."""
    start = time.monotonic()
    res = run("serve", "--db", str(tmp_path / "other.db"), "--processes", "2",
              "--port", str(stack.port), timeout=30)
    assert res.returncode == 1, res.stderr
    assert res.stderr.strip() == f"error: port {stack.port} on 127.0.0.1 is in use"
    assert time.monotonic() - start < 15
    assert stack.server.poll() is None


def test_serve_refuses_a_port_in_use_before_saying_it_serves(stack, tmp_path):
    res = run("serve", "--db", str(tmp_path / "other.db"), "--port", str(stack.port), timeout=30)
    assert res.returncode == 1, res.stderr
    assert res.stderr.strip() == f"error: port {stack.port} on 127.0.0.1 is in use"
    assert stack.server.poll() is None


def test_replay_names_the_file_it_cannot_read_and_the_files_with_nothing_in_them(tmp_path):
    bad = tmp_path / "export.json.gz"
    bad.write_bytes(b'{"pageVisits": []}')  # named .gz, not gzip
    res = run("replay", str(bad), "--token", "x", "--url", "http://127.0.0.1:9")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert f"{bad}: not a readable gzip file" in res.stderr  # the path whole, on one line
    empty = tmp_path / "empty.json"
    empty.write_text('{"pageVisits": [], "tabAggregates": []}')
    res = run("replay", str(tmp_path / "empty.json"), "--token", "x", "--url", "http://127.0.0.1:9",
              "--json")
    assert res.returncode == 0, res.stderr
    assert f"{empty}: no page visits or tab aggregates in it (nothing to send)" in res.stderr
    assert json.loads(res.stdout)["records"] == 0


def test_a_worker_that_had_to_create_its_database_says_so(tmp_path):
    """A mistyped --db would otherwise leave the worker waiting on an empty database."""
    typo = tmp_path / "pagesnyc.db"
    with running_worker("--db", str(typo)) as text:
        assert "no database was at" in text and "pagesnyc.db" in text, text
        assert "the server must use this same file" in text
    assert typo.exists()  # it does create it: the worker may start before the server
    # an existing database: no such line
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAGESYNC_")}
    proc = subprocess.Popen([sys.executable, "-m", "pagesync", "worker", "--db", str(typo)],
                            stderr=subprocess.PIPE, text=True, env=env)
    first = proc.stderr.readline()
    proc.send_signal(signal.SIGTERM)
    _, rest = proc.communicate(timeout=30)
    assert "thread worker(s) on" in first, first + rest
    assert "no database was at" not in first + rest and "Traceback" not in rest


def test_a_redis_that_refuses_ends_serve_and_worker_one_that_is_away_is_a_warning(tmp_path, dedicated_redis):
    """A database number Redis does not have, or a missing password, is a setting to fix:
    exit 2 at start, not an outage retried for ever. A Redis not answering yet is an
    outage: the command says so and goes on."""
    db, url = str(tmp_path / "p.db"), dedicated_redis.url
    base = url.rsplit("/", 1)[0]
    res = run("worker", "--db", db, "--queue", base + "/99", timeout=30)
    assert res.returncode == 2, res.stderr
    assert f"queue {base}/99: Redis refused it (DB index is out of range)" in " ".join(res.stderr.split())
    assert "Traceback" not in res.stderr
    dedicated_redis.stop()
    secret = url.replace("//", "//:s3cret@")  # a password is never shown, in either form
    with running_worker("--db", db, "--queue", secret) as text:
        assert f"queue {url.replace('//', '//:***@')} does not answer" in text
        assert "going on: syncs are stored" in text and "s3cret" not in text
    with running_worker("--db", db, "--queue", url + "?password=s3cret") as text:
        assert f"queue {url}?password=*** does not answer" in text and "s3cret" not in text
