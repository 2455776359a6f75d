"""The datagram engine of one SOCKS5 UDP ASSOCIATE (RFC 1928 §7).

A :class:`UDPAssociation` owns the sockets of one association: a
*client-facing* socket where the client sends datagrams wrapped in the §7
header, and up to two *outward* sockets (one per address family, opened on
first use) that send the unwrapped data to its destinations and receive the
answers.  The SOCKS server creates it when a UDP ASSOCIATE request is granted,
puts what :meth:`~UDPAssociation.start` fires with in the reply, and calls
:meth:`~UDPAssociation.stop` when the TCP control connection ends ("A UDP
association terminates when the TCP connection that the UDP ASSOCIATE
request arrived on terminates").

Everything it needs from the server is injected, so it is tested over real
loopback sockets without a SOCKS server::

    association = UDPAssociation(
        reactor,
        client_host=peer.host,          # the TCP client's address
        client_port=request.port,       # DST.PORT of the request; 0 = not announced
        listen_interface=local.host,    # the address the TCP client reached us on
        check=lambda address, port: None if allowed(address, port) else "denied by line 4",
        resolve=lambda name: resolver.getHostByName(name),
        log_prefix="session 12: ",
    )
    host, port = await association.start()   # BND.ADDR, BND.PORT of the reply
    ...
    await association.stop()                 # when the TCP connection is lost

Parameters (keywords after ``reactor``):

``client_host``, ``client_port``
    Where the client's datagrams must come from.  Datagrams on the
    client-facing socket from any other address are dropped (§7: "It MUST
    drop any datagrams arriving from any source IP address other than the one
    recorded").  A ``client_port`` of 0 means the client did not announce its
    port: the first datagram from ``client_host`` fixes it, and later ones
    from other ports are dropped.  An IPv4-mapped IPv6 address (a dual-stack
    listener's view of an IPv4 client) counts as its IPv4 address, here and
    on the socket.
``listen_interface``
    The address literal the client-facing socket binds (port 0, so the
    kernel picks one).  Pass the local address of the TCP control connection
    (``transport.getHost().host``): it is reachable from the client, and it is
    concrete even when the SOCKS server listens on a wildcard.  An
    IPv4-mapped address is bound as IPv4.  It must be of the client's address
    family, or the IPv6 wildcard ``::`` (:class:`ValueError` otherwise).
``outside_interface``
    The address literal the outward socket binds, or ``""`` for the any-address
    of the destination's family (``0.0.0.0`` or ``::``).  With an address
    given, destinations of the other family are dropped (reason
    ``no-outside-socket``): the operator chose where datagrams leave from.
``check(address, port)``
    Decides each destination: ``None`` lets the datagram go, anything else
    (the refusal's text, e.g. ``"denied by line 4"``) drops it.  It may return
    that value or a Deferred of it.  It is called with the address the
    datagram will really go to (a name is resolved first; IPv4-mapped
    addresses arrive as IPv4), so nothing is resolved twice between the check
    and the send.  An exception or a failed Deferred drops the datagram
    (reason ``check-failed``).  The association does not cache verdicts, so a
    reloaded policy applies to the next datagram.
``resolve(name)``
    A host name (ASCII, lower case, no trailing dot) to a Deferred of an
    IPv4 or IPv6 address literal.  Results are cached per association
    (``max_names`` names for ``name_ttl`` seconds; failures are not cached),
    and datagrams to a name being looked up wait for that one look-up.
``max_datagram``
    The largest payload (the data after the header) forwarded either way;
    larger ones are dropped (reason ``oversize``).
``max_peers``
    How many destinations ``(address, port)`` are remembered; answers are
    passed back only from these, exactly.  The least recently used is
    forgotten first.
``max_names``, ``name_ttl``
    Bounds of the name cache.
``max_pending``, ``max_pending_bytes``, ``pending_timeout``
    At most ``max_pending`` datagrams, of ``max_pending_bytes`` bytes in all,
    wait for a look-up or a Deferred verdict at once (more are dropped,
    reason ``busy``), each for at most
    ``pending_timeout`` seconds (then dropped as ``resolve-failed`` or
    ``check-failed``).  Injected Deferreds are never cancelled: they may be
    shared.
``log_prefix``
    Put verbatim in front of this association's log messages (e.g.
    ``"session 12: "``).
``drop_log``
    A :class:`DropLog` to share between associations, so that a thousand
    flooded associations log one line per second per reason, not a thousand;
    by default each association has its own.

Datagrams that are not forwarded are dropped, counted in
``counters.drops[reason]`` and logged (event ``datagram-dropped``, fields
``reason`` and ``detail``, at most once a second per reason with the number
suppressed since).  Reasons:

* from the client: ``wrong-sender`` (not the client's address or port),
  ``bad-header`` (not a §7 header: :func:`sockssuite.wire.udp.decode_udp`
  says why), ``fragment`` (FRAG not 0: there is no reassembly, which §7
  allows), ``oversize``, ``refused-address`` (``0.0.0.0/8``, ``::``, or a name
  resolving to something that is not an address), ``resolve-failed``,
  ``denied`` (``check`` said no), ``check-failed``, ``busy``,
  ``no-outside-socket``, ``send-failed`` (the kernel refused the send:
  ``EMSGSIZE``, ``ENETUNREACH``, ``EACCES`` for a broadcast address...);
* from outside: ``unsolicited`` (not from a remembered destination, exactly),
  ``oversize``, ``send-failed`` (towards the client);
* ``internal-error``: a bug; the traceback is logged.

Nothing raises out of the sockets' ``datagramReceived``.

Twisted's UDP ports log ``... starting on PORT`` and ``(UDP Port PORT
Closed)`` through the legacy log for every socket opened and closed; this
module's own events are in the namespace ``sockssuite.udpassociate``.
"""

