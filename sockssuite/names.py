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
from twisted.internet._resolver import GAIResolver  # the reactor's own, unless one was installed
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
        return "multicast address" if socket.inet_pton(socket.AF_INET6, address)[0] == 0xFF else None
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


#: Name look-ups (forward and reverse) that may run at once in the reactor's
#: thread pool (Twisted's default has 10 threads; password checks take up to
#: 2, see sockssuite.server.PASSWORD_CHECKS), ...
MAX_LOOKUPS = 6
#: ... of them at most this many for one client, whose further look-ups wait
#: (at most LOOKUPS_WAITING_PER_CLIENT of them; more are refused at once).
LOOKUPS_PER_CLIENT = 2
LOOKUPS_WAITING_PER_CLIENT = 32
#: All clients' waiting look-ups together (spoofed UDP sources are many).
LOOKUPS_WAITING = 1024


class LookupLimiter:
    """Runs blocking name look-ups in the reactor's thread pool, bounded.

    A look-up counts until its thread returns, not until its caller stops
    waiting: a timeout or a client that leaves cannot free a thread that is
    still blocked in the C library's resolver, so a client cannot start
    more look-ups than it is allowed by giving up on them.  At most
    ``max_running`` run at once, at most ``per_owner`` for one owner (a
    client address; ``None``: the server's own, bound by the totals only);
    an owner's further look-ups wait, the owners taking turns, and a waiting
    look-up whose caller gives up leaves the queue.  Beyond ``max_waiting``
    waiting for a client, or ``max_waiting_total`` in all, a look-up fails
    at once with :class:`ResolutionError`.

    One limiter a reactor (:func:`limiter_for`): every service of a process
    shares the pool."""

    def __init__(self, reactor, max_running: int = MAX_LOOKUPS, per_owner: int = LOOKUPS_PER_CLIENT,
                 max_waiting: int = LOOKUPS_WAITING_PER_CLIENT, max_waiting_total: int = LOOKUPS_WAITING):
        self.reactor = reactor
        self.max_running, self.per_owner, self.max_waiting = max_running, per_owner, max_waiting
        self.max_waiting_total = max_waiting_total
        self.waiting_total = 0
        self.running = 0
        self.running_for: dict[object, int] = {}
        self.waiting: dict[object, list] = {}  # owner -> [(result, function, args)], in turn order

    def run(self, owner, function, *args) -> defer.Deferred:
        """``function(*args)`` in a thread, when there is room; cancelling
        the result stops waiting for it (not the thread: a running look-up
        keeps its place until it returns; a waiting one leaves the queue).
        The server's own look-ups (owner ``None``: a config file's host
        names) are bound by the totals only."""
        queue = self.waiting.get(owner)
        if queue is None and self._room(owner):
            result = defer.Deferred()
            self._start(owner, result, function, args)
            return result
        if owner is not None and queue is not None and len(queue) >= self.max_waiting:
            return defer.fail(ResolutionError(f"over {self.max_waiting} name look-ups waiting for {owner}"))
        if self.waiting_total >= self.max_waiting_total:
            return defer.fail(ResolutionError(f"over {self.max_waiting_total} name look-ups waiting"))
        result = defer.Deferred(lambda d: self._forget(owner, d))
        self.waiting.setdefault(owner, []).append((result, function, args))
        self.waiting_total += 1
        return result

    def _forget(self, owner, result) -> None:
        """A waiting look-up's caller gave up: it leaves the queue."""
        queue = self.waiting.get(owner)
        if queue is None:
            return
        for index, entry in enumerate(queue):
            if entry[0] is result:
                del queue[index]
                self.waiting_total -= 1
                if not queue:
                    del self.waiting[owner]
                return

    def _room(self, owner) -> bool:
        if self.running >= self.max_running:
            return False
        return owner is None or self.running_for.get(owner, 0) < self.per_owner

    def _start(self, owner, result, function, args):
        try:
            d = threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(), function, *args)
        except Exception:
            result.errback()
            return
        self.running += 1
        self.running_for[owner] = self.running_for.get(owner, 0) + 1

        def returned(outcome):
            self.running -= 1
            left = self.running_for[owner] - 1
            if left:
                self.running_for[owner] = left
            else:
                del self.running_for[owner]
            # The next in line first: a look-up that the caller starts on this
            # answer (IPv6 after IPv4, say) waits its turn like any other.
            self._next()
            if not result.called:
                result.callback(outcome)  # (a Failure goes down the errbacks)

        d.addBoth(returned)

    def _next(self):
        for owner in list(self.waiting):
            if self.running >= self.max_running:
                return
            queue = self.waiting.get(owner)
            if not queue:
                self.waiting.pop(owner, None)
                continue
            if self._room(owner):
                result, function, args = queue.pop(0)
                self.waiting_total -= 1
                # Its turn is taken: to the back of the line.
                del self.waiting[owner]
                if queue:
                    self.waiting[owner] = queue
                self._start(owner, result, function, args)


