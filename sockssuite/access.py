"""sockd.conf, the access file of the socks4 package: parser, rule records, decision.

Pure: stdlib only, no Twisted, no network. Parsing and matching are separate: a file
is parsed once into immutable records (each keeps its line number and text, so every
decision can say which line made it), and :func:`decide` matches a request against
them with integer arithmetic only.

Service names and user-list files are read at parse time through injectable
callables (``getservbyname=``, ``read_file=``), so a reload sees their current
contents and tests need no real files.
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

__all__ = [
    "DEFAULT_POLICY",
    "AccessPolicy",
    "AccessRequest",
    "AccessRule",
    "AddressPattern",
    "ConfigError",
    "Decision",
    "PortMatch",
    "Problem",
    "SpecialCommand",
    "decide",
    "load_access",
    "parse_access",
]

IDENT_MODES = ("I", "i", "n")
ACTIONS = ("permit", "deny")

_PORT_OPERATORS: dict[str, Callable[[int, int], bool]] = {
    "eq": operator.eq,
    "neq": operator.ne,
    "lt": operator.lt,
    "gt": operator.gt,
    "le": operator.le,
    "ge": operator.ge,
}
_OPERATOR_LIST = "eq, neq, lt, gt, le, ge"
_SYNOPSIS = "permit|deny [?=I|?=i|?=n] [*=userlist] src_addr src_mask [dst_addr dst_mask] [op dst_port] [: shell_cmd]"

# Tabs count as spaces (the original turned every tab into a blank before splitting).
_BLANKS = " \t\r\f\v"
_TOKEN = re.compile(r"[^ \t\r\f\v]+")
_RULE_END = re.compile(r"[#:]")
_USER_FILE_SEPARATORS = re.compile(r"[ \t\r\f\v,]+")
_DIGITS = re.compile(r"[0-9]+\Z")
_DOTTED_DECIMAL = re.compile(r"[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+\Z")
# What inet_aton() would take for a number: decimal, octal or hex in each part.
_NUMERIC_LABEL = re.compile(r"(?:[0-9]+|0[xX][0-9A-Fa-f]*)\Z")
_HOST_NAME = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*\Z")
_SPECIAL_MARKERS = ("#NO_IDENTD:", "#BAD_ID:")


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


def _normal_name(name: str | None) -> str | None:
    # DNS names compare case-insensitively, and "host.example." is "host.example".
    if name is None:
        return None
    return name.rstrip(".").lower()


@dataclass(frozen=True)
class AddressPattern:
    """The address part of a rule: a numeric address and mask, ``ALL``, a domain
    (``.xyz.com``) or a host name.

    ``kind`` is ``"numeric"``, ``"all"``, ``"domain"`` or ``"host"``. For numeric
    patterns ``addr`` and ``mask`` are 32-bit integers; for names ``name`` is the
    lower-case name without a trailing dot (domains keep their leading dot).
    """

    kind: str
    addr: int = 0
    mask: int = 0
    name: str = ""

    @classmethod
    def numeric(cls, addr: int, mask: int) -> AddressPattern:
        return cls("numeric", addr, mask)

    @classmethod
    def any(cls) -> AddressPattern:
        return cls("all")

    @classmethod
    def domain(cls, name: str) -> AddressPattern:
        """``.xyz.com``: that domain and every name under it."""
        return cls("domain", name="." + _normal_name(name.lstrip(".")))

    @classmethod
    def host(cls, name: str) -> AddressPattern:
        return cls("host", name=_normal_name(name))

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
        return self._matches(address, _normal_name(confirmed_name))

    def _matches(self, address: int, name: str | None) -> bool:
        kind = self.kind
        if kind == "numeric":
            return not (address ^ self.addr) & self.mask
        if kind == "all":
            return True
        if name is None:
            return False
        if kind == "host":
            return name == self.name
        return name.endswith(self.name) or name == self.name[1:]

    def __str__(self) -> str:
        if self.kind == "numeric":
            return f"{_dotted(self.addr)} {_dotted(self.mask)}"
        if self.kind == "all":
            return "ALL"
        return self.name


@dataclass(frozen=True)
class PortMatch:
    """``op dst_port``: the destination port compared with ``port`` by ``op``."""

    op: str
    port: int

    def matches(self, port: int) -> bool:
        return _PORT_OPERATORS[self.op](port, self.port)

    def __str__(self) -> str:
        return f"{self.op} {self.port}"


@dataclass(frozen=True)
class AccessRequest:
    """What a rule is matched against. Addresses are dotted quads; names are
    forward-confirmed reverse names, or ``None`` when not looked up or not
    confirmed."""

    user: str
    src: str
    dst: str
    port: int
    src_name: str | None = None
    dst_name: str | None = None


def _address_value(text: str) -> int:
    # Requests carry addresses the server produced itself; inet_pton is strict
    # (no "127.1", no leading zeros) and fast.
    try:
        return int.from_bytes(socket.inet_pton(socket.AF_INET, text), "big")
    except (OSError, ValueError, TypeError):
        raise ValueError(f"not an IPv4 dotted quad: {text!r}") from None


def _dotted(value: int) -> str:
    return ".".join(str((value >> shift) & 0xFF) for shift in (24, 16, 8, 0))


@dataclass(frozen=True)
class AccessRule:
    """One ``permit``/``deny`` line. ``users`` is ``None`` for any user, else the
    exact set of names (user-list files already read). ``argv`` is the command
    split into words (empty when there is no command)."""

    lineno: int
    text: str
    action: str
    ident: str | None
    users: frozenset[str] | None
    src: AddressPattern
    dst: AddressPattern
    port: PortMatch | None
    command: str | None
    argv: tuple[str, ...] = ()

    def matches(self, request: AccessRequest) -> bool:
        return self._matches(
            request.user,
            _address_value(request.src),
            _address_value(request.dst),
            request.port,
            _normal_name(request.src_name),
            _normal_name(request.dst_name),
        )

    def _matches(self, user, src, dst, port, src_name, dst_name) -> bool:
        return (
            (self.users is None or user in self.users)
            and self.src._matches(src, src_name)
            and self.dst._matches(dst, dst_name)
            and (self.port is None or self.port.matches(port))
        )


@dataclass(frozen=True)
class SpecialCommand:
    """A ``#NO_IDENTD:`` or ``#BAD_ID:`` line."""

    lineno: int
    text: str
    command: str
    argv: tuple[str, ...] = ()


