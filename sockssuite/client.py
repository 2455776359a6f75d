"""SOCKS client side for Twisted programs: "sockified" connections.

* :class:`SOCKS4ClientEndpoint` — an ``IStreamClientEndpoint`` that reaches
  ``host:port`` through a SOCKS4 server (itself reached through any client
  endpoint).  Host names go to the server as SOCKS4a unless ``socks4a=False``.
* :class:`SOCKS5ClientEndpoint` — the same through a SOCKS5 server (RFC 1928),
  with username/password authentication (RFC 1929) when credentials are
  given; IPv4 and IPv6 destinations, and host names sent as names unless
  ``remote_dns=False``.
* :func:`socks4_bind`, :func:`socks5_bind` — ask a SOCKS server to listen for
  one inbound connection (SOCKS BIND, e.g. the data connection of active-mode
  FTP) and give the address to announce to the peer plus a Deferred for the
  connection.

* :class:`RoutedEndpoint` — an ``IStreamClientEndpoint`` that applies a
  socks.conf (:mod:`sockssuite.routing`): ``direct`` connects straight,
  ``deny`` fails with :class:`RouteDenied`, ``sockd`` tries the line's SOCKS
  servers in order (each in the version its entry names), skipping those that
  refuse or do not answer in time.

Refusals become distinct exceptions, all subclasses of :class:`SOCKSError`:
for SOCKS4 :class:`SOCKSRejected` (91), :class:`SOCKSIdentUnreachable` (92)
and :class:`SOCKSIdentMismatch` (93); for SOCKS5 one subclass of
:class:`SOCKS5ReplyError` per reply code, and :class:`SOCKSNoAcceptableMethod`
and :class:`SOCKSAuthenticationFailed` for authentication.

The handshakes themselves are sans-IO (bytes in, bytes and replies out, over
the codecs of :mod:`sockssuite.wire`); one Twisted protocol drives either.
"""

from __future__ import annotations

import getpass
import os
import socket
import weakref
from dataclasses import dataclass

from twisted.internet import defer, endpoints, error, interfaces, protocol
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.address import HostnameAddress, IPv4Address, IPv6Address
from twisted.internet.interfaces import IResolutionReceiver
from twisted.logger import Logger
from zope.interface import implementer

from . import routing
from .connecting import connect_protocol
from .wire import socks4
from .wire import socks5 as wire5

_log = Logger(namespace="sockssuite.client")


# --------------------------------------------------------------------------- exceptions


class SOCKSError(Exception):
    """The SOCKS server refused or failed the request."""

    code: int | None = None


class SOCKSRejected(SOCKSError):
    """Reply 91: rejected by the server's rules, or the server failed.  Also
    the base of :class:`SOCKS5NotAllowed`, the SOCKS5 "not allowed by the
    rules", so that one ``except SOCKSRejected`` serves both versions."""

    code = socks4.REJECTED


class SOCKSIdentUnreachable(SOCKSError):
    """Reply 92: the server could not reach this host's identd."""

    code = socks4.NO_IDENTD


class SOCKSIdentMismatch(SOCKSError):
    """Reply 93: this host's identd reports another user than the one sent."""

    code = socks4.BAD_IDENT


class SOCKSProtocolError(SOCKSError):
    """The server's answer is not in the SOCKS version spoken to it, or it
    closed during the handshake."""


_ERRORS = {c.code: c for c in (SOCKSRejected, SOCKSIdentUnreachable, SOCKSIdentMismatch)}


def error_for(reply: socks4.Reply) -> SOCKSError:
    cls = _ERRORS.get(reply.code, SOCKSProtocolError)
    return cls(f"SOCKS server replied {reply.code}")


class SOCKS5ReplyError(SOCKSError):
    """A SOCKS5 server answered the request with a failure: ``code`` is the
    RFC 1928 reply code, ``meaning`` its words.  Codes 1 to 8 have a subclass
    each; another code is raised as this class itself."""

    meaning = "unassigned reply code"

    def __init__(self, message: str | None = None, code: int | None = None):
        if code is not None:
            self.code = code
        super().__init__(message or f"SOCKS5 server replied {self.code} ({self.meaning})")


class SOCKS5GeneralFailure(SOCKS5ReplyError):
    """Reply 1: general SOCKS server failure (for our server: its limits)."""

    code = wire5.GENERAL_FAILURE
    meaning = "general SOCKS server failure"


class SOCKS5NotAllowed(SOCKS5ReplyError, SOCKSRejected):
    """Reply 2: the server's rules do not allow the request.  Also a
    :class:`SOCKSRejected`."""

    code = wire5.NOT_ALLOWED
    meaning = "not allowed by the server's rules"


class SOCKS5NetworkUnreachable(SOCKS5ReplyError):
    """Reply 3: the server cannot reach the destination's network."""

    code = wire5.NETWORK_UNREACHABLE
    meaning = "network unreachable"


