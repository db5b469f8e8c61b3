"""The batch write (store.py) on a real SQLite file: every row of any batch size written
once, a plan made before the write lock is checked under it, the log checkpointed by a
thread of its own."""
import json
import os
import re
import time

import pytest

from pagesync import body, payload, store

NOW_MS = int(time.time() * 1000)


def visit(i: int, duration: int = 60_000, **fields) -> dict:
    start = NOW_MS - 86_400_000 + i * 1000
    return {"id": f"pv_{start}_{i}", "url": f"https://example.org/{i}", "startedAt": start,
            "duration": duration, "tabId": i, **fields}


def batch_of(*visits):
    return payload.parse_batch({"pageVisits": list(visits)}, NOW_MS)


@pytest.fixture
def db(tmp_path):
    path = str(tmp_path / "pagesync.db")
    store.init_db(path)
    conn = store.connect(path)
    store.create_token(conn, "alice")
    return path, conn


@pytest.mark.parametrize("n", [0, 1, 2, 3, 7, 31, 100, 511, 512, 513, 999, 1000, 1023, 1024, 2500])
def test_the_multi_row_statements_write_every_row_once(n):
    rows = [(f"t{i % 2}", f"id{i}", i) for i in range(n)]
    statements = store.values_statements(store.JOB_UPSERT, (7, "queued", 1.0, 1.0), rows)
    assert len(statements) == -(-n // store.MAX_ROWS)  # one per MAX_ROWS rows
    written = []
    for sql, params, _ in statements:
        assert params[:4] == [7, "queued", 1.0, 1.0]
        assert len(set(re.findall(r"\?(\d+)", sql))) == len(params)  # each bound once
        own = params[4:]
        written += [tuple(own[k:k + 3]) for k in range(0, len(own), 3)]
    assert [row for row in written if row[0] is not None] == rows  # the rest: padding
    assert len(written) < 2 * n + 1


@pytest.mark.parametrize("n", [1, 5, 1000])
def test_a_batch_of_any_size_is_stored_with_one_queued_job_per_record(db, n):
    path, conn = db
    saved = store.save_batch(conn, 1, batch_of(*[visit(i) for i in range(n)]), queued=True)
    assert len(saved["jobs"]) == n
    assert conn.execute("SELECT COUNT(*) FROM page_visits").fetchone()[0] == n
    states = conn.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()
    assert [tuple(r) for r in states] == [("queued", n)]
    # the JSON is bound as UTF-8 bytes and stored as text that SQLite's JSON functions read
    kinds = conn.execute("SELECT DISTINCT typeof(data), json_valid(data) FROM page_visits").fetchall()
    assert [tuple(r) for r in kinds] == [("text", 1)]


@pytest.mark.parametrize("stored_before", [True, False])
def test_a_plan_made_stale_by_another_writer_is_made_again_under_the_lock(db, stored_before):
    """Two requests plan the same record at once; the second commits first. The first
    must not write its plan (it would drop the other's longer duration): it plans again."""
    path, conn = db
    if stored_before:
        store.save_batch(conn, 1, batch_of(visit(1, duration=1_000)))
    other = store.connect(path)
    first = batch_of(visit(1, duration=5_000, title="first"))
    stale = store.plan(conn, 1, first)  # read revision 1, or no record at all
    store.save_batch(other, 1, batch_of(visit(1, duration=9_000)))  # a new revision meanwhile
    saved = store.save_batch(conn, 1, first, writes=stale)
    row = conn.execute("SELECT data, revision FROM page_visits").fetchone()
    data = json.loads(row["data"])
    revision = 3 if stored_before else 2
    assert (data["duration_ms"], data["title"], row["revision"]) == (9_000, "first", revision)
    assert saved["jobs"] == [(store.TASK_VISIT, 1, visit(1)["id"], revision)]
    assert conn.execute("SELECT revision FROM jobs").fetchone()[0] == revision


def test_a_current_plan_is_written_as_planned(db):
    path, conn = db
    batch = batch_of(visit(1), visit(2))
    writes = store.plan(conn, 1, batch, queued=True)
    statements = []
    conn.set_trace_callback(statements.append)
    store.save_batch(conn, 1, batch, queued=True, writes=writes)
    conn.set_trace_callback(None)
    assert not any(s.startswith("SELECT id, data, revision") for s in statements)  # no re-plan
    assert sum(s.startswith("INSERT INTO page_visits") for s in statements) == 1
    assert conn.execute("SELECT COUNT(*) FROM jobs WHERE state = 'queued'").fetchone()[0] == 2


def test_the_log_is_checkpointed_by_its_own_thread(db):
    path, conn = db
    writer = store.connect(path, polls=True)
    writer.execute(f"PRAGMA wal_autocheckpoint = {store.WRITER_AUTOCHECKPOINT}")
    for b in range(3):
        store.save_batch(writer, 1, batch_of(*[visit(b * 1000 + i) for i in range(1000)]))
    before = os.path.getsize(path)
    assert os.path.getsize(path + "-wal") > before  # the batches are in the log only
    checkpointer = store.Checkpointer(path, interval=0.05).start()
    try:
        deadline = time.monotonic() + 10
        while os.path.getsize(path) <= before and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        checkpointer.stop()
    assert os.path.getsize(path) > before * 2  # copied into the database file
    assert conn.execute("SELECT COUNT(*) FROM page_visits").fetchone()[0] == 3000



def test_a_stored_record_reads_back_exactly_even_past_64_bits(db):
    """Re-sends are merged with the stored JSON read back: a 30-digit integer in metadata
    reads as itself (not a float), so the same send again is no change."""
    _, conn = db
    token_user = store.user_for_token(conn, store.create_token(conn, "big"))["id"]
    visit = {"id": "pv_1", "url": "https://a.com/", "startedAt": 1764547200000,
             "metadata": {"n": 123456789012345678901234567890, "f": 0.1}}
    batch = payload.parse_batch({"pageVisits": [visit]}, 1764600000000)
    first = store.save_batch(conn, token_user, batch)
    again = store.save_batch(conn, token_user, payload.parse_batch({"pageVisits": [visit]}, 1764600000000))
    assert len(first["jobs"]) == 1 and again["jobs"] == []
    assert body.stored_loads(store.canonical_bytes({"n": 10 ** 30})) == {"n": 10 ** 30}
