"""udprelay.conf, the datagram forwarder's configuration: parser and rule records.

Pure: stdlib only, no Twisted, no network.  The format is udprelay 0.2's::

    relay        host1 remoteport1 localport1  host2 remoteport2 localport2  [oneway]
    encapsulate  from-hosts localport

A file is parsed once into immutable records that keep their line number and
text; the forwarder matches senders against them with
:meth:`RelayRule.matches_sender` and :meth:`EncapsulateRule.matches_sender`.
Errors are collected for the whole file and reported as ``file:line:col:
message``, with the same :class:`~sockssuite.rulesyntax.Problem` and
:class:`~sockssuite.rulesyntax.ConfigError` as sockd.conf (the field spellings
they share, such as the strict dotted quad, come from
:mod:`sockssuite.rulesyntax` too).

Our choices where the original is loose (docs/udprelay-conf.rst explains them):

* A network is written ``ADDR/PREFIX``.  A mask as a separate field (or as
  ``ADDR/MASK``) is refused with the equivalent prefix in the message: a mask
  field would make the number of fields on a line depend on what they contain.
* Addresses are four decimal octets, no leading zeros (``127.1`` and
  ``0177.0.0.1`` are refused, as in sockd.conf).
* ``*.dom.ain`` matches names under ``dom.ain``, never ``dom.ain`` itself, and
  only a forward-confirmed name supplied by the caller (``None`` never matches).
* Each local port (localport1, a numeric localport2, an encapsulate port)
  belongs to one line; a second use is an error naming the first line.
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass
from typing import Callable

from sockssuite.rulesyntax import (
    DIGITS as _DIGITS,
    TOKEN as _TOKEN,
    ConfigError,
    FieldError as _FieldError,
    Problem,
    dotted as _dotted,
    looks_numeric as _looks_numeric,
    normal_name as _normal_name,
    numbered_lines,
    quad_value as _quad_value,
    read_text,
    show as _show,
)

__all__ = [
    "ConfigError",
    "EncapsulateRule",
    "Problem",
    "RelayRule",
    "SenderPattern",
    "UDPRelayConfig",
    "load_udprelay",
    "parse_udprelay",
]

RELAY_SYNOPSIS = "relay host1 remoteport1 localport1 host2 remoteport2 localport2 [oneway]"
ENCAPSULATE_SYNOPSIS = "encapsulate from-hosts localport"

_PREFIX = re.compile(r"(?:0|[1-9][0-9]?)\Z")
_HOST_NAME = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)(?:\.(?!-)[A-Za-z0-9_-]{1,63}(?<!-))*\Z")
_MAX_HOST_NAME = 253
# What may be handed to the services database: a name, never control characters.
_SERVICE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_+.-]{0,31}\Z")

_RELAY_FIELDS = (
    "host1 (the senders: *, *.domain, a host name, an address or address/prefix)",
    "remoteport1 (the senders' port: * or a port)",
    "localport1 (the port number to receive on)",
    "host2 (the host to send to: an address or a host name)",
    "remoteport2 (the port to send to)",
    "localport2 (the port number to send from, or any)",
)
_ENCAPSULATE_FIELDS = (
    "from-hosts (the senders: *, *.domain, a host name, an address or address/prefix)",
    "localport (the port number to receive on)",
)


# --------------------------------------------------------------------------- records


def _prefix_mask(prefix: int) -> int:
    return (0xFFFFFFFF << (32 - prefix)) & 0xFFFFFFFF


def _ipv4_value(address: str) -> int | None:
    """The 32-bit value of a sender address as a socket reports it; an
    IPv4-mapped IPv6 address counts as the IPv4 address it carries, any other
    IPv6 address has no IPv4 value (None).

    :raises ValueError: if *address* is neither an IPv4 nor an IPv6 address.
    """
    try:
        return int.from_bytes(socket.inet_pton(socket.AF_INET, address), "big")
    except (OSError, ValueError, TypeError):
        pass
    try:
        packed = socket.inet_pton(socket.AF_INET6, address)
    except (OSError, ValueError, TypeError):
        raise ValueError(f"not an IP address: {address!r}") from None
    if packed[:12] == b"\0" * 10 + b"\xff\xff":
        return int.from_bytes(packed[12:], "big")
    return None


@dataclass(frozen=True)
class SenderPattern:
    """Who a line accepts datagrams from (host1, from-hosts).

    ``kind`` is ``"any"`` (``*``), ``"network"`` (an address, ``prefix`` 32, or
    ``ADDR/PREFIX``; ``addr`` is the 32-bit network), ``"domain"``
    (``*.dom.ain``; ``name`` is ``dom.ain``, lower case, no trailing dot) or
    ``"host"`` (a host name; ``name`` lower case, no trailing dot).
    """

    kind: str
    addr: int = 0
    prefix: int = 0
    name: str = ""

    @property
    def is_name(self) -> bool:
        """True for ``*.domain`` and host names: these need the sender's
        forward-confirmed name."""
        return self.kind in ("domain", "host")

    @property
    def mask(self) -> int:
        return _prefix_mask(self.prefix)

    def matches(self, address: str, confirmed_name: str | None = None) -> bool:
        """Does the sender *address* (IPv4 text, or IPv6 text as a socket gives
        it) with forward-confirmed name *confirmed_name* fall under this pattern?

        A name pattern never matches without a confirmed name, and ignores the
        address; an address pattern ignores the name; an IPv6 sender matches
        an address pattern only when it is IPv4-mapped (``::ffff:a.b.c.d``).

        :raises ValueError: if an address pattern is given an *address* that is
            not an IP address.
        """
        kind = self.kind
        if kind == "any":
            return True
        if kind == "network":
            value = _ipv4_value(address)
            return value is not None and not (value ^ self.addr) & self.mask
        name = _normal_name(confirmed_name)
        if name is None:
            return False
        if kind == "host":
            return name == self.name
        return name.endswith("." + self.name)

    def __str__(self) -> str:
        if self.kind == "any":
            return "*"
        if self.kind == "domain":
            return "*." + self.name
        if self.kind == "host":
            return self.name
        if self.prefix == 32:
            return _dotted(self.addr)
        return f"{_dotted(self.addr)}/{self.prefix}"


@dataclass(frozen=True)
class RelayRule:
    """A ``relay`` line: datagrams from ``source`` (port ``source_port``, None
    for ``*``) arriving on ``local_port`` go to ``peer_host``:``peer_port``
    from local port ``peer_local_port`` (None for ``any``: an ephemeral port
    per association); answers from exactly that peer go back, unless
    ``oneway``.  ``peer_host`` is a dotted quad or a host name, as written:
    resolving it is the forwarder's job."""

    lineno: int
    text: str
    source: SenderPattern
    source_port: int | None
    local_port: int
    peer_host: str
    peer_port: int
    peer_local_port: int | None
    oneway: bool = False

    def matches_sender(self, address: str, port: int, confirmed_name: str | None = None) -> bool:
        """May the datagram from *address*:*port* (its forward-confirmed name
        *confirmed_name*, or None) be relayed by this line?

        :raises ValueError: if *address* is not an IP address.
        """
        return (self.source_port is None or port == self.source_port) and self.source.matches(
            address, confirmed_name
        )


