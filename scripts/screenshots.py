"""Regenerate docs/dashboard.png and docs/watch.svg from a real run: a server and a worker
on a fresh temporary database, the sample payloads posted, a few records failed on
purpose (the worker's test-only fault switch), then Chromium and Rich's recorder.

    .venv/bin/python scripts/screenshots.py
"""
from __future__ import annotations

import io
import shutil
import sys
import tempfile
import time
from pathlib import Path

import requests
from rich.console import Console

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pagesync import display, monitor, procs, store  # noqa: E402
from pagesync.config import Settings  # noqa: E402
from pagesync.queue import make_huey  # noqa: E402

DOCS = ROOT / "docs"
SAMPLES = ROOT / "sample_payloads"
USER, PASSWORD = "ops", "screenshots"
FAULT = {"PAGESYNC_FAULT": "fail-record:pv_1764054", "PAGESYNC_RETRIES": "0"}
BROWSER_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run"]


def post_samples(url: str, token: str) -> None:
    for path in sorted(SAMPLES.glob("*.json")):
        resp = requests.post(url + "/api/v1/data/sync", data=path.read_bytes(), timeout=30,
                             headers={"Authorization": f"Bearer {token}",
                                      "Content-Type": "application/json"})
        print(f"{path.name}: {resp.status_code}")


def wait_drained(conn, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        counts = monitor.task_counts(conn)
        if all(c["queued"] + c["running"] + c["retrying"] == 0 for c in counts.values()):
            return
        time.sleep(0.2)
    raise TimeoutError("jobs did not drain")


def save_watch(snap: dict, path: Path) -> None:
    console = Console(record=True, width=110, file=io.StringIO())
    console.print(display.snapshot_view(snap))
    console.save_svg(str(path), title="pagesync watch")


def save_dashboard(url: str, path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=BROWSER_ARGS)
        context = browser.new_context(http_credentials={"username": USER, "password": PASSWORD},
                                      viewport={"width": 1280, "height": 900})
        page = context.new_page()
        page.goto(url + "/jobs")
        expect(page.locator("#t-processed")).not_to_have_text("–")
        page.locator("article.job summary").first.click()  # show one traceback
        time.sleep(1.0)
        page.screenshot(path=str(path), full_page=True)
        browser.close()


def main() -> int:
    DOCS.mkdir(exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="pagesync-shots-"))
    s = Settings(db=str(tmp / "pagesync.db"), dashboard_user=USER, dashboard_password=PASSWORD)
    store.init_db(s.db)
    conn = store.connect(s.db)
    token = store.create_token(conn, "alice")
    port = procs.free_port()
    server = procs.start_server(s, port, tmp / "serve.log")
    worker = procs.start_worker(s, 2, log=tmp / "worker.log", extra_env=FAULT)
    try:
        post_samples(f"http://127.0.0.1:{port}", token)
        wait_drained(conn)
        save_watch(monitor.snapshot(conn, make_huey(s), s.worker_heartbeat), DOCS / "watch.svg")
        save_dashboard(f"http://127.0.0.1:{port}", DOCS / "dashboard.png")
    finally:
        procs.stop(worker, timeout=20)
        procs.stop(server, timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"wrote {DOCS / 'dashboard.png'} and {DOCS / 'watch.svg'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
