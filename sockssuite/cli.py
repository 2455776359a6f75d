"""The ``sockssuite`` command: check and explain configuration files.

    sockssuite check FILE...
    sockssuite explain --access FILE [--json] USER SRC DST PORT
"""

from __future__ import annotations

import argparse
import json
import socket
import sys

from . import __version__, access, sockdroute

EXIT_OK = 0
EXIT_PROBLEMS = 1  # check: errors found; explain: the request would be denied
EXIT_USAGE = 2

_SERVER_IDENT = {"off": "n", "if-available": "i", "required": "I"}


def _format_of(path: str, forced: str | None) -> str:
    if forced:
        return forced
    return "route" if path.endswith(".route") else "sockd"


def _check(args) -> int:
    status = EXIT_OK
    for path in args.files:
        if _format_of(path, args.format) == "route":
            try:
                table = sockdroute.load_routes(path)
            except access.ConfigError as e:
                for problem in e.problems:
                    print(f"{problem}", file=sys.stderr)
                status = EXIT_PROBLEMS
                continue
            print(f"{path}: OK, {len(table.routes)} route(s)")
            continue
        try:
            policy = access.load_access(path)
        except access.ConfigError as e:
            for problem in e.problems:
                print(f"{problem}", file=sys.stderr)
            for warning in e.warnings:
                print(f"{warning} (warning)", file=sys.stderr)
            status = EXIT_PROBLEMS
            continue
        for warning in policy.warnings:
            print(f"{warning} (warning)", file=sys.stderr)
        specials = sum(1 for s in (policy.no_identd, policy.bad_id) if s is not None)
        print(f"{path}: OK, {len(policy.rules)} rule(s)"
              + (f", {specials} ident command line(s)" if specials else ""))
    return status


def _address(text: str, what: str) -> tuple[str, str | None]:
    """An address argument: a dotted quad, or a name resolved here (the name
    then counts as the address's confirmed name for name rules)."""
    from .wire.socks4 import pack_ipv4
    try:
        pack_ipv4(text)
        return text, None
    except ValueError:
        pass
    try:
        return socket.gethostbyname(text), text.rstrip(".").lower()
    except OSError as e:
        raise SystemExit(f"sockssuite explain: {what} {text!r}: not an IPv4 address and not resolvable ({e})")


def _port(text: str) -> int:
    if text.isdigit():
        port = int(text)
        if port <= 65535:
            return port
        raise SystemExit(f"sockssuite explain: port {text} out of range")
    try:
        return socket.getservbyname(text, "tcp")
    except OSError:
        raise SystemExit(f"sockssuite explain: unknown service name {text!r}")


def _explain(args) -> int:
    try:
        policy = access.load_access(args.access)
    except access.ConfigError as e:
        print(str(e), file=sys.stderr)
        return EXIT_USAGE
    src, src_name = _address(args.src, "source")
    dst, dst_name = _address(args.dst, "destination")
    port = _port(args.port)
    request = access.AccessRequest(user=args.user, src=src, dst=dst, port=port,
                                   src_name=src_name, dst_name=dst_name)
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
            "request": {"user": args.user, "src": src, "dst": dst, "port": port},
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sockssuite",
        description="Check and explain sockssuite configuration files. "
                    "The server itself runs as: twistd -n sockssuite [options].")
    parser.add_argument("--version", action="version", version=f"sockssuite {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    check = sub.add_parser(
        "check", help="validate sockd.conf (and sockd.route) files",
        description="Parse each file; print every error as FILE:LINE:COLUMN: message. "
                    "Exit 0 when all files are valid, 1 otherwise. Warnings (for example an "
                    "unreadable user-list file) are printed but do not fail the check.")
    check.add_argument("--format", choices=["sockd", "route"], default=None,
                       help="the files' format: sockd (sockd.conf access rules) or route "
                            "(sockd.route); default: route for names ending in .route, else sockd")
    check.add_argument("files", nargs="+", metavar="FILE")
    check.set_defaults(run=_check)

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
    explain.add_argument("user", metavar="USER")
    explain.add_argument("src", metavar="SRC")
    explain.add_argument("dst", metavar="DST")
    explain.add_argument("port", metavar="PORT")
    explain.set_defaults(run=_explain)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
