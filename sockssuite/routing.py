"""socks.conf, the client's routing file: parser, rule records, route decision.

A "sockified" client reads socks.conf to decide, per destination, whether to
connect straight (``direct``), through a SOCKS server (``sockd``), or not at all
(``deny``)::

    deny   [*=userlist] dst_addr dst_mask [op dst_port] [: shell_cmd]
    direct [*=userlist] dst_addr dst_mask [op dst_port] [: shell_cmd]
    sockd  [@=serverlist] [*=userlist] dst_addr dst_mask [op dst_port] [: shell_cmd]

The first matching line decides; no match means deny; no socks.conf at all
means direct; 127.0.0.1 and 0.0.0.0 always go direct.

Our extension: a server entry written ``socks5://host[:port]`` speaks SOCKS5
(``socks4://``, or no prefix at all, is SOCKS4 as in the original).  Old files
mean what they meant; SOCKS5 credentials never appear in the file.

Pure: stdlib only, no Twisted, no network, no environment.  What the original
client library read from its surroundings is passed in: the local user (for
``*=``), the ``SOCKS_SERVER`` value (the default server), a locally resolved
address of a destination name, a clock (for :class:`RecentFailures`).  Parsing
and matching are separate, as in :mod:`sockssuite.access`, whose field grammar
(:mod:`sockssuite.rulesyntax`) this file shares.
"""

from __future__ import annotations

import re
import socket
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Hashable, Iterable

from .rulesyntax import (
    BLANKS,
    find_rule_end,
    TOKEN,
    AddressPattern,
    ConfigError,
    FieldError,
    PortMatch,
    Problem,
    RuleParser,
    address_value,
    ipv4_value,
    check_host_name,
    looks_numeric,
    normal_name,
    numbered_lines,
    quad_value,
    read_text,
    read_user_file,
    show,
    tcp_service,
)

__all__ = [
    "ALWAYS_DIRECT",
    "SERVER_SCHEMES",
    "BUILTIN_SERVER",
    "DEFAULT_PORT",
    "ConfigError",
    "Problem",
    "RecentFailures",
    "RouteDecision",
    "RouteRule",
    "ServerEntry",
    "SocksConf",
    "command_values",
    "decide_route",
    "default_port",
    "load_socks_conf",
    "parse_server_list",
    "parse_socks_conf",
]

ACTIONS = ("deny", "direct", "sockd")

#: First words of another vendor's socks.conf lines; the original skipped them.
SKIPPED_KEYWORDS = ("domain", "nameserver", "bind", "findserver")

#: The SOCKS port when neither the server entry nor /etc/services says otherwise.
DEFAULT_PORT = 1080

#: The default server when ``SOCKS_SERVER`` is not set (the original had a
#: compiled-in name; ours is where ``twistd sockssuite`` listens by default).
BUILTIN_SERVER = "127.0.0.1"

#: Destinations that never go through a proxy, whatever the file says.
ALWAYS_DIRECT = ("127.0.0.1", "0.0.0.0")

#: The prefixes of a server entry naming the SOCKS version it speaks (ours).
SERVER_SCHEMES = {"socks4://": 4, "socks5://": 5}

_SYNOPSIS = "deny|direct|sockd [@=serverlist] [*=userlist] dst_addr dst_mask [op dst_port] [: shell_cmd]"
_SERVER_LIST_END = re.compile(r"[ \t\r\f\v#]")
_WORD_END = re.compile(r"[ \t\r\f\v#:]")


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class ServerEntry:
    """One SOCKS server of a ``@=`` list: ``host`` is a lower-case name, a dotted
    quad or an IPv6 address (without brackets), ``port`` the port to use,
    ``version`` the SOCKS version it speaks: 4 (the default, and all the
    original knew) or 5 (written ``socks5://host``)."""

    host: str
    port: int
    version: int = 4

    @property
    def is_address(self) -> bool:
        """True when ``host`` is an address literal (no name to resolve)."""
        return _is_ipv4(self.host) or ":" in self.host

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        scheme = "socks5://" if self.version == 5 else ""
        return f"{scheme}{host}:{self.port}"


