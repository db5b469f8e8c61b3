"""Issue 7: property tests of the payload parser (Hypothesis). Whatever a client sends, the
parser answers with a batch or a PayloadError carrying a 4xx; valid records beside invalid
ones are kept; sanitising touches nothing but tracking parameters."""
import json
from datetime import datetime, timezone

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pagesync import payload as P
from pagesync import store

NOW = 1_764_600_000_000
PROPS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = (st.none() | st.booleans() | st.integers() | st.integers(min_value=-10**400, max_value=10**400)
           | st.floats() | st.text(max_size=30))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=5)
                           | st.dictionaries(st.text(max_size=10), inner, max_size=5), max_leaves=30)

VISIT_KEYS = ["id", "visitId", "url", "title", "startedAt", "timestamp", "endedAt", "duration",
              "durationSeconds", "activeDuration", "engagementRate", "idlePeriods", "lastHeartbeat",
              "tabId", "domain", "isActive", "category", "categoryConfidence", "categoryMethod",
              "metadata", "anonymousClientId", "openedAt", "sourcePageVisitId", "visited_at",
              "opened_at", "duration_seconds", "tab_id", "engagement_rate", "category_confidence"]
AGG_KEYS = ["id", "tabId", "startTime", "lastActiveTime", "totalActiveDuration", "domainDurations",
            "pageCount", "currentUrl", "currentDomain", "statistics", "closedAt", "isOpen",
            "page_visit_id", "total_time_seconds", "active_time_seconds", "scroll_depth_percent",
            "closed_at"]
shaped_records = st.one_of(
    json_values,
    st.dictionaries(st.sampled_from(VISIT_KEYS), json_values, max_size=12),
    st.dictionaries(st.sampled_from(AGG_KEYS), json_values, max_size=10))
shaped_bodies = st.one_of(json_values, st.fixed_dictionaries({}, optional={
    "pageVisits": st.lists(shaped_records, max_size=6) | json_values,
    "tabAggregates": st.lists(shaped_records, max_size=6) | json_values,
    "anonymousClientId": json_values, "extensionVersion": json_values}))


def storable(rec: dict) -> None:
    """What the store does with a kept record must work: canonical JSON, UTF-8, a hash."""
    store.content_hash(store.canonical(rec))


@PROPS
@given(shaped_bodies)
def test_any_json_value_gives_a_batch_or_a_4xx(body):
    try:
        batch = P.parse_batch(body, NOW)
    except P.PayloadError as exc:
        assert 400 <= exc.status < 500 and exc.message
        return
    for rec in batch.visits + batch.aggregates:
        assert isinstance(rec["id"], str) and rec["id"]
        storable(rec)
    for rej in batch.rejected:
        assert rej["errors"] and all(e["field"] and e["message"] for e in rej["errors"])


@PROPS
@given(st.binary(max_size=300) | json_values.map(lambda v: json.dumps(v).encode()),
       st.sampled_from([None, "gzip", "identity", "br"]))
def test_any_bytes_give_a_value_or_a_4xx(raw, encoding):
    try:
        P.decode_body(raw, "application/json", encoding, 10_000)
    except P.PayloadError as exc:
        assert 400 <= exc.status < 500 and exc.message


# ---------------------------------------------------------------- valid beside invalid

times_ms = st.integers(min_value=P.MIN_TIME_MS, max_value=NOW)
labels = st.from_regex(r"[a-z][a-z0-9-]{0,10}", fullmatch=True)
hosts = st.lists(labels, min_size=1, max_size=3).map(lambda ls: ".".join(ls) + ".com")
path_chars = st.sampled_from(list("abcXYZ019-._~%|^[]!$'()*+,;:@") + ["é", "ü", "日本", "€", "ß"])
segments = st.lists(path_chars, min_size=0, max_size=8).map("".join)
simple_urls = st.builds(lambda s, h, p: f"{s}://{h}/{p}", st.sampled_from(["http", "https"]), hosts,
                        segments)
categories = st.sampled_from(sorted(P.CATEGORIES)) | st.none()


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat()


def extension_visit(i, url, start, duration, rate, cat, title):
    return {"id": f"pv_{start}_{i}", "visitId": f"pv_{start}_{i}", "url": url, "startedAt": start,
            "duration": duration, "durationSeconds": duration // 1000, "engagementRate": rate,
            "category": cat, "title": title, "tabId": i, "endedAt": None}


def api_visit(i, url, start, duration, rate, cat, title):
    return {"id": f"api-{i}", "url": url, "visited_at": iso(start), "duration_seconds": duration // 1000,
            "engagement_rate": rate, "category": cat, "title": title, "tab_id": i}


def extension_aggregate(i, url, start, duration, rate, cat, title):
    return {"tabId": i, "startTime": start, "lastActiveTime": start + duration,
            "totalActiveDuration": duration, "currentUrl": url, "domainDurations": {"a.com": duration}}


