"""Deployment modes beyond ``twistd -n sockssuite``: tap files and inetd.

Tap files
    ``sockssuite mktap [options] --output FILE.tap`` saves an Application whose
    only service is a :class:`TapService`.  Its pickled state is the option
    list and the sockssuite version — nothing that holds a reactor, an
    endpoint or a socket — and the real service tree is built from those
    options when twistd starts it (``twistd -n -o -f FILE.tap``).  A tap file
    from another version, or whose options this version no longer accepts,
    stops with a one-line reason instead of a traceback from inside pickle.

inetd
    ``sockssuite inetd [options]`` serves exactly one SOCKS session on the
    socket it was given as standard input (inetd's ``nowait`` mode, or
    systemd's ``Accept=yes``), with the same access, ident and logging, and
    exits when the session ends.  It never writes to standard output: that is
    the client's socket.  Logs go to standard error, unless standard error is
    the socket too (classic inetd), in which case they go to syslog.
"""

from __future__ import annotations

import os
import socket
import stat
import sys

from twisted.application import service
from twisted.logger import Logger
from twisted.python import usage

from . import __version__, tap
from .logs import jsonl_observer, syslog_observer, text_observer
from .server import SOCKS4ServerFactory
from .service import STATE_VERSION, StartError, _check_state_version

log = Logger(namespace="sockssuite.deploy")


class TapService(service.MultiService):
    """The root saved in a tap file: options in, service tree out (at start)."""

    def __init__(self, argv: list[str]):
        service.MultiService.__init__(self)
        self.argv = list(argv)
        self.made_by = __version__

    def __getstate__(self):
        state = service.MultiService.__getstate__(self)
        state["services"] = []  # built at start, never saved
        state["namedServices"] = {}
        state["_state_version"] = STATE_VERSION
        return state

    def __setstate__(self, state):
        _check_state_version(type(self), state)
        self.__dict__.update(state)

    def privilegedStartService(self):
        options = tap.Options()
        try:
            options.parseOptions(self.argv)
        except usage.UsageError as e:
            raise StartError(f"sockssuite: the options in this tap file (made by sockssuite "
                             f"{self.made_by}) are not valid for sockssuite {__version__}: {e}")
        tree = tap.makeService(options)
        tree.setServiceParent(self)
        service.MultiService.privilegedStartService(self)

    def stopService(self):
        d = service.MultiService.stopService(self)

        def forget(result):
            for child in list(self):
                child.disownServiceParent()
            return result

        return d.addBoth(forget) if d is not None else forget(None)


class MktapOptions(tap.Options):
    synopsis = "Usage: sockssuite mktap [twistd sockssuite options] --output FILE.tap"
    longdesc = ("Save the service tree described by the options as a tap file; run it with "
                "'twistd -n -o -f FILE.tap' (or daemonized with --pidfile and --logfile).")

    optParameters = tap.Options.optParameters + [
        ["output", None, "sockssuite.tap", "The tap file to write."],
    ]

    def opt_socks(self, description):
        # A systemd: endpoint names a socket that systemd passes to the twistd
        # that runs the tap, not to mktap: it is checked when that starts.
        if description.startswith("systemd:") and "LISTEN_FDS" not in os.environ:
            self["socks"].append(description)
            return
        tap.Options.opt_socks(self, description)

    opt_socks.__doc__ = tap.Options.opt_socks.__doc__


def mktap_main(argv: list[str]) -> int:
    options = MktapOptions()
    try:
        options.parseOptions(argv)
    except usage.UsageError as e:
        print(f"sockssuite mktap: {e}", file=sys.stderr)
        return 2
    from twisted.persisted import sob
    saved = _argv_without_output(argv)
    application = service.Application("sockssuite")
    TapService(saved).setServiceParent(application)
    persistable = sob.IPersistable(application)
    persistable.setStyle("pickle")
    output = options["output"]
    persistable.save(filename=output)
    print(f"wrote {output}: run it with 'twistd -n -o -f {output}'")
    return 0


