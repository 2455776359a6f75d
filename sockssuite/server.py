"""The SOCKS4/4a server protocol: handshake, access decision, CONNECT, relay.

One :class:`SOCKS4ServerProtocol` per client connection walks through

    handshake ─▶ deciding (resolve, names, rules) ─▶ connecting ─▶ relaying

and ends with exactly one ``session closed`` log event saying how it went.
While it decides and connects it stops reading from the client, so bytes the
client pipelines behind its request wait in the kernel (or in the few bytes
already read) and reach the destination first thing once the relay starts.
"""

from __future__ import annotations

import itertools
import os
import socket
from dataclasses import dataclass

from twisted.internet import defer, endpoints, protocol, threads
from twisted.internet import error
from twisted.internet.error import ConnectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from . import access, ident, names, socks5, splice
from .udpassociate import DropLog, UDPAssociation
from .bind import BindListener, outward_address
from .commands import CommandRunner
from .connecting import connect_tcp
from .relay import RelayLeg, join, pass_half_closes, send_now as _send_now, unregister_producer, write_now
from .textsafe import printable
from .wire import socks4
from .wire import socks5 as socks5wire

log = Logger(namespace="sockssuite.session")

#: With --relay-engine auto, a session moves to splice(2) once it has relayed
#: this many bytes (both ways together).
SPLICE_AFTER = 128 * 1024

#: Bytes a client may send behind its request while the server is still
#: deciding and connecting; past this the server stops reading until the relay.
EARLY_DATA_LIMIT = 65536
#: Password checks (bcrypt) running at once, and waiting at most.
PASSWORD_CHECKS = 2
PASSWORD_QUEUE = 64
#: After a refusal, how long the server keeps reading (and dropping) what the
#: client still sends, waiting for it to close, before it closes anyway.
LINGER = 2.0
#: Refusals that close at once: the client broke the protocol or never
#: finished it (lingering would only keep a hostile client longer), or the
#: server is too busy to spend time on it.
_NO_LINGER = frozenset({"protocol-error", "handshake-timeout", "client-gone", "server-full",
                        "client-limit"})


@dataclass(frozen=True)
class ServerSettings:
    """Plain, picklable settings of one SOCKS server (what ``twistd sockssuite``'s
    options become)."""

    handshake_timeout: float = 30.0
    resolve_timeout: float = 15.0
    connect_timeout: float = 120.0
    idle_timeout: float = 7200.0
    max_connections: int = 4096
    max_connections_per_client: int = 256
    allow_shell_commands: bool = False
    default_ident: str = "n"
    ident_port: int = ident.DEFAULT_PORT
    ident_timeout: float = ident.DEFAULT_TIMEOUT
    name_timeout: float = 10.0
    bind_timeout: float = 120.0
    bind_interface: str | None = None
    bind_any_source: bool = False
    relay_engine: str = "auto"  # auto (splice where possible), splice, copy
    socks_versions: tuple = (4, 5)
    require_auth: bool = False  # SOCKS5 username/password required (SOCKS4 then refused)
    passwords: object = None  # a passwords.PasswordFile for SOCKS5, or None
    udp_outside_interface: str = ""  # where UDP ASSOCIATE datagrams leave from ("" = any)
    udp_max_datagram: int = 65507


class SOCKS4ServerFactory(protocol.Factory):
    """Builds SOCKS4 sessions that share one policy, one set of settings and
    one count of live sessions.  ``policy`` may be swapped at any time (reload);
    a session keeps the policy it was admitted with."""

    def __init__(self, policy: access.AccessPolicy, settings: ServerSettings = ServerSettings(),
                 reactor=None, resolver=None, routes=None):
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.resolver = resolver if resolver is not None else names.SystemResolver(reactor)
        self.policy = policy
        self.routes = routes  # a sockdroute.RouteTable for BIND listeners, or None
        self.settings = settings
        self.commands = CommandRunner(reactor, settings.allow_shell_commands)
        self.sessions: set[SOCKS4ServerProtocol] = set()
        self._ids = itertools.count(1)
        #: Prefix of session ids ("w2-" in worker 2 of --workers), so that ids
        #: stay unique across the processes of one daemon.
        self.id_prefix = ""
        self._drain_waiters: list[defer.Deferred] = []
        # -- issue 9: live sessions per client IP (--max-connections-per-client)
        self.per_client: dict[str, int] = {}
        self.password_slots = defer.DeferredSemaphore(PASSWORD_CHECKS)
        self.password_waiting = 0
        #: One rate limit for the drop log lines of every UDP association.
        self.udp_drop_log = DropLog(reactor.seconds)

    def client_arrived(self, key: str | None) -> int:
        """Count one more session of client ``key`` (None: not counted, e.g. a
        UNIX socket peer); returns how many that client now has."""
        if key is None:
            return 0
        count = self.per_client.get(key, 0) + 1
        self.per_client[key] = count
        return count

    def client_left(self, key: str | None):
        if key is None:
            return
        count = self.per_client.get(key, 0) - 1
        if count > 0:
            self.per_client[key] = count
        else:
            self.per_client.pop(key, None)

    def session_ended(self, session):
        if session in self.sessions:
            self.client_left(getattr(session, "client_key", None))
        self.sessions.discard(session)
        if not self.sessions and self._drain_waiters:
            waiters, self._drain_waiters = self._drain_waiters, []
            for d in waiters:
                if not d.called:  # a waiter may have timed out already
                    d.callback(None)

    def drained(self) -> defer.Deferred:
        """Fires when no session is left (at once if none is live)."""
        if not self.sessions:
            return defer.succeed(None)
        d = defer.Deferred()
        self._drain_waiters.append(d)
        return d

    def close_all(self) -> defer.Deferred:
        """Close every live session now; fires when all have ended."""
        d = self.drained()
        for session in list(self.sessions):
            session.abort()
        return d

    def buildProtocol(self, addr):
        p = SOCKS4ServerProtocol()
        p.factory = p.server = self
        p.session_id = f"{self.id_prefix}{next(self._ids)}" if self.id_prefix else next(self._ids)
        return p


