"""Parse, validate and sanitise sync payloads (both record dialects). Pure: data in, data out.

`parse_batch` turns a decoded JSON body (see body.py) into canonical records plus a report
of rejected records and warnings. Canonical records use epoch milliseconds for every time.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from urllib.parse import urlsplit

import orjson

from .body import DEFAULT_LIMITS, MAX_META_STRING, Limits, PayloadError, check_depth, container_depth
from .hosts import authority_host, host_problem
from .hosts import show as show_host

CATEGORIES = frozenset(
    "work_coding work_code_review work_communication work_documentation learning_video "
    "learning_reading entertainment_video entertainment_browsing entertainment_short_form "
    "social_media news shopping reference unclassified".split()
)
CATEGORY_METHODS = frozenset(
    "metadata domain url title content keywords rules heuristic ml model ai manual user "
    "cache default fallback none".split()
)
TRACKING_PARAMS = frozenset({"fbclid", "gclid", "msclkid", "mc_eid", "_ga"})
FORBIDDEN_KEYS = frozenset({"__proto__", "constructor", "prototype"})

MIN_TIME_MS = 946_684_800_000  # 2000-01-01T00:00:00Z
DAY_MS = 86_400_000
YEAR_MS = 366 * DAY_MS
MAX_URL = 2048
MAX_TITLE = 500
MAX_DOMAIN = 253
MAX_ID = 256


@dataclass
class Batch:
    visits: list = field(default_factory=list)
    aggregates: list = field(default_factory=list)
    rejected: list = field(default_factory=list)
    warnings: list = field(default_factory=list)
    client: dict = field(default_factory=dict)

    @property
    def received(self) -> int:
        return len(self.visits) + len(self.aggregates) + len(self.rejected)


class RecordErrors:
    """Collects the errors and warnings of one record."""

    def __init__(self):
        self.errors: list = []
        self.warnings: list = []

    def error(self, fld: str, message: str) -> None:
        self.errors.append({"field": fld, "message": message})

    def warn(self, fld: str, message: str) -> None:
        self.warnings.append({"field": fld, "message": message})


# ---------------------------------------------------------------- batch

def parse_batch(body: object, now_ms: int, max_records: int | None = None,
                limits: Limits = DEFAULT_LIMITS) -> Batch:
    """A decoded JSON body -> Batch. Raises PayloadError(400) for a malformed request,
    and for a body nested deeper than the limit (the check body.decode_body can leave to
    this function: a plain record cannot be too deep, so only the rest is walked)."""
    max_records = limits.max_records if max_records is None else max_records
    if not isinstance(body, dict):
        check_depth(body, limits)
        raise PayloadError(400, f"Body must be a JSON object, got {json_type(body)}")
    visits = body.get("pageVisits")
    aggs = body.get("tabAggregates")
    errors = []
    for name, value in (("pageVisits", visits), ("tabAggregates", aggs)):
        if value is not None and not isinstance(value, list):
            errors.append({"field": name, "message": f"must be an array, got {json_type(value)}"})
    if errors:
        check_depth(body, limits)
        raise PayloadError(400, "; ".join(f"{e['field']} {e['message']}" for e in errors), errors)
    visits, aggs = visits or [], aggs or []
    total = len(visits) + len(aggs)
    if total > max_records:
        check_depth(body, limits)
        raise PayloadError(400, f"Too many records: {total} in one request, the limit is {max_records}")
    batch = Batch(client=parse_client(body))
    # the nesting of what is not a plain record: the body's other values, other records
    deepest = max((1 + container_depth(v) for k, v in body.items()
                   if k not in ("pageVisits", "tabAggregates")), default=1)
    deepest = max(deepest, parse_records(batch, visits, aggs, now_ms, limits))
    if deepest > limits.body_depth:
        check_depth(body, limits)  # refuses it, with the whole body's figure
    return merged(batch)


def parse_records(batch: Batch, visits: list, aggs: list, now_ms: int, limits: Limits = DEFAULT_LIMITS,
                  fast: tuple | None = None, load=None) -> int:
    """Parse each record into `batch` (kept, or rejected with its errors; warnings): by
    its kind's `fast` path (plain.py) when that takes it, else by the general path.
    `load`: a record as given -> its JSON value, for records still JSON text. Returns the
    deepest nesting of the records the general path parsed (a plain record is never
    too deep)."""
    fast = fast or (plain.plain_visit, plain.plain_aggregate)
    default_client = batch.client.get("anonymousClientId")
    deepest = 0
    for kind, items, plain_path, parser, out in (
        ("pageVisit", visits, fast[0], parse_visit, batch.visits),
        ("tabAggregate", aggs, fast[1], parse_aggregate, batch.aggregates),
    ):
        for index, item in enumerate(items):
            rec = plain_path(item, default_client, now_ms, limits)
            if rec is not None:  # the usual record: nothing to report, not too deep
                out.append(rec)
                continue
            if load is not None:
                item = load(item)
            deepest = max(deepest, 2 + container_depth(item))
            rec, report = parser(item, default_client, now_ms, limits)
            ident = record_label(item, rec)
            for w in report.warnings:
                batch.warnings.append({"type": kind, "index": index, "id": ident, **w})
            if report.errors:
                batch.rejected.append({"type": kind, "index": index, "id": ident, "errors": report.errors})
            else:
                out.append(rec)
    return deepest


def merged(batch: Batch) -> Batch:
    """The batch with each id once: the same id twice in one request is merged."""
    batch.visits = merge_duplicates(batch.visits, merge_visit)
    batch.aggregates = merge_duplicates(batch.aggregates, merge_aggregate)
    return batch


def parse_client(body: dict) -> dict:
    out = {}
    for key in ("anonymousClientId", "extensionVersion", "browserName", "browserVersion"):
        value = body.get(key)
        if isinstance(value, str) and value.strip():
            out[key] = clean_text(value)[:200]
    return out


def record_label(item: object, rec: dict | None):
    if rec is not None:
        return rec["id"]
    if isinstance(item, dict):
        for key in ("id", "visitId"):
            if isinstance(item.get(key), (str, int)) and not isinstance(item.get(key), bool):
                return str(item[key])[:MAX_ID]
        start, tab = item.get("startTime"), item.get("tabId")  # an extension aggregate
        if all(type(v) is int for v in (start, tab)):
            return aggregate_id(start, tab)
    return None


def merge_duplicates(records: list, merge) -> list:
    """The same id twice in one batch becomes one merged record (first position kept)."""
    by_id: dict = {}
    for rec in records:
        by_id[rec["id"]] = merge(by_id[rec["id"]], rec) if rec["id"] in by_id else rec
    return list(by_id.values())


# ---------------------------------------------------------------- page visits

def is_api_visit(item: dict) -> bool:
    if "startedAt" in item or "timestamp" in item or "visitId" in item:
        return False
    return "visited_at" in item or "duration_seconds" in item or "tab_id" in item


def parse_visit(item: object, default_client: str | None, now_ms: int,
                limits: Limits = DEFAULT_LIMITS):
    """One pageVisit (either dialect) -> (canonical record or None, RecordErrors)."""
    r = RecordErrors()
    if not isinstance(item, dict):
        r.error("record", f"must be an object, got {json_type(item)}")
        return None, r
    api = is_api_visit(item)
    rec = {"dialect": "api" if api else "extension"}
    rec["id"] = parse_id(item, ("id",) if api else ("id", "visitId"), r)
    rec["url"] = parse_url(item.get("url"), "url", r, required=True)
    rec["title"] = parse_title(item.get("title"), r)
    rec["domain"] = parse_domain(item.get("domain"), "domain", r)
    rec["client_id"] = opt_str(item, "anonymousClientId", r) or default_client
    if api:
        rec["started_at"] = parse_time(item.get("visited_at"), "visited_at", r, now_ms, required=True)
        rec["opened_at"] = parse_time(item.get("opened_at"), "opened_at", r, now_ms)
        rec["ended_at"] = None
        rec["last_heartbeat"] = None
        rec["tab_id"] = opt_int(item, "tab_id", r)
        rec["source_visit_id"] = opt_str(item, "source_page_visit_id", r)
        secs = parse_amount(item.get("duration_seconds"), "duration_seconds", r)
        active = parse_amount(item.get("active_duration_seconds"), "active_duration_seconds", r)
        rec["duration_s"], rec["active_s"] = secs, active
        rec["duration_ms"] = None if secs is None else secs * 1000
        rec["active_ms"] = None if active is None else active * 1000
        rec["engagement_rate"] = parse_fraction(item.get("engagement_rate"), "engagement_rate", r)
        rec["category"] = parse_category(item.get("category"), "category", r)
        rec["category_confidence"] = parse_fraction(item.get("category_confidence"), "category_confidence", r)
        rec["category_method"] = parse_method(item.get("category_method"), "category_method", r)
        rec["is_active"] = None
        rec["idle_periods"] = None
    else:
        start_key = "timestamp" if item.get("startedAt") is None and item.get("timestamp") is not None \
            else "startedAt"
        rec["started_at"] = parse_time(item.get(start_key), start_key, r, now_ms, required=True)
        rec["ended_at"] = parse_time(item.get("endedAt"), "endedAt", r, now_ms)
        rec["opened_at"] = parse_time(item.get("openedAt"), "openedAt", r, now_ms)
        rec["last_heartbeat"] = parse_time(item.get("lastHeartbeat"), "lastHeartbeat", r, now_ms)
        rec["tab_id"] = opt_int(item, "tabId", r)
        rec["source_visit_id"] = opt_str(item, "sourcePageVisitId", r)
        rec["duration_ms"] = parse_amount(item.get("duration"), "duration", r)
        rec["duration_s"] = parse_amount(item.get("durationSeconds"), "durationSeconds", r)
        rec["active_ms"] = parse_amount(item.get("activeDuration"), "activeDuration", r)
        rec["active_s"] = None
        rec["engagement_rate"] = parse_fraction(item.get("engagementRate"), "engagementRate", r)
        rec["category"] = parse_category(item.get("category"), "category", r)
        rec["category_confidence"] = parse_fraction(item.get("categoryConfidence"), "categoryConfidence", r)
        rec["category_method"] = parse_method(item.get("categoryMethod"), "categoryMethod", r)
        rec["is_active"] = opt_bool(item, "isActive", r)
        rec["idle_periods"] = parse_idle_periods(item.get("idlePeriods"), r, limits)
        if rec["ended_at"] is not None and rec["started_at"] is not None and rec["ended_at"] < rec["started_at"]:
            r.error("endedAt", "is before the visit's start")
    check_durations(rec, r, now_ms)
    rec["metadata"] = parse_metadata(item.get("metadata"), r, limits)
    return (None if r.errors else rec), r


def check_durations(rec: dict, r: RecordErrors, now_ms: int) -> None:
    """A visit cannot end more than a day in the future (a duration in the wrong unit
    looks like this); over 24 hours is a warning; active time is capped at the duration."""
    if rec["dialect"] == "api":
        spans, active_name = [("duration_seconds", rec["duration_s"], 1000)], "active_duration_seconds"
    else:
        spans = [("durationSeconds", rec["duration_s"], 1000), ("duration", rec["duration_ms"], 1)]
        active_name = "activeDuration"
    warned = False
    for fld, value, scale in spans:
        if value is None or rec["started_at"] is None:
            continue
        if rec["started_at"] + value * scale > now_ms + DAY_MS:
            unit = "seconds" if scale == 1000 else "milliseconds"
            r.error(fld, f"{value} {unit} would end the visit more than a day in the future")
            return
        if value * scale > DAY_MS and not warned:
            r.warn(fld, "is over 24 hours")
            warned = True
    total, active = rec["duration_ms"], rec["active_ms"]
    if total is not None and active is not None and active > total:
        r.warn(active_name, f"is larger than the duration ({active} > {total}); capped at the duration")
        rec["active_ms"] = total
        if rec["active_s"] is not None:
            rec["active_s"] = rec["duration_s"]


def parse_idle_periods(value, r: RecordErrors, limits: Limits = DEFAULT_LIMITS):
    if value is None:
        return None
    if not isinstance(value, list):
        r.warn("idlePeriods", f"must be an array, got {json_type(value)}; ignored")
        return None
    kept = [p for p in value[:500] if isinstance(p, dict)]
    return bounded_object(kept, "idlePeriods", r, limits) if kept else []


# ---------------------------------------------------------------- tab aggregates

def is_api_aggregate(item: dict) -> bool:
    return "tabId" not in item and "startTime" not in item


def aggregate_id(start_ms: int, tab_id) -> str:
    """Stable id of an extension aggregate, which carries none of its own."""
    return f"tab_{start_ms}_{tab_id}"


def parse_aggregate(item: object, default_client: str | None, now_ms: int,
                    limits: Limits = DEFAULT_LIMITS):
    r = RecordErrors()
    if not isinstance(item, dict):
        r.error("record", f"must be an object, got {json_type(item)}")
        return None, r
    if is_api_aggregate(item):
        rec = parse_api_aggregate(item, r, now_ms)
    else:
        rec = parse_extension_aggregate(item, r, now_ms, limits)
    rec["client_id"] = opt_str(item, "anonymousClientId", r) or default_client
    return (None if r.errors else rec), r


def parse_extension_aggregate(item: dict, r: RecordErrors, now_ms: int,
                              limits: Limits = DEFAULT_LIMITS) -> dict:
    rec = {"dialect": "extension"}
    tab = item.get("tabId")
    if tab is None or (isinstance(tab, str) and not tab.strip()):
        r.error("tabId", "is missing: an aggregate's id is derived from startTime and tabId")
        tab = None
    elif isinstance(tab, float) and is_finite(tab) and tab.is_integer() and abs(tab) <= 2**53:
        tab = int(tab)  # 77.0 is tab 77, as a visit's tabId reads it
    elif isinstance(tab, bool) or not isinstance(tab, (int, str)) or (isinstance(tab, int) and abs(tab) > 2**53):
        number = isinstance(tab, (int, float)) and not isinstance(tab, bool)
        got = show_number(tab) if number else json_type(tab)
        r.error("tabId", f"must be an integer (at most 2^53 in size) or a string, got {got}")
        tab = None
    start = parse_time(item.get("startTime"), "startTime", r, now_ms, required=True)
    rec["tab_id"] = tab if isinstance(tab, int) else (str(tab)[:64] if tab is not None else None)
    rec["id"] = aggregate_id(start, rec["tab_id"]) if start is not None and tab is not None else None
    rec["start_ms"] = start
    rec["last_active_ms"] = parse_time(item.get("lastActiveTime"), "lastActiveTime", r, now_ms)
    rec["closed_at"] = parse_time(item.get("closedAt"), "closedAt", r, now_ms)
    rec["is_open"] = opt_bool(item, "isOpen", r)
    if rec["closed_at"] is not None:
        rec["is_open"] = False  # as merging makes it: a re-send is then no change
    rec["total_active_ms"] = parse_amount(item.get("totalActiveDuration"), "totalActiveDuration", r)
    rec["domain_durations"] = parse_domain_durations(item.get("domainDurations"), r)
    rec["page_count"] = opt_int(item, "pageCount", r)
    rec["current_url"] = parse_url(item.get("currentUrl"), "currentUrl", r, required=False, lenient=True)
    rec["current_domain"] = parse_domain(item.get("currentDomain"), "currentDomain", r)
    rec["statistics"] = bounded_object(item.get("statistics"), "statistics", r, limits)
    rec["page_visit_id"] = None
    rec["total_time_s"] = rec["active_time_s"] = rec["scroll_depth"] = None
    if start is not None:
        check_span(start, rec["closed_at"], "closedAt", r)
        check_span(start, rec["last_active_ms"], "lastActiveTime", r)
    return rec


def check_span(start: int, end: int | None, fld: str, r: RecordErrors) -> None:
    if end is None:
        return
    if end < start:
        r.error(fld, "is before the tab's startTime")
    elif end - start > YEAR_MS:
        r.error(fld, "is more than a year after the tab's startTime")


def parse_api_aggregate(item: dict, r: RecordErrors, now_ms: int) -> dict:
    rec = {"dialect": "api"}
    rec["id"] = parse_id(item, ("id",), r)
    rec["page_visit_id"] = opt_str(item, "page_visit_id", r)
    rec["total_time_s"] = parse_amount(item.get("total_time_seconds"), "total_time_seconds", r)
    rec["active_time_s"] = parse_amount(item.get("active_time_seconds"), "active_time_seconds", r)
    rec["scroll_depth"] = parse_amount(item.get("scroll_depth_percent"), "scroll_depth_percent", r)
    if rec["scroll_depth"] is not None and rec["scroll_depth"] > 100:
        r.error("scroll_depth_percent", f"must be between 0 and 100, got {rec['scroll_depth']}")
    rec["closed_at"] = parse_time(item.get("closed_at"), "closed_at", r, now_ms)
    if rec["total_time_s"] is not None and rec["total_time_s"] > YEAR_MS / 1000:
        r.error("total_time_seconds", "is more than a year")
    if None not in (rec["total_time_s"], rec["active_time_s"]) and rec["active_time_s"] > rec["total_time_s"]:
        r.warn("active_time_seconds", "is larger than total_time_seconds")
    rec.update(tab_id=None, start_ms=None, last_active_ms=None,
               is_open=False if rec["closed_at"] is not None else None, total_active_ms=None,
               domain_durations=None, page_count=None, current_url=None, current_domain=None,
               statistics=None)
    return rec


def parse_domain_durations(value, r: RecordErrors):
    if value is None:
        return None
    if not isinstance(value, dict):
        r.error("domainDurations", f"must be an object of domain: milliseconds, got {json_type(value)}")
        return None
    out: dict = {}
    for domain, ms in value.items():
        amount = parse_amount(ms, f"domainDurations.{domain[:80]}", r)
        key = clean_domain(domain)
        if amount is not None and key:
            out[key] = out.get(key, 0) + amount
    return out


# ---------------------------------------------------------------- fields

def parse_id(item: dict, keys: tuple, r: RecordErrors):
    for key in keys:
        value = item.get(key)
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, int):
            value = str(value)
        if isinstance(value, str) and value.strip():
            value = value.strip()
            if len(value) > MAX_ID:
                r.error(key, f"is longer than {MAX_ID} characters")
                return None
            return value
    sent = [item.get(k) for k in keys if item.get(k) is not None]
    if not sent:
        r.error(keys[0], "is missing")
    elif all(isinstance(v, str) for v in sent):
        r.error(keys[0], "is empty")
    else:
        r.error(keys[0], f"must be a non-empty string, got {json_type(sent[0])}")
    return None


# What a browser strips from both ends of a url (the URL Standard's C0 control or space);
# other whitespace (U+3000, U+00A0) is part of the url.
C0_OR_SPACE = "".join(map(chr, range(0x21)))


def parse_url(value, fld: str, r: RecordErrors, required: bool, lenient: bool = False):
    problem = url_problem(value)
    if value is None or (isinstance(value, str) and not value.strip(C0_OR_SPACE)):
        if required:
            r.error(fld, "is missing")
        return None
    if problem:
        (r.warn if lenient else r.error)(fld, problem + ("; ignored" if lenient else ""))
        return None
    return strip_tracking(strip_credentials(value.strip(C0_OR_SPACE)))


def strip_credentials(url: str) -> str:
    """A URL without its `user:password@` part: a password never reaches storage. The
    rest stays byte for byte as sent (the scheme's case, an empty query or fragment)."""
    if "@" not in url:
        return url
    netloc = urlsplit(url).netloc
    if "@" not in netloc:
        return url
    start = url.index("//") + 2  # the netloc follows the scheme's "//", as it was sent
    return url[:start] + netloc.rpartition("@")[2] + url[start + len(netloc):]


# A plain URL: http(s), a host of ASCII letters, digits, '.', '-' and '_' (and a port below
# 10000), then only printable characters, no space. urlsplit accepts it as it is, and
# after the host nothing the general path checks can differ: no control or whitespace
# characters (so strip() leaves it alone), no backslash or '@' in its host part. The
# host's verdict is the general path's own, worked out once and remembered (a batch names
# the same few hosts again and again): for a plain host (labels of letters, digits, '-'
# and '_', none starting with `xn--`, the last one starting with a letter, so not an IPv4
# address) the regular expression settles it; punycode and numeric hosts go through the
# host parser once. The patterns are ASCII only (re.A): with re.I alone, [a-z] would also
# match the Kelvin sign and the long s, and `https?` would match "httpſ".
_URL_HEAD = re.compile(r"https?://([^:/?#]*)(?::[0-9]{1,4})?", re.I | re.A)
_PLAIN_HOST = re.compile(r"(?=[a-z0-9_.-]{1,253}\.?\Z)"
                         r"(?:(?!xn--)[a-z0-9_-]{1,63}\.)*(?!xn--)[a-z][a-z0-9_-]{0,62}\.?", re.I | re.A)
_LDH_HOST = re.compile(r"[a-z0-9_.-]{1,254}", re.I | re.A)
_HOST_VERDICTS: dict = {}
_URL_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_URL_C1_CONTROL = re.compile(r"[\x80-\x9f]")  # nor has a browser's href (it percent-encodes them)


def is_plain_url(value) -> bool:
    """An http(s) URL whose host is letters, digits, '.', '-' and '_', valid as a browser
    reads it, and nothing but printable characters (no space) after it: valid as it is
    (see above)."""
    if type(value) is not str or len(value) > MAX_URL:
        return False
    head = _URL_HEAD.match(value)
    if head is None or (head.end() < len(value) and value[head.end()] not in "/?#"):
        return False
    if " " in value or not value.isprintable():  # in the host, it would not be plain either
        return False
    host = head.group(1)
    plain = _HOST_VERDICTS.get(host)
    if plain is None:
        plain = _PLAIN_HOST.fullmatch(host) is not None or (
            _LDH_HOST.fullmatch(host) is not None and parsed_url_problem(f"http://{host}/") is None)
        if len(_HOST_VERDICTS) >= 4096:
            _HOST_VERDICTS.clear()
        _HOST_VERDICTS[host] = plain
    return plain


def url_problem(value) -> str | None:
    if is_plain_url(value):
        return None
    return parsed_url_problem(value)


def parsed_url_problem(value) -> str | None:
    """What is wrong with a URL, found by parsing it (the general path)."""
    if not isinstance(value, str):
        return f"must be a string, got {json_type(value)}"
    value = value.strip(C0_OR_SPACE)
    if len(value) > MAX_URL:
        return f"is longer than {MAX_URL} characters ({len(value)})"
    if _URL_CONTROL.search(value):
        return "contains control characters"
    try:
        parts = urlsplit(value)
        parts.port  # raises ValueError for a bad port
    except ValueError as exc:
        return f"cannot be parsed: {exc}"
    if parts.scheme.lower() not in ("http", "https"):
        return f"must be http or https, got {parts.scheme or 'no scheme'}"
    if not (parts.hostname or "").strip(".") or " " in parts.netloc:
        return "has no valid host"
    if "\\" in parts.netloc:  # browsers read it as "/": the host would not be this one
        return "has a backslash in its host part"
    host = authority_host(parts.netloc)
    problem = host_problem(host)
    if problem:
        return f"has an invalid host {show_host(host)}: {problem}"
    if _URL_C1_CONTROL.search(value):
        return "contains control characters"
    return None


def is_tracking_param(name: str) -> bool:
    name = name.lower()
    return name.startswith("utm_") or name in TRACKING_PARAMS


def may_track(query: str) -> bool:
    """Could a tracking parameter be in this text? (False: certainly none.)"""
    query = query.lower()
    return "utm_" in query or "clid" in query or "clkid" in query or "mc_eid" in query \
        or "_ga" in query


def strip_tracking(url: str) -> str:
    """Drop tracking parameters; everything else stays byte for byte as sent."""
    start = url.find("?")
    if start < 0 or not may_track(url[start:]):  # the usual url: nothing to drop
        return url
    base, hash_, fragment = url.partition("#")
    path, q, query = base.partition("?")
    if not q or not query:
        return url
    parts = query.split("&")
    kept = [p for p in parts if not is_tracking_param(p.split("=", 1)[0])]
    if len(kept) == len(parts):
        return url
    return path + ("?" + "&".join(kept) if kept else "") + hash_ + fragment


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u200b\u2028\u2029\ufeff]")


