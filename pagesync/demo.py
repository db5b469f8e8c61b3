"""`pagesync demo` (what `make demo` runs): a fresh database, a server and a worker as real
processes, a replay of sample payloads, a wait for every job, and a summary."""
from __future__ import annotations

import shutil
import time
from pathlib import Path

from rich.console import Console, Group
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table
from rich.text import Text

from . import display, procs, replay, stats, store
from .config import Settings
from .monitor import task_counts


def run_demo(payloads: Path, workdir: Path, timeout: float, console: Console) -> int:
    files = sorted(payloads.glob("*.json"))
    if not files:
        console.print(f"[red]no payload files in {escape(str(payloads))}[/]")
        return 2
    marker = workdir / ".pagesync-demo"
    if workdir.exists() and any(workdir.iterdir()) and not marker.exists():
        console.print(f"[red]{escape(str(workdir))} is not empty and is not a previous demo folder: "
                      "choose another --workdir (the demo empties it)[/]")
        return 2
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    marker.write_text("made by `pagesync demo`, which empties this folder on each run\n")
    settings = Settings.from_env(db=str(workdir / "pagesync.db"), queue="sqlite")
    store.init_db(settings.db)
    conn = store.connect(settings.db)
    token = store.create_token(conn, "demo")
    port = procs.free_port()
    console.rule("[bold]pagesync demo")
    console.print(f"database {escape(settings.db)}, queue {escape(settings.describe_queue())}")
    server = procs.start_server(settings, port, workdir / "serve.log", ["--dev"])
    worker = procs.start_worker(settings, 2, "thread", workdir / "worker.log")
    console.print(f"server on http://127.0.0.1:{port} (pid {server.pid}), worker pid {worker.pid}")
    try:
        reqs, _ = replay.plan(files, 1000)
        sender = replay.Sender(f"http://127.0.0.1:{port}", token)
        result = replay.replay(reqs, sender)
        console.print(display.replay_summary(result))
        drained = wait_for_jobs(conn, timeout, console)
        console.print(summary(conn, settings, port))
    finally:
        procs.stop(server)
        procs.stop(worker)
    counts = task_counts(conn)
    failed = sum(c["failed"] for c in counts.values())
    exact = stats.verify(conn, settings.timezone)["equal"]
    ok = drained and not result.requests_failed and not failed and exact
    console.print(f"[bold {'green' if ok else 'red'}]demo {'passed' if ok else 'FAILED'}[/]: "
                  f"{result.stored} records stored, {len(result.rejected)} rejected, "
                  f"jobs {'all processed' if drained else 'NOT drained'}, "
                  f"rollups {'exact' if exact else 'WRONG'}. Logs in {escape(str(workdir))}/.")
    return 0 if ok else 1


def wait_for_jobs(conn, timeout: float, console: Console) -> bool:
    total = conn.execute("SELECT COUNT(*) FROM jobs").fetchone()[0]
    deadline = time.monotonic() + timeout
    with Progress(TextColumn("[bold]processing"), BarColumn(), MofNCompleteColumn(), TextColumn("jobs"),
                  console=console) as progress:
        bar = progress.add_task("jobs", total=total)
        while time.monotonic() < deadline:
            counts = task_counts(conn)
            finished = sum(c["done"] + c["failed"] for c in counts.values())
            progress.update(bar, completed=finished)
            if finished >= total:
                return True
            time.sleep(0.2)
    return False


def summary(conn, settings: Settings, port: int) -> Group:
    counts = task_counts(conn)
    jobs = Table("task", "done", "failed", "queued", "running", title="Jobs")
    for task, c in counts.items():
        jobs.add_row(task, str(c["done"]), str(c["failed"]), str(c["queued"] + c["retrying"]),
                     str(c["running"]))
    stored = Table("records", "stored", "processed", title="Stored")
    for label, table in (("page visits", "page_visits"), ("tab aggregates", "tab_aggregates")):
        n, done = conn.execute(f"SELECT COUNT(*), COUNT(processed_revision) FROM {table}").fetchone()
        stored.add_row(label, str(n), str(done))
    linked = conn.execute("SELECT COUNT(linked_visit_id), COUNT(*) FROM tab_aggregates").fetchone()
    day_span = conn.execute("SELECT MIN(day), MAX(day) FROM rollups").fetchone()
    top = stats.figures(conn, None, day_span[0] or "2000-01-01", day_span[1] or "2000-01-01")[:8]
    where = Table(show_header=False, title="Where things are")
    where.add_row("database", Text(settings.db))
    where.add_row("queue", Text(settings.describe_queue()))
    where.add_row("dashboard", Text(f"http://127.0.0.1:{port}/jobs (stopped with the demo; run "
                                    f"`pagesync serve --dev --db {settings.db}` to browse it)"))
    where.add_row("tab aggregates linked", f"{linked[0]} of {linked[1]}")
    return Group(stored, jobs, display.stats_table(top, f"Top hosts, {day_span[0]} to {day_span[1]}",
                                                   "host", show_site=False), where)
