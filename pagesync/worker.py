"""`pagesync worker`: the Huey consumer plus what Huey lacks for our guarantees: a
heartbeat (so jobs of a dead worker are found), the reconciler, and a graceful shutdown
on SIGTERM as well as SIGINT."""
from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time

from . import jobs, jobstate, quietlog, store
from .config import Settings
from .queue import make_huey, reconcile

log = logging.getLogger("pagesync.worker")


class Supervisor(threading.Thread):
    """Heartbeat, reconciler and pruning, in a thread of the consumer's main process."""

    def __init__(self, settings: Settings, workers: int, kind: str):
        super().__init__(name="pagesync-supervisor", daemon=True)
        self.settings, self.workers, self.kind = settings, workers, kind
        self.stop_event = threading.Event()
        self.name_ = jobs.WORKER_NAME["name"]

    def run(self) -> None:
        conn = store.connect(self.settings.db, durable=False)
        huey = make_huey(self.settings)  # its own instance: never shared with forked workers
        next_reconcile = 0.0
        next_prune = time.monotonic() + 60
        while not self.stop_event.is_set():
            try:
                self.beat(conn, "running")
                if time.monotonic() >= next_reconcile:
                    reconcile(conn, huey, self.settings)
                    next_reconcile = time.monotonic() + self.settings.reconcile_interval
                if time.monotonic() >= next_prune:
                    jobstate.prune_events(conn)
                    next_prune = time.monotonic() + 300
            except Exception:
                log.exception("supervisor round failed; trying again")
            self.stop_event.wait(self.settings.worker_heartbeat)
        conn.close()

    def beat(self, conn, state: str) -> None:
        now = time.time()
        with store.transaction(conn):
            conn.execute(
                "INSERT INTO workers (name, pid, hostname, started_at, last_seen, concurrency, "
                "kind, queue, state) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO "
                "UPDATE SET last_seen = excluded.last_seen, state = excluded.state",
                (self.name_, os.getpid(), socket.gethostname(), now, now, self.workers, self.kind,
                 self.settings.describe_queue(), state))
            conn.execute("DELETE FROM workers WHERE last_seen < ?", (now - 3600,))

    def stop(self) -> None:
        self.stop_event.set()
        self.join(timeout=5)
        conn = store.connect(self.settings.db, durable=False)
        try:
            store.with_retry(lambda: self.beat(conn, "stopped"))
        finally:
            conn.close()


def run_worker(settings: Settings, workers: int = 2, kind: str = "thread") -> None:
    """Run the consumer until SIGTERM/SIGINT; in-flight jobs finish within
    settings.shutdown_timeout, the rest go back to the queue via the reconciler."""
    store.init_db(settings.db)
    quietlog.install()
    huey = make_huey(settings)
    consumer = huey.create_consumer(
        workers=workers, worker_type=kind, initial_delay=0.02, backoff=1.5, max_delay=0.25,
        scheduler_interval=1, periodic=True, check_worker_health=True, health_check_interval=5,
        shutdown_timeout=settings.shutdown_timeout, graceful_signal="TERM")
    # Both SIGTERM (systemd, Docker, Kubernetes) and SIGINT (Ctrl-C) stop gracefully.
    consumer._signal_actions[signal.SIGINT] = (False, True)
    consumer._signal_actions[signal.SIGTERM] = (False, True)
    supervisor = Supervisor(settings, workers, kind)
    supervisor.start()
    log.info("worker %s: %d %s worker(s) on %s, database %s", supervisor.name_, workers, kind,
             settings.describe_queue(), settings.db)
    try:
        consumer.run()
    finally:
        supervisor.stop()
        log.info("worker %s stopped", supervisor.name_)
