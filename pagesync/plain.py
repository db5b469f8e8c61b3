"""The fast path: the records the extension sends as usual, checked at C speed. Pure.

Nearly every record arrives with every field of its usual type, within its limits, with
nothing to report. msgspec decodes such a record straight into a typed struct
(`PlainVisit`, `PlainAggregate`), checking in C each field's type and its fixed bounds
(a time after 2000, an amount from 0 to 10^15, a rate from 0 to 1, a known category, no
field it does not know). What depends on the clock or on several fields (times at most a
day ahead, an end after its start, urls and hosts, text cleaning, free-form objects within
their limits) is checked here in Python, with the same helpers as the general path.

Any value the general path (payload.py) would report, reject, clean or treat specially
gives None here, and the general path parses the record, or the whole body, instead; so
both paths give the same records (compared on generated input, tests/test_fast_paths.py),
and the fast path never reports anything.

- `parse_body(data, now_ms)`: a body's JSON text -> its Batch. Each record is decoded
  from its own span of the text: a plain one straight into its struct, any other into a
  JSON value for the general path; a body that is not an object of record arrays and
  client fields goes to the general path whole (payload.parse_batch).
- `plain_visit(item, ...)`, `plain_aggregate(item, ...)`: one decoded record (a dict) ->
  its canonical record, or None.
"""
from __future__ import annotations

import functools
from typing import Annotated, Literal, Union

import msgspec
from msgspec import Meta

from .body import DEFAULT_LIMITS, Limits, PayloadError, decode_json
from .payload import (CATEGORIES, CATEGORY_METHODS, DAY_MS, MAX_DOMAIN, MAX_ID, MAX_TITLE,
                      MIN_TIME_MS, YEAR_MS, Batch, aggregate_id, clean_domain, clean_text,
                      is_plain_url, merged, parse_batch, parse_client, parse_records,
                      plain_and_small, strip_tracking)

# A field whose value is only read when another is absent: any JSON value but a container.
Scalar = Union[str, int, float, bool, None]
Time = Annotated[int, Meta(ge=MIN_TIME_MS)]  # the upper bound (now + a day) is checked below
Amount = Annotated[int, Meta(ge=0, le=10 ** 15)]
Fraction = Union[Annotated[int, Meta(ge=0, le=1)], Annotated[float, Meta(ge=0, le=1)]]
Int53 = Annotated[int, Meta(ge=-2 ** 53, le=2 ** 53)]
Category = Literal[tuple(sorted(CATEGORIES | {""}))]
Method = Literal[tuple(sorted(CATEGORY_METHODS | {""}))]


class PlainVisit(msgspec.Struct, rename="camel", forbid_unknown_fields=True, gc=False):
    """An extension-dialect page visit as the extension sends it."""
    id: Annotated[str, Meta(min_length=1, max_length=MAX_ID)]
    url: Annotated[str, Meta(max_length=2048)]
    visit_id: Scalar = None
    timestamp: Scalar = None
    started_at: Time | None = None
    ended_at: Time | None = None
    opened_at: Time | None = None
    last_heartbeat: Time | None = None
    title: str | None = None
    domain: str | None = None
    anonymous_client_id: str | None = None
    source_page_visit_id: str | None = None
    tab_id: Int53 | None = None
    duration: Amount | None = None
    duration_seconds: Amount | None = None
    active_duration: Amount | None = None
    engagement_rate: Fraction | None = None
    category: Category | None = None
    category_confidence: Fraction | None = None
    category_method: Method | None = None
    is_active: bool | None = None
    idle_periods: Annotated[list[dict], Meta(max_length=500)] | None = None
    metadata: dict | None = None


class PlainAggregate(msgspec.Struct, rename="camel", forbid_unknown_fields=True, gc=False):
    """An extension-dialect tab aggregate as the extension sends it."""
    tab_id: Int53
    start_time: Time
    last_active_time: Time | None = None
    closed_at: Time | None = None
    is_open: bool | None = None
    total_active_duration: Amount | None = None
    page_count: Int53 | None = None
    domain_durations: dict[str, Amount] | None = None
    current_url: str | None = None
    current_domain: str | None = None
    statistics: dict | list | None = None
    anonymous_client_id: str | None = None


