"""The parser's fast paths (orjson, C-speed checks) must give exactly what the general path
gives: each one is compared with it on generated input (Hypothesis)."""
import json
import math
import time
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pagesync import body as B
from pagesync import hosts as H
from pagesync import payload as P
from pagesync import plain as F
from pagesync import processing as R
from pagesync import store
from .test_payload_properties import PROPS, json_values, json_values_with_surrogates, shaped_bodies


def outcome(fn, *args):
    """('ok', value as JSON text) or ('error', status): comparable, NaN-safe, type-exact."""
    try:
        return "ok", json.dumps(fn(*args), sort_keys=True)
    except B.PayloadError as exc:
        return "error", exc.status


def general_decode(raw: bytes, limits: B.Limits):
    return B.careful_loads(raw, limits)


def fast_decode(raw: bytes, limits: B.Limits):
    return B.decode_body(raw, "application/json", None, 10 ** 8, limits)


texts = (json_values | json_values_with_surrogates).flatmap(lambda v: st.sampled_from([
    json.dumps(v).encode(), json.dumps(v, ensure_ascii=False).encode("utf-8", "surrogatepass")]))
mangled = st.tuples(texts, st.integers(0, 400), st.binary(max_size=4)).map(
    lambda t: t[0][:t[1]] + t[2] + t[0][t[1]:])


@PROPS
@given(texts | mangled | st.binary(max_size=200), st.sampled_from([B.DEFAULT_LIMITS, B.Limits(max_depth=3, max_containers=8)]))
def test_the_fast_decode_gives_what_the_standard_library_gives(raw, limits):
    assert outcome(fast_decode, raw, limits) == outcome(general_decode, raw, limits)


def test_the_fast_decode_keeps_integers_past_64_bits_exact():
    assert fast_decode(b'{"n": 123456789012345678901234567890}', B.DEFAULT_LIMITS) == {
        "n": 123456789012345678901234567890}


@pytest.mark.parametrize("raw,status,message", [
    (b"[" * 129 + b"]" * 129, 400, "nested 129 levels deep"),
    (b'{"a": [' + b"[" * 140 + b"]" * 140 + b"]}", 400, "nested 142 levels deep"),
    (b"[" + b"[]," * 200_001 + b"[]]", 413, "200003 arrays and objects"),
])
def test_limits_hold_on_the_fast_path(raw, status, message):
    with pytest.raises(B.PayloadError) as err:
        fast_decode(raw, B.DEFAULT_LIMITS)
    assert err.value.status == status and message in err.value.message


# ASCII url characters, and non-ASCII ones a path may hold or that read as ASCII letters or
# spaces to a careless check (the long s and the Kelvin sign fold to "s" and "k")
url_chars = st.sampled_from(list("aZ09.-_~:/?#[]@!$&'()*+,;=% \t\x00é\u3000ſ\u212a\u200b\xa0\u2028日\x85"))
urls = st.one_of(
    st.tuples(st.sampled_from(["http://", "HTTPS://", "https://", "ftp://", "http:/", ""]),
              st.from_regex(r"[a-zA-Z0-9.-]{0,10}", fullmatch=True) | st.text(url_chars, max_size=15),
              st.sampled_from(["", ":80", ":0", ":9999", ":65536", ":99999", ":x"]),
              st.sampled_from(["", "/", "?", "#"]), st.text(url_chars, max_size=20)).map("".join),
    st.text(max_size=40))


# Hosts near the fast path's edges: labels of 63 and 64 characters, numeric labels (IPv4 or
# not), `xn--` labels (valid punycode or not), underscores, hyphens at the ends, empty
# labels, a trailing dot, characters browsers map or refuse, and hosts of about 253.
label_parts = st.sampled_from(["a", "Z", "0", "9", "-", "_", "xn--", "XN--", "bcher-kva", "zca", "0x",
                               "ü", "ß", "\u3002", "*", "%41", "%2f", "\u202e", "\x80", "a" * 20,
                               "ſ", "\u212a"])
