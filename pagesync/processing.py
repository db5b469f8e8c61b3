"""Processing rules: pure functions from stored records to derived figures.

Everything here takes data and returns data; `jobs.py` and `store.py` do the I/O.
A record's *contribution* is what it adds to the daily rollups: a dict
{(day, host): [visits, seconds, active_seconds, tab_seconds]}. Jobs replace a record's
previously applied contribution by its current one, so rollups stay exact whatever the
order of arrival, retries or duplicate deliveries.
"""
from __future__ import annotations

import ipaddress
import re
from datetime import datetime, timezone
from functools import lru_cache
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

from publicsuffixlist import PublicSuffixList

from .hosts import authority_host, canonical_host
from .payload import strip_tracking

FIELDS = ("visits", "seconds", "active_seconds", "tab_seconds")

# Unread: the page was opened but barely engaged with. A visit is an unread candidate
# when it got under UNREAD_ACTIVE_SECONDS of active time while staying open at least
# UNREAD_OPEN_SECONDS (a tab opened "for later"), or it was opened from another page
# (source visit / background tab) and got under UNREAD_ACTIVE_SECONDS of attention.
UNREAD_ACTIVE_SECONDS = 10
UNREAD_OPEN_SECONDS = 60

# Category rules on the host key: first match wins, `unclassified` otherwise.
# A rule matches the host itself or any subdomain of it.
CATEGORY_RULES = (
    ("work_code_review", ("github.com/pulls", "gitlab.com/merge_requests")),
    ("work_coding", ("github.com", "gitlab.com", "bitbucket.org", "stackoverflow.com",
                     "stackexchange.com", "codepen.io", "replit.com", "localhost", "127.0.0.1")),
    ("work_communication", ("mail.google.com", "outlook.office.com", "outlook.live.com",
                            "slack.com", "teams.microsoft.com", "discord.com", "zoom.us")),
    ("work_documentation", ("docs.google.com", "notion.so", "confluence.atlassian.com",
                            "readthedocs.io", "docs.python.org", "developer.mozilla.org")),
    ("learning_video", ("coursera.org", "udemy.com", "khanacademy.org", "edx.org")),
    ("learning_reading", ("arxiv.org", "medium.com", "substack.com", "dev.to")),
    ("entertainment_short_form", ("tiktok.com", "youtube.com/shorts", "instagram.com/reels")),
    ("entertainment_video", ("youtube.com", "netflix.com", "twitch.tv", "vimeo.com",
                             "disneyplus.com", "primevideo.com")),
    ("social_media", ("twitter.com", "x.com", "facebook.com", "instagram.com", "linkedin.com",
                      "reddit.com", "mastodon.social", "bsky.app", "threads.net")),
    ("news", ("bbc.co.uk", "bbc.com", "nytimes.com", "theguardian.com", "cnn.com",
              "reuters.com", "news.ycombinator.com", "news.google.com", "lemonde.fr")),
    ("shopping", ("amazon.com", "amazon.co.uk", "amazon.de", "ebay.com", "ebay.co.uk",
                  "etsy.com", "aliexpress.com")),
    ("reference", ("wikipedia.org", "wiktionary.org", "britannica.com", "imdb.com")),
    ("entertainment_browsing", ("9gag.com", "imgur.com", "buzzfeed.com")),
)


@lru_cache(maxsize=1)
def _psl() -> PublicSuffixList:
    # publicsuffixlist ships the Public Suffix List inside the package: no network.
    return PublicSuffixList()


def warm_up() -> None:
    """Load the Public Suffix List now rather than in the first job."""
    _psl()


# ---------------------------------------------------------------- urls and hosts

def normalise_url(url: str) -> str:
    """Tracking parameters gone, fragment dropped, scheme and host lowercased; the rest of
    the url stays as sent."""
    base = strip_tracking(url).split("#", 1)[0]
    scheme, sep, rest = base.partition("://")
    if not sep:
        return base
    cut = min([i for i in (rest.find("/"), rest.find("?")) if i >= 0], default=len(rest))
    netloc = rest[:cut].rsplit("@", 1)[-1].lower()
    return f"{scheme.lower()}://{netloc}{rest[cut:]}"


