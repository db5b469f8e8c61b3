"""Rich renderings shared by the CLI commands: snapshot tables, replay and stats summaries."""
from __future__ import annotations

import math
from collections import Counter

from rich import box
from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from .store import TASKS

STATE_STYLE = {"queued": "cyan", "running": "yellow", "retrying": "magenta", "done": "green",
               "failed": "red"}
# Characters a client may put in an id, a url or a title that would act on the operator's
# terminal instead of showing (ESC sequences retitle, clear or recolour it; bidi overrides
# reorder what follows): shown as escapes wherever client data reaches the terminal.
ESCAPED = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F, *range(0x80, 0xA0))}
ESCAPED.update({c: f"\\u{c:04x}" for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A))})
LOG_ESCAPED = {c: v for c, v in ESCAPED.items() if c not in (0x09, 0x0A)}


def printable(value, table: dict = ESCAPED) -> str:
    return str(value).translate(table)


def shown(value, style: str = "") -> Text:
    """Client data for a table cell or a line: its control characters as escapes."""
    return Text(printable(value), style=style)


def scheduled_text(scheduled: int) -> tuple:
    """Retries waiting in the queue's schedule; -1: the queue did not answer."""
    return (str(scheduled), "magenta") if scheduled >= 0 else ("unknown", "bold red")


def snapshot_view(snap: dict) -> Group:
    """The live `watch` screen: queue, jobs per task, throughput, workers, failures."""
    depth = snap["queue_depth"]
    head = Text.assemble(
        ("Queue depth ", "bold"), (str(depth) if depth >= 0 else "unreachable",
                                   "bold cyan" if depth >= 0 else "bold red"),
        *((("   awaiting delivery ", "bold"), (f"{snap['pending']:,}", "bold yellow"))
          if snap.get("pending") else ()),
        ("   scheduled retries ", "bold"), scheduled_text(snap.get("scheduled", 0)),
        ("   throughput ", "bold"), (f"{snap['throughput']['done_per_second']:.1f} jobs/s", "green"),
        (f" ({snap['throughput'].get('window_seconds', 60):g} s avg)", "dim"),
        ("   failing ", "bold"), (f"{snap['throughput']['failed_per_second']:.1f}/s", "red"),
        ("   last 60 s ", "bold"), (sparkline(snap["throughput"].get("series", [])), "green"))
    tasks = Table(title="Jobs by state", box=box.SIMPLE_HEAVY, expand=False)
    tasks.add_column("task", style="bold")
    for state, style in STATE_STYLE.items():
        tasks.add_column(state, justify="right", style=style)
    for task in TASKS:
        counts = snap["tasks"][task]
        tasks.add_row(task, *(str(counts[s]) for s in STATE_STYLE))
    totals = snap["totals"]
    tasks.add_row("total", *(str(totals[s]) for s in STATE_STYLE), style="bold")
    parts = [summary_line(snap), queue_alert(snap), head, tasks, workers_table(snap), in_flight_table(snap),
             failures_table(snap)]
    return Group(*[p for p in parts if p is not None])


def queue_alert(snap: dict) -> Text | None:
    """A red line while the queue does not answer, a yellow one while it answers without
    the messages of queued jobs: what it means for the user's data."""
    if snap["queue_depth"] < 0:
        return Text(outage_message(snap.get("pending", 0)), style="bold red")
    if snap.get("unsent"):
        return Text(unsent_message(snap["unsent"]), style="bold yellow")
    return None


def unsent_message(unsent: int) -> str:
    """Queued jobs the queue has no message for (the dashboard says the same)."""
    jobs = "1 queued job has" if unsent == 1 else f"{unsent:,} queued jobs have"
    return (f"{jobs} no message in the queue (it lost them: a Redis restarted without its "
            "data?). A worker sends them again when it starts; nothing is lost.")


