"""``--workers N``: N reactor processes serving the same listening sockets.

The parent (the twistd process) binds the SOCKS listening sockets as usual,
stops accepting on them itself, and starts N workers (``python -m
sockssuite.workers``) that inherit the sockets and accept on them; the kernel
spreads connections among the processes waiting in ``accept``.  Each worker
gets the SOCKS service's plain configuration as a pickle on its standard
input, and sends its log events back as JSON lines on its standard output, so
the parent's log (text, ``--log-json``) carries every session.

The parent supervises: a worker that dies is restarted (after 1 s, up to 30 s
when it keeps dying); SIGHUP is passed on (each worker re-reads the files);
stopping sends SIGTERM and waits for the workers' own graceful stop.
"""

from __future__ import annotations

import os
import pickle
import socket
import sys

from twisted.internet import defer, protocol
from twisted.logger import Logger, eventAsJSON, eventFromJSON, globalLogPublisher

log = Logger(namespace="sockssuite.workers")


class _WorkerProcess(protocol.ProcessProtocol):
    def __init__(self, pool, index):
        self.pool = pool
        self.index = index
        self.buffer = b""
        self.ended = defer.Deferred()
        self.started = None
        self.ready = False  # accepting, with its SIGHUP handler in place

    def connectionMade(self):
        self.started = self.pool.reactor.seconds()
        self.transport.write(self.pool.config)
        self.transport.closeStdin()

    def outReceived(self, data):
        self.buffer += data
        *lines, self.buffer = self.buffer.split(b"\n")
        for line in lines:
            if not line.strip():
                continue
            try:
                event = eventFromJSON(line.decode("utf-8", "replace"))
            except Exception:
                log.info("worker {index}: {line}", index=self.index, line=line.decode("utf-8", "replace"))
                continue
            event["worker"] = self.index
            if event.get("event") == "worker-ready":
                self.ready = True
            globalLogPublisher(event)

    def errReceived(self, data):
        for line in data.decode("utf-8", "replace").splitlines():
            if line.strip():
                log.warn("worker {index} stderr: {line}", index=self.index, line=line)

    def processEnded(self, reason):
        self.ended.callback(None)
        self.pool.ended(self, reason)


class WorkerPool:
    """Starts and supervises the worker processes for one SOCKS service."""

    def __init__(self, reactor, service, count: int):
        self.reactor = reactor
        self.count = count
        self.config = pickle.dumps(service)
        self.fds = [(port.fileno(), _family(port)) for port in service.ports]
        self.processes: dict[int, _WorkerProcess] = {}
        self.stopping = False
        self.delays: dict[int, float] = {}
        self.restarts = 0

    def start(self):
        for index in range(self.count):
            self._spawn(index)

    def _spawn(self, index):
        if self.stopping:
            return
        proto = _WorkerProcess(self, index)
        child_fds = {0: "w", 1: "r", 2: "r"}
        args = [sys.executable, "-m", "sockssuite.workers"]
        for n, (fd, family) in enumerate(self.fds):
            child_fds[3 + n] = fd
            args.append(f"{3 + n}:{family}")
        self.processes[index] = proto
        env = dict(os.environ, SOCKSSUITE_WORKER=str(index))
        self.reactor.spawnProcess(proto, sys.executable, args, env=env, childFDs=child_fds)
        log.info("worker {index} started (pid {pid})", index=index, pid=proto.transport.pid)

    def ended(self, proto, reason):
        index = proto.index
        if self.processes.get(index) is proto:
            del self.processes[index]
        if self.stopping:
            return
        lived = self.reactor.seconds() - (proto.started or 0)
        delay = 1.0 if lived > 30 else min(30.0, self.delays.get(index, 0.5) * 2)
        self.delays[index] = delay
        self.restarts += 1
        log.warn("worker {index} ended ({reason}); restarting in {delay:g}s", index=index,
                 reason=reason.getErrorMessage(), delay=delay)
        self.reactor.callLater(delay, self._spawn, index)

    def signal_all(self, name):
        for proto in list(self.processes.values()):
            if name == "HUP" and not proto.ready:
                continue  # still starting: it reads the files as it starts anyway
            try:
                proto.transport.signalProcess(name)
            except Exception:
                pass

    def stop(self, grace: float) -> defer.Deferred:
        """SIGTERM to every worker; fires when all have ended (SIGKILL after
        ``grace`` + 5 seconds)."""
        self.stopping = True
        waiting = [p.ended for p in self.processes.values()]
        self.signal_all("TERM")
        if not waiting:
            return defer.succeed(None)
        done = defer.DeferredList(waiting)
        killer = self.reactor.callLater(grace + 5, self.signal_all, "KILL")
        return done.addBoth(lambda r: killer.active() and killer.cancel())


def _family(port) -> str:
    sock = port.socket
    return {socket.AF_INET: "inet", socket.AF_INET6: "inet6", socket.AF_UNIX: "unix"}[sock.family]


def _die_with_parent():
    """Linux: have the kernel send SIGTERM when the parent dies."""
    try:
        import ctypes
        import signal
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def worker_main(argv: list[str]) -> int:
    """The worker process: configuration on stdin, listening sockets as fds."""
    from twisted.internet import reactor

    from .service import SockssuiteService

    parent = os.getppid()
    _die_with_parent()
    service = pickle.load(sys.stdin.buffer)
    stdout = os.fdopen(os.dup(1), "w", encoding="utf-8")

    def to_parent(event):
        try:
            stdout.write(eventAsJSON(event) + "\n")
            stdout.flush()
        except Exception:
            pass

    from twisted.logger import globalLogBeginner
    globalLogBeginner.beginLoggingTo([to_parent], redirectStandardIO=False)
    families = {"inet": socket.AF_INET, "inet6": socket.AF_INET6, "unix": socket.AF_UNIX}
    service.inherited = [(int(fd), families[family]) for fd, family in (a.split(":") for a in argv)]
    # The pickle holds the rules as they were when the pool started; the files
    # may have changed (and been reloaded by the parent) since.
    service.reload()
    service.workers = 1
    root = SockssuiteService()
    service.setServiceParent(root)
    reactor.callWhenRunning(root.startService)

    def orphaned():
        # A parent killed outright (SIGKILL) cannot stop its workers: without
        # this they would keep serving the socket with nobody supervising.
        if os.getppid() != parent:
            reactor.stop()
        else:
            reactor.callLater(1.0, orphaned)

    reactor.callLater(1.0, orphaned)
    reactor.addSystemEventTrigger("before", "shutdown", root.stopService)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:]))