def _argv_without_output(argv: list[str]) -> list[str]:
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--output":
            skip = True
            continue
        if arg.startswith("--output="):
            continue
        out.append(arg)
    return out


class InetdOptions(tap.Options):
    synopsis = "Usage: sockssuite inetd [options]   (the client's socket is standard input)"
    longdesc = ("Serve one SOCKS session on the socket given as standard input (inetd 'nowait', "
                "systemd Accept=yes) and exit when it ends. Takes the options of 'twistd "
                "sockssuite' except --socks.")
    optFlags = tap.Options.optFlags + [
        ["syslog", None, "Log to syslog (default: standard error, or syslog when standard error "
                         "is the client's socket)."],
    ]

    def opt_socks(self, description):
        raise usage.UsageError("--socks has no meaning in inetd mode: the socket is standard input")

    def postOptions(self):
        if self["log-json"] == "-":
            raise usage.UsageError("--log-json -: standard output is the client's socket in inetd "
                                   "mode; give a file")
        for name in ("udprelay", "dns"):
            if self.get(name) is not None:
                raise usage.UsageError(f"--{name} has no meaning in inetd mode, which serves one SOCKS "
                                       "session: run the datagram services under twistd")
        tap.Options.postOptions(self)


def _same_socket(fd_a: int, fd_b: int) -> bool:
    try:
        a, b = os.fstat(fd_a), os.fstat(fd_b)
    except OSError:
        return False
    return stat.S_ISSOCK(b.st_mode) and (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _complainer(stderr_is_socket: bool):
    """Where errors before the session go: standard error, or syslog when
    standard error is the client's socket (classic inetd), so that no error
    text is sent to the SOCKS client."""

    def complain(message: str):
        if not stderr_is_socket:
            print(message, file=sys.stderr)
            return
        import syslog
        syslog.openlog("sockssuite", syslog.LOG_PID, syslog.LOG_DAEMON)
        for line in message.splitlines():
            syslog.syslog(syslog.LOG_ERR, line)

    return complain


def inetd_main(argv: list[str], reactor=None) -> int:
    stderr_is_socket = _same_socket(0, 2)
    complain = _complainer(stderr_is_socket)
    options = InetdOptions()
    try:
        options.parseOptions(argv)
    except usage.UsageError as e:
        complain(f"sockssuite inetd: {e}")
        return 2
    try:
        with socket.socket(fileno=os.dup(0)) as stdin:
            family = stdin.family
            listening = stdin.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    except OSError as e:
        complain(f"sockssuite inetd: standard input is not a socket ({e.strerror})")
        return 2
    if listening:
        complain("sockssuite inetd: standard input is a listening socket; run one process per "
                 "connection (inetd 'nowait', systemd Accept=yes, systemd-socket-activate --accept)")
        return 2
    if family not in (socket.AF_INET, socket.AF_INET6):
        complain("sockssuite inetd: standard input is not a TCP socket")
        return 2
    from twisted.logger import globalLogBeginner
    if options["syslog"] or stderr_is_socket:
        observers = [syslog_observer("sockssuite")]
    else:
        observers = [text_observer(sys.stderr)]
    if options["log-json"] is not None:
        # Appended to by one process per session: each record is one write.
        observers.append(jsonl_observer(open(options["log-json"], "a", encoding="utf-8")))
    globalLogBeginner.beginLoggingTo(observers, redirectStandardIO=False)
    if reactor is None:
        from twisted.internet import reactor
    factory = SOCKS4ServerFactory(options["policy"], options.settings(), reactor=reactor,
                                  routes=options["routes"])
    ended = factory.session_ended

    def session_ended(session):
        ended(session)
        if not factory.sessions:
            reactor.callLater(0, reactor.stop)

    factory.session_ended = session_ended

    def adopt():
        reactor.adoptStreamConnection(0, family, factory)
        # Our copy is adopted: release the inherited descriptors so the
        # client sees the close as soon as the session ends.
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, 0)
        os.dup2(null, 1)
        if stderr_is_socket:
            os.dup2(null, 2)
        os.close(null)

    reactor.callWhenRunning(adopt)
    reactor.run()
    return 0
