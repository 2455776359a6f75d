"""Running the sockd.conf ``: shell_cmd`` actions without blocking or a shell.

The original sockd ran each command through ``/bin/sh`` and waited for it,
delaying the client.  Here a command is split once into an argument vector
(POSIX quoting, see :mod:`sockssuite.shellcmd`), every %-substitution is
sanitized, and the program is started with ``spawnProcess`` directly: no shell
ever sees client-controlled text.  Commands are bounded in number and in time,
so a flood of denied connections cannot fork-bomb the firewall.
"""

from __future__ import annotations

import os

from twisted.internet import protocol
from twisted.logger import Logger

from . import shellcmd

log = Logger(namespace="sockssuite.command")

#: At most this many commands run at once; more are dropped (and logged).
MAX_RUNNING = 8
#: A command still running after this many seconds is killed.
COMMAND_TIMEOUT = 60.0
#: Output kept from a command for the log.
MAX_OUTPUT = 4096


class _CommandProcess(protocol.ProcessProtocol):
    def __init__(self, runner, argv, reason):
        self.runner = runner
        self.argv = argv
        self.reason = reason
        self.output = bytearray()
        self.timer = None

    def connectionMade(self):
        self.transport.closeStdin()
        self.timer = self.runner.reactor.callLater(self.runner.timeout, self._kill)

    def _kill(self):
        self.timer = None
        log.warn("command {argv!r} ({reason}) ran over {timeout}s, killed",
                 argv=self.argv, reason=self.reason, timeout=self.runner.timeout)
        try:
            self.transport.signalProcess("KILL")
        except Exception:  # already gone
            pass

    def childDataReceived(self, fd, data):
        room = MAX_OUTPUT - len(self.output)
        if room > 0:
            self.output += data[:room]

    def processEnded(self, reason):
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.runner.running -= 1
        status = reason.value.exitCode
        log.info(
            "command {argv!r} ({reason}) exited with status {status}{output}",
            argv=self.argv,
            reason=self.reason,
            status=status,
            output=(": " + self.output.decode("utf-8", "replace").strip()) if self.output.strip() else "",
        )


class CommandRunner:
    """Runs rule commands when the operator allowed it, else logs them as skipped."""

    def __init__(self, reactor, enabled: bool, *, max_running: int = MAX_RUNNING,
                 timeout: float = COMMAND_TIMEOUT, environ=None):
        self.reactor = reactor
        self.enabled = enabled
        self.max_running = max_running
        self.timeout = timeout
        self.environ = dict(os.environ if environ is None else environ)
        self.running = 0

    def run(self, command, values: dict[str, str], reason: str) -> list[str] | None:
        """Start a rule's or special line's command (anything with ``command``
        text and its parsed ``argv``) with ``values`` substituted; returns the
        argv started, or ``None`` when it was skipped."""
        if not self.enabled:
            log.info("command skipped ({reason}; start with --allow-shell-commands to run it): {command}",
                     reason=reason, command=command.command)
            return None
        argv = shellcmd.expand(list(command.argv), values, environ=self.environ)
        if not argv or not argv[0]:
            log.error("command not run ({reason}): empty command", reason=reason)
            return None
        if self.running >= self.max_running:
            log.warn("command dropped ({reason}): {n} commands already running",
                     reason=reason, n=self.running)
            return None
        self.running += 1
        try:
            self.reactor.spawnProcess(_CommandProcess(self, argv, reason), argv[0], argv,
                                      env=self.environ, childFDs={0: "w", 1: "r", 2: "r"})
        except Exception as e:
            self.running -= 1
            log.error("command {argv!r} ({reason}) could not start: {error}",
                      argv=argv, reason=reason, error=str(e))
            return None
        return argv
