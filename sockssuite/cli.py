"""The ``sockssuite`` command: check and explain configuration files.

    sockssuite check FILE...
    sockssuite explain --access FILE [--json] USER SRC DST PORT
    sockssuite connect [--routes FILE | --proxy [socks5://]HOST[:PORT]] [--user NAME] HOST PORT
    sockssuite route --routes FILE [--user NAME] HOST PORT
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys

from . import __version__, access, sockdroute, udprelay_conf

EXIT_OK = 0
EXIT_PROBLEMS = 1  # check: errors found; explain: the request would be denied
EXIT_USAGE = 2

_SERVER_IDENT = {"off": "n", "if-available": "i", "required": "I"}


def _format_of(path: str, forced: str | None) -> str:
    if forced:
        return forced
    if _socks_conf_name(path):
        return "socks"
    if os.path.basename(path).endswith("udprelay.conf"):
        return "udprelay"
    return "route" if path.endswith(".route") else "sockd"


def _summary_sockd(policy) -> str:
    specials = sum(1 for s in (policy.no_identd, policy.bad_id) if s is not None)
    return f"{len(policy.rules)} rule(s)" + (f", {specials} ident command line(s)" if specials else "")


def _check_formats():
    """format -> (loader, one-line summary of what was loaded)."""
    from . import routing
    return {
        "sockd": (access.load_access, _summary_sockd),
        "route": (sockdroute.load_routes, lambda t: f"{len(t.routes)} route(s)"),
        "socks": (routing.load_socks_conf, lambda c: f"{len(c.rules)} rule(s)"),
        "udprelay": (udprelay_conf.load_udprelay,
                     lambda c: f"{len(c.relays)} relay and {len(c.encapsulates)} encapsulate line(s)"),
    }


def _check(args) -> int:
    status = EXIT_OK
    formats = _check_formats()
    for path in args.files:
        load, summary = formats[_format_of(path, args.format)]
        try:
            loaded = load(path)
        except access.ConfigError as e:
            for problem in e.problems:
                print(f"{problem}", file=sys.stderr)
            for warning in e.warnings:
                print(f"{warning} (warning)", file=sys.stderr)
            status = EXIT_PROBLEMS
            continue
        for warning in getattr(loaded, "warnings", ()):
            print(f"{warning} (warning)", file=sys.stderr)
        print(f"{path}: OK, {summary(loaded)}")
    return status


class _BadArgument(Exception):
    """A command-line value that cannot be used (exit status 2)."""


def _address(text: str, what: str) -> tuple[str, str | None]:
    """An address argument: a dotted quad, an IPv6 address, or a name
    resolved here (the name then counts as the address's confirmed name for
    name rules)."""
    from .wire.socks4 import pack_ipv4
    try:
        pack_ipv4(text)
        return text, None
    except ValueError:
        pass
    try:
        return socket.inet_ntop(socket.AF_INET6, socket.inet_pton(socket.AF_INET6, text)), None
    except (OSError, ValueError):
        pass
    try:
        return socket.gethostbyname(text), text.rstrip(".").lower()
    except OSError as e:
        raise _BadArgument(f"{what} {text!r}: not an IP address and not resolvable ({e})")


def _port(text: str) -> int:
    if text.isascii() and text.isdigit():
        port = int(text)
        if port <= 65535:
            return port
        raise _BadArgument(f"port {text} out of range")
    try:
        return socket.getservbyname(text, "tcp")
    except (OSError, UnicodeError, ValueError):
        raise _BadArgument(f"unknown service name {text!r}")


def _explain(args) -> int:
    try:
        policy = access.load_access(args.access)
    except access.ConfigError as e:
        print(str(e), file=sys.stderr)
        return EXIT_USAGE
    try:
        src, src_name = _address(args.src, "source")
        dst, dst_name = _address(args.dst, "destination")
        port = _port(args.port)
    except _BadArgument as e:
        print(f"sockssuite explain: {e}", file=sys.stderr)
        return EXIT_USAGE
    request = access.AccessRequest(user=args.user, src=src, dst=dst, port=port,
                                   src_name=src_name, dst_name=dst_name, command=args.command)
    decision = access.decide(policy, request, default_ident=_SERVER_IDENT[args.server_ident])
    rule = decision.rule
    permitted = decision.permitted
    reply = 90 if permitted else 91
    ident_outcome = None
    if permitted and decision.ident != "n" and args.ident is not None:
        kind, _, other = args.ident.partition(":")
        if kind == "ok":
            ident_outcome = "ok"
        elif kind == "none":
            ident_outcome = "unreachable"
        else:
            ident_outcome = access.ident_outcome("ok", other or None, args.user) if other else "mismatch"
        refusal = access.ident_verdict(decision.ident, ident_outcome)
        if refusal is not None:
            permitted, reply = False, refusal
    if args.json:
        print(json.dumps({
            "permitted": permitted,
            "decision": "permit" if permitted else "deny",
            "reply": reply,
            "ident_outcome": ident_outcome,
            "line": rule.lineno if rule else None,
            "rule": rule.text if rule else None,
            "ident": decision.ident,
            "command": rule.command if rule else None,
            "file": policy.filename,
            "request": {"user": args.user, "src": src, "dst": dst, "port": port,
                        "command": args.command},
        }))
    else:
        if rule is None:
            print("*** No match with any line. Access denied.")
        else:
            print(f"Line {rule.lineno}: {rule.text}")
            if not decision.permitted:
                print("Access denied.")
            else:
                mode = {"I": "identd required (?=I)", "i": "identd checked if available (?=i)"}.get(
                    decision.ident)
                if mode is None:
                    print("Access permitted.")
                elif ident_outcome is None:
                    print(f"Access permitted if identd agrees: {mode}; "
                          "simulate its answer with --ident=ok|none|bad[:USER].")
                elif permitted:
                    print(f"Access permitted: {mode}, identd {_IDENT_TEXT[ident_outcome]}.")
                else:
                    print(f"Access denied with reply {reply}: {mode}, identd {_IDENT_TEXT[ident_outcome]}.")
    return EXIT_OK if permitted else EXIT_PROBLEMS


_IDENT_TEXT = {
    "ok": "confirms the user",
    "mismatch": "reports another user",
    "unreachable": "unreachable",
}


def _ident_choice(value: str) -> str:
    kind, sep, user = value.partition(":")
    if kind in ("ok", "none") and not sep or kind == "bad":
        return value
    raise argparse.ArgumentTypeError(f"{value!r}: expected ok, none, bad or bad:USER")


def _sessions(args) -> int:
    import socket as _socket
    request = f"close {args.close}\n" if args.close else "list\n"
    try:
        with _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM) as s:
            s.settimeout(10)
            s.connect(args.control)
            s.sendall(request.encode())
            data = b""
            while not data.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
    except OSError as e:
        print(f"sockssuite sessions: {args.control}: {e.strerror or e}", file=sys.stderr)
        return EXIT_USAGE
    try:
        answer = json.loads(data.decode("utf-8", "replace"))
    except ValueError:
        print(f"sockssuite sessions: {args.control}: not a sockssuite control socket", file=sys.stderr)
        return EXIT_USAGE
    if "error" in answer:
        print(f"sockssuite sessions: {answer['error']}", file=sys.stderr)
        return EXIT_PROBLEMS
    if args.json:
        print(json.dumps(answer))
        return EXIT_OK
    if args.close:
        print(f"closed session {answer['closed']}")
        return EXIT_OK
    rows = answer.get("sessions", [])
    print(f"{'ID':<10} {'CLIENT':<22} {'USER':<12} {'CMD':<8} {'DESTINATION':<32} {'RULE':>4} "
          f"{'AGE s':>8} {'UP B':>12} {'DOWN B':>12}")
    for r in rows:
        print(f"{r['id']:<10} {r['client']:<22} {r['user'][:12]:<12} {r['command']:<8} "
              f"{r['destination'][:32]:<32} {str(r['rule_line'] if r['rule_line'] is not None else '-'):>4} "
              f"{r['age']:>8.1f} {r['bytes_up']:>12} {r['bytes_down']:>12}")
    print(f"{len(rows)} session(s)")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sockssuite",
        description="Check and explain sockssuite configuration files. "
                    "The server itself runs as: twistd -n sockssuite [options].")
    parser.add_argument("--version", action="version", version=f"sockssuite {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (_, _, summary) in _TWISTED_STYLE.items():
        # Listed for --help; main() hands these over before argparse runs.
        sub.add_parser(name, help=summary + f" ('sockssuite {name} --help')", add_help=False)

    check = sub.add_parser(
        "check", help="validate sockd.conf (and sockd.route, socks.conf) files",
        description="Parse each file; print every error as FILE:LINE:COLUMN: message. "
                    "Exit 0 when all files are valid, 1 otherwise. Warnings (for example an "
                    "unreadable user-list file) are printed but do not fail the check.")
    check.add_argument("--format", choices=["sockd", "route", "socks", "udprelay"], default=None,
                       help="the files' format: sockd (sockd.conf access rules), route "
                            "(sockd.route), socks (socks.conf, the client's routing file) or udprelay "
                            "(udprelay.conf); default: socks for socks.conf and *.socks.conf, udprelay "
                            "for names ending in udprelay.conf, route for names ending in .route, "
                            "else sockd")
    check.add_argument("files", nargs="+", metavar="FILE")
    check.set_defaults(run=_check)

    sessions = sub.add_parser(
        "sessions", help="list (or close) the running daemon's live sessions",
        description="Ask the daemon's control socket (twistd sockssuite --control unix:PATH) for "
                    "its live sessions, or close one by id. Access is the socket file's mode. "
                    "Exit 0, 1 if the daemon answered with an error (no such session), 2 if "
                    "the socket cannot be used.")
    sessions.add_argument("--control", default="/run/sockssuite.ctl", metavar="PATH",
                          help="the control socket (default /run/sockssuite.ctl)")
    sessions.add_argument("--close", metavar="ID", help="close the session with this id")
    sessions.add_argument("--json", action="store_true", help="print the daemon's JSON answer")
    sessions.set_defaults(run=_sessions)

    explain = sub.add_parser(
        "explain", help="show which sockd.conf line decides a request",
        description="Print the line that decides a request ('Line N: ...') or that no line "
                    "matched, like the socks4 package's test_sockd_conf. SRC and DST are IPv4 "
                    "addresses or host names (a name is resolved and also stands for the "
                    "address's confirmed name); PORT is a number or a service name. "
                    "Exit 0 if permitted, 1 if denied, 2 on errors.")
    explain.add_argument("--access", required=True, metavar="FILE", help="the sockd.conf to consult")
    explain.add_argument("--json", action="store_true", help="print the decision as one JSON object")
    explain.add_argument("--server-ident", choices=["off", "if-available", "required"], default="off",
                         help="the server's --ident mode, used by lines without ?= (default off)")
    explain.add_argument("--ident", type=_ident_choice, metavar="ok|none|bad[:USER]",
                         help="simulate the identd's answer for ?=I/?=i lines: ok (confirms USER), "
                              "none (unreachable), bad (another user; bad:NAME names it)")
    explain.add_argument("--command", choices=list(access.COMMANDS), default="connect",
                         help="the SOCKS command asked for, for lines with cmd= (default: connect; "
                              "udp is one datagram of a SOCKS5 UDP ASSOCIATE)")
    explain.add_argument("user", metavar="USER")
    explain.add_argument("src", metavar="SRC")
    explain.add_argument("dst", metavar="DST")
    explain.add_argument("port", metavar="PORT")
    explain.set_defaults(run=_explain)
    _add_client_commands(sub)
    return parser


# --------------------------------------------------------------------------- the client side

EXIT_FAILED = 1  # connect: denied, refused, unreachable, or the session broke

#: Where the original client library looked for its routing file.
DEFAULT_SOCKS_CONF = "/etc/socks.conf"


class _ClientArgumentError(Exception):
    """A value given to connect/route that cannot be used (exit status 2)."""


def _socks_conf_name(path: str) -> bool:
    name = os.path.basename(path)
    return name == "socks.conf" or name.endswith(".socks.conf")


def _load_routes(path: str | None):
    """The parsed socks.conf named by --routes, else /etc/socks.conf if there
    is one, else None (no file: every destination goes direct)."""
    from . import routing
    if path is None:
        if not os.path.exists(DEFAULT_SOCKS_CONF):
            return None
        path = DEFAULT_SOCKS_CONF
    try:
        return routing.load_socks_conf(path)
    except access.ConfigError as e:
        raise _ClientArgumentError("\n".join(str(problem) for problem in e.problems)) from None


def _socks_server_env() -> str | None:
    from . import routing
    value = os.environ.get("SOCKS_SERVER") or None
    if value is not None:
        try:
            routing.parse_server_list(value)
        except ValueError as e:
            raise _ClientArgumentError(f"SOCKS_SERVER: {e}") from None
    return value


def _destination_port(text: str) -> int:
    if text.isascii() and text.isdigit() and 0 < int(text) <= 65535:
        return int(text)
    if not text.isdigit():
        try:
            return socket.getservbyname(text, "tcp")
        except OSError:
            pass
    raise _ClientArgumentError(f"invalid port {text!r} (1..65535 or a tcp service name)")


def _failure_text(failure, host: str, port: int, timeout: float) -> str:
    """One line saying why a connect failed."""
    from twisted.internet import defer, error
    from . import client
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    e = failure.value
    if isinstance(e, (client.RouteDenied, client.NoSOCKSServerReachable)):
        return str(e)
    if isinstance(e, client.SOCKS5ReplyError):
        return f"SOCKS5 server refused {where}: reply {e.code} ({e.meaning})"
    if isinstance(e, client.SOCKSNoAcceptableMethod):
        if USERNAME_PASSWORD_METHOD in e.offered:
            return f"SOCKS5 server refused {where}: it accepts none of the authentication methods offered"
        return (f"SOCKS5 server refused {where}: it requires a user name and password "
                f"(set SOCKS_USERNAME and SOCKS_PASSWORD)")
    if isinstance(e, client.SOCKSAuthenticationFailed):
        user = e.username.decode("utf-8", "backslashreplace")
        return f"SOCKS5 server refused {where}: wrong user name or password (user {user!r})"
    if isinstance(e, client.SOCKSError):
        meaning = {91: "rejected or failed", 92: "cannot reach this host's identd",
                   93: "identd reports another user"}.get(e.code, "")
        if e.code is None:
            return f"SOCKS server failed for {where}: {e}"
        return f"SOCKS server refused {where}: reply {e.code} ({meaning})"
    if isinstance(e, error.ConnectionRefusedError):
        return f"connection to {where} refused"
    if isinstance(e, (error.TimeoutError, defer.TimeoutError, error.ConnectingCancelledError)):
        return f"connection to {where} timed out after {timeout:g}s"
    if isinstance(e, error.DNSLookupError):
        return f"cannot resolve {host}"
    if isinstance(e, error.ConnectionLost):
        return f"connection to {where} lost"
    return f"{where}: {e}".rstrip(".")


#: RFC 1929's method number, as SOCKSNoAcceptableMethod.offered holds it.
USERNAME_PASSWORD_METHOD = 0x02


def _socks5_credentials(user: str) -> tuple[str | None, str | None]:
    """The user name and password for SOCKS5 servers, from the environment
    (Dante's variables): none without a password; with a password and no
    user name, the name is ``user``."""
    from . import client
    username, password = client.credentials_from_environment()
    if password is None:
        return None, None
    return (username if username is not None else user), password


def _connect_endpoint(args, port: int, reactor):
    from twisted.internet import endpoints
    from . import client, commands, routing

    user = args.user if args.user is not None else client.local_user()
    username, password = _socks5_credentials(user)
    if args.proxy is not None:
        try:
            [server] = routing.parse_server_list(args.proxy, default_port=routing.default_port())
        except ValueError as e:
            raise _ClientArgumentError(f"--proxy: {e}") from None
        proxy = endpoints.HostnameEndpoint(reactor, server.host, server.port, timeout=args.timeout)
        try:
            if server.version == 5:
                endpoint = client.SOCKS5ClientEndpoint(proxy, args.host, port, username=username, password=password)
            else:
                endpoint = client.SOCKS4ClientEndpoint(proxy, args.host, port, user=user)
        except ValueError as e:
            raise _ClientArgumentError(str(e)) from None
    else:
        routes = _load_routes(args.routes)
        try:
            endpoint = client.RoutedEndpoint(
                reactor, routes, args.host, port, user=user, default_server=_socks_server_env(),
                timeout=args.timeout, commands=commands.CommandRunner(reactor, args.allow_shell_commands),
                socks5_username=username, socks5_password=password)
        except ValueError as e:
            raise _ClientArgumentError(str(e)) from None
    return endpoint


def _connect(args) -> int:
    from twisted.internet import reactor
    from . import stdiorelay

    try:
        port = _destination_port(args.port)
        endpoint = _connect_endpoint(args, port, reactor)
    except _ClientArgumentError as e:
        for line in str(e).splitlines():
            print(f"sockssuite connect: {line}", file=sys.stderr)
        return EXIT_USAGE

    outcome = {"status": EXIT_FAILED}
    session = stdiorelay.StdioSession()

    def connecting():
        # The routed endpoint bounds each server and direct connection itself;
        # --proxy gets the same bound for its connect and the SOCKS reply.
        d = session.run(endpoint, connect_timeout=args.timeout if args.proxy is not None else None,
                        clock=reactor)

        def ended(_):
            outcome["status"] = EXIT_OK

        def failed(f):
            print(f"sockssuite connect: {_failure_text(f, args.host, port, args.timeout)}", file=sys.stderr)

        d.addCallbacks(ended, failed)
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(connecting)
    reactor.run()
    _restore_blocking(0, 1)
    return outcome["status"]


def _restore_blocking(*fds: int) -> None:
    # Standard I/O was made non-blocking for the reactor; a terminal or pipe
    # shared with the calling shell must not stay so after we exit.
    from twisted.internet import fdesc
    for fd in fds:
        try:
            fdesc.setBlocking(fd)
        except OSError:
            pass


def _route(args) -> int:
    from . import client, routing

    try:
        port = _destination_port(args.port)
        routes = _load_routes(args.routes)
        default_server = _socks_server_env()
    except _ClientArgumentError as e:
        for line in str(e).splitlines():
            print(f"sockssuite route: {line}", file=sys.stderr)
        return EXIT_USAGE
    user = args.user if args.user is not None else client.local_user()
    address = None
    host = args.host
    if args.resolve and not _is_address(host):
        try:
            address = socket.gethostbyname(host)
        except OSError:
            print(f"{host} does not resolve here: only lines for any address (mask 0.0.0.0) and "
                  f"name lines can match it")
        else:
            print(f"{host} resolves here to {address}")
    try:
        decision = routing.decide_route(routes, host, port, user=user, address=address,
                                        default_server=default_server)
    except ValueError as e:
        print(f"sockssuite route: {e}", file=sys.stderr)
        return EXIT_USAGE
    rule = decision.rule
    if rule is not None:
        print(f"Line {rule.lineno}: {rule.text}")
        if rule.command is not None:
            print(f"Command (run by 'sockssuite connect' only with --allow-shell-commands): {rule.command}")
    elif decision.action == "deny":
        print("*** No match with any line. Connection denied.")
        return EXIT_PROBLEMS
    else:
        print(decision.reason[0].upper() + decision.reason[1:] + ".")
    if decision.action == "deny":
        print("Connection denied.")
        return EXIT_PROBLEMS
    if decision.action == "direct":
        print("Route: direct (no SOCKS server).")
        return EXIT_OK
    print("Route: through a SOCKS server; servers in the order tried:")
    ipv6 = _is_address(host) and ":" in host
    for number, server in enumerate(decision.servers, 1):
        note = ""
        if ipv6 and server.version == 4:
            note = " (SOCKS4 cannot carry an IPv6 destination: skipped)"
        elif args.resolve and not server.is_address:
            try:
                infos = socket.getaddrinfo(server.host, server.port, type=socket.SOCK_STREAM)
            except OSError:
                note = " (does not resolve here: skipped)"
            else:
                addresses = list(dict.fromkeys(info[4][0] for info in infos))
                note = " (" + ", then ".join(addresses) + ")"
        print(f"  {number}. {server}{note}")
    if any(server.version == 5 for server in decision.servers):
        username, password = _socks5_credentials(user)
        if password is None:
            print("SOCKS5 servers are offered no user name and password (set SOCKS_USERNAME and "
                  "SOCKS_PASSWORD to offer them).")
        else:
            print(f"SOCKS5 servers are offered user name {username!r} and a password (from the environment).")
    return EXIT_OK


def _is_address(host: str) -> bool:
    from twisted.internet.abstract import isIPAddress, isIPv6Address
    return isIPAddress(host) or isIPv6Address(host)


def _add_client_commands(sub) -> None:
    """The client side: connect (netcat-like) and route (socks.conf decisions)."""
    connect = sub.add_parser(
        "connect", help="join stdin/stdout to HOST PORT, through SOCKS as socks.conf says",
        description="Connect to HOST PORT and copy standard input to it and its answer to standard "
                    "output, like netcat; usable as an OpenSSH ProxyCommand "
                    "(ssh -o ProxyCommand='sockssuite connect --routes /etc/socks.conf %h %p' HOST). "
                    "With --routes (default: /etc/socks.conf if it exists, else every destination goes "
                    "direct) the socks.conf decides; with --proxy every connection goes through that "
                    "SOCKS4 server, host names as SOCKS4a, or SOCKS5 server when written socks5://HOST[:PORT]. "
                    "SOCKS5 servers are offered the user name and password of SOCKS_USERNAME and "
                    "SOCKS_PASSWORD (or SOCKS5_USER and SOCKS5_PASSWD) when a password is set. "
                    "End of input is passed on as a half-close and "
                    "the answer still arrives. Exit 0 when the session ended cleanly; 1 with a one-line "
                    "reason on standard error when the connection was denied, refused or unreachable "
                    "or broke; 2 on usage or configuration errors.")
    how = connect.add_mutually_exclusive_group()
    how.add_argument("--routes", metavar="FILE", help="the socks.conf to follow (default /etc/socks.conf)")
    how.add_argument("--proxy", metavar="[socks5://]HOST[:PORT]",
                     help="always use this SOCKS server: SOCKS4, or SOCKS5 when written socks5://HOST[:PORT] "
                          "(port default: the socks service, else 1080)")
    connect.add_argument("--user", metavar="NAME",
                         help="the user for *= lists and the SOCKS4 USERID, and the SOCKS5 user name when "
                              "SOCKS_PASSWORD is set without SOCKS_USERNAME (default: the user running it)")
    connect.add_argument("--timeout", type=_positive_seconds, default=30.0, metavar="SECONDS",
                         help="give up on a server (or a direct connection) after this long (default 30)")
    connect.add_argument("--allow-shell-commands", action="store_true",
                         help="run the ': shell_cmd' of the deciding socks.conf line (never through a shell)")
    connect.add_argument("host", metavar="HOST")
    connect.add_argument("port", metavar="PORT")
    connect.set_defaults(run=_connect)

    route = sub.add_parser(
        "route", help="show how socks.conf routes a connection",
        description="Print the socks.conf line that decides a connection to HOST PORT ('Line N: ...'), "
                    "the decision (direct, denied, or through a SOCKS server), and the servers in the order "
                    "they would be tried (a name's addresses in turn; SOCKS5 servers shown as socks5://, "
                    "with whether a user name and password would be offered to them). SOCKS_SERVER is the "
                    "default server, as for 'connect'. Exit 0 for direct or SOCKS, 1 if denied, 2 on errors.")
    route.add_argument("--routes", metavar="FILE",
                       help="the socks.conf to consult (default /etc/socks.conf; without one, direct)")
    route.add_argument("--user", metavar="NAME", help="the local user for *= lists (default: you)")
    route.add_argument("--no-resolve", dest="resolve", action="store_false",
                       help="do not resolve host names here (a name then matches only name lines and "
                            "lines for any address)")
    route.add_argument("host", metavar="HOST")
    route.add_argument("port", metavar="PORT")
    route.set_defaults(run=_route)


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < 1e6:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a positive number of seconds")
    return value
# --------------------------------------------------------------------------- (end of the client side)


#: Subcommands with parsers of their own, handed their arguments whole.
_TWISTED_STYLE = {
    "mktap": ("sockssuite.deploy", "mktap_main", "write a tap file for 'twistd -f'"),
    "inetd": ("sockssuite.deploy", "inetd_main", "serve one session on standard input (inetd, systemd Accept=yes)"),
    "report": ("sockssuite.report", "report_main", "summarize a --log-json session log"),
    "passwd": ("sockssuite.cli", "passwd_main", "add or change a user in a SOCKS5 password file"),
}


def passwd_main(argv) -> int:
    """sockssuite passwd [--password-stdin] FILE USER"""
    import getpass
    parser = argparse.ArgumentParser(
        prog="sockssuite passwd",
        description="Add USER to the SOCKS5 password file FILE, or change its password "
                    "(bcrypt hash; the file is created mode 600 and replaced atomically).")
    parser.add_argument("--password-stdin", action="store_true",
                        help="read the password from the first line of standard input (scripts)")
    parser.add_argument("file", metavar="FILE")
    parser.add_argument("user", metavar="USER")
    args = parser.parse_args(argv)
    from . import passwords
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass(f"password for {args.user}: ")
        if password != getpass.getpass("again: "):
            print("sockssuite passwd: the passwords differ", file=sys.stderr)
            return EXIT_PROBLEMS
    if not password:
        print("sockssuite passwd: empty password refused", file=sys.stderr)
        return EXIT_PROBLEMS
    try:
        passwords.set_password(args.file, args.user, password.encode("utf-8"))
    except (OSError, ValueError) as e:
        print(f"sockssuite passwd: {e}", file=sys.stderr)
        return EXIT_USAGE
    print(f"{args.file}: password set for {args.user}")
    return EXIT_OK


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in _TWISTED_STYLE:
        import importlib
        module, function, _ = _TWISTED_STYLE[argv[0]]
        return getattr(importlib.import_module(module), function)(argv[1:])
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
