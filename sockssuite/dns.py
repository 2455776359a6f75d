"""DNS from the firewall: a caching forwarder for the inside hosts.

Built entirely on ``twisted.names`` (no DNS parsing of our own): a
``DNSServerFactory`` with a cache in front of a client resolver that asks the
upstream servers.  It listens on UDP and on TCP at the same address and port.
A query is answered only for clients that the sockd.conf rules would let reach
the upstream DNS server on port 53 (a CONNECT with no user name); others get
REFUSED.
"""

from __future__ import annotations

from twisted.application import service
from twisted.internet import endpoints
from twisted.logger import Logger
from twisted.names import cache, client, dns, server
from twisted.protocols import policies

from . import access
from .server import _client_of
from .service import BoundService, StartError

log = Logger(namespace="sockssuite.dns")


def parse_upstream(text: str) -> tuple[str, int]:
    """``ADDR`` or ``ADDR:PORT`` (IPv4), or ``[ADDR]:PORT`` / ``ADDR`` for IPv6."""
    host, port = text, 53
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest:
            if not rest.startswith(":") or not rest[1:].isdigit():
                raise ValueError(f"{text!r}: expected [ADDR]:PORT")
            port = int(rest[1:])
    elif text.count(":") == 1:
        host, _, p = text.partition(":")
        if not p.isdigit():
            raise ValueError(f"{text!r}: the port must be a number")
        port = int(p)
    if not 1 <= port <= 65535:
        raise ValueError(f"{text!r}: port out of range")
    from twisted.internet.abstract import isIPAddress, isIPv6Address
    if not (isIPAddress(host) or isIPv6Address(host)):
        raise ValueError(f"{text!r}: the upstream must be an IP address")
    return host, port


def system_upstreams(path: str = "/etc/resolv.conf") -> list[tuple[str, int]]:
    """The nameservers of resolv.conf (the default upstreams)."""
    found = []
    try:
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 2 and parts[0] == "nameserver":
                    try:
                        found.append(parse_upstream(parts[1]))
                    except ValueError:
                        continue
    except OSError:
        pass
    return found


#: A UDP answer is at most this big unless the query asks for more with
#: EDNS (RFC 6891), and never over EDNS_MAX: a bigger one goes out truncated
#: (TC set, the client asks again over TCP).  twisted.names sends UDP
#: answers of any size, which makes a forwarder an amplifier.
UDP_ANSWER = 512
EDNS_MAX = 4096
#: TCP connections to the forwarder at once, how long one may go without a
#: whole query, and how many of its queries may wait for their answers
#: (more are not read until answers go out; nor while the answers are not
#: read by the client).
MAX_TCP_CONNECTIONS = 256
TCP_IDLE_TIMEOUT = 30.0
MAX_TCP_PIPELINE = 16
#: Entries of the cache, and the longest an answer is kept whatever its TTL.
MAX_CACHE_ENTRIES = 10000
MAX_CACHE_SECONDS = 3600.0


class _BoundedCache(cache.CacheResolver):
    """twisted.names' cache, bounded: at most ``MAX_CACHE_ENTRIES`` answers
    (the oldest goes first) kept at most ``MAX_CACHE_SECONDS`` (a domain's
    owner chooses its TTLs)."""

    def cacheResult(self, query, payload, cacheTime=None):
        cache.CacheResolver.cacheResult(self, query, payload, cacheTime)
        call = self.cancel.get(query)
        if call is not None and call.active() and call.getTime() - self._reactor.seconds() > MAX_CACHE_SECONDS:
            call.reset(MAX_CACHE_SECONDS)
        while len(self.cache) > MAX_CACHE_ENTRIES:
            oldest = next(iter(self.cache))
            self.cancel[oldest].cancel()
            self.clearEntry(oldest)


class _DNSStream(dns.DNSProtocol, policies.TimeoutMixin):
    """DNS over TCP: closed after ``TCP_IDLE_TIMEOUT`` seconds without a
    whole query (bytes dribbled do not count), and read no further while
    ``MAX_TCP_PIPELINE`` queries wait for their answers or while answers
    pile up unread in the write buffer."""

    waiting = 0  # queries read and not answered yet
    _unread = False  # the transport's buffer of answers is full

    def connectionMade(self):
        self.setTimeout(TCP_IDLE_TIMEOUT)
        dns.DNSProtocol.connectionMade(self)
        self.transport.registerProducer(_AnswersUnread(self), True)

    def stringReceived(self, string):
        self.resetTimeout()
        self.waiting += 1
        self._flow()
        dns.DNSProtocol.stringReceived(self, string)

    def writeMessage(self, message):
        dns.DNSProtocol.writeMessage(self, message)
        self.waiting = max(0, self.waiting - 1)
        self._flow()

    def _flow(self):
        stop = self.waiting >= MAX_TCP_PIPELINE or self._unread
        if stop and not self.paused:
            self.pauseProducing()
        elif not stop and self.paused and self.transport is not None and self.connected:
            self.resumeProducing()

    def connectionLost(self, reason):
        self.setTimeout(None)
        dns.DNSProtocol.connectionLost(self, reason)
        self.factory.tcp_connections -= 1


