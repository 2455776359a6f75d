"""Name look-ups the server needs, each a Deferred with a timeout.

* :func:`resolve_ipv4` turns a SOCKS4a host name into the one IPv4 address the
  access rules are checked against and the connection then goes to (no second
  resolution between the check and the connect).
* :func:`resolve_address` does the same for SOCKS5, whose replies and
  datagrams can carry IPv6: the IPv4 address when the name has one, else
  its first IPv6 address, when the resolver can look those up (see
  :class:`SystemResolver`).
* :func:`confirmed_name` gives an address's forward-confirmed reverse name
  (PTR, then the name must resolve back to the same address), for sockd.conf
  rules written with host or domain names.  An address without a confirmed name
  gets ``None``, which never matches a name rule: failing reverse DNS can't
  widen access.
"""

from __future__ import annotations

import socket

from twisted.internet import defer, threads
from twisted.internet.abstract import isIPAddress


class ResolutionError(Exception):
    """A host name could not be resolved (in time)."""


class ResolutionTimeout(ResolutionError):
    """A host name was not resolved within the time allowed."""


_MAPPED_PREFIX = b"\0" * 10 + b"\xff\xff"


def normalize_address(text: object) -> str | None:
    """The canonical form of an IPv4 or IPv6 address literal, as the kernel
    reports a datagram's source (dotted quad; lower-case compressed IPv6), with
    an IPv4-mapped IPv6 address as its IPv4 address; None for anything else (a
    name, a zone index, a shortened IPv4 address like ``127.1``)."""
    if not isinstance(text, str):
        return None
    try:
        return socket.inet_ntop(socket.AF_INET, socket.inet_pton(socket.AF_INET, text))
    except (OSError, ValueError):
        pass
    try:
        packed = socket.inet_pton(socket.AF_INET6, text)
    except (OSError, ValueError):
        return None
    if packed.startswith(_MAPPED_PREFIX):
        return socket.inet_ntop(socket.AF_INET, packed[12:])
    return socket.inet_ntop(socket.AF_INET6, packed)


def not_a_datagram_destination(address: str) -> str | None:
    """Why a canonical address (see :func:`normalize_address`) is no place
    to relay a datagram to, whatever the rules say, or None when it is one:
    ``0.0.0.0/8`` and ``::`` ("this host": the proxy's own services),
    multicast (``224.0.0.0/4``, ``ff00::/8``: every listener on a segment at
    once, which no TCP rule could ever reach) and ``240.0.0.0/4`` (reserved,
    and ``255.255.255.255``, broadcast)."""
    if address == "::" or address.startswith("0."):
        return "unspecified address"
    if ":" in address:
        return "multicast address" if address.lower().startswith("ff") else None
    first = int(address.split(".", 1)[0])
    if 224 <= first <= 239:
        return "multicast address"
    if first >= 240:
        return "broadcast or reserved address"
    return None


def resolve_ipv4(resolver, name: str, timeout: float, clock) -> defer.Deferred:
    """Resolve ``name`` with an ``IResolverSimple`` (the reactor's by default)."""
    if isIPAddress(name):
        return defer.succeed(name)
    d = resolver.getHostByName(name, (timeout,))
    d.addTimeout(timeout, clock)

    def failed(f):
        if f.check(defer.CancelledError):
            return f
        if f.check(defer.TimeoutError):
            raise ResolutionTimeout(f"cannot resolve {name} in {timeout:g} s")
        raise ResolutionError(f"cannot resolve {name}: {f.getErrorMessage()}")

    def checked(address):
        if not isIPAddress(address):
            raise ResolutionError(f"{name} resolved to no IPv4 address")
        return address

    return d.addCallbacks(checked, failed)