host_labels = st.one_of(st.lists(label_parts, max_size=4).map("".join),
                        st.integers(0, 300).map(str),
                        st.sampled_from(["a" * 62, "a" * 63, "a" * 64, "xn--bcher-kva", "com", "localhost"]))
edge_hosts = st.one_of(
    st.lists(host_labels, min_size=1, max_size=6).map(".".join),
    st.tuples(st.lists(st.sampled_from(["a" * 63, "b" * 61, "c" * 62]), min_size=3, max_size=5),
              st.sampled_from(["", "."])).map(lambda t: ".".join(t[0]) + t[1]),
    st.sampled_from(["[::1]", "[::1", "[v1.x]", "[fe80::1%25x]", "1.2.3.4", "1.2.3.256", "127.1"]))
edge_urls = st.tuples(st.sampled_from(["http://", "https://", "HTTP://", "https://u:p@", "httpſ://"]),
                      edge_hosts, st.sampled_from(["", ".", ":80", ":9999", ":"]),
                      st.sampled_from(["", "/", "/x?q=1", "#f", "?", "/日本?q=é", "/a\u3000", "/\u200b"])
                      ).map("".join)


@settings(PROPS, max_examples=400)
@given(urls | edge_urls)
def test_the_plain_url_fast_path_agrees_with_parsing(url):
    assert P.url_problem(url) == P.parsed_url_problem(url)


@settings(PROPS, max_examples=400)
@given(edge_hosts | st.text(st.sampled_from(list("aZ09.-_%*:[]ü\u3002ſ\u212a")), max_size=20))
def test_the_plain_host_fast_path_agrees_with_the_browser_host_parser(host):
    try:
        general = H.parse_host(host), None
    except H.HostError as exc:
        general = None, str(exc)
    assert (H.canonical_host(host), H.host_problem(host)) == general
    if H.is_plain(host):
        assert general == (host.lower(), None)


@settings(PROPS, max_examples=300)
@given(st.lists(st.sampled_from(["bücher", "ß", "例え", "i❤", "a_b", "WWW", "news", "a-"]), min_size=1,
                max_size=3), st.sampled_from(["example", "de", "jp", "com"]), st.sampled_from(["", ":443", ":8080"]))
def test_unicode_and_punycode_spellings_of_a_host_share_one_key(labels, tld, port):
    unicode_host = ".".join(labels + [tld])
    ascii_host = H.canonical_host(unicode_host)
    assert ascii_host is not None and ascii_host.isascii()
    assert R.host_key(f"https://{unicode_host}{port}/x") == R.host_key(f"https://{ascii_host}/") \
        == R.host_key(ascii_host.upper()) == R.host_key(unicode_host)
    assert P.url_problem(f"https://{unicode_host}{port}/") is None
    assert P.url_problem(f"https://{ascii_host}{port}/") is None


@settings(PROPS, max_examples=400)
@given(st.text(st.characters() | st.sampled_from(list("\t\n\r\x00\x85\u200b\u2028\u2029\ufeff \u3000")),
               max_size=30))
def test_the_printable_text_fast_path_agrees_with_stripping(text):
    assert P.clean_text(text) == P.strip_controls(text).strip()


forbidden = st.sampled_from(sorted(P.FORBIDDEN_KEYS))
meta_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=40)
    | st.just("x" * 2100),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8) | forbidden, inner, max_size=4),
    max_leaves=25)
small_limits = B.Limits(max_depth=4, max_meta_string=50, max_metadata_bytes=400)


@settings(PROPS, max_examples=300)
@given(st.dictionaries(st.text(max_size=8) | forbidden, meta_values, max_size=5),
       st.sampled_from([B.DEFAULT_LIMITS, small_limits]))
