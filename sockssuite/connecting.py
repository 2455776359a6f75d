"""Connecting a prepared protocol instance through an endpoint, quietly."""

from __future__ import annotations

from twisted.internet import protocol


class _OneShot(protocol.Factory):
    # No "Starting factory" / "Stopping factory" log lines: this runs once per
    # session (and per ident query), where those lines would be noise and cost.
    noisy = False

    def __init__(self, proto):
        self.proto = proto

    def buildProtocol(self, addr):
        return self.proto


def connect_protocol(endpoint, proto):
    """Like ``twisted.internet.endpoints.connectProtocol``, without the log lines."""
    return endpoint.connect(_OneShot(proto))