@dataclass(frozen=True)
class RouteRule:
    """One ``deny``/``direct``/``sockd`` line.

    ``servers`` is the ``@=`` list in file order, or ``None`` when the line has
    no (or an empty) ``@=``: the default server then applies.  ``users`` is
    ``None`` for any user, else the exact set of local user names.  ``argv`` is
    the shell command split into words (empty when there is none)."""

    lineno: int
    text: str
    action: str
    servers: tuple[ServerEntry, ...] | None
    users: frozenset[str] | None
    dst: AddressPattern
    port: PortMatch | None
    command: str | None
    argv: tuple[str, ...] = ()

    def _matches(self, user: str, address: int | None, name: str | None, port: int) -> bool:
        return (
            (self.users is None or user in self.users)
            and self.dst._matches_route(address, name)
            and (self.port is None or self.port.matches(port))
        )


@dataclass(frozen=True)
class SocksConf:
    """A parsed socks.conf.  ``default_port`` is the port of server entries
    without ``:port`` (the ``socks`` service, else 1080), also used for the
    default server."""

    rules: tuple[RouteRule, ...]
    filename: str
    warnings: tuple[Problem, ...] = ()
    default_port: int = DEFAULT_PORT


@dataclass(frozen=True)
class RouteDecision:
    """The outcome of :func:`decide_route`.

    ``action`` is ``"deny"``, ``"direct"`` or ``"sockd"``; ``rule`` the deciding
    line (``None`` when no line decided: no file, an always-direct destination,
    or no match); ``servers`` the servers to try, in listed order (``sockd``
    only); ``reason`` says in words why, for messages and logs."""

    action: str
    rule: RouteRule | None
    servers: tuple[ServerEntry, ...]
    reason: str

    @property
    def lineno(self) -> int | None:
        return None if self.rule is None else self.rule.lineno


def _is_ipv4(text: str) -> bool:
    try:
        ipv4_value(text)
    except ValueError:
        return False
    return True


def _is_ipv6(text: str) -> bool:
    try:
        socket.inet_pton(socket.AF_INET6, text)
    except (OSError, ValueError):
        return False
    return True


# --------------------------------------------------------------------------- decision


def decide_route(
    conf: SocksConf | None,
    host: str,
    port: int,
    *,
    user: str,
    address: str | None = None,
    default_server: str | None = None,
) -> RouteDecision:
    """How to reach ``host:port``: the first matching line of *conf* decides.

    :param conf: the parsed socks.conf, or ``None`` when there is none (then
        every destination goes direct).
    :param host: the destination as the program named it: a dotted quad, an
        IPv6 address or a host name.  Name patterns (``.example.org``, a host
        name) match this name, compared case-insensitively.
    :param user: the local user running the client, for ``*=`` lists.
    :param address: the dotted quad a host *name* resolved to locally, if the
        caller resolved it; numeric patterns then match it.  Without it a name
        matches only numeric patterns whose mask is 0.0.0.0 (and ``ALL``).
    :param default_server: the ``SOCKS_SERVER`` value, for ``sockd`` lines
        without servers of their own: a server entry or a comma-separated list
        of them; ``None`` or empty means :data:`BUILTIN_SERVER`.
    :raises ValueError: for a malformed address (``127.1``: write four decimal
        octets), or a malformed *default_server* when it is needed.
    """
    if conf is None:
        return RouteDecision("direct", None, (), "no socks.conf: every destination goes direct")
    name: str | None = None
    if _is_ipv4(host):
        address = host
    elif _is_ipv6(host):
        address = host  # IPv6 prefixes (our extension) match it
    elif looks_numeric(host):
        raise ValueError(f"{host!r} is not an address: write IPv4 addresses as 4 decimal octets")
    else:
        name = normal_name(host)
    value = None if address is None else address_value(address)
    if address in ALWAYS_DIRECT:
        return RouteDecision("direct", None, (), f"{address} always goes direct")
    for rule in conf.rules:
        if rule._matches(user, value, name, port):
            servers: tuple[ServerEntry, ...] = ()
            if rule.action == "sockd":
                servers = rule.servers
                if servers is None:
                    servers = parse_server_list(default_server or BUILTIN_SERVER,
                                                default_port=conf.default_port)
            return RouteDecision(rule.action, rule, servers, f"line {rule.lineno} of {conf.filename}")
    return RouteDecision("deny", None, (), f"no line of {conf.filename} matches")