def test_plain_small_metadata_is_kept_as_sent_only_when_sanitising_would_keep_it(meta, limits):
    if P.plain_and_small(meta, limits):
        assert P.sanitise_metadata(meta, limits.max_meta_string) == meta
        assert P.nesting_depth(meta) <= limits.max_depth
        assert len(json.dumps(meta, ensure_ascii=False, separators=(",", ":")).encode()) \
            <= limits.max_metadata_bytes
    r = P.RecordErrors()
    r_general = P.RecordErrors()
    got = P.parse_metadata(meta, r, limits)
    with mock.patch.object(P, "plain_and_small", lambda value, limits: False):
        want = P.parse_metadata(meta, r_general, limits)  # the general path alone
    assert (got, r.errors) == (want, r_general.errors)


@settings(PROPS, max_examples=200)
@given(st.dictionaries(st.text(max_size=8), meta_values, max_size=6))
def test_canonical_json_reads_back_as_the_record(rec):
    assert json.loads(store.canonical(rec)) == rec
    assert store.canonical(rec) == store.canonical(dict(reversed(list(rec.items()))))


def test_canonical_json_is_strict_json():
    """A non-finite number (only metadata can hold one: 1e400 parses as infinity) is
    stored as null, not as the non-standard Infinity."""
    assert store.canonical({"b": [math.inf], "a": -math.inf}) == '{"a":null,"b":[null]}'
    # the same when an integer past 64 bits sends it through the standard library
    assert store.canonical({"b": [math.inf], "n": 10 ** 30}) == '{"b":[null],"n":%d}' % 10 ** 30


# ---------------------------------------------------------------- whole records

NOW = 1_764_600_000_000
REFERENCE = Path(__file__).resolve().parent / "reference_payloads"
SAMPLES = Path(__file__).resolve().parent.parent / "sample_payloads"
BASE_VISIT = {
    "visitId": "pv_1764547200000_101", "id": "pv_1764547200000_101", "tabId": 101,
    "url": "https://en.wikipedia.org/wiki/Merge?utm_source=x&a=1", "title": "Merge — Wikipedia",
    "domain": "en.wikipedia.org", "startedAt": 1764547200000, "timestamp": 1764547200000,
    "endedAt": 1764548180299, "duration": 980299, "durationSeconds": 980, "activeDuration": 803023,
    "engagementRate": 0.8192, "isActive": False, "lastHeartbeat": 1764548178927,
    "idlePeriods": [{"start": 1764547300000, "end": 1764547400000, "durationMs": 100000,
                     "reason": "no_activity", "resumeReason": "mouse_move"}],
    "category": "reference", "categoryConfidence": 0.71, "categoryMethod": "metadata",
    "metadata": {"description": "About merge", "keywords": ["a", "b"]},
    "anonymousClientId": "anon_dda173cf256d"}
BASE_AGGREGATE = {
    "tabId": 101, "startTime": 1764547200000, "lastActiveTime": 1764550800567,
    "totalActiveDuration": 1594373, "domainDurations": {"en.wikipedia.org": 980299, "WWW.X.com": 5},
    "pageCount": 2, "currentUrl": "https://en.wikipedia.org/wiki/Queue#History",
    "currentDomain": "en.wikipedia.org", "statistics": {"mostVisitedDomain": "en.wikipedia.org"},
    "anonymousClientId": "anon_dda173cf256d"}