def clean_text(value: str) -> str:
    """Control, zero-width and line-separator characters dropped (tabs and newlines become
    spaces), then stripped."""
    if value.isprintable():  # none of those characters: nothing to drop
        return value.strip()
    return strip_controls(value)


def strip_controls(value: str) -> str:
    value = value.replace("\t", " ").replace("\n", " ").replace("\r", " ")
    return _CONTROL.sub("", value).strip()


def parse_title(value, r: RecordErrors):
    if value is None:
        return None
    if not isinstance(value, str):
        r.warn("title", f"must be a string, got {json_type(value)}; ignored")
        return None
    value = clean_text(value)
    if len(value) > MAX_TITLE:
        r.warn("title", f"is longer than {MAX_TITLE} characters ({len(value)}); truncated")
        value = value[:MAX_TITLE]
    return value or None  # a blank title is no title: a re-send with one keeps the stored one


def clean_domain(value: str) -> str:
    value = clean_text(value).lower()
    return value[4:] if value.startswith("www.") else value


def parse_domain(value, fld: str, r: RecordErrors):
    if value is None:
        return None
    if not isinstance(value, str):
        r.warn(fld, f"must be a string, got {json_type(value)}; ignored")
        return None
    value = clean_domain(value)
    if len(value) > MAX_DOMAIN:
        r.warn(fld, f"is longer than {MAX_DOMAIN} characters")
    return value or None


