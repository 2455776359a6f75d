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
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.address import IPv6Address


class ResolutionError(Exception):
    """A host name could not be resolved (in time)."""


def resolve_ipv4(resolver, name: str, timeout: float, clock) -> defer.Deferred:
    """Resolve ``name`` with an ``IResolverSimple`` (the reactor's by default)."""
    if isIPAddress(name):
        return defer.succeed(name)
    d = resolver.getHostByName(name, (timeout,))
    d.addTimeout(timeout, clock)

    def failed(f):
        if f.check(defer.CancelledError):
            return f
        raise ResolutionError(f"cannot resolve {name}: {f.getErrorMessage()}")

    def checked(address):
        if not isIPAddress(address):
            raise ResolutionError(f"{name} resolved to no IPv4 address")
        return address

    return d.addCallbacks(checked, failed)


class SystemResolver:
    """The server's resolver unless one is given: IPv4 look-ups through the
    reactor's ``IResolverSimple`` (``getHostByName``, as Twisted resolves
    names by default), IPv6 ones through its ``IHostnameResolver``
    (``getaddrinfo`` for ``AF_INET6`` in the thread pool).

    A resolver without :meth:`getIPv6HostByName` (an ``IResolverSimple``
    given to the server, a test's fake) gives IPv4 only."""

    def __init__(self, reactor):
        self.reactor = reactor

    def getHostByName(self, name: str, timeout=()) -> defer.Deferred:
        return self.reactor.resolver.getHostByName(name, timeout)

    def getIPv6HostByName(self, name: str) -> defer.Deferred:
        """The first IPv6 address of ``name``; fails with
        :class:`ResolutionError` when it has none.  Not cancellable (the
        look-up runs in a thread): the caller's timeout drops a late answer."""
        d = defer.Deferred()
        found = []

        class Receiver:
            def resolutionBegan(self, resolution):
                pass

            def addressResolved(self, address):
                if isinstance(address, IPv6Address):
                    found.append(address.host)

            def resolutionComplete(self):
                if d.called:
                    return  # timed out already
                if found:
                    d.callback(found[0])
                else:
                    d.errback(ResolutionError(f"{name} has no IPv6 address"))

        self.reactor.nameResolver.resolveHostName(Receiver(), name, 0, addressTypes=[IPv6Address])
        return d


def resolve_address(resolver, name: str, timeout: float, clock) -> defer.Deferred:
    """``name``'s IPv4 address if it has one, else its first IPv6 address
    (when ``resolver`` has ``getIPv6HostByName``), all within ``timeout``
    seconds.  IPv4 first: access files are mostly written for IPv4, and
    this is what SOCKS4a clients and earlier versions got."""
    if isIPAddress(name) or isIPv6Address(name):
        return defer.succeed(name)
    start = clock.seconds()
    ipv6 = getattr(resolver, "getIPv6HostByName", None)

    def no_ipv4(f):
        if ipv6 is None or not f.check(ResolutionError):
            return f
        left = timeout - (clock.seconds() - start)
        if left <= 0:
            return f
        d6 = ipv6(name)
        d6.addTimeout(left, clock)

        def failed(f6):
            if f6.check(defer.CancelledError, defer.TimeoutError):
                return f6
            raise ResolutionError(f"{f.getErrorMessage()}; {f6.getErrorMessage()}")

        return d6.addErrback(failed)

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
