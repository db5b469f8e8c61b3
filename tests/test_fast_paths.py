"""The parser's fast paths (orjson, C-speed checks) must give exactly what the general path
gives: each one is compared with it on generated input (Hypothesis)."""
import json
import math
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pagesync import body as B
from pagesync import hosts as H
from pagesync import payload as P
from pagesync import processing as R
from pagesync import store
from .test_payload_properties import PROPS, json_values, json_values_with_surrogates


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


url_chars = st.sampled_from(list("aZ09.-_~:/?#[]@!$&'()*+,;=% \t\x00é\u3000"))
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
                               "ü", "ß", "\u3002", "*", "%41", "%2f", "\u202e", "\x80", "a" * 20])
host_labels = st.one_of(st.lists(label_parts, max_size=4).map("".join),
                        st.integers(0, 300).map(str),
                        st.sampled_from(["a" * 62, "a" * 63, "a" * 64, "xn--bcher-kva", "com", "localhost"]))
edge_hosts = st.one_of(
    st.lists(host_labels, min_size=1, max_size=6).map(".".join),
    st.tuples(st.lists(st.sampled_from(["a" * 63, "b" * 61, "c" * 62]), min_size=3, max_size=5),
              st.sampled_from(["", "."])).map(lambda t: ".".join(t[0]) + t[1]),
    st.sampled_from(["[::1]", "[::1", "[v1.x]", "[fe80::1%25x]", "1.2.3.4", "1.2.3.256", "127.1"]))
edge_urls = st.tuples(st.sampled_from(["http://", "https://", "HTTP://", "https://u:p@"]), edge_hosts,
                      st.sampled_from(["", ".", ":80", ":9999", ":"]),
                      st.sampled_from(["", "/", "/x?q=1", "#f", "?"])).map("".join)


@settings(PROPS, max_examples=400)
@given(urls | edge_urls)
def test_the_plain_url_fast_path_agrees_with_parsing(url):
    assert P.url_problem(url) == P.parsed_url_problem(url)


@settings(PROPS, max_examples=400)
@given(edge_hosts | st.text(st.sampled_from(list("aZ09.-_%*:[]ü\u3002")), max_size=20))
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