@dataclass(frozen=True)
class AccessPolicy:
    """A parsed sockd.conf."""

    rules: tuple[AccessRule, ...]
    filename: str
    no_identd: SpecialCommand | None = None
    bad_id: SpecialCommand | None = None
    warnings: tuple[Problem, ...] = ()
    uses_src_names: bool = False
    uses_dst_names: bool = False
    needs_ident: bool = False


@dataclass(frozen=True)
class Decision:
    """The outcome of :func:`decide`. ``rule`` is the deciding line, ``None`` when
    no line matched. ``ident`` is the ident mode to apply (``'n'`` for denials)."""

    permitted: bool
    rule: AccessRule | None
    ident: str


def decide(policy: AccessPolicy, request: AccessRequest, default_ident: str = "n") -> Decision:
    """The first rule that matches *request* decides; no match means deny.

    *default_ident* is the server-wide ident mode, used by permit rules without
    ``?=``.

    :raises ValueError: if an address in *request* is not a dotted quad, or
        *default_ident* is not one of ``I``, ``i``, ``n``.
    """
    if default_ident not in IDENT_MODES:
        raise ValueError(f"default_ident must be one of I, i, n, not {default_ident!r}")
    user = request.user
    src = _address_value(request.src)
    dst = _address_value(request.dst)
    port = request.port
    src_name = _normal_name(request.src_name)
    dst_name = _normal_name(request.dst_name)
    for rule in policy.rules:
        if rule._matches(user, src, dst, port, src_name, dst_name):
            if rule.action == "permit":
                return Decision(True, rule, rule.ident or default_ident)
            return Decision(False, rule, "n")
    return Decision(False, None, "n")


# --------------------------------------------------------------------------- parsing


class _FieldError(Exception):
    """A token is wrong; the message says how."""


def _show(token: str, limit: int = 40) -> str:
    # Quote a token for a message without letting a hostile file flood the log.
    if len(token) > limit:
        token = token[:limit] + "..."
    return repr(token)


def _quad_value(token: str, what: str) -> int:
    if not _DOTTED_DECIMAL.match(token):
        raise _FieldError(
            f"invalid {what} {_show(token)}: write 4 decimal octets like 10.0.0.0 "
            f"(shortened, octal and hex forms are ambiguous and not accepted)"
        )
    value = 0
    for octet in token.split("."):
        if len(octet) > 1 and octet[0] == "0":
            raise _FieldError(
                f"invalid {what} {_show(token)}: octet {_show(octet)} has a leading zero, "
                f"which some parsers read as octal; write 4 decimal octets without leading zeros"
            )
        if len(octet) > 3 or int(octet) > 255:
            raise _FieldError(f"invalid {what} {_show(token)}: octet {_show(octet)} is out of range 0..255")
        value = (value << 8) | int(octet)
    return value


