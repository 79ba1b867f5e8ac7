"""The SIP message parser (RFC 3261 §7, §18.3): one datagram in, a `SipRequest` or
`SipResponse` out, or a `SipParseError` carrying the status a server would answer.

It checks what RFC 3261 says MUST hold — start line, header names, mandatory and
single-valued headers, scalar ranges, Content-Length against the datagram — and validates
each structured header value with one regex from `core.sip_headers`, so accessors on a parsed
message never raise. The header section is split once; the per-header loop stays inline in
`_header_fields` because it runs for every line of every message.

It must not do I/O, decode bodies, or make application decisions (416, 420, 483 ... are the
caller's), and must raise nothing but `SipParseError` on malformed input. Import
`parse_message` from `core.sip`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

from core.sip_headers import (
    BALANCED_RE,
    CONTACT_VALUE_RE,
    DATE_RE,
    DIGITS_RE,
    LIST_HEADERS,
    MAGIC_COOKIE,
    NAME_ADDR_LIST_RE,
    NAME_ADDR_VALUE_RE,
    SIP_URI_BODY,
    TOKEN,
    TOKEN_RE,
    VIA_VALUE_RE,
    CSeq,
    SipParseError,
    Via,
    header_key,
    parse_name_addr,
    sip_uri_match,
    small_int,
    split_list,
)
from core.sip_message import MAX_DATAGRAM, HeaderList, SipRequest, SipResponse

_FOLD_RE = re.compile(r"\r\n[ \t]++")
_VERSION_RE = re.compile(r"SIP/([0-9]++)\.([0-9]++)", re.I)
_SCHEME_URI_RE = re.compile(r"([A-Za-z][A-Za-z0-9+\-.]*+):([^ \t\r\n<>\"]++)")
_STATUS_CODE_RE = re.compile(r"[0-9]{3}")
_CALL_ID_RE = re.compile(r"[^ \t]++")

# Header values validated at parse time: key -> (whole-value regex, precise-error parser).
# The regexes come from the same grammar as the accessors' parsers (core.sip_headers).


def _each_element(parse: Callable[[str], Any]) -> Callable[[str], None]:
    def check(value: str) -> None:
        for item in split_list(value, strict=True):
            parse(item)

    return check


def _check_contact(value: str) -> None:
    if value.strip(" \t") != "*":
        _each_element(parse_name_addr)(value)


def _no_detail(value: str) -> None:
    """No finer diagnosis than the regex's: the caller raises its generic message."""


_VALIDATORS: dict[str, tuple[re.Pattern[str], Callable[[str], Any]]] = {
    "via": (VIA_VALUE_RE, _each_element(Via.parse)),
    "to": (NAME_ADDR_VALUE_RE, parse_name_addr),
    "from": (NAME_ADDR_VALUE_RE, parse_name_addr),
    "contact": (CONTACT_VALUE_RE, _check_contact),
    "route": (NAME_ADDR_LIST_RE, _each_element(parse_name_addr)),
    "record-route": (NAME_ADDR_LIST_RE, _each_element(parse_name_addr)),
    "max-forwards": (DIGITS_RE, _no_detail),
    "content-length": (DIGITS_RE, _no_detail),
    "date": (DATE_RE, _no_detail),
    "call-id": (_CALL_ID_RE, _no_detail),
}
for _key in LIST_HEADERS | {"reply-to", "refer-to", "referred-by"}:
    _VALIDATORS.setdefault(_key, (BALANCED_RE, _no_detail))
del _key
_MESSAGES = {
    "call-id": "Call-ID is empty or contains whitespace",
    "date": "Date is not an RFC 1123 date in GMT",
    "max-forwards": "Max-Forwards is not a number",
    "content-length": "Content-Length is not a non-negative number",
}

_MANDATORY = frozenset({"via", "to", "from", "call-id", "cseq"})
_SINGLE = frozenset({"to", "from", "call-id", "cseq", "max-forwards", "content-length"})


