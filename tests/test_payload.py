"""Issue 7: one test per validation rule of SPEC section 1 (payload.py is pure: no server)."""
import gzip
import json
import time
import zlib

import pytest

from pagesync import body as B
from pagesync import payload as P
from pagesync import store

NOW = 1_764_600_000_000  # 2025-12-01T14:40Z
T = 1_764_547_200_000  # 2025-12-01T00:00Z
T0 = 1_764_547_200_000


def visit(**fields):
    base = {"id": "pv_1", "url": "https://example.org/a", "startedAt": T0, "duration": 60_000}
    return {**base, **fields}


def api_visit(**fields):
    base = {"id": "v1", "url": "https://example.org/a", "visited_at": "2025-12-01T09:15:00Z",
            "duration_seconds": 60}
    return {**base, **fields}


def aggregate(**fields):
    return {"tabId": 7, "startTime": T0, "lastActiveTime": T0 + 60_000, **fields}


def parse_visits(*visits, **kw):
    return P.parse_batch({"pageVisits": list(visits)}, NOW, **kw)


def errors_of(batch, index=0):
    rejected = [r for r in batch.rejected if r["index"] == index]
    return {e["field"]: e["message"] for r in rejected for e in r["errors"]}


def warnings_of(batch):
    return {w["field"]: w["message"] for w in batch.warnings}


def test_valid_record_is_kept_and_reports_nothing():
    batch = parse_visits(visit())
    assert [v["id"] for v in batch.visits] == ["pv_1"]
    assert batch.rejected == [] and batch.warnings == []


@pytest.mark.parametrize("fields, field, words", [
    ({"id": None}, "id", "missing"),
    ({"id": ""}, "id", "is empty"),
    ({"id": "   "}, "id", "is empty"),
    ({"id": ["pv_1"]}, "id", "must be a non-empty string, got an array"),
    ({"id": True}, "id", "must be a non-empty string, got a boolean"),
    ({"url": None}, "url", "missing"),
    ({"url": "   "}, "url", "missing"),
    ({"url": "ftp://example.org/file"}, "url", "http or https"),
    ({"url": "javascript:alert(1)"}, "url", "http or https"),
    ({"url": "https://example.org/" + "a" * 2100}, "url", "longer than 2048"),
    ({"url": "http://[::1/"}, "url", "cannot be parsed"),
    ({"url": "https:///nohost"}, "url", "no valid host"),
    ({"startedAt": None}, "startedAt", "missing"),
    ({"startedAt": "yesterday"}, "startedAt", "cannot be parsed"),
    ({"duration": -1}, "duration", "negative"),
    ({"duration": "long"}, "duration", "must be a number"),
    ({"activeDuration": -5}, "activeDuration", "negative"),
    ({"engagementRate": 1.5}, "engagementRate", "between 0 and 1"),
    ({"engagementRate": "high"}, "engagementRate", "between 0 and 1"),
    ({"categoryConfidence": -0.1}, "categoryConfidence", "between 0 and 1"),
    ({"category": "cooking"}, "category", "not a known category"),
    ({"startedAt": 946_684_799_999}, "startedAt", "before 2000-01-01"),
    ({"startedAt": NOW + 2 * P.DAY_MS}, "startedAt", "more than a day in the future"),
    ({"endedAt": T0 - 1}, "endedAt", "before the visit's start"),
    ({"metadata": [1, 2]}, "metadata", "must be an object"),
])
def test_extension_visit_errors_reject_the_record(fields, field, words):
    batch = parse_visits(visit(), visit(**{"id": "pv_bad", **fields}))
    assert [v["id"] for v in batch.visits] == ["pv_1"]
    assert batch.rejected[0]["index"] == 1
    assert words in errors_of(batch, 1)[field]