_AUTHORITY = re.compile(r"[^/?#]*")


@lru_cache(maxsize=65536)
def host_key(host_or_url: str | None) -> str:
    """The host as a browser reads it (hosts.py: UTS #46, punycode, IPv4/IPv6 canonical),
    lowercase, without a leading `www.`, port or trailing dot, so `https://WWW.Bücher.example:443/`
    and `https://xn--bcher-kva.example/` share one key. A host no browser would accept (from
    a record stored before urls were checked this way, or a `domain` field) has no key: ""."""
    if not host_or_url:
        return ""
    value = host_or_url.strip()
    scheme, sep, rest = value.partition("://")
    if sep:
        value = authority_host(_AUTHORITY.match(rest).group())
    else:
        value = value.rsplit("@", 1)[-1]
        if value.count(":") > 1 and not value.startswith("["):
            value = f"[{value}]"  # a bare IPv6 address
        elif not value.startswith("["):
            value = value.split(":", 1)[0]
        else:
            value = value.split("]", 1)[0] + "]"
    host = canonical_host(value)
    if not host:
        return ""
    if host.endswith("."):
        host = host[:-1]
    return host[4:] if host.startswith("www.") else host


@lru_cache(maxsize=65536)
def site_of(host: str) -> str:
    """Registrable domain (public-suffix aware): news.bbc.co.uk -> bbc.co.uk; hosts
    without one (localhost, IP addresses, bare suffixes) stay as they are."""
    if not host:
        return ""
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        pass
    if host.rpartition(".")[2].isdigit():  # not a valid IPv4 address: no registrable domain
        return host
    return _psl().privatesuffix(host) or host


@lru_cache(maxsize=65536)
def _host_rules(host: str) -> tuple:
    """The (category, path) rules whose host matches, in rule order."""
    out = []
    for category, patterns in CATEGORY_RULES:
        for pattern in patterns:
            rule_host, _, rule_path = pattern.partition("/")
            if host == rule_host or host.endswith("." + rule_host):
                out.append((category, rule_path))
    return tuple(out)


def _url_path(url: str) -> str:
    try:
        return urlsplit(url).path if url else ""
    except ValueError:
        return ""


def categorise(host: str, url: str = "") -> str:
    """Category from rules on the host (and path for a few), `unclassified` otherwise."""
    path = None
    for category, rule_path in _host_rules(host):
        if not rule_path:
            return category
        path = _url_path(url) if path is None else path
        if path.startswith("/" + rule_path) or f"/{rule_path}/" in path:
            return category
    return "unclassified"


# ---------------------------------------------------------------- visits