def limiter_for(reactor) -> LookupLimiter:
    """The process's :class:`LookupLimiter` for ``reactor`` (kept on the
    reactor object, so that it lives as long as the reactor)."""
    limiter = getattr(reactor, "_sockssuite_lookups", None)
    if limiter is None:
        limiter = LookupLimiter(reactor)
        try:
            reactor._sockssuite_lookups = limiter
        except AttributeError:
            pass  # a reactor that takes no attributes: a limiter of its own each time
    return limiter


class SystemResolver:
    """The server's resolver unless one is given: ``getaddrinfo`` for
    ``AF_INET`` (:meth:`getHostByName`) and for ``AF_INET6``
    (:meth:`getIPv6HostByName`) in the reactor's thread pool, through the
    process's :class:`LookupLimiter`.  When a resolver has been installed
    on the reactor (``reactor.installResolver``, twisted.names for example),
    IPv4 look-ups go to it instead.

    :meth:`for_owner` gives the view of one client, whose look-ups are
    limited as that client's.  A resolver without ``getIPv6HostByName``
    (an ``IResolverSimple`` given to the server, a test's fake) gives IPv4
    only."""

    def __init__(self, reactor, getaddrinfo=socket.getaddrinfo, limiter: LookupLimiter | None = None,
                 owner=None):
        self.reactor = reactor
        self._getaddrinfo = getaddrinfo
        self.limiter = limiter if limiter is not None else limiter_for(reactor)
        self.owner = owner

    def for_owner(self, owner) -> SystemResolver:
        return SystemResolver(self.reactor, self._getaddrinfo, self.limiter, owner)

    def getHostByName(self, name: str, timeout=()) -> defer.Deferred:
        if not isinstance(getattr(self.reactor, "nameResolver", None), GAIResolver):
            return self.reactor.resolver.getHostByName(name, timeout)  # an installed resolver
        return self.limiter.run(self.owner, self._blocking, name, socket.AF_INET)

    def getIPv6HostByName(self, name: str) -> defer.Deferred:
        """The first IPv6 address of ``name`` (in ``getaddrinfo``'s order);
        fails with :class:`ResolutionError` when it has none.  Cancelling
        (the caller's timeout) drops the answer of the look-up, which goes
        on in its thread."""
        return self.limiter.run(self.owner, self._blocking, name, socket.AF_INET6)

    def _blocking(self, name: str, family: int) -> str:
        kind = "IPv6" if family == socket.AF_INET6 else "IPv4"
        try:
            infos = self._getaddrinfo(name, None, family, socket.SOCK_STREAM)
        except (OSError, UnicodeError) as e:
            raise ResolutionError(f"{name} has no {kind} address ({getattr(e, 'strerror', None) or e})")
        for info_family, _, _, _, sockaddr in infos:
            if info_family == family:
                return sockaddr[0]
        raise ResolutionError(f"{name} has no {kind} address")


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


def confirmed_name(reactor, address: str, timeout: float, owner=None) -> defer.Deferred:
    """The forward-confirmed reverse name of ``address``, or ``None``.

    The C library's resolver runs in the reactor's thread pool, bounded as
    ``owner``'s look-up (see :class:`LookupLimiter`); a look-up that does not
    finish in ``timeout`` seconds, or that the limiter refuses, gives
    ``None``: no name, which never widens access."""
    d = limiter_for(reactor).run(owner, _confirmed_name_blocking, address)
    d.addTimeout(timeout, reactor)
    return d.addErrback(lambda f: None if f.check(defer.TimeoutError, ResolutionError) else f)
