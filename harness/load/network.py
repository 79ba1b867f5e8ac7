"""The simulated network of the sim target: UDP links with latency, jitter and loss.

Three hosts (UAC, proxy, UAS) exchange datagrams on the kernel's virtual clock. Each
direction between two hosts is a `Link` with its own seeded random stream, so the delays
of one direction do not depend on the traffic of another, and a seed reproduces every
delay and every loss exactly.

Delay model (the `tc netem delay LATENCY JITTER` shape): each datagram takes
`latency + U(-jitter, +jitter)` seconds, never less than 0. Datagrams are independent, so
jitter larger than the spacing of two datagrams reorders them on the wire, as UDP may.
Loss drops a datagram with probability `loss`, before the delay is drawn.

Messages travel as objects (no serialisation: the sim's hot path) unless `wire="bytes"`,
which serialises every datagram and parses it again on delivery (to exercise the parser).
The proxy core takes ownership of what it receives and edits it in place (it pops its Via
from responses it forwards), so a receiver attached with `owns=True` is handed a copy:
the sender keeps the object it may retransmit unchanged.

`SimHost` plugs a sans-IO endpoint (`harness.load.endpoints`) into the network and the kernel:
it delivers datagrams, sends what the endpoint returns, and keeps one kernel timer armed
at the endpoint's next deadline.

What this module must not do: interpret SIP beyond (de)serialising it, or read a clock
other than the kernel's.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from mypy_extensions import mypyc_attr

from core.compiled import pickle_by_fields
from core.events import Address, Send
from core.runtime.kernel import Kernel, TimerHandle
from core.sip import SipMessage, SipParseError, parse_message

PROXY: Address = ("127.0.0.1", 5060)
UAC: Address = ("127.0.0.1", 5061)
UAS: Address = ("127.0.0.1", 5062)

Wire = Literal["objects", "bytes"]
Receiver = Callable[[Any, Address], None]


@dataclass(frozen=True, slots=True)
class Link:
    """One direction between two hosts: one-way latency, ± jitter (seconds), loss share."""

    latency: float = 0.0005
    jitter: float = 0.0002
    loss: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.latency <= 60.0:
            raise ValueError(f"link latency must be in [0, 60] s, got {self.latency!r}")
        if not 0.0 <= self.jitter <= 60.0:
            raise ValueError(f"link jitter must be in [0, 60] s, got {self.jitter!r}")
        if not 0.0 <= self.loss < 1.0:
            raise ValueError(f"link loss must be in [0, 1), got {self.loss!r}")

    def describe(self) -> str:
        text = f"{self.latency * 1e3:g}ms±{self.jitter * 1e3:g}ms"
        return text + (f" loss {self.loss:.2%}" if self.loss else "")


pickle_by_fields(Link)

DEFAULT_LINK = Link()


def parse_link(text: str) -> Link:
    """'latency=1ms,jitter=1ms,loss=0.5%' -> Link; ValueError (one line) on anything else."""
    from strategies.spec import SpecError, parse_duration

    values: dict[str, float] = {}
    for item in text.split(","):
        key, sep, value = (part.strip() for part in item.partition("="))
        if not sep or key not in ("latency", "jitter", "loss") or key in values:
            raise ValueError(
                f"network {text!r}: {item.strip()!r} is not one of latency=DURATION, "
                "jitter=DURATION, loss=PERCENT%"
            )
        try:
            if key == "loss":
                if not value.endswith("%"):
                    raise ValueError
                values[key] = float(value[:-1]) / 100.0
            else:
                values[key] = parse_duration(value)
        except (ValueError, SpecError):
            raise ValueError(f"network {text!r}: bad {key} value {value!r}") from None
    return Link(**values)


class _Path:
    """A link in use: its settings, its own random stream and its counters."""

    __slots__ = ("name", "latency", "jitter", "loss", "draw", "sent", "lost")

    def __init__(self, name: str, link: Link, seed: int) -> None:
        self.name = name
        self.latency = link.latency
        self.jitter = link.jitter
        self.loss = link.loss
        # str seeds are hashed with SHA-512 by random.seed: stable across runs and machines.
        self.draw = random.Random(f"deferbench-link/{seed}/{name}").random
        self.sent = 0
        self.lost = 0


class _Attachment:
    __slots__ = ("receiver", "owns", "takes_bytes")

    def __init__(self, receiver: Receiver, owns: bool, takes_bytes: bool) -> None:
        self.receiver = receiver
        self.owns = owns
        self.takes_bytes = takes_bytes


class SimNetwork:
    """Datagrams between attached addresses, delayed on the kernel's clock.

    The four named links are the directions between the UAC, the proxy and the UAS at the
    given addresses; any other pair of addresses (e.g. UAC and UAS joined directly in a
    test) uses `default`.
    """

    def __init__(
        self,
        kernel: Kernel,
        seed: int = 0,
        *,
        uac_to_proxy: Link | None = None,
        proxy_to_uas: Link | None = None,
        uas_to_proxy: Link | None = None,
        proxy_to_uac: Link | None = None,
        default: Link = DEFAULT_LINK,
        uac: Address = UAC,
        proxy: Address = PROXY,
        uas: Address = UAS,
        wire: Wire = "objects",
    ) -> None:
        if wire not in ("objects", "bytes"):
            raise ValueError(f"wire must be 'objects' or 'bytes', got {wire!r}")
        self.kernel = kernel
        self.seed = seed
        self.wire = wire
        self._bytes = wire == "bytes"
        self.default = default
        self.counters: Counter[str] = Counter()
        self._hosts: dict[Address, _Attachment] = {}
        self._paths: dict[tuple[Address, Address], _Path] = {}
        named = (
            (uac, proxy, "uac->proxy", uac_to_proxy),
            (proxy, uas, "proxy->uas", proxy_to_uas),
            (uas, proxy, "uas->proxy", uas_to_proxy),
            (proxy, uac, "proxy->uac", proxy_to_uac),
        )
        for source, destination, name, link in named:
            self._paths[(source, destination)] = _Path(name, link or default, seed)

    def attach(
        self,
        address: Address,
        receiver: Receiver,
        *,
        owns: bool = False,
        takes_bytes: bool = False,
    ) -> None:
        """Deliver datagrams for `address` as `receiver(message, source)`.

        `owns`: the receiver keeps and edits what it gets (the proxy), so it gets a copy.
        `takes_bytes`: with `wire="bytes"`, hand it the raw datagram instead of a parsed
        message (the server parses in its SIP workers).
        """
        if address in self._hosts:
            raise ValueError(f"address {address} is already attached")
        self._hosts[address] = _Attachment(receiver, owns, takes_bytes)

    def close(self) -> None:
        """Detach every host (the run is over): receivers hold their hosts, which send
        through the network, a cycle that would keep the whole run alive."""
        self._hosts.clear()

    def link(self, source: Address, destination: Address) -> Link:
        """The link settings datagrams from `source` to `destination` use."""
        path = self._path(source, destination)
        return Link(path.latency, path.jitter, path.loss)

    def _path(self, source: Address, destination: Address) -> _Path:
        path = self._paths.get((source, destination))
        if path is None:
            name = f"{source[0]}:{source[1]}->{destination[0]}:{destination[1]}"
            path = self._paths[(source, destination)] = _Path(name, self.default, self.seed)
        return path

    def send(self, message: SipMessage, source: Address, destination: Address) -> None:
        """`source` sends one datagram; it reaches `destination` after the link's delay."""
        host = self._hosts.get(destination)
        if host is None:
            self.counters["unroutable"] += 1
            return
        path = self._paths.get((source, destination)) or self._path(source, destination)
        path.sent += 1
        draw = path.draw
        if path.loss and draw() < path.loss:
            path.lost += 1
            return
        delay = path.latency
        jitter = path.jitter
        if jitter:
            delay += jitter * (2.0 * draw() - 1.0)  # U(-jitter, +jitter)
            if delay < 0.0:
                delay = 0.0
        payload: Any = message
        if self._bytes:
            payload = bytes(message)
            if not host.takes_bytes:
                try:
                    payload = parse_message(payload)
                except SipParseError:
                    self.counters["unparseable"] += 1
                    return
        elif host.owns:
            payload = message.copy()
        kernel = self.kernel
        kernel.post(kernel.now + delay, host.receiver, payload, source)

    def stats(self) -> dict[str, int]:
        """Datagrams sent and lost per link that carried traffic, plus unroutable ones."""
        out: dict[str, int] = dict(self.counters)
        for path in self._paths.values():
            if path.sent:
                out[f"{path.name} sent"] = path.sent
                out[f"{path.name} lost"] = path.lost
        return out

    @property
    def lost(self) -> int:
        return sum(path.lost for path in self._paths.values())


