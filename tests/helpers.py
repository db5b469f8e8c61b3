"""Test helpers: real processes (server, worker, redis-server), HTTP calls, waiting."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
import requests

from pagesync import procs, store
from pagesync.config import Settings
from pagesync.monitor import task_counts

REFERENCE = Path(__file__).resolve().parent.parent.parent / "shared" / "reference_payloads"
SAMPLES = Path(__file__).resolve().parent.parent / "sample_payloads"
REQUIRE_SERVICES = os.environ.get("PAGESYNC_REQUIRE_SERVICES") == "1"


def need(what: str, available: bool) -> None:
    """Skip when a service is missing, but fail in CI (PAGESYNC_REQUIRE_SERVICES=1)."""
    if available:
        return
    if REQUIRE_SERVICES:
        pytest.fail(f"{what} is required (PAGESYNC_REQUIRE_SERVICES=1) but missing")
    pytest.skip(f"{what} not installed")


def reference(name: str) -> dict:
    """A real-extension reference payload: from shared/ beside the checkout when present,
    else the copy kept in tests/reference_payloads/ (a clone anywhere still runs)."""
    path = REFERENCE / name
    if not path.exists():
        path = Path(__file__).resolve().parent / "reference_payloads" / name
    return json.loads(path.read_text())


class RedisServer:
    def __init__(self, tmp: Path):
        need("redis-server", shutil.which("redis-server") is not None)
        self.port = procs.free_port()
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(tmp)], stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        self.url = f"redis://127.0.0.1:{self.port}/0"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                redis.Redis.from_url(self.url).ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self):
        procs.stop(self.proc, timeout=5)


class DedicatedRedis:
    """A redis-server of this test's own (no persistence) on a fixed free port, so it can
    be stopped and started again at the same address."""

    def __init__(self, tmp):
        need("redis-server", shutil.which("redis-server") is not None)
        self.tmp, self.port, self.proc = tmp, procs.free_port(), None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self):
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.tmp)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: self.ping(), 10, "redis-server to answer")

    def ping(self) -> bool:
        try:
            return redis.Redis.from_url(self.url, socket_timeout=1).ping()
        except redis.ConnectionError:
            return False

    def stop(self):
        if self.proc is not None:
            procs.stop(self.proc, timeout=5)
            self.proc = None


@dataclass
class Stack:
    """A pagesync deployment under test: settings, a server process, worker processes."""
    settings: Settings
    tmp: Path
    port: int = 0
    server: subprocess.Popen | None = None
    workers: list = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def conn(self):
        return store.connect(self.settings.db)

    def token(self, name: str = "alice") -> str:
        store.init_db(self.settings.db)
        return store.create_token(self.conn(), name)

    def start_server(self, extra_env: dict | None = None, args: list | None = None):
        self.port = self.port or procs.free_port()
        self.server = procs.start_server(self.settings, self.port, self.tmp / "serve.log", args,
                                         extra_env)
        return self.server

    def start_worker(self, workers: int = 2, kind: str = "thread", extra_env: dict | None = None):
        proc = procs.start_worker(self.settings, workers, kind, self.tmp / "worker.log", extra_env)
        self.workers.append(proc)
        return proc

    def sync(self, token: str, body, **kw) -> requests.Response:
        return post_sync(self.url, token, body, **kw)

    def cli(self, *args, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
        res = subprocess.run([sys.executable, "-m", "pagesync", *args], capture_output=True,
                             text=True, env=procs.child_env(self.settings, env), timeout=120)
        if check and res.returncode != 0:
            raise AssertionError(f"pagesync {' '.join(args)} exited {res.returncode}:\n"
                                 f"{res.stdout}\n{res.stderr}")
        return res

    def snapshot(self) -> dict:
        return json.loads(self.cli("watch", "--once", "--json").stdout)

    def counts(self) -> dict:
        return task_counts(self.conn())

    def wait_drained(self, timeout: float = 60.0) -> dict:
        """Wait until no job is pending, queued, running or retrying."""
        def drained():
            c = self.counts()
            return c if all(v["queued"] + v["running"] + v["retrying"] == 0 for v in c.values()) else None
        return wait_for(drained, timeout, "jobs to drain")

    def stop(self):
        for proc in self.workers:
            procs.stop(proc, timeout=20)
        if self.server is not None:
            procs.stop(self.server, timeout=30)  # several processes on a loaded machine

    def logs(self) -> str:
        out = []
        for name in ("serve.log", "worker.log"):
            p = self.tmp / name
            if p.exists():
                out.append(f"--- {name}\n" + p.read_text(errors="replace")[-4000:])
        return "\n".join(out)


def post_sync(url: str, token: str | None, body, raw: bytes | None = None,
              headers: dict | None = None, timeout: float = 30) -> requests.Response:
    h = {"Content-Type": "application/json"}
    if token:
        h["Authorization"] = f"Bearer {token}"
    h.update(headers or {})
    data = raw if raw is not None else json.dumps(body).encode()
    return requests.post(url + "/api/v1/data/sync", data=data, headers=h, timeout=timeout)


def wait_for(predicate, timeout: float = 30.0, what: str = "condition", interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def row_count(conn, table: str) -> int:
    return conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]


def worker_log(st) -> str:
    """What the stack's workers logged so far."""
    path = st.tmp / "worker.log"
    return path.read_text(errors="replace") if path.exists() else ""


def assert_one_outage(log: str, starts: str, ends: str) -> None:
    """The worker's log of an outage: said once when it started and once when it ended,
    with no error line and no traceback."""
    assert log.count(starts) == 1, log
    assert log.count(ends + " after") == 1, log
    assert "ERROR" not in log and "Traceback" not in log, log