def _looks_numeric(token: str) -> bool:
    # Top-level domains are never all-numeric, so a token whose last label is a
    # number is an address attempt, however it is spelled ("127.1", "0x7f.1").
    last = token.rstrip(".").rsplit(".", 1)[-1]
    return bool(_NUMERIC_LABEL.match(last))


def _check_host_name(name: str, token: str, what: str) -> None:
    if not _HOST_NAME.match(name):
        raise _FieldError(
            f"invalid {what} {_show(token)}: a host name is letters, digits, '-', '_' "
            f"and dots between non-empty labels; an address is 4 decimal octets"
        )


def _parse_address(token: str, what: str) -> AddressPattern:
    if token.isascii() and token.upper() == "ALL":
        return AddressPattern.any()
    if token.startswith("."):
        name = token[1:]
        if name.endswith("."):
            name = name[:-1]
        if not name:
            raise _FieldError(f"invalid {what} {_show(token)}: a domain needs a name after the dot")
        _check_host_name(name, token, what)
        if _looks_numeric(name):
            raise _FieldError(f"invalid {what} {_show(token)}: a domain name cannot end in a number")
        return AddressPattern.domain(name)
    if _looks_numeric(token):
        return AddressPattern.numeric(_quad_value(token, what), 0)
    _check_host_name(token[:-1] if token.endswith(".") else token, token, what)
    return AddressPattern.host(token)


def _read_user_file(path: str) -> str:
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


def _tcp_service(name: str) -> int:
    return socket.getservbyname(name, "tcp")


def _user_file_names(content: str) -> frozenset[str]:
    names: set[str] = set()
    for line in content.split("\n"):
        names.update(_USER_FILE_SEPARATORS.split(line.split("#", 1)[0]))
    names.discard("")
    return frozenset(names)