def api_aggregate(i, url, start, duration, rate, cat, title):
    return {"id": f"agg-{i}", "total_time_seconds": duration // 1000, "scroll_depth_percent": rate * 100,
            "closed_at": iso(start)}


def record_id(kind, rec):
    return f"tab_{rec['startTime']}_{rec['tabId']}" if kind is extension_aggregate else rec["id"]


# Each breaker spoils one field so that the record must be rejected.
BREAKERS = {
    extension_visit: [("duration", -1), ("url", "javascript:void(0)"), ("engagementRate", 1.01),
                      ("category", "cooking"), ("startedAt", 1_700_000_000), ("url", None),
                      ("categoryConfidence", "high")],
    api_visit: [("duration_seconds", -5), ("url", "ftp://files.example/x"), ("visited_at", "soon"),
                ("engagement_rate", -0.5), ("category", 3)],
    extension_aggregate: [("startTime", None), ("tabId", None), ("closedAt", 5),
                          ("totalActiveDuration", "a lot")],
    api_aggregate: [("scroll_depth_percent", 100.01), ("id", None), ("total_time_seconds", -1),
                    ("closed_at", "1999-01-01T00:00:00Z")],
}

record_specs = st.tuples(st.booleans(), st.sampled_from([0, 1]), st.integers(0, 10), simple_urls,
                         times_ms, st.integers(0, 10 ** 8), st.floats(0, 1), categories,
                         st.text(max_size=40))


def build(specs, kinds):
    """(records, valid ids, invalid indexes) from generated specs."""
    records, valid, invalid = [], [], []
    for i, (ok, dialect, breaker, url, start, duration, rate, cat, title) in enumerate(specs):
        kind = kinds[dialect]
        rec = kind(i, url, start, duration, rate, cat, title)
        if ok:
            valid.append(record_id(kind, rec))
        else:
            field, value = BREAKERS[kind][breaker % len(BREAKERS[kind])]
            rec[field] = value
            invalid.append(i)
        records.append(rec)
    return records, valid, invalid


@settings(PROPS, max_examples=50)
@given(st.lists(record_specs, max_size=10), st.lists(record_specs, max_size=6))
def test_valid_records_beside_invalid_ones_are_kept(visit_specs, agg_specs):
    visits, valid_v, invalid_v = build(visit_specs, (extension_visit, api_visit))
    aggs, valid_a, invalid_a = build(agg_specs, (extension_aggregate, api_aggregate))
    body = {"pageVisits": visits, "tabAggregates": aggs}
    if not valid_v and not valid_a:
        return  # every record rejected: the web layer answers 400 (tested in test_limits)
    batch = P.parse_batch(json.loads(json.dumps(body)), NOW)
    assert [v["id"] for v in batch.visits] == valid_v
    assert [a["id"] for a in batch.aggregates] == valid_a
    rejected = {(r["type"], r["index"]): r for r in batch.rejected}
    assert set(rejected) == {("pageVisit", i) for i in invalid_v} | {("tabAggregate", i) for i in invalid_a}
    for r in rejected.values():
        assert r["errors"] and all(e["field"] and e["message"] for e in r["errors"])


# ---------------------------------------------------------------- sanitising urls

TRACKING = ["utm_source", "utm_medium", "UTM_Campaign", "utm_", "fbclid", "gclid", "msclkid",
            "mc_eid", "_ga"]
query_chars = st.sampled_from(list("abcXYZ0129-._~%|^[]!$'()*+,;:@/?") + ["é", "日本", "€"])
param_names = st.one_of(st.sampled_from(TRACKING),
                        st.lists(query_chars, min_size=0, max_size=6).map("".join))
params = st.tuples(param_names, st.none() | st.lists(query_chars | st.just("="), max_size=6).map("".join))


@PROPS
@given(st.sampled_from(["http", "https", "HTTPS"]), hosts, segments, st.lists(params, max_size=6),
       st.none() | st.lists(query_chars | st.sampled_from(["&", "=", "#", "utm_x=1"]), max_size=6).map("".join))
def test_sanitising_only_removes_tracking_parameters(scheme, host, path, query, fragment):
    pairs = [name if value is None else f"{name}={value}" for name, value in query]
    url = f"{scheme}://{host}/{path}" + ("?" + "&".join(pairs) if pairs else "") \
        + ("#" + fragment if fragment is not None else "")
    kept = [p for p, (name, _) in zip(pairs, query) if name not in TRACKING]
    if len(kept) == len(pairs):
        expected = url
    else:
        expected = f"{scheme}://{host}/{path}" + ("?" + "&".join(kept) if kept else "") \
            + ("#" + fragment if fragment is not None else "")
    batch = P.parse_batch({"pageVisits": [{"id": "v", "url": url, "startedAt": NOW - 1000}]}, NOW)
    assert batch.rejected == [], (url, batch.rejected)
    assert batch.visits[0]["url"] == expected