# Values at and past each rule's edges, of every JSON type: a record with one of them in
# one field is still plain, or is one the general path reports, rejects or cleans.
EDGE_VALUES = [
    None, "", " ", "x", " pv_1 ", "\tt\n", "a\u200bb", "\x00", "www.X.org", "X" * 254, "t" * 501,
    True, False, 0, -1, 1, 0.5, 1.5, -0.0, 2 ** 53, 2 ** 53 + 1, 10 ** 15, 10 ** 15 + 1, 10 ** 20,
    1e308, float("inf"), float("nan"), P.MIN_TIME_MS - 1, P.MIN_TIME_MS, NOW, NOW + P.DAY_MS,
    NOW + P.DAY_MS + 1, 1764547100000, 1764547200000, 1764548180299, 1764547200, 86_400_000,
    86_400_001, 86_400, 86_401, "2025-12-01T00:00:00Z", "reference", "news", "Reference", "metadata",
    "magic", "https://a.com/x", "HTTPS://A.COM/?fbclid=1", "https://xn--bcher-kva.example/",
    "https://u:p@a.com/", "ftp://a.com/", "https://a.com/ x", "https://a.com/é", [], [{}], [1], {},
    {"__proto__": 1}, {"k": "v" * 2100}, {"a": {"b": {"c": [1, [2, [3]]]}}}, {"a.com": 1},
    {"a.com": -1}, {"a.com": 0.5}, {"": 1}, {"a.com": None}, [{"start": 1}] * 3]
edge_values = st.sampled_from(EDGE_VALUES)
visit_fields = st.sampled_from(sorted(BASE_VISIT) + ["openedAt", "sourcePageVisitId"])
aggregate_fields = st.sampled_from(sorted(BASE_AGGREGATE) + ["closedAt", "isOpen"])


def report(parse, item):
    rec, r = parse(item, "anon_default", NOW)
    return rec, r.errors, r.warnings


@pytest.mark.parametrize("base,plain,parse", [(BASE_VISIT, F.plain_visit, P.parse_visit),
                                              (BASE_AGGREGATE, F.plain_aggregate, P.parse_aggregate)])
def test_every_edge_value_in_every_field_is_plain_only_when_nothing_is_reported(base, plain, parse):
    assert plain(base, "anon_default", NOW) == report(parse, base)[0]  # the base record is plain
    fields = sorted(base) + ["openedAt", "sourcePageVisitId", "closedAt", "isOpen", "unknown"]
    taken = 0
    for field in fields:
        for value in EDGE_VALUES + ["__drop__"]:
            item = {k: v for k, v in {**base, field: value}.items() if v != "__drop__"}
            fast = plain(item, "anon_default", NOW)
            if fast is not None:
                taken += 1
                assert report(parse, item) == (fast, [], []), (field, value)
    assert taken > len(fields) * 3


RECORD_KINDS = [(BASE_VISIT, visit_fields, F.plain_visit, P.parse_visit),
                (BASE_AGGREGATE, aggregate_fields, F.plain_aggregate, P.parse_aggregate)]
changed_records = st.sampled_from(RECORD_KINDS).flatmap(lambda kind: st.tuples(
    st.just(kind), st.dictionaries(kind[1], edge_values, max_size=3), st.sets(kind[1], max_size=3)))


@settings(PROPS, max_examples=3000)
@given(changed_records)
def test_a_plain_record_is_what_the_general_path_keeps_with_nothing_to_report(case):
    (base, _, plain, parse), changes, dropped = case
    item = {k: v for k, v in {**base, **changes}.items() if k not in dropped}
    fast = plain(item, "anon_default", NOW)
    if fast is not None:
        assert report(parse, item) == (fast, [], [])


@PROPS
@given(st.one_of(json_values, st.dictionaries(visit_fields, json_values, max_size=12)))
def test_any_value_is_plain_only_when_the_general_path_keeps_it_as_is(item):
    for plain, parse in ((F.plain_visit, P.parse_visit), (F.plain_aggregate, P.parse_aggregate)):
        fast = plain(item, None, NOW)
        if fast is not None:
            assert report(parse, item)[1:] == ([], []) and report(parse, item)[0] == fast


def test_what_the_extension_sends_takes_the_fast_path():
    """Not a dead branch: every record of the reference payloads and the samples (but the
    deliberately bad ones and the API dialect's) is plain."""
    now = int(time.time() * 1000)
    files = [*REFERENCE.glob("extension_*.json"), *SAMPLES.glob("*_visits.json"),
             *SAMPLES.glob("*_aggregates.json")]
    seen = 0
    for path in files:
        data = json.loads(path.read_text("utf-8"))
        for body in data if isinstance(data, list) else [data]:
            batch = P.parse_batch(body, now)
            bad = {r["index"] for r in batch.rejected} | {w["index"] for w in batch.warnings}
            for kind, plain in (("pageVisits", F.plain_visit), ("tabAggregates", F.plain_aggregate)):
                for i, item in enumerate(body.get(kind) or []):
                    if i not in bad:
                        assert plain(item, None, now) is not None, (path.name, item)
                        seen += 1
    assert seen > 100