class SOCKS5HostUnreachable(SOCKS5ReplyError):
    """Reply 4: the destination host is unreachable, or its name does not
    resolve at the server."""

    code = wire5.HOST_UNREACHABLE
    meaning = "host unreachable"


class SOCKS5ConnectionRefused(SOCKS5ReplyError):
    """Reply 5: the destination refused the server's connection."""

    code = wire5.CONNECTION_REFUSED
    meaning = "connection refused by the destination"


class SOCKS5TTLExpired(SOCKS5ReplyError):
    """Reply 6: TTL expired (for our server: a BIND that no peer reached in
    time)."""

    code = wire5.TTL_EXPIRED
    meaning = "TTL expired"


class SOCKS5CommandNotSupported(SOCKS5ReplyError):
    """Reply 7: the server does not support the command."""

    code = wire5.COMMAND_NOT_SUPPORTED
    meaning = "command not supported"


class SOCKS5AddressTypeNotSupported(SOCKS5ReplyError):
    """Reply 8: the server does not support the address type (an IPv6
    destination, or a name, for some servers)."""

    code = wire5.ADDRESS_TYPE_NOT_SUPPORTED
    meaning = "address type not supported"


_SOCKS5_ERRORS = {c.code: c for c in (
    SOCKS5GeneralFailure, SOCKS5NotAllowed, SOCKS5NetworkUnreachable, SOCKS5HostUnreachable,
    SOCKS5ConnectionRefused, SOCKS5TTLExpired, SOCKS5CommandNotSupported, SOCKS5AddressTypeNotSupported)}


def socks5_error_for(code: int) -> SOCKS5ReplyError:
    """The exception for SOCKS5 reply ``code`` (not 0)."""
    cls = _SOCKS5_ERRORS.get(code)
    return cls() if cls is not None else SOCKS5ReplyError(code=code)


class SOCKSAuthenticationError(SOCKSError):
    """A SOCKS5 server did not accept this client's authentication."""


class SOCKSNoAcceptableMethod(SOCKSAuthenticationError):
    """The SOCKS5 server accepts none of the authentication methods offered
    (it answered 255): typically it requires a user name and password and
    none were given.  ``offered`` holds the method numbers offered."""

    def __init__(self, offered: bytes):
        self.offered = bytes(offered)
        if wire5.USERNAME_PASSWORD in self.offered:
            text = ("the SOCKS5 server accepts none of the authentication methods offered "
                    "(none, user name and password)")
        else:
            text = "the SOCKS5 server requires authentication, and no user name and password were given"
        super().__init__(text)


class SOCKSAuthenticationFailed(SOCKSAuthenticationError):
    """The SOCKS5 server refused the user name and password (RFC 1929
    status not 0).  ``username`` is the name sent; the password is never
    kept in the exception."""

    def __init__(self, username: bytes):
        self.username = username
        shown = username.decode("utf-8", "backslashreplace")
        super().__init__(f"the SOCKS5 server refused user name {shown!r} or its password")


# --------------------------------------------------------------------------- the handshakes (sans-IO)


class _SOCKS4Negotiation:
    """The client side of SOCKS4: the request, then ``replies`` replies of 8
    bytes (two for BIND).  ``feed`` returns the bytes to send and the
    ``(host, port)`` of each granted reply completed; refusals raise."""

    version = 4

    def __init__(self, request: bytes, replies: int = 1):
        self.request = request
        self.expected = replies
        self.granted = 0
        self.buffer = b""

    @property
    def done(self) -> bool:
        return self.granted == self.expected

    def start(self) -> bytes:
        return self.request

    def feed(self, data: bytes) -> tuple[bytes, list[tuple[str, int]]]:
        self.buffer += data
        granted = []
        while len(self.buffer) >= 8 and not self.done:
            raw, self.buffer = self.buffer[:8], self.buffer[8:]
            try:
                reply = socks4.decode_reply(raw)
            except socks4.ProtocolError as e:
                raise SOCKSProtocolError(str(e)) from None
            if reply.code != socks4.GRANTED:
                raise error_for(reply)
            self.granted += 1
            granted.append((reply.address, reply.port))
        return b"", granted

    def leftover(self) -> bytes:
        rest, self.buffer = self.buffer, b""
        return rest