from __future__ import annotations

import math
import socket
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable

from twisted.internet import defer, protocol
from twisted.logger import Logger

from .names import normalize_address, not_a_datagram_destination
from .textsafe import printable
from .wire import udp as udpwire

__all__ = [
    "DROP_LOG_INTERVAL",
    "MAX_DATAGRAM",
    "DropLog",
    "UDPAssociation",
    "UDPCounters",
    "normalize_address",
]

log = Logger(namespace="sockssuite.udpassociate")

#: Largest UDP payload over IPv4.
MAX_DATAGRAM = 65507
#: Payload bytes of the datagrams one association holds while they wait for
#: a name or a verdict (64 datagrams of 64 KiB would be 4 MiB).
MAX_PENDING_BYTES = 256 * 1024
#: Drops of one reason are logged at most this often (seconds).
DROP_LOG_INTERVAL = 1.0
#: What the sockets read at most: any UDP datagram whole (Twisted's default
#: of 8 KiB would cut larger ones short without a word).
_READ_SIZE = 65535

_NEW, _RUNNING, _STOPPED = "new", "running", "stopped"
def _family(address: str) -> int:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def _unmapped(host: str) -> str:
    """A source address as the association compares it: the kernel writes an
    IPv4 client on a dual-stack socket as ``::ffff:a.b.c.d``."""
    if host.startswith("::ffff:") and "." in host:
        return host[7:]
    return host


@dataclass(slots=True)
class UDPCounters:
    """What an association did.  ``bytes_*`` count payload (the data after
    the §7 header), ``*_out`` from the client towards destinations, ``*_in``
    answers back to the client; ``drops`` maps each reason to its count."""

    datagrams_out: int = 0
    bytes_out: int = 0
    datagrams_in: int = 0
    bytes_in: int = 0
    drops: dict[str, int] = field(default_factory=dict)

    @property
    def dropped(self) -> int:
        """Datagrams dropped, all reasons together."""
        return sum(self.drops.values())


