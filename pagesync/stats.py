"""Reading the rollups: per host or per site, over one day or a range of days."""
from __future__ import annotations

from datetime import date, timedelta

from .processing import compute_rollups
from . import store


def day_range(last: str, days: int) -> tuple[str, str]:
    end = date.fromisoformat(last)
    return (end - timedelta(days=max(days, 1) - 1)).isoformat(), end.isoformat()


def figures(conn, user_id: int | None, first: str, last: str, by: str = "host") -> list[dict]:
    """Rows of {host|site, site, visits, seconds, active_seconds, tab_seconds}, sorted by
    seconds descending; `user_id` None means every user."""
    if by not in ("host", "site"):
        raise ValueError("by must be host or site")
    where, params = "day BETWEEN ? AND ?", [first, last]
    if user_id is not None:
        where += " AND user_id = ?"
        params.append(user_id)
    group = "host, site" if by == "host" else "site"
    rows = conn.execute(
        f"SELECT {group}, SUM(visits) AS visits, SUM(seconds) AS seconds, "
        f"SUM(active_seconds) AS active_seconds, SUM(tab_seconds) AS tab_seconds FROM rollups "
        f"WHERE {where} GROUP BY {group} ORDER BY seconds DESC, tab_seconds DESC, {by}",
        params).fetchall()
    out = []
    for r in rows:
        row = dict(r)
        row.setdefault("host", row["site"])
        out.append(row)
    return out


def verify(conn, tz: str) -> dict:
    """Compare stored rollups with a fresh computation from the stored records:
    {"equal": bool, "differences": [...]}"""
    fresh = compute_rollups(store.all_records(conn, "page_visits"),
                            store.all_records(conn, "tab_aggregates"), tz)
    stored = store.rollup_rows(conn)
    keys = set(fresh) | set(stored)
    diffs = [{"key": list(k), "stored": stored.get(k), "fresh": fresh.get(k)}
             for k in sorted(keys) if stored.get(k) != fresh.get(k)]
    return {"equal": not diffs, "rows": len(fresh), "differences": diffs[:50]}
