"""Starting and stopping pagesync processes: used by `pagesync demo`, the tests and bench."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

from .config import Settings


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(settings: Settings, extra: dict | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAGESYNC_")}
    env.update(settings.to_env())
    env.update(extra or {})
    return env


def spawn(args: list[str], settings: Settings, log: Path | None = None,
          extra_env: dict | None = None) -> subprocess.Popen:
    out = open(log, "ab") if log else subprocess.DEVNULL
    return subprocess.Popen([sys.executable, "-m", "pagesync", *args], env=child_env(settings, extra_env),
                            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def start_server(settings: Settings, port: int, log: Path | None = None, extra: list | None = None,
                 extra_env: dict | None = None, wait: float = 30.0) -> subprocess.Popen:
    proc = spawn(["serve", "--port", str(port), *(extra or [])], settings, log, extra_env)
    wait_http(f"http://127.0.0.1:{port}/healthz", wait, proc)
    return proc


def start_worker(settings: Settings, workers: int = 2, kind: str = "thread", log: Path | None = None,
                 extra_env: dict | None = None) -> subprocess.Popen:
    return spawn(["worker", "--workers", str(workers), "--kind", kind], settings, log, extra_env)


def wait_http(url: str, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            if requests.get(url, timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
    """Signal a process and wait; kill it if it outlives the timeout."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return proc.returncode
