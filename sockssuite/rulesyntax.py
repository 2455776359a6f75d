"""The grammar the socks4 package's two rule files share, and their error reports.

sockd.conf (:mod:`sockssuite.access`) and socks.conf (:mod:`sockssuite.routing`)
are written in one dialect: blank-separated fields, ``#`` comments, ``*=userlist``
with ``/path`` entries, ``addr mask`` pairs (or ``ALL``, ``.domain``, a host
name), ``op port`` comparisons and a ``: shell_cmd`` tail.  The pieces of that
dialect live here, once, so both files accept and reject the same spellings
with the same messages.

Pure: stdlib only, no Twisted, no network.  Service names and user-list files
are read through injectable callables.
"""

from __future__ import annotations

import operator
import os
import re
import socket
import stat
from dataclasses import dataclass
from typing import Callable

from sockssuite import shellcmd

__all__ = ["AddressPattern", "ConfigError", "PortMatch", "Problem"]

PORT_OPERATORS: dict[str, Callable[[int, int], bool]] = {
    "eq": operator.eq,
    "neq": operator.ne,
    "lt": operator.lt,
    "gt": operator.gt,
    "le": operator.le,
    "ge": operator.ge,
}
OPERATOR_LIST = "eq, neq, lt, gt, le, ge"

# Tabs count as spaces (the original turned every tab into a blank before splitting).
BLANKS = " \t\r\f\v"
TOKEN = re.compile(r"[^ \t\r\f\v]+")
RULE_END = re.compile(r"[#:]")
# An IPv6 address (hex digits, dots, at least two colons), alone or with a
# /prefix, as one whole token: its colons are part of the address, not the
# start of a shell command (": cmd:with:colons" stays a command).
_IPV6_TOKEN = re.compile(r"[0-9A-Fa-f.]*:[0-9A-Fa-f.]*:[0-9A-Fa-f.:]*(?:/[0-9]*)?")
_BLANK_CHARS = frozenset(" \t\r\f\v")
_USER_FILE_SEPARATORS = re.compile(r"[ \t\r\f\v,]+")
DIGITS = re.compile(r"[0-9]+\Z")
_DOTTED_DECIMAL = re.compile(r"[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+\Z")
# What inet_aton() would take for a number: decimal, octal or hex in each part.
_NUMERIC_LABEL = re.compile(r"(?:[0-9]+|0[xX][0-9A-Fa-f]*)\Z")
HOST_NAME = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*\Z")


def find_rule_end(line: str, start: int = 0):
    """The first ``#`` (comment) or ``:`` (shell command) of *line* from
    *start*, as a match object, or ``None``.  A ``:`` inside an IPv6 address
    token (our extension: ``::1/128``, ``2001:db8::/32``) does not count."""
    pos = start
    while True:
        end = RULE_END.search(line, pos)
        if end is None or end.group() == "#":
            return end
        at = end.start()
        first = at
        while first > 0 and line[first - 1] not in _BLANK_CHARS:
            first -= 1
        last = at
        while last < len(line) and line[last] not in _BLANK_CHARS:
            last += 1
        if _IPV6_TOKEN.fullmatch(line, first, last):
            pos = last
            continue
        return end


# --------------------------------------------------------------------------- problems


@dataclass(frozen=True)
class Problem:
    """One error or warning, with its place in the file (1-based line and column;
    line 0 means the file as a whole)."""

    filename: str
    line: int
    column: int
    message: str

    def __str__(self) -> str:
        return f"{self.filename}:{self.line}:{self.column}: {self.message}"


class ConfigError(Exception):
    """The file has errors. ``problems`` holds every error found, in file order;
    ``warnings`` the warnings found on the way."""

    def __init__(self, problems, warnings=()):
        self.problems: tuple[Problem, ...] = tuple(problems)
        self.warnings: tuple[Problem, ...] = tuple(warnings)
        super().__init__(self.problems, self.warnings)

    def __str__(self) -> str:
        return "\n".join(str(problem) for problem in self.problems)


# --------------------------------------------------------------------------- records


def normal_name(name: str | None) -> str | None:
    # DNS names compare case-insensitively, and "host.example." is "host.example".
    if name is None:
        return None
    return name.rstrip(".").lower()


