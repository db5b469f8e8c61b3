"""Database side of processing: apply a record's processing results, its rollup
contribution and its tab links, inside the caller's transaction. The rules themselves
live in `processing.py`."""
from __future__ import annotations

import json
import time

from . import processing as R


def apply_delta(conn, user_id: int, delta: dict) -> None:
    for (day, host), (visits, seconds, active, tab) in delta.items():
        conn.execute(
            "INSERT INTO rollups (user_id, day, host, site, visits, seconds, active_seconds, "
            "tab_seconds) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (user_id, day, host) DO "
            "UPDATE SET visits = visits + excluded.visits, seconds = seconds + excluded.seconds, "
            "active_seconds = active_seconds + excluded.active_seconds, "
            "tab_seconds = tab_seconds + excluded.tab_seconds",
            (user_id, day, host, R.site_of(host), visits, seconds, active, tab))
        if min(visits, seconds, active, tab) >= 0:
            continue  # nothing was taken away: the row cannot have dropped to zero
        conn.execute(
            "DELETE FROM rollups WHERE user_id = ? AND day = ? AND host = ? AND visits = 0 "
            "AND seconds = 0 AND active_seconds = 0 AND tab_seconds = 0", (user_id, day, host))


def replace_contribution(conn, user_id: int, applied_json: str | None, new: dict) -> str:
    """Swap a record's applied contribution for `new`; returns the json to store."""
    delta = R.contribution_delta(R.contribution_from_json(json.loads(applied_json or "[]")), new)
    apply_delta(conn, user_id, delta)
    return json.dumps(R.contribution_to_json(new))


def process_visit(conn, row, tz: str) -> int:
    """ProcessPageVisit's work on a loaded row. Returns the revision processed."""
    rec = json.loads(row["data"])
    out = R.process_visit(rec, tz)
    applied = replace_contribution(conn, row["user_id"], row["applied"], out["contribution"])
    conn.execute(
        "UPDATE page_visits SET norm_url = ?, host = ?, site = ?, category = ?, engagement = ?, "
        "unread = ?, applied = ?, processed_revision = ?, processed_at = ? "
        "WHERE user_id = ? AND id = ?",
        (out["norm_url"], out["host"], out["site"], out["category_final"], out["engagement"],
         int(out["unread"]), applied, row["revision"], time.time(), row["user_id"], row["id"]))
    relink_for_visit(conn, row["user_id"], rec, tz)
    return row["revision"]


def relink_for_visit(conn, user_id: int, visit: dict, tz: str) -> None:
    """A visit arrived or changed: the aggregates it may belong to are linked again."""
    rows = conn.execute(
        "SELECT * FROM tab_aggregates WHERE user_id = ? AND processed_revision IS NOT NULL AND ("
        "(client_id IS ? AND tab_id IS ? AND start_ms <= ?) OR page_visit_id = ?)",
        (user_id, visit.get("client_id"), visit.get("tab_id"), visit["started_at"],
         visit["id"])).fetchall()
    for agg_row in rows:
        link_aggregate(conn, agg_row, tz)


def candidate_visits(conn, user_id: int, agg: dict) -> list:
    if agg.get("dialect") == "api":
        rows = conn.execute("SELECT data FROM page_visits WHERE user_id = ? AND id = ?",
                            (user_id, agg.get("page_visit_id"))).fetchall()
    else:
        rows = conn.execute(
            "SELECT data FROM page_visits WHERE user_id = ? AND client_id IS ? AND tab_id IS ? "
            "AND started_at >= ? ORDER BY started_at, id LIMIT 1",
            (user_id, agg.get("client_id"), agg.get("tab_id"), agg["start_ms"])).fetchall()
    return [json.loads(r["data"]) for r in rows]


def link_aggregate(conn, row, tz: str) -> int:
    """Link an aggregate to its tab's first visit and apply its contribution."""
    agg = json.loads(row["data"])
    linked = R.first_visit_for_tab(agg, candidate_visits(conn, row["user_id"], agg))
    contribution = R.aggregate_contribution(agg, tz, linked)
    applied = replace_contribution(conn, row["user_id"], row["applied"], contribution)
    summary = R.aggregate_summary(agg)
    conn.execute(
        "UPDATE tab_aggregates SET linked_visit_id = ?, tab_seconds = ?, top_host = ?, "
        "applied = ?, processed_revision = ?, processed_at = ? WHERE user_id = ? AND id = ?",
        (linked["id"] if linked else None, summary["tab_seconds"], summary["top_host"], applied,
         row["revision"], time.time(), row["user_id"], row["id"]))
    return row["revision"]


def process_aggregate(conn, row, tz: str) -> int:
    return link_aggregate(conn, row, tz)