class _SOCKS5Negotiation:
    """The client side of SOCKS5 (RFC 1928): greeting, method choice,
    username/password sub-negotiation (RFC 1929) when the server chose it,
    then the request and ``replies`` replies (two for BIND).  Offers "no
    authentication", and username/password too when ``credentials`` are
    given.  Same contract as :class:`_SOCKS4Negotiation`."""

    version = 5

    def __init__(self, request: bytes, credentials: tuple[bytes, bytes] | None, replies: int = 1):
        self.request = request
        self.credentials = credentials
        self.expected = replies
        self.granted = 0
        self.offered = bytes([wire5.NO_AUTH]) + (bytes([wire5.USERNAME_PASSWORD]) if credentials else b"")
        self.stage = "method"
        self.buffer = bytearray()

    @property
    def done(self) -> bool:
        return self.granted == self.expected

    def start(self) -> bytes:
        return wire5.encode_greeting(self.offered)

    def feed(self, data: bytes) -> tuple[bytes, list[tuple[str, int]]]:
        self.buffer += data
        out = bytearray()
        granted = []
        while not self.done:
            if self.stage != "reply":
                if len(self.buffer) < 2:
                    break
                first, second = self.buffer[0], self.buffer[1]
                del self.buffer[:2]
                out += self._method(first, second) if self.stage == "method" else self._status(second)
                continue
            if len(self.buffer) >= 2 and self.buffer[0] == wire5.VERSION and self.buffer[1] != wire5.SUCCEEDED:
                # A failure is final whatever address follows it (and some
                # servers close right after these two bytes).
                raise socks5_error_for(self.buffer[1])
            parser = wire5.ReplyParser()
            try:
                reply = parser.feed(bytes(self.buffer))
            except wire5.SOCKS5Error as e:
                raise SOCKSProtocolError(f"malformed SOCKS5 reply: {e}") from None
            if reply is None:
                break
            self.buffer = bytearray(parser.leftover)
            self.granted += 1
            granted.append((reply.host, reply.port))
        return bytes(out), granted

    def _method(self, version: int, method: int) -> bytes:
        if version != wire5.VERSION:
            raise SOCKSProtocolError(f"the server answered the SOCKS5 greeting with version {version}: "
                                     f"not a SOCKS5 server")
        if method == wire5.NO_ACCEPTABLE:
            raise SOCKSNoAcceptableMethod(self.offered)
        if method not in self.offered:
            raise SOCKSProtocolError(f"the SOCKS5 server chose authentication method {method}, "
                                     f"which was not offered")
        if method == wire5.USERNAME_PASSWORD:
            self.stage = "auth"
            return wire5.encode_credentials(*self.credentials)
        self.stage = "reply"
        return self.request

    def _status(self, status: int) -> bytes:
        # RFC 1929's answer is VER STATUS with VER 1; some servers send 5
        # there.  What matters is STATUS.
        if status != 0:
            raise SOCKSAuthenticationFailed(self.credentials[0])
        self.stage = "reply"
        return self.request

    def leftover(self) -> bytes:
        rest, self.buffer = bytes(self.buffer), bytearray()
        return rest


def _peer_address(host: str, port: int):
    """The Twisted address for a reply's bound address."""
    if isIPv6Address(host):
        return IPv6Address("TCP", host, port)
    if isIPAddress(host):
        return IPv4Address("TCP", host, port)
    return HostnameAddress(host.encode("ascii", "replace"), port)


@implementer(interfaces.IHalfCloseableProtocol)
class _Handshake(protocol.Protocol):
    """Drives a negotiation (:class:`_SOCKS4Negotiation` or
    :class:`_SOCKS5Negotiation`) on the connection to the proxy, then hands
    the transport over to the application protocol and forwards everything
    to it."""

    def __init__(self, negotiation, factory, first_reply=None):
        self.negotiation = negotiation
        self.factory = factory
        self.first_reply = first_reply  # Deferred for BIND's first reply
        self.ready = defer.Deferred(self._cancel)
        self.replies: list[tuple[str, int]] = []
        self.wrapped = None

    def _cancel(self, d):
        if self.transport is not None:
            self.transport.abortConnection()

    def connectionMade(self):
        self.transport.write(self.negotiation.start())

    def dataReceived(self, data):
        if self.wrapped is not None:
            self.wrapped.dataReceived(data)
            return
        if self.ready.called:
            return  # failed or cancelled: the connection is closing
        try:
            out, replies = self.negotiation.feed(data)
        except SOCKSError as e:
            self._fail(e)
            return
        if out:
            self.transport.write(out)
        for reply in replies:
            self.replies.append(reply)
            if len(self.replies) == 1 and self.first_reply is not None:
                first, self.first_reply = self.first_reply, None
                first.callback(reply)
        if self.negotiation.done and not self.ready.called:
            self._start_application()

    def _start_application(self):
        wrapped = self.factory.buildProtocol(_peer_address(*self.replies[-1]))
        if wrapped is None:
            self.transport.loseConnection()
            self.ready.errback(SOCKSError("the protocol factory refused the connection"))
            return
        self.wrapped = wrapped
        wrapped.makeConnection(self.transport)
        rest = self.negotiation.leftover()
        self.ready.callback(wrapped)
        if rest:
            wrapped.dataReceived(rest)

    def _fail(self, error):
        self.transport.loseConnection()
        self._errback(error)

    def _errback(self, error):
        first, self.first_reply = self.first_reply, None
        if first is not None and not first.called:
            # The caller never saw `ready` (BIND failed before its first
            # reply): the error is reported once, through `first`.
            self.ready.addErrback(lambda f: None)
            first.errback(error)
        if not self.ready.called:
            self.ready.errback(error)

    def readConnectionLost(self):
        if self.wrapped is not None and interfaces.IHalfCloseableProtocol.providedBy(self.wrapped):
            self.wrapped.readConnectionLost()
        else:
            self.transport.loseConnection()

    def writeConnectionLost(self):
        if self.wrapped is not None and interfaces.IHalfCloseableProtocol.providedBy(self.wrapped):
            self.wrapped.writeConnectionLost()

    def connectionLost(self, reason):
        if self.wrapped is not None:
            self.wrapped.connectionLost(reason)
            return
        self._errback(SOCKSProtocolError(f"SOCKS server closed the connection during the handshake "
                                         f"({reason.getErrorMessage()})"))