@dataclass(frozen=True)
class AddressPattern:
    """The address part of a rule: a numeric address and mask, ``ALL``, a domain
    (``.xyz.com``) or a host name.

    ``kind`` is ``"numeric"`` (IPv4), ``"numeric6"`` (IPv6, our extension),
    ``"all"``, ``"domain"`` or ``"host"``.  For ``numeric`` patterns ``addr``
    and ``mask`` are 32-bit integers; for ``numeric6`` they are 128-bit ones,
    ``addr`` carrying the :data:`V6_TAG` bit as :func:`address_value` does.
    For names ``name`` is the lower-case name without a trailing dot (domains
    keep their leading dot).

    Each numeric kind matches only addresses of its own family (IPv4-mapped
    IPv6 addresses are IPv4): ``0.0.0.0 0.0.0.0``, ``0.0.0.0/0`` and ``ALL``
    (and an omitted destination) are every IPv4 address, ``::/0`` every IPv6
    one.  So a file written before IPv6 admits no IPv6 client or
    destination.  socks.conf routing relaxes this (:meth:`_matches_route`).
    """

    kind: str
    addr: int = 0
    mask: int = 0
    name: str = ""

    @classmethod
    def numeric(cls, addr: int, mask: int) -> AddressPattern:
        return cls("numeric", addr, mask)

    @classmethod
    def numeric6(cls, addr: int, prefix: int) -> AddressPattern:
        """*addr* a 128-bit integer (without the tag), *prefix* 0..128."""
        mask = ((1 << 128) - 1) ^ ((1 << (128 - prefix)) - 1)
        return cls("numeric6", V6_TAG | (addr & mask), mask)

    @classmethod
    def any(cls) -> AddressPattern:
        return cls("all")

    @classmethod
    def domain(cls, name: str) -> AddressPattern:
        """``.xyz.com``: that domain and every name under it."""
        return cls("domain", name="." + normal_name(name.lstrip(".")))

    @classmethod
    def host(cls, name: str) -> AddressPattern:
        return cls("host", name=normal_name(name))

    @property
    def is_name(self) -> bool:
        """True for a domain or host name pattern (these need a confirmed name)."""
        return self.kind in ("domain", "host")

    def matches(self, address: int, confirmed_name: str | None = None) -> bool:
        """Does *address* (a 32-bit int) with its forward-confirmed reverse name
        *confirmed_name* (``None`` if unknown) fall under this pattern?

        A name pattern never matches without a confirmed name: a failed reverse
        lookup must not widen a rule.
        """
        return self._matches(address, normal_name(confirmed_name))

    def _matches(self, address: int | None, name: str | None) -> bool:
        # ``address`` None: the address is not known (a socks.conf destination
        # given by name that was not resolved locally); only a pattern that
        # ignores every address bit can match it.
        kind = self.kind
        if kind == "numeric":
            if address is None:
                return not self.mask
            # IPv4 only, even with a mask of 0.0.0.0: a file written before
            # IPv6 must not open IPv6 (its "deny ... 127.0.0.0 255.0.0.0"
            # does not cover ::1, so its catch-all permits must not reach it).
            return address < V6_TAG and not (address ^ self.addr) & self.mask
        if kind == "numeric6":
            if address is None:
                return not self.mask
            return address >= V6_TAG and not (address ^ self.addr) & self.mask
        if kind == "all":
            return address is None or address < V6_TAG  # IPv4, as above
        if name is None:
            return False
        if kind == "host":
            return name == self.name
        return name.endswith(self.name) or name == self.name[1:]

    def _matches_route(self, address: int | None, name: str | None) -> bool:
        """As :meth:`_matches`, for socks.conf: there an IPv6 destination is
        also matched by the IPv4 patterns that match any address (``0.0.0.0
        0.0.0.0``, ``ALL``), the "everything else" lines routing files end
        with.  (Routing only picks a way; the server's rules decide.)"""
        if address is not None and address >= V6_TAG and self.kind in ("numeric", "all"):
            return self._matches(None, name)
        return self._matches(address, name)

    def __str__(self) -> str:
        if self.kind == "numeric":
            return f"{dotted(self.addr)} {dotted(self.mask)}"
        if self.kind == "numeric6":
            text = socket.inet_ntop(socket.AF_INET6, (self.addr ^ V6_TAG).to_bytes(16, "big"))
            return f"{text}/{bin(self.mask).count('1')}"
        if self.kind == "all":
            return "ALL"
        return self.name


@dataclass(frozen=True)
class PortMatch:
    """``op dst_port``: the destination port compared with ``port`` by ``op``."""

    op: str
    port: int

    def matches(self, port: int) -> bool:
        return PORT_OPERATORS[self.op](port, self.port)

    def __str__(self) -> str:
        return f"{self.op} {self.port}"


#: Set in the value of every IPv6 address (see :func:`address_value`), so
#: that the two families never compare equal under any mask.
V6_TAG = 1 << 128
_MAPPED_PREFIX = 0xFFFF << 32


