"""Deployment as operators run it (issue 7), against the *installed* package:

* tap files: ``sockssuite mktap`` then ``twistd -f`` in the foreground and
  daemonized; corrupt taps, taps of another state version, taps whose options
  no longer work;
* the shipped ``docs/sockssuite.tac`` under ``twistd -y``;
* inetd mode: ``systemd-socket-activate --accept --inetd`` and a real
  openbsd-inetd, each running ``sockssuite inetd`` once per connection;
* systemd socket activation of ``twistd sockssuite --socks systemd:...``;
* a privileged port, then ``--uid nobody`` (as root only);
* SIGHUP reload of a daemon found by its pid file, with a session in flight.

Every child runs in a temporary folder (so the source tree is not on its
``sys.path``), listens on 127.0.0.1 only, and is waited for with a bound and
killed at cleanup.  Reinstall the package after changing the code.
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import grp
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap

from twisted.internet import defer, error, protocol, reactor
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from . import support
from .test_plugin import assert_clean_signal_exit, free_port, twistd_command
from .test_real_clients import CURL_SOCKS_ERROR, WebServer, async_test, run_curl, temp_dir, until

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED_TAC = os.path.join(ROOT, "docs", "sockssuite.tac")
SHIPPED_UNITS = os.path.join(ROOT, "docs", "systemd")
LOOPBACK = "permit 127.0.0.0 255.0.0.0\n"
REINSTALL = "make the tap file again with 'sockssuite mktap'"


def sockssuite_command() -> list[str]:
    """This interpreter's ``sockssuite`` script, else ``python -m sockssuite.cli``."""
    sibling = os.path.join(os.path.dirname(sys.executable), "sockssuite")
    if os.access(sibling, os.X_OK):
        return [sibling]
    return [sys.executable, "-m", "sockssuite.cli"]


def child_env() -> dict:
    """The test's environment without socket-activation variables of its own."""
    env = dict(os.environ)
    for name in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "PYTHONPATH"):
        env.pop(name, None)
    return env


def require_program(name: str, package: str) -> str:
    path = shutil.which(name) or (f"/usr/sbin/{name}" if os.access(f"/usr/sbin/{name}", os.X_OK) else None)
    if path is None:
        raise SkipTest(f"{name} is not installed (apt-get install {package})")
    return path


def listening(port: int) -> bool:
    """Whether something listens on 127.0.0.1:port (from /proc/net/tcp, so
    that checking does not make a connection a superserver would serve)."""
    wanted = "0100007F:%04X" % port
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if fields[1] == wanted and fields[3] == "0A":
                return True
    return False


def alive(pid: int) -> bool:
    """Running (a zombie nobody has reaped yet counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def kill_if_ours(pid: int, marker: str):
    """SIGKILL ``pid`` if it still runs and its command line names ``marker``."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read().decode("utf-8", "replace")
    except OSError:
        return
    if marker in cmdline and alive(pid):
        os.kill(pid, signal.SIGKILL)


def write(path: str, text: str, mode: int | None = None):
    with open(path, "w") as f:
        f.write(text)
    if mode is not None:
        os.chmod(path, mode)


