"""Processing rules (pure): url, host, site, category, engagement, unread, contributions."""
import pytest

from pagesync import processing as R


def test_normalise_url_drops_tracking_and_fragment_lowercases_host():
    url = "HTTPS://News.BBC.co.uk:443/Path/Ä?utm_source=x&q=a|b&fbclid=1#top"
    assert R.normalise_url(url) == "https://news.bbc.co.uk:443/Path/Ä?q=a|b"


def test_host_key():
    assert R.host_key("https://www.Example.org:8080/x") == "example.org"
    assert R.host_key("WWW.YouTube.com") == "youtube.com"
    assert R.host_key("https://xn--bcher-kva.example/katalog") == "xn--bcher-kva.example"
    assert R.host_key("https://bücher.example/") == "xn--bcher-kva.example"
    assert R.host_key("http://localhost:8000/jobs") == "localhost"
    assert R.host_key("http://[::1]:8000/") == "::1"


@pytest.mark.parametrize("url, host, site", [
    ("https://WWW.Bücher.example:443/", "xn--bcher-kva.example", "xn--bcher-kva.example"),
    ("https://xn--bcher-kva.example/", "xn--bcher-kva.example", "xn--bcher-kva.example"),
    ("https://XN--BCHER-KVA.example./x", "xn--bcher-kva.example", "xn--bcher-kva.example"),
    ("https://ß.de/", "xn--zca.de", "xn--zca.de"),  # UTS #46 non-transitional, not ss.de
    ("https://a\u3002b.com/", "a.b.com", "b.com"),  # U+3002 is a dot
    ("https://news.bbc\uff0eco\uff0euk/", "news.bbc.co.uk", "bbc.co.uk"),
    ("https://%41.com/", "a.com", "a.com"),  # percent-decoded like a browser
    ("https://a_b.example.com/", "a_b.example.com", "example.com"),
    ("https://user:pw@www.Example.com:8443/a", "example.com", "example.com"),
    ("https://1.2.3.4/", "1.2.3.4", "1.2.3.4"),  # an IP host's site is the IP
    ("http://192.168.1.10:8080/", "192.168.1.10", "192.168.1.10"),
    ("http://127.1/", "127.0.0.1", "127.0.0.1"),
    ("http://[2001:DB8::1]:80/", "2001:db8::1", "2001:db8::1"),
    ("http://localhost:8000/", "localhost", "localhost"),
    ("https://example.com./", "example.com", "example.com"),
    ("https://i❤.ws/", "xn--i-7iq.ws", "xn--i-7iq.ws"),
])
def test_host_key_and_site_are_what_a_browser_reads(url, host, site):
    assert R.host_key(url) == host
    assert R.site_of(host) == site
    assert R.process_visit(visit(url=url))["host"] == host


@pytest.mark.parametrize("value", [
    "https://1.2.3.256/", "https://a..b/", "https://*.com/", "https://xn--/", "https://\u202egnp.exe/",
    "https://\u0080x.com/x", "*.com", "a..b", "1.2.3.256", "\u202egnp.exe",
])
def test_a_host_no_browser_would_accept_has_no_host_key(value):
    """Records stored before urls were checked this way, and `domain` fields, can hold one."""
    assert R.host_key(value) == ""


def test_a_visit_with_a_bad_url_host_falls_back_to_its_domain():
    assert R.process_visit(visit(url="https://a..b/", domain="www.Example.org"))["host"] == "example.org"


def test_tab_seconds_of_unicode_and_punycode_hosts_share_one_key():
    agg = {"start_ms": 1764547200000, "domain_durations": {"bücher.example": 1000,
                                                          "xn--bcher-kva.example": 2000}}
    assert R.aggregate_contribution(agg) == {("2025-12-01", "xn--bcher-kva.example"): [0, 0, 0, 3]}


def test_site_is_public_suffix_aware_and_offline():
    assert R.site_of("news.bbc.co.uk") == "bbc.co.uk"
    assert R.site_of("en.wikipedia.org") == "wikipedia.org"
    assert R.site_of("alice.github.io") == "alice.github.io"
    assert R.site_of("localhost") == "localhost"
    assert R.site_of("192.168.1.10") == "192.168.1.10"
    assert R.site_of("::1") == "::1"
    assert R.site_of("1.2.3.256") == "1.2.3.256"  # never "3.256", whatever reaches it


