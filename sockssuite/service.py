"""Long-running services of the sockssuite tree.

Every service here keeps only plain configuration (endpoint strings, parsed
rules, numbers) in its pickled state and builds the live parts — factories,
listening ports — when it starts, so a service tree can be saved as a tap
file and so a .tac file can build it without a reactor in hand.
"""

from __future__ import annotations

import io
import json

from twisted.application import service
from twisted.internet import defer, endpoints
from twisted.logger import Logger, eventAsJSON, globalLogPublisher

from . import access
from .server import ServerSettings, SOCKS4ServerFactory

log = Logger(namespace="sockssuite.service")


class SOCKSServerService(service.Service):
    """Listens on one or more server endpoint strings with one SOCKS4 factory."""

    name = "socks"

    def __init__(self, endpoints_: list[str], policy: access.AccessPolicy,
                 settings: ServerSettings = ServerSettings(), reactor=None, routes=None):
        self.endpoints = list(endpoints_)
        self.policy = policy
        self.routes = routes
        self.settings = settings
        self._reactor = reactor
        self.factory: SOCKS4ServerFactory | None = None
        self.ports: list = []
        self._listening: list[defer.Deferred] = []

    def __getstate__(self):
        state = self.__dict__.copy()
        for live in ("_reactor", "factory", "ports", "_listening"):
            state.pop(live, None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._reactor = None
        self.factory = None
        self.ports = []
        self._listening = []

    @property
    def reactor(self):
        if self._reactor is None:
            from twisted.internet import reactor
            self._reactor = reactor
        return self._reactor

    def privilegedStartService(self):
        # Bind here, before twistd drops privileges (--uid/--gid), so a port
        # below 1024 works for a daemon that then runs as nobody.
        service.Service.privilegedStartService(self)
        self._listen()

    def startService(self):
        service.Service.startService(self)
        if self.factory is None:  # started without privilegedStartService (tests, .tac)
            self._listen()

    def _listen(self):
        reactor = self.reactor
        self.factory = SOCKS4ServerFactory(self.policy, self.settings, reactor=reactor, routes=self.routes)
        for warning in self.policy.warnings:
            log.warn("{problem}", problem=str(warning))
        log.info("access rules: {count} from {filename}",
                 count=len(self.policy.rules), filename=self.policy.filename)
        for description in self.endpoints:
            d = endpoints.serverFromString(reactor, description).listen(self.factory)
            d.addCallbacks(self._listening_on, self._listen_failed,
                           callbackArgs=(description,), errbackArgs=(description,))
            self._listening.append(d)

    def _listening_on(self, port, description):
        self.ports.append(port)
        log.info("SOCKS server listening on {address} ({endpoint})",
                 address=_address_text(port), endpoint=description)
        return port

    def _listen_failed(self, failure, description):
        log.critical("cannot listen on {endpoint}: {error}; stopping",
                     endpoint=description, error=failure.getErrorMessage())
        reactor = self.reactor
        if reactor.running:
            reactor.stop()
        else:
            reactor.callWhenRunning(reactor.stop)

    @property
    def addresses(self):
        """The addresses actually listened on (useful with port 0)."""
        return [port.getHost() for port in self.ports]

    def stopService(self):
        service.Service.stopService(self)
        ports, self.ports = self.ports, []
        factory, self.factory = self.factory, None
        stopped = [defer.maybeDeferred(p.stopListening) for p in ports]
        if factory is not None:
            stopped.append(factory.close_all())
        return defer.DeferredList(stopped)

    def set_policy(self, policy: access.AccessPolicy):
        """Swap the rules; sessions in flight keep the rules they were admitted with."""
        self.policy = policy
        if self.factory is not None:
            self.factory.policy = policy


def _address_text(port):
    host = port.getHost()
    return f"{getattr(host, 'host', host)}:{getattr(host, 'port', '')}".rstrip(":")


def jsonl_observer(stream):
    """A log observer writing sockssuite's own events as JSON lines (one
    object a line, no record separator), for machines that read the log."""

    def observe(event):
        if not str(event.get("log_namespace", "")).startswith("sockssuite"):
            return
        record = {k: v for k, v in event.items()
                  if not k.startswith("log_") or k in ("log_namespace", "log_level", "log_time")}
        if "log_level" in record:
            record["log_level"] = record["log_level"].name
        try:
            from twisted.logger import formatEvent
            record["message"] = formatEvent(event)
            line = json.dumps(record, default=str, ensure_ascii=True)
        except Exception:  # never let a log record take the daemon down
            line = eventAsJSON(event)
        stream.write(line + "\n")
        stream.flush()

    return observe


class JSONLogService(service.Service):
    """Adds a JSON-lines observer of sockssuite events while running."""

    name = "json-log"

    def __init__(self, path: str):
        self.path = path
        self._stream = None
        self._observer = None

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_stream"] = state["_observer"] = None
        return state

    def privilegedStartService(self):
        service.Service.privilegedStartService(self)
        self._open()

    def startService(self):
        service.Service.startService(self)
        if self._observer is None:
            self._open()

    def _open(self):
        import sys
        if self.path == "-":
            self._stream = sys.stdout
        else:
            self._stream = io.open(self.path, "a", encoding="utf-8")
        self._observer = jsonl_observer(self._stream)
        globalLogPublisher.addObserver(self._observer)

    def stopService(self):
        service.Service.stopService(self)
        if self._observer is not None:
            globalLogPublisher.removeObserver(self._observer)
            self._observer = None
        if self._stream is not None and self.path != "-":
            self._stream.close()
        self._stream = None
