"""Proxy routing (RFC 3261 §16.4-§16.6, §18.2.2, RFC 3581): loose routing over Route
entries that name this proxy, the next hop from Route or Request-URI, and the one-pass rewrite
of a request before it is forwarded (Via push, Max-Forwards decrement, Record-Route
insertion, Route pop); plus where responses go, from Via received/rport.

These are decisions on one message at a time: this module must not keep transaction state
(that is `core.tm`), open sockets, read clocks or sleep. Its only memory is a bounded cache
of Request-URI -> address.
"""

from __future__ import annotations

import zlib

from core.events import Address
from core.sip import SipParseError, SipRequest, Via, parse_name_addr, parse_uri
from core.sip_message import _MISSING, _request
from core.transaction import MAGIC_COOKIE


def strip_brackets(host: str) -> str:
    """A host without the [] of an IPv6 reference, as sockets and comparisons want it."""
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def via_address(via: Via) -> Address:
    """Where a response to this Via goes (RFC 3261 §18.2.2, RFC 3581): received/rport if
    present, else sent-by with the default port 5060."""
    host = via.received or via.host
    rport = via.rport
    port = int(rport) if rport and rport.isdigit() else via.port or 5060
    return (strip_brackets(host), port)


def _via_parts(head: str, prefix: str) -> tuple[str, str, int | None] | None:
    """(transport, host, port) of the Via `head` + branch suffix parses to, so the proxy can
    build the parsed Via of what it forwards without parsing it; None if it does not parse
    to exactly that (then forwarded messages parse their Via when asked, as any other)."""
    try:
        via = Via.parse(f"{head}0")
    except SipParseError:
        return None
    if via != Via(via.transport, via.host, via.port, (("branch", f"{prefix}0"),)):
        return None
    return (via.transport, via.host, via.port)


# Cache slots of a request that the rewrite before forwarding leaves valid (their lines are
# copied unchanged); see `core.sip_message.SipMessage._cached`.
_FORWARD_SLOTS = ("from", "to", "call-id", "cseq", "content-length")


def response_address(via: Via, source: Address) -> Address:
    """Where a response to a request from `source` with top Via `via` goes (RFC 3581: the
    source port if the Via asks for rport, else its sent-by port)."""
    return (source[0], source[1] if via.rport is not None else via.port or 5060)


