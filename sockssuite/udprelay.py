"""The UDPrelay-style datagram forwarder: ``relay`` and ``encapsulate`` lines.

One UDP socket listens on each line's local port (on ``--udp-interface``).
Every inside sender (address, port) on a port gets an *association* from the
bounded, expiring table of :mod:`sockssuite.associations`, with its own
outside socket (an ephemeral port, or the line's fixed ``localport2``), so
answers find their way back to the right sender.  An answer is passed back
only when it comes from exactly where the association sent to; everything
else is dropped and counted, so the relay answers nobody who did not speak
first and cannot be used to inject or amplify.

Encapsulated datagrams carry the RFC 1928 §7 header; their destination is
resolved and checked against the sockd.conf rules (as a CONNECT from the
sender with no user name) before anything is sent; answers are wrapped with
the outside sender's address.
"""

from __future__ import annotations

from twisted.application import service
from twisted.internet import protocol
from twisted.internet.abstract import isIPAddress
from twisted.internet.error import CannotListenError
from twisted.logger import Logger

from . import access, names, udprelay_conf
from .associations import AssociationTable
from .service import BoundService, StartError
from .textsafe import printable
from .udpassociate import DropLog
from .wire import udp as udpwire

log = Logger(namespace="sockssuite.udprelay")

#: Largest UDP payload over IPv4.
MAX_DATAGRAM = 65507
#: Drops of one reason are logged at most this often (seconds); the log line
#: carries the count suppressed meanwhile.
DROP_LOG_INTERVAL = 1.0


class _LocalPort(protocol.DatagramProtocol):
    """The inside-facing socket of one udprelay.conf line."""

    noisy = False

    def __init__(self, relay, rule):
        self.relay = relay
        self.rule = rule

    def datagramReceived(self, data, addr):
        self.relay.from_inside(self, data, addr)


class _Outside(protocol.DatagramProtocol):
    """The outside-facing socket of one association (or of a fixed localport2)."""

    noisy = False

    def __init__(self, relay, association=None, rule=None):
        self.relay = relay
        self.association = association
        self.rule = rule  # set for a shared fixed-port socket

    def datagramReceived(self, data, addr):
        self.relay.from_outside(self, data, addr)