class UpstreamProtocol(RelayLeg):
    """The proxy's connection to the destination."""

    def __init__(self, session: SOCKS4ServerProtocol):
        self.session = session

    on_connected = None

    def connectionMade(self):
        _nodelay(self.transport)
        hook = self.on_connected
        if hook is not None:
            del self.on_connected  # back to the class default: nothing kept per session
            hook()

    def dataReceived(self, data):
        # Bytes before the relay is joined (a server that speaks first): keep
        # them in order; join() swaps in relayData for everything after.
        session = self.session
        session.early_upstream = [*session.early_upstream, data]
        self.transport.pauseProducing()

    def connectionLost(self, reason):
        self.session.upstream_lost(self, reason)


class SOCKS4ServerProtocol(RelayLeg):
    server: SOCKS4ServerFactory
    session_id = 0

    # Per-session state starts as these class-level defaults; an instance
    # stores only what it changes.  With 10,000s of idle sessions held, a
    # small instance dict (CPython shares the keys of up to 30 attributes)
    # is most of the proxy's memory per session.
    request: socks4.Request | None = None
    resolved: str | None = None
    rule_line: int | None = None
    outcome = "closed"
    detail = ""
    upstream: UpstreamProtocol | None = None
    early_upstream: tuple | list = ()
    ident_user: str | None = None
    ident_result = "not-checked"
    ident_seconds: float | None = None
    bind_listener = bind_port = bind_timer = None
    bound: str | None = None
    peer_address: str | None = None
    splice = None
    pending: defer.Deferred | None = None
    idle_timer = None
    closed = False
    parser: socks4.RequestParser | None = None
    timer = None
    src_name = dst_name = None
    version: int | None = None  # 4 or 5, from the first byte
    socks5 = None  # the SOCKS5 handshake while it runs
    ident_outcome: str | None = None  # "ok", "mismatch", "no-user", "unreachable" once asked
    udp = None  # the UDPAssociation of a SOCKS5 UDP ASSOCIATE
    udp_down = 0  # payload bytes the association passed back to the client
    first_byte: int | None = None  # the version byte as the client sent it
    lingering = None  # the timer of a lingering close after a refusal

    @property
    def reactor(self):
        return self.server.reactor

    @property
    def settings(self) -> ServerSettings:
        return self.server.settings

    def connectionMade(self):
        self.policy = self.server.policy  # the rules this session is admitted under
        self.started = self.reactor.seconds()
        self.client, self.client_host, self.client_port = _client_of(self.transport.getPeer())
        self.server.sessions.add(self)
        self.client_key = getattr(self.transport.getPeer(), "host", None)
        per_client = self.server.client_arrived(self.client_key)
        if len(self.server.sessions) > self.settings.max_connections:
            self._refuse("server-full", f"over --max-connections={self.settings.max_connections}")
            return
        limit = self.settings.max_connections_per_client
        if per_client > limit:
            self._refuse("client-limit", f"{self.client_key} has {per_client - 1} connection(s) open: "
                         f"over --max-connections-per-client={limit}")
            return
        _nodelay(self.transport)
        self.parser = socks4.RequestParser()
        self.timer = self.reactor.callLater(self.settings.handshake_timeout, self._handshake_timeout)

    # -- handshake ----------------------------------------------------------
    def dataReceived(self, data):
        if self.parser is None or not data:
            return
        if self.version is None:
            # The first byte picks the protocol: one port, one policy, both versions.
            self.version = self.first_byte = data[0]
            versions = self.settings.socks_versions
            if self.version == 5 and 5 in versions:
                self.socks5 = socks5.Handshake(self.transport, self.settings.passwords,
                                               self.settings.require_auth)
                self.dataReceived = self._socks5_data
                self._socks5_data(data)
                return
            if self.version == 4 and 4 not in versions:
                self._cancel_timer()
                self._refuse("protocol-error", "SOCKS4 is not enabled (--socks-versions)")
                return
            if self.version == 4 and self.settings.require_auth:
                self._cancel_timer()
                self._refuse("denied", "authentication is required (--require-auth) and SOCKS4 "
                             "cannot authenticate")
                return
            if self.version != 4:
                # Not a version we serve: answered as SOCKS4 answers any bad first byte.
                self.version = 4
                self._cancel_timer()
                self._refuse("protocol-error", f"version {data[0]} is not served "
                             "(--socks-versions)" if data[0] == 5 else f"version {data[0]} is not SOCKS")
                return
        try:
            request = self.parser.feed(data)
        except socks4.ProtocolError as e:
            self._cancel_timer()
            self._refuse("protocol-error", str(e), reply=e.reply)
            return
        if request is None:
            return
        leftover = self.parser.leftover
        del self.parser  # done with (back to the class default None): the request is kept
        self._got_request(request, leftover)

    def _socks5_data(self, data):
        self._socks5_step(self.socks5.feed, data)

    def _socks5_step(self, step, arg):
        try:
            done = step(arg)
        except socks5.Refused as r:
            self._cancel_timer()
            self.socks5 = None
            # The handshake chose the bytes (or none: a broken greeting or
            # credentials get no request reply).
            self._refuse(r.outcome, r.detail, reply=None, raw_reply=r.reply)
            return
        if done is socks5.CHECKING:
            if self.pending is None:
                self._check_password(self.socks5.credentials)
            return
        if done is None and self.read_closed:
            # Shut down writing during the check, without a whole request.
            self._cancel_timer()
            self.socks5 = None
            self._refuse("client-gone", "client shut down writing during the handshake")
            return
        if done is not None:
            request, leftover = done
            self.socks5 = None
            del self.parser
            self._got_request(request, leftover)

    def _check_password(self, credentials):
        """bcrypt in a thread: the reactor goes on serving everyone else.

        Bounded, because anyone may send credentials: at most
        PASSWORD_CHECKS run at once (the reactor's thread pool also resolves
        names, which a flood of logins must not starve), at most
        PASSWORD_QUEUE wait, and a login beyond that is refused at once.  A
        check whose client has gone by the time its turn comes is skipped."""
        server = self.server
        if server.password_waiting >= PASSWORD_QUEUE:
            self._cancel_timer()
            self.socks5 = None
            self._refuse("server-full", f"over {PASSWORD_QUEUE} password checks waiting",
                         raw_reply=socks5wire.encode_auth_status(False))
            return
        passwords = self.settings.passwords
        username, password = credentials.username, credentials.password

        def check():
            if self.closed:
                return False  # the client left while waiting: no bcrypt for nobody
            return passwords.check(username, password)

        def in_thread():
            return threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(), check)

        server.password_waiting += 1
        d = server.password_slots.run(in_thread)

        def counted(result):
            server.password_waiting -= 1
            return result

        d.addBoth(counted)
        # The session waits on a Deferred of its own: a client that leaves
        # cancels that one, not the check's, whose slot must stay taken until
        # bcrypt is done with it (its thread cannot be stopped).
        mine = defer.Deferred()
        self.pending = mine

        def answer(result):
            if not mine.called:
                mine.callback(result)
            # else the session has gone: the result (or failure) is not wanted

        d.addBoth(answer)

        def done(ok):
            self.pending = None
            if not self.closed and self.socks5 is not None:
                self._socks5_step(self.socks5.checked, bool(ok))

        def failed(failure):
            self.pending = None
            if failure.check(defer.CancelledError):
                return
            log.failure("session {session}: password check failed", failure, session=self.session_id)
            if not self.closed and self.socks5 is not None:
                self._socks5_step(self.socks5.checked, False)

        mine.addCallbacks(done, failed)

    def _got_request(self, request, leftover):
        self._cancel_timer()
        self.request = request
        # Keep reading while we decide and connect, so a client that leaves is
        # noticed (and the pending connect cancelled); what it sends meanwhile is
        # kept for the destination, up to a bound, then reading pauses.
        self.early_client = [leftover] if leftover else []
        self.early_size = len(leftover)
        self.dataReceived = self._early_data
        if self.early_size > EARLY_DATA_LIMIT:
            self.transport.pauseProducing()
        if self._admit_now(request):
            return
        d = defer.ensureDeferred(self._admit(request))
        if not d.called:
            self.pending = d
        d.addErrback(self._admit_failed)

    def readConnectionLost(self):
        if self.lingering is not None:  # refused; the client has closed too
            self.transport.loseConnection()
            return
        if self.request is None and self.socks5 is not None and self.socks5.stage == "checking":
            # The password is being checked; the request may be among the
            # bytes held meanwhile.  Decide when the check is done.
            self.read_closed = True
            return
        if self.request is None:
            # Half-closed before finishing the request: nothing more can come.
            self.read_closed = True
            self._cancel_timer()
            self._refuse("client-gone", "client shut down writing during the handshake")
            return
        if self.udp is not None:
            # The TCP connection of a UDP association carries nothing: a
            # client that shuts it down ends the association.
            self.transport.loseConnection()
            return
        RelayLeg.readConnectionLost(self)

    def _early_data(self, data):
        self.early_client.append(data)
        self.early_size += len(data)
        if self.early_size > EARLY_DATA_LIMIT:
            self.transport.pauseProducing()

    def _handshake_timeout(self):
        self.timer = None
        self._refuse("handshake-timeout",
                     f"no complete request within {self.settings.handshake_timeout:g}s")

    def _cancel_timer(self):
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None

    # -- deciding and connecting -------------------------------------------
    def _admit_now(self, request: socks4.Request) -> bool:
        """The common case, decided without a coroutine: a CONNECT to a
        numeric address under rules that need no names.  Returns False
        when the request needs the general path (:meth:`_admit`)."""
        if request.command != socks4.CONNECT or request.hostname is not None:
            return False
        policy = self.policy
        if policy.uses_src_names or policy.uses_dst_names:
            return False
        address = self.resolved = request.address
        decision = self._decide(request, address)
        if decision is None:
            return True  # refused
        if decision.ident != "n":
            d = defer.ensureDeferred(self._permitted(request, address, decision))
            if not d.called:
                self.pending = d
            d.addErrback(self._admit_failed)
            return True
        self._run_rule_command(decision.rule, "permit")
        self._connect(address, request.port)
        return True

    async def _admit(self, request: socks4.Request):
        settings = self.settings
        if request.command == socks4.UDP_ASSOCIATE:
            await self._udp_associate(request)
            return
        try:
            if request.hostname is not None:
                # SOCKS5 replies can carry an IPv6 address, SOCKS4a ones cannot.
                resolve = names.resolve_address if self.version == 5 else names.resolve_ipv4
                address = await resolve(self._resolver(), request.hostname,
                                        settings.resolve_timeout, self.reactor)
            else:
                address = request.address
        except (names.ResolutionError, defer.TimeoutError) as e:
            self._refuse("resolve-failed", str(e) or f"cannot resolve {request.hostname} in time")
            return
        self.resolved = address
        policy = self.policy
        if policy.uses_src_names:
            self.src_name = await names.confirmed_name(self.reactor, self.client_host, settings.name_timeout,
                                                       owner=self.client_host)
        if policy.uses_dst_names:
            self.dst_name = await names.confirmed_name(self.reactor, address, settings.name_timeout,
                                                       owner=self.client_host)
        decision = self._decide(request, address)
        if decision is not None:
            await self._permitted(request, address, decision)

    def _decide(self, request: socks4.Request, address: str):
        """sockd.conf's verdict on the request (with ``src_name`` and
        ``dst_name`` found already, if the rules use names).  A denial is
        logged and refused here, and gives None."""
        if request.command == socks4.CONNECT and (address.startswith("0.") or address == "::"):
            # 0.0.0.0/8 (and ::) is "this host" to the kernel: a connect to it
            # reaches the proxy's own services and would slip past rules about
            # 127.0.0.0/8.
            self._refuse("denied", f"destination {address} (0.0.0.0/8 or ::, \"this host\") is not routable")
            return None
        decision = access.decide(
            self.policy,
            access.AccessRequest(
                user=self.user, src=self.client_host, dst=address, port=request.port,
                src_name=self.src_name, dst_name=self.dst_name, command=request.command_name),
            default_ident=self.settings.default_ident,
        )
        rule = decision.rule
        self.rule_line = rule.lineno if rule else None
        if not decision.permitted:
            reason = f"denied by line {rule.lineno}" if rule else "no line matched"
            self._log_denial(reason)
            self._run_rule_command(rule, "deny")
            self._refuse("denied", reason)
            return None
        return decision

    async def _permitted(self, request: socks4.Request, address: str, decision):
        if decision.ident != "n":
            refusal = await self._check_ident(decision.ident)
            if refusal is not None:
                return
        self._run_rule_command(decision.rule, "permit")
        if request.command == socks4.BIND:
            await self._bind(address, request.port)
            return
        self._connect(address, request.port)

    def _connect(self, address: str, port: int):
        """Connect to the destination; relay once connected (or refuse).
        ``pending`` is the attempt, which the client's leaving cancels."""
        d = connect_tcp(self.reactor, address, port, UpstreamProtocol(self), self.settings.connect_timeout)
        if not d.called:
            self.pending = d
        d.addCallbacks(self._connected, self._connect_failed)
        d.addErrback(self._admit_failed)

    def _connected(self, upstream: UpstreamProtocol):
        self.pending = None
        if self.closed:  # the client went away while we connected
            upstream.transport.loseConnection()
            return
        host = upstream.transport.getHost()
        self._start_relay(upstream, host.host, host.port)

    def _connect_failed(self, failure):
        if self.closed or failure.check(defer.CancelledError, error.ConnectingCancelledError):
            # The client went away and connectionLost cancelled the connect
            # (a stopped TCP connector fails with UserError, of which a
            # connect timeout is a kind too: so ask whether the client is
            # still there, not what the error is).
            return
        self._refuse("connect-failed", _describe(failure.value))

    # -- BIND -------------------------------------------------------------------
    def _bind_interface(self, destination: str, port: int) -> str:
        routes = self.server.routes
        if ":" in destination:  # IPv6 (SOCKS5): the route file and --bind-interface are IPv4
            return outward_address(destination, port) or "::1"
        if routes is not None and destination != "0.0.0.0":
            route = routes.route_for(destination)
            if route is not None:
                return route.interface
        if self.settings.bind_interface:
            return self.settings.bind_interface
        return outward_address(destination, port) or self._local_ipv4()

    def _local_ipv4(self) -> str:
        """The IPv4 address the client reached us on (loopback for a UNIX socket)."""
        return _client_of(self.transport.getHost())[1] or "127.0.0.1"

    async def _bind(self, destination: str, port: int):
        settings = self.settings
        if destination == "0.0.0.0" and not settings.bind_any_source:
            self._refuse("bind-refused", "BIND with DSTIP 0.0.0.0 (any peer) is not enabled "
                         "(--bind-any-source)")
            return
        interface = self._bind_interface(destination, port)
        self.bind_listener = BindListener(self, None if destination == "0.0.0.0" else destination)
        listen_on = endpoints.TCP6ServerEndpoint if ":" in interface else endpoints.TCP4ServerEndpoint
        try:
            listening = await listen_on(self.reactor, 0, backlog=1, interface=interface).listen(self.bind_listener)
        except Exception as e:
            self._refuse("bind-failed", f"cannot listen on {interface}: {_describe(e)}")
            return
        self.pending = None
        self.bind_port = listening
        if self.closed:
            self._stop_bind_listening()
            return
        host = listening.getHost()
        announced = host.host
        if announced in ("0.0.0.0", "::"):  # never announce "any": give the address the client reached
            announced = self._local_ipv4()
        self.bound = f"{announced}:{host.port}"
        self.transport.write(self._granted(host.port, announced))
        self.bind_timer = self.reactor.callLater(settings.bind_timeout, self._bind_timeout)

    def bind_arrived(self, addr, source_ok: bool):
        """The first connection to the BIND listener (called by BindListener)."""
        self._stop_bind_listening()
        if self.bind_timer is not None and self.bind_timer.active():
            self.bind_timer.cancel()
        self.bind_timer = None
        self.peer_address = f"{addr.host}:{addr.port}"
        if self.closed:
            return None
        if not source_ok:
            self._refuse("bind-wrong-peer",
                         f"inbound connection from {addr.host}, expected {self.resolved}")
            return None
        inbound = UpstreamProtocol(self)
        inbound.on_connected = lambda: self._start_relay(inbound, addr.host, addr.port)
        return inbound

    def _bind_timeout(self):
        self.bind_timer = None
        self._stop_bind_listening()
        self._refuse("bind-timeout", f"no inbound connection within {self.settings.bind_timeout:g}s")

    def _stop_bind_listening(self):
        port, self.bind_port = self.bind_port, None
        if port is not None:
            port.stopListening()

    async def _check_ident(self, mode: str):
        """Ask the client host's identd; refuse with 92/93 as the table says.
        Returns the reply code when the session was refused, else None."""
        settings = self.settings
        host = self.transport.getHost()
        if self.client_port is None or not hasattr(host, "port"):
            result = ident.IdentResult(ident.UNREACHABLE, None, "no identd for a local socket client")
        else:
            _, server_host, _ = _client_of(host)
            asked = self.reactor.seconds()
            result = await ident.lookup(self.reactor, self.client_host, self.client_port,
                                        server_host, host.port, ident_port=settings.ident_port,
                                        timeout=settings.ident_timeout)
            self.ident_seconds = self.reactor.seconds() - asked
        self.ident_user = result.user
        outcome = access.ident_outcome(result.status, result.user, self.user)
        self.ident_outcome = outcome
        self.ident_result = f"{outcome} ({result.detail})" if result.detail else outcome
        refusal = access.ident_verdict(mode, outcome)
        if refusal is None:
            if outcome == "unreachable" and mode == "i":
                log.info("session {session}: identd on {host} unreachable ({detail}); permitted under ?=i",
                         session=self.session_id, host=self.client_host, detail=result.detail)
            return None
        policy = self.policy
        if refusal == socks4.NO_IDENTD:
            reason = f"identd unreachable ({result.detail}) and line {self.rule_line} requires it (?=I)"
            special, outcome_name = policy.no_identd, "ident-unreachable"
        else:
            said = f"says {printable(result.user)!s}" if result.user is not None else result.detail
            reason = f"identd {said}, not USERID {self.user_text}"
            special, outcome_name = policy.bad_id, "ident-mismatch"
        self._log_denial(reason)
        if special is not None:
            self.server.commands.run(special, self._command_values(),
                                     f"line {special.lineno} {'#NO_IDENTD' if refusal == 92 else '#BAD_ID'}")
        self._refuse(outcome_name, reason, reply=refusal)
        return refusal

    # -- UDP ASSOCIATE (SOCKS5) -------------------------------------------------
    async def _udp_associate(self, request: socks4.Request):
        """Grant a UDP association tied to this TCP connection: the client's
        datagrams are checked one by one (as ``udp`` requests) against the
        rules, and the association ends when this connection does."""
        settings = self.settings
        if self.client_port is None:
            self._refuse("unsupported", "UDP ASSOCIATE needs a TCP/IP client, not a UNIX-socket one")
            return
        policy = self.policy
        if policy.uses_src_names:
            self.src_name = await names.confirmed_name(self.reactor, self.client_host, settings.name_timeout,
                                                       owner=self.client_host)
        permits = access.permits_for(policy, self.user, self.client_host, self.src_name, "udp")
        if not permits:
            self._log_denial("no line permits UDP for this client")
            self._refuse("denied", "no line permits UDP for this client")
            return
        rule = permits[0]
        self.rule_line = rule.lineno
        mode = rule.ident or settings.default_ident
        if mode != "n":
            if await self._check_ident(mode) is not None:
                return
        elif any((later.ident or settings.default_ident) != "n" for later in permits[1:]):
            # The first line needs no identd, a later one does (for some
            # destinations): ask now, once, and let each datagram's line
            # decide what the answer means (see _udp_check).
            await self._check_ident("n")
            if self.closed:
                return
        self._run_rule_command(rule, "permit")
        try:
            self.udp = UDPAssociation(
                self.reactor, client_host=self.client_host, client_port=request.port,
                listen_interface=self.transport.getHost().host.partition("%")[0],
                outside_interface=settings.udp_outside_interface,
                check=self._udp_check, resolve=self._udp_resolve,
                max_datagram=settings.udp_max_datagram,
                log_prefix=f"session {self.session_id}: ", drop_log=self.server.udp_drop_log)
            host, port = await self.udp.start()
        except Exception as e:
            self.udp = None
            self._refuse("udp-failed", f"cannot open the UDP relay socket: {_describe(e)}")
            return
        self.pending = None
        if self.closed:
            self.udp.stop()
            return
        self.bound = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        log.debug(None, event="session-opened", session=self.session_id,
                  command="udp", handshake_seconds=self.reactor.seconds() - self.started)
        self.transport.write(self._granted(port, host))
        # The TCP connection now only says how long the association lives:
        # whatever the client sends on it is read (so its close is seen) and dropped.
        self.early_client = ()
        self.dataReceived = _discard
        self.transport.resumeProducing()
        idle = settings.idle_timeout
        if idle > 0:
            self._idle_mark = self._traffic()
            self._idle_since = self.reactor.seconds()
            self.idle_timer = self.reactor.callLater(_idle_tick(idle), self._idle_check)

    def _udp_check(self, address: str, port: int):
        """One datagram's destination: None to send it, else why not."""
        decision = access.decide(
            self.policy, access.AccessRequest(user=self.user, src=self.client_host, dst=address, port=port,
                                              src_name=self.src_name, command="udp"),
            default_ident=self.settings.default_ident)
        if not decision.permitted:
            return f"denied by line {decision.rule.lineno}" if decision.rule else "no line matched"
        if decision.ident != "n":
            outcome = self.ident_outcome
            if outcome is None:  # not asked (cannot happen: asked at setup when a line needs it)
                return f"line {decision.rule.lineno} needs ident (?={decision.ident}), which was not asked"
            if access.ident_verdict(decision.ident, outcome) is not None:
                return f"line {decision.rule.lineno} needs ident (?={decision.ident}), which gave {outcome}"
        return None

    def _udp_resolve(self, name: str):
        return names.resolve_address(self._resolver(), name, self.settings.resolve_timeout, self.reactor)

    def _resolver(self):
        """The server's resolver, as this client's (its look-ups are bounded
        as one client's: see names.LookupLimiter) when it can be."""
        resolver = self.server.resolver
        for_owner = getattr(resolver, "for_owner", None)
        return for_owner(self.client_host) if for_owner is not None else resolver

    def _traffic(self) -> int:
        if self.udp is not None:
            counters = self.udp.counters
            return counters.datagrams_out + counters.datagrams_in
        return self.received + (self.upstream.received if self.upstream else 0)

    def _admit_failed(self, failure):
        if failure.check(defer.CancelledError):
            return None
        log.failure("session {session}: unexpected error", failure, session=self.session_id)
        self._refuse("internal-error", failure.getErrorMessage())

    # -- relaying -------------------------------------------------------------
    def _start_relay(self, upstream: UpstreamProtocol, reply_host: str, reply_port: int):
        """Reply 90 (CONNECT: our bound address; BIND: the peer's) and relay:
        in the kernel with splice(2) where possible, else by copying."""
        self.upstream = upstream
        reply = self._granted(reply_port, reply_host)
        # For metrics.  No text: twistd's log file writes every level, and one
        # line a session (session-closed) is enough there; formatting costs too.
        log.debug(None, event="session-opened", session=self.session_id,
                  command=self.request.command_name,
                  handshake_seconds=self.reactor.seconds() - self.started)
        early_client, self.early_client = self.early_client, ()
        early_upstream, self.early_upstream = self.early_upstream, ()
        if self.settings.relay_engine == "splice" and splice.usable(self.reactor, self.transport,
                                                                     upstream.transport):
            to_client = reply + b"".join(early_upstream)
            to_upstream = b"".join(early_client)
            # Written straight to the sockets, so nothing waits in Twisted's
            # buffers when the kernel takes over (order must be kept).
            rest_client = _send_now(self.transport, to_client)
            rest_upstream = _send_now(upstream.transport, to_upstream)
            self.received += len(to_upstream)
            upstream.received += len(to_client) - len(reply)
            join(self, upstream, half_close=False)
            pipes = None
            if (not rest_client and not rest_upstream and not self.read_closed and not upstream.read_closed
                    and splice.usable(self.reactor, self.transport, upstream.transport)):
                # (Asked again: a send that failed has left its transport
                # closing, and splice must not start on it.)
                pipes = self._pipes()
            if pipes is not None:
                unregister_producer(self.transport)
                unregister_producer(upstream.transport)
                self.splice = splice.SpliceRelay(self.reactor, self, upstream, on_end=self._splice_ended,
                                                 pipes=pipes)
            else:
                # A socket was full already, a side has shut down writing
                # before the relay began, or no pipes: the copying relay.
                self.transport.write(rest_client)
                upstream.transport.write(rest_upstream)
                pass_half_closes(self, upstream)
                upstream.transport.resumeProducing()
                self.transport.resumeProducing()
        else:
            write_now(self.transport, reply)
            join(self, upstream, half_close=False)
            for chunk in early_client:
                self.relayData(chunk)
            for chunk in early_upstream:
                upstream.relayData(chunk)
            pass_half_closes(self, upstream)
            if self.settings.relay_engine == "auto" and splice.AVAILABLE:
                # Setting up splice costs two pipes; most short sessions never
                # repay it.  Copy first; move to the kernel once bytes flow.
                self.dataReceived = self._auto_from_client
                upstream.dataReceived = self._auto_from_upstream
            upstream.transport.resumeProducing()
            self.transport.resumeProducing()
        idle = self.settings.idle_timeout
        if idle > 0:
            self._idle_mark = self.received + upstream.received
            self._idle_since = self.reactor.seconds()
            self.idle_timer = self.reactor.callLater(_idle_tick(idle), self._idle_check)

    # Auto engine: bound methods rather than closures, the cheapest per-session
    # state (10,000s of sessions are held open at once).
    def _auto_from_client(self, data):
        self._auto(self, data)

    def _auto_from_upstream(self, data):
        self._auto(self.upstream, data)

    def _auto(self, leg, data):
        if self.received + self.upstream.received >= SPLICE_AFTER and self._splice_ready():
            # Nothing is buffered on either side: this chunk goes straight to
            # the socket, and the kernel takes everything after it.
            rest = _send_now(leg.peer.transport, data)
            leg.received += len(data)
            if rest:  # the socket is full after all: keep order, try later
                leg.peer.transport.write(rest)
                return
            if not self._splice_ready():
                return  # the send found the connection dead: it is closing
            self._start_splice()
            return
        leg.relayData(data)

    def _splice_ready(self) -> bool:
        upstream = self.upstream
        return (self.splice is None and not self.read_closed and not upstream.read_closed
                and splice.usable(self.reactor, self.transport, upstream.transport))

    def _start_splice(self):
        upstream = self.upstream
        for leg in (self, upstream):
            leg.dataReceived = leg.relayData
        pipes = self._pipes()
        if pipes is None:
            return  # this session stays on the copying relay, and does not try again
        for leg in (self, upstream):
            unregister_producer(leg.transport)
        self.splice = splice.SpliceRelay(self.reactor, self, upstream, on_end=self._splice_ended, pipes=pipes)

    def _pipes(self):
        """The pipes for a splice relay, or None (logged) when there are none
        to be had: out of descriptors, typically (a spliced session holds
        six).  The session then relays by copy, which needs none."""
        try:
            return splice.open_pipes()
        except OSError as e:
            log.info("session {session}: relaying by copy, not splice(2): {error}",
                     session=self.session_id, error=_describe(e))
            return None

    def _splice_ended(self, failure):
        if failure is not None and self.outcome == "closed":
            self.outcome = "reset"
            self.detail = failure.getErrorMessage()

    def _idle_check(self):
        # Counting bytes beats re-arming a timer for every chunk on the hot path:
        # the check runs a few times per idle period and compares byte counts.
        self.idle_timer = None
        now = self.reactor.seconds()
        mark = self._traffic()
        if mark != self._idle_mark:
            self._idle_mark = mark
            self._idle_since = now
        idle = self.settings.idle_timeout
        if now - self._idle_since >= idle:
            self.outcome = "idle-timeout"
            self.detail = f"no traffic for {idle:g}s"
            if self.udp is not None:
                self.transport.loseConnection()
                return
            self._abort_both()
            return
        self.idle_timer = self.reactor.callLater(
            min(_idle_tick(idle), idle - (now - self._idle_since)), self._idle_check)

    def close_by_operator(self):
        """End this session at once (``sockssuite sessions --close``)."""
        if self.outcome == "closed":
            self.outcome = "operator-closed"
            self.detail = "closed through the control socket"
        self.abort()

    def abort(self):
        """Close this session at once, both legs (server shutdown)."""
        if self.outcome == "closed":
            self.outcome = "shutdown"
            self.detail = "server stopped"
        if self.splice is not None:
            self.splice.finish(Failure(error.ConnectionAborted()))
            return
        for leg in (self, self.upstream):
            if leg is not None and leg.transport.connected:
                leg.transport.abortConnection()

    def _abort_both(self):
        if self.splice is not None:
            self.splice.finish(None)
            return
        for leg in (self, self.upstream):
            if leg is not None and leg.transport.connected:
                unregister_producer(leg.transport)
                leg.transport.loseConnection()

    def upstream_lost(self, upstream, reason):
        if self.upstream is None:
            return  # lost before the relay: the connect path reports it
        if not isinstance(reason.value, ConnectionDone) and self.outcome == "closed":
            self.outcome = "reset"
            self.detail = f"destination: {reason.getErrorMessage()}"
        upstream.relayLost(reason)

    def connectionLost(self, reason):
        self.closed = True
        self._cancel_timer()
        if self.lingering is not None and self.lingering.active():
            self.lingering.cancel()
        if self.bind_timer is not None and self.bind_timer.active():
            self.bind_timer.cancel()
        self._stop_bind_listening()
        if self.idle_timer is not None and self.idle_timer.active():
            self.idle_timer.cancel()
        if self.pending is not None:
            pending, self.pending = self.pending, None
            if self.outcome == "closed":
                self.outcome = "client-gone"
                self.detail = "client closed before the session started"
            pending.cancel()
        elif self.upstream is None and self.udp is None and self.bound is not None and self.outcome == "closed":
            self.outcome = "client-gone"
            self.detail = "client closed while waiting for the inbound connection"
        elif self.request is None and self.outcome == "closed":
            self.outcome = "client-gone"
            self.detail = "client closed during the handshake"
        if self.upstream is not None:
            if not isinstance(reason.value, ConnectionDone) and self.outcome == "closed":
                self.outcome = "reset"
                self.detail = f"client: {reason.getErrorMessage()}"
            self.relayLost(reason)
        if self.udp is not None:
            udp = self.udp
            udp.stop()  # closes its sockets now (the Deferred only reports it)
            self.received, self.udp_down = udp.counters.bytes_out, udp.counters.bytes_in
        self._log_close()
        self.server.session_ended(self)

    # -- helpers -------------------------------------------------------------
    @property
    def user(self) -> str:
        return self.request.userid.decode("utf-8", "surrogateescape") if self.request else ""

    @property
    def user_text(self) -> str:
        return printable(self.request.userid.decode("utf-8", "replace")) if self.request else ""

    @property
    def destination_text(self) -> str:
        r = self.request
        if r is None:
            return ""
        if r.hostname is not None:
            return f"{r.hostname}({self.resolved or '?'})"
        return r.address

    def _log_denial(self, reason):
        r = self.request
        rule_text = None
        if self.rule_line is not None:
            rule_text = next((x.text for x in self.policy.rules if x.lineno == self.rule_line), None)
        log.info(
            "denied {command} from {client} user={user} to {destination}:{port}: {reason}",
            event="denied", session=self.session_id, client=self.client,
            user=self.user_text, command=r.command_name,
            destination=self.destination_text, requested=printable(r.destination),
            resolved=self.resolved, port=r.port, reason=reason, rule_line=self.rule_line,
            rule=rule_text, policy=self.policy.filename,
            ident=self.ident_result, ident_user=self._ident_user_text,
        )

    @property
    def _ident_user_text(self):
        return printable(self.ident_user) if self.ident_user is not None else None

    def _refuse(self, outcome, detail, reply=socks4.REJECTED, raw_reply=None):
        """End the session before any relay: reply (91 unless told otherwise;
        the SOCKS5 code for the outcome to a SOCKS5 client) and close."""
        self.outcome = outcome
        self.detail = detail
        self.pending = None
        if self.transport.connected and not self.closed:
            if raw_reply is not None:
                self.transport.write(raw_reply)
            elif reply is not None:
                if self.version == 5:
                    if self.socks5 is None:  # past the handshake: a request reply is due
                        self.transport.write(socks5wire.encode_reply(socks5.reply_for(outcome, detail)))
                else:
                    self.transport.write(socks4.encode_reply(reply))
            if outcome in _NO_LINGER:
                self.transport.loseConnection()
            else:
                self._close_after_reply()
        self.socks5 = None  # a password check finishing now must not go on

    def _close_after_reply(self):
        """A lingering close.  Closing a socket with unread input makes the
        kernel send a reset, which can destroy the refusal reply before the
        client has read it (a client that sent its request and more at
        once, as pipelining SOCKS5 clients do, would never learn why).  So:
        shut down writing after the reply, read and drop whatever still
        comes, and close when the client closes, or after LINGER seconds."""
        transport = self.transport
        if self.read_closed or not hasattr(transport, "loseWriteConnection"):
            transport.loseConnection()
            return
        self.dataReceived = _discard
        self.lingering = self.reactor.callLater(LINGER, transport.loseConnection)
        transport.loseWriteConnection()
        transport.resumeProducing()  # the early-data bound may have paused reading

    def _granted(self, port: int, host: str) -> bytes:
        if self.version == 5:
            return socks5wire.encode_reply(socks5wire.SUCCEEDED, host, port)
        if ":" in host:  # an IPv6 address has no place in a SOCKS4 reply
            host = "0.0.0.0"
        return socks4.encode_reply(socks4.GRANTED, port, host)

    def _run_rule_command(self, rule, what):
        if rule is None or rule.command is None:
            return
        self.server.commands.run(rule, self._command_values(), f"line {rule.lineno} {what}")

    def _command_values(self) -> dict[str, str]:
        r = self.request
        try:
            service = socket.getservbyport(r.port, "tcp")
        except OSError:
            service = str(r.port)
        return {
            "A": self.src_name or self.client_host,
            "a": self.client_host,
            "c": r.command_name,
            "p": str(os.getpid()),
            "S": service,
            "s": str(r.port),
            "U": self.ident_user or "unknown",
            "u": self.user,
            "Z": r.hostname or self.dst_name or self.resolved or r.address,
            "z": self.resolved or r.address,
        }

    def _datagram_counts(self):
        if self.udp is None:
            return None
        c = self.udp.counters
        return {"up": c.datagrams_out, "down": c.datagrams_in, "dropped": c.dropped, "drops": dict(c.drops)}

    def _log_close(self):
        r = self.request
        up = self.received
        down = self.upstream.received if self.upstream else self.udp_down
        duration = self.reactor.seconds() - self.started
        command = r.command_name if r else "-"
        destination = self.destination_text or "-"
        port = r.port if r else 0
        ident_user = self._ident_user_text
        # The text line is made here, with one f-string: twisted.logger's own
        # formatting of a 20-field format string was a sixth of the proxy's
        # CPU time per short session.  The fields stay in the event, for
        # --log-json and the metrics; "log_text" is not a JSON field.
        text = (f"session {self.session_id} {command} from {self.client} user={self.user_text} "
                f"to {destination}:{port} rule={self.rule_line} ident={self.ident_result}"
                f"{f' ident_user={ident_user}' if self.ident_user is not None else ''} "
                f"up={up} down={down} duration={duration:.3f}s outcome={self.outcome}"
                f"{f' ({self.detail})' if self.detail else ''}")
        log.info(
            "{log_text}",
            log_text=text,
            event="session-closed",
            session=self.session_id,
            version=self.first_byte if self.first_byte in (4, 5) else None,
            client=self.client,
            user=self.user_text,
            command=command,
            destination=destination,
            requested=printable(r.destination) if r else None,
            resolved=self.resolved,
            port=port,
            rule_line=self.rule_line,
            ident=self.ident_result,
            ident_user=ident_user,
            ident_seconds=self.ident_seconds,
            engine=("splice" if self.splice is not None else "copy") if self.upstream else None,
            bound=self.bound,
            peer=self.peer_address,
            datagrams=self._datagram_counts(),
            bytes_up=up,
            bytes_down=down,
            duration=round(duration, 6),
            outcome=self.outcome,
            detail=self.detail,
        )



