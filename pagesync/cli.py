"""The `pagesync` command line: a thin Typer layer over the library modules."""
from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.live import Live
from rich.logging import RichHandler
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Column, Table
from rich.text import Text

from . import display, jobstate, store
from .config import Settings

log = logging.getLogger("pagesync.cli")

app = typer.Typer(help="pagesync: sync, process and watch browser-activity data.",
                  no_args_is_help=True, rich_markup_mode="rich", pretty_exceptions_enable=False)
token_app = typer.Typer(help="Create, list and revoke bearer tokens.", no_args_is_help=True)
jobs_app = typer.Typer(help="Failed jobs (inspect, retry, discard) and processing every record "
                             "again (reprocess).", no_args_is_help=True)
app.add_typer(token_app, name="token")
app.add_typer(jobs_app, name="jobs")


def _width(stream) -> int | None:
    """Rich's width: the terminal's; when piped or redirected (no terminal, no COLUMNS),
    wide enough that tables keep whole hosts, ids and errors instead of Rich's 80."""
    return None if stream.isatty() or os.environ.get("COLUMNS") else 160


console = Console(width=_width(sys.stdout))
err = Console(stderr=True, width=_width(sys.stderr))

# Help texts are Rich markup: a literal "[" is written "\\[". Flags get metavar="": they take
# no value, so --help shows no <bool> beside them.
Db = Annotated[Optional[str], typer.Option(
    "--db", help="SQLite database file \\[env: PAGESYNC_DB; default pagesync.db]")]
Queue = Annotated[Optional[str], typer.Option(
    "--queue", help="Queue: 'sqlite' (inside the database file), sqlite:///FILE or "
                    "redis://HOST:PORT/DB \\[env: PAGESYNC_QUEUE]")]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.", metavar="")]


def settings(db: str | None = None, queue: str | None = None, **more) -> Settings:
    """Flags over PAGESYNC_* over defaults; unusable settings end the command with a message."""
    s = Settings.from_env(db=db, queue=queue, **more)
    problems = s.problems()
    if problems:
        fail("; ".join(problems), 2)
    return s


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def log_level_of(value: str) -> str:
    """--log-level, checked: one line and exit 2 for a level logging does not know."""
    level = value.strip().upper()
    if level not in LOG_LEVELS:
        fail(f"--log-level must be one of {', '.join(LOG_LEVELS)}, got {value!r}", 2)
    return level


class PrintableLog(logging.Filter):
    """Log lines carry client data (record ids, urls, errors): their control characters
    are written as escapes, so a line cannot act on the terminal or the log's reader."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = display.printable(message, display.LOG_ESCAPED)
        if clean != message:
            record.msg, record.args = clean, ()
        return True


def setup_logging(level: str = "INFO") -> None:
    handler = RichHandler(console=err, show_path=False, rich_tracebacks=True)
    handler.addFilter(PrintableLog())
    logging.basicConfig(level=level, format="%(message)s", datefmt="[%X]", handlers=[handler])
    logging.getLogger("huey").setLevel(logging.WARNING)
    logging.getLogger("pagesync.jobs").setLevel(logging.WARNING if level == "INFO" else level)


def conn_for(s: Settings, create: bool = True):
    """A connection to the database; commands that only read it refuse a missing file
    (a mistyped --db) instead of creating an empty one."""
    if not create and not Path(s.db).is_file():
        fail(f"no database at {s.db} (pass --db or set PAGESYNC_DB; `pagesync serve` creates it)")
    store.init_db(s.db, upgrade=False)  # the layout is serve's and worker's to upgrade
    return store.connect(s.db)


class Stopped(Exception):
    """SIGTERM or SIGINT arrived while a command was waiting to start."""


def _stopped(signum, frame):
    raise Stopped


def open_database(s: Settings, role: str) -> None:
    """Create or upgrade the database before serving or working, waiting while another
    process holds it locked (a backup, a `sqlite3` shell in a transaction): one line when
    the wait starts and one when it is over. SIGTERM or Ctrl-C meanwhile ends the command
    at once, exit 0 (nothing was started). A worker that had to create the database says
    so (a warning): with a mistyped --db it would otherwise wait for jobs forever."""
    created = s.db != ":memory:" and not Path(s.db).exists()
    previous = {sig: signal.signal(sig, _stopped) for sig in (signal.SIGTERM, signal.SIGINT)}
    since = None
    try:
        while True:
            try:
                store.init_db(s.db, timeout=2.0)
                store.try_write(s.db, timeout=2.0)  # the queue's tables are made next
                break
            except store.StorageBusy as exc:
                if since is None:
                    since = time.monotonic()
                    log.warning("database busy (%s): waiting for it before starting", exc)
                time.sleep(0.5)
    except Stopped:
        err.print("stopped while waiting for the database; nothing was started")
        raise typer.Exit(0)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if since is not None:
        log.info("database available again after %.0f s", time.monotonic() - since)
    if created and role == "worker":  # a server making its database is the first run
        log.warning("no database was at %s: created an empty one (the server must use this "
                    "same file: --db or PAGESYNC_DB)", s.db)


def check_queue(s: Settings) -> None:
    """serve and worker: a Redis that refuses the settings ends the command (exit 2); one
    that does not answer yet is a warning, and they go on."""
    from .queue import QueueRefused, check_at_start

    try:
        outage = check_at_start(s)
    except QueueRefused as exc:
        fail(str(exc), 2)
    if outage:
        log.warning("%s", outage)


def finite(value: float) -> float:
    """A number option's check that its range cannot make: nan is within every range."""
    if value != value:
        raise typer.BadParameter("nan is not a number of seconds")
    return value