def command_values(host: str, port: int, *, user: str, address: str | None,
                   local_host: str, service: str | None = None) -> dict[str, str]:
    """The %-substitution values for a socks.conf line's shell command (see
    :mod:`sockssuite.shellcmd`), from the client's point of view: the client
    host is this host, both user letters are the local user."""
    return {
        "A": local_host,
        "a": local_host,
        "c": "connect",
        "S": service or str(port),
        "s": str(port),
        "U": user,
        "u": user,
        "Z": host,
        "z": address or host,
    }


# --------------------------------------------------------------------------- failure memory


class RecentFailures:
    """Which servers failed recently, so they are tried last for a while.

    A dead server then costs one timeout per ``hold`` seconds, not one per
    connection.  Keys are whatever the caller uses to name a server (an
    entry, an address and port); ``clock`` is anything with ``seconds()``
    (a reactor, or ``twisted.internet.task.Clock`` in tests).  At most
    ``limit`` keys are kept: the oldest failures are forgotten first.
    """

    def __init__(self, clock, hold: float = 60.0, limit: int = 1024):
        self.clock = clock
        self.hold = hold
        self.limit = limit
        self._since: OrderedDict[Hashable, float] = OrderedDict()

    def failed(self, key: Hashable) -> None:
        self._since.pop(key, None)
        self._since[key] = self.clock.seconds()
        while len(self._since) > self.limit:
            self._since.popitem(last=False)

    def succeeded(self, key: Hashable) -> None:
        self._since.pop(key, None)

    def recently_failed(self, key: Hashable) -> bool:
        since = self._since.get(key)
        if since is None:
            return False
        if self.clock.seconds() - since >= self.hold:
            del self._since[key]
            return False
        return True

    def order(self, items: Iterable, key: Callable[[object], Hashable] = lambda item: item) -> list:
        """*items* in their order, except that the recently failed ones come
        last (still in their order among themselves)."""
        fresh, stale = [], []
        for item in items:
            (stale if self.recently_failed(key(item)) else fresh).append(item)
        return fresh + stale

    def __len__(self) -> int:
        return len(self._since)


# --------------------------------------------------------------------------- parsing


def default_port(getservbyname: Callable[[str], int] | None = None) -> int:
    """The ``socks`` tcp service's port from the services database, else 1080."""
    try:
        port = (getservbyname or tcp_service)("socks")
    except (OSError, ValueError):
        return DEFAULT_PORT
    return port if isinstance(port, int) and 0 < port <= 65535 else DEFAULT_PORT


#: Why a server list may not hold '@' (said without echoing the entry: it may
#: hold a password).
_NO_CREDENTIALS = ("a server list cannot contain '@': user names and passwords do not belong in "
                   "socks.conf (set SOCKS_USERNAME and SOCKS_PASSWORD in the environment)")

_SCHEME_HINTS = {
    "socks5h://": "; socks5:// servers are sent host names as names already (like curl's socks5h://)",
    "socks4a://": "; SOCKS4 servers are sent host names as names already (SOCKS4a)",
}


def _server_entry(text: str, default: int, service_port: Callable[[str], int | None]) -> ServerEntry:
    what = "server"
    entry = text
    version = 4
    scheme, sep, rest = text.partition("://")
    if sep:
        prefix = (scheme + sep).lower()  # schemes are case-insensitive (RFC 3986)
        if prefix not in SERVER_SCHEMES:
            raise FieldError(f"invalid {what} {show(entry)}: unknown scheme {show(scheme + sep)} "
                             f"(expected socks4:// or socks5://){_SCHEME_HINTS.get(prefix, '')}")
        version = SERVER_SCHEMES[prefix]
        text = rest
        if not text:
            raise FieldError(f"invalid {what} {show(entry)}: no host name or address after {show(scheme + sep)}")
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise FieldError(f"invalid {what} {show(entry)}: missing ']' after the IPv6 address")
        host = text[1:close]
        if not _is_ipv6(host):
            raise FieldError(f"invalid {what} {show(entry)}: {show(host)} is not an IPv6 address")
        rest = text[close + 1:]
        if rest and not rest.startswith(":"):
            raise FieldError(f"invalid {what} {show(entry)}: expected ':port' after ']'")
        port_text = rest[1:] if rest else None
    else:
        host, colon, port_text = text.partition(":")
        if not colon:
            port_text = None
        elif ":" in port_text:
            raise FieldError(f"invalid {what} {show(entry)}: write an IPv6 address in brackets, like [::1]:1080")
        if not host:
            raise FieldError(f"invalid {what} {show(entry)}: no host name or address before ':'")
        if looks_numeric(host):
            host = "%d.%d.%d.%d" % tuple(quad_value(host, f"{what} address").to_bytes(4, "big"))
        else:
            check_host_name(host[:-1] if host.endswith(".") else host, host, f"{what} name")
            host = normal_name(host)
    if port_text is None:
        return ServerEntry(host, default, version)
    if not port_text:
        raise FieldError(f"invalid {what} {show(entry)}: empty port after ':'")
    if port_text.isdigit() and port_text.isascii():
        port = int(port_text) if len(port_text) <= 5 else 0
        if not 0 < port <= 65535:
            raise FieldError(f"invalid {what} {show(entry)}: port {show(port_text)} out of range (1..65535)")
        return ServerEntry(host, port, version)
    port = service_port(port_text)
    if not port:
        raise FieldError(f"invalid {what} {show(entry)}: unknown service name {show(port_text)}")
    return ServerEntry(host, port, version)