def test_category_rules_on_host_then_unclassified():
    assert R.categorise("github.com", "https://github.com/a/b/pull/3") == "work_coding"
    assert R.categorise("github.com", "https://github.com/pulls") == "work_code_review"
    assert R.categorise("m.youtube.com") == "entertainment_video"
    assert R.categorise("youtube.com", "https://youtube.com/shorts/x") == "entertainment_short_form"
    assert R.categorise("news.bbc.co.uk") == "news"
    assert R.categorise("unknown.example") == "unclassified"


def visit(**kw):
    base = {"id": "v", "url": "https://a.example/", "started_at": 1764547200000, "duration_ms": 100_000,
            "active_ms": 50_000, "duration_s": None, "active_s": None}
    return {**base, **kw}


def test_client_category_wins_else_rules():
    assert R.process_visit(visit(category="news"))["category_final"] == "news"
    assert R.process_visit(visit(url="https://github.com/x"))["category_final"] == "work_coding"


def test_seconds_rules():
    assert R.visit_seconds(visit(duration_s=980, duration_ms=980_299)) == 980
    assert R.visit_seconds(visit(duration_ms=1_500)) == 2  # halves round up
    assert R.visit_seconds(visit(duration_ms=1_499)) == 1
    assert R.visit_active_seconds(visit(active_ms=803_023)) == 803
    assert R.visit_active_seconds(visit(active_s=60, active_ms=60_000)) == 60


def test_engagement_and_unread():
    assert R.engagement(visit()) == 0.5
    assert R.engagement(visit(duration_ms=None, active_ms=None, engagement_rate=0.3)) == 0.3
    assert R.is_unread(visit(duration_ms=600_000, active_ms=3_000))  # open 10 min, 3 s active
    assert not R.is_unread(visit(duration_ms=600_000, active_ms=30_000))
    assert not R.is_unread(visit(duration_ms=5_000, active_ms=3_000))  # a quick look, not "for later"
    assert R.is_unread(visit(duration_ms=5_000, active_ms=1_000, source_visit_id="pv_1"))


def test_day_uses_configured_timezone():
    ms = 1764547200000 - 3600_000  # 2025-11-30T23:00Z
    assert R.day_of(ms, "UTC") == "2025-11-30"
    assert R.day_of(ms, "Europe/Paris") == "2025-12-01"


def test_aggregate_contribution_domain_durations_on_start_day():
    agg = {"dialect": "extension", "start_ms": 1764547200000, "domain_durations":
           {"www.youtube.com": 1_475_490, "youtube.com": 10, "docs.python.org": 6_969}}
    out = R.aggregate_contribution(agg)
    assert out == {("2025-12-01", "youtube.com"): [0, 0, 0, 1475],
                   ("2025-12-01", "docs.python.org"): [0, 0, 0, 7]}


def test_first_visit_for_tab():
    agg = {"dialect": "extension", "tab_id": 1, "client_id": "c", "start_ms": 100}
    vs = [{"id": "a", "tab_id": 1, "client_id": "c", "started_at": 90},
          {"id": "b", "tab_id": 1, "client_id": "c", "started_at": 150},
          {"id": "c", "tab_id": 1, "client_id": "c", "started_at": 120},
          {"id": "d", "tab_id": 2, "client_id": "c", "started_at": 110},
          {"id": "e", "tab_id": 1, "client_id": "other", "started_at": 101}]
    assert R.first_visit_for_tab(agg, vs)["id"] == "c"
    assert R.first_visit_for_tab(agg, vs[:1]) is None


def test_contribution_delta_is_a_swap():
    old = {("d", "h"): [1, 10, 5, 0]}
    new = {("d", "h"): [1, 20, 5, 0], ("d", "g"): [0, 0, 0, 3]}
    assert R.contribution_delta(old, new) == {("d", "h"): [0, 10, 0, 0], ("d", "g"): [0, 0, 0, 3]}
    assert R.contribution_delta(new, new) == {}