def fail(message: str, code: int = 1):
    # soft wrap: the terminal folds a long line, Rich does not break it (paths stay whole)
    err.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    raise typer.Exit(code)


# ---------------------------------------------------------------- serve / worker

@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.", min=1, max=65535)] = 8000,
    db: Db = None, queue: Queue = None,
    threads: Annotated[int, typer.Option(help="Request-handling threads.", min=1, max=1024)] = 16,
    dev: Annotated[bool, typer.Option("--dev", help="Local development: the /jobs dashboard "
                                      "needs no login on loopback.", metavar="")] = False,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING or ERROR.")] = "INFO",
    processes: Annotated[int, typer.Option(help="Server processes sharing the port "
                                           "(SO_REUSEPORT) and the database.", min=1)] = 1,
    reuse_port: Annotated[bool, typer.Option("--reuse-port", help="Bind with SO_REUSEPORT "
                                             "(other servers may share the port).", metavar="")] = False,
):
    """Run the HTTP server: POST /api/v1/data/sync, stats, /jobs dashboard, health."""
    from .web import serve as run

    level = log_level_of(log_level)
    setup_logging(level)
    s = settings(db, queue, dev=True if dev else None)
    check_queue(s)
    open_database(s, "server")
    from .multiserve import CannotServe, run_many

    try:  # a port taken, an address that cannot be bound, children that cannot start: one line
        if processes > 1:
            raise typer.Exit(run_many(s, host, port, threads, processes, level))
        run(s, host, port, threads, reuse_port)
    except CannotServe as exc:
        fail(str(exc))


@app.command()
def worker(
    workers: Annotated[int, typer.Option("--workers", "-w", help="Concurrent workers.",
                                         min=1, max=256)] = 2,
    kind: Annotated[str, typer.Option("--kind", help="thread or process.")] = "thread",
    db: Db = None, queue: Queue = None,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING or ERROR.")] = "INFO",
):
    """Run the job consumer (Huey) until SIGTERM or Ctrl-C; in-flight jobs finish first."""
    from .worker import run_worker

    if kind not in ("thread", "process"):
        fail("--kind must be thread or process", 2)
    setup_logging(log_level_of(log_level))
    s = settings(db, queue)
    check_queue(s)
    open_database(s, "worker")
    run_worker(s, workers, kind)


# ---------------------------------------------------------------- replay