def _check_version(version: str) -> None:
    if version == "SIP/2.0":
        return
    m = _VERSION_RE.fullmatch(version)
    if m is None:
        raise SipParseError(f"malformed SIP version {version[:20]!r}")
    if m.group(1) != "2" or m.group(2) != "0":
        raise SipParseError(f"unsupported SIP version {version[:20]!r}", 505)


# The common case in one match: token method, sip/sips URI without headers, SIP/2.0.
_PLAIN_REQUEST_LINE_RE = re.compile(rf"({TOKEN}) (sips?:{SIP_URI_BODY}) SIP/2\.0")


def _parse_request_line(line: str) -> tuple[str, str, str]:
    m = _PLAIN_REQUEST_LINE_RE.fullmatch(line)
    if m is not None and m.group(3) != "" and m.group(8) is None:
        return m.group(1), m.group(2), "SIP/2.0"
    parts = line.split(" ")
    if len(parts) != 3 or not all(parts):
        raise SipParseError(f"malformed request line {line[:80]!r}")
    method, uri, version = parts
    if not TOKEN_RE.fullmatch(method):
        raise SipParseError(f"method {method[:30]!r} is not a token")
    _check_version(version)
    m = _SCHEME_URI_RE.fullmatch(uri)
    if m is None:
        raise SipParseError(f"malformed Request-URI {uri[:60]!r}")
    if m.group(1).lower() in ("sip", "sips"):
        u = sip_uri_match(m.group(2))
        if u is None:
            raise SipParseError(f"malformed SIP Request-URI {uri[:60]!r}")
        if u.group(6) is not None:
            raise SipParseError("Request-URI must not contain headers ('?...')")
    return method, uri, version


def _parse_status_line(line: str) -> tuple[str, int, str]:
    version, _, rest = line.partition(" ")
    _check_version(version)
    code, _, reason = rest.partition(" ")
    if not _STATUS_CODE_RE.fullmatch(code):
        raise SipParseError(f"malformed status code {code[:20]!r}")
    status = int(code)
    if status < 100:
        raise SipParseError(f"status code {status} outside 100..699")
    if status > 699:
        raise SipParseError(f"status code {status} outside 100..699")
    return version, status, reason


# Raw header names met before (as split off at ':'), already validated:
# raw -> (name as written, lookup key, whole-value validator or None).
_HEADER_NAMES: dict[str, tuple[str, str, re.Pattern[str] | None]] = {}


def _header_name(raw: str, colon: str, line: str) -> tuple[str, str, re.Pattern[str] | None]:
    """Validate a header name not met before; remember it (the table is bounded)."""
    if not colon:
        raise SipParseError(f"header line without ':' {line[:60]!r}")
    name = raw.rstrip(" \t")
    if not TOKEN_RE.fullmatch(name):
        raise SipParseError(f"header name {name[:40]!r} is not a token")
    key = header_key(name)
    known = (name, key, _VALIDATORS[key][0] if key in _VALIDATORS else None)
    if len(_HEADER_NAMES) < 4096:
        _HEADER_NAMES[raw] = known
    return known


def _invalid_value(key: str, value: str) -> SipParseError:
    """The error for a value its validator refused, as precise as the full parser can say."""
    try:
        _VALIDATORS[key][1](value)
    except SipParseError as e:
        return e
    return SipParseError(_MESSAGES.get(key, f"malformed {key} header {value[:60]!r}"))