def _through(proxy_endpoint, negotiation, factory) -> defer.Deferred:
    """Connect to the proxy, negotiate, and fire with the application protocol."""
    handshake = _Handshake(negotiation, factory)
    connecting = connect_protocol(proxy_endpoint, handshake)

    def connected(_):
        return handshake.ready

    return connecting.addCallback(connected)


# --------------------------------------------------------------------------- SOCKS4


def _request(command: int, host: str, port: int, user: bytes, socks4a: bool | None) -> bytes:
    if isinstance(user, str):
        user = user.encode("utf-8")
    if isIPAddress(host):
        return socks4.encode_request(command, port, host, userid=user)
    if socks4a is False:
        raise ValueError(f"{host!r} is a name and socks4a=False: resolve it first")
    return socks4.encode_request(command, port, userid=user, hostname=host)


@implementer(interfaces.IStreamClientEndpoint)
class SOCKS4ClientEndpoint:
    """Connect to ``host:port`` through the SOCKS4 server at ``proxy_endpoint``.

    ``host`` may be an IPv4 address or a name; names are sent as SOCKS4a (the
    server resolves them) unless ``socks4a=False``, which refuses names.
    ``user`` is the SOCKS USERID.  ``connect()`` fires with the application
    protocol once the server granted (90), or fails with a :class:`SOCKSError`.
    """

    def __init__(self, proxy_endpoint, host: str, port: int, *, user: bytes | str = b"",
                 socks4a: bool | None = None):
        self.proxy_endpoint = proxy_endpoint
        self.host = host
        self.port = port
        self.user = user
        self.socks4a = socks4a
        # Fail early, in the caller, on what the wire cannot carry.
        _request(socks4.CONNECT, host, port, user, socks4a)

    def connect(self, protocolFactory):
        request = _request(socks4.CONNECT, self.host, self.port, self.user, self.socks4a)
        return _through(self.proxy_endpoint, _SOCKS4Negotiation(request), protocolFactory)


@dataclass
class BindResult:
    """What :func:`socks4_bind` and :func:`socks5_bind` give: the ``address``
    ``(host, port)`` the server listens on — announce it to the peer — and
    ``connected``, a Deferred firing with the application protocol when the
    peer connects (or failing with :class:`SOCKSError`)."""

    address: tuple[str, int]
    connected: defer.Deferred


#: Bound addresses that mean "the SOCKS server's own address".
_UNSPECIFIED = ("0.0.0.0", "::")


def _bind(proxy_endpoint, negotiation, protocol_factory) -> defer.Deferred:
    first = defer.Deferred()
    handshake = _Handshake(negotiation, protocol_factory, first_reply=first)

    def bound(reply):
        address, port = reply
        if address in _UNSPECIFIED:
            # "Use the SOCKS server's address" (SOCKS4 protocol document).
            address = handshake.transport.getPeer().host
        return BindResult((address, port), handshake.ready)

    def connected(_):
        return first.addCallback(bound)

    def failed(f):
        if not first.called:
            first.cancel()
        return f

    return connect_protocol(proxy_endpoint, handshake).addCallbacks(connected, failed)


def socks4_bind(proxy_endpoint, peer_host: str, peer_port: int, protocol_factory, *,
                user: bytes | str = b"") -> defer.Deferred:
    """SOCKS BIND: ask the server at ``proxy_endpoint`` to accept one
    connection from ``peer_host`` (the application server of the primary
    connection; ``peer_port`` is that connection's port).  Fires with a
    :class:`BindResult` after the first reply."""
    request = _request(socks4.BIND, peer_host, peer_port, user, None)
    return _bind(proxy_endpoint, _SOCKS4Negotiation(request, replies=2), protocol_factory)


# --------------------------------------------------------------------------- SOCKS5

#: Where SOCKS5 credentials are looked for, first set first: the names
#: Dante's client library (socksify) reads.
USERNAME_VARIABLES = ("SOCKS_USERNAME", "SOCKS_USER", "SOCKS5_USER")
PASSWORD_VARIABLES = ("SOCKS_PASSWORD", "SOCKS_PASSWD", "SOCKS5_PASSWD")