class DropLog:
    """Logs dropped datagrams, at most one line per reason every *interval*
    seconds; the line carries how many were suppressed since the last one.
    *clock* gives the time (``reactor.seconds``)."""

    def __init__(self, clock: Callable[[], float], interval: float = DROP_LOG_INTERVAL):
        self._clock = clock
        self.interval = interval
        self._last: dict[str, list] = {}  # reason -> [time logged, suppressed since]

    def admit(self, reason: str) -> int | None:
        """May a line about *reason* be logged now?  None if not (it is
        counted as suppressed), else how many were suppressed since the last."""
        now = self._clock()
        state = self._last.get(reason)
        if state is None:
            state = self._last[reason] = [-math.inf, 0]
        if now - state[0] < self.interval:
            state[1] += 1
            return None
        suppressed = state[1]
        state[0], state[1] = now, 0
        return suppressed

    def dropped(self, reason: str, detail: str, prefix: str = "") -> None:
        """Log a datagram dropped for *reason* (event ``datagram-dropped``),
        unless one of that reason was logged less than *interval* ago."""
        suppressed = self.admit(reason)
        if suppressed is None:
            return
        log.info("{prefix}UDP associate dropped ({reason}): {detail}{more}", event="datagram-dropped",
                 prefix=prefix, reason=reason, detail=printable(detail), suppressed=suppressed,
                 more=f" (and {suppressed} more since the last report)" if suppressed else "")


class _ClientSide(protocol.DatagramProtocol):
    """The client-facing socket."""

    noisy = False

    def __init__(self, association: UDPAssociation):
        self.association = association

    def datagramReceived(self, data, addr):
        self.association._from_client(data, addr)

    def stopProtocol(self):
        self.association._socket_lost(self)


class _OutwardSide(protocol.DatagramProtocol):
    """The outward socket of one address family."""

    noisy = False

    def __init__(self, association: UDPAssociation, family: int):
        self.association = association
        self.family = family

    def datagramReceived(self, data, addr):
        self.association._from_outside(data, addr)

    def stopProtocol(self):
        self.association._socket_lost(self)


