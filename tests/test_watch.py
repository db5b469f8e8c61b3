"""Issue 5: `pagesync watch` in a real terminal (tmux) shows the same numbers as
`watch --once --json`, and follows the jobs live; its rendering read with Rich's recorder."""
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from pagesync import display, monitor, procs
from pagesync.config import Settings

from .helpers import need, reference, wait_for

SUMMARY = re.compile(r"Processed ([\d,]+)\s+Failed ([\d,]+)\s+Enqueued ([\d,]+)\s+"
                     r"Retrying ([\d,]+)\s+Dead ([\d,]+)")


class Tmux:
    """A tmux server of our own (its own socket), one 120x40 session running a command."""

    def __init__(self, command: list, env: dict):
        need("tmux", shutil.which("tmux") is not None)
        self.socket = f"pagesync-watch-{procs.free_port()}"
        setenv = [arg for k, v in env.items() if k.startswith("PAGESYNC_") for arg in ("-e", f"{k}={v}")]
        subprocess.run(["tmux", "-L", self.socket, "new-session", "-d", "-x", "120", "-y", "40",
                        *setenv, shlex.join(command)], check=True, timeout=10)

    def screen(self) -> str:
        return subprocess.run(["tmux", "-L", self.socket, "capture-pane", "-p"], capture_output=True,
                              text=True, timeout=10).stdout

    def wait_screen(self, predicate, timeout: float, what: str) -> str:
        def check():
            screen = self.screen()
            return screen if predicate(screen) else None
        return wait_for(check, timeout, what)

    def close(self):
        path = subprocess.run(["tmux", "-L", self.socket, "display-message", "-p", "#{socket_path}"],
                              capture_output=True, text=True, timeout=10).stdout.strip()
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True, timeout=10)
        if path:
            Path(path).unlink(missing_ok=True)


def figures(screen: str) -> dict | None:
    m = SUMMARY.search(screen)
    if not m:
        return None
    keys = ("processed", "failed", "enqueued", "retrying", "dead")
    return {k: int(v.replace(",", "")) for k, v in zip(keys, m.groups())}


def task_row(screen: str, task: str) -> list[int]:
    line = next(line for line in screen.splitlines() if line.strip().startswith(task + " "))
    return [int(n) for n in line.split()[1:]]


@pytest.fixture
def tmux_factory():
    made = []

    def factory(command, env):
        t = Tmux(command, env)
        made.append(t)
        return t
    yield factory
    for t in made:
        t.close()


def test_watch_in_tmux_matches_json_and_updates_live(stack_factory, tmux_factory):
    st = stack_factory()
    st.start_server()
    token = st.token()
    visits = reference("extension_visits.json")
    assert st.sync(token, visits).status_code == 200
    st.start_worker()
    st.wait_drained(60)
    snap = st.snapshot()
    term = tmux_factory([sys.executable, "-m", "pagesync", "watch", "--interval", "0.3"],
                        procs.child_env(st.settings))
    screen = term.wait_screen(lambda s: figures(s) is not None, 20, "watch to draw")
    assert figures(screen) == snap["summary"]
    n = len(visits["pageVisits"])
    assert snap["summary"]["processed"] == n
    # task columns: queued running retrying done failed
    assert task_row(screen, "ProcessPageVisit") == [0, 0, 0, n, 0]
    assert task_row(screen, "total") == [0, 0, 0, n, 0]
    assert "alive" in screen and "Queue depth 0" in screen

    aggs = reference("extension_aggregates.json")
    assert st.sync(token, aggs).status_code == 200
    total = n + len(aggs["tabAggregates"])
    screen = term.wait_screen(lambda s: (figures(s) or {}).get("processed") == total, 30,
                              "watch to show the new jobs processed")
    assert task_row(screen, "ProcessTabAggregate") == [0, 0, 0, len(aggs["tabAggregates"]), 0]
    assert figures(screen) == st.snapshot()["summary"]


def test_snapshot_view_recorded_with_rich():
    snap = {
        "summary": {"processed": 12345, "failed": 4, "enqueued": 7, "retrying": 1, "dead": 3},
        "queue_depth": 7, "scheduled": 1,
        "throughput": {"window_seconds": 60, "done_per_second": 2.5, "failed_per_second": 0.05,
                       "series": [0, 0, 1, 2, 4, 8, 4, 2, 1, 0, 0, 0]},
        "tasks": {"ProcessPageVisit": {"queued": 5, "running": 1, "retrying": 1, "done": 12000, "failed": 3},
                  "ProcessTabAggregate": {"queued": 2, "running": 0, "retrying": 0, "done": 345, "failed": 0}},
        "totals": {"queued": 7, "running": 1, "retrying": 1, "done": 12345, "failed": 3},
        "workers": [{"name": "box:1a2b3c", "pid": 4242, "concurrency": 2, "kind": "thread",
                     "queue": "sqlite:///q.db", "state": "alive", "last_seen_seconds_ago": 1.0}],
        "in_flight": [{"task": "ProcessPageVisit", "record_id": "pv_42", "attempts": 2,
                       "age_seconds": 3.25, "worker": "box:1a2b3c"}],
        "recent_failures": [{"task": "ProcessPageVisit", "record_id": "pv_9", "state": "failed",
                             "attempts": 11, "error": "RuntimeError: [bold]boom[/bold]"}],
    }
    console = Console(record=True, width=120, color_system=None)
    console.print(display.snapshot_view(snap))
    text = console.export_text()
    assert figures(text) == snap["summary"]
    assert task_row(text, "ProcessPageVisit") == [5, 1, 1, 12000, 3]
    assert "▁▁▂▃▅█▅▃▂▁▁▁" in text  # the throughput sparkline
    assert "2.5 jobs/s (60 s avg)" in text  # an average, and over what
    assert "3.2s" in text or "3.3s" in text  # age of the job in flight
    assert "[bold]boom[/bold]" in text  # error text is not read as Rich markup


def test_queued_jobs_without_messages_are_a_yellow_line_not_silence():
    snap = {"queue_depth": 0, "pending": 0, "unsent": 2500}
    text = display.queue_alert(snap)
    assert text.plain.startswith("2,500 queued jobs have no message in the queue") and "yellow" in str(text.style)
    assert display.queue_alert({**snap, "unsent": 0}) is None
    assert "unreachable" in display.queue_alert({**snap, "queue_depth": -1}).plain


def test_queue_passwords_are_not_shown():
    assert monitor.hide_password("redis://:s3cret@10.0.0.5:6379/0") == "redis://:***@10.0.0.5:6379/0"
    assert monitor.hide_password("redis://ops:s3cret@h/1") == "redis://ops:***@h/1"
    assert monitor.hide_password("sqlite:///var/lib/q.db") == "sqlite:///var/lib/q.db"
    assert monitor.hide_password("redis://ops:p@ss@h/1") == "redis://ops:***@h/1"
    assert monitor.hide_password("redis://h:6379/0?password=s3cret&socket_timeout=1") == \
        "redis://h:6379/0?password=***&socket_timeout=1"
    assert monitor.hide_password("redis://:s3cret@[::1:6379/0") == "redis://:***@[::1:6379/0"
    assert Settings(queue="redis://:s3cret@h:6379/0").describe_queue() == "redis://:***@h:6379/0"


def test_the_outage_line_counts_in_words():
    from pagesync.display import outage_message
    assert "; 1 job waits in SQLite" in outage_message(1)
    assert "; 2,500 jobs wait in SQLite" in outage_message(2500)
    assert "queued jobs whose messages it lost are sent again" in outage_message(0)