def credentials_from_environment(environ=None) -> tuple[str | None, str | None]:
    """``(username, password)`` for SOCKS5 servers from the environment, as
    Dante's socksify reads them: the first non-empty of ``SOCKS_USERNAME``,
    ``SOCKS_USER``, ``SOCKS5_USER``, and of ``SOCKS_PASSWORD``,
    ``SOCKS_PASSWD``, ``SOCKS5_PASSWD``; ``None`` for what is not set."""
    environ = os.environ if environ is None else environ

    def first(names):
        for name in names:
            value = environ.get(name)
            if value:
                return value
        return None

    return first(USERNAME_VARIABLES), first(PASSWORD_VARIABLES)


def _credentials(username, password) -> tuple[bytes, bytes] | None:
    if username is None and password is None:
        return None
    if username is None or password is None:
        raise ValueError("give both a SOCKS5 user name and a password, or neither")
    encoded = tuple(v.encode("utf-8") if isinstance(v, str) else bytes(v) for v in (username, password))
    try:
        wire5.encode_credentials(*encoded)
    except ValueError:
        raise ValueError("SOCKS5 credentials: the user name must be 1 to 255 bytes, "
                         "the password at most 255 bytes (UTF-8)") from None
    return encoded


@implementer(IResolutionReceiver)
class _Addresses:
    def __init__(self, result: defer.Deferred):
        self.result = result
        self.hosts: list[str] = []

    def resolutionBegan(self, resolution):
        pass

    def addressResolved(self, address):
        if address.host not in self.hosts:
            self.hosts.append(address.host)

    def resolutionComplete(self):
        # The caller may have given up (timeout) before the resolver finished.
        if not self.result.called:
            self.result.callback(self.hosts)


def _resolve(resolver, name: str, port: int, address_types) -> defer.Deferred:
    """Fires with the addresses ``name`` resolves to (possibly none)."""
    result = defer.Deferred()
    resolver.resolveHostName(_Addresses(result), name, port, addressTypes=address_types,
                             transportSemantics="TCP")
    return result


@implementer(interfaces.IStreamClientEndpoint)
class SOCKS5ClientEndpoint:
    """Connect to ``host:port`` through the SOCKS5 server at ``proxy_endpoint``.

    ``host`` may be an IPv4 or IPv6 address or a host name.  A name is sent
    as a name (the server resolves it) unless ``remote_dns=False``: it is then
    resolved here, through ``reactor.nameResolver``, and its first address
    sent.  With ``username`` and ``password`` (str, encoded as UTF-8, or
    bytes) the client offers username/password authentication (RFC 1929)
    besides "no authentication"; the server chooses.  ``connect()`` fires
    with the application protocol once the server succeeded (reply 0), or
    fails with a :class:`SOCKSError`: a :class:`SOCKS5ReplyError` subclass
    for a failure reply, :class:`SOCKSNoAcceptableMethod` or
    :class:`SOCKSAuthenticationFailed`, :class:`SOCKSProtocolError`.
    """

    def __init__(self, proxy_endpoint, host: str, port: int, *, username: str | bytes | None = None,
                 password: str | bytes | None = None, remote_dns: bool = True, reactor=None):
        self.proxy_endpoint = proxy_endpoint
        self.host = host
        self.port = port
        self.remote_dns = remote_dns
        self.reactor = reactor
        self._credentials = _credentials(username, password)
        self.username = None if self._credentials is None else self._credentials[0]
        self._literal = isIPAddress(host) or isIPv6Address(host)
        # Fail early, in the caller, on what the wire cannot carry.
        if self._literal or remote_dns:
            wire5.encode_request(wire5.CONNECT, host, port)
        elif not 0 <= port <= 0xFFFF:
            raise ValueError(f"port {port} out of range")

    def _negotiation(self, host: str) -> _SOCKS5Negotiation:
        return _SOCKS5Negotiation(wire5.encode_request(wire5.CONNECT, host, self.port), self._credentials)

    def connect(self, protocolFactory):
        if self._literal or self.remote_dns:
            return _through(self.proxy_endpoint, self._negotiation(self.host), protocolFactory)
        reactor = self.reactor
        if reactor is None:
            from twisted.internet import reactor
        resolving = _resolve(reactor.nameResolver, self.host, self.port, [IPv4Address, IPv6Address])

        def resolved(hosts):
            if not hosts:
                raise error.DNSLookupError(f"{self.host} does not resolve here (remote_dns=False)")
            return _through(self.proxy_endpoint, self._negotiation(hosts[0]), protocolFactory)

        return resolving.addCallback(resolved)