@app.command()
def replay(
    files: Annotated[list[Path], typer.Argument(metavar="FILES", help="Payload files (JSON object, list "
                                                "of objects, or JSON lines; .gz accepted). Directories: "
                                                "their *.json, *.jsonl and *.gz files.")],
    url: Annotated[str, typer.Option(envvar="PAGESYNC_URL", help="Server base URL.")] = "http://127.0.0.1:8000",
    token: Annotated[Optional[str], typer.Option(envvar="PAGESYNC_TOKEN", help="Bearer token.")] = None,
    batch_size: Annotated[int, typer.Option(help="Records per request (max 1000).", min=1, max=1000)] = 1000,
    concurrency: Annotated[int, typer.Option(help="Requests in flight (the extension uses 1).",
                                             min=1, max=64)] = 1,
    gzip_body: Annotated[bool, typer.Option("--gzip", help="Send gzip-compressed bodies.", metavar="")] = False,
    retries: Annotated[int, typer.Option(help="Retries per request on 429/503/connection errors.",
                                         min=0, max=100)] = 5,
    as_json: AsJson = False,
):
    """POST payload files to a server like the extension does, with progress and a summary.
    Exits 1 if any request failed; Ctrl-C stops it with a summary of what was stored (130)."""
    from . import replay as R

    if not token:
        fail("a token is needed: --token or PAGESYNC_TOKEN (create one with `pagesync token create NAME`)", 2)
    if not url.startswith(("http://", "https://")) or len(url.split("://", 1)[1].strip("/")) == 0:
        fail(f"--url must be http(s)://HOST[:PORT], got {url!r}", 2)
    paths = expand_paths(files)
    if not paths:
        fail("no payload files found (*.json, *.jsonl, *.gz)", 2)
    try:
        reqs, empty = R.plan(paths, batch_size)
    except (OSError, ValueError) as exc:
        fail(f"cannot read payloads: {exc}", 2)
    for path in empty:
        err.print(Text.assemble(("warning: ", "yellow"), display.shown(path),
                                ": no page visits or tab aggregates in it (nothing to send)"),
                  soft_wrap=True)
    sender = R.Sender(url, token, retries=retries, gzip_body=gzip_body)
    total = sum(r.records for r in reqs)
    # The bar moves as requests are answered; beside it, what became of their records.
    with Progress(TextColumn("[bold]replay"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("records sent  {task.fields[outcome]}"), TimeRemainingColumn(),
                  console=err, disable=as_json) as progress:
        bar = progress.add_task("records", total=total, outcome=display.replay_outcome(R.ReplayResult()))

        def answered(req, result):
            progress.update(bar, advance=req.records, outcome=display.replay_outcome(result))
        result = R.replay(reqs, sender, concurrency, answered)
    if result.interrupted:
        err.print(display.replay_interrupted(result))
    if as_json:
        console.print_json(json.dumps({k: getattr(result, k) for k in (
            "requests_ok", "requests_failed", "visits", "aggregates", "jobs", "warnings",
            "rejected", "failures", "seconds", "records", "stored", "records_failed",
            "records_unsent", "records_unknown", "interrupted", "not_sent")}))
    else:
        console.print(display.replay_summary(result))
    raise typer.Exit(130 if result.interrupted else 1 if result.requests_failed else 0)


def expand_paths(files: list[Path]) -> list[Path]:
    out = []
    for f in files:
        if f.is_dir():
            out.extend(sorted(p for p in f.iterdir() if p.suffix in (".json", ".gz", ".jsonl")))
        elif f.exists():
            out.append(f)
        else:
            fail(f"no such file: {f}", 2)
    return out


# ---------------------------------------------------------------- watch

@app.command()
def watch(
    interval: Annotated[float, typer.Option(help="Seconds between refreshes.", min=0.1, max=3600,
                                            callback=finite)] = 1.0,
    once: Annotated[bool, typer.Option("--once", help="Print one snapshot and exit.", metavar="")] = False,
    as_json: AsJson = False,
    db: Db = None, queue: Queue = None,
):
    """Live table of the queue: depth, jobs by state per task, throughput, workers, failures."""
    from .monitor import snapshot
    from .queue import make_huey

    s = settings(db, queue)
    conn, huey = conn_for(s, create=False), make_huey(s)
    if once:
        snap = snapshot(conn, huey, s.worker_heartbeat)
        if as_json:
            print(json.dumps(snap, default=str))
        else:
            console.print(display.snapshot_view(snap))
        return
    try:
        with Live(display.snapshot_view(snapshot(conn, huey, s.worker_heartbeat)), console=console,
                  refresh_per_second=4, screen=False) as live:
            while True:
                time.sleep(interval)
                live.update(display.snapshot_view(snapshot(conn, huey, s.worker_heartbeat)))
    except KeyboardInterrupt:
        pass


# ---------------------------------------------------------------- tokens

@token_app.command("create")
def token_create(name: Annotated[str, typer.Argument(metavar="NAME", help="User the token belongs to.")],
                 db: Db = None):
    """Create a token for NAME (the user is created if new). The token is shown once."""
    if not name.strip() or len(name) > 100:
        fail("NAME must be 1 to 100 characters", 2)
    token = store.create_token(conn_for(settings(db)), name.strip())
    err.print(f"Token for [bold]{escape(name)}[/] (shown once, store it now):")
    print(token)


@token_app.command("list")
def token_list(db: Db = None, as_json: AsJson = False):
    """List tokens (prefixes only: tokens are stored hashed) and each one's last sync.

    A token never used, or not for months, is one to revoke."""
    rows = store.list_tokens(conn_for(settings(db), create=False))
    if as_json:
        print(json.dumps(rows))
        return
    table = Table("user", "token", "created", "last sync", "status")
    for r in rows:
        used = fmt_time(r["last_used_at"]) if r["last_used_at"] else "[dim]never[/]"
        table.add_row(display.shown(r["name"]), r["prefix"] + "…", fmt_time(r["created_at"]), used,
                      "[red]revoked[/]" if r["revoked_at"] else "[green]active[/]")
    console.print(table)


@token_app.command("revoke")
def token_revoke(name: Annotated[str, typer.Argument(metavar="NAME", help="User whose tokens to revoke.")],
                 db: Db = None):
    """Revoke every token of NAME, effective at once."""
    n = store.revoke_tokens(conn_for(settings(db), create=False), name)
    if not n:
        fail(f"no active token for {name!r}")
    console.print(f"Revoked {n} token(s) of {escape(name)}.")


def fmt_time(ts) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts)) if ts else "-"


