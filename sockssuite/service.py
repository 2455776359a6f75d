"""Long-running services of the sockssuite tree.

Every service here keeps only plain configuration (endpoint strings, parsed
rules, numbers) in its pickled state and builds the live parts — factories,
listening ports — when it starts, so a service tree can be saved as a tap
file and so a .tac file can build it without a reactor in hand.
"""

from __future__ import annotations

import io
import os
import signal
import threading

from twisted.application import service
from twisted.internet import defer, endpoints
from twisted.logger import Logger, globalLogPublisher

from . import __version__, access, sockdroute
from .logs import jsonl_observer
from .connecting import lean_port
from .server import ServerSettings, SOCKS4ServerFactory, guard_accept

log = Logger(namespace="sockssuite.service")


#: Bumped whenever the pickled state of a service changes shape, so that a
#: tap file made by another version fails with a clear message.
STATE_VERSION = 1


class TapVersionError(SystemExit):
    """A tap file was made by an incompatible sockssuite version.

    A SystemExit, because twistd prints a traceback for any Exception raised
    while it loads a tap file, but lets SystemExit through: the operator sees
    the one-line message and twistd exits with status 1."""


class StartError(SystemExit, Exception):
    """A service cannot start: a listener cannot be opened, the options of a
    tap file no longer work.

    Both kinds of exception on purpose.  twistd catches an Exception from
    starting the application and, when it runs as a daemon, hands it to the
    launcher waiting for it (which prints "An error has occurred" and exits
    with status 1; a bare SystemExit would leave the launcher waiting
    forever, and the pid file behind).  In the foreground, the re-raised
    SystemExit ends twistd with the one-line message and status 1, without a
    traceback."""


def _check_state_version(cls, state):
    version = state.get("_state_version")
    if version != STATE_VERSION:
        raise TapVersionError(
            f"sockssuite: this tap file holds a {cls.__name__} of state version {version}, but sockssuite "
            f"{__version__} reads version {STATE_VERSION}: make the tap file again with "
            "'sockssuite mktap'")


class _PlainState:
    """Pickle only configuration: attributes named in ``_live`` are dropped
    and rebuilt empty; Service's own ``running`` flag is never saved."""

    _live: tuple[str, ...] = ()

    def __getstate__(self):
        state = service.Service.__getstate__(self)
        for name in self._live:
            state.pop(name, None)
        state["_state_version"] = STATE_VERSION
        return state

    def __setstate__(self, state):
        _check_state_version(type(self), state)
        self.__dict__.update(state)
        self._reset_live()


class BoundService(_PlainState, service.Service):
    """A service that opens its sockets before twistd drops privileges.

    ``_bind()`` runs once: from ``privilegedStartService`` under twistd (still
    root, so ports below 1024 work), or from ``startService`` where nothing
    calls the former (tests, .tac files, a service added to a running tree).
    ``reactor`` is the one injected, else the global reactor, looked up late
    so that a pickled (tap) service never holds one."""

    def __getstate__(self):
        state = _PlainState.__getstate__(self)
        state.pop("_reactor", None)
        state.pop("_bound", None)
        return state

    @property
    def reactor(self):
        if self.__dict__.get("_reactor") is None:
            from twisted.internet import reactor
            self._reactor = reactor
        return self._reactor

    def privilegedStartService(self):
        service.Service.privilegedStartService(self)
        self._bind_once()

    def startService(self):
        service.Service.startService(self)
        self._bind_once()

    def _bind_once(self):
        if not self.__dict__.get("_bound"):
            self._bound = True
            self._bind()

    def _unbound(self):
        """Call from stopService: the next start binds again."""
        self._bound = False

    def _bind(self):
        raise NotImplementedError