@dataclass(frozen=True)
class EncapsulateRule:
    """An ``encapsulate`` line: datagrams from ``source`` (any port) arriving
    on ``local_port`` carry an RFC 1928 header naming their destination."""

    lineno: int
    text: str
    source: SenderPattern
    local_port: int

    def matches_sender(self, address: str, port: int, confirmed_name: str | None = None) -> bool:
        """May the datagram from *address*:*port* be unwrapped and forwarded?
        (Any sender port is accepted; the destination is for sockd.conf.)

        :raises ValueError: if *address* is not an IP address.
        """
        return self.source.matches(address, confirmed_name)


@dataclass(frozen=True)
class UDPRelayConfig:
    """A parsed udprelay.conf: its lines in file order, by kind."""

    relays: tuple[RelayRule, ...]
    encapsulates: tuple[EncapsulateRule, ...]
    filename: str
    warnings: tuple[Problem, ...] = ()

    @property
    def uses_names(self) -> bool:
        """True when some line names its senders (``*.domain`` or a host
        name), so senders' confirmed names must be looked up."""
        return any(rule.source.is_name for rule in (*self.relays, *self.encapsulates))

    def rule_for_port(self, local_port: int) -> RelayRule | EncapsulateRule | None:
        """The line that receives on *local_port* (its localport1, or its
        encapsulate port), or None."""
        for rule in (*self.relays, *self.encapsulates):
            if rule.local_port == local_port:
                return rule
        return None


# --------------------------------------------------------------------------- parsing


def _udp_service(name: str) -> int:
    return socket.getservbyname(name, "udp")


