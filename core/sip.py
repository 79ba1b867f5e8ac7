"""SIP messages (RFC 3261): parse datagrams into request/response objects and serialise them back.

This is the sans-IO message layer the transaction core and the proxy are built on. It turns bytes
into `SipRequest`/`SipResponse` and back, checks what RFC 3261 says MUST hold (start line,
mandatory and single-valued headers, scalar ranges, Content-Length against the datagram), and
gives cheap access to the few headers a proxy touches (Via, From/To tags, Call-ID, CSeq,
Max-Forwards, Route). The header section is split once and structured headers are validated
with one regex each; Via/name-addr/URI objects are built only when asked for and cached until
the header list changes. The value grammar lives in `core.sip_headers`; import it from here.

It must not do I/O, decode bodies, or make application decisions (416, 420, 483 ... are the
caller's): malformed input raises `SipParseError` carrying the status a server would answer,
and nothing else.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

from core.sip_headers import (
    BALANCED_RE,
    CONTACT_VALUE_RE,
    DATE_RE,
    DIGITS_RE,
    HEADER_KEYS,
    LIST_HEADERS,
    MAGIC_COOKIE,
    NAME_ADDR_LIST_RE,
    NAME_ADDR_VALUE_RE,
    SIP_URI_BODY,
    TOKEN,
    TOKEN_RE,
    VIA_VALUE_RE,
    CSeq,
    NameAddr,
    SipParseError,
    Uri,
    Via,
    header_key,
    list_spans,
    parse_name_addr,
    parse_uri,
    sip_uri_match,
    small_int,
    split_list,
)

__all__ = [
    "CSeq",
    "HeaderList",
    "NameAddr",
    "REASON_PHRASES",
    "SipMessage",
    "SipParseError",
    "SipRequest",
    "SipResponse",
    "Uri",
    "Via",
    "make_response",
    "parse_message",
    "parse_name_addr",
    "parse_uri",
]

MAX_DATAGRAM = 65535

# ---------------------------------------------------------------------------- header list


class HeaderList(list):
    """A list of (name, value) pairs that counts its mutations, so a message can cache parsed
    header values and still notice when someone edits `headers` directly."""

    version = 0  # bumped on every mutation (instance attribute from then on)


def _counting(name: str) -> Callable[..., Any]:
    base = getattr(list, name)

    def method(self: HeaderList, *args: Any, **kwargs: Any) -> Any:
        self.version += 1
        return base(self, *args, **kwargs)

    method.__name__ = name
    return method


for _name in (
    "__setitem__", "__delitem__", "__iadd__", "__imul__", "append", "extend", "insert",
    "pop", "remove", "clear", "sort", "reverse",
):  # fmt: skip
    setattr(HeaderList, _name, _counting(_name))
del _name


# Header names already checked to be tokens (a bounded memo: names repeat, values do not).
_TOKEN_NAMES: set[str] = set()


def _check_name(name: str) -> None:
    if name in _TOKEN_NAMES:
        return
    if not TOKEN_RE.fullmatch(name):
        raise ValueError(f"header name {name!r} is not a token")
    if len(_TOKEN_NAMES) < 4096:
        _TOKEN_NAMES.add(name)


# Header name sequence -> its index (key -> line positions). Messages of one flow repeat a
# few sequences, so most index builds are one lookup. Indexes are shared, never mutated.
_INDEXES: dict[tuple[str, ...], dict[str, list[int]]] = {}
_NONE: list[int] = []  # the positions of an absent header (shared: never mutated)


def _index_of(headers: list[tuple[str, str]]) -> dict[str, list[int]]:
    names = tuple([line[0] for line in headers])
    index = _INDEXES.get(names)
    if index is None:
        index = {}
        keys = HEADER_KEYS
        for i, name in enumerate(names):
            k = keys.get(name) or header_key(name)
            pos = index.get(k)
            if pos is None:
                index[k] = [i]
            else:
                pos.append(i)
        if len(_INDEXES) < 4096:
            _INDEXES[names] = index
    return index


def _check_header(name: str, value: str) -> None:
    """Refuse edits that would corrupt the serialised message (header injection)."""
    if name not in _TOKEN_NAMES:
        _check_name(name)
    if "\r" in value or "\n" in value:
        raise ValueError(f"value of header {name} contains CR or LF")


def _check_headers(headers: Iterable[tuple[str, str]]) -> None:
    """`_check_header` on every line (names met before cost one set lookup)."""
    names = _TOKEN_NAMES
    for name, value in headers:
        if name not in names:
            _check_name(name)
        if "\r" in value or "\n" in value:
            raise ValueError(f"value of header {name} contains CR or LF")


_MISSING = object()


# ---------------------------------------------------------------------------- messages


class SipMessage:
    """What requests and responses share: an ordered header list and a body.

    `headers` holds (name as written, value with folding collapsed and ends stripped).
    Accessors look names up case-insensitively with compact forms expanded. A message built
    by hand is checked only so far as it serialises to what it says (token names, no CR/LF in
    values); only `parse_message` checks the RFC 3261 MUSTs.
    """

    # _index: header key -> line positions, valid while _seen == headers.version.
    # _cache: parsed values by header key, valid while _cache_seen == headers.version; the
    # message's own edits keep it (dropping only the edited header's entries), edits made
    # directly on `headers` drop it all.
    __slots__ = ("_headers", "body", "_index", "_seen", "_cache", "_cache_seen")

    def __init__(self, headers: Iterable[tuple[str, str]], body: bytes = b"") -> None:
        self._headers = HeaderList([(name, value) for name, value in headers])
        _check_headers(self._headers)
        self.body = bytes(body)
        self._index: dict[str, list[int]] = {}
        self._seen = -1
        self._cache: dict[str, Any] = {}
        self._cache_seen = -1

    # -- header list, index and cache

    @property
    def headers(self) -> HeaderList:
        return self._headers

    @headers.setter
    def headers(self, value: Iterable[tuple[str, str]]) -> None:
        self._headers = HeaderList(value)
        self._seen = self._cache_seen = -1

    def _positions(self, key: str) -> list[int]:
        """Indexes of the header lines with canonical name `key` (index rebuilt on change)."""
        hs = self._headers
        version = hs.version
        if self._seen != version:
            if self._cache_seen != version:
                self._cache = {}
                self._cache_seen = version
            self._index = _index_of(hs)
            self._seen = version
        return self._index.get(key, _NONE)

    def _edited(self, key: str) -> None:
        """After an edit of header `key` through this class: keep the other cached values."""
        cache = self._cache
        cache.pop(key, None)
        if key == "via":
            cache.pop("via/top", None)
        self._cache_seen = self._headers.version

    def _cached(self, slot: str, key: str, compute: Callable[[list[str]], Any]) -> Any:
        """`compute(values of header key)` under `slot` (named after the header key, see
        `_edited`), cached until that header changes."""
        if self._cache_seen == self._headers.version:  # fast path: cache valid and filled
            value = self._cache.get(slot, _MISSING)
            if value is not _MISSING:
                return value
        pos = self._positions(key)  # drops the cache first if `headers` was edited directly
        cache = self._cache
        if slot in cache:
            return cache[slot]
        hs = self._headers
        result = cache[slot] = compute([hs[i][1] for i in pos])
        return result

    # -- generic accessors

    def get(self, name: str) -> str | None:
        """First value of header `name` (its first element for list headers), or None."""
        key = header_key(name)
        pos = self._positions(key)
        if not pos:
            return None
        value = self._headers[pos[0]][1]
        if key in LIST_HEADERS and "," in value:
            items = split_list(value)
            return items[0] if items else ""
        return value

    def get_all(self, name: str) -> list[str]:
        """Every value of every header `name`; list headers are split into their elements."""
        key = header_key(name)
        hs = self._headers
        values = [hs[i][1] for i in self._positions(key)]
        if key not in LIST_HEADERS:
            return values
        out: list[str] = []
        for v in values:
            out += split_list(v)
        return out

    def set(self, name: str, value: str) -> None:
        """Replace every header `name` by one line where the first was (or, if there was none,
        just before Content-Length, or at the end)."""
        _check_header(name, value)
        key = header_key(name)
        pos = self._positions(key)
        hs = self._headers
        if pos:
            hs[pos[0]] = (name, value)
            for i in reversed(pos[1:]):
                del hs[i]
        else:
            cl = self._positions("content-length")
            if cl:
                hs.insert(cl[0], (name, value))
            else:
                hs.append((name, value))
        self._edited(key)

    def prepend(self, name: str, value: str) -> None:
        """Insert a header line before the first `name` line (or at the top): Via push,
        Record-Route insertion."""
        _check_header(name, value)
        key = header_key(name)
        pos = self._positions(key)
        self._headers.insert(pos[0] if pos else 0, (name, value))
        self._edited(key)

    def remove_first_value(self, name: str) -> str | None:
        """Pop the first element of the first header `name` (Via pop, Route pop); the line
        goes when it empties. Non-list headers lose their first line."""
        key = header_key(name)
        pos = self._positions(key)
        if not pos:
            return None
        hs = self._headers
        i = pos[0]
        hname, value = hs[i]
        if key in LIST_HEADERS and "," in value:
            spans = list_spans(value)
            if len(spans) > 1:
                hs[i] = (hname, value[spans[1][0] :])
                self._edited(key)
                return value[spans[0][0] : spans[0][1]]
            value = value[spans[0][0] : spans[0][1]] if spans else ""
        del hs[i]
        self._edited(key)
        return value

    def remove(self, name: str) -> None:
        """Remove every header line `name`."""
        hs = self._headers
        key = header_key(name)
        for i in reversed(self._positions(key)):
            del hs[i]
        self._edited(key)

    def copy(self) -> SipMessage:
        """An independent copy: a new header list (values and cached objects are immutable)."""
        new = object.__new__(type(self))
        self._copy_start_line(new)
        new._headers = HeaderList(self._headers)
        new.body = self.body
        self._positions("")  # bring index and cache up to date, then share them
        new._index, new._seen = self._index, 0
        new._cache, new._cache_seen = dict(self._cache), 0
        return new

    # -- convenience accessors (parsed on first use, cached)

    @property
    def call_id(self) -> str:
        if self._cache_seen == self._headers.version:
            value = self._cache.get("call-id")
            if value is not None:
                return value
        return self._cached("call-id", "call-id", _CALL_ID)

    @property
    def cseq(self) -> CSeq:
        if self._cache_seen == self._headers.version:
            value = self._cache.get("cseq")
            if value is not None:
                return value
        return self._cached("cseq", "cseq", _CSEQ)

    @property
    def from_addr(self) -> NameAddr:
        if self._cache_seen == self._headers.version:
            value = self._cache.get("from")
            if value is not None:
                return value
        return self._cached("from", "from", _FROM)

    @property
    def to_addr(self) -> NameAddr:
        if self._cache_seen == self._headers.version:
            value = self._cache.get("to")
            if value is not None:
                return value
        return self._cached("to", "to", _TO)

    @property
    def from_tag(self) -> str | None:
        return self.from_addr.tag

    @property
    def to_tag(self) -> str | None:
        return self.to_addr.tag

    @property
    def max_forwards(self) -> int | None:
        if self._cache_seen == self._headers.version:
            value = self._cache.get("max-forwards", _MISSING)
            if value is not _MISSING:
                return value
        return self._cached("max-forwards", "max-forwards", _max_forwards)

    @property
    def content_length(self) -> int | None:
        return self._cached("content-length", "content-length", _content_length)

    @property
    def vias(self) -> list[Via]:
        return list(self._cached("via", "via", _vias))

    @property
    def top_via(self) -> Via | None:
        if self._cache_seen == self._headers.version:
            value = self._cache.get("via/top")
            if value is not None:
                return value
        return self._cached("via/top", "via", _top_via)

    def _reset_headers(self, headers: list[tuple[str, str]], cache: dict[str, Any]) -> None:
        """Replace the header list by `headers` (valid lines built by the caller) and the
        cache by `cache`, whose entries the caller vouches for (parsed from equal values)."""
        self._headers = HeaderList(headers)
        self._seen = -1
        self._cache = cache
        self._cache_seen = 0  # a new HeaderList's version

    # -- serialisation

    def _start_line(self) -> str:
        raise NotImplementedError

    def _copy_start_line(self, new: Any) -> None:
        raise NotImplementedError

    def __bytes__(self) -> bytes:
        hs = self._headers
        lines = [self._start_line()]
        lines += [f"{n}: {v}" for n, v in hs]
        cl = self._positions("content-length")
        if cl:
            length = len(self.body)
            for i in cl:
                name, value = hs[i]
                if not (len(value) < 12 and DIGITS_RE.fullmatch(value) and int(value) == length):
                    lines[i + 1] = f"{name}: {length}"
        lines.append("\r\n")
        return "\r\n".join(lines).encode("utf-8", "surrogateescape") + self.body

    def __str__(self) -> str:
        return bytes(self).decode("utf-8", "surrogateescape")

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, SipMessage)
        return (
            self._start_line() == other._start_line()
            and list(self._headers) == list(other._headers)
            and self.body == other.body
        )

    __hash__ = None  # type: ignore[assignment]


def _first(parse: Callable[[str], Any], what: str) -> Callable[[list[str]], Any]:
    def compute(values: list[str]) -> Any:
        if not values:
            raise SipParseError(f"missing {what}")
        return parse(values[0])

    return compute


_CSEQ = _first(CSeq.parse, "CSeq")
_CALL_ID = _first(str, "Call-ID")
_FROM = _first(parse_name_addr, "From")
_TO = _first(parse_name_addr, "To")


def _max_forwards(values: list[str]) -> int | None:
    if not values:
        return None
    if not DIGITS_RE.fullmatch(values[0]):
        raise SipParseError(f"malformed Max-Forwards {values[0][:30]!r}")
    return small_int(values[0], 255, "Max-Forwards")


def _content_length(values: list[str]) -> int | None:
    if not values:
        return None
    if not DIGITS_RE.fullmatch(values[0]):
        raise SipParseError(f"malformed Content-Length {values[0][:30]!r}")
    return small_int(values[0], MAX_DATAGRAM, "Content-Length")


def _vias(values: list[str]) -> tuple[Via, ...]:
    return tuple(Via.parse(item) for v in values for item in split_list(v, strict=True))


def _top_via(values: list[str]) -> Via | None:
    if not values:
        return None
    first = values[0]
    if "," in first:
        first = split_list(first, strict=True)[0]
    return Via.parse(first)


class SipRequest(SipMessage):
    """A SIP request: method, Request-URI (text; see `parse_uri`), version, headers, body."""

    __slots__ = ("method", "uri", "version")

    def __init__(
        self,
        method: str,
        uri: str,
        headers: Iterable[tuple[str, str]],
        body: bytes = b"",
        version: str = "SIP/2.0",
    ) -> None:
        if not TOKEN_RE.fullmatch(method):
            raise ValueError(f"method {method!r} is not a token")
        if not uri or any(c in uri for c in " \t\r\n"):
            raise ValueError(f"Request-URI {uri!r} is empty or contains whitespace")
        super().__init__(headers, body)
        self.method = method
        self.uri = uri
        self.version = version

    def _start_line(self) -> str:
        return f"{self.method} {self.uri} {self.version}"

    def _copy_start_line(self, new: SipRequest) -> None:
        new.method, new.uri, new.version = self.method, self.uri, self.version

    def copy(self) -> SipRequest:
        return super().copy()  # type: ignore[return-value]

    def __repr__(self) -> str:
        return f"<SipRequest {self.method} {self.uri} ({len(self._headers)} headers)>"


class SipResponse(SipMessage):
    """A SIP response: status code, reason phrase, version, headers, body."""

    __slots__ = ("status", "reason", "version")

    def __init__(
        self,
        status: int,
        reason: str,
        headers: Iterable[tuple[str, str]],
        body: bytes = b"",
        version: str = "SIP/2.0",
    ) -> None:
        if not isinstance(status, int) or not 100 <= status <= 699:
            raise ValueError(f"status code {status!r} outside 100..699")
        if "\r" in reason or "\n" in reason:
            raise ValueError("reason phrase contains CR or LF")
        super().__init__(headers, body)
        self.status = status
        self.reason = reason
        self.version = version

    def _start_line(self) -> str:
        return f"{self.version} {self.status} {self.reason}"

    def _copy_start_line(self, new: SipResponse) -> None:
        new.status, new.reason, new.version = self.status, self.reason, self.version

    def copy(self) -> SipResponse:
        return super().copy()  # type: ignore[return-value]

    def __repr__(self) -> str:
        return f"<SipResponse {self.status} {self.reason} ({len(self._headers)} headers)>"


# ---------------------------------------------------------------------------- parsing

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
    line_end = head.find("\r\n")
    crlfs = head.count("\r\n")
    if head.count("\n") != crlfs or head.count("\r") != crlfs:
        raise SipParseError("bare CR or LF in header section")

    first = head if line_end < 0 else head[:line_end]
    method: str | None = None
    msg: SipRequest | SipResponse
    if first[:4].upper() == "SIP/":
        version, status, reason = _parse_status_line(first)
        msg = object.__new__(SipResponse)
        msg.status, msg.reason, msg.version = status, reason, version
    else:
        method, uri, version = _parse_request_line(first)
        msg = object.__new__(SipRequest)
        msg.method, msg.uri, msg.version = method, uri, version

    pairs = HeaderList()
    append = list.append  # HeaderList.append counts edits; a fresh list has none to count
    index: dict[str, list[int]] = {}
    names = _HEADER_NAMES
    lines = iter(head.split("\r\n"))
    next(lines)  # the start line
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
    msg._headers, msg._index, msg._seen = pairs, index, 0
    cache: dict[str, Any] = {}
    msg._cache, msg._cache_seen = cache, 0

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

    body_start = end + 4
    available = size - body_start
    cl_pos = index.get("content-length")
    if cl_pos is None:
        msg.body = data[body_start:]
        cache["content-length"] = None
    else:
        length = small_int(pairs[cl_pos[0]][1], MAX_DATAGRAM, "Content-Length")
        if length > available:
            raise SipParseError(f"Content-Length {length} exceeds the {available} octets received")
        msg.body = data[body_start : body_start + length]
        cache["content-length"] = length
    return msg


# ---------------------------------------------------------------------------- responses

REASON_PHRASES = {
    100: "Trying", 180: "Ringing", 181: "Call Is Being Forwarded", 182: "Queued",
    183: "Session Progress", 199: "Early Dialog Terminated", 200: "OK", 202: "Accepted",
    204: "No Notification", 300: "Multiple Choices", 301: "Moved Permanently",
    302: "Moved Temporarily", 305: "Use Proxy", 380: "Alternative Service",
    400: "Bad Request", 401: "Unauthorized", 402: "Payment Required", 403: "Forbidden",
    404: "Not Found", 405: "Method Not Allowed", 406: "Not Acceptable",
    407: "Proxy Authentication Required", 408: "Request Timeout", 410: "Gone",
    412: "Conditional Request Failed", 413: "Request Entity Too Large",
    414: "Request-URI Too Long", 415: "Unsupported Media Type",
    416: "Unsupported URI Scheme", 417: "Unknown Resource-Priority", 420: "Bad Extension",
    421: "Extension Required", 422: "Session Interval Too Small", 423: "Interval Too Brief",
    428: "Use Identity Header", 429: "Provide Referrer Identity", 430: "Flow Failed",
    433: "Anonymity Disallowed", 436: "Bad Identity-Info", 437: "Unsupported Certificate",
    438: "Invalid Identity Header", 439: "First Hop Lacks Outbound Support",
    440: "Max-Breadth Exceeded", 469: "Bad Info Package", 470: "Consent Needed",
    480: "Temporarily Unavailable", 481: "Call/Transaction Does Not Exist",
    482: "Loop Detected", 483: "Too Many Hops", 484: "Address Incomplete", 485: "Ambiguous",
    486: "Busy Here", 487: "Request Terminated", 488: "Not Acceptable Here",
    489: "Bad Event", 491: "Request Pending", 493: "Undecipherable",
    494: "Security Agreement Required", 500: "Server Internal Error", 501: "Not Implemented",
    502: "Bad Gateway", 503: "Service Unavailable", 504: "Server Time-out",
    505: "Version Not Supported", 513: "Message Too Large", 580: "Precondition Failure",
    600: "Busy Everywhere", 603: "Decline", 604: "Does Not Exist Anywhere",
    606: "Not Acceptable", 607: "Unwanted", 608: "Rejected",
}  # fmt: skip
_CLASS_REASONS = {
    1: "Trying", 2: "OK", 3: "Redirection", 4: "Client Error", 5: "Server Error",
    6: "Global Failure",
}  # fmt: skip
_RESPONSE_COPIES = ("via", "from", "to", "call-id", "cseq")
# Cache slots a response shares with its request when the lines behind them are copied as is.
_SHARED_SLOTS = ("via", "via/top", "from", "call-id", "cseq")


def make_response(
    request: SipRequest, status: int, reason: str | None = None, to_tag: str | None = None
) -> SipResponse:
    """A response to `request` per RFC 3261 §8.2.6: Via (all), From, To (given `to_tag` unless
    it has a tag already), Call-ID and CSeq copied in their order, then Content-Length: 0.
    Record-Route and Contact of dialog-creating responses are the caller's business."""
    if reason is None:
        reason = REASON_PHRASES.get(status) or _CLASS_REASONS.get(status // 100, "Unknown")
    hs = request._headers
    request._positions("")  # index and cache up to date
    index = request._index
    picks: list[int] = []
    for key in _RESPONSE_COPIES:
        pos = index.get(key)
        if pos is not None:
            picks += pos
    picks.sort()
    headers: list[tuple[str, str]] = []
    tagged = False
    to_positions = index.get("to")
    for i in picks:
        line = hs[i]
        in_to = to_positions is not None and i in to_positions
        if to_tag is not None and in_to and request.to_tag is None:
            line = (line[0], f"{line[1]};tag={to_tag}")
            tagged = True
        headers.append(line)
    headers.append(("Content-Length", "0"))
    if not isinstance(status, int) or not 100 <= status <= 699:
        raise ValueError(f"status code {status!r} outside 100..699")
    if "\r" in reason or "\n" in reason:
        raise ValueError("reason phrase contains CR or LF")
    _check_headers(headers)
    # The copied lines parse as the request's did: share what the request has parsed.
    old = request._cache
    cache: dict[str, Any] = {"max-forwards": None, "content-length": 0}
    for slot in _SHARED_SLOTS:
        value = old.get(slot, _MISSING)
        if value is not _MISSING:
            cache[slot] = value
    if not tagged and "to" in old:
        cache["to"] = old["to"]
    return _response(status, reason, headers, b"", request.version, cache)


def _request(
    method: str,
    uri: str,
    headers: list[tuple[str, str]],
    body: bytes = b"",
    version: str = "SIP/2.0",
    cache: dict[str, Any] | None = None,
) -> SipRequest:
    """A request built by this project's code from parts already valid (parsed, checked or
    literal): what `SipRequest(...)` makes, without its checks. `cache` holds parsed values
    the caller vouches for (each equal to what parsing its header would give)."""
    msg = object.__new__(SipRequest)
    msg.method, msg.uri, msg.version = method, uri, version
    msg._headers = HeaderList(headers)
    msg.body = body
    msg._index, msg._seen = {}, -1
    msg._cache, msg._cache_seen = ({} if cache is None else cache), 0
    return msg


def _response(
    status: int,
    reason: str,
    headers: list[tuple[str, str]],
    body: bytes = b"",
    version: str = "SIP/2.0",
    cache: dict[str, Any] | None = None,
) -> SipResponse:
    """`_request` for responses."""
    msg = object.__new__(SipResponse)
    msg.status, msg.reason, msg.version = status, reason, version
    msg._headers = HeaderList(headers)
    msg.body = body
    msg._index, msg._seen = {}, -1
    msg._cache, msg._cache_seen = ({} if cache is None else cache), 0
    return msg