class UDPAssociation:
    """The sockets, peers, name cache and counters of one SOCKS5 UDP
    association; see the module docstring for the parameters.

    :raises ValueError: for a ``client_host``, ``listen_interface`` or
        ``outside_interface`` that is not an address literal, an unspecified
        ``client_host`` (``0.0.0.0``, ``::``), a listen address of the wrong
        family, or a bound out of range.
    """

    def __init__(self, reactor, *, client_host: str, client_port: int, listen_interface: str,
                 check: Callable[[str, int], Any], resolve: Callable[[str], Any],
                 outside_interface: str = "", max_datagram: int = MAX_DATAGRAM, max_peers: int = 256,
                 max_names: int = 64, name_ttl: float = 60.0, max_pending: int = 64,
                 max_pending_bytes: int = MAX_PENDING_BYTES, pending_timeout: float = 15.0, log_prefix: str = "", drop_log: DropLog | None = None):
        host = normalize_address(client_host)
        if host is None:
            raise ValueError(f"client_host {client_host!r} is not an IPv4 or IPv6 address")
        if host in ("0.0.0.0", "::"):
            # The request's all-zeros DST.ADDR ("not known yet") is no client
            # address: pass the TCP control connection's peer.
            raise ValueError(f"client_host {host} is unspecified: pass the address of the TCP client")
        if isinstance(client_port, bool) or not isinstance(client_port, int) or not 0 <= client_port <= 0xFFFF:
            raise ValueError(f"client_port {client_port!r} out of range 0..65535")
        listen = normalize_address(listen_interface)
        if listen is None:
            raise ValueError(f"listen_interface {listen_interface!r} is not an IPv4 or IPv6 address")
        if listen != "::" and _family(listen) != _family(host):
            raise ValueError(f"the client {host} cannot reach a socket on {listen} (another address family)")
        outside = ""
        if outside_interface:
            outside = normalize_address(outside_interface)
            if outside is None:
                raise ValueError(f"outside_interface {outside_interface!r} is not an IPv4 or IPv6 address")
        for name, value, least in (("max_datagram", max_datagram, 1), ("max_peers", max_peers, 1),
                                   ("max_names", max_names, 1), ("max_pending", max_pending, 1),
                                   ("max_pending_bytes", max_pending_bytes, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"{name} must be an integer of at least {least}, not {value!r}")
        if not pending_timeout > 0:
            raise ValueError(f"pending_timeout must be more than 0 seconds, not {pending_timeout!r}")
        if not name_ttl >= 0:
            raise ValueError(f"name_ttl must be 0 seconds or more, not {name_ttl!r}")
        self._reactor = reactor
        self.client_host = host
        #: The client's port: announced, learnt from its first datagram, or 0.
        self.client_port = client_port
        self.listen_interface = listen
        self.outside_interface = outside
        self.max_datagram = max_datagram
        self.max_peers = max_peers
        self.max_names = max_names
        self.name_ttl = name_ttl
        self.max_pending = max_pending
        self.max_pending_bytes = max_pending_bytes
        self.pending_timeout = pending_timeout
        self.log_prefix = log_prefix
        self._check = check
        self._resolve = resolve
        self._drop_log = drop_log if drop_log is not None else DropLog(reactor.seconds)
        self.counters = UDPCounters()
        #: When a datagram last went through, either way (``reactor.seconds``).
        self.last_activity: float | None = None
        self._state = _NEW
        self._client_socket = None
        self._client_send_host = host
        self._outward: dict[int, Any] = {}
        self._peers: OrderedDict[tuple[str, int], None] = OrderedDict()
        self._names: OrderedDict[str, tuple[str, float]] = OrderedDict()  # name -> (address, expiry)
        self._resolving: dict[str, list] = {}  # name -> datagrams waiting for it
        self._held = 0  # datagrams waiting for a look-up or a verdict
        self._held_bytes = 0  # and their payload bytes
        self._timers: set = set()
        self._stopped: defer.Deferred | None = None

    # -- life cycle ---------------------------------------------------------------
    def start(self) -> defer.Deferred:
        """Open the client-facing socket.

        :returns: a Deferred firing with ``(host, port)`` of that socket (the
            reply's BND.ADDR and BND.PORT), or failing with
            :class:`twisted.internet.error.CannotListenError`.
        """
        if self._state != _NEW:
            return defer.fail(RuntimeError(f"this UDP association is already {self._state}"))
        try:
            port = self._reactor.listenUDP(0, _ClientSide(self), interface=self.listen_interface,
                                           maxPacketSize=_READ_SIZE)
        except Exception:
            self._state = _STOPPED
            self._stopped = defer.succeed(None)
            return defer.fail()
        self._client_socket = port
        bound = port.getHost()
        if bound.type == "UDP" and ":" in bound.host and ":" not in self.client_host:
            self._client_send_host = "::ffff:" + self.client_host  # an IPv4 client of a `::` socket
        self._state = _RUNNING
        log.debug("{prefix}UDP association for {client} on {host}:{port}", event="udp-association-started",
                  prefix=self.log_prefix, client=self._client_text(), host=bound.host, port=bound.port)
        return defer.succeed((bound.host, bound.port))

    def stop(self) -> defer.Deferred:
        """Close every socket and forget everything; datagrams still waiting
        for a look-up or a verdict are dropped without a count.  Idempotent.

        :returns: a Deferred firing with None once every socket is closed
            (its port free again); every call gets its own.
        """
        if self._stopped is None:
            self._state = _STOPPED
            for timer in self._timers:
                if timer.active():
                    timer.cancel()
            self._timers.clear()
            self._resolving.clear()
            self._held = self._held_bytes = 0
            self._peers.clear()
            self._names.clear()
            sockets = [s for s in (self._client_socket, *self._outward.values()) if s is not None]
            self._client_socket = None
            self._outward.clear()
            closing = [defer.maybeDeferred(s.stopListening) for s in sockets]
            self._stopped = defer.DeferredList(closing, consumeErrors=True)
            self._stopped.addCallback(lambda _: None)
            counters = self.counters
            log.debug("{prefix}UDP association for {client} stopped: out {datagrams_out} datagram(s) "
                      "{bytes_out} B, in {datagrams_in} datagram(s) {bytes_in} B, dropped {dropped}",
                      event="udp-association-stopped", prefix=self.log_prefix, client=self._client_text(),
                      datagrams_out=counters.datagrams_out, bytes_out=counters.bytes_out,
                      datagrams_in=counters.datagrams_in, bytes_in=counters.bytes_in,
                      dropped=counters.dropped, drops=dict(counters.drops))
        mine = defer.Deferred()

        def fire(result):
            mine.callback(None)
            return result

        self._stopped.addBoth(fire)
        return mine

    @property
    def running(self) -> bool:
        return self._state == _RUNNING

    def bound_addresses(self) -> list[tuple[str, int]]:
        """``(host, port)`` of each open socket, the client-facing one first."""
        out = []
        for s in (self._client_socket, *self._outward.values()):
            if s is not None:
                address = s.getHost()
                out.append((address.host, address.port))
        return out

    def _socket_lost(self, side) -> None:
        # stopProtocol: after stop() (expected), or Twisted closed a socket
        # after a read error it did not expect.
        if self._state != _RUNNING:
            return
        if isinstance(side, _ClientSide):
            log.error("{prefix}UDP association for {client}: the client-facing socket closed; "
                      "the association stops", event="udp-association-failed", prefix=self.log_prefix,
                      client=self._client_text())
            self.stop()
        else:
            port = self._outward.get(side.family)
            if port is not None and port.protocol is side:
                del self._outward[side.family]  # the next datagram of that family opens another

    # -- from the client ------------------------------------------------------------
    def _from_client(self, data: bytes, addr) -> None:
        try:
            self._client_datagram(data, addr)
        except Exception:
            self._internal_error()

    def _client_datagram(self, data: bytes, addr) -> None:
        if self._state != _RUNNING:
            return
        host, port = addr[0], addr[1]
        if host != self.client_host and _unmapped(host) != self.client_host:
            self._drop("wrong-sender", f"{len(data)}-byte datagram from {host}:{port}, "
                       f"not from the client {self.client_host}")
            return
        if port != self.client_port:
            if self.client_port != 0:
                self._drop("wrong-sender", f"{len(data)}-byte datagram from {host}:{port}, "
                           f"not from the client's port {self.client_port}")
                return
            self.client_port = port
            log.debug("{prefix}UDP association: the client's first datagram came from port {port}; "
                      "only that port is accepted now", event="udp-client-port", prefix=self.log_prefix,
                      port=port)
        try:
            packet = udpwire.decode_udp(data)
        except udpwire.UDPHeaderError as e:
            self._drop("bad-header", f"datagram from {self._client_text()}: {e}")
            return
        if packet.frag != 0:
            self._drop("fragment", f"datagram from {self._client_text()} with FRAG {packet.frag} "
                       "(no reassembly)")
            return
        if len(packet.data) > self.max_datagram:
            self._drop("oversize", f"{len(packet.data)}-byte payload to {packet.host}:{packet.port} "
                       f"over the {self.max_datagram}-byte limit")
            return
        if packet.atyp == udpwire.ATYP_DOMAINNAME:
            self._to_name(packet)
        else:
            self._to_address(_unmapped(packet.host), packet, None)

    def _to_name(self, packet) -> None:
        name = packet.host.rstrip(".").lower()
        cached = self._names.get(name)
        if cached is not None:
            if cached[1] > self._reactor.seconds():
                self._names.move_to_end(name)
                self._to_address(cached[0], packet, name)
                return
            del self._names[name]
        if self._full(packet):
            self._drop("busy", f"datagram to {name}:{packet.port}: {self._held} datagrams "
                       f"({self._held_bytes} bytes) already wait for a look-up or a verdict")
            return
        self._hold(packet)
        waiting = self._resolving.get(name)
        if waiting is not None:
            waiting.append(packet)
            return
        waiting = self._resolving[name] = [packet]
        try:
            answer = self._resolve(name)
        except Exception:
            answer = defer.fail()
        self._wait_for(answer, lambda address, error: self._resolved(name, waiting, address, error))

    def _resolved(self, name: str, waiting: list, address, error: str | None) -> None:
        if self._resolving.get(name) is not waiting:
            return
        del self._resolving[name]
        # Released now, also on a timeout: the look-up may still hold this
        # list, so it is emptied below (its datagrams are not kept for it).
        waiting, pending = list(waiting), waiting
        pending.clear()
        for packet in waiting:
            self._release(packet)
        if error is not None:
            for packet in waiting:
                self._drop("resolve-failed", f"datagram to {name}:{packet.port}: cannot resolve {name}: {error}")
            return
        normalized = normalize_address(address)
        if normalized is None:
            for packet in waiting:
                self._drop("refused-address", f"datagram to {name}:{packet.port}: {name} resolved to "
                           f"{printable(repr(address), 80)}, not an address")
            return
        if self.name_ttl > 0:
            if len(self._names) >= self.max_names:
                self._names.popitem(last=False)
            self._names[name] = (normalized, self._reactor.seconds() + self.name_ttl)
        for packet in waiting:
            self._to_address(normalized, packet, name)

    def _to_address(self, address: str, packet, name: str | None) -> None:
        special = not_a_datagram_destination(address)
        if special is not None:
            self._drop("refused-address", f"datagram to {self._towards(address, packet.port, name)}: "
                       f"not a destination ({special})")
            return
        try:
            verdict = self._check(address, packet.port)
        except Exception as e:
            self._drop("check-failed", f"datagram to {self._towards(address, packet.port, name)}: "
                       f"the check failed: {e!r}")
            return
        if not isinstance(verdict, defer.Deferred):
            self._decided(address, packet, name, verdict, None)
            return
        if self._full(packet):
            verdict.addErrback(lambda f: None)
            self._drop("busy", f"datagram to {self._towards(address, packet.port, name)}: {self._held} "
                       f"datagrams ({self._held_bytes} bytes) already wait for a look-up or a verdict")
            return
        self._hold(packet)

        def settle(result, error):
            self._release(packet)
            self._decided(address, packet, name, result, error)

        self._wait_for(verdict, settle)

    def _decided(self, address: str, packet, name: str | None, verdict, error: str | None) -> None:
        if error is not None:
            self._drop("check-failed", f"datagram to {self._towards(address, packet.port, name)}: "
                       f"the check failed: {error}")
            return
        if verdict is not None:
            self._drop("denied", f"datagram to {self._towards(address, packet.port, name)}: {verdict}")
            return
        self._send_out(address, packet, name)

    def _send_out(self, address: str, packet, name: str | None) -> None:
        family = _family(address)
        outward = self._outward.get(family)
        if outward is None:
            outward = self._open_outward(family, address, packet, name)
            if outward is None:
                return
        destination = (address, packet.port)
        try:
            outward.write(packet.data, destination)
        except Exception as e:  # EMSGSIZE, ENETUNREACH, EACCES...: a lost datagram, as UDP goes
            self._drop("send-failed", f"sending {len(packet.data)} B to "
                       f"{self._towards(address, packet.port, name)}: {e}")
            return
        peers = self._peers
        if destination in peers:
            peers.move_to_end(destination)
        else:
            if len(peers) >= self.max_peers:
                peers.popitem(last=False)
            peers[destination] = None
        counters = self.counters
        counters.datagrams_out += 1
        counters.bytes_out += len(packet.data)
        self.last_activity = self._reactor.seconds()

    def _open_outward(self, family: int, address: str, packet, name: str | None):
        interface = self.outside_interface
        if interface and _family(interface) != family:
            self._drop("no-outside-socket", f"datagram to {self._towards(address, packet.port, name)}: "
                       f"the outside interface {interface} is of the other address family")
            return None
        if not interface:
            interface = "::" if family == socket.AF_INET6 else "0.0.0.0"
        try:
            port = self._reactor.listenUDP(0, _OutwardSide(self, family), interface=interface,
                                           maxPacketSize=_READ_SIZE)
        except Exception as e:
            self._drop("no-outside-socket", f"datagram to {self._towards(address, packet.port, name)}: "
                       f"cannot open a socket on {interface}: {e}")
            return None
        self._outward[family] = port
        log.debug("{prefix}UDP association for {client}: outward socket on {interface}:{port}",
                  event="udp-outward-opened", prefix=self.log_prefix, client=self._client_text(),
                  interface=interface, port=port.getHost().port)
        return port

    # -- from outside ----------------------------------------------------------------
    def _from_outside(self, data: bytes, addr) -> None:
        try:
            self._answer(data, addr)
        except Exception:
            self._internal_error()

    def _answer(self, data: bytes, addr) -> None:
        if self._state != _RUNNING:
            return
        source = (addr[0], addr[1])
        # The kernel writes sources in the form normalize_address() gives, and
        # an IPv4 source on the IPv6 socket as ::ffff:a.b.c.d, which matches
        # no peer: answers come back only on the socket that sent.
        if source not in self._peers:
            self._drop("unsolicited", f"{len(data)}-byte datagram from {source[0]}:{source[1]}: "
                       "the client sent nothing there")
            return
        if len(data) > self.max_datagram:
            self._drop("oversize", f"{len(data)}-byte answer from {source[0]}:{source[1]} over the "
                       f"{self.max_datagram}-byte limit")
            return
        if self.client_port == 0:  # unreachable: peers come from the client's datagrams
            self._drop("unsolicited", f"answer from {source[0]}:{source[1]} before the client's port is known")
            return
        wrapped = udpwire.encode_udp(source[0], source[1], data)
        try:
            self._client_socket.write(wrapped, (self._client_send_host, self.client_port))
        except Exception as e:
            self._drop("send-failed", f"passing {len(data)} B from {source[0]}:{source[1]} "
                       f"to the client {self._client_text()}: {e}")
            return
        counters = self.counters
        counters.datagrams_in += 1
        counters.bytes_in += len(data)
        self.last_activity = self._reactor.seconds()

    # -- helpers ------------------------------------------------------------------------
    def _wait_for(self, d, settle: Callable[[Any, str | None], None]) -> None:
        """Call ``settle(result, None)`` or ``settle(None, error text)`` once,
        when *d* (an injected Deferred, or a plain value) fires, or with an
        error after ``pending_timeout``; never after :meth:`stop`."""
        if not isinstance(d, defer.Deferred):
            d = defer.succeed(d)
        done = False
        timer = None

        def finish(result, error):
            nonlocal done
            if done:
                return None
            done = True
            if timer is not None:
                self._timers.discard(timer)
                if timer.active():
                    timer.cancel()
            if self._state != _RUNNING:
                return None
            try:
                settle(result, error)
            except Exception:
                self._internal_error()
            return None

        def failed(f):
            return finish(None, f.getErrorMessage())

        d.addCallbacks(lambda result: finish(result, None), failed)
        if not done:
            timer = self._reactor.callLater(self.pending_timeout, finish, None,
                                            f"no answer in {self.pending_timeout:g} s")
            self._timers.add(timer)

    def _full(self, packet) -> bool:
        return self._held >= self.max_pending or self._held_bytes + len(packet.data) > self.max_pending_bytes

    def _hold(self, packet) -> None:
        self._held += 1
        self._held_bytes += len(packet.data)

    def _release(self, packet) -> None:
        self._held -= 1
        self._held_bytes -= len(packet.data)

    def _towards(self, address: str, port: int, name: str | None) -> str:
        return f"{name}({address}):{port}" if name else f"{address}:{port}"

    def _client_text(self) -> str:
        return f"{self.client_host}:{self.client_port or '*'}"

    def _drop(self, reason: str, detail: str) -> None:
        drops = self.counters.drops
        drops[reason] = drops.get(reason, 0) + 1
        self._drop_log.dropped(reason, detail, self.log_prefix)

    def _internal_error(self) -> None:
        drops = self.counters.drops
        drops["internal-error"] = drops.get("internal-error", 0) + 1
        if self._drop_log.admit("internal-error") is None:
            return
        log.failure("{prefix}UDP association for {client}: a datagram made a bug show",
                    event="udp-internal-error", prefix=self.log_prefix, client=self._client_text())
