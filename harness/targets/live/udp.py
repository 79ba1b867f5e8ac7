"""UDP on loopback for the live target, on either anyio backend (trio or asyncio).

A `UdpSocket` is a plain non-blocking socket: sends are synchronous `sendto()` calls, so a
kernel callback (a process step of the live proxy, an endpoint's timer) can send without
awaiting, as Kamailio's workers do; receiving drains the socket in bounded batches (until
EAGAIN), handing each datagram to a callback: either one anyio task per socket that waits
until it is readable (`receive_loop`), or the owner of an event loop calls `drain` itself
(the live proxy's kernel does, see `Kernel.add_reader`). A full send buffer is not waited
for: the datagram is dropped and counted, as a UDP sender may.

Drops the process cannot see (datagrams the OS discarded because the receive buffer was
full) are read from /proc/net/udp (`os_drops`), so overload is accounted for, not hidden;
the bytes waiting in the receive buffer (`queued_bytes`, one getsockopt) tell the live
proxy how far behind it is.

What this module must not do: parse SIP, read a clock, or block the event loop.
"""

from __future__ import annotations

import errno
import os
import socket
import sys
from collections import Counter
from collections.abc import Callable

import anyio
import anyio.lowlevel

from core.events import Address

SO_MEMINFO = getattr(socket, "SO_MEMINFO", 55)  # Linux >= 4.6: sk_meminfo, u32 each
RECEIVE_SIZE = 65_536  # larger than any UDP payload: a datagram is never truncated
BATCH = 64  # datagrams drained per readiness before letting other tasks in


def parse_address(text: str, *, what: str = "address") -> Address:
    """'HOST:PORT' (IPv4 literal or name) -> (host, port); ValueError naming the problem."""
    host, colon, port_text = text.rpartition(":")
    if not colon or not host or not port_text.isdigit():
        raise ValueError(f"{what} {text!r}: write HOST:PORT, e.g. 127.0.0.1:5060")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ValueError(f"{what} {text!r}: port must be in 0..65535")
    return (host.strip("[]"), port)


class UdpSocket:
    """A bound, non-blocking UDP socket (port 0: a free port chosen by the OS)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, rcvbuf: int | None = None):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            if rcvbuf:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            self.sock.bind((host, port))
        except OSError:
            self.sock.close()
            raise
        self.sock.setblocking(False)
        bound = self.sock.getsockname()
        self.address: Address = (bound[0], bound[1])
        self.counters: Counter[str] = Counter()
        self._meminfo = True  # False once SO_MEMINFO proved missing

    def send(self, data: bytes, destination: Address) -> bool:
        """sendto() now; False (counted) if the OS refused it (full buffer, no route)."""
        try:
            self.sock.sendto(data, destination)
        except BlockingIOError:
            self.counters["send buffer full"] += 1
            return False
        except OSError as exc:
            self.counters[f"send error {errno.errorcode.get(exc.errno or 0, exc.errno)}"] += 1
            return False
        self.counters["sent"] += 1
        return True

    async def receive_loop(self, deliver: Callable[[bytes, Address], None]) -> None:
        """Hand every datagram to `deliver(data, source)` until cancelled or closed."""
        sock = self.sock
        while True:
            try:
                await anyio.wait_readable(sock)
            except (anyio.ClosedResourceError, OSError, ValueError):
                return
            if not self.drain(deliver):
                return
            await anyio.lowlevel.checkpoint()

    def drain(self, deliver: Callable[[bytes, Address], None], limit: int = BATCH) -> bool:
        """Read up to `limit` queued datagrams without blocking (until EAGAIN), handing each
        to `deliver`; False once the socket is closed or broken."""
        recvfrom = self.sock.recvfrom
        counters = self.counters
        received = 0
        try:
            for _ in range(limit):
                try:
                    data, source = recvfrom(RECEIVE_SIZE)
                except BlockingIOError:
                    break
                except ConnectionRefusedError:  # ICMP port unreachable from an earlier send
                    counters["icmp unreachable"] += 1
                    continue
                except OSError:
                    return False
                received += 1
                deliver(data, (source[0], source[1]))
        finally:
            if received:
                counters["received"] += received
        return True

    def queued_bytes(self) -> int:
        """Bytes of datagrams waiting in the receive buffer (0 where SO_MEMINFO is missing)."""
        if self._meminfo is False:
            return 0
        try:
            rmem_alloc = self.sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, 4)
            return int.from_bytes(rmem_alloc, sys.byteorder)
        except OSError:
            self._meminfo = False
            return 0

    def os_drops(self) -> int | None:
        """Datagrams the OS dropped for this socket (full receive buffer); None if unknown."""
        try:
            inode = str(_inode(self.sock))
            table = "/proc/net/udp6" if self.sock.family == socket.AF_INET6 else "/proc/net/udp"
            with open(table, encoding="ascii") as lines:
                next(lines)
                for line in lines:
                    fields = line.split()
                    if len(fields) >= 13 and fields[9] == inode:
                        return int(fields[12])
        except (OSError, ValueError, StopIteration):
            return None
        return None

    def close(self) -> None:
        self.sock.close()


def _inode(sock: socket.socket) -> int:
    return os.fstat(sock.fileno()).st_ino