def parse_time(value, fld: str, r: RecordErrors, now_ms: int, required: bool = False):
    """Epoch milliseconds (number) or ISO 8601 string -> epoch ms, range-checked."""
    if type(value) is int and MIN_TIME_MS <= value <= now_ms + DAY_MS:
        return value
    if value is None or value == "":
        if required:
            r.error(fld, "is missing")
        return None
    if isinstance(value, bool):
        r.error(fld, "must be epoch milliseconds or an ISO 8601 string, got a boolean")
        return None
    if isinstance(value, (int, float)):
        if not is_finite(value):
            r.error(fld, "must be a finite number")
            return None
        ms = int(value)
    elif isinstance(value, str):
        ms = parse_iso(value)
        if ms is None:
            r.error(fld, f"cannot be parsed as a time: {value[:64]!r}")
            return None
    else:
        r.error(fld, f"must be epoch milliseconds or an ISO 8601 string, got {json_type(value)}")
        return None
    if ms < MIN_TIME_MS:
        hint = ""
        if isinstance(value, (int, float)) and MIN_TIME_MS / 1000 <= value <= (now_ms + DAY_MS) / 1000:
            hint = f"; {value} looks like seconds where milliseconds belong"
        r.error(fld, f"is before 2000-01-01{hint}")
        return None
    if ms > now_ms + DAY_MS:
        r.error(fld, "is more than a day in the future")
        return None
    return ms


