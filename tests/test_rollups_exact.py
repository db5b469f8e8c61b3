"""Issue 3: rollups are exact under any order of arrival, re-sends, duplicate deliveries.

The property test drives the real storage and job code in-process (save_batch, then the
worker's JobRunner for each delivered message) so hundreds of random scenarios run in
seconds; the end-to-end test below does one random scenario through a real server and
worker process and checks the stats API."""
import copy
import random
import time
import uuid

from hypothesis import HealthCheck, given, settings, strategies as st

from pagesync import payload, stats, store
from pagesync.config import Settings
from pagesync.jobs import JobRunner
from pagesync.processing import compute_rollups

HOSTS = ["https://www.youtube.com/watch?v={n}", "https://news.bbc.co.uk/n/{n}",
         "https://en.wikipedia.org/wiki/{n}", "https://github.com/a/b/pull/{n}",
         "https://xn--bcher-kva.example/k/{n}", "http://localhost:8000/{n}"]
DAY = 86_400_000
T0 = 1764547200000 - 3 * 3600_000  # 2025-11-30T21:00Z: scenarios cross midnight in most zones


def make_scenario(rng: random.Random, users: int):
    """Per user: visits and aggregates of a few tabs and clients, split into batches,
    with re-sends (grown and stale) and an API-dialect pair; batches shuffled."""
    batches = []
    for user in range(users):
        visits, aggs = [], []
        for client in (f"anon_{user}_a", f"anon_{user}_b")[: rng.randint(1, 2)]:
            for tab in range(rng.randint(1, 3)):
                t = T0 + rng.randint(0, 2 * DAY)
                start, durations = t - rng.choice([0, 0, 5_000, -5_000]), {}
                for _ in range(rng.randint(1, 4)):
                    dur = rng.randint(0, 3_600_000)
                    url = rng.choice(HOSTS).format(n=rng.randint(1, 9))
                    v = {"id": f"pv_{t}_{tab}", "tabId": tab, "url": url, "startedAt": t,
                         "duration": dur, "activeDuration": rng.randint(0, dur),
                         "durationSeconds": rng.choice([None, round(dur / 1000)]),
                         "lastHeartbeat": t + dur, "anonymousClientId": client}
                    visits.append(v)
                    host = url.split("/")[2]
                    durations[host] = durations.get(host, 0) + dur
                    t += dur + rng.randint(1, 60_000)
                aggs.append({"tabId": tab, "startTime": start, "lastActiveTime": max(t, start),
                             "domainDurations": durations, "anonymousClientId": client,
                             "totalActiveDuration": sum(durations.values())})
        resends = []
        for v in rng.sample(visits, k=min(len(visits), rng.randint(0, 3))):
            grown = copy.deepcopy(v)
            grown["duration"] += 60_000
            grown["activeDuration"] += 1_000
            grown["lastHeartbeat"] += 60_000
            grown["durationSeconds"] = None
            resends.append(grown)
        for a in rng.sample(aggs, k=min(len(aggs), rng.randint(0, 2))):
            grown = copy.deepcopy(a)
            host = next(iter(grown["domainDurations"]))
            grown["domainDurations"][host] += 30_000
            grown["lastActiveTime"] += 30_000
            resends.append(grown)
        stale = [copy.deepcopy(v) for v in rng.sample(visits, k=min(len(visits), 1))]
        api_visit = {"id": f"api_{user}", "url": "https://www.example.org/a?utm_source=x",
                     "visited_at": "2025-11-30T23:30:00Z", "duration_seconds": rng.randint(1, 900),
                     "active_duration_seconds": 5}
        api_agg = {"id": f"apiagg_{user}", "page_visit_id": api_visit["id"],
                   "total_time_seconds": rng.randint(0, 900)}
        records = [("pageVisits", r) for r in visits + [api_visit]] + \
                  [("tabAggregates", r) for r in aggs + [api_agg]]
        rng.shuffle(records)
        # late sends (grown or stale) come after the first send of the same record
        records += [("tabAggregates" if "tabId" in r and "startTime" in r else "pageVisits", r)
                    for r in resends + stale]
        while records:
            size = rng.randint(1, 6)
            chunk, records = records[:size], records[size:]
            for kind in ("pageVisits", "tabAggregates"):  # the extension splits kinds
                part = [r for k, r in chunk if k == kind]
                if part:
                    batches.append((user, {kind: part}))
    # interleave users but keep each user's own send order
    return interleave(rng, batches)