def socks5_bind(proxy_endpoint, peer_host: str, peer_port: int, protocol_factory, *,
                username: str | bytes | None = None, password: str | bytes | None = None) -> defer.Deferred:
    """SOCKS5 BIND (RFC 1928): like :func:`socks4_bind` through a SOCKS5
    server, with the same credentials as :class:`SOCKS5ClientEndpoint`.
    ``peer_host`` may be an IPv4 or IPv6 address or a name."""
    request = wire5.encode_request(wire5.BIND, peer_host, peer_port)
    negotiation = _SOCKS5Negotiation(request, _credentials(username, password), replies=2)
    return _bind(proxy_endpoint, negotiation, protocol_factory)


# --------------------------------------------------------------------------- socks.conf routing


class RouteDenied(error.ConnectError):
    """socks.conf refuses this destination: a ``deny`` line matched, or no
    line did.  ``decision`` is the :class:`sockssuite.routing.RouteDecision`;
    ``lineno`` the deciding line's number (``None`` when no line matched).
    A :class:`twisted.internet.error.ConnectError`, as the original library
    made the connect fail with "connection refused"."""

    MESSAGE = "socks.conf denies the connection"

    def __init__(self, decision, host: str, port: int):
        self.decision = decision
        self.host = host
        self.port = port
        super().__init__(string=_denial_text(decision, host, port))

    @property
    def lineno(self) -> int | None:
        return self.decision.lineno

    def __str__(self) -> str:
        return self.args[0]