def parse_iso(value: str) -> int | None:
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    try:
        return int(dt.timestamp() * 1000)
    except (OverflowError, OSError, ValueError):
        return None


def is_finite(value: int | float) -> bool:
    """A number usable as a float: not inf/nan, and not an integer too big for a float."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def parse_amount(value, fld: str, r: RecordErrors):
    """A non-negative number (duration, seconds, percent); None stays None."""
    if type(value) is int and 0 <= value <= 1e15:
        return value
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        r.error(fld, f"must be a number, got {json_type(value)}")
        return None
    if not is_finite(value):
        r.error(fld, "must be a finite number")
        return None
    if value > 1e15:
        r.error(fld, f"is too large ({value:.3g}; at most 1e15)")
        return None
    if value < 0:
        r.error(fld, f"must not be negative, got {value}")
        return None
    return int(value) if float(value).is_integer() else value


def parse_fraction(value, fld: str, r: RecordErrors):
    if (type(value) is float or type(value) is int) and 0 <= value <= 1:
        return value
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not is_finite(value):
        r.error(fld, f"must be a number between 0 and 1, got {json_type(value)}")
        return None
    if not 0 <= value <= 1:
        r.error(fld, f"must be between 0 and 1, got {value}")
        return None
    return value


def parse_category(value, fld: str, r: RecordErrors):
    if value is None or value == "":
        return None
    if not isinstance(value, str) or value not in CATEGORIES:
        shown = value[:64] if isinstance(value, str) else json_type(value)
        r.error(fld, f"{shown!r} is not a known category (one of: {', '.join(sorted(CATEGORIES))})")
        return None
    return value


def parse_method(value, fld: str, r: RecordErrors):
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        r.warn(fld, f"must be a string, got {json_type(value)}; ignored")
        return None
    if value not in CATEGORY_METHODS:
        r.warn(fld, f"{value[:64]!r} is not a known category method")
    return clean_text(value)[:64]


def opt_str(item: dict, key: str, r: RecordErrors, limit: int = MAX_ID):
    value = item.get(key)
    if value is None or value == "":
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        r.warn(key, f"must be a string, got {json_type(value)}; ignored")
        return None
    return clean_text(value)[:limit] or None


def opt_int(item: dict, key: str, r: RecordErrors):
    value = item.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not is_finite(value) \
            or abs(value) > 2**53 or not float(value).is_integer():
        r.warn(key, f"must be an integer (at most 2^53 in size), got {json_type(value)}; ignored")
        return None
    return int(value)


def opt_bool(item: dict, key: str, r: RecordErrors):
    value = item.get(key)
    if value is None or isinstance(value, bool):
        return value
    r.warn(key, f"must be true or false, got {json_type(value)}; ignored")
    return None


def parse_metadata(value, r: RecordErrors, limits: Limits = DEFAULT_LIMITS):
    if value is None:
        return None
    if not isinstance(value, dict):
        r.error("metadata", f"must be an object, got {json_type(value)}")
        return None
    if plain_and_small(value, limits):
        return value
    try:
        size = len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))
    except (RecursionError, ValueError):
        size = limits.max_metadata_bytes + 1
    if size > limits.max_metadata_bytes:
        r.error("metadata", f"is {size} bytes as JSON, over the limit of {limits.max_metadata_bytes}")
        return None
    if nesting_depth(value) > limits.max_depth:
        r.error("metadata", f"is nested deeper than {limits.max_depth} levels")
        return None
    return sanitise_metadata(value, limits.max_meta_string)


def bounded_object(value, fld: str, r: RecordErrors, limits: Limits):
    """A free-form object/array kept as sent (sanitised) if small and shallow, else ignored."""
    if not isinstance(value, (dict, list)):
        if value is not None:
            r.warn(fld, f"must be an object, got {json_type(value)}; ignored")
        return None
    if plain_and_small(value, limits):
        return value
    try:
        size = len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))
    except (RecursionError, ValueError):
        size = limits.max_metadata_bytes + 1
    if size > limits.max_metadata_bytes or nesting_depth(value) > limits.max_depth:
        r.warn(fld, f"is over {limits.max_metadata_bytes} bytes or {limits.max_depth} levels; ignored")
        return None
    return sanitise_metadata(value, limits.max_meta_string)


_FORBIDDEN_JSON = re.compile(b"|".join(re.escape(orjson.dumps(k)) for k in sorted(FORBIDDEN_KEYS)))


def plain_and_small(value, limits: Limits) -> bool:
    """True when a free-form object is within every limit and sanitising would not change
    it, decided from one C-speed serialisation: JSON of at most max_meta_string bytes holds
    no longer string, no more brackets than the depth limit, and no forbidden key."""
    try:
        text = orjson.dumps(value)
    except TypeError:  # an integer past 64 bits, nesting past orjson's limit: the slow path
        return False
    return (len(text) <= min(limits.max_meta_string, limits.max_metadata_bytes)
            and text.count(b"[") + text.count(b"{") <= limits.max_depth
            and not _FORBIDDEN_JSON.search(text))


def nesting_depth(value) -> int:
    """Depth of nested arrays/objects, computed without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            deepest = max(deepest, depth)
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            deepest = max(deepest, depth)
            stack.extend((v, depth + 1) for v in node)
    return deepest


