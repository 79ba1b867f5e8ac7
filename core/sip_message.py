"""SIP message objects (RFC 3261 §7): `SipRequest`/`SipResponse`, their header list, the
cached header accessors, and serialisation back to bytes.

A message keeps its headers as written, in order, and parses the few a proxy touches (Via,
From/To, Call-ID, CSeq, Max-Forwards, Content-Length) only when asked, caching the result
until that header changes. A message built by hand is checked only so far as it serialises to
what it says (token names, no CR/LF in values); the RFC 3261 MUSTs are `core.sip_parser`'s.

This module must not parse datagrams (that is `core.sip_parser`), do I/O, read clocks, or
decide anything on the application's behalf. Import its public names from `core.sip`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from core.header_list import HeaderList
from core.sip_headers import (
    DIGITS_RE,
    HEADER_KEYS,
    LIST_HEADERS,
    TOKEN_RE,
    CSeq,
    NameAddr,
    SipParseError,
    Via,
    header_key,
    list_spans,
    parse_name_addr,
    small_int,
    split_list,
)

# The largest message accepted: one UDP datagram (RFC 3261 §18.1.1 leaves the rest to TCP).
MAX_DATAGRAM = 65535

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

    def __init__(
        self,
        headers: Iterable[tuple[str, str]],
        body: bytes = b"",
        trusted: dict[str, Any] | None = None,
    ) -> None:
        if trusted is None:
            self._headers = HeaderList([(name, value) for name, value in headers])
            _check_headers(self._headers)
            self.body = bytes(body)
            self._cache: dict[str, Any] = {}
            self._cache_seen = -1
        else:  # see `_request`: parts already valid, `trusted` their parsed values
            self._headers = headers if type(headers) is HeaderList else HeaderList(headers)
            self.body = body
            self._cache = trusted
            self._cache_seen = 0
        self._index: dict[str, list[int]] = {}
        self._seen = -1

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
        self._positions("")  # bring index and cache up to date, then share them
        new = self._like(HeaderList(self._headers), dict(self._cache))
        new._index, new._seen = self._index, 0
        return new

    def _like(self, headers: HeaderList, cache: dict[str, Any]) -> SipMessage:
        """A message with this one's start line and body, and these headers and cache."""
        raise NotImplementedError

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
        trusted: dict[str, Any] | None = None,
    ) -> None:
        if trusted is None:
            if not TOKEN_RE.fullmatch(method):
                raise ValueError(f"method {method!r} is not a token")
            if not uri or any(c in uri for c in " \t\r\n"):
                raise ValueError(f"Request-URI {uri!r} is empty or contains whitespace")
        super().__init__(headers, body, trusted)
        self.method = method
        self.uri = uri
        self.version = version

    def _start_line(self) -> str:
        return f"{self.method} {self.uri} {self.version}"

    def _like(self, headers: HeaderList, cache: dict[str, Any]) -> SipRequest:
        return SipRequest(self.method, self.uri, headers, self.body, self.version, cache)

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
        trusted: dict[str, Any] | None = None,
    ) -> None:
        if trusted is None:
            if not isinstance(status, int) or not 100 <= status <= 699:
                raise ValueError(f"status code {status!r} outside 100..699")
            if "\r" in reason or "\n" in reason:
                raise ValueError("reason phrase contains CR or LF")
        super().__init__(headers, body, trusted)
        self.status = status
        self.reason = reason
        self.version = version

    def _start_line(self) -> str:
        return f"{self.version} {self.status} {self.reason}"

    def _like(self, headers: HeaderList, cache: dict[str, Any]) -> SipResponse:
        return SipResponse(self.status, self.reason, headers, self.body, self.version, cache)

    def copy(self) -> SipResponse:
        return super().copy()  # type: ignore[return-value]

    def __repr__(self) -> str:
        return f"<SipResponse {self.status} {self.reason} ({len(self._headers)} headers)>"


# ---------------------------------------------------------------------------- trusted construction
# For `make_response`, the proxy and the endpoints: parts already valid, no checks to repeat.


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
    return SipRequest(method, uri, headers, body, version, {} if cache is None else cache)


def _response(
    status: int,
    reason: str,
    headers: list[tuple[str, str]],
    body: bytes = b"",
    version: str = "SIP/2.0",
    cache: dict[str, Any] | None = None,
) -> SipResponse:
    """`_request` for responses."""
    return SipResponse(status, reason, headers, body, version, {} if cache is None else cache)
