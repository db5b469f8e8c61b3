"""Hosts as a browser reads them (pagesync/hosts.py, pure): what is a host, and its ASCII form."""
import pytest

from pagesync import hosts as H
from pagesync import processing as R


@pytest.mark.parametrize("raw, ascii_host", [
    ("example.com", "example.com"),
    ("WWW.Example.COM", "www.example.com"),
    ("a_b.example.com", "a_b.example.com"),  # underscores: browsers accept them
    ("-a-.blogspot.com", "-a-.blogspot.com"),  # so do hyphens at a label's ends (no CheckHyphens)
    ("localhost", "localhost"),
    ("example.com.", "example.com."),  # one trailing dot: the root
    ("bücher.example", "xn--bcher-kva.example"),
    ("XN--BCHER-KVA.example", "xn--bcher-kva.example"),
    ("Bücher.example", "xn--bcher-kva.example"),  # UTS #46 maps case
    ("ß.de", "xn--zca.de"),  # non-transitional (IDNA 2008), not "ss.de"
    ("a\u3002b.com", "a.b.com"),  # ideographic full stop is a dot
    ("a\uff0eb\uff61com", "a.b.com"),  # fullwidth and halfwidth full stops too
    ("ｅｘａｍｐｌｅ.com", "example.com"),  # fullwidth letters are mapped
    ("i❤.ws", "xn--i-7iq.ws"),  # UTS #46 allows symbols IDNA 2008 alone would not
    ("xn--i-7iq.ws", "xn--i-7iq.ws"),
    ("مثال.إختبار", "xn--mgbh0fb.xn--kgbechtv"),  # right-to-left, bidi rule met
    ("%41.com", "a.com"),  # browsers percent-decode a host
    ("%C3%BC.example", "xn--tda.example"),
    ("1.2.3.4", "1.2.3.4"),
    ("1.2.3.4.", "1.2.3.4"),
    ("127.1", "127.0.0.1"),  # the WHATWG IPv4 forms
    ("0x7f.0.0.1", "127.0.0.1"),
    ("0177.0.0.1", "127.0.0.1"),
    ("2130706433", "127.0.0.1"),
    ("[::1]", "::1"),
    ("[2001:DB8:0:0:0:0:0:1]", "2001:db8::1"),
    ("[::ffff:1.2.3.4]", "::ffff:102:304"),
    ("a" * 63 + ".com", "a" * 63 + ".com"),
    (".".join(["a" * 63] * 3) + "." + "b" * 61, ".".join(["a" * 63] * 3) + "." + "b" * 61),  # 253
])
def test_hosts_a_browser_accepts_and_their_ascii_form(raw, ascii_host):
    assert H.host_problem(raw) is None
    assert H.canonical_host(raw) == ascii_host
    again = f"[{ascii_host}]" if ":" in ascii_host else ascii_host  # IPv6 comes without brackets
    assert H.canonical_host(again) == ascii_host  # the ASCII form is a fixed point