def sanitise_metadata(value, cut: int = MAX_META_STRING):
    """Drop prototype-pollution keys, cut long strings (keys too). Input depth is bounded."""
    if isinstance(value, dict):
        return {str(k)[:cut]: sanitise_metadata(v, cut)
                for k, v in value.items() if k not in FORBIDDEN_KEYS}
    if isinstance(value, list):
        return [sanitise_metadata(v, cut) for v in value]
    if isinstance(value, str):
        return value[:cut]
    return value


def show_number(value) -> str:
    """A number as a message names it: its value, short."""
    text = repr(value)
    return text if len(text) <= 24 else text[:21] + "..."


def json_type(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


# ---------------------------------------------------------------- merging

VISIT_GROWING = ("duration_ms", "duration_s", "active_ms", "active_s", "last_heartbeat", "ended_at")
AGG_GROWING = ("total_active_ms", "last_active_ms", "page_count", "total_time_s", "active_time_s",
               "scroll_depth", "closed_at")


def freshness_visit(rec: dict) -> tuple:
    return (rec.get("last_heartbeat") or 0, rec.get("duration_ms") or 0, rec.get("ended_at") or 0)


def freshness_aggregate(rec: dict) -> tuple:
    return (rec.get("last_active_ms") or 0, rec.get("total_active_ms") or 0, rec.get("closed_at") or 0)


def merge_fields(old: dict, new: dict, growing: tuple, fresher_is_new: bool) -> dict:
    """Merge two sends of one record: growing fields take the max, other fields take the
    fresher send's value, and a present value is never replaced by a missing one."""
    base, other = (new, old) if fresher_is_new else (old, new)
    out = dict(base)
    for key, value in other.items():
        if out.get(key) is None:
            out[key] = value
    for key in growing:
        values = [v for v in (old.get(key), new.get(key)) if v is not None]
        out[key] = max(values) if values else None
    return out


def merge_visit(old: dict, new: dict) -> dict:
    if old.get("dialect") != new.get("dialect"):
        return new  # one id, two shapes: the later send replaces it whole, no field mixing
    return merge_fields(old, new, VISIT_GROWING, freshness_visit(new) >= freshness_visit(old))


def merge_aggregate(old: dict, new: dict) -> dict:
    if old.get("dialect") != new.get("dialect"):
        return new  # one id, two shapes: the later send replaces it whole, no field mixing
    out = merge_fields(old, new, AGG_GROWING, freshness_aggregate(new) >= freshness_aggregate(old))
    if old.get("domain_durations") or new.get("domain_durations"):
        merged = dict(old.get("domain_durations") or {})
        for domain, ms in (new.get("domain_durations") or {}).items():
            merged[domain] = max(ms, merged.get(domain, 0))
        out["domain_durations"] = merged
    if out.get("closed_at") is not None:
        out["is_open"] = False
    return out


# The fast path (plain.py) builds on the helpers above, and parse_batch tries it first for
# each record: imported last, when the helpers exist.
from . import plain  # noqa: E402
