"""Answering a SIP request (RFC 3261 §8.2.6): the reason phrases and `make_response`, which
copies Via, From, To, Call-ID and CSeq from the request and shares what it has parsed.

Record-Route and Contact of dialog-creating responses, and which status to answer, are the
caller's business. This module must not do I/O or keep state. Import from `core.sip`.
"""

from __future__ import annotations

from typing import Any

from core.sip_message import _MISSING, SipRequest, SipResponse, _check_headers, _response

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