# ---------------------------------------------------------------- jobs

@jobs_app.command("failed")
def jobs_failed(db: Db = None, as_json: AsJson = False,
                limit: Annotated[int, typer.Option(help="At most this many.", min=1, max=1_000_000)] = 100):
    """List failed jobs (the dead list) with their errors."""
    rows = jobstate.failed_jobs(conn_for(settings(db), create=False), limit)
    if as_json:
        print(json.dumps(rows))
        return
    if not rows:
        console.print("No failed jobs.")
        return
    # The id (what `jobs retry ID` takes, never cut short) over its error; Text, not
    # markup: record ids come from clients and may hold "[...]", and control characters
    # (shown as escapes: `--json` gives the id as stored).
    table = Table(Column("job / error", overflow="fold"), "user", "attempts", "failed at",
                  title="Failed jobs", caption="pagesync jobs retry ID|--all · jobs discard ID|--all")
    for r in rows:
        cell = display.shown(r["id"], "bold") + "\n" + display.shown(r["error"] or "", "red")
        table.add_row(cell, display.shown(r["user"]), str(r["attempts"]), fmt_time(r["finished_at"]))
    console.print(table)


JobIds = Annotated[Optional[list[str]], typer.Argument(metavar="IDS", help="Job ids from `jobs failed`.")]
AllFailed = Annotated[bool, typer.Option("--all", help="Every failed job.", metavar="")]


def _ids_or_all(ids: list[str] | None, all_: bool) -> list | None:
    if all_ == bool(ids):
        fail("give job ids or --all (not both)", 2)
    return None if all_ else ids


@jobs_app.command("retry")
def jobs_retry(ids: JobIds = None, all_: AllFailed = False,
               db: Db = None, queue: Queue = None, as_json: AsJson = False):
    """Put failed jobs back on the queue with fresh attempts."""
    from .queue import deliver, make_huey

    s = settings(db, queue)
    conn = conn_for(s, create=False)
    try:
        jobs = jobstate.retry(conn, _ids_or_all(ids, all_))
    except (LookupError, ValueError) as exc:
        fail(str(exc))
    delivered = deliver(conn, make_huey(s), jobs)
    if as_json:
        print(json.dumps({"retried": len(jobs), "enqueued": delivered}))
    else:
        console.print(f"Retrying {len(jobs)} job(s)" + ("" if delivered else
                      " (queue unreachable: the worker's reconciler will enqueue them)"))