def round_seconds(ms) -> int:
    """Milliseconds to whole seconds, halves rounded up."""
    return int(ms // 1000 + (1 if ms % 1000 >= 500 else 0)) if ms else 0


def visit_seconds(rec: dict) -> int:
    if rec.get("duration_s") is not None:
        return int(round(rec["duration_s"]))
    return round_seconds(rec.get("duration_ms") or 0)


def visit_active_seconds(rec: dict) -> int:
    if rec.get("active_s") is not None:
        return int(round(rec["active_s"]))
    return round_seconds(rec.get("active_ms") or 0)


def engagement(rec: dict) -> float:
    """Active share of the visit's time, 0..1 (the client's rate when time is unknown)."""
    total_ms = rec.get("duration_ms") or 0
    if total_ms > 0 and rec.get("active_ms") is not None:
        return round(min(1.0, rec["active_ms"] / total_ms), 4)
    return float(rec.get("engagement_rate") or 0.0)


def is_unread(rec: dict) -> bool:
    active = visit_active_seconds(rec)
    if active >= UNREAD_ACTIVE_SECONDS:
        return False
    opened_elsewhere = bool(rec.get("source_visit_id") or rec.get("opened_at"))
    return visit_seconds(rec) >= UNREAD_OPEN_SECONDS or opened_elsewhere


@lru_cache(maxsize=64)
def _zone(name: str):
    return timezone.utc if name.upper() == "UTC" else ZoneInfo(name)


def day_of(ms: int, tz: str = "UTC") -> str:
    return datetime.fromtimestamp(ms / 1000, _zone(tz)).strftime("%Y-%m-%d")


def process_visit(rec: dict, tz: str = "UTC") -> dict:
    """Everything ProcessPageVisit derives from one stored visit."""
    host = host_key(rec["url"]) or host_key(rec.get("domain"))
    day = day_of(rec["started_at"], tz)
    seconds, active = visit_seconds(rec), visit_active_seconds(rec)
    return {
        "norm_url": normalise_url(rec["url"]),
        "host": host,
        "site": site_of(host),
        "category_final": rec.get("category") or categorise(host, rec["url"]),
        "engagement": engagement(rec),
        "unread": is_unread(rec),
        "day": day,
        "contribution": {(day, host): [1, seconds, active, 0]},
    }


# ---------------------------------------------------------------- tab aggregates

def aggregate_contribution(rec: dict, tz: str = "UTC", linked: dict | None = None) -> dict:
    """tab_seconds per (day, host). Extension dialect: domainDurations (ms -> s per entry,
    on the day of the tab's startTime). API dialect: total_time_seconds on the host and day
    of the linked visit (nothing until that visit is known)."""
    out: dict = {}
    if rec.get("domain_durations") and rec.get("start_ms") is not None:
        day = day_of(rec["start_ms"], tz)
        for domain, ms in rec["domain_durations"].items():
            key = (day, host_key(domain))
            out.setdefault(key, [0, 0, 0, 0])[3] += round_seconds(ms)
    elif rec.get("dialect") == "api" and linked is not None and rec.get("total_time_s"):
        key = (day_of(linked["started_at"], tz), host_key(linked["url"]))
        out[key] = [0, 0, 0, int(round(rec["total_time_s"]))]
    return out


def aggregate_summary(rec: dict) -> dict:
    """Per-tab figures kept beside the aggregate."""
    durations = rec.get("domain_durations") or {}
    top = max(durations.items(), key=lambda kv: kv[1])[0] if durations else None
    return {
        "tab_seconds": sum(round_seconds(ms) for ms in durations.values())
        or int(rec.get("total_time_s") or 0),
        "domains": len(durations),
        "top_host": host_key(top) if top else None,
    }


def first_visit_for_tab(agg: dict, visits: list) -> dict | None:
    """The tab's first page visit: same client and tabId, started at or after startTime."""
    if agg.get("dialect") == "api":
        return next((v for v in visits if v["id"] == agg.get("page_visit_id")), None)
    eligible = [v for v in visits
                if v.get("tab_id") == agg.get("tab_id") and v.get("client_id") == agg.get("client_id")
                and v["started_at"] >= agg["start_ms"]]
    return min(eligible, key=lambda v: (v["started_at"], v["id"]), default=None)


# ---------------------------------------------------------------- rollups

def add_contribution(total: dict, contribution: dict, sign: int = 1) -> dict:
    for key, values in contribution.items():
        row = total.setdefault(key, [0, 0, 0, 0])
        for i, v in enumerate(values):
            row[i] += sign * v
    return total


def contribution_delta(old: dict, new: dict) -> dict:
    """What to add to the rollups to replace `old` by `new` (zero rows dropped)."""
    delta = add_contribution(add_contribution({}, new), old, -1)
    return {k: v for k, v in delta.items() if any(v)}


def compute_rollups(visits_by_user: dict, aggregates_by_user: dict, tz: str = "UTC") -> dict:
    """A fresh computation of every rollup from stored records:
    {(user, day, host): [visits, seconds, active_seconds, tab_seconds]}."""
    out: dict = {}
    for user in set(visits_by_user) | set(aggregates_by_user):
        visits = visits_by_user.get(user, [])
        total: dict = {}
        for rec in visits:
            add_contribution(total, process_visit(rec, tz)["contribution"])
        for agg in aggregates_by_user.get(user, []):
            add_contribution(total, aggregate_contribution(agg, tz, first_visit_for_tab(agg, visits)))
        for (day, host), values in total.items():
            if any(values):
                out[(user, day, host)] = values
    return out


def contribution_to_json(contribution: dict) -> list:
    return [[day, host, *values] for (day, host), values in sorted(contribution.items())]


def contribution_from_json(rows) -> dict:
    return {(r[0], r[1]): list(r[2:]) for r in rows or []}