class _Parser:
    def __init__(self, filename, read_file, getservbyname):
        self.filename = filename
        self.read_file = read_file
        self.getservbyname = getservbyname
        self.errors: list[Problem] = []
        self.warnings: list[Problem] = []
        self.rules: list[AccessRule] = []
        self.special: dict[str, SpecialCommand] = {}
        self._user_files: dict[str, frozenset[str] | str] = {}
        self._services: dict[str, int | None] = {}
        self.lineno = 0

    def error(self, column: int, message: str) -> None:
        self.errors.append(Problem(self.filename, self.lineno, column, message))

    def warning(self, column: int, message: str) -> None:
        self.warnings.append(Problem(self.filename, self.lineno, column, message))

    # ---- lines

    def line(self, lineno: int, line: str) -> None:
        self.lineno = lineno
        indent = len(line) - len(line.lstrip(_BLANKS))
        for marker in _SPECIAL_MARKERS:
            if line.startswith(marker, indent):
                self.special_line(line, indent + len(marker), marker)
                return
        end = _RULE_END.search(line)
        rule_part = line if end is None else line[: end.start()]
        command = command_column = None
        if end is not None and end.group() == ":":
            command, command_column = self.command_text(line, end.end())
        tokens = [(m.start() + 1, m.group()) for m in _TOKEN.finditer(rule_part)]
        if not tokens:
            if command_column is not None:
                self.error(end.start() + 1, f"a shell command needs a rule before ':' ({_SYNOPSIS})")
            return
        self.rule_line(line, tokens, command, command_column)

    def command_text(self, line: str, start: int) -> tuple[str | None, int]:
        raw = line[start:]
        command = raw.strip(_BLANKS)
        column = start + 1 + len(raw) - len(raw.lstrip(_BLANKS))
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

    def special_line(self, line: str, start: int, marker: str) -> None:
        command, column = self.command_text(line, start)
        if command is None:
            self.warning(column, f"empty {marker} command; line ignored")
            return
        argv = self.split_command(command, column)
        if argv is None:
            return
        first = self.special.get(marker)
        if first is not None:
            self.warning(start - len(marker) + 1, f"only the first {marker} line (line {first.lineno}) is used; this one is ignored")
            return
        self.special[marker] = SpecialCommand(self.lineno, line, command, argv)

    # ---- rules

    def rule_line(self, line, tokens, command, command_column) -> None:
        errors_before = len(self.errors)
        action_column, action = tokens[0]
        if action not in ACTIONS:
            hint = f"; {action!r} belongs in socks.conf" if action in ("direct", "sockd") else ""
            self.error(action_column, f"unknown action {_show(action)} (expected permit or deny{hint})")
            return

        ident = users = None
        seen: dict[str, int] = {}
        index = 1
        while index < len(tokens) and tokens[index][1][:2] in ("?=", "*="):
            column, token = tokens[index]
            key = token[:2]
            if key in seen:
                self.error(column, f"duplicate {key} field (the first is at column {seen[key]})")
            else:
                seen[key] = column
                if key == "?=":
                    ident = self.ident_mode(column, token)
                else:
                    users = self.user_list(column, token)
            index += 1

        fields = []
        for column, token in tokens[index:]:
            if token[:2] in ("?=", "*="):
                self.error(column, f"{_show(token)} must come right after the action, before the source address")
            else:
                fields.append((column, token))
        if not fields:
            column, token = tokens[index - 1]
            self.error(column, f"expected a source address and mask after {_show(token)} ({_SYNOPSIS})")
            return

        src = self.address_and_mask(fields, 0, "source")
        k = 2
        dst: AddressPattern | None = AddressPattern.any()
        if k < len(fields) and not self.begins_port_part(fields, k):
            dst = self.address_and_mask(fields, k, "destination")
            k += 2
        port = None
        if k < len(fields):
            port, k = self.port_part(fields, k)
        if k < len(fields):
            column, token = fields[k]
            self.error(column, f"too many fields: unexpected {_show(token)} ({_SYNOPSIS})")

        argv: tuple[str, ...] = ()
        if command is not None:
            argv = self.split_command(command, command_column) or ()
        elif command_column is not None:
            self.warning(command_column, "empty shell command after ':' is ignored")

        if len(self.errors) == errors_before:
            self.rules.append(AccessRule(self.lineno, line, action, ident, users, src, dst, port, command, argv))

    def ident_mode(self, column: int, token: str) -> str | None:
        mode = token[2:]
        if mode not in IDENT_MODES:
            self.error(column, f"invalid ident mode {_show(token)} (expected ?=I, ?=i or ?=n)")
            return None
        return mode

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
                self._user_files[path] = _user_file_names(self.read_file(path))
            except (OSError, ValueError) as exc:
                self._user_files[path] = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        result = self._user_files[path]
        if isinstance(result, str):
            self.warning(column, f"cannot read user list file {_show(path, 200)}: {result}; this entry matches nobody")
            return frozenset()
        return result

    def address_and_mask(self, fields, k: int, what: str) -> AddressPattern | None:
        column, token = fields[k]
        try:
            pattern = _parse_address(token, f"{what} address")
        except _FieldError as exc:
            self.error(column, str(exc))
            pattern = None
        if k + 1 >= len(fields):
            self.error(column, f"expected a mask (dotted quad) after {what} address {_show(token)}")
            return None
        mask_column, mask_token = fields[k + 1]
        try:
            # For name patterns the mask is required but ignored, as in the original.
            mask = _quad_value(mask_token, f"{what} mask")
        except _FieldError as exc:
            self.error(mask_column, str(exc))
            return None
        if pattern is not None and pattern.kind == "numeric":
            pattern = AddressPattern.numeric(pattern.addr, mask)
        return pattern

    def begins_port_part(self, fields, k: int) -> bool:
        # After the source pair comes either "dst_addr dst_mask" or "op dst_port":
        # guess which the writer meant so a typo gets the right message.
        token = fields[k][1]
        if token in _PORT_OPERATORS:
            return True
        following = fields[k + 1][1] if k + 1 < len(fields) else None
        if following is not None and "." in following:
            return False  # "addr mask"
        if _DIGITS.match(token):
            return True  # a port without its operator
        return token.isascii() and token.isalpha() and token.upper() != "ALL"

    def port_part(self, fields, k: int) -> tuple[PortMatch | None, int]:
        column, op = fields[k]
        if _DIGITS.match(op):
            self.error(column, f"expected a port operator ({_OPERATOR_LIST}) before port {_show(op)}")
            return None, k + 1
        if k + 1 >= len(fields):
            if op in _PORT_OPERATORS:
                self.error(column, f"expected a port number or service name after {op!r}")
            else:
                self.error(
                    column,
                    f"unexpected {_show(op)}: expected a destination address and mask, "
                    f"or a port operator ({_OPERATOR_LIST}) and a port",
                )
            return None, k + 1
        if op not in _PORT_OPERATORS:
            self.error(column, f"unknown port operator {_show(op)} (expected {_OPERATOR_LIST})")
            op = None
        port = self.port_number(*fields[k + 1])
        if op is None or port is None:
            return None, k + 2
        return PortMatch(op, port), k + 2

    def port_number(self, column: int, token: str) -> int | None:
        if _DIGITS.match(token):
            if len(token) > 5 or int(token) > 65535:
                self.error(column, f"port {_show(token)} out of range (0..65535)")
                return None
            return int(token)
        if token not in self._services:
            try:
                port = self.getservbyname(token)
            except (OSError, ValueError):
                port = None
            if not isinstance(port, int) or not 0 <= port <= 65535:
                port = None
            self._services[token] = port
        port = self._services[token]
        if port is None:
            self.error(column, f"unknown service name {_show(token)} (not a tcp service in the services database)")
        return port

    def policy(self) -> AccessPolicy:
        rules = tuple(self.rules)
        if not rules:
            self.warnings.append(Problem(self.filename, 0, 0, "no permit or deny lines: every request is denied"))
        return AccessPolicy(
            rules=rules,
            filename=self.filename,
            no_identd=self.special.get("#NO_IDENTD:"),
            bad_id=self.special.get("#BAD_ID:"),
            warnings=tuple(self.warnings),
            uses_src_names=any(rule.src.is_name for rule in rules),
            uses_dst_names=any(rule.dst.is_name for rule in rules),
            needs_ident=any(rule.action == "permit" and rule.ident in ("I", "i") for rule in rules),
        )