def last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def json_lines(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


# -- child processes ------------------------------------------------------------

class Child(protocol.ProcessProtocol):
    """Any command as a child of the reactor, its standard output and error
    kept apart (and together in ``output``); killed at cleanup."""

    def __init__(self, testcase, command: list[str], cwd: str):
        self.command = command
        self.cwd = cwd
        self.out = bytearray()
        self.err = bytearray()
        self.output = bytearray()
        self.ended = defer.Deferred()
        self.reason = None
        reactor.spawnProcess(self, command[0], command, env=child_env(), path=cwd)
        testcase.addCleanup(self._kill)

    def outReceived(self, data):
        self.out += data
        self.output += data

    def errReceived(self, data):
        self.err += data
        self.output += data

    def processEnded(self, reason):
        self.reason = reason.value
        self.ended.callback(reason.value)

    @property
    def pid(self) -> int:
        return self.transport.pid

    @property
    def text(self) -> str:
        return self.output.decode("utf-8", "replace")

    @property
    def exit_code(self):
        return getattr(self.reason, "exitCode", None)

    async def wait_for(self, needle: bytes, timeout=30.0, stream="output"):
        buffer = getattr(self, stream)
        await until(lambda: needle in buffer or self.ended.called, f"{needle!r} from {self.command[0]}", timeout)
        if needle not in buffer:
            raise AssertionError(f"{self.command[0]} ended ({self.reason}) before printing {needle!r}:\n{self.text}")

    async def wait_exit(self, timeout=30.0):
        d = defer.Deferred()
        self.ended.addBoth(lambda r: (d.callback(r) if not d.called else None, r)[1])
        d.addTimeout(timeout, reactor)
        try:
            return await d
        except defer.TimeoutError:
            raise AssertionError(f"{self.command} did not exit within {timeout}s:\n{self.text}")

    async def stop(self, signame="TERM", timeout=30.0):
        if not self.ended.called:
            try:
                self.transport.signalProcess(signame)
            except error.ProcessExitedAlready:
                pass
        return await self.wait_exit(timeout)

    async def _kill(self):
        if not self.ended.called:
            try:
                self.transport.signalProcess("KILL")
            except error.ProcessExitedAlready:
                pass
            d = defer.Deferred()
            self.ended.addBoth(lambda r: d.callback(None) if not d.called else None)
            d.addTimeout(10, reactor)
            await d


async def run(testcase, command: list[str], cwd: str, timeout=60.0) -> Child:
    """Run a command to its end (bounded); the finished Child."""
    child = Child(testcase, command, cwd)
    await child.wait_exit(timeout)
    return child


async def mktap(testcase, folder: str, *options: str, name="sockssuite.tap") -> str:
    path = os.path.join(folder, name)
    done = await run(testcase, sockssuite_command() + ["mktap", *options, "--output", path], folder)
    testcase.assertEqual(done.exit_code, 0, done.text)
    testcase.assertEqual(done.text.strip(), f"wrote {path}: run it with 'twistd -n -o -f {path}'")
    return path


async def fetch(testcase, port: int, web: WebServer, scheme="socks4a", host="localhost", user="alice"):
    """curl through the proxy; asserts a byte-exact download."""
    out, err, code = await run_curl("--fail", "-x", f"{scheme}://{user}@127.0.0.1:{port}", web.url(host=host))
    testcase.assertEqual(code, 0, err)
    testcase.assertEqual(hashlib.sha256(out).hexdigest(), web.sha256)


async def refused(testcase, port: int, web: WebServer):
    """curl through the proxy; asserts the proxy refused the request."""
    out, err, code = await run_curl("--fail", "-x", f"socks4a://alice@127.0.0.1:{port}", web.url(host="localhost"))
    testcase.assertEqual(code, CURL_SOCKS_ERROR, err)


def unit_settings(name: str) -> dict[str, str]:
    """``Key=value`` settings of a shipped systemd unit (the last of each key)."""
    settings = {}
    with open(os.path.join(SHIPPED_UNITS, name)) as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith(("#", ";", "[")):
                key, _, value = line.partition("=")
                settings[key.strip()] = value.strip()
    return settings


def unit_command(name: str, access: str) -> list[str]:
    """A shipped unit's ExecStart with this interpreter's scripts and the
    test's access file in place of /usr/local/bin and /etc/sockd.conf."""
    import shlex
    command = shlex.split(unit_settings(name)["ExecStart"])
    program = os.path.basename(command[0])
    head = {"twistd": twistd_command(), "sockssuite": sockssuite_command()}[program]
    return head + [access if arg == "/etc/sockd.conf" else arg for arg in command[1:]]


def deny_port(port: int) -> str:
    return f"deny 0.0.0.0 0.0.0.0 127.0.0.1 255.255.255.255 eq {port}\n" + LOOPBACK


# -- tap files ---------------------------------------------------------------------

class TapFileTests(TestCase):
    @async_test
    async def test_mktap_then_twistd_f_serves_curl_and_stops_cleanly(self):
        web = await WebServer(self).start()
        folder = temp_dir(self)
        access = os.path.join(folder, "sockd.conf")
        write(access, LOOPBACK)
        port = free_port()
        tapfile = await mktap(self, folder, "--socks", f"tcp:{port}:interface=127.0.0.1", "--access", access)
        with open(tapfile, "rb") as f:
            saved = f.read()
        self.assertIn(b"sockssuite.deploy", saved)
        self.assertIn(b"tcp:%d:interface=127.0.0.1" % port, saved)
        self.assertNotIn(b"epoll", saved)

        twistd = Child(self, twistd_command() + ["-n", "-o", "--pidfile=", "-f", tapfile], folder)
        await twistd.wait_for(b"SOCKS server listening on 127.0.0.1:%d" % port)
        await twistd.wait_for(b"sockssuite ready")
        await fetch(self, port, web)
        await until(lambda: b"outcome=closed" in twistd.output, "the session line", 10)
        reason = await twistd.stop("TERM")
        assert_clean_signal_exit(self, reason, twistd.text, signal.SIGTERM)
        self.assertIn(f"Loading {tapfile}...", twistd.text)
        self.assertIn(f"access rules: 1 from {access}", twistd.text)
        self.assertRegex(twistd.text, r"user=alice to localhost\(127\.0\.0\.1\):%d .*outcome=closed" % web.port)
        # -o: no sockssuite-shutdown.tap; --pidfile=: no pid file.
        self.assertEqual(sorted(os.listdir(folder)), ["sockd.conf", "sockssuite.tap"])

    @async_test
    async def test_daemonized_tap_reloads_on_sighup_and_stops_by_its_pid_file(self):
        """The daemon found by its pid file, as an operator or an init script does:
        SIGHUP with a changed, then a broken, then a fixed access file, a
        session admitted before the change still relaying, SIGTERM."""
        web = await WebServer(self).start()
        echo = await support.listen(self, support.Echo)
        folder = temp_dir(self)
        access = os.path.join(folder, "sockd.conf")
        pidfile = os.path.join(folder, "sockssuite.pid")
        logfile = os.path.join(folder, "twistd.log")
        write(access, LOOPBACK)
        port = free_port()
        tapfile = await mktap(self, folder, "--socks", f"tcp:{port}:interface=127.0.0.1", "--access", access,
                              "--shutdown-grace", "5")

        def log():
            try:
                with open(logfile, encoding="utf-8") as f:
                    return f.read()
            except FileNotFoundError:
                return ""

        async def log_shows(text, timeout=30):
            await until(lambda: text in log(), f"{text!r} in the log", timeout)

        launcher = await run(self, twistd_command() + ["-o", "--pidfile", pidfile, "--logfile", logfile,
                                                       "-f", tapfile], folder)
        self.assertEqual(launcher.exit_code, 0, launcher.text)
        self.assertEqual(launcher.text, "", "a daemon's launcher prints nothing when all is well")
        await log_shows(f"SOCKS server listening on 127.0.0.1:{port}")
        await log_shows("sockssuite ready")  # signal handlers in place
        with open(pidfile) as f:
            pid = int(f.read())
        self.addCleanup(kill_if_ours, pid, tapfile)
        self.assertTrue(alive(pid))
        await fetch(self, port, web)

        client, reply = await support.socks_connect(port, "127.0.0.1", echo.getHost().port, userid=b"early")
        self.assertEqual(reply.code, 90)

        write(access, deny_port(web.port))
        os.kill(pid, signal.SIGHUP)
        await log_shows(f"reloaded {access}: 2 rule(s)")
        await refused(self, port, web)
        await log_shows("denied by line 1")
        client.transport.write(b"admitted before the reload")
        self.assertEqual(await client.wait_bytes(26), b"admitted before the reload")

        write(access, "permit 1.2.3 255.0.0.0\n")
        os.kill(pid, signal.SIGHUP)
        await log_shows(f"reload of {access} failed; the previous 2 rule(s) stay in force")
        self.assertRegex(log(), rf"(?m)^\s*{re.escape(access)}:1:8: invalid source address")
        await refused(self, port, web)

        write(access, LOOPBACK)
        os.kill(pid, signal.SIGHUP)
        await until(lambda: log().count(f"reloaded {access}: 1 rule(s)") == 1, "the second reload", 30)
        await fetch(self, port, web)

        client.transport.loseConnection()
        await client.closed
        os.kill(pid, signal.SIGTERM)
        await until(lambda: not alive(pid), "the daemon to exit", 30)
        text = log()
        self.assertIn("Received SIGTERM, shutting down.", text)
        self.assertIn("Server Shut Down.", text)
        self.assertRegex(text, r"user=early .* up=26 down=26 .*outcome=closed")
        self.assertNotIn("Traceback", text)
        self.assertFalse(os.path.exists(pidfile), "the pid file outlived the daemon")
        self.assertEqual(sorted(os.listdir(folder)), ["sockd.conf", "sockssuite.tap", "twistd.log"])

    @async_test
    async def test_corrupt_tap_files_exit_nonzero_with_the_reason_last(self):
        # twistd's own loader reports these: it prints the traceback of the
        # unpickling error and then, as its last line, the reason.
        folder = temp_dir(self)
        port = free_port()
        good = await mktap(self, folder, "--socks", f"tcp:{port}:interface=127.0.0.1")
        with open(good, "rb") as f:
            saved = f.read()
        corrupt = {
            "random.tap": random.Random(7).randbytes(300),
            "truncated.tap": saved[: len(saved) // 2],
            "empty.tap": b"",
        }
        for name, data in corrupt.items():
            with open(os.path.join(folder, name), "wb") as f:
                f.write(data)
        runs = [run(self, twistd_command() + ["-n", "-o", "--pidfile=", "-f", name], folder)
                for name in corrupt]
        for name, done in zip(corrupt, await defer.gatherResults([defer.ensureDeferred(r) for r in runs])):
            self.assertNotEqual(done.exit_code, 0, f"{name}:\n{done.text}")
            self.assertRegex(last_line(done.text), r"^Failed to load application: \S", f"{name}:\n{done.text}")
            self.assertNotIn("SOCKS server listening", done.text)
            self.assertFalse(listening(port))
        self.assertIn("Failed to load application: Ran out of input", done.text)

    @async_test
    async def test_tap_of_another_state_version_says_to_make_it_again(self):
        folder = temp_dir(self)
        port = free_port()
        # Made by a sockssuite whose saved state has another version ...
        newer = os.path.join(folder, "newer.tap")
        made = await run(self, [sys.executable, "-c", textwrap.dedent(f"""
            import sys
            import sockssuite.deploy, sockssuite.service
            sockssuite.deploy.STATE_VERSION = sockssuite.service.STATE_VERSION = 999
            sys.exit(sockssuite.deploy.mktap_main(["--socks", "tcp:{port}:interface=127.0.0.1",
                                                  "--output", {newer!r}]))
            """)], folder)
        self.assertEqual(made.exit_code, 0, made.text)
        # ... and by one from before versioned state (no version saved at all).
        current = await mktap(self, folder, "--socks", f"tcp:{port}:interface=127.0.0.1")
        older = os.path.join(folder, "older.tap")
        with open(current, "rb") as f, open(older, "wb") as g:
            data = f.read()
            self.assertEqual(data.count(b"_state_version"), 1)
            g.write(data.replace(b"_state_version", b"_state_versioX"))

        for tapfile, version in ((newer, "999"), (older, "None")):
            done = await run(self, twistd_command() + ["-n", "-o", "--pidfile=", "-f", tapfile], folder)
            self.assertEqual(done.exit_code, 1, done.text)
            self.assertEqual(len(done.text.strip().splitlines()), 1, f"not one line:\n{done.text}")
            self.assertIn(f"state version {version}", done.text)
            self.assertIn(REINSTALL, done.text)
            self.assertNotIn("Traceback", done.text)

    @async_test
    async def test_tap_whose_options_no_longer_work_exits_with_a_one_line_reason(self):
        folder = temp_dir(self)
        port = free_port()
        # An option this version does not know, saved the way mktap saves options.
        unknown = os.path.join(folder, "unknown.tap")
        made = await run(self, [sys.executable, "-c", textwrap.dedent(f"""
            from twisted.application import service
            from twisted.persisted import sob
            from sockssuite.deploy import TapService
            application = service.Application("sockssuite")
            TapService(["--socks", "tcp:{port}:interface=127.0.0.1", "--frobnicate", "3"]).setServiceParent(application)
            saved = sob.IPersistable(application)
            saved.setStyle("pickle")
            saved.save(filename={unknown!r})
            """)], folder)
        self.assertEqual(made.exit_code, 0, made.text)
        # An access file that was there for mktap and is gone since.
        access = os.path.join(folder, "sockd.conf")
        write(access, LOOPBACK)
        gone = await mktap(self, folder, "--socks", f"tcp:{port}:interface=127.0.0.1", "--access", access,
                           name="gone.tap")
        os.remove(access)

        for tapfile, reason in ((unknown, "option --frobnicate not recognized"),
                                (gone, f"{access}:0:0: cannot read access file")):
            done = await run(self, twistd_command() + ["-n", "-o", "--pidfile=", "-f", tapfile], folder)
            self.assertNotEqual(done.exit_code, 0, done.text)
            self.assertIn("sockssuite: the options in this tap file", done.text)
            self.assertIn(reason, last_line(done.text))
            self.assertNotIn("Traceback", done.text)
            self.assertNotIn("SOCKS server listening", done.text)


    @async_test
    async def test_daemon_that_cannot_start_tells_its_launcher(self):
        """A daemonized twistd whose service cannot start (a port in use; a
        tap whose access file is gone) makes its launcher exit 1 at once,
        removes its pid file, and logs the whole reason.  (The launcher waits
        for the daemon's word: it hung forever on a bare SystemExit.)"""
        busy = await support.listen(self, support.Echo)
        busy_port = busy.getHost().port
        busy_udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(busy_udp.close)
        busy_udp.bind(("127.0.0.1", 0))
        busy_udp_port = busy_udp.getsockname()[1]
        folder = temp_dir(self)
        access = os.path.join(folder, "sockd.conf")
        write(access, LOOPBACK)
        udprelay = os.path.join(folder, "udprelay.conf")
        write(udprelay, f"encapsulate 127.0.0.0/8 {busy_udp_port}\n")
        tapfile = await mktap(self, folder, "--socks", f"tcp:{free_port()}:interface=127.0.0.1", "--access", access)
        os.remove(access)
        cases = {
            "plugin": (["sockssuite", "--socks", f"tcp:{busy_port}:interface=127.0.0.1"],
                       f"sockssuite: cannot listen on tcp:{busy_port}:interface=127.0.0.1: Couldn't listen "
                       f"on 127.0.0.1:{busy_port}: [Errno 98] Address already in use."),
            "tap": (["-f", tapfile], f"{access}:0:0: cannot read access file"),
            "dns": (["sockssuite", "--socks", f"tcp:{free_port()}:interface=127.0.0.1", "--dns", f"tcp:{busy_port}:interface=127.0.0.1",
                     "--dns-upstream", "127.0.0.1:9"], f"--dns tcp:{busy_port}:interface=127.0.0.1: "),
            "udprelay": (["sockssuite", "--socks", f"tcp:{free_port()}:interface=127.0.0.1", "--udprelay", udprelay],
                         f"cannot listen on 127.0.0.1:{busy_udp_port}"),
        }
        launches = {}
        for name, (args, _) in cases.items():
            launches[name] = defer.ensureDeferred(run(self, twistd_command() + [
                "--pidfile", os.path.join(folder, f"{name}.pid"), "--logfile", os.path.join(folder, f"{name}.log"),
                *args], folder, timeout=20))
        for name, (_, reason) in cases.items():
            launcher = await launches[name]
            self.assertEqual(launcher.exit_code, 1, launcher.text)
            self.assertIn("An error has occurred: ", launcher.text)
            # The daemon reports to its launcher first, then cleans up and logs the reason.
            await until(lambda: not os.path.exists(os.path.join(folder, f"{name}.pid")),
                        f"{name}: the pid file to be removed", 10)

            def log():
                with open(os.path.join(folder, f"{name}.log"), encoding="utf-8") as f:
                    return f.read()

            await until(lambda: reason in log(), f"{name}: {reason!r} in the log", 10)


class MktapCommandLineTests(SynchronousTestCase):
    def test_help_lists_output_and_the_server_options(self):
        folder = temp_dir(self)
        done = subprocess.run(sockssuite_command() + ["mktap", "--help"], cwd=folder, capture_output=True,
                              text=True, timeout=60, stdin=subprocess.DEVNULL, env=child_env())
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertTrue(done.stdout.startswith("Usage: sockssuite mktap [twistd sockssuite options] "
                                               "--output FILE.tap\n"), done.stdout)
        for option in ("--output", "--socks", "--access", "--shutdown-grace"):
            self.assertRegex(done.stdout, rf"(?m)^\s+(-\w, )?{option}\b")

    def test_invalid_options_write_no_tap(self):
        folder = temp_dir(self)
        output = os.path.join(folder, "x.tap")
        done = subprocess.run(sockssuite_command() + ["mktap", "--max-connections", "0", "--output", output],
                              cwd=folder, capture_output=True, text=True, timeout=60,
                              stdin=subprocess.DEVNULL, env=child_env())
        self.assertEqual(done.returncode, 2, done.stdout + done.stderr)
        self.assertEqual(done.stderr.count("\n"), 1, done.stderr)
        self.assertIn("sockssuite mktap:", done.stderr)
        self.assertFalse(os.path.exists(output))


# -- the shipped .tac ---------------------------------------------------------------

class TacFileTests(TestCase):
    @async_test
    async def test_shipped_tac_serves_curl(self):
        """docs/sockssuite.tac as shipped, but for its OPTIONS list (a free
        port and an access file of the test's)."""
        web = await WebServer(self).start()
        folder = temp_dir(self)
        access = os.path.join(folder, "sockd.conf")
        write(access, LOOPBACK)
        port = free_port()
        with open(SHIPPED_TAC) as f:
            shipped = f.read()
        options = f"OPTIONS = {['--socks', f'tcp:{port}:interface=127.0.0.1', '--access', access]!r}\n"
        tac, count = re.subn(r"(?ms)^OPTIONS = \[.*?^\]\n", lambda m: options, shipped)
        self.assertEqual(count, 1, "docs/sockssuite.tac has no 'OPTIONS = [...]' block")
        tacfile = os.path.join(folder, "sockssuite.tac")
        write(tacfile, tac)

        twistd = Child(self, twistd_command() + ["-n", "--pidfile=", "-y", tacfile], folder)
        await twistd.wait_for(b"SOCKS server listening on 127.0.0.1:%d" % port)
        await twistd.wait_for(b"sockssuite ready")
        await fetch(self, port, web)
        await until(lambda: b"outcome=closed" in twistd.output, "the session line", 10)
        reason = await twistd.stop("TERM")
        assert_clean_signal_exit(self, reason, twistd.text, signal.SIGTERM)
        self.assertIn(f"access rules: 1 from {access}", twistd.text)
        # -y implies -o: no sockssuite-shutdown.tap.
        self.assertEqual(sorted(os.listdir(folder)), ["sockd.conf", "sockssuite.tac"])


# -- inetd mode ------------------------------------------------------------------

class InetdTests(TestCase):
    @async_test
    async def test_systemd_socket_activate_accept_runs_one_process_per_connection(self):
        activate = require_program("systemd-socket-activate", "systemd")
        web = await WebServer(self).start()
        folder = temp_dir(self)
        access = os.path.join(folder, "sockd.conf")
        jsonlog = os.path.join(folder, "sessions.jsonl")
        write(access, LOOPBACK)
        port = free_port()
        sa = Child(self, [activate, "--accept", "--inetd", "-l", f"127.0.0.1:{port}",
                          sys.executable, "-m", "sockssuite.cli", "inetd", "--access", access,
                          "--log-json", jsonlog], folder)
        await until(lambda: listening(port) or sa.ended.called, "systemd-socket-activate to listen", 30)
        await fetch(self, port, web, scheme="socks4", host="127.0.0.1", user="alice")
        await fetch(self, port, web, scheme="socks4a", host="localhost", user="bob")
        await until(lambda: sa.err.count(b"outcome=closed") >= 2 or sa.ended.called, "two session lines", 10)
        self.assertEqual(len(re.findall(rb"Spawned .* as PID (\d+)", sa.err)), 2, sa.text)
        # The session lines are on standard error; standard output is the client's socket.
        self.assertRegex(sa.err.decode(), r"\[sockssuite\.session\] session 1 connect from 127\.0\.0\.1:\d+ "
                                          r"user=alice to 127\.0\.0\.1:%d .*outcome=closed" % web.port)
        self.assertRegex(sa.err.decode(), r"user=bob to localhost\(127\.0\.0\.1\):%d .*outcome=closed" % web.port)
        self.assertEqual(bytes(sa.out), b"")
        self.assertNotIn(b"Traceback", sa.err)
        # The text line (stderr) and the JSON line (a file) are two observers
        # in another process: the file's may come a moment later.
        await until(lambda: len([r for r in json_lines(jsonlog) if r.get("event") == "session-closed"]) >= 2,
                    "two session records", 10)
        records = [r for r in json_lines(jsonlog) if r.get("event") == "session-closed"]
        self.assertEqual([(r["user"], r["outcome"]) for r in records], [("alice", "closed"), ("bob", "closed")])
        await sa.stop("TERM")

    @async_test
    async def test_shipped_accept_yes_units(self):
        """docs/systemd/sockssuite-inetd.socket + sockssuite-inetd@.service, as
        ``systemd-socket-activate --accept --inetd`` plays them (User= aside)."""
        activate = require_program("systemd-socket-activate", "systemd")
        socket_unit = unit_settings("sockssuite-inetd.socket")
        self.assertEqual((socket_unit["ListenStream"], socket_unit["Accept"]), ("127.0.0.1:1080", "yes"))
        service_unit = unit_settings("sockssuite-inetd@.service")
        self.assertEqual((service_unit["StandardInput"], service_unit["StandardOutput"],
                          service_unit["StandardError"]), ("socket", "socket", "journal"))
        web = await WebServer(self).start()
        folder = temp_dir(self)
        access = os.path.join(folder, "sockd.conf")
        write(access, LOOPBACK)
        port = free_port()
        sa = Child(self, [activate, "--accept", "--inetd", "-l", f"127.0.0.1:{port}",
                          *unit_command("sockssuite-inetd@.service", access)], folder)
        await until(lambda: listening(port) or sa.ended.called, "systemd-socket-activate to listen", 30)
        await fetch(self, port, web)
        await until(lambda: b"outcome=closed" in sa.err or sa.ended.called, "the session line", 10)
        self.assertEqual(bytes(sa.out), b"")
        await sa.stop("TERM")

    @async_test
    async def test_openbsd_inetd_serves_each_connection_with_a_new_process(self):
        inetd = require_program("inetd", "openbsd-inetd")
        if os.geteuid() != 0:
            raise SkipTest("openbsd-inetd runs each service as the user of its line, which needs root")
        web = await WebServer(self).start()
        folder = temp_dir(self)
        access = os.path.join(folder, "sockd.conf")
        jsonlog = os.path.join(folder, "sessions.jsonl")
        write(access, LOOPBACK)
        user = pwd.getpwuid(os.getuid()).pw_name
        port, broken = free_port(), free_port()
        server = f"{sys.executable} python3 -m sockssuite.cli inetd"
        conf = os.path.join(folder, "inetd.conf")
        write(conf, f"127.0.0.1:{port} stream tcp nowait {user} {server} --access {access} --log-json {jsonlog}\n"
                    f"127.0.0.1:{broken} stream tcp nowait {user} {server} --frobnicate\n")
        superserver = Child(self, [inetd, "-d", conf], folder)
        await until(lambda: (listening(port) and listening(broken)) or superserver.ended.called,
                    "inetd to listen", 30)
        await fetch(self, port, web, scheme="socks4", host="127.0.0.1", user="alice")
        await fetch(self, port, web, scheme="socks4a", host="localhost", user="bob")
        await until(lambda: len([r for r in json_lines(jsonlog) if r.get("event") == "session-closed"]) >= 2,
                    "two session records", 10)
        records = [r for r in json_lines(jsonlog) if r.get("event") == "session-closed"]
        self.assertEqual([(r["user"], r["requested"], r["outcome"]) for r in records],
                         [("alice", "127.0.0.1", "closed"), ("bob", "localhost", "closed")])

        # Standard error is the client's socket too: a mistake in the inetd.conf
        # line goes to syslog, never into the client's connection as text.
        client = await support.connect_raw(broken)
        client.transport.write(b"\x04\x01\x00\x50\x7f\x00\x00\x01alice\x00")
        await until(lambda: client.closed.called, "the misconfigured service to close the connection", 30)
        self.assertEqual(bytes(client.received), b"")

        await until(lambda: superserver.output.count(b"reaped") >= 3, "inetd to reap its children", 10)
        pids = re.findall(rb"(\d+) execv ", superserver.output)
        self.assertEqual(len(set(pids)), 3, superserver.text)
        self.assertEqual(len(re.findall(rb"reaped, status 0\b", superserver.output)), 2, superserver.text)
        await superserver.stop("TERM")


class InetdRefusalTests(SynchronousTestCase):
    """``sockssuite inetd`` refuses what is not one accepted TCP connection on
    standard input, and options that make no sense in inetd mode: exit 2
    and one line on standard error."""

    def inetd(self, *args, stdin=subprocess.DEVNULL):
        return subprocess.Popen(sockssuite_command() + ["inetd", *args], cwd=temp_dir(self), stdin=stdin,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env())

    def check(self, process, message):
        try:
            out, err = process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            raise AssertionError(f"sockssuite inetd {process.args} did not exit")
        self.assertEqual(process.returncode, 2, err)
        self.assertEqual(out, "")
        self.assertEqual(err.count("\n"), 1, err)
        self.assertIn(message, err)
        self.assertTrue(err.startswith("sockssuite inetd: "), err)

    def test_refusals(self):
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        self.addCleanup(listener.close)
        unix_a, unix_b = socket.socketpair()
        self.addCleanup(unix_a.close)
        self.addCleanup(unix_b.close)
        jsonlog = os.path.join(temp_dir(self), "x.jsonl")
        cases = [
            (self.inetd(stdin=listener.fileno()), "standard input is a listening socket; run one process per connection"),
            (self.inetd(), "standard input is not a socket"),
            (self.inetd(stdin=unix_a.fileno()), "standard input is not a TCP socket"),
            (self.inetd("--socks", "tcp:1080", stdin=unix_a.fileno()), "--socks has no meaning in inetd mode"),
            (self.inetd("--log-json", "-", stdin=unix_a.fileno()), "standard output is the client's socket"),
            (self.inetd("--dns", "tcp:5353:interface=127.0.0.1", stdin=unix_a.fileno()),
             "--dns has no meaning in inetd mode"),
            (self.inetd("--log-json", jsonlog, stdin=listener.fileno()), "standard input is a listening socket"),
        ]
        for process, message in cases:
            self.check(process, message)


# -- systemd socket activation ---------------------------------------------------------

class SocketActivationTests(TestCase):
    async def activated(self, web, folder, *server):
        """``systemd-socket-activate -l`` passing its listening socket to ``server``
        (started at the first connection); curl through it twice."""
        activate = require_program("systemd-socket-activate", "systemd")
        port = free_port()
        twistd = Child(self, [activate, "-l", f"127.0.0.1:{port}", "--fdname=socks", *server], folder)
        await until(lambda: listening(port) or twistd.ended.called, "systemd-socket-activate to listen", 30)
        await fetch(self, port, web)
        await fetch(self, port, web, scheme="socks4", host="127.0.0.1")
        await twistd.wait_for(b"SOCKS server listening on 127.0.0.1:%d (systemd:domain=INET:index=0)" % port)
        await twistd.wait_for(b"sockssuite ready")
        await until(lambda: twistd.output.count(b"outcome=closed") >= 2, "two session lines", 10)
        reason = await twistd.stop("TERM")  # systemd-socket-activate exec'd twistd: same process
        assert_clean_signal_exit(self, reason, twistd.text, signal.SIGTERM)
        return twistd

    @async_test
    async def test_shipped_units_twistd_on_a_socket_passed_by_systemd(self):
        """docs/systemd/sockssuite.socket + sockssuite.service, as
        systemd-socket-activate plays them (User= aside)."""
        socket_unit = unit_settings("sockssuite.socket")
        self.assertEqual(socket_unit["ListenStream"], "127.0.0.1:1080")
        self.assertEqual(socket_unit["FileDescriptorName"], "socks")
        self.assertNotIn("Accept", socket_unit)
        web = await WebServer(self).start()
        folder = temp_dir(self)
        access = os.path.join(folder, "sockd.conf")
        write(access, LOOPBACK)
        command = unit_command("sockssuite.service", access)
        self.assertIn("systemd:domain=INET:index=0", command)
        twistd = await self.activated(web, folder, *command)
        self.assertIn(f"access rules: 1 from {access}", twistd.text)

    @async_test
    async def test_tap_file_on_a_socket_passed_by_systemd(self):
        # mktap runs without the socket: the endpoint is checked when twistd starts.
        web = await WebServer(self).start()
        folder = temp_dir(self)
        tapfile = await mktap(self, folder, "--socks", "systemd:domain=INET:index=0")
        await self.activated(web, folder, *twistd_command(), "-n", "-o", "--pidfile=", "-f", tapfile)

    def test_no_socket_passed_is_a_one_line_error(self):
        folder = temp_dir(self)
        done = subprocess.run(twistd_command() + ["-n", "-o", "--pidfile=", "sockssuite",
                                                  "--socks", "systemd:domain=INET:index=0"],
                              cwd=folder, capture_output=True, text=True, timeout=60,
                              stdin=subprocess.DEVNULL, env=child_env())
        output = done.stdout + done.stderr
        self.assertNotEqual(done.returncode, 0, output)
        self.assertIn("--socks 'systemd:domain=INET:index=0': no socket was passed at that index",
                      last_line(output))
        self.assertNotIn("Traceback", output)


class ShippedUnitFileTests(SynchronousTestCase):
    def test_systemd_analyze_verify_accepts_the_units(self):
        analyze = shutil.which("systemd-analyze")
        if analyze is None:
            raise SkipTest("systemd-analyze is not installed (package systemd)")
        folder = temp_dir(self)
        names = sorted(os.listdir(SHIPPED_UNITS))
        self.assertEqual(names, ["sockssuite-inetd.socket", "sockssuite-inetd@.service",
                                 "sockssuite.service", "sockssuite.socket"])
        scripts = {"/usr/local/bin/twistd": twistd_command()[0], "/usr/local/bin/sockssuite": sockssuite_command()[0]}
        for name in names:
            with open(os.path.join(SHIPPED_UNITS, name)) as f:
                text = f.read()
            for shipped, here in scripts.items():  # verify checks that the programs exist
                text = text.replace(shipped, here)
            write(os.path.join(folder, name), text)
        done = subprocess.run([analyze, "verify", "--man=no", *names], cwd=folder, capture_output=True,
                              text=True, timeout=60, stdin=subprocess.DEVNULL)
        self.assertEqual(done.returncode, 0, done.stdout + done.stderr)
        complaints = [line for line in (done.stdout + done.stderr).splitlines()
                      if any(name in line for name in names)]
        self.assertEqual(complaints, [])  # "Special user nobody configured, this is not safe!" and the like


# -- privileges ----------------------------------------------------------------------

def free_privileged_port(kinds=(socket.SOCK_STREAM,), taken=()) -> int:
    """A port below 1024 free on 127.0.0.1 for every socket type in ``kinds``."""
    for port in range(1023, 899, -1):
        if port in taken:
            continue
        sockets = []
        try:
            for kind in kinds:
                s = socket.socket(socket.AF_INET, kind)
                sockets.append(s)
                s.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
        return port
    raise SkipTest("no free port between 900 and 1023 on 127.0.0.1")


def udp_bound(port: int) -> bool:
    wanted = "0100007F:%04X" % port
    with open("/proc/net/udp") as f:
        return any(line.split()[1] == wanted for line in f.readlines()[1:])


class PrivilegeDropTests(TestCase):
    @async_test
    async def test_privileged_port_then_nobody(self):
        """Bind as root, run as nobody: the uid in /proc, curl (a SOCKS4a name
        resolved after the switch), SIGHUP reading the access file as nobody;
        the DNS forwarder's and udprelay's ports below 1024 are bound too
        (nobody could not bind them after the switch)."""
        if os.geteuid() != 0:
            raise SkipTest("needs root: binds a port below 1024, then twistd --uid/--gid switches to nobody")
        try:
            nobody, nogroup = pwd.getpwnam("nobody").pw_uid, grp.getgrnam("nogroup").gr_gid
        except KeyError:
            raise SkipTest("no user 'nobody' or group 'nogroup' on this system")
        web = await WebServer(self).start()
        folder = temp_dir(self)
        os.chmod(folder, 0o755)  # the access file must be readable by nobody for SIGHUP
        access = os.path.join(folder, "sockd.conf")
        write(access, LOOPBACK, 0o644)
        port = free_privileged_port()
        dns_port = free_privileged_port((socket.SOCK_STREAM, socket.SOCK_DGRAM), taken=(port,))
        udp_port = free_privileged_port((socket.SOCK_DGRAM,), taken=(port, dns_port))
        udprelay = os.path.join(folder, "udprelay.conf")
        write(udprelay, f"encapsulate 127.0.0.0/8 {udp_port}\n", 0o644)
        twistd = Child(self, twistd_command() + ["-n", "-o", "--pidfile=", "--uid", "nobody", "--gid", "nogroup",
                                                 "sockssuite", "--socks", f"tcp:{port}:interface=127.0.0.1",
                                                 "--access", access, "--ident", "if-available",
                                                 "--ident-port", str(free_port()),
                                                 "--dns", f"tcp:{dns_port}:interface=127.0.0.1",
                                                 "--dns-upstream", "127.0.0.1:9",
                                                 "--udprelay", udprelay], folder)
        await twistd.wait_for(b"set uid/gid %d/%d" % (nobody, nogroup))
        await twistd.wait_for(b"sockssuite ready")
        self.assertLess(twistd.text.index(f"SOCKS server listening on 127.0.0.1:{port}"),
                        twistd.text.index("set uid/gid"), "bound after the switch?")
        self.assertTrue(listening(dns_port), f"DNS forwarder not listening on TCP {dns_port}:\n{twistd.text}")
        self.assertTrue(udp_bound(dns_port), f"DNS forwarder not bound to UDP {dns_port}:\n{twistd.text}")
        self.assertTrue(udp_bound(udp_port), f"udprelay not bound to UDP {udp_port}:\n{twistd.text}")
        with open(f"/proc/{twistd.pid}/status") as f:
            status = dict(line.split(":", 1) for line in f.read().splitlines() if ":" in line)
        self.assertEqual(status["Uid"].split(), [str(nobody)] * 4)
        self.assertEqual(status["Gid"].split(), [str(nogroup)] * 4)

        await fetch(self, port, web)  # ident, name resolution and relaying, all as nobody
        await until(lambda: b"outcome=closed" in twistd.output, "the session line", 10)
        self.assertRegex(twistd.text, r"user=alice to localhost\(127\.0\.0\.1\):%d .*ident=unreachable" % web.port)

        write(access, deny_port(web.port))
        twistd.transport.signalProcess("HUP")
        await twistd.wait_for(f"reloaded {access}: 2 rule(s)".encode())
        await twistd.wait_for(f"reloaded {udprelay}: 0 relay and 1 encapsulate line(s)".encode())
        await refused(self, port, web)
        # udprelay keeps the socket it bound as root (nobody could not bind it again) ...
        self.assertTrue(udp_bound(udp_port), f"udprelay lost UDP {udp_port} on SIGHUP:\n{twistd.text}")
        # ... and a new port below 1024 cannot be had as nobody: the old lines stay.
        moved = free_privileged_port((socket.SOCK_DGRAM,), taken=(port, dns_port, udp_port))
        write(udprelay, f"encapsulate 127.0.0.0/8 {moved}\n", 0o644)
        twistd.transport.signalProcess("HUP")
        await twistd.wait_for(f"udprelay: reload of {udprelay} failed; the previous lines stay in force".encode())
        self.assertIn(f"cannot listen on 127.0.0.1:{moved}: [Errno 13] Permission denied", twistd.text)
        self.assertTrue(udp_bound(udp_port))
        self.assertFalse(udp_bound(moved))

        os.chmod(access, 0o600)  # root's file: nobody cannot read it any more
        twistd.transport.signalProcess("HUP")
        await twistd.wait_for(f"reload of {access} failed".encode())
        self.assertIn(f"{access}:0:0: cannot read access file: Permission denied", twistd.text)
        await refused(self, port, web)

        reason = await twistd.stop("TERM")
        assert_clean_signal_exit(self, reason, twistd.text, signal.SIGTERM)
        self.assertNotIn("Permission denied: '/", twistd.text)
