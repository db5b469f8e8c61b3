"""A throwaway pagesync deployment for one measurement: a fresh database in a temp folder,
a real server process, real worker processes, optionally a real redis-server; all stopped
(and the folder removed) on exit."""
from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from pagesync import procs, store
from pagesync.config import Settings


class RedisServer:
    """redis-server on a free loopback port, no persistence."""

    def __init__(self, folder: Path):
        if shutil.which("redis-server") is None:
            raise RuntimeError("redis-server is not installed")
        self.port = procs.free_port()
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(folder)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.url = f"redis://127.0.0.1:{self.port}/0"
        import redis
        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis.from_url(self.url).ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self):
        procs.stop(self.proc, timeout=5)


class Deployment:
    """`with Deployment(queue="redis") as d: d.start_server(); d.token(); ...`"""

    def __init__(self, queue: str = "sqlite", env: dict | None = None, **settings):
        self.queue, self.env, self.overrides = queue, env or {}, settings
        self.procs: list = []
        self.redis = None

    def __enter__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="pagesync-bench-"))
        queue = self.queue
        if queue == "redis":
            self.redis = RedisServer(self.dir)
            queue = self.redis.url
        self.settings = Settings(db=str(self.dir / "pagesync.db"), queue=queue,
                                 rate_limit_per_minute=0, **self.overrides)
        store.init_db(self.settings.db)
        return self

    def __exit__(self, *exc):
        for proc in reversed(self.procs):
            procs.stop(proc, timeout=30)
        if self.redis:
            self.redis.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def token(self, name: str = "bench") -> str:
        conn = store.connect(self.settings.db)
        try:
            return store.create_token(conn, name)
        finally:
            conn.close()

    def start_server(self, args: list | None = None) -> subprocess.Popen:
        self.port = procs.free_port()
        proc = procs.start_server(self.settings, self.port, self.dir / "serve.log",
                                  ["--log-level", "WARNING", *(args or [])], self.env)
        self.procs.append(proc)
        return proc

    def start_worker(self, workers: int | None = None, kind: str | None = None) -> subprocess.Popen:
        """`pagesync worker` (its own defaults unless given)."""
        args = ["worker", "--log-level", "WARNING"]
        args += ["--workers", str(workers)] if workers else []
        args += ["--kind", kind] if kind else []
        proc = procs.spawn(args, self.settings, self.dir / "worker.log", self.env)
        self.procs.append(proc)
        return proc

    def start_plain_consumer(self) -> subprocess.Popen:
        """The baseline consumer: stock Huey Consumer options, one worker."""
        env = procs.child_env(self.settings, self.env)
        log = open(self.dir / "worker.log", "ab")
        proc = subprocess.Popen([procs.sys.executable, "-m", "bench.plain_consumer"], env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        return proc

    def conn(self):
        return store.connect(self.settings.db, durable=False)

    def jobs_left(self) -> int:
        conn = self.conn()
        try:
            return conn.execute("SELECT COUNT(*) FROM jobs WHERE state NOT IN "
                                "('done', 'failed', 'discarded')").fetchone()[0]
        finally:
            conn.close()

    def wait_done(self, timeout: float) -> None:
        """Until no job is left to do (pending, queued, running or retrying)."""
        deadline = time.monotonic() + timeout
        while self.jobs_left():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.jobs_left()} jobs still not done after {timeout}s")
            time.sleep(0.2)

    def jobs_done(self) -> int:
        conn = self.conn()
        try:
            return conn.execute("SELECT COUNT(*) FROM jobs WHERE state = 'done'").fetchone()[0]
        finally:
            conn.close()