def _destination(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _denial_text(decision, host, port) -> str:
    where = _destination(host, port)
    if decision.rule is None:
        return f"socks.conf denies {where}: {decision.reason}"
    return f"socks.conf denies {where}: line {decision.rule.lineno}: {decision.rule.text.strip()}"


class NoSOCKSServerReachable(error.ConnectError):
    """Every SOCKS server of the deciding ``sockd`` line failed before a SOCKS
    answer: refused the connection, did not answer within the timeout, did not
    resolve, or did not speak the SOCKS version its entry names (or, for an
    IPv6 destination, was a SOCKS4 server).  ``attempts`` lists
    ``(server, reason)`` in the order tried; ``decision`` is the route
    decision."""

    MESSAGE = "no SOCKS server reachable"

    def __init__(self, decision, host: str, port: int, attempts):
        self.decision = decision
        self.host = host
        self.port = port
        self.attempts = tuple(attempts)
        tried = "; ".join(f"{server} {reason}" for server, reason in self.attempts) or "no servers"
        line = f" (line {decision.lineno})" if decision.lineno is not None else ""
        super().__init__(string=f"no SOCKS server reachable for {_destination(host, port)}{line}: {tried}")

    def __str__(self) -> str:
        return self.args[0]


class _Skip(Exception):
    """This server is unusable for now: try the next one."""


def local_user() -> str:
    """The name of the user running this process (what the original client
    library matched ``*=`` lists against and sent as USERID)."""
    try:
        return getpass.getuser()
    except Exception:  # no LOGNAME/USER and no passwd entry
        return str(os.getuid())


_SHARED_FAILURES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def shared_failures(reactor) -> routing.RecentFailures:
    """The failure memory :class:`RoutedEndpoint` uses by default: one per
    reactor, shared by every endpoint, so a dead server found by one
    connection is tried last by the next ones too."""
    memory = _SHARED_FAILURES.get(reactor)
    if memory is None:
        memory = _SHARED_FAILURES[reactor] = routing.RecentFailures(reactor)
    return memory


def _server_key(entry) -> tuple:
    return ("server", entry.host, entry.port)


def _address_key(address: str, port: int) -> tuple:
    return ("address", address, port)


@implementer(interfaces.IStreamClientEndpoint)
class RoutedEndpoint:
    """Connect to ``host:port`` the way a socks.conf says.

    ``routes`` is a parsed socks.conf (:func:`sockssuite.routing.load_socks_conf`)
    or ``None`` for "no file" (everything goes direct).  The first matching
    line decides:

    * ``direct`` — a plain ``HostnameEndpoint`` connection;
    * ``deny`` (or no line matched) — ``connect()`` fails with
      :class:`RouteDenied`, naming the line;
    * ``sockd`` — the line's servers (or ``default_server``) are tried in
      order, and for a server name every address it resolves to in turn,
      each through :class:`SOCKS4ClientEndpoint` or, for an entry written
      ``socks5://``, :class:`SOCKS5ClientEndpoint`.  A server that refuses
      the TCP connection, does not resolve, closes or speaks something else
      than its entry's SOCKS version, or does not answer within ``timeout``
      seconds is skipped.  A SOCKS refusal (91/92/93, a SOCKS5 failure reply)
      or a SOCKS5 authentication failure is final and fails ``connect()``
      with that :class:`SOCKSError`.  When every server failed, ``connect()``
      fails with :class:`NoSOCKSServerReachable`.  Servers that failed
      recently (``failures``, shared per reactor by default) are tried last,
      so a dead server costs one timeout, not one per connection.  An IPv6
      destination goes through SOCKS5 servers only: SOCKS4 ones are skipped,
      and a line with SOCKS4 servers only raises :exc:`ValueError`.

    ``user`` is both the local user for ``*=`` lists and the SOCKS4 USERID
    (default: the user running the process).  ``socks5_username`` and
    ``socks5_password`` are offered to SOCKS5 servers (RFC 1929); with a
    password and no user name, ``user`` is the name.  The endpoint does not
    read the environment: :func:`credentials_from_environment` does.
    ``default_server`` is what the original library read from
    ``SOCKS_SERVER`` (pass ``os.environ.get("SOCKS_SERVER")`` to honour it);
    ``None`` means :data:`sockssuite.routing.BUILTIN_SERVER`.  A host *name*
    is first resolved locally (``resolve_locally``, at most
    ``resolve_timeout`` seconds) so that numeric lines can match it; through
    a server it still goes as a name (SOCKS4a, or a SOCKS5 domain name)
    unless ``socks4a=False``, which sends the locally resolved address to
    either version.  ``commands`` is a
    :class:`sockssuite.commands.CommandRunner`: a matching line's ``: shell_cmd``
    is started through it (when it is enabled); without one, commands never run.
    """

    def __init__(self, reactor, routes, host: str, port: int, *, user: str | None = None,
                 default_server: str | None = None, timeout: float = 30.0,
                 resolve_locally: bool = True, resolve_timeout: float = 5.0,
                 socks4a: bool | None = None, failures: routing.RecentFailures | None = None,
                 commands=None, resolver=None, socks5_username: str | bytes | None = None,
                 socks5_password: str | bytes | None = None):
        if not 0 <= port <= 0xFFFF:
            raise ValueError(f"port {port} out of range")
        self.reactor = reactor
        self.routes = routes
        self.host = host
        self.port = port
        self.user = local_user() if user is None else user
        self.default_server = default_server
        if default_server:
            # Fail early, in the caller, on a malformed SOCKS_SERVER.
            routing.parse_server_list(default_server)
        self.timeout = timeout
        self.resolve_locally = resolve_locally
        self.resolve_timeout = resolve_timeout
        self.socks4a = socks4a
        self.failures = shared_failures(reactor) if failures is None else failures
        self.commands = commands
        self.resolver = resolver
        if socks5_password is not None and socks5_username is None:
            socks5_username = self.user
        # Fail early, in the caller, on credentials the wire cannot carry.
        self._socks5_credentials = _credentials(socks5_username, socks5_password)
        #: The decision of the last ``connect()`` (for messages and logs).
        self.decision: routing.RouteDecision | None = None

    def connect(self, protocolFactory):
        return defer.ensureDeferred(self._connect(protocolFactory))

    async def _connect(self, factory):
        address = None
        if self.resolve_locally and not isIPAddress(self.host) and not isIPv6Address(self.host):
            address = await self._local_address()
        decision = routing.decide_route(self.routes, self.host, self.port, user=self.user,
                                        address=address, default_server=self.default_server)
        self.decision = decision
        _log.debug("route to {destination}: {action} ({reason})", destination=_destination(self.host, self.port),
                   action=decision.action, reason=decision.reason)
        self._run_command(decision, address)
        if decision.action == "deny":
            raise RouteDenied(decision, self.host, self.port)
        if decision.action == "direct":
            direct = endpoints.HostnameEndpoint(self.reactor, self.host, self.port, timeout=self.timeout)
            return await direct.connect(factory)
        return await self._through_servers(decision, factory, address)

    # ---- name resolution

    def _name_resolver(self):
        return self.resolver if self.resolver is not None else self.reactor.nameResolver

    def _resolve(self, name: str, port: int, address_types) -> defer.Deferred:
        return _resolve(self._name_resolver(), name, port, address_types).addTimeout(
            self.resolve_timeout, self.reactor)

    async def _local_address(self) -> str | None:
        """The destination name's first IPv4 address here, or ``None``."""
        try:
            hosts = await self._resolve(self.host, self.port, [IPv4Address])
        except (defer.TimeoutError, error.DNSLookupError):
            return None
        return hosts[0] if hosts else None

    async def _server_addresses(self, entry) -> list[str]:
        if entry.is_address:
            return [entry.host]
        try:
            hosts = await self._resolve(entry.host, entry.port, [IPv4Address, IPv6Address])
        except defer.TimeoutError:
            raise _Skip(f"did not resolve within {self.resolve_timeout:g}s") from None
        except error.DNSLookupError as e:
            raise _Skip(f"does not resolve ({e})") from None
        if not hosts:
            raise _Skip("does not resolve")
        return hosts

    # ---- shell commands

    def _run_command(self, decision, address):
        rule = decision.rule
        if rule is None or rule.command is None or self.commands is None:
            return
        try:
            service = socket.getservbyport(self.port, "tcp")
        except (OSError, OverflowError):
            service = None
        values = routing.command_values(self.host, self.port, user=self.user, address=address,
                                        local_host=socket.gethostname(), service=service)
        self.commands.run(rule, values, f"socks.conf line {rule.lineno}")

    # ---- the server walk

    async def _through_servers(self, decision, factory, address):
        ipv6 = isIPv6Address(self.host)
        if ipv6 and all(entry.version == 4 for entry in decision.servers):
            raise ValueError(f"SOCKS4 cannot carry the IPv6 destination {self.host}: "
                             f"route it with a direct line, or through a socks5:// server")
        target = self.host
        if self.socks4a is False and not isIPAddress(self.host):
            if address is None:
                raise error.DNSLookupError(f"{self.host} does not resolve here, and socks4a=False")
            target = address
        attempts = []
        failures = self.failures
        for entry in failures.order(decision.servers, key=_server_key):
            if ipv6 and entry.version == 4:
                attempts.append((str(entry), "is SOCKS4, which cannot carry an IPv6 destination"))
                continue
            try:
                addresses = await self._server_addresses(entry)
            except _Skip as e:
                attempts.append((str(entry), str(e)))
                failures.failed(_server_key(entry))
                continue
            for server_address in failures.order(addresses, key=lambda a: _address_key(a, entry.port)):
                label = str(entry) if entry.is_address else f"{entry} ({server_address})"
                try:
                    connected = await self._attempt(server_address, entry, target, factory)
                except _Skip as e:
                    _log.info("SOCKS server {server} skipped: {reason}", server=label, reason=str(e))
                    attempts.append((label, str(e)))
                    failures.failed(_address_key(server_address, entry.port))
                    continue
                except SOCKSError:
                    # The server is alive and answered: its refusal is final.
                    failures.succeeded(_address_key(server_address, entry.port))
                    failures.succeeded(_server_key(entry))
                    raise
                failures.succeeded(_address_key(server_address, entry.port))
                failures.succeeded(_server_key(entry))
                return connected
            failures.failed(_server_key(entry))
        raise NoSOCKSServerReachable(decision, self.host, self.port, attempts)

    def _endpoint(self, proxy, entry, target: str):
        if entry.version == 5:
            username, password = self._socks5_credentials or (None, None)
            return SOCKS5ClientEndpoint(proxy, target, self.port, username=username, password=password)
        return SOCKS4ClientEndpoint(proxy, target, self.port, user=self.user, socks4a=self.socks4a)

    async def _attempt(self, server_address: str, entry, target: str, factory):
        if ":" in server_address:
            proxy = endpoints.TCP6ClientEndpoint(self.reactor, server_address, entry.port, timeout=self.timeout)
        else:
            proxy = endpoints.TCP4ClientEndpoint(self.reactor, server_address, entry.port, timeout=self.timeout)
        attempt = self._endpoint(proxy, entry, target).connect(factory)
        timed_out = []

        def expire():
            timed_out.append(True)
            attempt.cancel()

        timer = self.reactor.callLater(self.timeout, expire)
        try:
            return await attempt
        except (defer.CancelledError, error.ConnectingCancelledError):
            if timed_out:
                raise _Skip(f"did not answer within {self.timeout:g}s") from None
            raise defer.CancelledError() from None
        except error.ConnectError as e:
            raise _Skip(_connect_failure_text(e)) from None
        except SOCKSProtocolError as e:
            raise _Skip(str(e)) from None
        finally:
            if timer.active():
                timer.cancel()


def _connect_failure_text(e: error.ConnectError) -> str:
    if isinstance(e, error.ConnectionRefusedError):
        return "refused the connection"
    if isinstance(e, error.TimeoutError):
        return "did not accept the connection in time"
    return str(e).rstrip(".")


__all__ = [
    "SOCKS4ClientEndpoint", "SOCKS5ClientEndpoint", "socks4_bind", "socks5_bind", "BindResult",
    "credentials_from_environment", "USERNAME_VARIABLES", "PASSWORD_VARIABLES",
    "SOCKSError", "SOCKSRejected", "SOCKSIdentUnreachable", "SOCKSIdentMismatch", "SOCKSProtocolError",
    "SOCKS5ReplyError", "SOCKS5GeneralFailure", "SOCKS5NotAllowed", "SOCKS5NetworkUnreachable",
    "SOCKS5HostUnreachable", "SOCKS5ConnectionRefused", "SOCKS5TTLExpired", "SOCKS5CommandNotSupported",
    "SOCKS5AddressTypeNotSupported", "SOCKSAuthenticationError", "SOCKSNoAcceptableMethod",
    "SOCKSAuthenticationFailed", "socks5_error_for",
    "RoutedEndpoint", "RouteDenied", "NoSOCKSServerReachable", "local_user", "shared_failures",
]