def parse_access(
    text: str,
    filename: str = "<string>",
    *,
    read_file: Callable[[str], str] | None = None,
    getservbyname: Callable[[str], int] | None = None,
) -> AccessPolicy:
    """Parse the text of a sockd.conf.

    :param filename: used in problem reports.
    :param read_file: ``read_file(path) -> str`` reads a ``/path`` user-list entry
        (default: the file as UTF-8 with surrogateescape; regular files only). An
        ``OSError`` gives a warning, and that entry matches nobody.
    :param getservbyname: ``getservbyname(name) -> int`` for port service names
        (default: the system's tcp services database).
    :raises ConfigError: listing every error in the file.
    """
    parser = _Parser(filename, read_file or _read_user_file, getservbyname or _tcp_service)
    for lineno, line in enumerate(text.split("\n"), 1):
        parser.line(lineno, line[:-1] if line.endswith("\r") else line)
    if parser.errors:
        raise ConfigError(parser.errors, parser.warnings)
    return parser.policy()


def load_access(path: str) -> AccessPolicy:
    """Read and parse the sockd.conf at *path*.

    :raises ConfigError: if the file cannot be read (line 0) or has errors.
    """
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            text = f.read()
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise ConfigError([Problem(path, 0, 0, f"cannot read access file: {reason}")]) from None
    return parse_access(text, path)


#: The built-in policy: loopback clients may go anywhere, everything else is denied.
DEFAULT_POLICY: AccessPolicy = parse_access("permit 127.0.0.0 255.0.0.0", "<built-in>")


# --------------------------------------------------------------------------- ident

#: What each ident outcome means for a request a permit line allowed, by the
#: line's effective ident mode.  Keys: (mode, outcome); values: the reply code
#: that refuses the request (92 or 93), or None to let it through.
#: Outcomes: "ok" (identd named the USERID), "mismatch" (identd named someone
#: else), "no-user" (identd answered NO-USER/HIDDEN-USER: treated as a mismatch),
#: "unreachable" (refused, timed out, garbage, INVALID-PORT, UNKNOWN-ERROR).
IDENT_TABLE: dict[tuple[str, str], int | None] = {
    ("I", "ok"): None,
    ("I", "mismatch"): 93,
    ("I", "no-user"): 93,
    ("I", "unreachable"): 92,
    ("i", "ok"): None,
    ("i", "mismatch"): 93,
    ("i", "no-user"): 93,
    ("i", "unreachable"): None,
}


def ident_outcome(status: str, ident_user: str | None, userid: str) -> str:
    """Classify an identd result (status ``ok``/``no-user``/``unreachable``)
    against the request's USERID (exact, case-sensitive compare)."""
    if status == "ok":
        return "ok" if ident_user == userid else "mismatch"
    if status == "no-user":
        return "no-user"
    return "unreachable"


def ident_verdict(mode: str, outcome: str) -> int | None:
    """The reply code refusing the request (92/93), or None when it may go on."""
    if mode == "n":
        return None
    return IDENT_TABLE[(mode, outcome)]