class SOCKSServerService(BoundService):
    """Listens on one or more server endpoint strings with one SOCKS4 factory.

    ``access_path``/``route_path`` name the files the rules came from, so that
    :meth:`reload` can read them again; ``shutdown_grace`` is how long
    :meth:`stopService` lets sessions in flight finish."""

    name = "socks"
    _live = ("_reactor", "factory", "ports", "_listening", "pool", "inherited")

    def __init__(self, endpoints_: list[str], policy: access.AccessPolicy,
                 settings: ServerSettings = ServerSettings(), reactor=None, routes=None,
                 access_path: str | None = None, route_path: str | None = None,
                 shutdown_grace: float = 10.0, workers: int = 1):
        self.endpoints = list(endpoints_)
        self.policy = policy
        self.routes = routes
        self.access_path = access_path
        self.route_path = route_path
        self.settings = settings
        self.shutdown_grace = shutdown_grace
        self.workers = workers
        self._reset_live()
        self._reactor = reactor

    def _reset_live(self):
        self._reactor = None
        self.factory: SOCKS4ServerFactory | None = None
        self.ports: list = []
        self._listening: list[defer.Deferred] = []
        self.pool = None
        self.inherited: list[tuple[int, int]] = []  # (fd, family) a worker adopts

    def startService(self):
        BoundService.startService(self)
        if self.workers > 1 and self.pool is None:
            # Started after twistd dropped privileges: the workers run as the
            # unprivileged user, on the sockets bound before.
            from .workers import WorkerPool
            for port in self.ports:
                port.stopReading()  # the workers accept; this process supervises
            self.pool = WorkerPool(self.reactor, self, self.workers)
            self.pool.start()

    def _bind(self):
        self._listen()

    def _warn(self, policy):
        """The access file's warnings, and one about names without passwords."""
        for warning in policy.warnings:
            log.warn("{problem}", problem=str(warning))
        settings = self.settings
        if (settings.passwords is not None and not settings.require_auth and 4 in settings.socks_versions
                and any(rule.users is not None for rule in policy.rules)):
            log.warn("{filename}: user lists (*=) also match the USERID a SOCKS4 client sends, which no "
                     "password backs: with --passwords, add --require-auth (or --socks-versions 5) to make "
                     "the password the only way to a name", filename=policy.filename,
                     event="unauthenticated-names")

    def _listen(self):
        reactor = self.reactor
        self.factory = SOCKS4ServerFactory(self.policy, self.settings, reactor=reactor, routes=self.routes)
        self._warn(self.policy)
        log.info("access rules: {count} from {filename}", event="rules-loaded",
                 count=len(self.policy.rules), filename=self.policy.filename)
        if self.inherited:  # a worker: adopt the parent's listening sockets
            self.factory.id_prefix = f"w{os.environ.get('SOCKSSUITE_WORKER', '')}-"
            for fd, family in self.inherited:
                self.ports.append(guard_accept(lean_port(reactor.adoptStreamPort(fd, family, self.factory)), reactor))
            log.info("worker {pid} accepting on {n} inherited socket(s)", pid=os.getpid(),
                     n=len(self.inherited), event="worker-ready")
            return
        for description in self.endpoints:
            d = endpoints.serverFromString(reactor, description).listen(self.factory)
            failures = []
            d.addCallbacks(self._listening_on, failures.append, callbackArgs=(description,))
            if failures:
                # Listening failed at once (the usual case: port in use, no
                # permission): fail the start itself, so twistd exits non-zero.
                for port in self.ports:
                    port.stopListening()
                raise StartError(f"sockssuite: cannot listen on {description}: "
                                 f"{failures[0].getErrorMessage()}")
            d.addErrback(self._listen_failed, description)
            self._listening.append(d)

    def _listening_on(self, port, description):
        lean_port(port)
        guard_accept(port, self.reactor)  # issue 9: no busy loop when out of fds
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
        """Stop accepting, let sessions in flight finish for up to
        ``shutdown_grace`` seconds, then close the rest."""
        service.Service.stopService(self)
        self._unbound()
        if self.pool is not None:
            pool, self.pool = self.pool, None
            return pool.stop(self.shutdown_grace).addBoth(lambda _: self._stop_listening())
        return self._stop_listening()

    def _stop_listening(self):
        ports, self.ports = self.ports, []
        factory = self.factory
        stopped = [defer.maybeDeferred(p.stopListening) for p in ports]
        if factory is not None:
            stopped.append(defer.ensureDeferred(self._drain(factory)))
        return defer.DeferredList(stopped)

    async def _drain(self, factory):
        if factory.sessions:
            log.info("stopping: waiting up to {grace}s for {n} session(s) in flight",
                     grace=self.shutdown_grace, n=len(factory.sessions))
            finished = factory.drained()
            finished.addTimeout(self.shutdown_grace, self.reactor)
            try:
                await finished
            except defer.TimeoutError:
                log.info("stopping: closing {n} session(s) still open after {grace}s",
                         n=len(factory.sessions), grace=self.shutdown_grace)
        await factory.close_all()
        self.factory = None

    def set_policy(self, policy: access.AccessPolicy):
        """Swap the rules; sessions in flight keep the rules they were admitted with."""
        self.policy = policy
        if self.factory is not None:
            self.factory.policy = policy

    def set_routes(self, routes):
        self.routes = routes
        if self.factory is not None:
            self.factory.routes = routes

    def set_settings(self, settings: ServerSettings):
        """New settings for sessions that start from now on."""
        self.settings = settings
        if self.factory is not None:
            self.factory.settings = settings

    def reload(self) -> bool:
        """Read the access, route and password files again.  A file with
        errors keeps what is in force (and is logged with file:line:col);
        returns whether everything reloaded.  Workers are told to do the same
        (SIGHUP)."""
        ok = True
        if self.pool is not None:
            self.pool.signal_all("HUP")
        if self.access_path is not None:
            try:
                policy = access.load_access(self.access_path)
            except access.ConfigError as e:
                ok = False
                log.error("reload of {filename} failed; the previous {count} rule(s) stay in force:\n"
                          "{problems}", filename=self.access_path, count=len(self.policy.rules),
                          problems=str(e), event="reload-failed")
            else:
                self.set_policy(policy)
                self._warn(policy)
                log.info("reloaded {filename}: {count} rule(s)", filename=self.access_path,
                         count=len(policy.rules), event="reloaded")
        if self.route_path is not None:
            try:
                routes = sockdroute.load_routes(self.route_path)
            except access.ConfigError as e:
                ok = False
                log.error("reload of {filename} failed; the previous routes stay in force:\n{problems}",
                          filename=self.route_path, problems=str(e), event="reload-failed")
            else:
                self.set_routes(routes)
                log.info("reloaded {filename}: {count} route(s)", filename=self.route_path,
                         count=len(routes.routes), event="reloaded")
        old = self.settings.passwords
        if old is not None and getattr(old, "filename", None):
            from dataclasses import replace
            from . import passwords
            try:
                new = passwords.load_passwords(old.filename)
            except access.ConfigError as e:
                ok = False
                log.error("reload of {filename} failed; the previous {count} user(s) stay in force:\n"
                          "{problems}", filename=old.filename, count=len(old.users), problems=str(e),
                          event="reload-failed")
            else:
                self.set_settings(replace(self.settings, passwords=new))
                log.info("reloaded {filename}: {count} user(s)", filename=old.filename,
                         count=len(new.users), event="reloaded")
        return ok


