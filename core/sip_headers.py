"""Grammar of SIP header values (RFC 3261 §25): URIs, name-addrs, Via, CSeq, comma lists.

The message layer uses this module twice: `core.sip_parser`, at parse time, to *validate*
whole header values with one compiled regex each (cheap, builds no objects), and
`core.sip_message`, on access, to *parse* a value into a frozen value type. Both are built
from the same grammar pieces, so whatever the validator accepts the parser accepts too; a
parsed message never raises from an accessor.

Import from `core.sip`; this module must not know about messages, I/O or transactions.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

from core.compiled import pickle_by_fields

__all__ = [
    "CSeq",
    "NameAddr",
    "SipParseError",
    "Uri",
    "Via",
    "parse_name_addr",
    "parse_uri",
]

MAGIC_COOKIE = "z9hG4bK"
MAX_CSEQ = 2**32 - 1
_CACHEABLE = 512  # values longer than this are parsed uncached, so caches stay small


class SipParseError(Exception):
    """Malformed SIP input. `status_hint` is what a server would answer (400, 413, 505, ...)."""

    def __init__(self, message: str, status_hint: int = 400) -> None:
        super().__init__(message)
        self.status_hint = status_hint


# ---------------------------------------------------------------------------- grammar pieces
# Possessive quantifiers (Python 3.11) keep every pattern linear: none can backtrack badly.

WS = r"[ \t]*+"
TOKEN = r"[A-Za-z0-9\-.!%*_+`'~]++"
QUOTED = r'"(?:[^"\\]++|\\.)*+"'
# gen-value = token / host / quoted-string; host adds ':' and '[ ]' (received=2001:db8::1).
GEN_VALUE = rf"(?:[A-Za-z0-9\-.!%*_+`'~:\[\]]++|{QUOTED})"
PARAM = rf"{WS};{WS}({TOKEN})(?:{WS}={WS}({GEN_VALUE}))?"
PARAMS = rf"(?:{WS};{WS}{TOKEN}(?:{WS}={WS}{GEN_VALUE})?)*+{WS}"
HOST = r"(?:\[[0-9A-Fa-f:.]++\]|[A-Za-z0-9\-_.]++)"
# 0..65535 with optional leading zeros, so validators refuse what int() would have to.
PORT = (
    r"0*(?:6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[0-9]{1,4})"
    r"(?![0-9])"
)
SCHEME = r"[A-Za-z][A-Za-z0-9+\-.]*+"
_URI_CHARS = r"[^ \t\r\n<>\"]"
_PARAMCHAR = r"[A-Za-z0-9\-_.!~*'()%\[\]/:&+$]"
# user/password may hold ';', '?', '/' ... (RFC 4475 intmeth, semiuri); they end at the only '@'.
SIP_URI_BODY = (
    rf"(?:([^:@ \t\r\n<>\"]*+)(?::([^@ \t\r\n<>\"]*+))?@)?({HOST})(?::({PORT}))?"
    rf"((?:;{_PARAMCHAR}++(?:={_PARAMCHAR}++)?)*+)(?:\?({_URI_CHARS}*+))?"
)
# addr-spec outside <> cannot contain ',', ';' or '?' (RFC 3261 §20.10).
ADDR_SPEC = rf"{SCHEME}:[^ \t\r\n<>\";,?]++"
DISPLAY = rf"(?:{QUOTED}|{TOKEN}(?:[ \t]++{TOKEN})*+)"
NAME_ADDR = rf"{WS}(?:(?:{DISPLAY})?{WS}<{SCHEME}:{_URI_CHARS}++>|{ADDR_SPEC}){PARAMS}"
VIA_PARM = (
    rf"{WS}[Ss][Ii][Pp]{WS}/{WS}2\.0{WS}/{WS}{TOKEN}[ \t]++{HOST}(?:{WS}:{WS}{PORT})?{PARAMS}"
)

TOKEN_RE = re.compile(TOKEN)
_PARAM_RE = re.compile(PARAM, re.S)
_PARAMS_RE = re.compile(PARAMS, re.S)
_SCHEME_RE = re.compile(rf"({SCHEME}):({_URI_CHARS}++)")
_SIP_URI_RE = re.compile(SIP_URI_BODY)
_VIA_HEAD_RE = re.compile(
    rf"{WS}({TOKEN}){WS}/{WS}({TOKEN}){WS}/{WS}({TOKEN})[ \t]++({HOST})(?:{WS}:{WS}({PORT}))?"
)
_NAME_ADDR_HEAD_RE = re.compile(
    rf"{WS}(?:({DISPLAY})?{WS}<({SCHEME}:{_URI_CHARS}++)>|({ADDR_SPEC}))", re.S
)
_CSEQ_RE = re.compile(rf"{WS}([0-9]++)[ \t]++({TOKEN}){WS}")
# One element of a comma list: commas inside quotes or <...> do not split.
_LIST_ITEM_RE = re.compile(r'(?:[^,"<]++|"(?:[^"\\]++|\\.)*+"|<[^>]*+>)++', re.S)

# Whole-value validators used by the message parser (fullmatch, no objects built).
VIA_VALUE_RE = re.compile(rf"{VIA_PARM}(?:,{VIA_PARM})*+", re.S)
NAME_ADDR_VALUE_RE = re.compile(NAME_ADDR, re.S)
NAME_ADDR_LIST_RE = re.compile(rf"{NAME_ADDR}(?:,{NAME_ADDR})*+", re.S)
CONTACT_VALUE_RE = re.compile(rf"{WS}\*{WS}|{NAME_ADDR}(?:,{NAME_ADDR})*+", re.S)
DIGITS_RE = re.compile(r"[0-9]++")
BALANCED_RE = re.compile(r'(?:[^"]++|"(?:[^"\\]++|\\.)*+")*+', re.S)
DATE_RE = re.compile(
    r"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun),[ \t]++[0-9]{2}[ \t]++"
    r"(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)[ \t]++[0-9]{4}[ \t]++"
    r"[0-9]{2}:[0-9]{2}:[0-9]{2}[ \t]++GMT"
)

# ---------------------------------------------------------------------------- header names

# IANA compact header forms (RFC 3261 §7.3.3 and later extensions).
COMPACT_FORMS = {
    "a": "accept-contact", "b": "referred-by", "c": "content-type", "d": "request-disposition",
    "e": "content-encoding", "f": "from", "i": "call-id", "j": "reject-contact",
    "k": "supported", "l": "content-length", "m": "contact", "n": "identity-info",
    "o": "event", "r": "refer-to", "s": "subject", "t": "to", "u": "allow-events", "v": "via",
    "x": "session-expires", "y": "identity",
}  # fmt: skip
# Headers whose grammar is a comma-separated list (split by get_all / remove_first_value).
LIST_HEADERS = frozenset(
    {
        "via", "route", "record-route", "contact", "allow", "supported", "require",
        "proxy-require", "unsupported", "accept", "accept-encoding", "accept-language",
        "allow-events", "content-encoding", "content-language", "in-reply-to", "alert-info",
        "call-info", "error-info", "warning", "path", "service-route", "accept-contact",
        "reject-contact", "request-disposition", "p-asserted-identity",
        "p-preferred-identity", "history-info", "reason", "security-client",
        "security-server", "security-verify",
    }
)  # fmt: skip

HEADER_KEYS: dict[str, str] = {}  # header name as written -> key (a bounded memo)


def header_key(name: str) -> str:
    """Canonical lookup key of a header name: lower case, compact forms expanded."""
    key = HEADER_KEYS.get(name)
    if key is None:
        key = name.strip(" \t").lower()
        key = COMPACT_FORMS.get(key, key)
        if len(HEADER_KEYS) < 4096:
            HEADER_KEYS[name] = key
    return key


# ---------------------------------------------------------------------------- small helpers


def small_int(digits: str, limit: int, what: str) -> int:
    """Convert an all-digit string, refusing values above `limit` without building huge ints."""
    if len(digits) < 10 and (value := int(digits)) <= limit:
        return value
    stripped = digits.lstrip("0")
    if len(stripped) > len(str(limit)) or (stripped and int(stripped) > limit):
        more = "..." if len(digits) > 20 else ""
        raise SipParseError(f"{what} {digits[:20]}{more} exceeds {limit}")
    return int(stripped) if stripped else 0


def _param_value(params: tuple[tuple[str, str | None], ...], name: str) -> str | None:
    """Value of a parameter (case-insensitive name): None if absent, "" if present bare."""
    return _lower_param(params, name.lower())


def _lower_param(params: tuple[tuple[str, str | None], ...], lname: str) -> str | None:
    """`_param_value` for a name already in lower case."""
    for k, v in params:
        if k == lname or k.lower() == lname:
            return "" if v is None else v
    return None


def _params_str(params: Iterable[tuple[str, str | None]]) -> str:
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params)


def _parse_params(text: str, pos: int, what: str) -> tuple[tuple[str, str | None], ...]:
    """Parse `*( SEMI name [EQUAL value] )` from `pos` to the end of `text`."""
    if _PARAMS_RE.fullmatch(text, pos) is None:
        raise SipParseError(f"malformed parameter in {what}: {text[pos : pos + 40]!r}")
    if pos == len(text):
        return ()
    # a gen-value is never empty, so "" from findall means a parameter without value
    return tuple([(name, value or None) for name, value in _PARAM_RE.findall(text, pos)])


def list_spans(value: str, strict: bool = False) -> list[tuple[int, int]]:
    """(start, end) of each element of a comma list, quote- and <>-aware, whitespace trimmed.

    Strict mode refuses empty elements and unbalanced quotes or '<'; lenient mode never
    raises, skips empty elements and keeps an unbalanced tail as one element.
    """
    spans: list[tuple[int, int]] = []
    pos, n = 0, len(value)
    while pos <= n:
        m = _LIST_ITEM_RE.match(value, pos)
        end = pos if m is None else m.end()
        if end < n and value[end] != ",":  # stopped at an unbalanced '"' or '<'
            if strict:
                raise SipParseError(f"unbalanced quote or '<' in {value[:60]!r}")
            end = n
        start, stop = pos, end
        while start < stop and value[start] in " \t":
            start += 1
        while stop > start and value[stop - 1] in " \t":
            stop -= 1
        if start < stop:
            spans.append((start, stop))
        elif strict:
            raise SipParseError(f"empty element in list {value[:60]!r}")
        pos = end + 1
    return spans


def split_list(value: str, strict: bool = False) -> list[str]:
    """The elements of a comma-list header value (see `list_spans`)."""
    if '"' not in value and "<" not in value:
        parts = [x.strip(" \t") for x in value.split(",")]
        if strict and not all(parts):
            raise SipParseError(f"empty element in list {value[:60]!r}")
        return [p for p in parts if p]
    return [value[a:b] for a, b in list_spans(value, strict)]


# ---------------------------------------------------------------------------- value types


@dataclass(frozen=True, slots=True)
class CSeq:
    """The CSeq header: sequence number and method."""

    number: int
    method: str

    def __str__(self) -> str:
        return f"{self.number} {self.method}"

    @classmethod
    def parse(cls, value: str) -> CSeq:
        m = _CSEQ_RE.fullmatch(value)
        if m is None:
            raise SipParseError(f"malformed CSeq {value[:60]!r}")
        return cls(small_int(m.group(1), MAX_CSEQ, "CSeq number"), m.group(2))


@dataclass(frozen=True, slots=True)
class Uri:
    """A URI. For sip/sips every part is parsed (escapes are kept, never decoded); any other
    scheme is opaque: `host` holds everything after "scheme:", user/password/port are None."""

    scheme: str
    user: str | None
    password: str | None
    host: str
    port: int | None = None
    params: tuple[tuple[str, str | None], ...] = ()
    headers: str | None = None

    @property
    def is_sip(self) -> bool:
        return self.scheme.lower() in ("sip", "sips")

    def param(self, name: str) -> str | None:
        """URI parameter value: None absent, "" bare (e.g. ``lr``)."""
        return _param_value(self.params, name)

    def __str__(self) -> str:
        if not self.is_sip:
            return f"{self.scheme}:{self.host}"
        out = [self.scheme, ":"]
        if self.user is not None:
            out.append(self.user)
            if self.password is not None:
                out += [":", self.password]
            out.append("@")
        out.append(self.host)
        if self.port is not None:
            out.append(f":{self.port}")
        out.append(_params_str(self.params))
        if self.headers is not None:
            out += ["?", self.headers]
        return "".join(out)


def _uri_params(text: str) -> tuple[tuple[str, str | None], ...]:
    """Split ';a=b;c' (already validated by the URI regex) into (('a', 'b'), ('c', None))."""
    out = []
    for item in text[1:].split(";"):
        name, eq, value = item.partition("=")
        out.append((name, value if eq else None))
    return tuple(out)


def sip_uri_match(text: str) -> re.Match[str] | None:
    """Match the part of a sip/sips URI after "scheme:" (groups: user, password, host, port,
    params, headers); None if malformed or the port exceeds 65535."""
    m = _SIP_URI_RE.fullmatch(text)
    if m is None or (m.group(4) is not None and int(m.group(4)) > 65535):
        return None
    if m.group(1) == "":  # "sip:@host": empty user
        return None
    return m


def _parse_uri(text: str) -> Uri:
    m = _SCHEME_RE.fullmatch(text)
    if m is None:
        raise SipParseError(f"malformed URI {text[:60]!r}")
    scheme, rest = m.group(1), m.group(2)
    if scheme.lower() not in ("sip", "sips"):
        return Uri(scheme, None, None, rest)
    u = sip_uri_match(rest)
    if u is None:
        raise SipParseError(f"malformed SIP URI {text[:60]!r}")
    user, password, host, port, params, headers = u.groups()
    return Uri(
        scheme,
        user,
        password,
        host,
        None if port is None else int(port),
        _uri_params(params) if params else (),
        headers,
    )


_parse_uri_cached = lru_cache(maxsize=1024)(_parse_uri)


def parse_uri(text: str) -> Uri:
    """Parse a URI (no surrounding whitespace or <>). Raises SipParseError."""
    return _parse_uri_cached(text) if len(text) <= _CACHEABLE else _parse_uri(text)


@dataclass(frozen=True, slots=True)
class NameAddr:
    """A name-addr or addr-spec with header parameters (From, To, Contact, Route ...).

    `display` is the display name as written (quotes kept), `uri` the URI text; header
    parameters (tag, expires, q ...) are in `params`, URI parameters stay inside `uri`.
    The URI's own syntax is checked when `parsed_uri` (parse_uri) is called.
    """

    display: str | None
    uri: str
    params: tuple[tuple[str, str | None], ...] = ()

    @property
    def tag(self) -> str | None:
        return _lower_param(self.params, "tag")

    def param(self, name: str) -> str | None:
        return _param_value(self.params, name)

    @property
    def parsed_uri(self) -> Uri:
        return parse_uri(self.uri)

    def __str__(self) -> str:
        head = f"{self.display} <{self.uri}>" if self.display else f"<{self.uri}>"
        return head + _params_str(self.params)


def _parse_name_addr(text: str) -> NameAddr:
    m = _NAME_ADDR_HEAD_RE.match(text)
    if m is None:
        if not BALANCED_RE.fullmatch(text):
            raise SipParseError(f"unterminated quoted string in {text[:60]!r}")
        raise SipParseError(f"malformed name-addr {text[:60]!r}")
    display, bracketed, addr_spec = m.groups()
    if addr_spec is not None:
        nxt = text[m.end() : m.end() + 1]
        if nxt == "?":
            raise SipParseError(f"URI with headers must be enclosed in <>: {text[:60]!r}")
        return NameAddr(None, addr_spec, _parse_params(text, m.end(), "name-addr"))
    return NameAddr(display, bracketed, _parse_params(text, m.end(), "name-addr"))


_parse_name_addr_cached = lru_cache(maxsize=1024)(_parse_name_addr)


def parse_name_addr(text: str) -> NameAddr:
    """Parse `( name-addr / addr-spec ) *( SEMI param )`. Raises SipParseError.

    In addr-spec form (no <>) parameters belong to the header, and the URI may not carry
    '?headers' (RFC 3261 §20.10: such URIs MUST be in <>).
    """
    if len(text) <= _CACHEABLE:
        return _parse_name_addr_cached(text)
    return _parse_name_addr(text)


@dataclass(frozen=True, slots=True)
class Via:
    """One Via value. `host` is kept as written (IPv6 references keep their brackets),
    `transport` is upper-cased."""

    transport: str
    host: str
    port: int | None
    params: tuple[tuple[str, str | None], ...] = ()

    @property
    def branch(self) -> str | None:
        return _lower_param(self.params, "branch")

    @property
    def received(self) -> str | None:
        return _lower_param(self.params, "received")

    @property
    def rport(self) -> str | None:
        """None if absent, "" if present without a value (a request for rport)."""
        return _lower_param(self.params, "rport")

    @property
    def sent_by(self) -> tuple[str, int | None]:
        return (self.host, self.port)

    def param(self, name: str) -> str | None:
        return _param_value(self.params, name)

    def with_params(self, **kw: str | bool | None) -> Via:
        """Copy with parameters set: a str sets a value ("" or True a bare one), None removes."""
        params = list(self.params)
        for name, value in kw.items():
            lname = name.lower()
            idx = next((i for i, (k, _) in enumerate(params) if k.lower() == lname), None)
            if value is None:
                if idx is not None:
                    del params[idx]
                continue
            new = (name, None if value is True or value == "" else str(value))
            if idx is None:
                params.append(new)
            else:
                params[idx] = new
        return Via(self.transport, self.host, self.port, tuple(params))

    def __str__(self) -> str:
        port = "" if self.port is None else f":{self.port}"
        return f"SIP/2.0/{self.transport} {self.host}{port}{_params_str(self.params)}"

    @staticmethod
    def parse(value: str) -> Via:
        """Parse one via-parm (not a comma list). Raises SipParseError."""
        if len(value) <= _CACHEABLE:
            return _parse_via_cached(value)
        return _parse_via(value)


pickle_by_fields(CSeq, Uri, NameAddr, Via)


def _parse_via(value: str) -> Via:
    m = _VIA_HEAD_RE.match(value)
    if m is None:
        raise SipParseError(f"malformed Via {value[:60]!r}")
    proto, version, transport, host, port = m.groups()
    if proto.upper() != "SIP":
        raise SipParseError(f"unknown protocol {proto[:20]!r} in Via")
    if version != "2.0":
        raise SipParseError(f"unsupported SIP version {version[:20]!r} in Via", 505)
    if port is not None and int(port) > 65535:
        raise SipParseError(f"Via port {port} exceeds 65535")
    return Via(
        transport.upper(),
        host,
        None if port is None else int(port),
        _parse_params(value, m.end(), "Via"),
    )


_parse_via_cached = lru_cache(maxsize=1024)(_parse_via)