class SystemResolver:
    """The server's resolver unless one is given: IPv4 look-ups through the
    reactor's ``IResolverSimple`` (``getHostByName``, as Twisted resolves
    names by default, or the resolver installed on the reactor), IPv6 ones
    with ``getaddrinfo`` for ``AF_INET6`` in the reactor's thread pool.

    A resolver without :meth:`getIPv6HostByName` (an ``IResolverSimple``
    given to the server, a test's fake) gives IPv4 only."""

    def __init__(self, reactor, getaddrinfo=socket.getaddrinfo):
        self.reactor = reactor
        self._getaddrinfo = getaddrinfo

    def getHostByName(self, name: str, timeout=()) -> defer.Deferred:
        return self.reactor.resolver.getHostByName(name, timeout)

    def _ipv6_blocking(self, name: str) -> str:
        try:
            infos = self._getaddrinfo(name, None, socket.AF_INET6, socket.SOCK_STREAM)
        except (OSError, UnicodeError) as e:
            raise ResolutionError(f"{name} has no IPv6 address ({getattr(e, 'strerror', None) or e})")
        for family, _, _, _, sockaddr in infos:
            if family == socket.AF_INET6:
                return sockaddr[0]
        raise ResolutionError(f"{name} has no IPv6 address")

    def getIPv6HostByName(self, name: str) -> defer.Deferred:
        """The first IPv6 address of ``name`` (in ``getaddrinfo``'s order);
        fails with :class:`ResolutionError` when it has none.  Cancelling
        (the caller's timeout) drops the answer of the look-up, which goes
        on in its thread."""
        return threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(), self._ipv6_blocking, name)


def resolve_address(resolver, name: str, timeout: float, clock) -> defer.Deferred:
    """``name``'s IPv4 address if it has one, else its first IPv6 address
    (when ``resolver`` has ``getIPv6HostByName``), all within ``timeout``
    seconds; an address literal as it is (canonical, an IPv4-mapped IPv6
    address as its IPv4 address).  IPv4 first: access files are mostly
    written for IPv4, and this is what SOCKS4a clients and earlier versions
    got.  The IPv6 answer is canonical too, so that a mapped address
    (``::ffff:0.0.0.0``) meets the checks for its IPv4 address."""
    literal = normalize_address(name)
    if literal is not None:
        return defer.succeed(literal)
    start = clock.seconds()
    ipv6 = getattr(resolver, "getIPv6HostByName", None)

    def no_ipv4(f):
        if ipv6 is None or not f.check(ResolutionError) or f.check(ResolutionTimeout):
            return f
        left = timeout - (clock.seconds() - start)
        if left <= 0:
            return f
        d6 = ipv6(name)
        d6.addTimeout(left, clock)

        def found(address):
            canonical = normalize_address(address)
            if canonical is None:
                raise ResolutionError(f"{f.getErrorMessage()}; its IPv6 answer {address!r} is not usable")
            return canonical

        def failed(f6):
            if f6.check(defer.CancelledError):
                return f6
            if f6.check(defer.TimeoutError):
                raise ResolutionTimeout(f"{f.getErrorMessage()}; no IPv6 answer in {left:.3g} s")
            raise ResolutionError(f"{f.getErrorMessage()}; {f6.getErrorMessage()}")

        return d6.addCallbacks(found, failed)

    return resolve_ipv4(resolver, name, timeout, clock).addErrback(no_ipv4)


def _confirmed_name_blocking(address: str) -> str | None:
    try:
        name, aliases, _ = socket.gethostbyaddr(address)
    except OSError:
        return None
    for candidate in [name, *aliases]:
        try:
            _, _, addresses = socket.gethostbyname_ex(candidate)
        except OSError:
            continue
        if address in addresses:
            return candidate.rstrip(".").lower()
    return None


def confirmed_name(reactor, address: str, timeout: float) -> defer.Deferred:
    """The forward-confirmed reverse name of ``address``, or ``None``.

    The C library's resolver runs in the reactor's thread pool; a look-up that
    does not finish in ``timeout`` seconds gives ``None``."""
    d = threads.deferToThreadPool(reactor, reactor.getThreadPool(), _confirmed_name_blocking, address)
    d.addTimeout(timeout, reactor)
    return d.addErrback(lambda f: None if f.check(defer.TimeoutError) else f)
