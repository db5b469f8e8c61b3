"""Request bodies: bytes -> JSON value, within limits; pure.

`decode_body` turns raw request bytes into a JSON value (or a PayloadError with the HTTP
status to answer).
"""
from __future__ import annotations

import json
import re
import zlib
from dataclasses import dataclass
from itertools import accumulate

import orjson

MAX_METADATA_BYTES = 50 * 1024
MAX_META_STRING = 2000
MAX_DEPTH = 32
MAX_CONTAINERS = 200_000


@dataclass(frozen=True)
class Limits:
    """The configurable limits of one request (Settings carries the deployment's values)."""
    max_records: int = 1000
    max_depth: int = MAX_DEPTH
    max_containers: int = MAX_CONTAINERS
    max_metadata_bytes: int = MAX_METADATA_BYTES
    max_meta_string: int = MAX_META_STRING

    @property
    def body_depth(self) -> int:
        """Nesting allowed for the body as a whole: room for records whose free-form
        objects (metadata, statistics) are over `max_depth`, so only those records are
        rejected and the rest of the batch is kept; past it the request is refused."""
        return self.max_depth * 4


DEFAULT_LIMITS = Limits()


class PayloadError(Exception):
    """The whole request is refused: `status` is the HTTP status to answer."""

    def __init__(self, status: int, message: str, errors: list | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = errors or []


def decode_body(raw: bytes, content_type: str | None, content_encoding: str | None,
                max_bytes: int, limits: Limits = DEFAULT_LIMITS,
                max_decompressed: int | None = None, depth: bool = True) -> object:
    """Bytes of a request body -> JSON value. Raises PayloadError (400/413/415).
    `max_bytes` bounds the body as sent, `max_decompressed` (default: the same) after gzip.
    `depth` False: the caller checks the value's nesting itself (payload.parse_batch does,
    sparing the records it finds plain)."""
    data = json_bytes(raw, content_type, content_encoding, max_bytes, limits, max_decompressed)
    return decode_json(data, limits, depth)


def json_bytes(raw: bytes, content_type: str | None, content_encoding: str | None,
               max_bytes: int, limits: Limits = DEFAULT_LIMITS,
               max_decompressed: int | None = None) -> bytes:
    """The JSON text of a request body (gzip undone), within the size and container
    limits, not yet parsed. Raises PayloadError (413/415)."""
    mime = (content_type or "").split(";")[0].strip().lower()
    if mime != "application/json" and not mime.endswith("+json"):
        raise PayloadError(415, f"Content-Type must be application/json, got {mime[:80] or 'nothing'}")
    if len(raw) > max_bytes:
        raise PayloadError(413, f"Body is {len(raw)} bytes, over the limit of {max_bytes}")
    encoding = (content_encoding or "identity").strip().lower()
    if encoding == "gzip":
        raw = gunzip_limited(raw, max_bytes if max_decompressed is None else max_decompressed)
    elif encoding not in ("identity", ""):
        raise PayloadError(415, f"Content-Encoding {encoding[:40]} is not supported (use gzip or none)")
    check_containers(raw, limits)
    return raw


def decode_json(data: bytes, limits: Limits = DEFAULT_LIMITS, depth: bool = True) -> object:
    """JSON text (from json_bytes) -> JSON value. Raises PayloadError (400/413)."""
    value = fast_loads(data)
    if value is _SLOW:
        return careful_loads(data, limits)
    if depth:
        check_depth(value, limits)
    return value


def check_depth(value, limits: Limits = DEFAULT_LIMITS) -> None:
    """Refuse (400) a decoded body nested deeper than the limit."""
    depth = container_depth(value)
    if depth > limits.body_depth:
        raise PayloadError(400, f"Body is nested {depth} levels deep, over the limit of "
                                f"{limits.body_depth}")


_SLOW = object()
_DIGITS_ONLY = bytes(48 if 48 <= b <= 57 else 32 for b in range(256))  # digit -> "0", else " "
_LONG_NUMBER = b"0" * 19


def has_long_number(raw: bytes) -> bool:
    """A run of 19+ digits anywhere (C-speed translate and substring search)."""
    return _LONG_NUMBER in raw.translate(_DIGITS_ONLY)


def fast_loads(raw: bytes):
    """orjson's parse of the usual body, or _SLOW when the standard library must decide:
    any parse error (its messages are the ones clients see), unpaired surrogates, and
    integers of 19+ digits (orjson turns those past 64 bits into floats)."""
    if has_long_number(raw):
        return _SLOW
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return _SLOW


def stored_loads(raw: bytes):
    """A stored record's JSON (always valid) -> its value: orjson unless an integer of 19+
    digits is in it (past 64 bits orjson would make it a float), then the standard library."""
    value = fast_loads(raw)
    return json.loads(raw) if value is _SLOW else value


def careful_loads(raw: bytes, limits: Limits) -> object:
    """The standard library's parse, after the exact structure check: the path of every
    body orjson refused, so errors and edge cases read the same whatever the parser."""
    check_structure(raw, limits)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PayloadError(400, f"Body is not valid UTF-8: {exc.reason} at byte {exc.start}")
    try:
        value = json.loads(text, parse_constant=_reject_constant, parse_int=_parse_int)
    except RecursionError:
        raise PayloadError(400, "Body is not valid JSON: nested too deeply")
    except ValueError as exc:
        raise PayloadError(400, f"Body is not valid JSON: {exc}")
    return scrub_surrogates(value) if _SURROGATE_ESCAPE.search(raw) else value


def container_depth(value) -> int:
    """Depth of nested arrays/objects (0 for a scalar), level by level without recursion."""
    level = [value] if type(value) in (dict, list) else []
    depth = 0
    while level:
        depth += 1
        level = [v for node in level for v in (node.values() if type(node) is dict else node)
                 if type(v) is dict or type(v) is list]
    return depth


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def scrub_surrogates(value):
    """Replace unpaired UTF-16 surrogates (legal as JSON escapes, not storable as UTF-8)
    with U+FFFD, in keys and values."""
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value)
    if isinstance(value, list):
        return [scrub_surrogates(v) for v in value]
    if isinstance(value, dict):
        return {scrub_surrogates(k): scrub_surrogates(v) for k, v in value.items()}
    return value


