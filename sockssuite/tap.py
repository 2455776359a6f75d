"""``twistd sockssuite``: options, and the service tree they describe."""

from __future__ import annotations

# Imported now, while twistd still runs as root: after --uid drops privileges a
# Python installed under /root can no longer import the codec that SOCKS4a host
# names need, and every name lookup would then time out.
import encodings.idna  # noqa: F401

from twisted.internet import endpoints
from twisted.python import usage

from . import access, dns, sockdroute, udprelay_conf
from .server import ServerSettings
from .dns import DNSForwarderService
from .service import JSONLogService, SockssuiteService, SOCKSServerService
from .udprelay import UDPRelayService
from .wire.socks4 import pack_ipv4

DEFAULT_SOCKS_ENDPOINT = "tcp:1080:interface=127.0.0.1"


def _positive(kind):
    def coerce(value):
        try:
            number = kind(value)
        except ValueError:
            raise ValueError(f"{value!r} is not a number")
        if number <= 0:
            raise ValueError(f"{value!r} must be greater than 0")
        return number
    coerce.coerceDoc = "Must be greater than 0."
    return coerce


def _idle(value):
    number = float(value)
    if number < 0:
        raise ValueError(f"{value!r} must be 0 (no idle timeout) or more")
    return number


def _versions(value):
    try:
        versions = tuple(sorted({int(v) for v in value.split(",") if v.strip()}))
    except ValueError:
        raise ValueError(f"{value!r} is not a list of SOCKS versions")
    if not versions or any(v not in (4, 5) for v in versions):
        raise ValueError(f"{value!r}: the versions are 4 and 5")
    return versions


_versions.coerceDoc = "4, 5 or 4,5."


def _engine(value):
    if value not in ("auto", "splice", "copy"):
        raise ValueError(f"{value!r} is not one of auto, splice, copy")
    if value == "splice":
        from .splice import AVAILABLE
        if not AVAILABLE:
            raise ValueError("splice(2) is not available on this system (use auto or copy)")
    return value


_engine.coerceDoc = "One of auto, splice, copy."


IDENT_MODES = {"off": "n", "if-available": "i", "required": "I"}


def _ident_mode(value):
    if value not in IDENT_MODES:
        raise ValueError(f"{value!r} is not one of off, if-available, required")
    return value


_ident_mode.coerceDoc = "One of off, if-available, required."