class SockssuiteService(_PlainState, service.MultiService):
    """The root of the tree: its children are the named services; SIGHUP
    (while running under a reactor in the main thread) reloads every child
    that can reload."""

    _live = ("_previous_hup",)

    def __init__(self):
        service.MultiService.__init__(self)
        self._reset_live()

    def _reset_live(self):
        self._previous_hup = None

    def startService(self):
        service.MultiService.startService(self)
        if hasattr(signal, "SIGHUP") and threading.current_thread() is threading.main_thread():
            self._previous_hup = signal.signal(signal.SIGHUP, self._on_hup)
        # twistd binds in privilegedStartService, before the reactor runs and
        # installs its SIGTERM/SIGINT handlers; startService runs after them.
        # So "listening" means the port is bound, "ready" means signals are
        # handled too: scripts that send signals wait for this line.
        log.info("sockssuite ready (pid {pid}): {services}", event="ready", pid=os.getpid(),
                 services=", ".join(child.name or "?" for child in self))

    def stopService(self):
        if self._previous_hup is not None:
            signal.signal(signal.SIGHUP, self._previous_hup)
            self._previous_hup = None
        # One child after the other, last started first: the SOCKS service
        # drains its sessions (their close events included) before the log
        # services that were started ahead of it stop.
        service.Service.stopService(self)
        return defer.ensureDeferred(self._stop_children())

    async def _stop_children(self):
        for child in reversed(list(self)):
            try:
                await defer.maybeDeferred(child.stopService)
            except Exception:
                log.failure("stopping {name} failed", name=child.name)

    def _on_hup(self, signum, frame):
        from twisted.internet import reactor
        reactor.callFromThread(self.reload)

    def reload(self) -> bool:
        log.info("reloading configuration (SIGHUP)")
        ok = True
        for child in self:
            if hasattr(child, "reload"):
                try:
                    ok = child.reload() and ok
                except Exception:
                    # A bug in one service's reload must not stop the others'
                    # (each keeps what it had unless its new files are good).
                    log.failure("reloading {name} failed", name=child.name)
                    ok = False
        return ok


def _address_text(port):
    host = port.getHost()
    name = getattr(host, "host", None)
    if name is None:  # UNIX sockets and others
        return str(getattr(host, "name", host))
    return f"[{name}]:{host.port}" if ":" in name else f"{name}:{host.port}"


class JSONLogService(BoundService):
    """Adds a JSON-lines observer of sockssuite events while running.  The
    file is opened before twistd drops privileges, like a log file."""

    name = "json-log"
    _live = ("_stream", "_observer")

    def __init__(self, path: str):
        self.path = path
        self._reset_live()

    def _reset_live(self):
        self._stream = None
        self._observer = None

    def _bind(self):
        if self.path == "-":
            # twistd replaces sys.stdout with its log; write to the real fd 1.
            self._stream = io.open(os.dup(1), "w", encoding="utf-8")
        else:
            self._stream = io.open(self.path, "a", encoding="utf-8")
        self._observer = jsonl_observer(self._stream)
        globalLogPublisher.addObserver(self._observer)

    def stopService(self):
        self._unbound()
        service.Service.stopService(self)
        if self._observer is not None:
            globalLogPublisher.removeObserver(self._observer)
            self._observer = None
        if self._stream is not None:
            try:
                self._stream.close()
            except OSError:
                pass  # the last flush failed (disk full): nothing more to save (issue 9)
        self._stream = None