# -- issue 9: out of file descriptors (EMFILE) ----------------------------------

#: First and longest pause of accepting after accept() failed for want of
#: file descriptors or memory; the pause doubles while the failures go on.
ACCEPT_BACKOFF_MIN = 0.1
ACCEPT_BACKOFF_MAX = 1.0
_ACCEPT_RESOURCE_ERRORS = ("EMFILE", "ENFILE", "ENOBUFS", "ENOMEM")


class AcceptGuard:
    """Stops a listening port from spinning when accept() fails for want of
    resources.

    Twisted's ``tcp.Port.doRead`` logs such a failure and returns.  For
    ENFILE, ENOBUFS and ENOMEM the listening socket stays readable, and a
    level-triggered reactor (epoll, poll, select) calls ``doRead`` again at
    once: a busy loop for as long as the shortage lasts.  For EMFILE it first
    frees the one descriptor it keeps in reserve and accepts-and-closes every
    pending connection, which drains the backlog but, under a stream of new
    connections, keeps the process accepting and closing at full speed.

    The guard watches the port's own accept log events and, after a failed
    round, stops reading the port for ACCEPT_BACKOFF_MIN seconds (doubling
    up to ACCEPT_BACKOFF_MAX while the failures go on; a good round resets
    it); clients that arrive meanwhile wait in the listen backlog.
    Installed on every port of the SOCKS service by :func:`guard_accept`."""

    def __init__(self, port, reactor):
        from twisted.logger import Logger as _Logger
        self.port = port
        self.reactor = reactor
        self.delay = ACCEPT_BACKOFF_MIN
        self.failure: str | None = None
        self.timer = None
        self.pauses = 0
        original = port._logger
        self._forward = original.observer
        port._logger = _Logger(namespace=original.namespace, observer=self._observe)
        self._doRead = port.doRead
        port.doRead = self.doRead

    def _observe(self, event):
        error_name = event.get("acceptError")
        if error_name in _ACCEPT_RESOURCE_ERRORS:
            self.failure = error_name
        elif "EMFILE" in str(event.get("log_format", "")):
            self.failure = "EMFILE"
        self._forward(event)

    def doRead(self):
        self.failure = None
        result = self._doRead()
        if self.failure is None:
            self.delay = ACCEPT_BACKOFF_MIN
            return result
        delay = self.delay
        self.delay = min(delay * 2, ACCEPT_BACKOFF_MAX)
        self.pauses += 1
        self.port.stopReading()
        log.warn("cannot accept connections ({error}: out of file descriptors or memory); "
                 "not accepting for {delay:g}s", error=self.failure, delay=delay,
                 event="accept-paused")
        if self.timer is None or not self.timer.active():
            self.timer = self.reactor.callLater(delay, self._resume)
        return result

    def _resume(self):
        self.timer = None
        if getattr(self.port, "connected", False) and not getattr(self.port, "disconnecting", False):
            self.port.startReading()

    def cancel(self):
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None


