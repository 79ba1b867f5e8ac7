"""An in-memory wire for sans-IO tests: endpoints and a Proxy exchanging datagrams in
virtual time (h11's "two endpoints joined by a wire" helper, for SIP).

Every `Send` the proxy emits is serialised and parsed again before it reaches an inbox, so
tests also prove the bytes round-trip.  The routing logic (Kamailio's request_route) is a
callable the test chooses; the default relays statefully and forwards ACKs statelessly.
Also holds small builders of the requests and responses a UAC/UAS would send.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from itertools import count

from core.events import Action, Address, Deliver, Discarded, Send, SuspensionEvent
from core.proxy import Proxy
from core.sip import SipMessage, SipRequest, SipResponse, make_response, parse_message

PROXY: Address = ("10.0.0.1", 5060)
ALICE: Address = ("10.0.0.2", 5060)  # UAC
BOB: Address = ("10.0.0.3", 5062)  # UAS

Routing = Callable[["Wire", Deliver], list[Action]]


def default_routing(wire: Wire, deliver: Deliver) -> list[Action]:
    """The default script: t_relay() transactions, forward() ACKs for 2xx."""
    if deliver.txn is None:
        return wire.proxy.forward_stateless(deliver.request, wire.now)
    return wire.proxy.relay(deliver.txn, wire.now)


class Wire:
    """Datagrams between addresses; the proxy's address leads into `proxy.receive`."""

    def __init__(self, proxy: Proxy, routing: Routing = default_routing) -> None:
        self.proxy = proxy
        self.address: Address = proxy.config.address
        self.routing = routing
        self.now = 0.0
        self.inbox: dict[Address, list[SipMessage]] = defaultdict(list)
        self.delivered: list[Deliver] = []
        self.discarded: list[Discarded] = []
        self.events: list[SuspensionEvent] = []
        self.sent: list[tuple[float, Address, SipMessage]] = []  # (time, destination, msg)

    def send(self, message: SipMessage | bytes, source: Address) -> None:
        """`source` sends `message` to the proxy now."""
        data = message if isinstance(message, bytes) else bytes(message)
        self.dispatch(self.proxy.receive(data, source, self.now))

    def dispatch(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Send):
                data = bytes(action.message)
                self.sent.append((self.now, action.destination, parse_message(data)))
                if action.destination == self.address:
                    self.dispatch(self.proxy.receive(data, self.address, self.now))
                else:
                    self.inbox[action.destination].append(parse_message(data))
            elif isinstance(action, Deliver):
                self.delivered.append(action)
                self.dispatch(self.routing(self, action))
            elif isinstance(action, Discarded):
                self.discarded.append(action)
            elif isinstance(action, SuspensionEvent):
                self.events.append(action)
            else:  # pragma: no cover - a new action kind the wire does not know
                raise AssertionError(f"unknown action {action!r}")

    def run_until(self, when: float) -> None:
        """Advance virtual time to `when`, firing every proxy timer at its exact deadline."""
        while (deadline := self.proxy.next_deadline()) is not None and deadline <= when:
            self.now = max(self.now, deadline)
            self.dispatch(self.proxy.expire(self.now))
        self.now = max(self.now, when)

    def take(self, address: Address) -> list[SipMessage]:
        """Everything that reached `address` since the last take."""
        messages = self.inbox.pop(address, [])
        return messages

    def take_one(self, address: Address) -> SipMessage:
        messages = self.take(address)
        assert len(messages) == 1, f"expected one message at {address}, got {messages}"
        return messages[0]

    def events_of(self, kind: str) -> list[SuspensionEvent]:
        return [e for e in self.events if e.kind == kind]


# ---------------------------------------------------------------- message builders

_branches = count(1)


def new_branch() -> str:
    return f"z9hG4bKtest{next(_branches)}"


def request(
    method: str,
    uri: str = "sip:bob@10.0.0.3:5062",
    *,
    source: Address = ALICE,
    call_id: str = "call-1@10.0.0.2",
    cseq: int = 1,
    from_tag: str = "alice-tag",
    to_tag: str | None = None,
    branch: str | None = None,
    routes: tuple[str, ...] = (),
    max_forwards: int | None = 70,
    via: str | None = None,
    body: bytes = b"",
    extra: tuple[tuple[str, str], ...] = (),
) -> SipRequest:
    """A request as a UAC at `source` would send it."""
    host, port = source
    headers = [
        ("Via", via or f"SIP/2.0/UDP {host}:{port};branch={branch or new_branch()}"),
    ]
    if max_forwards is not None:
        headers.append(("Max-Forwards", str(max_forwards)))
    headers += [("Route", r) for r in routes]
    to = "<sip:bob@example.com>" + (f";tag={to_tag}" if to_tag else "")
    headers += [
        ("From", f"Alice <sip:alice@example.com>;tag={from_tag}"),
        ("To", to),
        ("Call-ID", call_id),
        ("CSeq", f"{cseq} {method}"),
        ("Contact", f"<sip:alice@{host}:{port}>"),
        *extra,
    ]
    if body:
        headers.append(("Content-Type", "application/sdp"))
    headers.append(("Content-Length", str(len(body))))
    return SipRequest(method, uri, headers, body)


def answer(
    received: SipRequest,
    status: int,
    *,
    to_tag: str = "bob-tag",
    contact: Address = BOB,
    body: bytes = b"",
) -> SipResponse:
    """The response a UAS sends to `received` (Record-Route copied for dialog 1xx/2xx)."""
    response = make_response(received, status, None, None if status == 100 else to_tag)
    if 100 < status < 300 and received.method == "INVITE":
        for rr in reversed(received.get_all("Record-Route")):
            response.prepend("Record-Route", rr)
        response.set("Contact", f"<sip:bob@{contact[0]}:{contact[1]}>")
    if body:
        response.body = body
        response.set("Content-Type", "application/sdp")
    return response


def ack_for_2xx(
    invite: SipRequest, response: SipResponse, *, source: Address = ALICE
) -> SipRequest:
    """The UAC's ACK for a 2xx: a new transaction to the remote target along the route set
    (the reversed Record-Route of the response)."""
    contact = response.get("Contact") or "<sip:bob@10.0.0.3:5062>"
    target = contact.strip().lstrip("<").split(">")[0]
    routes = tuple(reversed(response.get_all("Record-Route")))
    return request(
        "ACK",
        target,
        source=source,
        call_id=invite.call_id,
        cseq=invite.cseq.number,
        to_tag=response.to_tag,
        routes=routes,
    )


def ack_for_error(invite: SipRequest, response: SipResponse) -> SipRequest:
    """The UAC transaction's ACK for a 300-699 (same branch as the INVITE)."""
    ack = SipRequest(
        "ACK",
        invite.uri,
        [
            ("Via", invite.get_all("Via")[0]),
            ("Max-Forwards", "70"),
            ("From", invite.get("From") or ""),
            ("To", response.get("To") or ""),
            ("Call-ID", invite.call_id),
            ("CSeq", f"{invite.cseq.number} ACK"),
            ("Content-Length", "0"),
        ],
    )
    return ack