@settings(PROPS, max_examples=400)
@given(st.lists(st.sampled_from(["utm_source=x", "UTM_x=1", "fbclid=1", "GCLID=2", "msclkid",
                                 "mc_eid=3", "_ga=1", "_gax=1", "a=1", "clid=1", "x=utm_", "",
                                 "%75tm_a=1", "utm", "\u212aey=1"]), max_size=5),
       st.sampled_from(["", "#frag", "#?utm_source=1", "#a&b"]))
def test_the_tracking_shortcut_drops_what_the_full_check_drops(params, fragment):
    url = "https://a.com/p?" + "&".join(params) + fragment
    with mock.patch.object(P, "may_track", lambda query: True):
        want = P.strip_tracking(url)
    assert P.strip_tracking(url) == want


# ---------------------------------------------------------------- the depth check left to parse_batch

def nest(value, levels: int):
    for i in range(levels):
        value = [value] if i % 2 else {"k": value}
    return value


deep_values = st.integers(0, 140).map(lambda n: nest(1, n))
deep_bodies = st.fixed_dictionaries({}, optional={
    "pageVisits": st.lists(st.one_of(
        st.just(BASE_VISIT), st.builds(lambda v, d: {**BASE_VISIT, "extra": v}, deep_values, st.none()),
        st.builds(lambda v: {**BASE_VISIT, "metadata": v}, deep_values),
        st.builds(lambda k, v: {**BASE_VISIT, k: v}, st.sampled_from(sorted(F.PLAIN_VISIT_FIELDS)),
                  deep_values), deep_values), max_size=3),
    "tabAggregates": st.lists(st.one_of(
        st.just(BASE_AGGREGATE), st.builds(lambda v: {**BASE_AGGREGATE, "statistics": v}, deep_values),
        st.builds(lambda v: {**BASE_AGGREGATE, "x": v}, deep_values),
        st.builds(lambda k, v: {**BASE_AGGREGATE, k: v},
                  st.sampled_from(sorted(F.PLAIN_AGGREGATE_FIELDS)), deep_values)), max_size=3),
    "junk": deep_values})


def parsed(body, limits, depth_first: bool):
    raw = json.dumps(body).encode()
    try:
        value = B.decode_body(raw, "application/json", None, 10 ** 8, limits, depth=depth_first)
        return "ok", json.dumps(P.parse_batch(value, NOW, limits=limits).__dict__, sort_keys=True)
    except B.PayloadError as exc:
        return "error", exc.status, exc.message


@settings(PROPS, max_examples=300)
@given(deep_bodies | shaped_bodies, st.sampled_from([B.DEFAULT_LIMITS, B.Limits(max_depth=3)]))
def test_leaving_the_depth_check_to_parse_batch_changes_no_outcome(body, limits):
    assert parsed(body, limits, depth_first=False) == parsed(body, limits, depth_first=True)


def test_a_deep_value_beside_plain_fields_is_still_refused():
    for body in ({"pageVisits": [{**BASE_VISIT, "extra": nest(1, 140)}]},
                 {"pageVisits": [{**BASE_VISIT, "visitId": nest(1, 140)}]},
                 {"pageVisits": [{**BASE_VISIT, "timestamp": nest(1, 140)}]},
                 {"pageVisits": [BASE_VISIT], "junk": nest(1, 140)},
                 {"tabAggregates": [{**BASE_AGGREGATE, "x": nest(1, 140)}]}):
        with pytest.raises(B.PayloadError) as caught:
            P.parse_batch(body, NOW)
        assert caught.value.status == 400 and "over the limit of 128" in caught.value.message