def ipv4_value(text: str) -> int:
    """A strict dotted quad (no "127.1", no leading zeros) as a 32-bit int.

    :raises ValueError: for anything else.
    """
    try:
        return int.from_bytes(socket.inet_pton(socket.AF_INET, text), "big")
    except (OSError, ValueError, TypeError):
        raise ValueError(f"not an IPv4 dotted quad: {text!r}") from None


def address_value(text: str) -> int:
    """An address as the integer rules match: a strict dotted quad as its
    32-bit value; an IPv6 address as its 128-bit value with :data:`V6_TAG`
    set, except an IPv4-mapped one (``::ffff:10.0.0.1``), which is its IPv4
    address.

    :raises ValueError: for anything else.
    """
    try:
        return ipv4_value(text)
    except ValueError:
        pass
    try:
        value = int.from_bytes(socket.inet_pton(socket.AF_INET6, text), "big")
    except (OSError, ValueError, TypeError):
        raise ValueError(f"not an IPv4 dotted quad or an IPv6 address: {text!r}") from None
    if value >> 32 == 0xFFFF:
        return value & 0xFFFFFFFF
    return V6_TAG | value


def dotted(value: int) -> str:
    return ".".join(str((value >> shift) & 0xFF) for shift in (24, 16, 8, 0))


# --------------------------------------------------------------------------- fields


class FieldError(Exception):
    """A token is wrong; the message says how."""


def show(token: str, limit: int = 40) -> str:
    # Quote a token for a message without letting a hostile file flood the log.
    if len(token) > limit:
        token = token[:limit] + "..."
    return repr(token)


def quad_value(token: str, what: str) -> int:
    if not _DOTTED_DECIMAL.match(token):
        raise FieldError(
            f"invalid {what} {show(token)}: write 4 decimal octets like 10.0.0.0 "
            f"(shortened, octal and hex forms are ambiguous and not accepted)"
        )
    value = 0
    for octet in token.split("."):
        if len(octet) > 1 and octet[0] == "0":
            raise FieldError(
                f"invalid {what} {show(token)}: octet {show(octet)} has a leading zero, "
                f"which some parsers read as octal; write 4 decimal octets without leading zeros"
            )
        if len(octet) > 3 or int(octet) > 255:
            raise FieldError(f"invalid {what} {show(token)}: octet {show(octet)} is out of range 0..255")
        value = (value << 8) | int(octet)
    return value


def looks_numeric(token: str) -> bool:
    # Top-level domains are never all-numeric, so a token whose last label is a
    # number is an address attempt, however it is spelled ("127.1", "0x7f.1").
    last = token.rstrip(".").rsplit(".", 1)[-1]
    return bool(_NUMERIC_LABEL.match(last))


def check_host_name(name: str, token: str, what: str) -> None:
    if not HOST_NAME.match(name):
        raise FieldError(
            f"invalid {what} {show(token)}: a host name is letters, digits, '-', '_' "
            f"and dots between non-empty labels; an address is 4 decimal octets"
        )


def is_self_contained(token: str) -> bool:
    """Whether an address token carries its own mask (``addr/prefix`` or an
    IPv6 address), so that no mask field follows it."""
    return "/" in token or ":" in token


def parse_prefix(token: str, what: str) -> AddressPattern:
    """``addr/prefix`` (IPv4 or IPv6) or a bare IPv6 address (``/128``)."""
    address, slash, prefix_text = token.partition("/")
    v6 = ":" in address
    width = 128 if v6 else 32
    if not slash:
        prefix = width
    elif not DIGITS.match(prefix_text) or len(prefix_text) > 3 or int(prefix_text) > width:
        raise FieldError(f"invalid {what} {show(token)}: the prefix length after '/' must be 0..{width}")
    else:
        prefix = int(prefix_text)
    if v6:
        try:
            value = int.from_bytes(socket.inet_pton(socket.AF_INET6, address), "big")
        except (OSError, ValueError):
            raise FieldError(f"invalid {what} {show(token)}: not an IPv6 address "
                             "(write it as in RFC 5952, like 2001:db8::/32 or ::1)") from None
        if value >> 32 == 0xFFFF and prefix >= 96:
            # IPv4-mapped addresses are matched as the IPv4 addresses they
            # are: a ::ffff:0:0/96 pattern would silently match nothing.
            raise FieldError(f"invalid {what} {show(token)}: an IPv4-mapped address; write the "
                             "IPv4 address or network (10.0.0.0/8), which matches it")
    else:
        value = quad_value(address, what)
    host_bits = (1 << (width - prefix)) - 1
    if value & host_bits:
        network = value & ~host_bits
        shown = (socket.inet_ntop(socket.AF_INET6, network.to_bytes(16, "big")) if v6
                 else dotted(network))
        raise FieldError(f"invalid {what} {show(token)}: bits are set after the first {prefix}; "
                         f"write {shown}/{prefix} for the network, or the address with /{width} for one host")
    if v6:
        return AddressPattern.numeric6(value, prefix)
    return AddressPattern.numeric(value, ((1 << 32) - 1) ^ host_bits)


