"""`pagesync serve --processes N`: N server processes on one port and one database.

Each child is a plain `pagesync serve` that binds the port with SO_REUSEPORT, so the
kernel spreads connections over the processes (N cores for the request path instead of
one GIL). The parent only supervises: it restarts a child that dies and, on SIGTERM or
SIGINT, stops them all gracefully. The children share the SQLite database: writers wait
for each other inside (busy timeout), and only past that answer 503 with Retry-After.

SO_REUSEPORT would just as well let the children join another server already on the port
(another `serve --processes` on another database: the kernel would split the syncs between
two databases), so the parent first checks that the port is free. A child that cannot
start is not restarted forever: past a few quick deaths in a row the parent gives up."""
from __future__ import annotations

import errno
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from functools import partial

from . import procs, store
from .config import Settings
from .worker import die_with_parent

log = logging.getLogger("pagesync.multiserve")
QUICK_EXIT = 5.0  # a child dead this soon after its start did not really start
GIVE_UP_AFTER = 3  # quick deaths in a row of one child before the parent stops trying


class CannotServe(Exception):
    """Why the servers cannot run: shown to the user as one line."""


def child_args(host: str, port: int, threads: int, log_level: str) -> list[str]:
    return [sys.executable, "-m", "pagesync", "serve", "--host", host, "--port", str(port),
            "--threads", str(threads), "--log-level", log_level, "--reuse-port"]


def check_port(host: str, port: int) -> None:
    """Refuse a port that another server listens on: a plain bind (no SO_REUSEPORT) fails
    on any listener, SO_REUSEPORT ones included. SO_REUSEADDR, as the children's own bind,
    only lets it pass connections left in TIME_WAIT by a server that just stopped."""
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(addr)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise CannotServe(f"port {port} on {host} is in use") from None
        raise CannotServe(f"cannot listen on {host}:{port} ({exc.strerror or exc})") from None


class Child:
    """One server process, and how many times in a row its slot died right after start."""

    def __init__(self, args: list[str], env: dict, quick_exits: int = 0):
        # it dies with this parent (kill -9 included): no orphan keeps the port
        self.proc = subprocess.Popen(args, env=env, preexec_fn=partial(die_with_parent, os.getpid()))
        self.started = time.monotonic()
        self.quick_exits = quick_exits

    def replace(self, args: list[str], env: dict) -> Child:
        """Start another in its place, unless it keeps dying right after start (port taken
        since the check, a setting only the child trips on): then restarting cannot help."""
        quick = time.monotonic() - self.started < QUICK_EXIT
        quick_exits = self.quick_exits + 1 if quick else 0
        if quick_exits >= GIVE_UP_AFTER:
            raise CannotServe("server processes keep exiting at start "
                              f"(exit code {self.proc.returncode}); giving up")
        log.warning("server process %d exited with %s; starting another", self.proc.pid,
                    self.proc.returncode)
        time.sleep(0.5)
        return Child(args, env, quick_exits)


def run_many(settings: Settings, host: str, port: int, threads: int, processes: int,
             log_level: str = "INFO") -> int:
    """Start `processes` servers on host:port, keep them running until SIGTERM/SIGINT.
    Raises CannotServe when the port is taken or the children cannot start."""
    check_port(host, port)
    store.init_db(settings.db)  # once, before the children race to create the schema
    args = child_args(host, port, threads, log_level)
    env = procs.child_env(settings)
    stopping = threading.Event()

    def on_signal(signum, frame):
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    children = [Child(args, env) for _ in range(processes)]
    log.info("pagesync serving on http://%s:%d with %d processes", host, port, processes)
    try:
        while not stopping.wait(0.5):
            for i, child in enumerate(children):
                if child.proc.poll() is not None:
                    children[i] = child.replace(args, env)
    finally:
        stop_all([c.proc for c in children], settings.shutdown_timeout)
    return 0


def stop_all(children: list[subprocess.Popen], timeout: float) -> None:
    """SIGTERM to every child still running, then wait for each (kill past the timeout)."""
    for proc in children:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in children:
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