@settings(PROPS, max_examples=1000)
@given(changed_records | st.tuples(st.sampled_from(RECORD_KINDS), st.just({}), st.just(set())))
def test_a_record_merged_with_itself_is_itself(case):
    """So the same send twice is no change: no new revision, no new job."""
    (base, _, _, parse), changes, dropped = case
    item = {k: v for k, v in {**base, **changes}.items() if k not in dropped}
    rec = parse(item, "anon_default", NOW)[0]
    if rec is not None:
        merge = P.merge_visit if parse is P.parse_visit else P.merge_aggregate
        assert store.canonical(merge(rec, rec)) == store.canonical(rec)


# ---------------------------------------------------------------- whole bodies (plain.plain_body)

def general_batch(raw: bytes, limits: B.Limits = B.DEFAULT_LIMITS):
    """What the general path makes of a body: decode, then parse_batch record by record."""
    try:
        value = B.decode_body(raw, "application/json", None, 10 ** 8, limits)
        return "ok", json.dumps(P.parse_batch(value, NOW, limits=limits).__dict__, sort_keys=True)
    except B.PayloadError as exc:
        return "error", exc.status, exc.message


def body_outcome(raw: bytes, limits: B.Limits = B.DEFAULT_LIMITS):
    """What the server makes of it: plain_body when it applies, else the general path."""
    try:
        data = B.json_bytes(raw, "application/json", None, 10 ** 8, limits)
        return "ok", json.dumps(F.parse_body(data, NOW, limits).__dict__, sort_keys=True)
    except B.PayloadError as exc:
        return "error", exc.status, exc.message


def changed_item(case) -> dict:
    (base, _, _, _), changes, dropped = case
    return {k: v for k, v in {**base, **changes}.items() if k not in dropped}


def plain_bodies():
    """Bodies of records near the plain path's edges (most of them plain), both kinds,
    duplicates, client fields of any type, now and then a field no plain body holds."""
    visits = changed_records.filter(lambda c: c[0][0] is BASE_VISIT).map(changed_item)
    aggs = changed_records.filter(lambda c: c[0][0] is BASE_AGGREGATE).map(changed_item)
    return st.fixed_dictionaries({}, optional={
        "pageVisits": st.lists(st.just(BASE_VISIT) | visits, max_size=4) | st.none(),
        "tabAggregates": st.lists(st.just(BASE_AGGREGATE) | aggs, max_size=4) | st.none(),
        "anonymousClientId": st.sampled_from(["anon_1", " anon_2\t", "", " ", None, 7, [1]]),
        "browserName": st.sampled_from(["Chrome", "\u200b", True]),
        "junk": st.sampled_from([1, {"a": 1}])})


def serialised(body) -> st.SearchStrategy:
    """The JSON text of a body as a client could write it (escaped or raw UTF-8)."""
    return st.sampled_from([json.dumps(body).encode(),
                            json.dumps(body, ensure_ascii=False).encode("utf-8", "surrogatepass"),
                            json.dumps(body, indent=1).encode()])


@settings(PROPS, max_examples=1500)
@given(plain_bodies().flatmap(serialised), st.sampled_from([B.DEFAULT_LIMITS, B.Limits(max_records=2)]))
def test_a_plain_body_gives_what_the_general_path_gives(raw, limits):
    assert body_outcome(raw, limits) == general_batch(raw, limits)


@settings(PROPS, max_examples=400)
@given((shaped_bodies | deep_bodies).flatmap(serialised) | texts | mangled)
def test_any_body_gives_what_the_general_path_gives(raw):
    assert body_outcome(raw) == general_batch(raw)


def general_path_unused(*args):
    raise AssertionError("the general path parsed a plain record")


