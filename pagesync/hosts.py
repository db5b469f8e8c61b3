"""Hosts the way a browser reads them. Pure.

The WHATWG URL Standard's host parser for http(s) urls: a bracketed IPv6 address; else the
host is percent-decoded, mapped with UTS #46 (non-transitional, as IDNA 2008 browsers do:
`ß.de` is `xn--zca.de`, `Bücher` is `bücher`, `。` is a dot), every label that is not ASCII
is turned into punycode, and a host whose last label is a number must be an IPv4 address
(`1.2.3.256` is refused; `127.1` is 127.0.0.1). On top of what a browser checks, a host
must also be one DNS could serve: no empty label (`a..b`; one trailing dot is fine), labels
of at most 63 bytes and a host of at most 253 once punycoded, ASCII limited to letters,
digits, `-` and `_` (so `*`, `!`, `~`... are refused), and no control, invisible or
bidi-control character (refused with its code point, where UTS #46 would silently drop some).

`canonical_host(raw)` gives the ASCII host (lowercase, punycode, IPv4 dotted decimal, IPv6
compressed without brackets, a trailing dot kept) or None; `host_problem(raw)` says what is
wrong, or None. `raw` is the host as written in a url, without userinfo and port
(`authority_host` cuts it out of a netloc). Plain ASCII hosts take a regular expression;
the rest goes through the `idna` package's UTS #46 mapping table, once per distinct host
(cached).
"""
from __future__ import annotations

import ipaddress
import re
import unicodedata
from functools import lru_cache
from urllib.parse import unquote_to_bytes

import idna
from idna.core import check_bidi, valid_contextj

MAX_HOST = 253
MAX_LABEL = 63

# A host made of LDH-and-underscore labels whose last label starts with a letter (so it is
# not an IPv4 address) and none starting with `xn--` (punycode is checked the long way).
# Each label at most 63 here; the whole at most 253 is checked by is_plain. ASCII only
# (re.A): without it, [a-z] with re.I also matches the Kelvin sign and the long s, which
# browsers map to "k" and "s".
_PLAIN_HOST = re.compile(r"(?:(?!xn--)[a-z0-9_-]{1,63}\.)*(?!xn--)[a-z][a-z0-9_-]{0,62}\.?",
                         re.I | re.A)
_NOT_HOST_ASCII = re.compile(r"[\x00-\x2c\x2f\x3a-\x5e\x60\x7b-\x7f]")  # ASCII but a-z 0-9 - . _
_BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_UNICODE_DOTS = frozenset("\u3002\uff0e\uff61")  # UTS #46 maps them to "."
_JOINERS = frozenset("\u200c\u200d")  # valid in context (RFC 5892 CONTEXTJ), checked below
_DIGITS = {10: frozenset("0123456789"), 8: frozenset("01234567"),
           16: frozenset("0123456789abcdefABCDEF")}


class HostError(ValueError):
    """What is wrong with a host, in words (for a record's error message)."""


def authority_host(netloc: str) -> str:
    """The host part of a url's netloc, as written: no userinfo, no port, brackets kept."""
    hostinfo = netloc.rpartition("@")[2]
    if hostinfo.startswith("["):
        end = hostinfo.find("]")
        return hostinfo[:end + 1] if end >= 0 else hostinfo
    return hostinfo.partition(":")[0]


def is_plain(raw: str) -> bool:
    """A host the regular expression alone shows valid (and already canonical but for case)."""
    return len(raw) <= MAX_HOST and _PLAIN_HOST.fullmatch(raw) is not None


def canonical_host(raw: str) -> str | None:
    if is_plain(raw):
        return raw.lower()
    return _parse(raw)[0]


def host_problem(raw: str) -> str | None:
    if is_plain(raw):
        return None
    return _parse(raw)[1]


@lru_cache(maxsize=4096)
def _parse(raw: str) -> tuple:
    try:
        return parse_host(raw), None
    except HostError as exc:
        return None, str(exc)