def guard_accept(port, reactor):
    """Install an :class:`AcceptGuard` on a listening port (ports that are not
    Twisted's tcp/unix ports are left alone); returns the port."""
    if hasattr(port, "_logger") and hasattr(port, "doRead") and hasattr(port, "stopReading"):
        guard = AcceptGuard(port, reactor)
        port.accept_guard = guard
        stop = port.stopListening

        def stopListening(*args, **kwargs):
            guard.cancel()
            return stop(*args, **kwargs)

        port.stopListening = port.loseConnection = stopListening
    return port

# -- end of issue 9 (EMFILE) ------------------------------------------------------


def _client_of(address) -> tuple[str, str | None, int | None]:
    """(text for logs, address for rules, port or None) of a peer.

    IPv4-mapped IPv6 clients (a tcp6 listener) are their IPv4 address; clients
    on a UNIX socket are local, so they count as 127.0.0.1 for the rules (and
    have no identd); other IPv6 clients are their IPv6 address (which IPv4
    lines of sockd.conf do not match, unless their mask is 0.0.0.0)."""
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    if host is None:
        name = getattr(address, "name", None)
        return f"unix:{name.decode('utf-8', 'replace') if isinstance(name, bytes) else name or '-'}", \
            "127.0.0.1", None
    if ":" in host:
        text = f"[{host}]:{port}"
        if host.lower().startswith("::ffff:") and "." in host:
            return text, host[7:], port
        return text, host.partition("%")[0], port
    return f"{host}:{port}", host, port


def _discard(data):
    pass


def _idle_tick(idle: float) -> float:
    return max(idle / 8.0, 0.05)


def _nodelay(transport):
    if getattr(transport, "nodelay_set", False):
        return  # set already (LeanClient: before connecting)
    try:
        transport.setTcpNoDelay(True)
    except (AttributeError, OSError):
        pass


def _describe(failure: Exception) -> str:
    if isinstance(failure, (defer.TimeoutError, error.TimeoutError)):
        return "connect timed out"
    return str(failure) or failure.__class__.__name__