def outage_message(pending: int) -> str:
    """What an unreachable queue means for the user's data (the dashboard says the same)."""
    waits = "1 job waits" if pending == 1 else f"{pending:,} jobs wait"
    return (f"The queue is unreachable. Syncs are still stored; {waits} in SQLite (awaiting "
            "delivery). When it is back they are delivered, and queued jobs whose messages "
            "it lost are sent again.")


SUMMARY_STYLE = {"processed": "green", "failed": "yellow", "enqueued": "cyan",
                 "retrying": "magenta", "dead": "red"}


def sparkline(series: list) -> str:
    """One block character per value, scaled to the largest; any non-zero value shows (pure)."""
    bars = "▁▂▃▄▅▆▇█"
    top = max(series, default=0)
    return "".join(bars[min(7, math.ceil(v / top * 7))] if top else bars[0] for v in series)


def summary_line(snap: dict) -> Text | None:
    """The dashboard's headline figures (see monitor.summary for what each one counts)."""
    summary = snap.get("summary")
    if not summary:
        return None
    parts = []
    for key, style in SUMMARY_STYLE.items():
        parts += [(f"{key.capitalize()} ", "bold"), (f"{summary[key]:,}", f"bold {style}"), ("   ", "")]
    return Text.assemble(*parts[:-1])


def workers_table(snap: dict) -> Table:
    table = Table(title="Workers", box=box.SIMPLE, expand=False)
    for col in ("name", "pid", "threads"):
        table.add_column(col)
    table.add_column("queue", max_width=40, overflow="ellipsis", no_wrap=True)
    for col in ("state", "seen"):
        table.add_column(col)
    for w in snap["workers"]:
        style = {"alive": "green", "lost": "red"}.get(w["state"], "dim")
        table.add_row(shown(w["name"]), str(w["pid"]), Text(f"{w['concurrency']} {w['kind']}"),
                      shown(w["queue"] or ""),
                      Text(w["state"], style=style), f"{w['last_seen_seconds_ago']:.0f}s ago")
    if not snap["workers"]:
        table.add_row("no worker seen in the last 5 minutes", "", "", "", "", "")
    return table


def in_flight_table(snap: dict) -> Table | None:
    if not snap["in_flight"]:
        return None
    table = Table(title="In flight", box=box.SIMPLE, expand=False)
    for col in ("task", "record", "attempt", "age", "worker"):
        table.add_column(col)
    for j in snap["in_flight"][:10]:
        table.add_row(j["task"], shown(j["record_id"]), str(j["attempts"]), f"{j['age_seconds']:.1f}s",
                      shown(j["worker"] or ""))
    return table


def failures_table(snap: dict) -> Table | None:
    if not snap["recent_failures"]:
        return None
    table = Table(title="Recent failures", box=box.SIMPLE, expand=True)
    for col in ("task", "record", "state", "attempts"):
        table.add_column(col, no_wrap=True)
    table.add_column("error", no_wrap=True, overflow="ellipsis", ratio=1)
    for f in snap["recent_failures"]:
        table.add_row(f["task"], shown(f["record_id"]), Text(f["state"], style=STATE_STYLE.get(f["state"])),
                      str(f["attempts"]), shown(str(f["error"] or "")[:80]))
    return table


def replay_outcome(result) -> str:
    """Beside replay's progress bar: what became of the records sent so far (markup)."""
    parts = []
    for n, what, style in ((result.stored, "stored", "green"),
                           (len(result.rejected), "rejected", "yellow"),
                           (result.records_failed, "failed", "bold red")):
        parts.append(f"[{style if n else 'dim'}]{n:,} {what}[/]")
    return " · ".join(parts)


def replay_interrupted(result) -> Text:
    """The one line Ctrl-C leaves before the summary."""
    line = Text.assemble(("interrupted", "bold yellow"),
                         f": {result.records_answered:,} of {result.records:,} records sent, "
                         f"{result.stored:,} stored; the rest was not sent")
    if result.records_unknown:
        line.append(f" ({result.records_unknown:,} cut off mid-request may be stored or not: "
                    "sending them again is harmless)")
    return line