def parse_message(data: bytes) -> SipRequest | SipResponse:
    """Parse one datagram into a request or response. Raises SipParseError only.

    Octets after Content-Length are ignored (RFC 3261 §18.3, RFC 4475 dblreq); without a
    Content-Length the body runs to the end of the datagram.
    """
    data = bytes(data)
    head, body_start = _header_section(data)
    lines = iter(head.split("\r\n"))
    first = next(lines)
    method: str | None = None
    if first[:4].upper() == "SIP/":
        version, status, reason = _parse_status_line(first)
    else:
        method, uri, version = _parse_request_line(first)

    pairs, index = _header_fields(lines)
    cache: dict[str, Any] = {}
    msg: SipRequest | SipResponse
    if method is None:
        msg = SipResponse(status, reason, pairs, b"", version, trusted=cache)
    else:
        msg = SipRequest(method, uri, pairs, b"", version, trusted=cache)
    msg._index, msg._seen = index, 0

    cseq = cache["cseq"] = CSeq.parse(pairs[index["cseq"][0]][1])
    cache["call-id"] = pairs[index["call-id"][0]][1]
    mf_pos = index.get("max-forwards")
    cache["max-forwards"] = (
        None if mf_pos is None else small_int(pairs[mf_pos[0]][1], 255, "Max-Forwards")
    )
    if method is not None:
        if cseq.method != method:
            raise SipParseError(f"CSeq method {cseq.method[:30]!r} differs from {method[:30]!r}")
        if mf_pos is None and (msg.top_via.branch or "").startswith(MAGIC_COOKIE):  # type: ignore[union-attr]
            # RFC 2543 clients (no magic cookie, RFC 4475 inv2543) may omit it.
            raise SipParseError("missing mandatory header max-forwards")

    cl_pos = index.get("content-length")
    length = None if cl_pos is None else pairs[cl_pos[0]][1]
    msg.body, cache["content-length"] = _body(data, body_start, length)
    return msg


def _header_section(data: bytes) -> tuple[str, int]:
    """The header section as text, unfolded (CRLF + whitespace -> one SP), and the offset of
    the body. Refuses oversized datagrams, a missing empty line and bare CR or LF."""
    size = len(data)
    if size > MAX_DATAGRAM:
        raise SipParseError(f"message of {size} octets exceeds {MAX_DATAGRAM}", 413)
    start = 0
    while data.startswith(b"\r\n", start):  # RFC 3261 §7.5: ignore CRLFs before start-line
        start += 2
    end = data.find(b"\r\n\r\n", start)
    if end < 0:
        raise SipParseError("header section not terminated by an empty line")
    head = data[start:end].decode("utf-8", "surrogateescape")
    if "\r\n " in head or "\r\n\t" in head:
        head = _FOLD_RE.sub(" ", head)  # unfold: CRLF + whitespace -> one SP
    crlfs = head.count("\r\n")
    if head.count("\n") != crlfs or head.count("\r") != crlfs:
        raise SipParseError("bare CR or LF in header section")
    return head, end + 4


def _header_fields(lines: Iterator[str]) -> tuple[HeaderList, dict[str, list[int]]]:
    """The header lines after the start line: (name, value) pairs and the message's index
    (key -> line positions), each value checked by its header's validator, single-valued
    headers once, mandatory headers present. Hot: one pass, no call per line but the regex."""
    pairs = HeaderList()
    append = list.append  # HeaderList.append counts edits; a fresh list has none to count
    index: dict[str, list[int]] = {}
    names = _HEADER_NAMES
    for i, line in enumerate(lines):
        name, colon, value = line.partition(":")
        known = names.get(name)
        if known is None:
            known = _header_name(name, colon, line)
        name, key, regex = known
        value = value.strip(" \t")
        if regex is not None and regex.fullmatch(value) is None:
            raise _invalid_value(key, value)
        append(pairs, (name, value))
        pos = index.get(key)
        if pos is None:
            index[key] = [i]
        elif key in _SINGLE:
            raise SipParseError(f"{name} header appears more than once")
        else:
            pos.append(i)
    if not index.keys() >= _MANDATORY:
        missing = ", ".join(k for k in sorted(_MANDATORY) if k not in index)
        raise SipParseError(f"missing mandatory header(s) {missing}")
    return pairs, index


def _body(data: bytes, body_start: int, content_length: str | None) -> tuple[bytes, int | None]:
    """The body and its declared length: Content-Length octets (more must have arrived), or
    the rest of the datagram when there is no Content-Length."""
    if content_length is None:
        return data[body_start:], None
    length = small_int(content_length, MAX_DATAGRAM, "Content-Length")
    available = len(data) - body_start
    if length > available:
        raise SipParseError(f"Content-Length {length} exceeds the {available} octets received")
    return data[body_start : body_start + length], length