class Body(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """A request body: its records still JSON text (each decoded on its own), its client
    fields any value but a container (any other body is the general path's)."""
    pageVisits: list[msgspec.Raw] | None = None
    tabAggregates: list[msgspec.Raw] | None = None
    anonymousClientId: Scalar = None
    extensionVersion: Scalar = None
    browserName: Scalar = None
    browserVersion: Scalar = None


# The fields each struct reads (its JSON names): a record with any other is not plain.
PLAIN_VISIT_FIELDS = frozenset(f.encode_name for f in msgspec.structs.fields(PlainVisit))
PLAIN_AGGREGATE_FIELDS = frozenset(f.encode_name for f in msgspec.structs.fields(PlainAggregate))
# What msgspec raises for a body or record that is not plain: not valid JSON, not of the
# struct's types, or nested past the interpreter's recursion limit (the general path
# then refuses it with the nesting limit's message)
_NOT_PLAIN = (msgspec.DecodeError, msgspec.ValidationError, RecursionError)
_BODY = msgspec.json.Decoder(Body).decode


def parse_body(data: bytes, now_ms: int, limits: Limits = DEFAULT_LIMITS) -> Batch:
    """A body's JSON text (body.json_bytes) -> its Batch, the same as the general path
    gives (payload.parse_batch of the decoded body), faster. Raises PayloadError
    (400/413) as the general path does: any body or record it refuses, any body too
    deep, is left to it whole, so its errors read the same."""
    try:
        body = _BODY(data)
    except _NOT_PLAIN:
        body = None
    if body is not None:
        visits, aggs = body.pageVisits or [], body.tabAggregates or []
        if len(visits) + len(aggs) <= limits.max_records:
            batch = Batch(client=parse_client({k: v for k in CLIENT_FIELDS
                                               if (v := getattr(body, k)) is not None}))
            try:
                deepest = parse_records(batch, visits, aggs, now_ms, limits, RAW_PATHS,
                                        lambda raw: decode_json(bytes(raw), limits, depth=False))
            except PayloadError:  # a record the general decoder refuses: the body decides
                deepest = limits.body_depth + 1
            if deepest <= limits.body_depth:
                return merged(batch)
    return parse_batch(decode_json(data, limits, depth=False), now_ms, limits=limits)


CLIENT_FIELDS = ("anonymousClientId", "extensionVersion", "browserName", "browserVersion")


def visit_of(v: PlainVisit, default_client: str | None, hi: int, limits: Limits):
    """The canonical record of a typed visit, or None where the general path would have
    something to say. `hi`: the latest time allowed (now + a day)."""
    rid, start = v.id, v.started_at
    if start is None:
        start = v.timestamp
        if type(start) is not int or start < MIN_TIME_MS:
            return None
    if start > hi or rid.strip() != rid:
        return None
    ended, opened, beat = v.ended_at, v.opened_at, v.last_heartbeat
    if (ended is not None and not start <= ended <= hi) or (opened is not None and opened > hi) \
            or (beat is not None and beat > hi):
        return None
    url = v.url
    if not is_plain_url(url):
        return None
    duration, seconds, active = v.duration, v.duration_seconds, v.active_duration
    if duration is not None and (duration > DAY_MS or start + duration > hi):
        return None  # a warning, or an error
    if seconds is not None and (seconds * 1000 > DAY_MS or start + seconds * 1000 > hi):
        return None
    if active is not None and duration is not None and active > duration:
        return None  # capped, with a warning
    title = v.title
    if title is not None:
        title = clean_text(title)
        if len(title) > MAX_TITLE:
            return None
        title = title or None
    domain = _domain(v.domain)
    if domain is False:
        return None
    idle, metadata = v.idle_periods, v.metadata
    if (idle and not plain_and_small(idle, limits)) or \
            (metadata is not None and not plain_and_small(metadata, limits)):
        return None
    client = _text(v.anonymous_client_id)
    source = v.source_page_visit_id
    return {"dialect": "extension", "id": rid, "url": strip_tracking(url), "title": title,
            "domain": domain, "client_id": client or default_client, "started_at": start,
            "ended_at": ended, "opened_at": opened, "last_heartbeat": beat, "tab_id": v.tab_id,
            "source_visit_id": (clean_text(source)[:MAX_ID] or None) if source else None,
            "duration_ms": duration, "duration_s": seconds, "active_ms": active, "active_s": None,
            "engagement_rate": v.engagement_rate, "category": v.category or None,
            "category_confidence": v.category_confidence,
            "category_method": v.category_method or None, "is_active": v.is_active,
            "idle_periods": idle, "metadata": metadata}


def aggregate_of(a: PlainAggregate, default_client: str | None, hi: int, limits: Limits):
    """The canonical record of a typed tab aggregate, or None (see visit_of)."""
    tab, start, last, closed = a.tab_id, a.start_time, a.last_active_time, a.closed_at
    if start > hi:
        return None
    for end in (last, closed):
        if end is not None and not (end <= hi and 0 <= end - start <= YEAR_MS):
            return None
    durations = a.domain_durations
    if durations is not None:
        merged: dict = {}
        for domain, ms in durations.items():
            key = _CLEAN_DOMAINS.get(domain)
            if key is None:
                key = _remember(_CLEAN_DOMAINS, domain, clean_domain(domain))
            if key:
                merged[key] = merged.get(key, 0) + ms
        durations = merged
    current = a.current_url
    if current is not None:
        if not is_plain_url(current):
            return None
        current = strip_tracking(current)
    domain, statistics = _domain(a.current_domain), a.statistics
    if domain is False or (statistics is not None and not plain_and_small(statistics, limits)):
        return None
    client = _text(a.anonymous_client_id)
    return {"dialect": "extension", "tab_id": tab, "id": aggregate_id(start, tab),
            "start_ms": start, "last_active_ms": last, "closed_at": closed,
            "is_open": False if closed is not None else a.is_open,
            "total_active_ms": a.total_active_duration, "domain_durations": durations,
            "page_count": a.page_count, "current_url": current, "current_domain": domain,
            "statistics": statistics, "page_visit_id": None, "total_time_s": None,
            "active_time_s": None, "scroll_depth": None, "client_id": client or default_client}


def fast_path(decode, of):
    """One kind's plain path: `decode` (a record as given -> its struct, or a msgspec
    error), then `of` (the struct -> its canonical record, or None)."""
    def plain(item, default_client: str | None, now_ms: int, limits: Limits = DEFAULT_LIMITS):
        try:
            struct = decode(item)
        except _NOT_PLAIN:
            return None
        return of(struct, default_client, now_ms + DAY_MS, limits)
    return plain


# Each kind's plain path for a decoded record (a dict: parse_batch's records) and for one
# still JSON text (a span of the body: parse_body's records).
plain_visit = fast_path(functools.partial(msgspec.convert, type=PlainVisit), visit_of)
plain_aggregate = fast_path(functools.partial(msgspec.convert, type=PlainAggregate), aggregate_of)
RAW_PATHS = (fast_path(msgspec.json.Decoder(PlainVisit).decode, visit_of),
             fast_path(msgspec.json.Decoder(PlainAggregate).decode, aggregate_of))


# A batch repeats a few domains and one client id: each cleaned once, remembered.
_DOMAINS: dict = {}  # raw domain -> _domain's answer
_CLEAN_DOMAINS: dict = {}  # raw domain -> clean_domain's answer
_TEXTS: dict = {}  # raw client id -> _text's answer


def _remember(cache: dict, key, value):
    if len(cache) >= 4096:
        cache.clear()
    cache[key] = value
    return value


def _domain(value):
    """parse_domain's result when it would not warn; False otherwise."""
    if value is None:
        return None
    clean = _DOMAINS.get(value)
    if clean is None:
        clean = clean_domain(value)
        clean = _remember(_DOMAINS, value, False if len(clean) > MAX_DOMAIN else (clean or None))
    return clean


def _text(value):
    """opt_str's result for a string (a client id): cleaned, cut, None when empty."""
    if not value:
        return None
    clean = _TEXTS.get(value)
    if clean is None:
        clean = _remember(_TEXTS, value, clean_text(value)[:MAX_ID] or "")
    return clean or None