class _AnswersUnread:
    """The transport's producer for a DNS stream: told to pause when the
    answers written and not yet sent pass the transport's buffer size."""

    def __init__(self, stream):
        self.stream = stream

    def pauseProducing(self):
        self.stream._unread = True
        self.stream._flow()

    def resumeProducing(self):
        self.stream._unread = False
        self.stream._flow()

    def stopProducing(self):
        pass


class _PolicyDNSFactory(server.DNSServerFactory):
    noisy = False
    protocol = _DNSStream

    def __init__(self, owner, **kwargs):
        server.DNSServerFactory.__init__(self, **kwargs)
        self.owner = owner
        self.tcp_connections = 0

    def buildProtocol(self, addr):
        """A TCP connection: refused at once (closed) for a client the rules
        refuse, or beyond MAX_TCP_CONNECTIONS."""
        _, client_host, _ = _client_of(addr)
        if client_host is None or not self.owner.client_allowed(client_host):
            self.owner.refused += 1
            log.info("dns: refused a TCP connection from {client}: no sockd.conf line lets it reach the "
                     "upstream", client=client_host or addr, event="dns-refused")
            return None
        if self.tcp_connections >= MAX_TCP_CONNECTIONS:
            log.info("dns: refused a TCP connection from {client}: {count} open already", client=client_host,
                     count=self.tcp_connections, event="dns-refused")
            return None
        self.tcp_connections += 1
        return server.DNSServerFactory.buildProtocol(self, addr)

    def sendReply(self, protocol, message, address):
        if address is not None:  # UDP: as big as the client said it takes, truncated beyond
            message.maxSize = min(max(message.maxSize or 0, UDP_ANSWER), EDNS_MAX)
        server.DNSServerFactory.sendReply(self, protocol, message, address)

    def allowQuery(self, message, protocol, address):
        if not message.queries:
            return False
        if address is None:  # TCP: the origin is the stream's peer
            peer = protocol.transport.getPeer()
        else:
            from twisted.internet.address import IPv4Address
            peer = IPv4Address("UDP", address[0], address[1]) if "." in address[0] else None
        _, client_host, _ = _client_of(peer) if peer is not None else (None, None, None)
        allowed = client_host is not None and self.owner.client_allowed(client_host)
        if not allowed:
            self.owner.refused += 1
            log.info("dns: refused a query from {client}: no sockd.conf line lets it reach the "
                     "upstream", client=client_host or address, event="dns-refused")
        else:
            self.owner.queries += 1
        return allowed


class DNSForwarderService(BoundService):
    """A caching DNS forwarder on UDP and TCP at one address and port."""

    name = "dns"
    _live = ("_reactor", "ports", "factory", "_cache", "queries", "refused")

    def __init__(self, endpoint: str, upstreams: list[tuple[str, int]], policy: access.AccessPolicy,
                 *, access_path: str | None = None, timeout: float = 10.0, reactor=None):
        self.endpoint = endpoint
        self.upstreams = list(upstreams)
        self.policy = policy
        self.access_path = access_path
        self.timeout = timeout
        self._reset_live()
        self._reactor = reactor

    def _reset_live(self):
        self._reactor = None
        self.ports = []
        self.factory = None
        self._cache = None
        self.queries = 0
        self.refused = 0

    def client_allowed(self, host: str) -> bool:
        upstream = self.upstreams[0][0] if self.upstreams and "." in self.upstreams[0][0] else "0.0.0.0"
        decision = access.decide(self.policy, access.AccessRequest(user="", src=host, dst=upstream, port=53))
        return decision.permitted

    def _bind(self):
        reactor = self.reactor
        resolver = client.Resolver(servers=self.upstreams, reactor=reactor, timeout=(self.timeout,))
        self._cache = _BoundedCache(reactor=reactor)
        self.factory = _PolicyDNSFactory(self, caches=[self._cache], clients=[resolver])
        tcp = endpoints.serverFromString(reactor, self.endpoint)
        failures = []
        d = tcp.listen(self.factory)
        d.addCallbacks(self.ports.append, failures.append)
        if failures:
            raise StartError(f"sockssuite: --dns {self.endpoint}: {failures[0].getErrorMessage()}")
        address = self.ports[0].getHost()
        try:
            self.ports.append(reactor.listenUDP(address.port, dns.DNSDatagramProtocol(self.factory),
                                                interface=address.host, maxPacketSize=65535))
        except Exception as e:
            self.ports[0].stopListening()
            raise StartError(f"sockssuite: --dns {self.endpoint}: cannot listen on UDP "
                             f"{address.host}:{address.port}: {e}")
        log.info("dns forwarder on {host}:{port} (udp and tcp) to {upstreams}", host=address.host,
                 port=address.port, upstreams=", ".join(f"{h}:{p}" for h, p in self.upstreams))

    @property
    def address(self):
        return self.ports[0].getHost() if self.ports else None

    def stopService(self):
        service.Service.stopService(self)
        self._unbound()
        ports, self.ports = self.ports, []
        self.factory = None
        for port in ports:
            port.stopListening()
        if self._cache is not None:  # its expiry timers
            for call in list(self._cache.cancel.values()):
                if call.active():
                    call.cancel()
            self._cache = None

    def reload(self) -> bool:
        if self.access_path is None:
            return True
        try:
            self.policy = access.load_access(self.access_path)
        except access.ConfigError:
            return False  # the SOCKS service logs the file's errors
        return True
