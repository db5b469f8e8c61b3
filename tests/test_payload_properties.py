"""Issue 7: property tests of the payload parser (Hypothesis). Whatever a client sends, the
parser answers with a batch or a PayloadError carrying a 4xx; valid records beside invalid
ones are kept; sanitising touches nothing but tracking parameters."""
import json
from datetime import datetime, timezone

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pagesync import body as B
from pagesync import payload as P
from pagesync import store

NOW = 1_764_600_000_000
PROPS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Numbers a parser trips on: too big for a float, inf, nan, just past 2**53, negative zero.
awkward_numbers = st.sampled_from([10 ** 400, -10 ** 400, 10 ** 20, 1e308, float("inf"), float("nan"),
                                   2 ** 53 + 1, -0.0, 1e15 + 1, 946_684_800, 0.5])
# Unpaired surrogates are legal in JSON text as escapes ("\ud800") but not storable as UTF-8.
surrogates = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)


def json_strategy(text):
    scalars = (st.none() | st.booleans() | st.integers() | awkward_numbers | st.floats() | text)
    return st.recursive(scalars, lambda inner: st.lists(inner, max_size=5)
                        | st.dictionaries(text, inner, max_size=5), max_leaves=30)


json_values = json_strategy(st.text(max_size=30))
json_values_with_surrogates = json_strategy(st.text(st.characters() | surrogates, max_size=30))

VISIT_KEYS = ["id", "visitId", "url", "title", "startedAt", "timestamp", "endedAt", "duration",
              "durationSeconds", "activeDuration", "engagementRate", "idlePeriods", "lastHeartbeat",
              "tabId", "domain", "isActive", "category", "categoryConfidence", "categoryMethod",
              "metadata", "anonymousClientId", "openedAt", "sourcePageVisitId", "visited_at",
              "opened_at", "duration_seconds", "tab_id", "engagement_rate", "category_confidence"]
AGG_KEYS = ["id", "tabId", "startTime", "lastActiveTime", "totalActiveDuration", "domainDurations",
            "pageCount", "currentUrl", "currentDomain", "statistics", "closedAt", "isOpen",
            "page_visit_id", "total_time_seconds", "active_time_seconds", "scroll_depth_percent",
            "closed_at"]


def shaped(values):
    """JSON bodies shaped like payloads: real field names holding any JSON values."""
    records = st.one_of(values, st.dictionaries(st.sampled_from(VISIT_KEYS), values, max_size=12),
                        st.dictionaries(st.sampled_from(AGG_KEYS), values, max_size=10))
    return st.one_of(values, st.fixed_dictionaries({}, optional={
        "pageVisits": st.lists(records, max_size=6) | values,
        "tabAggregates": st.lists(records, max_size=6) | values,
        "anonymousClientId": values, "extensionVersion": values}))


shaped_bodies = shaped(json_values)


def storable(rec: dict) -> None:
    """What the store does with a kept record must work: canonical JSON, as UTF-8."""
    store.canonical(rec).encode("utf-8")


@PROPS
@given(shaped_bodies)
def test_any_json_value_gives_a_batch_or_a_4xx(body):
    try:
        batch = P.parse_batch(body, NOW)
    except B.PayloadError as exc:
        assert 400 <= exc.status < 500 and exc.message
        return
    for rec in batch.visits + batch.aggregates:
        assert isinstance(rec["id"], str) and rec["id"]
        storable(rec)
    for rej in batch.rejected:
        assert rej["errors"] and all(e["field"] and e["message"] for e in rej["errors"])


@PROPS
@given(shaped(json_values_with_surrogates))
def test_any_json_text_gives_storable_records_or_a_4xx(body):
    """Through the whole request path: JSON text (ASCII escapes, NaN, huge numbers) -> bytes
    -> decode_body -> parse_batch -> what the store writes."""
    raw = json.dumps(body, ensure_ascii=True).encode()
    try:
        batch = P.parse_batch(B.decode_body(raw, "application/json", None, 1 << 20), NOW)
    except B.PayloadError as exc:
        assert 400 <= exc.status < 500 and exc.message
        return
    for rec in batch.visits + batch.aggregates:
        storable(rec)
    json.dumps(batch.rejected + batch.warnings, ensure_ascii=False).encode("utf-8")


