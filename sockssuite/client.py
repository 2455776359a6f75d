"""SOCKS4/4a client side for Twisted programs: "sockified" connections.

* :class:`SOCKS4ClientEndpoint` — an ``IStreamClientEndpoint`` that reaches
  ``host:port`` through a SOCKS4 server (itself reached through any client
  endpoint).  Host names go to the server as SOCKS4a unless ``socks4a=False``.
* :func:`socks4_bind` — asks a SOCKS4 server to listen for one inbound
  connection (SOCKS BIND, e.g. the data connection of active-mode FTP) and
  gives the address to announce to the peer plus a Deferred for the connection.

* :class:`RoutedEndpoint` — an ``IStreamClientEndpoint`` that applies a
  socks.conf (:mod:`sockssuite.routing`): ``direct`` connects straight,
  ``deny`` fails with :class:`RouteDenied`, ``sockd`` tries the line's SOCKS
  servers in order, skipping those that refuse or do not answer in time.

Refusals become distinct exceptions (:class:`SOCKSRejected` for 91,
:class:`SOCKSIdentUnreachable` for 92, :class:`SOCKSIdentMismatch` for 93),
all subclasses of :class:`SOCKSError`.
"""

from __future__ import annotations

import getpass
import os
import socket
import weakref
from dataclasses import dataclass

from twisted.internet import defer, endpoints, error, interfaces, protocol
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IResolutionReceiver
from twisted.logger import Logger
from zope.interface import implementer

from . import routing
from .connecting import connect_protocol
from .wire import socks4

_log = Logger(namespace="sockssuite.client")


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
    resolve, or did not speak SOCKS4.  ``attempts`` lists ``(server, reason)``
    in the order tried; ``decision`` is the route decision."""

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
      order, and for a server name every address it resolves to in turn.  A
      server that refuses the TCP connection, does not resolve, closes or
      speaks something else than SOCKS4, or does not answer within ``timeout``
      seconds is skipped.  A SOCKS refusal (91/92/93) is final and fails
      ``connect()`` with that :class:`SOCKSError`.  When every server failed,
      ``connect()`` fails with :class:`NoSOCKSServerReachable`.  Servers that
      failed recently (``failures``, shared per reactor by default) are tried
      last, so a dead server costs one timeout, not one per connection.

    ``user`` is both the local user for ``*=`` lists and the SOCKS USERID
    (default: the user running the process).  ``default_server`` is what the
    original library read from ``SOCKS_SERVER`` (pass
    ``os.environ.get("SOCKS_SERVER")`` to honour it); ``None`` means
    :data:`sockssuite.routing.BUILTIN_SERVER`.  A host *name* is first resolved
    locally (``resolve_locally``, at most ``resolve_timeout`` seconds) so that
    numeric lines can match it; through a server it still goes as a SOCKS4a
    name unless ``socks4a=False``.  ``commands`` is a
    :class:`sockssuite.commands.CommandRunner`: a matching line's ``: shell_cmd``
    is started through it (when it is enabled); without one, commands never run.
    """

    def __init__(self, reactor, routes, host: str, port: int, *, user: str | None = None,
                 default_server: str | None = None, timeout: float = 30.0,
                 resolve_locally: bool = True, resolve_timeout: float = 5.0,
                 socks4a: bool | None = None, failures: routing.RecentFailures | None = None,
                 commands=None, resolver=None):
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
        result = defer.Deferred()
        receiver = _Addresses(result)
        self._name_resolver().resolveHostName(receiver, name, port, addressTypes=address_types,
                                              transportSemantics="TCP")
        return result.addTimeout(self.resolve_timeout, self.reactor)

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
        if isIPv6Address(self.host):
            raise ValueError(f"SOCKS4 cannot carry the IPv6 destination {self.host}: "
                             f"route it with a direct line")
        target = self.host
        if self.socks4a is False and not isIPAddress(self.host):
            if address is None:
                raise error.DNSLookupError(f"{self.host} does not resolve here, and socks4a=False")
            target = address
        attempts = []
        failures = self.failures
        for entry in failures.order(decision.servers, key=_server_key):
            try:
                addresses = await self._server_addresses(entry)
            except _Skip as e:
                attempts.append((str(entry), str(e)))
                failures.failed(_server_key(entry))
                continue
            for server_address in failures.order(addresses, key=lambda a: _address_key(a, entry.port)):
                label = str(entry) if entry.is_address else f"{entry} ({server_address})"
                try:
                    connected = await self._attempt(server_address, entry.port, target, factory)
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

    async def _attempt(self, server_address: str, server_port: int, target: str, factory):
        if ":" in server_address:
            proxy = endpoints.TCP6ClientEndpoint(self.reactor, server_address, server_port, timeout=self.timeout)
        else:
            proxy = endpoints.TCP4ClientEndpoint(self.reactor, server_address, server_port, timeout=self.timeout)
        attempt = SOCKS4ClientEndpoint(proxy, target, self.port, user=self.user,
                                       socks4a=self.socks4a).connect(factory)
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
    "SOCKS4ClientEndpoint", "socks4_bind", "BindResult", "SOCKSError", "SOCKSRejected",
    "SOCKSIdentUnreachable", "SOCKSIdentMismatch", "SOCKSProtocolError",
    "RoutedEndpoint", "RouteDenied", "NoSOCKSServerReachable", "local_user", "shared_failures",
]