def parse_address(token: str, what: str) -> AddressPattern:
    if is_self_contained(token):
        return parse_prefix(token, what)
    if token.isascii() and token.upper() == "ALL":
        return AddressPattern.any()
    if token.startswith("."):
        name = token[1:]
        if name.endswith("."):
            name = name[:-1]
        if not name:
            raise FieldError(f"invalid {what} {show(token)}: a domain needs a name after the dot")
        check_host_name(name, token, what)
        if looks_numeric(name):
            raise FieldError(f"invalid {what} {show(token)}: a domain name cannot end in a number")
        return AddressPattern.domain(name)
    if looks_numeric(token):
        return AddressPattern.numeric(quad_value(token, what), 0)
    check_host_name(token[:-1] if token.endswith(".") else token, token, what)
    return AddressPattern.host(token)


def read_user_file(path: str) -> str:
    # Only regular files: a FIFO or a device named by mistake would block the
    # daemon (or never end) at start-up and at every reload.
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except ValueError as exc:  # e.g. an embedded NUL
        raise OSError(str(exc)) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError("not a regular file")
        with open(fd, encoding="utf-8", errors="surrogateescape", closefd=False) as f:
            return f.read()
    finally:
        os.close(fd)


def tcp_service(name: str) -> int:
    return socket.getservbyname(name, "tcp")


def user_file_names(content: str) -> frozenset[str]:
    names: set[str] = set()
    for line in content.split("\n"):
        names.update(_USER_FILE_SEPARATORS.split(line.split("#", 1)[0]))
    names.discard("")
    return frozenset(names)


def read_text(path: str, what: str) -> str:
    """The whole file at *path* (UTF-8, undecodable bytes kept as surrogates).

    :raises ConfigError: at line 0 if it cannot be read.
    """
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            return f.read()
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise ConfigError([Problem(path, 0, 0, f"cannot read {what}: {reason}")]) from None


def numbered_lines(text: str):
    """``(lineno, line)`` pairs, 1-based, with a CR before each LF removed."""
    for lineno, line in enumerate(text.split("\n"), 1):
        yield lineno, (line[:-1] if line.endswith("\r") else line)