@pytest.mark.parametrize("fields, field, words", [
    ({"visited_at": "not a time"}, "visited_at", "cannot be parsed"),
    ({"visited_at": None}, "visited_at", "missing"),
    ({"duration_seconds": -3}, "duration_seconds", "negative"),
    ({"active_duration_seconds": "x"}, "active_duration_seconds", "must be a number"),
    ({"engagement_rate": 2}, "engagement_rate", "between 0 and 1"),
    ({"category_confidence": 7}, "category_confidence", "between 0 and 1"),
    ({"category": "games"}, "category", "not a known category"),
    ({"visited_at": "1999-12-31T23:59:59Z"}, "visited_at", "before 2000-01-01"),
])
def test_api_visit_errors_reject_the_record(fields, field, words):
    batch = parse_visits(api_visit(), api_visit(**{"id": "v_bad", **fields}))
    assert [v["id"] for v in batch.visits] == ["v1"]
    assert words in errors_of(batch, 1)[field]


def test_seconds_where_milliseconds_belong_says_so():
    batch = parse_visits(visit(startedAt=T0 // 1000))
    message = errors_of(batch)["startedAt"]
    assert "before 2000-01-01" in message
    assert "looks like seconds where milliseconds belong" in message
    # a plainly old time gets no such hint
    assert "seconds" not in errors_of(parse_visits(visit(startedAt=5)))["startedAt"]


def test_warnings_keep_the_record():
    batch = parse_visits(visit(title="t" * 600, domain="d" * 300 + ".com",
                               duration=25 * 3600 * 1000, categoryMethod="astrology"))
    assert len(batch.visits) == 1 and batch.rejected == []
    warned = warnings_of(batch)
    assert "truncated" in warned["title"]
    assert "longer than 253" in warned["domain"]
    assert "over 24 hours" in warned["duration"]
    assert "not a known category method" in warned["categoryMethod"]
    assert len(batch.visits[0]["title"]) == 500
    assert batch.warnings[0]["index"] == 0 and batch.warnings[0]["id"] == "pv_1"


def test_titles_are_trimmed_and_lose_control_characters():
    batch = parse_visits(visit(title="  A\x00 title\u200b with\x07 bells\n "))
    assert batch.visits[0]["title"] == "A title with bells"


def test_domains_are_lowercased_and_lose_www():
    rec = parse_visits(visit(domain="WWW.Example.ORG")).visits[0]
    assert rec["domain"] == "example.org"
    rec = parse_visits(api_visit(domain="www.Example.org")).visits[0]
    assert rec["domain"] == "example.org"
    assert parse_visits(visit(domain="wwwexample.org")).visits[0]["domain"] == "wwwexample.org"


def test_tracking_parameters_are_stripped_and_the_rest_kept_byte_for_byte():
    url = "https://ex.org/p%20a|t^h[1]?b=2&utm_source=x&UTM_Medium=y&fbclid=1&gclid=2&msclkid=3" \
          "&mc_eid=4&_ga=5&a=%2F&c#frag?utm_x=1"
    assert parse_visits(visit(url=url)).visits[0]["url"] == \
        "https://ex.org/p%20a|t^h[1]?b=2&a=%2F&c#frag?utm_x=1"
    assert P.strip_tracking("https://ex.org/?utm_source=x") == "https://ex.org/"
    assert P.strip_tracking("https://ex.org/?utm_source=x#f") == "https://ex.org/#f"
    same = "https://ex.org/a?x=1&&y=%zz&ga=1&utmsource=2"
    assert P.strip_tracking(same) == same


@pytest.mark.parametrize("url", [
    "https://example.org/search?q=a|b",
    "https://example.org/x^y",
    "https://example.org/list?ids[]=1&ids[]=2",
    "https://例え.jp/パス?検索=東京",
    "https://example.org/ü?q=ñ",
    "https://example.org/trail\u3000",  # only C0 controls and spaces are trimmed, as browsers do
    "https://example.org/nbsp\u00a0",
])
def test_urls_browsers_really_produce_are_accepted(url):
    batch = parse_visits(visit(url=url))
    assert batch.rejected == [], batch.rejected
    assert batch.visits[0]["url"] == url


@pytest.mark.parametrize("url, problem", [
    ("https://./", "has no valid host"),
    ("https://../page", "has no valid host"),
    ("https://a.com/\x01x", "contains control characters"),
    ("https://a.com/x\x7f", "contains control characters"),
    ("https://a.com/x\x85y", "contains control characters"),  # C1: an href has none
    ("https://a.com\\@b.com/", "has a backslash in its host part"),
])
def test_urls_without_a_real_host_or_with_control_characters_are_rejected(url, problem):
    assert errors_of(parse_visits(visit(url=url))) == {"url": problem}


@pytest.mark.parametrize("url, problem", [
    ("https://\u0080x.com/x", "has an invalid host '\\x80x.com': it contains the control character U+0080"),
    ("https://\u202egnp.exe/", "has an invalid host '\\u202egnp.exe': it contains the bidi-control "
                              "character U+202E"),
    ("https://xn--/", "has an invalid host 'xn--': the label 'xn--' is not valid punycode"),
    ("https://a..b/", "has an invalid host 'a..b': it has an empty label (two dots in a row, or a "
                      "leading dot)"),
    ("https://*.com/", "has an invalid host '*.com': '*' is not allowed in a host name (letters, "
                       "digits, '-', '_' and '.' are)"),
    ("https://%2A.com/", "has an invalid host '%2A.com': it percent-decodes to '*.com', and '*' is "
                         "not allowed in a host name (letters, digits, '-', '_' and '.' are)"),
    ("https://\u00fc" + "a" * 70 + ".com/", "has an invalid host '\u00fc" + "a" * 56 + "...': the label "
     "'\u00fc" + "a" * 56 + "...' is 78 bytes once punycoded, over 63"),
    ("https://" + "a." * 127 + "com/", "has an invalid host '" + "a." * 28 + "a...': it is 257 "
     "characters once punycoded, over 253"),
    ("https://\U000e0001.com/", "has an invalid host '\\U000e0001.com': it contains the invisible "
                               "formatting character U+E0001"),
    ("https://1.2.3.256/", "has an invalid host '1.2.3.256': it ends in a number, so it must be an "
                           "IPv4 address, and it is not one (at most 4 parts, each 0-255)"),
    ("https://a.\u3002b.com/", "has an invalid host 'a.\u3002b.com': it has an empty label (two dots in "
                              "a row, or a leading dot; U+3002 and the other full stops count as dots)"),
    ("http://[fe80::1%25eth0]/", "has an invalid host '[fe80::1%25eth0]': '[fe80::1%25eth0]' is not a "
                                 "valid IPv6 address"),
])
def test_urls_whose_host_no_browser_would_accept_are_rejected_with_the_reason(url, problem):
    batch = parse_visits(visit(url=url), visit(id="pv_2"))
    assert errors_of(batch) == {"url": problem}
    assert [v["id"] for v in batch.visits] == ["pv_2"]  # the valid record beside it is kept


@pytest.mark.parametrize("url", [
    "https://a_b.example.com/x",  # underscores in labels
    "https://bücher.example/katalog",
    "https://WWW.Bücher.example:443/",
    "https://xn--bcher-kva.example/katalog",
    "https://ß.de/",
    "https://a\u3002b.com/",  # an ideographic full stop is a dot
    "https://i❤.ws/",
    "http://localhost:8000/jobs",
    "http://127.0.0.1:8000/",
    "http://[::1]:8000/",
    "https://example.com./",
    "https://-a-.blogspot.com/",  # browsers do not check hyphens at a label's ends
    "https://%41.com/",  # browsers read it as a.com
    "https://user:pw@a_b.example.com:8080/x",
])
def test_hosts_browsers_accept_are_accepted(url):
    batch = parse_visits(visit(url=url))
    assert batch.rejected == [], batch.rejected
    assert batch.visits[0]["url"] == P.strip_credentials(url)


def test_an_aggregate_current_url_with_a_bad_host_is_ignored_with_a_warning():
    batch = P.parse_batch({"tabAggregates": [aggregate(currentUrl="https://a..b/")]}, NOW)
    assert batch.rejected == [] and batch.aggregates[0]["current_url"] is None
    assert warnings_of(batch) == {"currentUrl": "has an invalid host 'a..b': it has an empty label "
                                                "(two dots in a row, or a leading dot); ignored"}


def test_a_url_is_trimmed_of_spaces_and_c0_controls_only():
    assert parse_visits(visit(url=" \t https://example.org/a\u3000 \n")).visits[0]["url"] == \
        "https://example.org/a\u3000"


def test_credentials_in_a_url_are_not_stored():
    batch = parse_visits(visit(url="https://user:secret@example.org:8443/a?b=1#c"))
    assert batch.visits[0]["url"] == "https://example.org:8443/a?b=1#c"
    # the rest of the url byte for byte: the scheme's case, an empty query or fragment
    for sent, kept in (("HTTPS://u:p@a.com/Path?q#", "HTTPS://a.com/Path?q#"),
                       ("https://u:p@a.com/x?#", "https://a.com/x?#"),
                       ("http://a@b@c.com:81/@?x=@", "http://c.com:81/@?x=@")):
        assert parse_visits(visit(url=sent)).visits[0]["url"] == kept
    assert parse_visits(visit(url="https://example.org/@me")).visits[0]["url"] == "https://example.org/@me"


def test_metadata_is_sanitised():
    meta = {"__proto__": {"polluted": True}, "constructor": 1, "prototype": 2,
            "nested": {"__proto__": 3, "keep": "k" * 2500}, "list": [{"prototype": 1, "x": "y"}]}
    rec = parse_visits(visit(metadata=meta)).visits[0]
    assert rec["metadata"] == {"nested": {"keep": "k" * 2000}, "list": [{"x": "y"}]}


def test_metadata_over_50_kb_rejects_the_record():
    batch = parse_visits(visit(metadata={"blob": "x" * (50 * 1024)}))
    assert batch.visits == []
    assert "over the limit of 51200" in errors_of(batch)["metadata"]
    fits = parse_visits(visit(metadata={"blob": "x" * (50 * 1024 - 20)}))
    assert len(fits.visits) == 1


def test_metadata_limits_come_from_the_limits_object():
    limits = B.Limits(max_metadata_bytes=100, max_meta_string=5)
    batch = parse_visits(visit(metadata={"a": "x" * 200}), visit(id="pv_2", metadata={"a": "abcdefgh"}),
                         limits=limits)
    assert "over the limit of 100" in errors_of(batch, 0)["metadata"]
    assert batch.visits[0]["metadata"] == {"a": "abcde"}


def test_aggregate_closed_before_open_is_rejected():
    batch = P.parse_batch({"tabAggregates": [aggregate(closedAt=T0 - 1000), aggregate(tabId=8)]}, NOW)
    assert [a["id"] for a in batch.aggregates] == [f"tab_{T0}_8"]
    assert "before the tab's startTime" in errors_of(batch)["closedAt"]
    # the rejection names the id the aggregate would have had, to match it up
    assert batch.rejected[0]["id"] == f"tab_{T0}_7"


def test_aggregate_span_over_a_year_is_rejected():
    batch = P.parse_batch({"tabAggregates": [aggregate(startTime=NOW - 400 * P.DAY_MS,
                                                       lastActiveTime=NOW)]}, NOW)
    assert "more than a year" in errors_of(batch)["lastActiveTime"]
    api = P.parse_batch({"tabAggregates": [{"id": "a1", "total_time_seconds": 400 * 86400}]}, NOW)
    assert "more than a year" in errors_of(api)["total_time_seconds"]


def test_aggregate_without_tab_id_is_rejected_and_ids_are_stable():
    batch = P.parse_batch({"tabAggregates": [{"startTime": T0}, aggregate(), aggregate()]}, NOW)
    assert "tabId" in errors_of(batch)
    assert batch.rejected[0]["id"] is None  # no tab: no id to name
    assert [a["id"] for a in batch.aggregates] == [f"tab_{T0}_7"]  # the same tab twice: merged


@pytest.mark.parametrize("depth, ok", [(0, True), (100, True), (100.5, False), (-1, False), ("50", False)])
def test_api_aggregate_scroll_depth_is_0_to_100(depth, ok):
    batch = P.parse_batch({"tabAggregates": [{"id": "a1", "scroll_depth_percent": depth}]}, NOW)
    assert (len(batch.aggregates) == 1) is ok
    if not ok:
        assert "scroll_depth_percent" in errors_of(batch)


@pytest.mark.parametrize("body, words", [
    ([], "must be a JSON object"),
    ("text", "must be a JSON object"),
    ({"pageVisits": {}}, "pageVisits must be an array"),
    ({"tabAggregates": "x"}, "tabAggregates must be an array"),
    ({"pageVisits": [visit()] * 600, "tabAggregates": [aggregate()] * 401}, "Too many records: 1001"),
])
def test_malformed_batches_are_400(body, words):
    with pytest.raises(B.PayloadError) as caught:
        P.parse_batch(body, NOW)
    assert caught.value.status == 400
    assert words in caught.value.message


def test_record_limit_comes_from_limits():
    with pytest.raises(B.PayloadError, match="limit is 2"):
        P.parse_batch({"pageVisits": [visit(id=str(i)) for i in range(3)]}, NOW,
                      limits=B.Limits(max_records=2))
    assert len(P.parse_batch({"pageVisits": [visit(id=str(i)) for i in range(1000)]}, NOW).visits) == 1000


# ---------------------------------------------------------------- the request body

def decode(raw: bytes, ctype="application/json", encoding=None, max_bytes=10_000, **kw):
    return B.decode_body(raw, ctype, encoding, max_bytes, **kw)


@pytest.mark.parametrize("raw, ctype, encoding, status, words", [
    (b"{}", "text/plain", None, 415, "Content-Type must be application/json"),
    (b"{}", None, None, 415, "got nothing"),
    (b"{}", "application/json", "br", 415, "Content-Encoding br is not supported"),
    (b"{not json", "application/json", None, 400, "not valid JSON"),
    (b'{"a": NaN}', "application/json", None, 400, "NaN is not allowed"),
    (b"\xff\xfe{}", "application/json", None, 400, "not valid UTF-8"),
    (b"{}", "application/json", "gzip", 400, "not valid gzip"),
    (gzip.compress(b"{}", mtime=0)[:-6], "application/json", "gzip", 400, "not valid gzip"),
    (b"[" * 129 + b"]" * 129, "application/json", None, 400, "nested 129 levels deep"),
    (b"[" * 100_000, "application/json", None, 400, "over the limit of 128"),
    (b"x" * 10_001, "application/json", None, 413, "over the limit of 10000"),
])
def test_bad_bodies_get_a_clear_status(raw, ctype, encoding, status, words):
    with pytest.raises(B.PayloadError) as caught:
        decode(raw, ctype, encoding, max_bytes=200_000 if len(raw) != 10_001 else 10_000)
    assert caught.value.status == status
    assert words in caught.value.message


def test_too_many_arrays_and_objects_is_413_before_parsing():
    raw = b"[" + b"[]," * 3000 + b"[]]"
    with pytest.raises(B.PayloadError) as caught:
        decode(raw, limits=B.Limits(max_containers=3000))
    assert caught.value.status == 413
    assert "3002 arrays and objects, over the limit of 3000" in caught.value.message
    assert len(decode(raw, limits=B.Limits(max_containers=3002))) == 3001


def test_brackets_inside_strings_do_not_count_as_nesting():
    raw = json.dumps({"pageVisits": [], "anonymousClientId": "[[[[" * 50 + '\\"{{{' * 40}).encode()
    assert decode(raw)["pageVisits"] == []
    assert decode(b"[" * 32 + b"]" * 32, max_bytes=100)  # exactly the limit is fine


def test_gzip_bodies_are_limited_after_decompression_in_bounded_memory():
    bomb = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    chunk = bytes(1 << 20)
    compressed = b"".join(bomb.compress(chunk) for _ in range(256)) + bomb.flush()  # 256 MB
    assert len(compressed) < 400_000
    with pytest.raises(B.PayloadError) as caught:
        B.gunzip_limited(compressed, 1_000_000)
    assert caught.value.status == 413
    ok = gzip.compress(b'{"pageVisits": []}')
    assert decode(ok, encoding="gzip") == {"pageVisits": []}
    assert decode(ok, encoding="GZIP", max_bytes=100, max_decompressed=18) == {"pageVisits": []}
    with pytest.raises(B.PayloadError, match="decompresses to over the limit of 17"):
        decode(ok, encoding="gzip", max_decompressed=17)


def test_multi_member_gzip_is_read_whole():
    raw = gzip.compress(b'{"pageVisits": [') + gzip.compress(b"]}")
    assert decode(raw, encoding="gzip") == {"pageVisits": []}


def test_a_gzip_stream_of_many_members_is_refused_at_once():
    """Each member copies the rest of the body: 100k tiny members took minutes (quadratic)."""
    raw = gzip.compress(b'{"pageVisits": []}') + gzip.compress(b" ") * 100_000
    started = time.monotonic()
    with pytest.raises(B.PayloadError, match="over 16 members") as caught:
        decode(raw, encoding="gzip", max_bytes=len(raw))
    assert caught.value.status == 400 and time.monotonic() - started < 2


@pytest.mark.parametrize("raw", [
    b'"' + b'\\"' * 500_000,               # one unterminated string of escaped quotes
    b'["' + b'\\"' * 500_000 + b'"' * 1000,  # ...and quotes after it
    b'"' * 1_000_001,                         # empty strings and one left open
])
def test_invalid_bodies_are_refused_in_linear_time(raw):
    """The structure check runs on every body orjson refuses; a 1 MB body of escaped
    quotes took days when the string scan was quadratic."""
    started = time.monotonic()
    with pytest.raises(B.PayloadError) as caught:
        decode(raw, max_bytes=len(raw))
    assert caught.value.status == 400 and time.monotonic() - started < 2


def test_unpaired_surrogates_become_replacement_characters():
    raw = b'{"pageVisits": [{"id": "pv_\\ud800", "url": "https://e.org/", "startedAt": %d, ' \
          b'"title": "a\\udc00b \\ud83d\\ude00"}]}' % T0
    batch = P.parse_batch(decode(raw), NOW)
    rec = batch.visits[0]
    assert rec["id"] == "pv_\ufffd"
    assert rec["title"] == "a\ufffdb \U0001F600"
    json.dumps(rec, ensure_ascii=False).encode("utf-8")  # storable


def test_numbers_too_big_for_a_float_are_errors_not_crashes():
    huge = 10 ** 400
    batch = parse_visits(visit(startedAt=huge), visit(id="pv_2", duration=huge),
                         visit(id="pv_3", engagementRate=huge), visit(id="pv_4", tabId=huge))
    assert errors_of(batch, 0)["startedAt"] == "must be a finite number"
    assert "finite" in errors_of(batch, 1)["duration"]
    assert "between 0 and 1" in errors_of(batch, 2)["engagementRate"]
    assert [v["id"] for v in batch.visits] == ["pv_4"]
    assert "must be an integer" in warnings_of(batch)["tabId"]


def test_integers_of_thousands_of_digits_are_field_errors_not_a_refused_body():
    """Python refuses to read an integer of over 4300 digits; the record's field is an
    error (like a number past a float's range), a free-form value null, the rest kept."""
    big = "9" * 5001
    raw = (b'{"pageVisits": [%s, %s, %s], "junk": -%s}' % (
        json.dumps(visit(id="ok")).encode(), json.dumps(visit(id="dur", duration="BIG")).encode(),
        json.dumps(visit(id="meta", metadata={"n": "BIG"})).encode(), big.encode())
    ).replace(b'"BIG"', big.encode())
    batch = P.parse_batch(decode(raw, max_bytes=100_000), NOW)
    assert [v["id"] for v in batch.visits] == ["ok", "meta"]
    assert errors_of(batch, 1) == {"duration": "must be a finite number"}
    assert json.loads(store.canonical(batch.visits[1]))["metadata"] == {"n": None}


# ---- found by a new user trying to break it


def test_aggregate_tab_id_too_large_rejects_only_that_record():
    good = {"tabId": 1, "startTime": T, "lastActiveTime": T + 1000, "domainDurations": {"a.com": 1000}}
    for bad_tab in (9223372036854775808, -(2**63) - 1, 10**40, 1.5, True, [1]):
        batch = P.parse_batch({"tabAggregates": [dict(good, tabId=bad_tab), good]}, NOW)
        assert [a["tab_id"] for a in batch.aggregates] == [1]
        assert batch.rejected[0]["errors"][0]["field"] == "tabId"
        assert "integer" in batch.rejected[0]["errors"][0]["message"]


def test_duration_ending_in_the_future_is_an_error():
    base = {"id": "v", "url": "https://hs.com/", "startedAt": T}
    batch = P.parse_batch({"pageVisits": [dict(base, durationSeconds=1764547200, duration=1000)]}, NOW)
    assert batch.rejected[0]["errors"][0]["field"] == "durationSeconds"
    assert "future" in batch.rejected[0]["errors"][0]["message"]
    batch = P.parse_batch({"pageVisits": [dict(base, duration=2 * 86_400_000)]}, T + 3 * 86_400_000)
    assert batch.visits and [w["field"] for w in batch.warnings] == ["duration"]


def test_active_time_over_duration_is_capped_with_a_warning():
    v = {"id": "v", "url": "https://hs.com/", "startedAt": T, "duration": 1000, "activeDuration": 99999999}
    batch = P.parse_batch({"pageVisits": [v]}, NOW)
    assert batch.visits[0]["active_ms"] == 1000
    assert batch.warnings[0]["field"] == "activeDuration"


def test_too_large_amount_says_so():
    v = {"id": "v", "url": "https://hs.com/", "startedAt": T, "duration": 1e308}
    msg = P.parse_batch({"pageVisits": [v]}, NOW).rejected[0]["errors"][0]["message"]
    assert "too large" in msg


def test_one_id_in_both_dialects_is_not_a_mix_of_the_two():
    """The later send replaces the record whole: a url from one and durations from the
    other would count time for the wrong host."""
    api = api_visit(id="dup-x", url="https://a.com/", duration_seconds=10)
    ext = visit(id="dup-x", url="https://b.com/", duration=99_000)
    rec = parse_visits(api, ext).visits[0]
    assert (rec["url"], rec["duration_ms"], rec["duration_s"], rec["dialect"]) == \
        ("https://b.com/", 99_000, None, "extension")
    assert P.merge_visit(rec, P.parse_visit(api, None, NOW)[0])["url"] == "https://a.com/"


def test_a_blank_title_is_no_title_and_a_resend_with_one_keeps_the_stored_title():
    for title in ("", "   ", "\u200b\t"):
        assert parse_visits(visit(title=title)).visits[0]["title"] is None
    first = parse_visits(visit(title="First")).visits[0]
    again = parse_visits(visit(title="", duration=90_000)).visits[0]
    assert P.merge_visit(first, again)["title"] == "First"


def test_a_tab_id_sent_as_a_whole_float_is_that_tab_on_visits_and_aggregates():
    batch = P.parse_batch({"tabAggregates": [aggregate(tabId=77.0)]}, NOW)
    assert batch.rejected == [] and batch.aggregates[0]["id"] == f"tab_{T0}_77"
    assert parse_visits(visit(tabId=77.0)).visits[0]["tab_id"] == 77
    batch = P.parse_batch({"tabAggregates": [aggregate(tabId=77.5)]}, NOW)
    assert errors_of(batch) == {"tabId": "must be an integer (at most 2^53 in size) or a string, "
                                         "got 77.5"}