def _port(value):
    port = int(value)
    if not 1 <= port <= 65535:
        raise ValueError(f"{value!r} is not a port number (1-65535)")
    return port


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Run a SOCKS4/SOCKS4a and SOCKS5 proxy server (CONNECT and BIND) with sockd.conf access control "
        "and identd (RFC 1413) checks, and optionally a UDP forwarder (--udprelay) and a DNS "
        "forwarder (--dns). "
        "With no options it listens on 127.0.0.1:1080 and permits only loopback clients."
    )

    optFlags = [
        ["allow-shell-commands", None,
         "Run the ': command' actions of access rules (off: they are logged as skipped). "
         "Commands are never run through a shell."],
        ["require-auth", None,
         "Serve only SOCKS5 clients that authenticate with a user name and password from "
         "--passwords (SOCKS4 requests, which cannot authenticate, get 91)."],
        ["bind-any-source", None,
         "Accept BIND requests with DSTIP 0.0.0.0, whose inbound connection may then come "
         "from any address (off: such requests get 91)."],
    ]
    optParameters = [
        ["access", "a", None,
         "sockd.conf access file (default: built-in policy permitting loopback clients only)."],
        ["handshake-timeout", None, 30.0,
         "Seconds a client has to send its complete request.", _positive(float)],
        ["resolve-timeout", None, 15.0,
         "Seconds allowed to resolve a SOCKS4a host name.", _positive(float)],
        ["connect-timeout", None, 120.0,
         "Seconds allowed to connect to the destination.", _positive(float)],
        ["idle-timeout", None, 7200.0,
         "Seconds without traffic after which a relayed session is closed (0: never).", _idle],
        ["max-connections", None, 4096,
         "Most client connections served at once; more are refused with 91.", _positive(int)],
        ["max-connections-per-client", None, 256,
         "Most connections served at once from one client IP address; more are refused with 91.",
         _positive(int)],
        ["ident", None, "off",
         "Server-wide ident mode for permit lines without ?=: off (like ?=n), if-available "
         "(like ?=i, sockd -i) or required (like ?=I, sockd -I).", _ident_mode],
        ["ident-port", None, 113,
         "TCP port of the identd on client hosts.", _port],
        ["ident-timeout", None, 15.0,
         "Seconds to wait for an identd's answer; after that it counts as unreachable.",
         _positive(float)],
        ["bind-timeout", None, 120.0,
         "Seconds a BIND waits for its inbound connection.", _positive(float)],
        ["bind-interface", None, None,
         "Local IPv4 address for BIND listeners (default: the address the route to the "
         "requested peer goes out of)."],
        ["route", None, None,
         "sockd.route file choosing the BIND listening address per destination "
         "('interface_addr dst_addr dst_mask' lines; first match wins)."],
        ["udprelay", None, None,
         "Run the UDP forwarder with this udprelay.conf (relay and encapsulate lines)."],
        ["udp-interface", None, "127.0.0.1",
         "Local address the udprelay.conf ports listen on."],
        ["udp-idle-timeout", None, 120.0,
         "Seconds after which an idle UDP association is closed.", _positive(float)],
        ["udp-max-associations", None, 4096,
         "Most UDP associations at once; the least recently active is evicted first.",
         _positive(int)],
        ["udp-max-datagram", None, 65507,
         "Largest datagram (payload bytes) the forwarder and SOCKS5 UDP ASSOCIATE relay; "
         "larger ones are dropped.",
         _positive(int)],
        ["udp-outside-interface", None, "",
         "Local address (IPv4 or IPv6) that SOCKS5 UDP ASSOCIATE datagrams leave from "
         "(default: the any-address of the destination's family)."],
        ["dns", None, None,
         "Run a caching DNS forwarder on this TCP server endpoint and on UDP at the same address "
         "and port (e.g. tcp:53:interface=127.0.0.1)."],
        ["relay-engine", None, "auto",
         "How relayed bytes move: auto (splice where possible, else copy), splice (Linux "
         "splice(2): in the kernel, zero copy) or copy (through Python).", _engine],
        ["workers", None, 1,
         "Run this many worker processes accepting on the SOCKS sockets (the twistd process "
         "supervises them: restarts, SIGHUP, SIGTERM). 1: serve in the twistd process.",
         _positive(int)],
        ["socks-versions", None, "4,5",
         "The SOCKS versions served on the --socks ports: 4 (with 4a), 5, or 4,5.", _versions],
        ["passwords", None, None,
         "SOCKS5 username/password file ('user:bcrypt-hash' lines; 'sockssuite passwd FILE USER' "
         "writes one). The authenticated name is the user sockd.conf user lists match."],
        ["control", None, None,
         "Serve the control socket for 'sockssuite sessions' on this endpoint; use a UNIX "
         "socket with a restrictive mode, e.g. unix:/run/sockssuite.ctl:mode=600."],
        ["metrics", None, None,
         "Serve Prometheus metrics over HTTP on this server endpoint, e.g. "
         "tcp:9180:interface=127.0.0.1 (off by default)."],
        ["shutdown-grace", None, 10.0,
         "On SIGTERM, seconds sessions in flight may take to finish before they are closed.",
         _idle],
        ["log-json", None, None,
         "Also write sockssuite's log events as JSON lines to this file ('-' for stdout)."],
    ]

    def __init__(self):
        usage.Options.__init__(self)
        self["socks"] = []
        self["dns-upstream"] = []

    def opt_dns_upstream(self, upstream):
        try:
            self["dns-upstream"].append(dns.parse_upstream(upstream))
        except ValueError as e:
            raise usage.UsageError(f"--dns-upstream {e}")

    opt_dns_upstream.__doc__ = (
        "Upstream DNS server ADDR[:PORT] for --dns (repeatable; default: the nameservers of "
        "/etc/resolv.conf).")

    def opt_socks(self, description):
        try:
            endpoints.serverFromString(_NoReactor(), description)
        except (ValueError, KeyError, TypeError) as e:
            raise usage.UsageError(f"--socks {description!r}: not a server endpoint ({e})")
        except IndexError:  # systemd:...:index=N with no socket passed at N
            raise usage.UsageError(
                f"--socks {description!r}: no socket was passed at that index (socket activation "
                "sets LISTEN_FDS, LISTEN_PID and LISTEN_FDNAMES; systemd-socket-activate needs "
                "--fdname=NAME)")
        self["socks"].append(description)

    opt_socks.__doc__ = (
        "Listen for SOCKS clients on this server endpoint string (repeatable; default "
        "tcp:1080:interface=127.0.0.1). Any Twisted endpoint works, e.g. "
        "tcp:1080:interface=0.0.0.0, tcp6:1080:interface=\\:\\:1, unix:/run/socks.sock, "
        "systemd:domain=INET:index=0.")

    def postOptions(self):
        if self["log-json"] not in (None, "-"):
            try:
                with open(self["log-json"], "a", encoding="utf-8"):
                    pass
            except OSError as e:
                raise usage.UsageError(f"--log-json {self['log-json']}: {e.strerror or e}")
        if self["bind-interface"] is not None:
            try:
                pack_ipv4(self["bind-interface"])
            except ValueError as e:
                raise usage.UsageError(f"--bind-interface: {e}")
        self["routes"] = None
        if self["route"] is not None:
            try:
                self["routes"] = sockdroute.load_routes(self["route"])
            except access.ConfigError as e:
                raise usage.UsageError(f"route file {self['route']} has errors:\n{e}")
        self["udprelay-config"] = None
        if self["udprelay"] is not None:
            try:
                self["udprelay-config"] = udprelay_conf.load_udprelay(self["udprelay"])
            except access.ConfigError as e:
                raise usage.UsageError(f"udprelay file {self['udprelay']} has errors:\n{e}")
            try:
                pack_ipv4(self["udp-interface"])
            except ValueError as e:
                raise usage.UsageError(f"--udp-interface: {e}")
        if self["udp-outside-interface"]:
            from twisted.internet.abstract import isIPAddress, isIPv6Address
            if not (isIPAddress(self["udp-outside-interface"]) or isIPv6Address(self["udp-outside-interface"])):
                raise usage.UsageError(f"--udp-outside-interface: {self['udp-outside-interface']!r} is not "
                                       "an IPv4 or IPv6 address")
        self["password-file"] = None
        if self["passwords"] is not None:
            from . import passwords
            try:
                self["password-file"] = passwords.load_passwords(self["passwords"])
            except access.ConfigError as e:
                raise usage.UsageError(f"password file {self['passwords']} has errors:\n{e}")
        if self["require-auth"] and self["password-file"] is None:
            raise usage.UsageError("--require-auth needs --passwords FILE")
        if isinstance(self["socks-versions"], str):  # the default is not coerced by usage.Options
            self["socks-versions"] = _versions(self["socks-versions"])
        if self["require-auth"] and 5 not in self["socks-versions"]:
            raise usage.UsageError("--require-auth needs SOCKS5 (--socks-versions 5 or 4,5)")
        if self["control"] is not None:
            try:
                endpoints.serverFromString(_NoReactor(), self["control"])
            except (ValueError, KeyError, TypeError) as e:
                raise usage.UsageError(f"--control {self['control']!r}: not a server endpoint ({e})")
        if self["metrics"] is not None:
            try:
                endpoints.serverFromString(_NoReactor(), self["metrics"])
            except (ValueError, KeyError, TypeError) as e:
                raise usage.UsageError(f"--metrics {self['metrics']!r}: not a server endpoint ({e})")
            try:
                import prometheus_client  # noqa: F401
            except ImportError:
                raise usage.UsageError("--metrics needs prometheus-client (pip install 'sockssuite[metrics]')")
        if self["dns"] is not None:
            try:
                endpoints.serverFromString(_NoReactor(), self["dns"])
            except (ValueError, KeyError, TypeError) as e:
                raise usage.UsageError(f"--dns {self['dns']!r}: not a server endpoint ({e})")
            if not self["dns"].startswith("tcp:"):
                raise usage.UsageError(f"--dns {self['dns']!r}: give a tcp: endpoint (UDP listens "
                                       "on the same address and port)")
            if not self["dns-upstream"]:
                self["dns-upstream"] = dns.system_upstreams()
            if not self["dns-upstream"]:
                raise usage.UsageError("--dns: no --dns-upstream given and none in /etc/resolv.conf")
        if not self["socks"]:
            self["socks"] = [DEFAULT_SOCKS_ENDPOINT]
        if self["access"] is None:
            self["policy"] = access.DEFAULT_POLICY
        else:
            try:
                self["policy"] = access.load_access(self["access"])
            except access.ConfigError as e:
                raise usage.UsageError(f"access file {self['access']} has errors:\n{e}")

    def settings(self) -> ServerSettings:
        return ServerSettings(
            handshake_timeout=self["handshake-timeout"],
            resolve_timeout=self["resolve-timeout"],
            connect_timeout=self["connect-timeout"],
            idle_timeout=self["idle-timeout"],
            max_connections=self["max-connections"],
            max_connections_per_client=self["max-connections-per-client"],
            allow_shell_commands=bool(self["allow-shell-commands"]),
            default_ident=IDENT_MODES[self["ident"]],
            ident_port=self["ident-port"],
            ident_timeout=self["ident-timeout"],
            bind_timeout=self["bind-timeout"],
            bind_interface=self["bind-interface"],
            bind_any_source=bool(self["bind-any-source"]),
            relay_engine=self["relay-engine"],
            socks_versions=(_versions(self["socks-versions"]) if isinstance(self["socks-versions"], str)
                            else self["socks-versions"]),
            require_auth=bool(self["require-auth"]),
            passwords=self["password-file"],
            udp_outside_interface=self["udp-outside-interface"],
            udp_max_datagram=self["udp-max-datagram"],
        )