def parse_server_list(text: str, *, default_port: int = DEFAULT_PORT,
                      getservbyname: Callable[[str], int] | None = None) -> tuple[ServerEntry, ...]:
    """Parse a comma-separated server list (the body of ``@=``, or a
    ``SOCKS_SERVER`` value): entries ``name``, ``address``, ``[ipv6]``, each
    optionally with ``:port`` (a number or a tcp service name), and optionally
    prefixed by ``socks5://`` (a SOCKS5 server) or ``socks4://`` (the default).

    :raises ValueError: naming the first bad entry.
    """
    lookup = getservbyname or tcp_service

    def service_port(name):
        try:
            return lookup(name)
        except (OSError, ValueError):
            return None

    if "@" in text:
        raise ValueError(_NO_CREDENTIALS)
    entries = []
    for entry in text.strip(BLANKS).split(","):
        if not entry:
            raise ValueError(f"empty entry in server list {show(text)}")
        try:
            entries.append(_server_entry(entry, default_port, service_port))
        except FieldError as exc:
            raise ValueError(str(exc)) from None
    return tuple(entries)


class _Parser(RuleParser):
    def __init__(self, filename, read_file, getservbyname):
        super().__init__(filename, read_file, getservbyname)
        self.rules: list[RouteRule] = []
        self.default_port = default_port(getservbyname)

    def line(self, lineno: int, line: str) -> None:
        self.lineno = lineno
        indent = len(line) - len(line.lstrip(BLANKS))
        word_end = _WORD_END.search(line, indent)
        word = line[indent: word_end.start() if word_end else len(line)]
        if word in SKIPPED_KEYWORDS:
            self.warning(indent + 1, f"{word!r} lines belong to another vendor's socks.conf format; line skipped")
            return
        # A ':' inside the server list is a port (ours), not the start of the
        # shell command: find where that list ends before looking for ':'.
        scan_from = pos = indent
        if line.startswith("sockd@", indent):
            scan_from = pos = self.server_list_end(line, indent)
        elif word in ACTIONS:
            pos = indent + len(word)
        while pos > indent:
            start = len(line) - len(line[pos:].lstrip(BLANKS))
            if line.startswith("@=", start):
                scan_from = pos = self.server_list_end(line, start)
            elif line.startswith(("*=", "?="), start):
                end = _WORD_END.search(line, start)
                if end is None or end.group() in "#:":
                    break
                pos = end.start()
            else:
                break
        end = find_rule_end(line, scan_from)
        rule_part = line if end is None else line[: end.start()]
        command = command_column = None
        if end is not None and end.group() == ":":
            command, command_column = self.command_text(line, end.end())
        tokens = [(m.start() + 1, m.group()) for m in TOKEN.finditer(rule_part)]
        if not tokens:
            if command_column is not None:
                self.error(end.start() + 1, f"a shell command needs a rule before ':' ({_SYNOPSIS})")
            return
        self.rule_line(line, tokens, command, command_column)

    @staticmethod
    def server_list_end(line: str, start: int) -> int:
        end = _SERVER_LIST_END.search(line, start)
        return len(line) if end is None else end.start()

    def rule_line(self, line, tokens, command, command_column) -> None:
        errors_before = len(self.errors)
        action_column, action = tokens[0]
        modifiers = []
        if action.startswith("sockd@"):
            # "sockd@server1,server2": the list written without a blank
            # ("sockd@=server1" too).  Columns point into the original text.
            skip = 7 if action.startswith("sockd@=") else 6
            modifiers.append((action_column + 5, "@=" + action[skip:], action_column + skip))
            action = "sockd"
        elif action not in ACTIONS:
            hint = ""
            if action in ("permit",):
                hint = "; 'permit' belongs in sockd.conf, the server's access file"
            self.error(action_column, f"unknown action {show(action)} (expected deny, direct or sockd{hint})")
            return

        index = 1
        while index < len(tokens) and tokens[index][1][:2] in ("@=", "*=", "?="):
            column, token = tokens[index]
            modifiers.append((column, token, column + 2))
            index += 1
        servers = users = None
        seen: dict[str, int] = {}
        for column, token, body_column in modifiers:
            key = token[:2]
            if key == "?=":
                self.error(column, f"{show(token)}: ident checks (?=) belong in sockd.conf, not socks.conf")
            elif key in seen:
                self.error(column, f"duplicate {key} field (the first is at column {seen[key]})")
            elif key == "@=" and action != "sockd":
                seen[key] = column
                self.error(column, f"a server list (@=) is only for sockd lines, not {action}")
            else:
                seen[key] = column
                if key == "@=":
                    servers = self.server_list(body_column, token[2:])
                else:
                    users = self.user_list(column, token)

        fields = []
        for column, token in tokens[index:]:
            if token[:2] in ("@=", "*=", "?="):
                self.error(column, f"{show(token)} must come right after the action, before the destination address")
            else:
                fields.append((column, token))
        if not fields:
            column, token = tokens[index - 1]
            self.error(column, f"expected a destination address and mask after {show(token)} ({_SYNOPSIS})")
            return

        dst, k = self.address_and_mask(fields, 0, "destination")
        port, argv = self.rule_tail(fields, k, command, command_column, _SYNOPSIS)
        if len(self.errors) == errors_before:
            self.rules.append(RouteRule(self.lineno, line, action, servers, users, dst, port, command, argv))

    def server_list(self, column: int, body: str) -> tuple[ServerEntry, ...] | None:
        if not body:
            return None  # an empty @= means the default server, as in the original
        if "@" in body:
            self.error(column, _NO_CREDENTIALS)
            return None
        entries = []
        for entry in body.split(","):
            if not entry:
                self.error(column, "empty entry in server list (a doubled comma, or a comma at the start or end)")
            else:
                try:
                    entries.append(_server_entry(entry, self.default_port, self.service_port))
                except FieldError as exc:
                    self.error(column, str(exc))
            column += len(entry) + 1
        return tuple(entries)

    def conf(self) -> SocksConf:
        rules = tuple(self.rules)
        if not rules:
            self.warnings.append(Problem(self.filename, 0, 0,
                                         "no deny, direct or sockd lines: every destination is denied "
                                         "(except 127.0.0.1 and 0.0.0.0)"))
        return SocksConf(rules, self.filename, tuple(self.warnings), self.default_port)


def parse_socks_conf(
    text: str,
    filename: str = "<string>",
    *,
    read_file: Callable[[str], str] | None = None,
    getservbyname: Callable[[str], int] | None = None,
) -> SocksConf:
    """Parse the text of a socks.conf.

    :param filename: used in problem reports and decisions.
    :param read_file: ``read_file(path) -> str`` reads a ``/path`` user-list
        entry (default: the regular file, UTF-8). An ``OSError`` gives a
        warning, and that entry matches nobody.
    :param getservbyname: ``getservbyname(name) -> int`` for tcp service names,
        in ports and for the default SOCKS port (``socks``, else 1080).
    :raises ConfigError: listing every error in the file (and the warnings).
    """
    parser = _Parser(filename, read_file or read_user_file, getservbyname or tcp_service)
    for lineno, line in numbered_lines(text):
        parser.line(lineno, line)
    if parser.errors:
        raise ConfigError(parser.errors, parser.warnings)
    return parser.conf()


def load_socks_conf(path: str) -> SocksConf:
    """Read and parse the socks.conf at *path*.

    :raises ConfigError: if the file cannot be read (line 0) or has errors.
    """
    return parse_socks_conf(read_text(path, "socks.conf"), path)
