"""sockd.conf, the access file of the socks4 package: parser, rule records, decision.

Pure: stdlib only, no Twisted, no network. Parsing and matching are separate: a file
is parsed once into immutable records (each keeps its line number and text, so every
decision can say which line made it), and :func:`decide` matches a request against
them with integer arithmetic only.

Service names and user-list files are read at parse time through injectable
callables (``getservbyname=``, ``read_file=``), so a reload sees their current
contents and tests need no real files.

The field grammar sockd.conf shares with socks.conf (addresses and masks, port
operators, user lists, shell commands) and the error types live in
:mod:`sockssuite.rulesyntax`; they are re-exported here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .rulesyntax import (
    BLANKS as _BLANKS,
    find_rule_end as _find_rule_end,
    TOKEN as _TOKEN,
    AddressPattern,
    ConfigError,
    PortMatch,
    Problem,
    RuleParser,
    address_value as _address_value,
    normal_name as _normal_name,
    numbered_lines,
    read_text,
    read_user_file as _read_user_file,
    show as _show,
    tcp_service as _tcp_service,
)

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
#: What the (optional, our extension) ``cmd=`` field names.
COMMANDS = ("connect", "bind", "udp")

_SYNOPSIS = ("permit|deny [?=I|?=i|?=n] [*=userlist] [cmd=connect,bind,udp] src_addr src_mask "
             "[dst_addr dst_mask] [op dst_port] [: shell_cmd]")
_MODIFIERS = ("?=", "*=", "cmd=")
_SPECIAL_MARKERS = ("#NO_IDENTD:", "#BAD_ID:")


# --------------------------------------------------------------------------- records


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
    command: str = "connect"  # or "bind", "udp" (SOCKS5 UDP ASSOCIATE, per datagram)


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
    #: The SOCKS commands the line is for (``cmd=``), ``None`` for all.
    commands: frozenset[str] | None = None

    def matches(self, request: AccessRequest) -> bool:
        return self._matches(
            request.user,
            _address_value(request.src),
            _address_value(request.dst),
            request.port,
            _normal_name(request.src_name),
            _normal_name(request.dst_name),
            request.command,
        )

    def _matches(self, user, src, dst, port, src_name, dst_name, command="connect") -> bool:
        return (
            (self.commands is None or command in self.commands)
            and (self.users is None or user in self.users)
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
    command = request.command
    for rule in policy.rules:
        if rule._matches(user, src, dst, port, src_name, dst_name, command):
            if rule.action == "permit":
                return Decision(True, rule, rule.ident or default_ident)
            return Decision(False, rule, "n")
    return Decision(False, None, "n")


def permits_for(policy: AccessPolicy, user: str, src: str, src_name: str | None = None,
                command: str = "udp") -> list[AccessRule]:
    """The ``permit`` lines that could let *user* at *src* do *command* to
    some destination, in file order (empty when there is none).

    Used when a UDP ASSOCIATE is asked for: each datagram's destination is
    decided later, but a client no line could ever permit gets no sockets,
    and the identd is asked at once when any of these lines needs it."""
    src_value = _address_value(src)
    name = _normal_name(src_name)
    return [rule for rule in policy.rules
            if rule.action == "permit"
            and (rule.commands is None or command in rule.commands)
            and (rule.users is None or user in rule.users)
            and rule.src._matches(src_value, name)]


def first_permit_for(policy: AccessPolicy, user: str, src: str, src_name: str | None = None,
                     command: str = "udp") -> AccessRule | None:
    """The first of :func:`permits_for`, or ``None``."""
    permits = permits_for(policy, user, src, src_name, command)
    return permits[0] if permits else None


# --------------------------------------------------------------------------- parsing


class _Parser(RuleParser):
    def __init__(self, filename, read_file, getservbyname):
        super().__init__(filename, read_file, getservbyname)
        self.rules: list[AccessRule] = []
        self.special: dict[str, SpecialCommand] = {}

    # ---- lines

    def line(self, lineno: int, line: str) -> None:
        self.lineno = lineno
        indent = len(line) - len(line.lstrip(_BLANKS))
        for marker in _SPECIAL_MARKERS:
            if line.startswith(marker, indent):
                self.special_line(line, indent + len(marker), marker)
                return
        end = _find_rule_end(line)
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

        ident = users = commands = None
        seen: dict[str, int] = {}
        index = 1
        while index < len(tokens) and tokens[index][1].startswith(_MODIFIERS):
            column, token = tokens[index]
            key = "cmd=" if token.startswith("cmd=") else token[:2]
            if key in seen:
                self.error(column, f"duplicate {key} field (the first is at column {seen[key]})")
            else:
                seen[key] = column
                if key == "?=":
                    ident = self.ident_mode(column, token)
                elif key == "*=":
                    users = self.user_list(column, token)
                else:
                    commands = self.command_list(column, token)
            index += 1

        fields = []
        for column, token in tokens[index:]:
            if token.startswith(_MODIFIERS):
                self.error(column, f"{_show(token)} must come right after the action, before the source address")
            else:
                fields.append((column, token))
        if not fields:
            column, token = tokens[index - 1]
            self.error(column, f"expected a source address and mask after {_show(token)} ({_SYNOPSIS})")
            return

        src, k = self.address_and_mask(fields, 0, "source")
        dst: AddressPattern | None = AddressPattern.any()
        if k < len(fields) and not self.begins_port_part(fields, k):
            dst, k = self.address_and_mask(fields, k, "destination")
        port, argv = self.rule_tail(fields, k, command, command_column, _SYNOPSIS)
        if len(self.errors) == errors_before:
            self.rules.append(AccessRule(self.lineno, line, action, ident, users, src, dst, port, command, argv,
                                         commands))

    def command_list(self, column: int, token: str) -> frozenset[str] | None:
        names = token[4:].split(",")
        entry_column = column + 4
        for name in names:
            if name not in COMMANDS:
                what = f"unknown command {_show(name)}" if name else "empty entry in the command list"
                self.error(entry_column, f"{what} (cmd= takes connect, bind and udp, comma-separated)")
            entry_column += len(name) + 1
        return frozenset(names)

    def ident_mode(self, column: int, token: str) -> str | None:
        mode = token[2:]
        if mode not in IDENT_MODES:
            self.error(column, f"invalid ident mode {_show(token)} (expected ?=I, ?=i or ?=n)")
            return None
        return mode

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
    for lineno, line in numbered_lines(text):
        parser.line(lineno, line)
    if parser.errors:
        raise ConfigError(parser.errors, parser.warnings)
    return parser.policy()


def load_access(path: str) -> AccessPolicy:
    """Read and parse the sockd.conf at *path*.

    :raises ConfigError: if the file cannot be read (line 0) or has errors.
    """
    return parse_access(read_text(path, "access file"), path)


#: The built-in policy: loopback clients (IPv4 and IPv6) may go anywhere,
#: IPv4 or IPv6; everything else is denied.
BUILT_IN_RULES = ("permit 127.0.0.0 255.0.0.0\n"
                  "permit 127.0.0.0/8 ::/0\n"
                  "permit ::1\n"
                  "permit ::1 ::/0\n")
DEFAULT_POLICY: AccessPolicy = parse_access(BUILT_IN_RULES, "<built-in>")


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