class Endpoint(Protocol):
    """What `SimHost` drives: a sans-IO UA (see `harness.load.endpoints`)."""

    def receive(self, message: SipMessage, source: Address, now: float) -> list[Send]: ...

    def next_deadline(self) -> float | None: ...

    def expire(self, now: float) -> list[Send]: ...


@mypyc_attr(allow_interpreted_subclasses=True)  # the live target's `UdpHost`
class EndpointHost(ABC):
    """Drives a sans-IO endpoint on a kernel: sends what it returns and keeps one kernel
    timer armed at its next deadline. Subclasses say how messages leave (`_send_all`)."""

    __slots__ = ("kernel", "endpoint", "_armed")

    def __init__(self, kernel: Kernel, endpoint: Endpoint) -> None:
        self.kernel = kernel
        self.endpoint = endpoint
        self._armed: TimerHandle | None = None

    def emit(self, sends: list[Send]) -> None:
        """Send what the endpoint returned and re-arm its timer (call after every input)."""
        if sends:
            self._send_all(sends)
        deadline = self.endpoint.next_deadline()
        if deadline is None:
            return
        armed = self._armed
        if armed is not None:
            if armed.when <= deadline and not armed.cancelled:
                return
            armed.cancel()
        self._armed = self.kernel.call_at(deadline, self._fire)

    def _fire(self) -> None:
        self._armed = None
        self.emit(self.endpoint.expire(self.kernel.now))

    @abstractmethod
    def _send_all(self, sends: list[Send]) -> None:
        """Put the endpoint's outgoing messages on the wire."""


class SimHost(EndpointHost):
    """A sans-IO endpoint at `address` on the simulated network and the kernel's clock."""

    __slots__ = ("network", "address")

    def __init__(
        self, kernel: Kernel, network: SimNetwork, address: Address, endpoint: Endpoint
    ) -> None:
        super().__init__(kernel, endpoint)
        self.network = network
        self.address = address
        network.attach(address, self.receive)

    def receive(self, message: SipMessage, source: Address) -> None:
        self.emit(self.endpoint.receive(message, source, self.kernel.now))

    def _send_all(self, sends: list[Send]) -> None:
        send = self.network.send
        address = self.address
        for out in sends:
            send(out.message, address, out.destination)