@PROPS
@given(st.binary(max_size=300) | json_values.map(lambda v: json.dumps(v).encode()),
       st.sampled_from([None, "gzip", "identity", "br"]))
def test_any_bytes_give_a_value_or_a_4xx(raw, encoding):
    try:
        B.decode_body(raw, "application/json", encoding, 10_000)
    except B.PayloadError as exc:
        assert 400 <= exc.status < 500 and exc.message


# ---------------------------------------------------------------- valid beside invalid

times_ms = st.integers(min_value=P.MIN_TIME_MS, max_value=NOW - 10 ** 8)  # ends before NOW + 1 day
labels = st.from_regex(r"[a-z][a-z0-9-]{0,10}", fullmatch=True).filter(
    lambda label: not label.startswith("xn--"))  # a valid host: no made-up punycode
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


# ---------------------------------------------------------------- hostile fields in valid records

with_surrogate = st.builds(lambda a, c, b: a + c + b, st.text(max_size=5), surrogates, st.text(max_size=5))
hostile_values = st.one_of(awkward_numbers, with_surrogate, st.dictionaries(with_surrogate, with_surrogate),
                           json_values_with_surrogates)
KINDS = {"pageVisits": (extension_visit, api_visit), "tabAggregates": (extension_aggregate, api_aggregate)}


@settings(PROPS, max_examples=150)
@given(st.sampled_from(sorted(KINDS)), st.sampled_from([0, 1]), record_specs,
       st.dictionaries(st.sampled_from(sorted(set(VISIT_KEYS + AGG_KEYS))), hostile_values,
                       min_size=1, max_size=3))
def test_hostile_fields_in_otherwise_valid_records_never_crash(key, dialect, spec, overlay):
    """A valid record with one to three fields replaced by awkward values (numbers too big
    for a float, unpaired surrogates, nested junk), sent as JSON text through the whole path:
    a stored record must stay storable; otherwise a 4xx or a rejected record."""
    _, _, _, url, start, duration, rate, cat, title = spec
    record = {**KINDS[key][dialect](1, url, start, duration, rate, cat, title), **overlay}
    raw = json.dumps({key: [record]}, ensure_ascii=True).encode()
    try:
        batch = P.parse_batch(B.decode_body(raw, "application/json", None, 1 << 20), NOW)
    except B.PayloadError as exc:
        assert 400 <= exc.status < 500 and exc.message
        return
    for rec in batch.visits + batch.aggregates:
        storable(rec)
    assert batch.received == 1



STRING_FIELDS = ["id", "visitId", "title", "domain", "categoryMethod", "category_method",
                 "anonymousClientId", "sourcePageVisitId", "source_page_visit_id", "page_visit_id",
                 "currentDomain", "url", "currentUrl"]


@settings(PROPS, max_examples=100)
@given(st.sampled_from(sorted(KINDS)), st.sampled_from([0, 1]), record_specs,
       st.dictionaries(st.sampled_from(STRING_FIELDS), with_surrogate, min_size=1, max_size=3),
       st.dictionaries(with_surrogate, with_surrogate, max_size=3))
def test_unpaired_surrogates_anywhere_are_stored_as_replacement_characters(key, dialect, spec, overlay, meta):
    _, _, _, url, start, duration, rate, cat, title = spec
    record = {**KINDS[key][dialect](1, url, start, duration, rate, cat, title), **overlay,
              "metadata": meta, "statistics": meta}
    raw = json.dumps({key: [record]}, ensure_ascii=True).encode()
    batch = P.parse_batch(B.decode_body(raw, "application/json", None, 1 << 20), NOW)
    for rec in batch.visits + batch.aggregates:
        text = store.canonical(rec)
        storable(rec)
        assert not any(0xD800 <= ord(c) <= 0xDFFF for c in text)

