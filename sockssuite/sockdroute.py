"""sockd.route: which local address a multi-homed server uses per destination.

One rule per line, ``interface_addr dst_addr dst_mask``; ``#`` starts a
comment; the first line whose ``(dst & mask) == (dst_addr & mask)`` picks the
interface.  sockssuite uses it for BIND listeners (the address announced to
the client, which it passes on to its peer).  Pure: no sockets here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .access import ConfigError, Problem
from .wire.socks4 import pack_ipv4

_TOKEN = re.compile(r"[^ \t]+")


@dataclass(frozen=True)
class Route:
    lineno: int
    text: str
    interface: str
    dst: int
    mask: int

    def matches(self, address: int) -> bool:
        return (address & self.mask) == (self.dst & self.mask)


@dataclass(frozen=True)
class RouteTable:
    routes: tuple[Route, ...]
    filename: str

    def route_for(self, address: str) -> Route | None:
        value = int.from_bytes(pack_ipv4(address), "big")
        for route in self.routes:
            if route.matches(value):
                return route
        return None


def _quad(token: str) -> int:
    return int.from_bytes(pack_ipv4(token), "big")


def parse_routes(text: str, filename: str = "<string>") -> RouteTable:
    """Parse sockd.route text; :class:`ConfigError` lists every bad line."""
    routes, problems = [], []
    names = ("interface address", "destination address", "destination mask")
    for lineno, raw in enumerate(text.split("\n"), 1):
        line = raw.rstrip("\r")
        body = line.split("#", 1)[0]
        tokens = list(_TOKEN.finditer(body))
        if not tokens:
            continue
        if len(tokens) != 3:
            column = tokens[3].start() + 1 if len(tokens) > 3 else len(body.rstrip(" \t")) + 1
            problems.append(Problem(filename, lineno, column,
                                    f"expected 'interface_addr dst_addr dst_mask', got {len(tokens)} field(s)"))
            continue
        values = []
        for what, token in zip(names, tokens):
            try:
                values.append(_quad(token.group()))
            except ValueError:
                problems.append(Problem(filename, lineno, token.start() + 1,
                                        f"expected the {what} as 4 decimal octets, got {token.group()[:40]!r}"))
                break
        else:
            routes.append(Route(lineno, line, tokens[0].group(), values[1], values[2]))
    if problems:
        raise ConfigError(problems)
    return RouteTable(tuple(routes), filename)


def load_routes(path: str) -> RouteTable:
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError([Problem(path, 0, 0, f"cannot read route file: {e.strerror or e}")]) from None
    return parse_routes(text, path)