# A string, or an unterminated one up to the end of the text: possessive quantifiers and
# the end-of-text branch keep the scan linear (a body of `\"` pairs with no closing quote
# would otherwise be rescanned from each quote: quadratic).
_JSON_STRING = re.compile(rb'"[^"\\]*+(?:\\.[^"\\]*+)*+(?:"|\\?\Z)', re.S)
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")
_STEP = [0] * 256
_STEP[ord("[")] = _STEP[ord("{")] = 1
_STEP[ord("]")] = _STEP[ord("}")] = -1


def json_skeleton(raw: bytes) -> bytes:
    """Only the brackets of a JSON text, strings cut out first (all C-speed steps)."""
    return _JSON_STRING.sub(b"", raw).translate(None, _NOT_BRACKET)


def skeleton_depth(skeleton: bytes) -> int:
    return max(accumulate(map(_STEP.__getitem__, skeleton)), default=0)


def check_containers(raw: bytes, limits: Limits) -> None:
    """The container limit before any parse. Counting brackets is a C-speed upper bound
    (brackets inside strings count too), in one pass (what deleting them takes away); the
    exact count runs only when that is over."""
    if len(raw) - len(raw.translate(None, b"[{")) > limits.max_containers:
        check_structure(raw, limits)


def check_structure(raw: bytes, limits: Limits) -> None:
    """Refuse a body too deep (400) or with too many arrays/objects (413) before json.loads
    spends time and memory on it."""
    skeleton = json_skeleton(raw)
    containers = skeleton.count(b"[") + skeleton.count(b"{")
    if containers > limits.max_containers:
        raise PayloadError(413, f"Body holds {containers} arrays and objects, over the limit of "
                                f"{limits.max_containers}")
    depth = skeleton_depth(skeleton)
    if depth > limits.body_depth:
        raise PayloadError(400, f"Body is nested {depth} levels deep, over the limit of "
                                f"{limits.body_depth}")


MAX_INT_DIGITS = 4000  # Python refuses to read an integer of over 4300 digits


def _parse_int(text: str):
    """An integer; one of more than MAX_INT_DIGITS digits is too large for any field, like
    a number past a float's range: infinity (a record error in a record's field, null in
    a free-form object), not an error of the whole body."""
    if len(text) <= MAX_INT_DIGITS:
        return int(text)
    return float("-inf") if text.startswith("-") else float("inf")


def _reject_constant(name: str):
    raise ValueError(f"{name} is not allowed in JSON")


MAX_GZIP_MEMBERS = 16  # each member copies the rest of the body: bounded, so linear


def gunzip_limited(raw: bytes, max_bytes: int) -> bytes:
    """Decompress gzip (every member of a multi-member stream, up to MAX_GZIP_MEMBERS),
    refusing (413) as soon as the output passes max_bytes: memory stays bounded by the
    limit, whatever the ratio."""
    out = bytearray()
    for _ in range(MAX_GZIP_MEMBERS):
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            out += d.decompress(raw, max_bytes + 1 - len(out))
            if len(out) > max_bytes or d.unconsumed_tail:
                raise PayloadError(413, f"Body decompresses to over the limit of {max_bytes} bytes")
            out += d.flush()
        except zlib.error as exc:
            raise PayloadError(400, f"Body is not valid gzip: {exc}")
        if not d.eof:
            raise PayloadError(400, "Body is not valid gzip: truncated stream")
        if len(out) > max_bytes:
            raise PayloadError(413, f"Body decompresses to over the limit of {max_bytes} bytes")
        raw = d.unused_data
        if not raw.strip(b"\0"):
            return bytes(out)
    raise PayloadError(400, f"Body is a gzip stream of over {MAX_GZIP_MEMBERS} members")