def parse_host(raw: str) -> str:
    """The general path: the ASCII host a browser makes of `raw`, or HostError."""
    if not raw:
        raise HostError("it is empty")
    if raw.startswith("["):
        return _ipv6(raw)
    domain = raw
    if "%" in raw:  # browsers percent-decode a host: %41.com is a.com
        try:
            domain = unquote_to_bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            raise HostError("its percent-encoded bytes are not UTF-8") from None
    note = f"it percent-decodes to {show(domain)}, and " if domain != raw else ""
    if len(domain) > 4 * MAX_HOST:  # no mapping shrinks a host that much: too long, whatever it is
        raise HostError(f"{note}it is {len(domain)} characters long, over {MAX_HOST}")
    _check_invisible(domain, note)
    try:
        mapped = idna.uts46_remap(domain, std3_rules=False)
    except idna.IDNAError:
        raise HostError(f"{note}{_disallowed(domain)} is not allowed in a domain name "
                        "(UTS #46)") from None
    bad = _NOT_HOST_ASCII.search(mapped)
    if bad:
        raise HostError(f"{note}{_forbidden(domain, bad.group())} is not allowed in a host name "
                        "(letters, digits, '-', '_' and '.' are)")
    labels = mapped.split(".")
    trailing_dot = len(labels) > 1 and labels[-1] == ""
    if trailing_dot:
        labels.pop()
    ascii_labels, unicode_labels = [], []
    for label in labels:
        if not label:
            dots = "; U+3002 and the other full stops count as dots" \
                if any(ch in _UNICODE_DOTS for ch in domain) else ""
            raise HostError(f"{note}it has an empty label (two dots in a row, or a leading dot{dots})")
        if label.startswith("xn--"):
            ulabel = _from_punycode(label)
            ascii_labels.append(label)
        elif label.isascii():
            ulabel = label
            ascii_labels.append(label)
        else:
            ulabel = label
            ascii_labels.append("xn--" + label.encode("punycode").decode("ascii"))
        if not ulabel.isascii():
            _check_unicode_label(ulabel)
        unicode_labels.append(ulabel)
        if len(ascii_labels[-1]) > MAX_LABEL:
            raise HostError(f"{note}the label {show(label)} is {len(ascii_labels[-1])} bytes "
                            f"once punycoded, over {MAX_LABEL}")
    _check_bidi_domain(unicode_labels)
    host = ".".join(ascii_labels)
    if len(host) > MAX_HOST:
        raise HostError(f"{note}it is {len(host)} characters once punycoded, over {MAX_HOST}")
    if _ends_in_a_number(ascii_labels[-1]):
        return _ipv4(host)
    return host + "." if trailing_dot else host


def show(text: str, limit: int = 60) -> str:
    """A host for a message: quoted, invisible characters escaped, long ones cut."""
    return repr(text if len(text) <= limit else text[:limit - 3] + "...")


def _check_invisible(domain: str, note: str) -> None:
    for ch in domain:
        if ch.isascii():
            if ch < " " or ch == "\x7f":
                raise HostError(f"{note}it contains the control character U+{ord(ch):04X}")
            continue
        category = unicodedata.category(ch)
        if category == "Cc":
            raise HostError(f"{note}it contains the control character U+{ord(ch):04X}")
        if ch in _BIDI_CONTROLS:
            raise HostError(f"{note}it contains the bidi-control character U+{ord(ch):04X}")
        if category == "Cf" and ch not in _JOINERS:
            raise HostError(f"{note}it contains the invisible formatting character U+{ord(ch):04X}")
        if _ignored(ch):  # variation selectors, Hangul fillers and the like
            raise HostError(f"{note}it contains the invisible character U+{ord(ch):04X}")


def _ignored(ch: str) -> bool:
    """A character UTS #46 silently drops (a browser would read the host without it)."""
    try:
        return idna.uts46_remap(ch, std3_rules=False) == ""
    except idna.IDNAError:
        return False


def _disallowed(domain: str) -> str:
    for ch in domain:
        try:
            idna.uts46_remap(ch, std3_rules=False)
        except idna.IDNAError:
            return f"U+{ord(ch):04X}"
    return "a character"


def _forbidden(domain: str, ascii_char: str) -> str:
    """Name the character as sent: `*`, or the one that maps to it (U+FF0F maps to '/')."""
    if ascii_char in domain.lower():
        return repr(ascii_char)
    for ch in domain:
        if not ch.isascii() and ascii_char in idna.uts46_remap(ch, std3_rules=False):
            return f"U+{ord(ch):04X} (read as {ascii_char!r})"
    return repr(ascii_char)