def _check_host_name(name: str, token: str, what: str) -> None:
    if len(name) > _MAX_HOST_NAME:
        raise _FieldError(f"invalid {what} {_show(token)}: a host name is at most {_MAX_HOST_NAME} characters")
    if not _HOST_NAME.match(name):
        raise _FieldError(
            f"invalid {what} {_show(token)}: a host name is letters, digits, '-' and '_' in dot-separated "
            f"labels of 1 to 63 characters; an address is 4 decimal octets"
        )


def _prefix_of_mask(mask: int) -> int | None:
    inverted = ~mask & 0xFFFFFFFF
    if inverted & (inverted + 1):
        return None  # not contiguous
    return 32 - inverted.bit_length()


def _parse_sender(token: str, what: str) -> SenderPattern:
    if token == "*":
        return SenderPattern("any")
    if "*" in token[2:] or ("*" in token and not token.startswith("*.")):
        raise _FieldError(
            f"invalid {what} {_show(token)}: '*' stands alone (any host) or starts '*.domain' (names under a domain)"
        )
    if token.startswith("*."):
        name = token[2:]
        if name.endswith("."):
            name = name[:-1]
        if not name:
            raise _FieldError(f"invalid {what} {_show(token)}: a domain needs a name after '*.'")
        _check_host_name(name, token, what)
        if _looks_numeric(name):
            raise _FieldError(f"invalid {what} {_show(token)}: a domain name cannot end in a number")
        return SenderPattern("domain", name=_normal_name(name))
    if "/" in token:
        address, _, prefix_text = token.partition("/")
        addr = _quad_value(address, what)
        if _PREFIX.match(prefix_text) and int(prefix_text) <= 32:
            prefix = int(prefix_text)
        elif "." in prefix_text:
            mask = _quad_value(prefix_text, f"mask in {what}")
            prefix = _prefix_of_mask(mask)
            if prefix is None:
                raise _FieldError(
                    f"invalid {what} {_show(token)}: the mask {prefix_text} is not contiguous; "
                    f"write ADDRESS/PREFIX with a prefix length 0..32"
                )
            network = _dotted(addr & mask)
            raise _FieldError(f"invalid {what} {_show(token)}: write the mask as a prefix length: {network}/{prefix}")
        else:
            raise _FieldError(
                f"invalid {what} {_show(token)}: expected a prefix length 0..32 after '/' (like 10.0.0.0/8)"
            )
        mask = _prefix_mask(prefix)
        if addr & ~mask & 0xFFFFFFFF:
            raise _FieldError(
                f"invalid {what} {_show(token)}: the address has bits set after the first {prefix}; "
                f"write {_dotted(addr & mask)}/{prefix} for the network, or {_dotted(addr)} for the one host"
            )
        return SenderPattern("network", addr=addr, prefix=prefix)
    if _looks_numeric(token):
        return SenderPattern("network", addr=_quad_value(token, what), prefix=32)
    name = token[:-1] if token.endswith(".") else token
    _check_host_name(name, token, what)
    return SenderPattern("host", name=_normal_name(name))


def _parse_peer_host(token: str, what: str) -> str:
    if "*" in token or "/" in token:
        raise _FieldError(
            f"invalid {what} {_show(token)}: host2 is one host (an address or a host name), not a pattern"
        )
    if _looks_numeric(token):
        value = _quad_value(token, what)
        if value in (0, 0xFFFFFFFF):
            raise _FieldError(f"invalid {what} {_show(token)}: {token} is not a host to send to")
        return token
    _check_host_name(token[:-1] if token.endswith(".") else token, token, what)
    return token


def _is_mask_like(token: str) -> bool:
    return "." in token and _looks_numeric(token)