def test_the_extensions_bodies_take_the_plain_path_record_by_record():
    """Not a dead branch: in the reference and sample bodies of the extension, every
    record but the samples' deliberately bad ones is decoded straight into its struct and
    never reaches the general path; and each body gives what the general path gives."""
    files = [*REFERENCE.glob("extension_*.json"), *SAMPLES.glob("*_visits.json"),
             *SAMPLES.glob("*_aggregates.json")]
    plain_bodies = 0
    for path in files:
        data = json.loads(path.read_text("utf-8"))
        for body in data if isinstance(data, list) else [data]:
            raw = json.dumps(body).encode()
            assert body_outcome(raw) == general_batch(raw)
            spans = [json.dumps(r).encode() for k in ("pageVisits", "tabAggregates")
                     for r in body.get(k) or []]
            plain = [F.RAW_PATHS[0](r, None, NOW) or F.RAW_PATHS[1](r, None, NOW) for r in spans]
            general = P.parse_batch(body, NOW)
            assert sum(p is not None for p in plain) == len(spans) - len(general.rejected) \
                - len({w["index"] for w in general.warnings})
            if all(plain):
                plain_bodies += 1
                with mock.patch.object(P, "parse_visit", general_path_unused), \
                        mock.patch.object(P, "parse_aggregate", general_path_unused):
                    assert body_outcome(raw) == general_batch(raw)
    assert plain_bodies >= 4


@pytest.mark.parametrize("raw", [
    b'{"pageVisits": [{"id": "a", "id": "pv_1", "url": "https://a.com/", "startedAt": 1764547200000}]}',
    b'{"pageVisits": [{"id": "pv_1", "url": "https://a.com/", "startedAt": 1764547200000, '
    b'"metadata": {"n": 18446744073709551616}}]}',
    b'{"pageVisits": [{"id": "pv_1", "url": "https://a.com/", "startedAt": 1764547200000, '
    b'"metadata": {"n": 9223372036854775808, "s": "\\ud83d\\ude00"}}]}',
    b'{"pageVisits": [{"id": "pv_1", "url": "https://a.com/", "startedAt": 1764547200000.0}]}',
    b'{"pageVisits": [{"id": "pv_1", "url": "https://a.com/", "startedAt": 1764547200000, '
    b'"engagementRate": 1, "categoryConfidence": 1.0, "tabId": -0}]}',
    b'{"pageVisits": [], "tabAggregates": [{"tabId": 1, "startTime": 1764547200000, '
    b'"domainDurations": {"A.com": 1, "www.a.com": 2, "": 3}}]}',
])
def test_json_edge_cases_read_alike_on_both_paths(raw):
    assert body_outcome(raw) == general_batch(raw)


@pytest.mark.parametrize("depth", [129, 990, 1000, 5000, 100_000])
@pytest.mark.parametrize("where", ["metadata", "record", "junk", "statistics"])
def test_a_body_nested_past_any_limit_is_refused_as_the_general_path_refuses_it(depth, where):
    """msgspec gives up past the interpreter's recursion limit (~1000 levels) with a
    RecursionError, not a decode error: that too is the general path's body (a 400 with
    the nesting limit's message), never a 503 the extension would retry for ever."""
    deep = b'{"a":' * depth + b"1" + b"}" * depth
    visit = b'{"id": "ok", "url": "https://a.com/", "startedAt": 1764547200000'
    raw = {"metadata": b'{"pageVisits": [' + visit + b'}, ' + visit + b', "metadata": ' + deep + b"}]}",
           "record": b'{"pageVisits": [' + visit + b'}, ' + b"[" * depth + b"]" * depth + b"]}",
           "junk": b'{"pageVisits": [' + visit + b'}], "junk": ' + deep + b"}",
           "statistics": b'{"tabAggregates": [{"tabId": 1, "startTime": 1764547200000, '
                         b'"statistics": ' + deep + b"}]}"}[where]
    outcome = body_outcome(raw)
    assert outcome == general_batch(raw)
    assert outcome[:2] == ("error", 400) and "nested" in outcome[2]
