"""SIP messages (RFC 3261): parse datagrams into request/response objects and serialise them back.

This is the sans-IO message layer the transaction core and the proxy are built on, and the
one place to import it from. It turns bytes into `SipRequest`/`SipResponse` and back, checks
what RFC 3261 says MUST hold, and gives cheap access to the few headers a proxy touches (Via,
From/To tags, Call-ID, CSeq, Max-Forwards, Route). Its parts, each importable on its own
without a circle (headers <- message <- parser, replies):

- `core.sip_headers`: the grammar of header values (URI, name-addr, Via, CSeq, comma lists);
- `core.sip_message`: the message classes, their cached accessors and serialisation;
- `core.sip_parser`: `parse_message`, the RFC 3261 checks on received datagrams;
- `core.sip_replies`: `make_response` and the reason phrases.

None of them does I/O, decodes bodies, or makes application decisions (416, 420, 483 ... are
the caller's): malformed input raises `SipParseError` carrying the status a server would
answer, and nothing else.
"""

from __future__ import annotations

from core.sip_headers import (
    CSeq,
    NameAddr,
    SipParseError,
    Uri,
    Via,
    parse_name_addr,
    parse_uri,
)
from core.sip_message import _MISSING as _MISSING
from core.sip_message import MAX_DATAGRAM as MAX_DATAGRAM
from core.sip_message import (
    HeaderList,
    SipMessage,
    SipRequest,
    SipResponse,
)
from core.sip_message import _request as _request
from core.sip_message import _response as _response
from core.sip_parser import parse_message
from core.sip_replies import REASON_PHRASES, make_response

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