def _from_punycode(label: str) -> str:
    """An `xn--` label's Unicode form, checked as UTS #46 checks it, and canonical."""
    if not label.isascii():
        raise HostError(f"the label {show(label)} starts with 'xn--' but is not ASCII")
    try:
        ulabel = label[4:].encode("ascii").decode("punycode")
    except UnicodeError:
        ulabel = None
    if not ulabel or ulabel.isascii() or ulabel.encode("punycode").decode("ascii") != label[4:]:
        raise HostError(f"the label {show(label)} is not valid punycode")
    try:
        remapped = idna.uts46_remap(ulabel, std3_rules=False)
    except idna.IDNAError:
        remapped = None
    if remapped != ulabel or "." in ulabel or not unicodedata.is_normalized("NFC", ulabel) \
            or _NOT_HOST_ASCII.search(ulabel):
        raise HostError(f"the label {show(label)} is punycode for {show(ulabel)}, "
                        "which is not a valid label")
    try:
        _check_invisible(ulabel, "")
    except HostError as exc:
        raise HostError(f"the label {show(label)} is punycode for {show(ulabel)}: {exc}") from None
    return ulabel


def _check_unicode_label(ulabel: str) -> None:
    if ulabel.startswith("xn--"):
        raise HostError(f"the label {show(ulabel)} starts with 'xn--' but is not ASCII")
    if unicodedata.category(ulabel[0]).startswith("M"):
        raise HostError(f"the label {show(ulabel)} starts with a combining mark")
    for pos, ch in enumerate(ulabel):
        if ch in _JOINERS:
            try:
                ok = valid_contextj(ulabel, pos)
            except ValueError:
                ok = False
            if not ok:
                raise HostError(f"the label {show(ulabel)} has the joiner U+{ord(ch):04X} "
                                "where RFC 5892 does not allow it")


def _check_bidi_domain(labels: list) -> None:
    """UTS #46 CheckBidi: in a domain with a right-to-left label, every label follows
    RFC 5893's rules (no mixing that would display the host in a misleading order)."""
    if all(label.isascii() for label in labels):
        return
    rtl = any(unicodedata.bidirectional(ch) in ("R", "AL", "AN")
              for label in labels for ch in label if not ch.isascii())
    if not rtl:
        return
    for label in labels:
        try:
            check_bidi(label, check_ltr=True)
        except idna.IDNAError:
            raise HostError(f"the label {show(label)} breaks the bidi rule for domain names with "
                            "right-to-left text (RFC 5893)") from None


def _ends_in_a_number(label: str) -> bool:
    if label.isdigit() and label.isascii():
        return True
    return label[:2] in ("0x", "0X") and all(c in _DIGITS[16] for c in label[2:])


def _ipv4(host: str) -> str:
    """The WHATWG IPv4 parser: 1-4 parts, each decimal, 0x-hex or 0-octal."""
    parts = host.split(".")
    if len(parts) > 1 and parts[-1] == "":
        parts.pop()
    problem = HostError("it ends in a number, so it must be an IPv4 address, and it is not one "
                        "(at most 4 parts, each 0-255)")
    if len(parts) > 4:
        raise problem
    numbers = [_ipv4_number(part) for part in parts]
    if None in numbers or any(n > 255 for n in numbers[:-1]) or numbers[-1] >= 256 ** (5 - len(numbers)):
        raise problem
    value = numbers[-1] + sum(n * 256 ** (3 - i) for i, n in enumerate(numbers[:-1]))
    return str(ipaddress.IPv4Address(value))


def _ipv4_number(part: str) -> int | None:
    radix = 10
    if part[:2] in ("0x", "0X"):
        part, radix = part[2:], 16
    elif len(part) > 1 and part[0] == "0":
        part, radix = part[1:], 8
    elif not part:
        return None
    if not part:
        return 0
    if not all(c in _DIGITS[radix] for c in part):
        return None
    return int(part, radix)


def _ipv6(raw: str) -> str:
    inner = raw[1:-1] if raw.endswith("]") else None
    if not inner or "%" in inner:  # no zone ids in urls, as in browsers
        raise HostError(f"{show(raw)} is not a valid IPv6 address")
    try:
        return ipaddress.IPv6Address(inner).compressed
    except ValueError:
        raise HostError(f"{show(raw)} is not a valid IPv6 address") from None