class _Parser:
    def __init__(self, filename, getservbyname):
        self.filename = filename
        self.getservbyname = getservbyname
        self.errors: list[Problem] = []
        self.warnings: list[Problem] = []
        self.relays: list[RelayRule] = []
        self.encapsulates: list[EncapsulateRule] = []
        # local port -> (line number, what it is on that line)
        self.local_ports: dict[int, tuple[int, str]] = {}
        self._services: dict[str, int | None] = {}
        self.lineno = 0

    def error(self, column: int, message: str) -> None:
        self.errors.append(Problem(self.filename, self.lineno, column, message))

    def line(self, lineno: int, line: str) -> None:
        self.lineno = lineno
        end = line.find("#")
        rule_part = line if end < 0 else line[:end]
        tokens = [(m.start() + 1, m.group()) for m in _TOKEN.finditer(rule_part)]
        if not tokens:
            return
        column, keyword = tokens[0]
        if keyword == "relay":
            self.relay_line(line, tokens)
        elif keyword == "encapsulate":
            self.encapsulate_line(line, tokens)
        elif keyword.isascii() and keyword.lower() in ("relay", "encapsulate"):
            self.error(column, f"keywords are lower case: write {keyword.lower()!r}, not {_show(keyword)}")
        else:
            self.error(column, f"unknown line type {_show(keyword)} (expected relay or encapsulate)")

    # ---- fields

    def field(self, parse, column: int, token: str, *args):
        try:
            return parse(token, *args)
        except _FieldError as exc:
            self.error(column, str(exc))
            return None

    def sender(self, fields, what: str, following: str) -> tuple[SenderPattern | None, bool]:
        """host1/from-hosts; the flag is False when the line cannot be read
        further (a mask written as a separate field shifts every later field)."""
        column, token = fields[0]
        pattern = self.field(_parse_sender, column, token, what)
        if pattern is not None and pattern.kind == "network" and pattern.prefix == 32 and len(fields) > 1:
            mask_column, mask_token = fields[1]
            if _is_mask_like(mask_token):
                try:
                    prefix = _prefix_of_mask(_quad_value(mask_token, "mask"))
                except _FieldError:
                    prefix = None
                example = "10.0.0.0/8"
                if prefix is not None:
                    example = f"{_dotted(pattern.addr & _prefix_mask(prefix))}/{prefix}"
                self.error(
                    mask_column,
                    f"a mask cannot follow the address as a separate field: write the network as "
                    f"one field, like {example} (expected {following} here)",
                )
                return pattern, False
        return pattern, True

    def port(self, column: int, token: str, what: str, *, star: bool = False, service: bool = True,
             any_word: bool = False) -> tuple[bool, int | None]:
        """(ok, port); port None means * or any."""
        if star and token == "*":
            return True, None
        if any_word and token == "any":
            return True, None
        if _DIGITS.match(token):
            if len(token) > 5 or not 1 <= int(token) <= 65535:
                # (No int() of a token that may have thousands of digits:
                # Python refuses more than 4300.)
                hint = "; write any for an ephemeral port" if any_word and not token.strip("0") else ""
                self.error(column, f"{what} {_show(token)} out of range (1..65535){hint}")
                return False, None
            return True, int(token)
        if service and _SERVICE_NAME.match(token):
            if token not in self._services:
                try:
                    number = self.getservbyname(token)
                except (OSError, ValueError):
                    number = None
                if isinstance(number, bool) or not isinstance(number, int) or not 1 <= number <= 65535:
                    number = None
                self._services[token] = number
            number = self._services[token]
            if number is None:
                self.error(
                    column,
                    f"unknown service name {_show(token)} for {what} (not a udp service in the services database)",
                )
                return False, None
            return True, number
        expected = ["a port number 1..65535"]
        if service:
            expected.append("a udp service name")
        if star:
            expected.append("*")
        if any_word:
            expected.append("any")
        wanted = ", ".join(expected[:-1]) + " or " + expected[-1] if len(expected) > 1 else expected[0]
        self.error(column, f"invalid {what} {_show(token)}: expected {wanted}")
        return False, None

    def claim(self, column: int, port: int | None, role: str) -> bool:
        if port is None:
            return True
        first = self.local_ports.get(port)
        if first is None:
            self.local_ports[port] = (self.lineno, role)
            return True
        first_line, first_role = first
        if first_line == self.lineno:
            self.error(
                column,
                f"local port {port} is also the {first_role} of this line; a port that receives from host1 "
                f"cannot also send to host2 (use another port, or any)",
            )
        else:
            self.error(
                column,
                f"local port {port} is already used by line {first_line} (its {first_role}); "
                f"each local port belongs to one line",
            )
        return False

    def missing(self, tokens, descriptions, synopsis: str) -> None:
        # tokens: the keyword and the fields present; the error points at the last.
        column, token = tokens[-1]
        self.error(column, f"expected {descriptions[len(tokens) - 1]} after {_show(token)} ({synopsis})")

    # ---- lines

    def relay_line(self, line: str, tokens) -> None:
        errors_before = len(self.errors)
        fields = tokens[1:]
        if not fields:
            self.missing(tokens, _RELAY_FIELDS, RELAY_SYNOPSIS)
            return
        source, readable = self.sender(fields, "host1", "remoteport1, * or a port")
        if not readable:
            return
        present = dict(enumerate(fields))
        source_port = local_port = peer_host = peer_port = peer_local_port = None
        if 1 in present:
            _, source_port = self.port(*present[1], "remoteport1", star=True)
        if 2 in present:
            ok, local_port = self.port(*present[2], "localport1", service=False)
            if ok:
                self.claim(present[2][0], local_port, "localport1")
        if 3 in present:
            peer_host = self.field(_parse_peer_host, *present[3], "host2")
        if 4 in present:
            column, token = present[4]
            if token == "*":
                self.error(
                    column, "invalid remoteport2 '*': host2 is sent to on one port (a number or a udp service name)"
                )
            else:
                _, peer_port = self.port(column, token, "remoteport2")
        if 5 in present:
            ok, peer_local_port = self.port(*present[5], "localport2", service=False, any_word=True)
            if ok:
                self.claim(present[5][0], peer_local_port, "localport2")
        oneway = False
        if len(fields) < 6:
            self.missing(tokens, _RELAY_FIELDS, RELAY_SYNOPSIS)
        elif len(fields) > 6:
            column, token = fields[6]
            if token == "oneway":
                oneway = True
            elif token.isascii() and token.lower() == "oneway":
                self.error(column, f"keywords are lower case: write 'oneway', not {_show(token)}")
            else:
                self.error(column, f"expected oneway or the end of the line, not {_show(token)} ({RELAY_SYNOPSIS})")
            for column, token in fields[7:8]:
                self.error(column, f"too many fields: unexpected {_show(token)} ({RELAY_SYNOPSIS})")
        if len(self.errors) == errors_before:
            self.relays.append(
                RelayRule(
                    self.lineno, line, source, source_port, local_port, peer_host, peer_port, peer_local_port, oneway
                )
            )

    def encapsulate_line(self, line: str, tokens) -> None:
        errors_before = len(self.errors)
        fields = tokens[1:]
        if not fields:
            self.missing(tokens, _ENCAPSULATE_FIELDS, ENCAPSULATE_SYNOPSIS)
            return
        source, readable = self.sender(fields, "from-hosts", "localport, a port number")
        if not readable:
            return
        local_port = None
        if len(fields) < 2:
            self.missing(tokens, _ENCAPSULATE_FIELDS, ENCAPSULATE_SYNOPSIS)
        else:
            column, token = fields[1]
            ok, local_port = self.port(column, token, "localport", service=False)
            if ok:
                self.claim(column, local_port, "encapsulate port")
        for column, token in fields[2:3]:
            if token == "oneway":
                self.error(
                    column, "oneway applies only to relay lines (an encapsulate port always carries answers back)"
                )
            else:
                self.error(column, f"too many fields: unexpected {_show(token)} ({ENCAPSULATE_SYNOPSIS})")
        if len(self.errors) == errors_before:
            self.encapsulates.append(EncapsulateRule(self.lineno, line, source, local_port))

    def config(self) -> UDPRelayConfig:
        if not self.relays and not self.encapsulates:
            self.warnings.append(Problem(self.filename, 0, 0, "no relay or encapsulate lines: nothing is forwarded"))
        return UDPRelayConfig(tuple(self.relays), tuple(self.encapsulates), self.filename, tuple(self.warnings))


def parse_udprelay(
    text: str,
    filename: str = "<string>",
    *,
    getservbyname: Callable[[str], int] | None = None,
) -> UDPRelayConfig:
    """Parse the text of a udprelay.conf.

    :param filename: used in problem reports.
    :param getservbyname: ``getservbyname(name) -> int`` for remoteport1 and
        remoteport2 service names (default: the system's udp services database).
    :raises ConfigError: listing every error in the file, in file order.
    """
    parser = _Parser(filename, getservbyname or _udp_service)
    for lineno, line in numbered_lines(text):
        parser.line(lineno, line)
    if parser.errors:
        raise ConfigError(parser.errors, parser.warnings)
    return parser.config()


def load_udprelay(path: str, *, getservbyname: Callable[[str], int] | None = None) -> UDPRelayConfig:
    """Read and parse the udprelay.conf at *path*.

    :raises ConfigError: if the file cannot be read (line 0) or has errors.
    """
    return parse_udprelay(read_text(path, "udprelay file"), path, getservbyname=getservbyname)