@pytest.mark.parametrize("raw, problem", [
    ("", "it is empty"),
    ("\u0080x.com", "it contains the control character U+0080"),
    ("a\x01b.com", "it contains the control character U+0001"),
    ("\u202egnp.exe", "it contains the bidi-control character U+202E"),
    ("a\u200fb.com", "it contains the bidi-control character U+200F"),
    ("\U000e0001.com", "it contains the invisible formatting character U+E0001"),
    ("a\u00adb.com", "it contains the invisible formatting character U+00AD"),
    ("a\u200bb.com", "it contains the invisible formatting character U+200B"),
    ("a\ufe0fb.com", "it contains the invisible character U+FE0F"),  # UTS #46 would drop it
    ("a\u3164b.com", "it contains the invisible character U+3164"),
    ("a" * 1100, "it is 1100 characters long, over 253"),
    ("xn--", "the label 'xn--' is not valid punycode"),
    ("xn--.com", "the label 'xn--' is not valid punycode"),
    ("xn--abc-.com", "is not valid punycode"),  # decodes to ASCII only
    ("xn---bbk.com", "the label 'xn---bbk' is not valid punycode"),  # not the canonical spelling
    ("xn--ab.com", "which is not a valid label"),  # decodes to C1 controls
    ("xn--ü.com", "starts with 'xn--' but is not ASCII"),
    ("a..b", "it has an empty label (two dots in a row, or a leading dot)"),
    (".a.com", "it has an empty label"),
    ("a.com..", "it has an empty label"),
    ("a.\u3002b.com", "it has an empty label (two dots in a row, or a leading dot; U+3002"),
    ("*.com", "'*' is not allowed in a host name (letters, digits, '-', '_' and '.' are)"),
    ("a!b.com", "'!' is not allowed in a host name"),
    ("a\uff0fb.com", "U+FF0F (read as '/') is not allowed in a host name"),
    ("a\u3000b.com", "U+3000 (read as ' ') is not allowed in a host name"),
    ("%2A.com", "it percent-decodes to '*.com', and '*' is not allowed in a host name"),
    ("%2F.com", "it percent-decodes to '/.com', and '/' is not allowed in a host name"),
    ("a%00b.com", "it percent-decodes to 'a\\x00b.com', and it contains the control character U+0000"),
    ("%E2%80%AEgnp.exe", "it contains the bidi-control character U+202E"),
    ("%FF.com", "its percent-encoded bytes are not UTF-8"),
    ("%zz.com", "'%' is not allowed in a host name"),
    ("a\ufffdb.com", "U+FFFD is not allowed in a domain name (UTS #46)"),
    ("\u0301a.com", "starts with a combining mark"),
    ("a\u200db.com", "has the joiner U+200D where RFC 5892 does not allow it"),
    ("1a.مثال", "the label '1a' breaks the bidi rule"),
    ("a" * 64 + ".com", "is 64 bytes once punycoded, over 63"),
    ("ü" + "a" * 70 + ".com", "is 78 bytes once punycoded, over 63"),
    (".".join(["a" * 63] * 3) + "." + "b" * 62, "it is 254 characters once punycoded, over 253"),
    ("1.2.3.256", "it ends in a number, so it must be an IPv4 address, and it is not one"),
    ("1.2.3.4.5", "must be an IPv4 address"),
    ("256.1.1.1", "must be an IPv4 address"),
    ("example.123", "must be an IPv4 address"),
    ("1.2.3.09", "must be an IPv4 address"),  # 09 is octal, and 9 is not an octal digit
    ("a.0x1z", None),  # does not end in a number: a name
    ("[::1", "'[::1' is not a valid IPv6 address"),
    ("[::g]", "is not a valid IPv6 address"),
    ("[fe80::1%25eth0]", "is not a valid IPv6 address"),  # no zone ids in urls
    ("[v1.fe80::a]", "is not a valid IPv6 address"),
])
def test_hosts_a_browser_or_dns_refuses_say_why(raw, problem):
    got = H.host_problem(raw)
    if problem is None:
        assert got is None
    else:
        assert got is not None and problem in got, got
        assert H.canonical_host(raw) is None


def test_authority_host_cuts_userinfo_and_port():
    assert H.authority_host("user:pw@Example.com:8080") == "Example.com"
    assert H.authority_host("a@b@c.com") == "c.com"
    assert H.authority_host("[::1]:80") == "[::1]"
    assert H.authority_host("[::1") == "[::1"
    assert H.authority_host("") == ""


def test_show_escapes_invisible_characters_and_cuts_long_hosts():
    assert H.show("\u202egnp.exe") == "'\\u202egnp.exe'"
    assert H.show("a" * 100) == repr("a" * 57 + "...")


@pytest.mark.parametrize("host,key", [("\u017f.com", "s.com"), ("\u212a.com", "k.com"),
                                      ("a\u017f.example", "as.example")])
def test_letters_that_fold_to_ascii_are_mapped_as_browsers_map_them(host, key):
    """The long s and the Kelvin sign match [a-z] case-insensitively in a Unicode regular
    expression; browsers map them (UTS #46) to "s" and "k"."""
    assert H.canonical_host(host) == key
    assert R.host_key(f"https://{host}/x") == key
