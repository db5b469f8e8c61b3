"""`pagesync serve --processes N`: N server processes on one port and one database.

Each child is a plain `pagesync serve` that binds the port with SO_REUSEPORT, so the
kernel spreads connections over the processes (N cores for the request path instead of
one GIL). The parent only supervises: it restarts a child that dies and, on SIGTERM or
SIGINT, stops them all gracefully. The children share the SQLite database: writers wait
for each other inside (busy timeout), and only past that answer 503 with Retry-After."""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from functools import partial

from . import procs, store
from .config import Settings
from .worker import die_with_parent

log = logging.getLogger("pagesync.multiserve")


def child_args(host: str, port: int, threads: int, log_level: str) -> list[str]:
    return [sys.executable, "-m", "pagesync", "serve", "--host", host, "--port", str(port),
            "--threads", str(threads), "--log-level", log_level, "--reuse-port"]


def run_many(settings: Settings, host: str, port: int, threads: int, processes: int,
             log_level: str = "INFO") -> int:
    """Start `processes` servers on host:port, keep them running until SIGTERM/SIGINT."""
    store.init_db(settings.db)  # once, before the children race to create the schema
    args = child_args(host, port, threads, log_level)
    env = procs.child_env(settings)
    stopping = threading.Event()

    def start():  # a child dies with this parent (kill -9 included): no orphan keeps the port
        return subprocess.Popen(args, env=env, preexec_fn=partial(die_with_parent, os.getpid()))

    def on_signal(signum, frame):
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    children = [start() for _ in range(processes)]
    log.info("pagesync serving on http://%s:%d with %d processes", host, port, processes)
    while not stopping.wait(0.5):
        for i, child in enumerate(children):
            if child.poll() is not None:
                log.warning("server process %d exited with %s; starting another", child.pid,
                            child.returncode)
                time.sleep(0.5)
                children[i] = start()
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    for child in children:
        try:
            child.wait(settings.shutdown_timeout)
        except subprocess.TimeoutExpired:
            child.kill()
    return 0