class RuleParser:
    """Collects problems for one file and parses the fields both formats share.

    A subclass walks the lines and sets ``lineno`` before parsing each one;
    errors and warnings are recorded with that line and the column given.
    """

    def __init__(self, filename, read_file, getservbyname):
        self.filename = filename
        self.read_file = read_file
        self.getservbyname = getservbyname
        self.errors: list[Problem] = []
        self.warnings: list[Problem] = []
        self._user_files: dict[str, frozenset[str] | str] = {}
        self._services: dict[str, int | None] = {}
        self.lineno = 0

    def error(self, column: int, message: str) -> None:
        self.errors.append(Problem(self.filename, self.lineno, column, message))

    def warning(self, column: int, message: str) -> None:
        self.warnings.append(Problem(self.filename, self.lineno, column, message))

    # ---- the ": shell_cmd" tail

    def command_text(self, line: str, start: int) -> tuple[str | None, int]:
        raw = line[start:]
        command = raw.strip(BLANKS)
        column = start + 1 + len(raw) - len(raw.lstrip(BLANKS))
        return (command or None), column

    def split_command(self, command: str, column: int) -> tuple[str, ...] | None:
        try:
            argv = shellcmd.split_template(command)
        except ValueError as exc:
            self.error(column, f"cannot split the shell command into words: {exc} (check its quotes)")
            return None
        if not argv or not argv[0]:
            self.error(column, "the shell command has no program to run")
            return None
        if "%" in argv[0]:
            self.error(column, "the program (first word) of a shell command must not contain %-substitutions")
            return None
        return tuple(argv)

    # ---- *=userlist

    def rule_tail(self, fields, k: int, command, command_column, synopsis: str):
        """The end every rule shares: an optional port part, nothing after it,
        and the ``: command`` split into words.  Returns ``(port, argv)``."""
        port = None
        if k < len(fields):
            port, k = self.port_part(fields, k)
        if k < len(fields):
            column, token = fields[k]
            self.error(column, f"too many fields: unexpected {show(token)} ({synopsis})")
        argv: tuple[str, ...] = ()
        if command is not None:
            argv = self.split_command(command, command_column) or ()
        elif command_column is not None:
            self.warning(command_column, "empty shell command after ':' is ignored")
        return port, argv

    def user_list(self, column: int, token: str) -> frozenset[str] | None:
        body = token[2:]
        if not body:
            return None  # an empty *= means any user, as in the original
        names: set[str] = set()
        entry_column = column + 2
        for entry in body.split(","):
            if not entry:
                self.error(entry_column, "empty entry in user list (a doubled comma, or a comma at the start or end)")
            elif entry.startswith("/"):
                names |= self.user_file(entry_column, entry)
            else:
                names.add(entry)
            entry_column += len(entry) + 1
        return frozenset(names)

    def user_file(self, column: int, path: str) -> frozenset[str]:
        if path not in self._user_files:
            try:
                self._user_files[path] = user_file_names(self.read_file(path))
            except (OSError, ValueError) as exc:
                self._user_files[path] = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        result = self._user_files[path]
        if isinstance(result, str):
            self.warning(column, f"cannot read user list file {show(path, 200)}: {result}; this entry matches nobody")
            return frozenset()
        return result

    # ---- addresses and ports

    def address_and_mask(self, fields, k: int, what: str) -> tuple[AddressPattern | None, int]:
        """``addr mask`` (two fields), or our one-field extension ``addr/prefix``
        or IPv6 address.  Returns the pattern (None after an error) and the
        index of the next field."""
        column, token = fields[k]
        if is_self_contained(token):
            try:
                return parse_prefix(token, f"{what} address"), k + 1
            except FieldError as exc:
                self.error(column, str(exc))
                return None, k + 1
        try:
            pattern = parse_address(token, f"{what} address")
        except FieldError as exc:
            self.error(column, str(exc))
            pattern = None
        if k + 1 >= len(fields):
            self.error(column, f"expected a mask (dotted quad) after {what} address {show(token)}")
            return None, k + 1
        mask_column, mask_token = fields[k + 1]
        try:
            # For name patterns the mask is required but ignored, as in the original.
            mask = quad_value(mask_token, f"{what} mask")
        except FieldError as exc:
            self.error(mask_column, str(exc))
            return None, k + 2
        if pattern is not None and pattern.kind == "numeric":
            pattern = AddressPattern.numeric(pattern.addr, mask)
        return pattern, k + 2

    def begins_port_part(self, fields, k: int) -> bool:
        # After the source pair comes either "dst_addr dst_mask" or "op dst_port":
        # guess which the writer meant so a typo gets the right message.
        token = fields[k][1]
        if token in PORT_OPERATORS:
            return True
        if is_self_contained(token):
            return False  # "addr/prefix" or an IPv6 address
        following = fields[k + 1][1] if k + 1 < len(fields) else None
        if following is not None and "." in following:
            return False  # "addr mask"
        if DIGITS.match(token):
            return True  # a port without its operator
        return token.isascii() and token.isalpha() and token.upper() != "ALL"

    def port_part(self, fields, k: int) -> tuple[PortMatch | None, int]:
        column, op = fields[k]
        if DIGITS.match(op):
            self.error(column, f"expected a port operator ({OPERATOR_LIST}) before port {show(op)}")
            return None, k + 1
        if k + 1 >= len(fields):
            if op in PORT_OPERATORS:
                self.error(column, f"expected a port number or service name after {op!r}")
            else:
                self.error(
                    column,
                    f"unexpected {show(op)}: expected a destination address and mask, "
                    f"or a port operator ({OPERATOR_LIST}) and a port",
                )
            return None, k + 1
        if op not in PORT_OPERATORS:
            self.error(column, f"unknown port operator {show(op)} (expected {OPERATOR_LIST})")
            op = None
        port = self.port_number(*fields[k + 1])
        if op is None or port is None:
            return None, k + 2
        return PortMatch(op, port), k + 2

    def service_port(self, token: str) -> int | None:
        """The port of a tcp service name, or ``None`` (cached per file)."""
        if token not in self._services:
            try:
                port = self.getservbyname(token)
            except (OSError, ValueError):
                port = None
            if not isinstance(port, int) or not 0 <= port <= 65535:
                port = None
            self._services[token] = port
        return self._services[token]

    def port_number(self, column: int, token: str) -> int | None:
        if DIGITS.match(token):
            if len(token) > 5 or int(token) > 65535:
                self.error(column, f"port {show(token)} out of range (0..65535)")
                return None
            return int(token)
        port = self.service_port(token)
        if port is None:
            self.error(column, f"unknown service name {show(token)} (not a tcp service in the services database)")
        return port