class Router:
    """The proxy's identity on the wire (address, Record-Route URI, Via, branch prefix, tag
    token) and the routing decisions that depend on it: which Route entries name us, where a
    request goes next, and the rewritten request to forward."""

    def __init__(self, address: Address, label_seed: int) -> None:
        host, port = address
        self._host = strip_brackets(host)
        self._port = port
        ref = f"[{self._host}]" if ":" in self._host else self._host
        self._record_route = f"<sip:{ref}:{port};lr>"
        # Salts the to-tags and branch ids this proxy mints with its seed and address.
        self.token = f"{zlib.crc32(f'{label_seed}/{ref}:{port}'.encode()):08x}"
        self._via_head = f"SIP/2.0/UDP {ref}:{port};branch={MAGIC_COOKIE}{self.token}."
        self.branch_prefix = f"{MAGIC_COOKIE}{self.token}."
        self._via_parts = _via_parts(self._via_head, self.branch_prefix)
        self._uri_cache: dict[str, Address | None] = {}

    def loose_route(self, request: SipRequest) -> tuple[SipRequest, Address | None, bool]:
        """Find the Route entries naming this proxy (loose_route()); the next hop is the top
        remaining Route, else the Request-URI (None if it cannot be routed).  Returns the
        message to forward from (the request itself unless Route values had to be popped
        from a copy) and whether the rewrite pass must drop the first Route line (the common
        case: one Route line holding exactly our Record-Route)."""
        request._positions("")  # index and cache up to date
        lines = request._index.get("route")
        rr = self._record_route
        if lines is not None and len(lines) == 1 and request._headers[lines[0]][1] == rr:
            # One Route line, exactly our Record-Route: drop the line, go by Request-URI.
            return request, self._uri_address(request.uri), True
        out = request
        routes = request.get_all("Route")
        pops = 0
        while pops < len(routes) and self._is_self(routes[pops]):
            pops += 1
        drop_line = False
        if pops == 1 and request.get("Route") == rr and len(routes) >= 1:
            drop_line = request._headers[lines[0]][1] == rr  # type: ignore[index]
        if pops and not drop_line:
            out = request.copy()
            for _ in range(pops):
                out.remove_first_value("Route")
        if pops < len(routes):
            try:
                target = parse_name_addr(routes[pops]).uri
            except SipParseError:
                return out, None, False
        else:
            target = out.uri
        return out, self._uri_address(target), drop_line

    def _is_self(self, route: str) -> bool:
        if route == self._record_route:
            return True
        try:
            uri = parse_uri(parse_name_addr(route).uri)
        except SipParseError:
            return False
        if not uri.is_sip:
            return False
        port = uri.port or (5061 if uri.scheme.lower() == "sips" else 5060)
        return strip_brackets(uri.host).lower() == self._host.lower() and port == self._port

    def _uri_address(self, text: str) -> Address | None:
        cache = self._uri_cache
        if text in cache:
            return cache[text]
        try:
            uri = parse_uri(text)
        except SipParseError:
            address = None
        else:
            if uri.is_sip:
                default = 5061 if uri.scheme.lower() == "sips" else 5060
                address = (strip_brackets(uri.host), uri.port or default)
            else:
                address = None
        if len(cache) >= 4096:
            cache.clear()
        cache[text] = address
        return address

    def rewrite(
        self,
        request: SipRequest,
        source: SipRequest,
        branch_suffix: str,
        max_forwards: int | None,
        record_route: bool = False,
        drop_route: bool = False,
    ) -> SipRequest:
        """The request to forward, from `source`'s headers in one pass: push our Via (branch
        `_branch_prefix` + `branch_suffix`), decrement Max-Forwards (70 if absent), add
        Record-Route (at the top, or before the first Record-Route), drop the first Route
        line if `drop_route` (it names only us). `source` is `request` or its edited copy."""
        via = f"{self._via_head}{branch_suffix}"
        headers: list[tuple[str, str]] = []
        append = headers.append
        mf = "70" if max_forwards is None else str(max_forwards - 1)
        via_done = rr_done = mf_done = False
        for line in source._headers:
            name = line[0]
            if name[0] not in "VvMmRr":  # only Via, Max-Forwards, (Record-)Route matter
                append(line)
                continue
            key = name.lower()
            if drop_route and key == "route":
                drop_route = False
                continue
            if not via_done and (key == "via" or key == "v"):
                if record_route and not rr_done:
                    append(("Record-Route", self._record_route))
                    rr_done = True
                append(("Via", via))
                via_done = True
            elif key == "max-forwards":
                if mf_done:
                    continue
                line = (name, mf)
                mf_done = True
            elif key == "record-route" and record_route and not rr_done:
                append(("Record-Route", self._record_route))
                rr_done = True
            append(line)
        if not mf_done:
            headers.insert(1 if via_done else 0, ("Max-Forwards", mf))
        # What the request has parsed stays valid for the lines copied unchanged.
        source._positions("")
        old = source._cache
        cache: dict = {"max-forwards": int(mf)}
        for slot in _FORWARD_SLOTS:
            value = old.get(slot, _MISSING)
            if value is not _MISSING:
                cache[slot] = value
        parts = self._via_parts
        if via_done and parts is not None:
            branch = f"{self.branch_prefix}{branch_suffix}"
            cache["via/top"] = Via(parts[0], parts[1], parts[2], (("branch", branch),))
        return _request(request.method, request.uri, headers, source.body, request.version, cache)