def interleave(rng, batches):
    queues = {}
    for user, body in batches:
        queues.setdefault(user, []).append((user, body))
    out = []
    while queues:
        user = rng.choice(sorted(queues))
        out.append(queues[user].pop(0))
        if not queues[user]:
            del queues[user]
    return out


def run_scenario(tmp_path, rng, users, tz):
    s = Settings(db=str(tmp_path / f"p{uuid.uuid4().hex}.db"), timezone=tz)
    store.init_db(s.db)
    conn = store.connect(s.db, durable=False)
    user_ids = []
    for u in range(users):
        store.create_token(conn, f"user{u}")
        user_ids.append(store.user_id_by_name(conn, f"user{u}"))
    runner = JobRunner(s)
    outbox, delivered = [], []
    now = int(time.time() * 1000)
    for user, body in make_scenario(rng, users):
        batch = payload.parse_batch(body, now)
        assert not batch.rejected, batch.rejected
        saved = store.save_batch(conn, user_ids[user], batch)
        store.mark_enqueued(conn, saved["jobs"])
        outbox += saved["jobs"]
        rng.shuffle(outbox)
        for _ in range(rng.randint(0, len(outbox))):  # the worker runs some jobs meanwhile
            job = outbox.pop()
            runner.run(*job)
            delivered.append(job)
    for job in outbox + rng.sample(delivered, k=min(len(delivered), 5)):  # drain + duplicates
        runner.run(*job)
    return conn, s


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rng=st.randoms(use_true_random=False), users=st.integers(1, 3),
       tz=st.sampled_from(["UTC", "Europe/Paris", "America/New_York"]))
def test_rollups_equal_fresh_computation(tmp_path, rng, users, tz):
    conn, s = run_scenario(tmp_path, rng, users, tz)
    counts = conn.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()
    assert {r[0] for r in counts} == {"done"}, [tuple(r) for r in counts]
    check = stats.verify(conn, tz)
    assert check["equal"], check["differences"]
    # the stats reader returns exactly those numbers, user by user, day by day
    fresh = compute_rollups(store.all_records(conn, "page_visits"),
                            store.all_records(conn, "tab_aggregates"), tz)
    for (user, day, host), values in fresh.items():
        rows = {r["host"]: r for r in stats.figures(conn, user, day, day)}
        got = rows[host]
        assert [got["visits"], got["seconds"], got["active_seconds"], got["tab_seconds"]] == values


def test_processing_twice_changes_nothing(tmp_path):
    conn, s = run_scenario(tmp_path, random.Random(7), 2, "UTC")
    before = store.rollup_rows(conn)
    runner = JobRunner(s)
    for task, table in (("ProcessPageVisit", "page_visits"), ("ProcessTabAggregate", "tab_aggregates")):
        for row in conn.execute(f"SELECT user_id, id, revision FROM {table}").fetchall():
            conn.execute("UPDATE jobs SET state = 'queued' WHERE task = ? AND user_id = ? AND record_id = ?",
                         (task, row[0], row[1]))
            runner.run(task, row[0], row[1], row[2])
    assert store.rollup_rows(conn) == before


def test_a_row_that_drops_to_zero_disappears(tmp_path):
    """A visit re-sent with a new url moves its figures; the old host's row goes away."""
    s = Settings(db=str(tmp_path / "z.db"))
    store.init_db(s.db)
    conn = store.connect(s.db, durable=False)
    store.create_token(conn, "u")
    uid = store.user_id_by_name(conn, "u")
    runner = JobRunner(s)
    now = int(time.time() * 1000)
    first = {"id": "pv_1", "url": "https://old.example/", "startedAt": T0, "duration": 5_000,
             "lastHeartbeat": T0 + 5_000}
    moved = dict(first, url="https://new.example/", duration=9_000, lastHeartbeat=T0 + 9_000)
    for body in (first, moved):
        saved = store.save_batch(conn, uid, payload.parse_batch({"pageVisits": [body]}, now))
        for job in saved["jobs"]:
            runner.run(*job)
    assert {k[2] for k in store.rollup_rows(conn)} == {"new.example"}
    assert stats.verify(conn, "UTC")["equal"]
