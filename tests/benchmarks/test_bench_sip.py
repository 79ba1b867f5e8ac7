"""Benchmarks of core.sip: parse and serialise a typical INVITE (~600 octets) and a 200 OK.

Run: python -m pytest tests/benchmarks/test_bench_sip.py --benchmark-only -p no:cacheprovider
(pyproject adds --benchmark-skip by default; --benchmark-only overrides it.)

The "proxy" cases parse a fresh message every round (new branch, tags, Call-ID) so the
bounded caches of Via/name-addr parsing cannot make repeated input look cheaper than traffic.
"""

from __future__ import annotations

import itertools

from core.sip import SipRequest, SipResponse, make_response, parse_message

SDP = (
    b"v=0\r\n"
    b"o=alice 2890844526 2890844526 IN IP4 pc33.atlanta.example.com\r\n"
    b"s=-\r\n"
    b"c=IN IP4 192.0.2.101\r\n"
    b"t=0 0\r\n"
    b"m=audio 49172 RTP/AVP 0\r\n"
    b"a=rtpmap:0 PCMU/8000\r\n"
)


def invite(n: int = 0) -> bytes:
    head = (
        "INVITE sip:bob@biloxi.example.com SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP pc33.atlanta.example.com:5060;branch=z9hG4bK776asd{n};rport\r\n"
        "Max-Forwards: 70\r\n"
        "Route: <sip:proxy.example.com:5060;lr>\r\n"
        "To: Bob <sip:bob@biloxi.example.com>\r\n"
        f"From: Alice <sip:alice@atlanta.example.com>;tag=19283{n}\r\n"
        f"Call-ID: a84b4c76e66710-{n}@pc33.atlanta.example.com\r\n"
        "CSeq: 314159 INVITE\r\n"
        "Contact: <sip:alice@pc33.atlanta.example.com>\r\n"
        "Allow: INVITE, ACK, CANCEL, BYE, OPTIONS\r\n"
        "Content-Type: application/sdp\r\n"
        f"Content-Length: {len(SDP)}\r\n\r\n"
    )
    return head.encode() + SDP


def ok(n: int = 0) -> bytes:
    return (
        "SIP/2.0 200 OK\r\n"
        f"Via: SIP/2.0/UDP proxy.example.com:5060;branch=z9hG4bKpx{n}\r\n"
        f"Via: SIP/2.0/UDP pc33.atlanta.example.com:5060;branch=z9hG4bK776asd{n};rport=5060"
        ";received=192.0.2.101\r\n"
        "Record-Route: <sip:proxy.example.com:5060;lr>\r\n"
        f"To: Bob <sip:bob@biloxi.example.com>;tag=a6c85cf{n}\r\n"
        f"From: Alice <sip:alice@atlanta.example.com>;tag=19283{n}\r\n"
        f"Call-ID: a84b4c76e66710-{n}@pc33.atlanta.example.com\r\n"
        "CSeq: 314159 INVITE\r\n"
        "Contact: <sip:bob@192.0.2.4>\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def test_invite_is_typical_size() -> None:
    assert 550 <= len(invite()) <= 650


def test_parse_invite(benchmark) -> None:
    data = invite()
    msg = benchmark(parse_message, data)
    assert isinstance(msg, SipRequest) and len(msg.body) == len(SDP)


def test_parse_200_ok(benchmark) -> None:
    data = ok()
    msg = benchmark(parse_message, data)
    assert isinstance(msg, SipResponse) and msg.status == 200


def test_serialise_invite(benchmark) -> None:
    data = invite()
    msg = parse_message(data)
    assert benchmark(bytes, msg) == data


def test_serialise_200_ok(benchmark) -> None:
    data = ok()
    msg = parse_message(data)
    assert benchmark(bytes, msg) == data


def _fresh(make):
    counter = itertools.count(1)
    return lambda: ((make(next(counter)),), {})


def test_proxy_forward_invite(benchmark) -> None:
    """What a stateful proxy does to an INVITE: parse, read the transaction keys, pop the
    Route, push its Via, decrement Max-Forwards, serialise."""

    def forward(data: bytes) -> bytes:
        msg = parse_message(data)
        via = msg.top_via
        key = (via.branch, msg.cseq.method, msg.call_id, msg.from_tag, msg.to_tag)
        assert key[0] is not None
        msg.remove_first_value("Route")
        msg.prepend("Via", f"SIP/2.0/UDP proxy.example.com:5060;branch=z9hG4bKpx{key[0]}")
        msg.set("Max-Forwards", str(msg.max_forwards - 1))
        return bytes(msg)

    out = benchmark.pedantic(forward, setup=_fresh(invite), rounds=5000, warmup_rounds=100)
    forwarded = parse_message(out)
    assert forwarded.max_forwards == 69 and forwarded.get("Route") is None
    assert len(forwarded.vias) == 2


def test_proxy_answer_and_relay_200(benchmark) -> None:
    """Parse a 200 OK, pop the proxy's Via, serialise; plus building a 100 Trying."""

    def relay(data: bytes) -> bytes:
        msg = parse_message(data)
        assert msg.top_via.branch.startswith("z9hG4bKpx")
        msg.remove_first_value("Via")
        return bytes(msg)

    out = benchmark.pedantic(relay, setup=_fresh(ok), rounds=5000, warmup_rounds=100)
    assert len(parse_message(out).vias) == 1


def test_make_100_trying(benchmark) -> None:
    request = parse_message(invite())
    trying = benchmark(lambda: bytes(make_response(request, 100)))
    assert trying.startswith(b"SIP/2.0 100 Trying\r\n")
