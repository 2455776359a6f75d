"""SOCKS4/4a client side for Twisted programs: "sockified" connections.

* :class:`SOCKS4ClientEndpoint` — an ``IStreamClientEndpoint`` that reaches
  ``host:port`` through a SOCKS4 server (itself reached through any client
  endpoint).  Host names go to the server as SOCKS4a unless ``socks4a=False``.
* :func:`socks4_bind` — asks a SOCKS4 server to listen for one inbound
  connection (SOCKS BIND, e.g. the data connection of active-mode FTP) and
  gives the address to announce to the peer plus a Deferred for the connection.

Refusals become distinct exceptions (:class:`SOCKSRejected` for 91,
:class:`SOCKSIdentUnreachable` for 92, :class:`SOCKSIdentMismatch` for 93),
all subclasses of :class:`SOCKSError`.
"""

from __future__ import annotations

from dataclasses import dataclass

from twisted.internet import defer, interfaces, protocol
from twisted.internet.abstract import isIPAddress
from zope.interface import implementer

from .connecting import connect_protocol
from .wire import socks4


class SOCKSError(Exception):
    """The SOCKS server refused or failed the request."""

    code: int | None = None


class SOCKSRejected(SOCKSError):
    """Reply 91: rejected by the server's rules, or the server failed."""

    code = socks4.REJECTED


class SOCKSIdentUnreachable(SOCKSError):
    """Reply 92: the server could not reach this host's identd."""

    code = socks4.NO_IDENTD


class SOCKSIdentMismatch(SOCKSError):
    """Reply 93: this host's identd reports another user than the one sent."""

    code = socks4.BAD_IDENT


class SOCKSProtocolError(SOCKSError):
    """The server's answer is not SOCKS4, or it closed during the handshake."""


_ERRORS = {c.code: c for c in (SOCKSRejected, SOCKSIdentUnreachable, SOCKSIdentMismatch)}


def error_for(reply: socks4.Reply) -> SOCKSError:
    cls = _ERRORS.get(reply.code, SOCKSProtocolError)
    return cls(f"SOCKS server replied {reply.code}")


@implementer(interfaces.IHalfCloseableProtocol)
class _SOCKS4Handshake(protocol.Protocol):
    """Speaks the request, reads one or two replies, then hands the transport
    over to the application protocol and forwards everything to it."""

    def __init__(self, request: bytes, replies_expected: int, factory, first_reply=None):
        self.request = request
        self.replies_expected = replies_expected
        self.factory = factory
        self.first_reply = first_reply  # Deferred for BIND's first reply
        self.ready = defer.Deferred(self._cancel)
        self.buffer = b""
        self.replies: list[socks4.Reply] = []
        self.wrapped = None

    def _cancel(self, d):
        if self.transport is not None:
            self.transport.abortConnection()

    def connectionMade(self):
        self.transport.write(self.request)

    def dataReceived(self, data):
        if self.wrapped is not None:
            self.wrapped.dataReceived(data)
            return
        self.buffer += data
        while len(self.buffer) >= 8 and len(self.replies) < self.replies_expected:
            raw, self.buffer = self.buffer[:8], self.buffer[8:]
            try:
                reply = socks4.decode_reply(raw)
            except socks4.ProtocolError as e:
                self._fail(SOCKSProtocolError(str(e)))
                return
            if reply.code != socks4.GRANTED:
                self._fail(error_for(reply))
                return
            self.replies.append(reply)
            if len(self.replies) == 1 and self.first_reply is not None:
                first, self.first_reply = self.first_reply, None
                first.callback(reply)
        if len(self.replies) == self.replies_expected:
            self._start_application()

    def _start_application(self):
        reply = self.replies[-1]
        from twisted.internet.address import IPv4Address
        wrapped = self.factory.buildProtocol(IPv4Address("TCP", reply.address, reply.port))
        if wrapped is None:
            self.transport.loseConnection()
            self.ready.errback(SOCKSError("the protocol factory refused the connection"))
            return
        self.wrapped = wrapped
        wrapped.makeConnection(self.transport)
        rest, self.buffer = self.buffer, b""
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
        handshake = _SOCKS4Handshake(
            _request(socks4.CONNECT, self.host, self.port, self.user, self.socks4a), 1, protocolFactory)
        connecting = connect_protocol(self.proxy_endpoint, handshake)

        def connected(_):
            return handshake.ready

        return connecting.addCallback(connected)


@dataclass
class BindResult:
    """What :func:`socks4_bind` gives: the ``address`` ``(host, port)`` the
    server listens on — announce it to the peer — and ``connected``, a
    Deferred firing with the application protocol when the peer connects
    (or failing with :class:`SOCKSError`)."""

    address: tuple[str, int]
    connected: defer.Deferred


def socks4_bind(proxy_endpoint, peer_host: str, peer_port: int, protocol_factory, *,
                user: bytes | str = b"") -> defer.Deferred:
    """SOCKS BIND: ask the server at ``proxy_endpoint`` to accept one
    connection from ``peer_host`` (the application server of the primary
    connection; ``peer_port`` is that connection's port).  Fires with a
    :class:`BindResult` after the first reply."""
    first = defer.Deferred()
    handshake = _SOCKS4Handshake(_request(socks4.BIND, peer_host, peer_port, user, None), 2,
                                 protocol_factory, first_reply=first)

    def bound(reply):
        address = reply.address
        if address == "0.0.0.0":
            # "Use the SOCKS server's address" (SOCKS4 protocol document).
            address = handshake.transport.getPeer().host
        return BindResult((address, reply.port), handshake.ready)

    def connected(_):
        return first.addCallback(bound)

    def failed(f):
        if not first.called:
            first.cancel()
        return f

    return connect_protocol(proxy_endpoint, handshake).addCallbacks(connected, failed)


__all__ = [
    "SOCKS4ClientEndpoint", "socks4_bind", "BindResult", "SOCKSError", "SOCKSRejected",
    "SOCKSIdentUnreachable", "SOCKSIdentMismatch", "SOCKSProtocolError",
]