def replay_summary(result) -> Group:
    title = "Replay summary" + (" (interrupted)" if result.interrupted else "")
    table = Table(title=title, box=box.SIMPLE_HEAVY, show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_row("page visits stored", str(result.visits))
    table.add_row("tab aggregates stored", str(result.aggregates))
    table.add_row("records rejected", Text(str(len(result.rejected)), style="red" if result.rejected else ""))
    table.add_row("records failed (request failed)",
                  Text(str(result.records_failed), style="bold red" if result.records_failed else ""))
    if result.records_unsent or result.interrupted:
        table.add_row(f"records not sent ({result.not_sent or 'interrupted'})",
                      Text(str(result.records_unsent), style="yellow"))
    if result.records_unknown:
        table.add_row("records cut off mid-request", Text(str(result.records_unknown), style="yellow"))
    table.add_row("warnings", str(result.warnings))
    table.add_row("jobs enqueued", str(result.jobs))
    table.add_row("requests ok", str(result.requests_ok))
    table.add_row("requests failed", Text(str(result.requests_failed),
                                          style="bold red" if result.requests_failed else ""))
    rate = result.stored / result.seconds if result.seconds else 0
    table.add_row("time", f"{result.seconds:.2f}s ({rate:,.0f} records/s)")
    parts = [table]
    if result.rejected:
        parts.append(rejected_table(result.rejected))
    if result.failures:
        fails = Table(title="Failed requests", box=box.SIMPLE, title_style="bold red")
        for col in ("file", "records", "status", "error"):
            fails.add_column(col)
        for f in result.failures:
            fails.add_row(shown(f["file"]), str(f["records"]),
                          str(f["status"]) if f["status"] else "0 (no answer)", shown(f["error"]))
        parts.append(fails)
    return Group(*parts)


def rejected_table(rejected: list) -> Table:
    table = Table(title="Rejected records", box=box.SIMPLE, title_style="bold red")
    table.add_column("record", ratio=2, overflow="fold")
    table.add_column("field", style="bold", overflow="fold")
    table.add_column("reason", ratio=3, overflow="fold")
    for r in rejected:
        for e in r["errors"]:
            record = shown(f"{r['type']} #{r['index']} {r['id'] or '(no id)'}")
            if r.get("file"):
                record.append(f"\n{printable(r['file'])}", style="dim")
            table.add_row(record, shown(e["field"]), shown(short(e["message"])))
    return table


def short(message: str, limit: int = 110) -> str:
    return message if len(message) <= limit else message[:limit - 1] + "…"


def reasons(rejected: list) -> Counter:
    return Counter(e["field"] for r in rejected for e in r["errors"])


def stats_table(rows: list, title: str, by: str, show_site: bool = True) -> Table:
    """Figures per host or site with a totals row (the site column only beside hosts)."""
    show_site = show_site and by == "host"
    table = Table(title=title, box=box.SIMPLE_HEAVY)
    widest = max([len(r[by]) for r in rows] + [5])
    table.add_column(by, style="bold", min_width=min(widest, 28), overflow="fold")
    if show_site:
        table.add_column("site", style="dim", overflow="fold")
    for col in ("visits", "time", "active", "tab time"):
        table.add_column(col, justify="right", no_wrap=True)
    totals = [0, 0, 0, 0]
    for r in rows:
        values = [r["visits"], r["seconds"], r["active_seconds"], r["tab_seconds"]]
        totals = [a + b for a, b in zip(totals, values)]
        cells = [shown(r[by])] + ([shown(r["site"])] if show_site else [])
        table.add_row(*cells, str(values[0]), *(hms(v) for v in values[1:]))
    table.add_section()
    table.add_row("total", *([""] if show_site else []), str(totals[0]), *(hms(v) for v in totals[1:]),
                  style="bold")
    return table


def hms(seconds: int) -> str:
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def panel(text: str, title: str, style: str = "cyan") -> Panel:
    return Panel(text, title=title, border_style=style, expand=False)