class _NoReactor:
    """Endpoint parsing needs a reactor argument but not a reactor."""


def makeService(options: Options, reactor=None) -> SockssuiteService:
    """Assemble the named service tree from parsed options."""
    root = SockssuiteService()
    root.setName("sockssuite")
    if options["metrics"]:
        # Started first and stopped last, so that it counts every other
        # service's events, those of the final drain included.
        from .metrics import MetricsService
        metrics = MetricsService(options["metrics"], reactor=reactor)
        metrics.setName("metrics")
        metrics.setServiceParent(root)
    if options["log-json"]:
        # First child, so that it starts first and sees the other services' events.
        jsonlog = JSONLogService(options["log-json"])
        jsonlog.setName("json-log")
        jsonlog.setServiceParent(root)
    socks = SOCKSServerService(options["socks"], options["policy"], options.settings(), reactor=reactor,
                               routes=options["routes"], access_path=options["access"],
                               route_path=options["route"], shutdown_grace=options["shutdown-grace"],
                               workers=options["workers"])
    socks.setName("socks")
    socks.setServiceParent(root)
    if options["control"]:
        from .control import ControlService
        control = ControlService(options["control"], reactor=reactor)
        control.setName("control")
        control.setServiceParent(root)
    if options["udprelay-config"] is not None:
        relay = UDPRelayService(
            options["udprelay-config"], options["policy"], config_path=options["udprelay"],
            access_path=options["access"], interface=options["udp-interface"],
            idle_timeout=options["udp-idle-timeout"], max_associations=options["udp-max-associations"],
            max_datagram=options["udp-max-datagram"], resolve_timeout=options["resolve-timeout"],
            reactor=reactor)
        relay.setName("udprelay")
        relay.setServiceParent(root)
    if options["dns"] is not None:
        forwarder = DNSForwarderService(options["dns"], options["dns-upstream"], options["policy"],
                                        access_path=options["access"], reactor=reactor)
        forwarder.setName("dns")
        forwarder.setServiceParent(root)
    return root