class UDPRelayService(BoundService):
    """The datagram forwarder, configured by a parsed udprelay.conf."""

    name = "udprelay"
    _live = ("_reactor", "ports", "table", "_timer", "_peers", "_shared", "_drop_log", "_names",
             "_latest", "counters", "resolver")

    def __init__(self, config: udprelay_conf.UDPRelayConfig, policy: access.AccessPolicy, *,
                 config_path: str | None = None, access_path: str | None = None,
                 interface: str = "127.0.0.1", outside_interface: str = "",
                 idle_timeout: float = 120.0, max_associations: int = 4096,
                 max_datagram: int = MAX_DATAGRAM, resolve_timeout: float = 15.0, reactor=None):
        self.config = config
        self.policy = policy
        self.config_path = config_path
        self.access_path = access_path
        self.interface = interface
        self.outside_interface = outside_interface
        self.idle_timeout = idle_timeout
        self.max_associations = max_associations
        self.max_datagram = max_datagram
        self.resolve_timeout = resolve_timeout
        self._reset_live()
        self._reactor = reactor

    def _reset_live(self):
        self._reactor = None
        self.resolver = None
        self.ports: dict[int, object] = {}
        self.table: AssociationTable | None = None
        self._timer = None
        self._peers: dict[str, str] = {}  # relay host2 as written -> resolved address
        self._shared: dict[int, object] = {}  # fixed localport2 -> its outside port
        self._drop_log: DropLog | None = None  # made on first use, with the reactor's clock
        self._names: dict[str, tuple[float, str | None]] = {}
        self._latest: dict[int, object] = {}  # local port of a fixed-port line -> its latest association
        self.counters: dict[str, int] = {}

    def _bind(self):
        # Bound before twistd drops privileges, as the original udprelay did.
        reactor = self.reactor
        if self.resolver is None:
            self.resolver = names.SystemResolver(reactor)
        self.table = AssociationTable(self.max_associations, self.idle_timeout, reactor.seconds)
        try:
            self._listen_all(self.config)
        except Exception:
            self._close_all_ports()
            raise
        log.info("udprelay: {relays} relay and {encapsulates} encapsulate line(s) from {filename} "
                 "on {interface}", relays=len(self.config.relays),
                 encapsulates=len(self.config.encapsulates), filename=self.config.filename,
                 interface=self.interface)
        self._resolve_peers()

    def _listen_all(self, config):
        """Make the listening sockets match ``config``.  Sockets of ports that
        stay are kept (only their line changes), so that a port bound before
        twistd dropped privileges survives a reload; new ports are opened,
        ports no longer named are closed.  If a new port cannot be opened,
        nothing changes and StartError says which line."""
        from twisted.internet.error import CannotListenError
        reactor = self.reactor
        local = {rule.local_port: rule for rule in (*config.relays, *config.encapsulates)}
        shared = {rule.peer_local_port: rule for rule in config.relays
                  if isinstance(rule, udprelay_conf.RelayRule) and rule.peer_local_port is not None}
        opened_local, opened_shared = {}, {}
        try:
            for number, rule in local.items():
                if number in self.ports:
                    continue
                try:
                    opened_local[number] = _roomy(reactor.listenUDP(
                        number, _LocalPort(self, rule), interface=self.interface, maxPacketSize=65535))
                except CannotListenError as e:
                    raise StartError(f"sockssuite: udprelay line {rule.lineno} of {config.filename}: "
                                     f"cannot listen on {self.interface}:{number}: {e.socketError}")
            for number, rule in shared.items():
                if number in self._shared:
                    continue
                try:
                    opened_shared[number] = reactor.listenUDP(
                        number, _Outside(self, rule=rule), interface=self.outside_interface,
                        maxPacketSize=65535)
                except CannotListenError as e:
                    raise StartError(f"sockssuite: udprelay line {rule.lineno} of {config.filename}: "
                                     f"cannot listen on port {number}: {e.socketError}")
        except StartError:
            for port in (*opened_local.values(), *opened_shared.values()):
                port.stopListening()
            raise
        for ports, wanted, opened in ((self.ports, local, opened_local), (self._shared, shared, opened_shared)):
            for number in [n for n in ports if n not in wanted]:
                ports.pop(number).stopListening()
            ports.update(opened)
            for number, rule in wanted.items():
                ports[number].protocol.rule = rule

    def _resolve_peers(self):
        for rule in self.config.relays:
            host = rule.peer_host
            if isIPAddress(host):
                self._peers[host] = host
                continue
            d = names.resolve_ipv4(self.resolver, host, self.resolve_timeout, self.reactor)

            def resolved(address, host=host):
                self._peers[host] = address

            def failed(f, host=host, rule=rule):
                log.warn("udprelay line {line}: cannot resolve {host} ({error}); its datagrams are "
                         "dropped until a reload", line=rule.lineno, host=host, error=f.getErrorMessage())

            d.addCallbacks(resolved, failed)

    def _close_all_ports(self):
        for port in [*self.ports.values(), *self._shared.values()]:
            port.stopListening()
        self.ports.clear()
        self._shared.clear()

    def stopService(self):
        service.Service.stopService(self)
        self._unbound()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self.table is not None:
            for association in self.table.remove_all():
                self._closed(association, "shutdown")
        self._close_all_ports()
        self.table = None

    def reload(self) -> bool:
        """Re-read udprelay.conf (and the access file for encapsulated
        destinations).  A file with errors keeps what is in force.  Lines are
        swapped at once; associations of lines whose ports are gone close."""
        ok = True
        if self.access_path is not None:
            try:
                self.policy = access.load_access(self.access_path)
            except access.ConfigError as e:
                ok = False
                log.error("udprelay: reload of {filename} failed; previous rules stay:\n{problems}",
                          filename=self.access_path, problems=str(e), event="reload-failed")
        if self.config_path is not None:
            try:
                config = udprelay_conf.load_udprelay(self.config_path)
            except access.ConfigError as e:
                ok = False
                log.error("udprelay: reload of {filename} failed; the previous lines stay in force:\n"
                          "{problems}", filename=self.config_path, problems=str(e), event="reload-failed")
            else:
                if self.running:
                    try:
                        self._listen_all(config)
                    except StartError as e:
                        log.error("udprelay: reload of {filename} failed; the previous lines stay in "
                                  "force:\n{problems}", filename=self.config_path, problems=str(e),
                                  event="reload-failed")
                        return False
                    for association in self.table.remove_all():
                        self._closed(association, "reload")
                    self._peers.clear()
                    self.config = config
                    self._resolve_peers()
                else:
                    self.config = config
                log.info("reloaded {filename}: {relays} relay and {encapsulates} encapsulate line(s)",
                         filename=self.config_path, relays=len(config.relays),
                         encapsulates=len(config.encapsulates), event="reloaded")
        return ok

    # -- datagrams from inside -----------------------------------------------------
    def from_inside(self, local, data, addr):
        host, port = addr[0], addr[1]
        rule = local.rule
        if len(data) > self.max_datagram:
            self._drop("oversize", f"{len(data)}-byte datagram from {host}:{port} over the "
                       f"{self.max_datagram}-byte limit")
            return
        key = (rule.local_port, host, port)
        association = self.table.get(key)
        if association is None:
            name = None
            if rule.source.is_name:
                name = self._confirmed_name(host)
                if name is _PENDING:
                    self._drop("name-pending", f"looking up the name of {host}; datagram dropped")
                    return
            try:
                allowed = rule.matches_sender(host, port, name)
            except ValueError:
                allowed = False
            if not allowed:
                self._drop("not-permitted", f"datagram from {host}:{port} to port {rule.local_port}: "
                           f"line {rule.lineno} does not permit this sender")
                return
        if isinstance(rule, udprelay_conf.RelayRule):
            self._relay(rule, association, key, data)
        else:
            self._encapsulated(rule, association, key, data)

    def _relay(self, rule, association, key, data):
        peer_address = self._peers.get(rule.peer_host)
        if peer_address is None:
            self._drop("peer-unresolved", f"line {rule.lineno}: {rule.peer_host} is not resolved")
            return
        peer = (peer_address, rule.peer_port)
        if association is None:
            association = self._open(key, peer, rule)
            if association is None:
                return
        if rule.peer_local_port is not None:
            outside = self._shared[rule.peer_local_port]
            self._latest[rule.local_port] = association
        else:
            outside = association.handle
        self._send(outside, data, peer)
        self.table.record_sent(association, len(data))
        self._count("relayed-out")

    def _encapsulated(self, rule, association, key, data):
        try:
            packet = udpwire.decode_udp(data)
        except udpwire.UDPHeaderError as e:
            self._drop("bad-header", f"datagram from {key[1]}:{key[2]}: {e}")
            return
        if packet.frag != 0:
            self._drop("fragment", f"datagram from {key[1]}:{key[2]} with FRAG {packet.frag} "
                       "(no reassembly)")
            return
        host = names.normalize_address(packet.host) or packet.host  # ::ffff:a.b.c.d as a.b.c.d
        if isIPAddress(host):
            self._encapsulated_to(rule, key, host, packet)
            return
        if ":" in host:
            self._drop("denied", f"datagram from {key[1]}:{key[2]} to IPv6 {host}: "
                       "sockd.conf rules are IPv4 only")
            return
        resolver = self.resolver
        if hasattr(resolver, "for_owner"):  # bounded as the sender's look-ups (see names.LookupLimiter)
            resolver = resolver.for_owner(key[1])
        d = names.resolve_ipv4(resolver, host, self.resolve_timeout, self.reactor)
        d.addCallbacks(lambda address: self._encapsulated_to(rule, key, address, packet),
                       lambda f: self._drop("resolve-failed", f"cannot resolve {printable(host)}"))

    def _encapsulated_to(self, rule, key, address, packet):
        if not self.running:
            return
        special = names.not_a_datagram_destination(address)
        if special is not None:
            self._drop("refused-address", f"datagram from {key[1]}:{key[2]} to {address}:{packet.port}: "
                       f"not a destination ({special})")
            return
        decision = access.decide(self.policy, access.AccessRequest(
            user="", src=key[1] if isIPAddress(key[1]) else "0.0.0.0", dst=address, port=packet.port))
        if not decision.permitted:
            line = decision.rule.lineno if decision.rule else None
            self._drop("denied", f"datagram from {key[1]}:{key[2]} to {address}:{packet.port}: "
                       + (f"denied by line {line} of {self.policy.filename}" if line
                          else "no sockd.conf line matched"))
            return
        association = self.table.get(key)
        if association is None:
            association = self._open(key, None, rule)
            if association is None:
                return
        destination = (address, packet.port)
        self._send(association.handle, packet.data, destination)
        self.table.record_sent(association, len(packet.data), destination)
        self._count("encapsulated-out")

    def _send(self, outside, data, destination):
        try:
            outside.write(data, destination)
        except OSError as e:  # unreachable network, buffer full: a lost datagram, as UDP goes
            self._drop("send-failed", f"sending to {destination[0]}:{destination[1]}: {e}")

    # -- associations ---------------------------------------------------------------
    def _open(self, key, peer, rule):
        """A new association, or None (the datagram dropped and counted) when
        no socket can be had for it: out of descriptors, typically."""
        outside = None
        if peer is None or rule.peer_local_port is None:
            proto = _Outside(self)
            try:
                outside = self.reactor.listenUDP(0, proto, interface=self.outside_interface,
                                                 maxPacketSize=65535)
            except CannotListenError as e:
                self._drop("no-socket", f"datagram from {key[1]}:{key[2]}: no outside socket for it: "
                           f"{e.socketError}")
                return None
        association, evicted = self.table.open(key, peer, outside,
                                               oneway=bool(getattr(rule, "oneway", False)))
        if outside is not None:
            proto.association = association
        for old in evicted:
            self._closed(old, "evicted")
        log.info("udprelay association opened: {sender} via port {local_port} to {towards} (line {line})",
                 event="association-opened", sender=f"{key[1]}:{key[2]}", local_port=key[0],
                 towards=f"{peer[0]}:{peer[1]}" if peer else "encapsulated destinations",
                 line=rule.lineno)
        self._schedule_expiry()
        return association

    def _closed(self, association, why):
        handle = association.handle
        if handle is not None:
            handle.stopListening()
        log.info("udprelay association closed ({why}): {sender} via port {local_port}: "
                 "out {datagrams_out} datagram(s) {bytes_out} B, in {datagrams_in} datagram(s) "
                 "{bytes_in} B, dropped {dropped}", event="association-closed", why=why,
                 sender=f"{association.sender[0]}:{association.sender[1]}",
                 local_port=association.local_port, datagrams_out=association.datagrams_out,
                 bytes_out=association.bytes_out, datagrams_in=association.datagrams_in,
                 bytes_in=association.bytes_in, dropped=association.dropped)

    def _schedule_expiry(self):
        if self._timer is not None and self._timer.active():
            return
        when = self.table.next_expiry() if self.table is not None else None
        if when is None:
            self._timer = None
            return
        self._timer = self.reactor.callLater(max(0.0, when - self.reactor.seconds()), self._expire)

    def _expire(self):
        self._timer = None
        if self.table is None:
            return
        for association in self.table.expire():
            self._closed(association, "idle")
        self._schedule_expiry()

    # -- datagrams from outside -------------------------------------------------------
    def from_outside(self, outside, data, addr):
        host, port = addr[0], addr[1]
        association = outside.association
        if association is None:  # a shared fixed-port socket: the line's latest sender
            association = self._latest_for(outside.rule)
            if association is None:
                self._drop("unsolicited", f"datagram from {host}:{port} to port {outside.rule.peer_local_port} "
                           "with no association")
                return
        if not self.table.accept_answer(association, host, port):
            self.table.record_drop(association)
            self._drop("spoofed" if not association.oneway else "oneway",
                       f"datagram from {host}:{port} for {association.sender[0]}:{association.sender[1]} "
                       "is not from where the association sent")
            return
        local = self.ports.get(association.local_port)
        if local is None:
            return
        if association.encapsulated:
            payload = udpwire.encode_udp(host, port, data)
        else:
            payload = data
        if len(payload) > MAX_DATAGRAM:  # an answer near 64 KiB with its header on top
            self.table.record_drop(association)
            self._drop("oversize", f"{len(data)}-byte answer from {host}:{port} does not fit in one "
                       "datagram with its header")
            return
        self._send(local, payload, association.sender)
        self.table.record_answer(association, len(data))
        self._count("answers-in")

    def _latest_for(self, rule):
        """The line's most recently active association (answers to a shared
        fixed-port socket go to it).  Remembered as senders send, so that
        a datagram to that port costs no walk of the table; walked only
        when the one remembered has closed."""
        port = rule.local_port
        latest = self._latest.get(port, _UNKNOWN)
        if latest is None or (latest is not _UNKNOWN and self.table.get(latest.key) is latest):
            return latest
        latest = None
        for association in self.table:  # least recently active first
            if association.local_port == port:
                latest = association
        self._latest[port] = latest
        return latest

    # -- names, drops, counters -------------------------------------------------------
    def _confirmed_name(self, host):
        now = self.reactor.seconds()
        cached = self._names.get(host)
        if cached is not None and now - cached[0] < 300:
            return cached[1]
        if cached is None or cached[1] is not _PENDING:
            if len(self._names) > 4096:
                self._names.clear()
            self._names[host] = (now, _PENDING)
            names.confirmed_name(self.reactor, host, 10.0, owner=host).addCallback(
                lambda name: self._names.__setitem__(host, (self.reactor.seconds(), name)))
        return _PENDING

    def _count(self, what):
        self.counters[what] = self.counters.get(what, 0) + 1

    def _drop(self, reason, detail):
        self._count(f"dropped-{reason}")
        if self._drop_log is None:
            self._drop_log = DropLog(self.reactor.seconds, DROP_LOG_INTERVAL)
        suppressed = self._drop_log.admit(reason)
        if suppressed is not None:
            log.info("udprelay dropped ({reason}): {detail}{more}", event="datagram-dropped",
                     reason=reason, detail=printable(detail), suppressed=suppressed,
                     more=f" (and {suppressed} more since the last report)" if suppressed else "")


_PENDING = object()
_UNKNOWN = object()

#: Socket buffer size asked for the inside-facing ports: one socket there
#: takes the bursts of every sender of its line.
SOCKET_BUFFER = 1 << 20


def _roomy(port):
    import socket
    for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        try:
            port.socket.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)
        except (AttributeError, OSError):
            pass
    return port
