"""Best-effort error answers to datagrams that do not parse (RFC 3261 §8.2, RFC 4475): if a
malformed datagram still reads as a request with Via, From, To, Call-ID and CSeq, build the
error response a server would send (the parser's status hint, To tagged if it was not).

Stateless and sans-IO: it must not keep state, open sockets or read clocks, and it never
raises (no answer is always safe). Where the answer goes is the caller's decision.
"""

from __future__ import annotations

from core.sip import SipParseError, SipResponse, Via

_COMPACT = {"v": "via", "f": "from", "t": "to", "i": "call-id"}
_REASONS = {
    400: "Bad Request",
    413: "Request Entity Too Large",
    414: "Request-URI Too Long",
    416: "Unsupported URI Scheme",
    420: "Bad Extension",
    505: "Version Not Supported",
    513: "Message Too Large",
}


def answer_for_malformed(data: bytes, status: int) -> tuple[SipResponse, Via | None] | None:
    """If a malformed datagram is still a request with Via, From, To, Call-ID and CSeq,
    the error response to it (and its parsed top Via, if that parses); else None."""
    try:
        head = bytes(data).split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
        lines = head.lstrip("\r\n").split("\r\n")
        start = lines[0].split(" ")
        if len(start) != 3 or start[0].upper().startswith("SIP/") or start[0] == "ACK":
            return None
        if not start[2].upper().startswith("SIP/"):
            return None
        vias: list[tuple[str, str]] = []
        found: dict[str, tuple[str, str]] = {}
        for line in lines[1:]:
            name, colon, value = line.partition(":")
            if not colon:
                continue
            key = name.strip(" \t").lower()
            key = _COMPACT.get(key, key)
            value = value.strip(" \t")
            if "\r" in value or "\n" in value:
                return None
            if key == "via":
                vias.append(("Via", value))
            elif key in ("from", "to", "call-id", "cseq") and key not in found:
                found[key] = (name.strip(" \t"), value)
        if not vias or len(found) < 4:
            return None
        to_name, to_value = found["to"]
        if ";tag=" not in to_value.replace(" ", "").lower():
            to_value = f"{to_value};tag=malformed"
        headers = [
            *vias,
            found["from"],
            (to_name, to_value),
            found["call-id"],
            found["cseq"],
            ("Content-Length", "0"),
        ]
        reason = _REASONS.get(status, "Bad Request")
        response = SipResponse(status, reason, headers)
        try:
            via = Via.parse(vias[0][1].split(",", 1)[0])
        except SipParseError:
            via = None
        return response, via
    except Exception:  # noqa: BLE001 - best effort only: no answer is always safe
        return None