@jobs_app.command("reprocess")
def jobs_reprocess(
    task: Annotated[Optional[str], typer.Option(
        help="Only this task: ProcessPageVisit or ProcessTabAggregate.")] = None,
    db: Db = None, as_json: AsJson = False,
):
    """Process every stored record again with this version's rules (after an upgrade).

    For an upgrade that changed how hosts, sites or categories are computed: the rollups are corrected as each job runs; a running `pagesync worker` picks the jobs up at its next reconcile."""
    if task is not None and task not in store.TASKS:
        fail(f"--task must be one of {', '.join(store.TASKS)}", 2)
    s = settings(db)
    n = jobstate.reprocess(conn_for(s, create=False), task)
    if as_json:
        print(json.dumps({"reprocessing": n}))
        return
    console.print(f"{n:,} job(s) marked for processing again. A running `pagesync worker` "
                  f"delivers them at its next reconcile (every {s.reconcile_interval:g} s, and "
                  "at its start); `pagesync watch` shows them as awaiting delivery until then.")


@jobs_app.command("discard")
def jobs_discard(ids: JobIds = None, all_: AllFailed = False,
                 db: Db = None, as_json: AsJson = False):
    """Drop failed jobs from the failed list (their records stay stored)."""
    try:
        n = jobstate.discard(conn_for(settings(db), create=False), _ids_or_all(ids, all_))
    except (LookupError, ValueError) as exc:
        fail(str(exc))
    print(json.dumps({"discarded": n})) if as_json else console.print(f"Discarded {n} job(s).")


# ---------------------------------------------------------------- stats

@app.command()
def stats(
    user: Annotated[Optional[str], typer.Option(help="Only this user (default: everyone).")] = None,
    date: Annotated[Optional[str], typer.Option(help="Last day, YYYY-MM-DD (default: today).")] = None,
    days: Annotated[int, typer.Option(help="Number of days ending at --date.", min=1, max=36500)] = 1,
    by: Annotated[str, typer.Option(help="host or site.")] = "host",
    limit: Annotated[int, typer.Option(help="At most this many rows.", min=1, max=1_000_000)] = 50,
    db: Db = None, as_json: AsJson = False,
):
    """Time per host (or site) from the processed rollups, with totals."""
    from . import processing
    from . import stats as S

    s = settings(db)
    conn = conn_for(s, create=False)
    last = date or processing.day_of(int(time.time() * 1000), s.timezone)
    try:
        first, last = S.day_range(last, days)
    except ValueError:
        fail(f"--date must be YYYY-MM-DD, got {last!r}", 2)
    except OverflowError:
        fail(f"--days {days} from {last} reaches before year 1", 2)
    if by not in ("host", "site"):
        fail("--by must be host or site", 2)
    user_id = None
    if user:
        user_id = store.user_id_by_name(conn, user)
        if user_id is None:
            fail(f"no user {user!r}")
    rows = S.figures(conn, user_id, first, last, by)[:limit]
    if as_json:
        print(json.dumps({"from": first, "to": last, "timezone": s.timezone, "by": by, "rows": rows}))
        return
    span = first if first == last else f"{first} to {last}"
    title = f"{span} ({s.timezone})" + (f", {user}" if user else "")
    console.print(display.stats_table(rows, escape(title), by))


# ---------------------------------------------------------------- demo

@app.command()
def demo(
    payloads: Annotated[Path, typer.Option(help="Folder of payload files.")] = Path("sample_payloads"),
    workdir: Annotated[Path, typer.Option(help="Where the demo database goes (emptied first).")] = Path(".demo"),
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the jobs.",
                                           min=1, max=86400, callback=finite)] = 120.0,
):
    """Run everything end to end on a fresh database: server, worker, replay, summary."""
    from .demo import run_demo

    raise typer.Exit(run_demo(payloads, workdir, timeout, console))


def main():
    """Console entry: expected failures (settings, database, files, network) end with one
    line on stderr and exit 1, not a traceback."""
    import sqlite3

    from redis.exceptions import RedisError

    from .config import SettingsError

    try:
        app(prog_name="pagesync")
    except SettingsError as exc:  # its message names the setting and what is wrong
        err.print(f"[bold red]error:[/] {escape(str(exc))}", markup=True, highlight=False,
                  soft_wrap=True)
        sys.exit(1)
    except (sqlite3.Error, store.StorageBusy, RedisError, OSError) as exc:
        err.print(f"[bold red]error:[/] {type(exc).__name__}: {escape(str(exc))}", markup=True,
                  highlight=False, soft_wrap=True)  # a path is never cut in two
        sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
