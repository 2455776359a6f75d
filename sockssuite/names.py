"""Name look-ups the server needs, each a Deferred with a timeout.

* :func:`resolve_ipv4` turns a SOCKS4a host name into the one IPv4 address the
  access rules are checked against and the connection then goes to (no second
  resolution between the check and the connect).
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
