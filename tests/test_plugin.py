"""The twistd plugin as users run it: the installed ``twistd sockssuite`` in a
child process, the dropin as Twisted's plugin system finds it, and the wheel
that ships it.

These tests exercise the *installed* package (``pip install .``), not the
source tree: every child process runs in a temporary folder, so the tree is
not on its ``sys.path``.  Reinstall after changing the code.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import pickle
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import zipfile

from twisted.application.service import IServiceMaker
from twisted.internet import defer, error, protocol, reactor
from twisted.plugin import getPlugins
from twisted.trial.unittest import SynchronousTestCase, TestCase

from . import support
from .test_real_clients import WebServer, async_test, run_curl, temp_dir, until

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DROPIN_SOURCE = os.path.join(ROOT, "twisted", "plugins", "sockssuite_plugin.py")
BROKEN_ACCESS = (
    "permit 127.0.0.0 255.0.0.0\n"
    "permit 1.2.3 255.0.0.0\n"
    "# a comment line\n"
    "frobnicate 0.0.0.0 0.0.0.0\n"
)
#: (line, column) of every error in BROKEN_ACCESS.
BROKEN_ACCESS_ERRORS = [(2, 8), (4, 1)]


def twistd_command() -> list[str]:
    """The ``twistd`` script of this interpreter, else ``python -m twisted``.

    A ``twistd`` found on PATH may belong to another Python (pyenv shims, a
    system package) that has no sockssuite, so only this interpreter's own
    script is used."""
    sibling = os.path.join(os.path.dirname(sys.executable), "twistd")
    if os.access(sibling, os.X_OK):
        return [sibling]
    return [sys.executable, "-m", "twisted"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_sync(args, cwd, timeout=120, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, **kwargs)


def run_python(code: str, cwd: str, timeout=60):
    """Run ``code`` in a fresh interpreter outside the source tree; its JSON output."""
    done = run_sync([sys.executable, "-c", textwrap.dedent(code)], cwd, timeout)
    if done.returncode != 0:
        raise AssertionError(f"child python failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# -- twistd in a child process ---------------------------------------------------

class Twistd(protocol.ProcessProtocol):
    """``twistd -n -o sockssuite ...`` as a child of the reactor."""

    def __init__(self, testcase, *plugin_args, cwd=None):
        self.testcase = testcase
        self.cwd = cwd or temp_dir(testcase)
        self.output = bytearray()
        self.ended = defer.Deferred()
        self.reason = None
        command = twistd_command() + ["-n", "-o", "sockssuite", *plugin_args]
        self.command = command
        reactor.spawnProcess(self, command[0], command, env=dict(os.environ), path=self.cwd)
        testcase.addCleanup(self._kill)

    def outReceived(self, data):
        self.output += data

    errReceived = outReceived

    def processEnded(self, reason):
        self.reason = reason.value
        self.ended.callback(reason.value)

    @property
    def text(self) -> str:
        return self.output.decode("utf-8", "replace")

    async def wait_for_output(self, needle: bytes, timeout=30.0):
        await until(lambda: needle in self.output or self.ended.called,
                    f"{needle!r} in twistd's output", timeout)
        if needle not in self.output:
            raise AssertionError(f"twistd ended ({self.reason}) before printing {needle!r}:\n{self.text}")

    async def signal(self, signame):
        """Signal it once it is ready: before "sockssuite ready" the reactor
        may not have installed its signal handlers yet (twistd binds first)."""
        await self.wait_for_output(b"sockssuite ready")
        self.transport.signalProcess(signame)

    async def stop(self, signame="TERM", timeout=30.0):
        """Signal it and wait (bounded) for it to exit; the exit reason."""
        await self.signal(signame)
        return await self.wait_exit(timeout)

    async def wait_exit(self, timeout=30.0):
        d = defer.Deferred()
        self.ended.addBoth(lambda r: (d.callback(r) if not d.called else None, r)[1])
        d.addTimeout(timeout, reactor)
        try:
            return await d
        except defer.TimeoutError:
            raise AssertionError(f"twistd did not exit within {timeout}s:\n{self.text}")

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


def _json_lines(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def assert_clean_signal_exit(testcase, reason, output, signum):
    """twistd's orderly exit on a signal: it shuts down (services stopped, log
    closed), then re-raises the signal so its parent sees what stopped it
    (``twisted.application.app._exitWithSignal``); no traceback on the way."""
    testcase.assertIsInstance(reason, error.ProcessTerminated, output)
    testcase.assertEqual(reason.signal, signum, output)
    testcase.assertIn("Main loop terminated.", output)
    testcase.assertIn("Server Shut Down.", output)
    testcase.assertNotIn("Traceback", output)
    testcase.assertNotIn("Unhandled", output)


class TwistdProcessTests(TestCase):
    @async_test
    async def test_serves_curl_then_stops_cleanly_on_sigterm(self):
        web = await WebServer(self).start()
        port = free_port()
        jsonlog = os.path.join(temp_dir(self), "sessions.jsonl")
        twistd = Twistd(self, "--socks", f"tcp:{port}:interface=127.0.0.1", "--log-json", jsonlog)
        await twistd.wait_for_output(b"SOCKS server listening on 127.0.0.1:%d" % port)
        for scheme, host in (("socks4", "127.0.0.1"), ("socks4a", "localhost")):
            out, err, code = await run_curl("--fail", "-x", f"{scheme}://alice@127.0.0.1:{port}",
                                            web.url(host=host))
            self.assertEqual(code, 0, f"{scheme}: {err!r}\n{twistd.text}")
            self.assertEqual(hashlib.sha256(out).hexdigest(), web.sha256)
        # Each session's line comes when the proxy has closed both legs, which can
        # be just after curl exits.
        await until(lambda: twistd.output.count(b"outcome=closed") >= 2, "two session lines", 10)
        reason = await twistd.stop("TERM")
        assert_clean_signal_exit(self, reason, twistd.text, signal.SIGTERM)
        text = twistd.text
        self.assertIn("Received SIGTERM, shutting down.", text)
        closed = re.findall(r"session \d+ connect from 127\.0\.0\.1:\d+ user=alice to (\S+):%d .*"
                            r"outcome=closed" % web.port, text)
        self.assertEqual(closed, ["127.0.0.1", "localhost(127.0.0.1)"], text)
        # -o: no shutdown tap saved; the pid file is removed again.
        self.assertEqual(sorted(os.listdir(twistd.cwd)), [], text)
        # The same sessions as JSON lines.
        sessions = [r for r in _json_lines(jsonlog) if r.get("event") == "session-closed"]
        self.assertEqual([(r["user"], r["requested"], r["outcome"], r["log_namespace"]) for r in sessions],
                         [("alice", "127.0.0.1", "closed", "sockssuite.session"),
                          ("alice", "localhost", "closed", "sockssuite.session")])
        for record in sessions:
            self.assertEqual(record["log_level"], "info")
            self.assertIn("outcome=closed", record["message"])
            self.assertGreater(record["bytes_down"], len(web.blob))

    @async_test
    async def test_sigterm_with_a_session_open_closes_it_and_exits_cleanly(self):
        echo = await support.listen(self, support.Echo)
        port = free_port()
        twistd = Twistd(self, "--socks", f"tcp:{port}:interface=127.0.0.1", "--shutdown-grace", "0.5")
        await twistd.wait_for_output(b"SOCKS server listening on")
        client, reply = await support.socks_connect(port, "127.0.0.1", echo.getHost().port, userid=b"bob")
        self.assertEqual(reply.code, 90)
        client.transport.write(b"still here")
        self.assertEqual(await client.wait_bytes(10), b"still here")
        reason = await twistd.stop("TERM")
        await client.closed  # the proxy closed the open session on its way out
        assert_clean_signal_exit(self, reason, twistd.text, signal.SIGTERM)
        self.assertRegex(twistd.text, r"session 1 connect from 127\.0\.0\.1:\d+ user=bob .* up=10 down=10 "
                                      r".*outcome=shutdown")
        self.assertIn("stopping: closing 1 session(s) still open after 0.5s", twistd.text)

    @async_test
    async def test_sigterm_lets_a_session_in_flight_finish_within_the_grace(self):
        echo = await support.listen(self, support.Echo)
        port = free_port()
        twistd = Twistd(self, "--socks", f"tcp:{port}:interface=127.0.0.1", "--shutdown-grace", "60")
        await twistd.wait_for_output(b"SOCKS server listening on")
        client, reply = await support.socks_connect(port, "127.0.0.1", echo.getHost().port, userid=b"carol")
        self.assertEqual(reply.code, 90)
        await twistd.signal("TERM")
        await twistd.wait_for_output(b"stopping: waiting up to 60")
        await twistd.wait_for_output(b"(TCP Port %d Closed)" % port)
        # No new clients once stopping ...
        refused = support.connect_raw(port)
        with self.assertRaises(error.ConnectionRefusedError):
            await refused
        # ... while the session in flight keeps relaying.
        client.transport.write(b"after SIGTERM")
        self.assertEqual(await client.wait_bytes(13), b"after SIGTERM")
        self.assertFalse(twistd.ended.called)
        started = reactor.seconds()
        client.transport.loseConnection()
        await client.closed
        reason = await twistd.wait_exit(30)
        self.assertLess(reactor.seconds() - started, 30, "twistd waited for the grace despite no session left")
        assert_clean_signal_exit(self, reason, twistd.text, signal.SIGTERM)
        self.assertRegex(twistd.text, r"user=carol .* up=13 down=13 .*outcome=closed")

    @async_test
    async def test_json_log_records_the_sessions_closed_by_shutdown(self):
        echo = await support.listen(self, support.Echo)
        port = free_port()
        jsonlog = os.path.join(temp_dir(self), "sessions.jsonl")
        twistd = Twistd(self, "--socks", f"tcp:{port}:interface=127.0.0.1", "--log-json", jsonlog,
                        "--shutdown-grace", "0.5")
        await twistd.wait_for_output(b"SOCKS server listening on")
        client, reply = await support.socks_connect(port, "127.0.0.1", echo.getHost().port, userid=b"bob")
        self.assertEqual(reply.code, 90)
        await twistd.stop("TERM")
        await client.closed
        self.assertIn("outcome=shutdown", twistd.text)  # the text log has it
        outcomes = [r["outcome"] for r in _json_lines(jsonlog) if r.get("event") == "session-closed"]
        self.assertEqual(outcomes, ["shutdown"], "the session closed at shutdown is missing from the JSON log")


    @async_test
    async def test_log_json_to_stdout_writes_json_lines(self):
        # "--log-json -" is documented as "for stdout": each record a JSON line.
        port = free_port()
        twistd = Twistd(self, "--socks", f"tcp:{port}:interface=127.0.0.1", "--log-json", "-")
        await twistd.wait_for_output(b"SOCKS server listening on")
        await twistd.stop("TERM")
        records = []
        for line in twistd.text.splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                pass
        self.assertIn("sockssuite.service", [r.get("log_namespace") for r in records], twistd.text)


    @async_test
    async def test_unwritable_log_json_path_is_a_clean_error(self):
        missing = os.path.join(temp_dir(self), "no-such-folder", "sessions.jsonl")
        twistd = Twistd(self, "--socks", "tcp:0:interface=127.0.0.1", "--log-json", missing)
        reason = await twistd.wait_exit(30)
        self.assertNotEqual(getattr(reason, "exitCode", None), 0, twistd.text)
        self.assertIn(missing, twistd.text)
        self.assertNotIn("Traceback", twistd.text)


    @async_test
    async def test_sighup_reloads_the_access_file_and_keeps_the_old_rules_on_errors(self):
        echo = await support.listen(self, support.Echo)
        target = echo.getHost().port
        path = os.path.join(temp_dir(self), "sockd.conf")

        def write(text):
            with open(path, "w") as f:
                f.write(text)

        async def reply_code():
            client, reply = await support.socks_connect(port, "127.0.0.1", target)
            client.transport.loseConnection()
            await client.closed
            return reply.code

        write("permit 127.0.0.0 255.0.0.0\n")
        port = free_port()
        twistd = Twistd(self, "--socks", f"tcp:{port}:interface=127.0.0.1", "--access", path,
                        "--shutdown-grace", "0")
        await twistd.wait_for_output(b"SOCKS server listening on")
        self.assertEqual(await reply_code(), 90)

        write("# closed for maintenance\ndeny 0.0.0.0 0.0.0.0\n")
        await twistd.signal("HUP")
        await twistd.wait_for_output(f"reloaded {path}: 1 rule(s)".encode())
        self.assertEqual(await reply_code(), 91)
        await twistd.wait_for_output(b"denied by line 2")

        write("permit 1.2.3 255.0.0.0\n")
        await twistd.signal("HUP")
        await twistd.wait_for_output(f"reload of {path} failed".encode())
        self.assertRegex(twistd.text, rf"(?m){re.escape(path)}:1:8: ")
        self.assertEqual(await reply_code(), 91, "the rules in force before the broken reload must stay")
        self.assertFalse(twistd.ended.called, "a broken reload must not stop the server")

        reason = await twistd.stop("TERM")
        assert_clean_signal_exit(self, reason, twistd.text, signal.SIGTERM)

    @async_test
    async def test_sigint_stops_it_cleanly_too(self):
        port = free_port()
        twistd = Twistd(self, "--socks", f"tcp:{port}:interface=127.0.0.1")
        await twistd.wait_for_output(b"SOCKS server listening on")
        reason = await twistd.stop("INT")
        assert_clean_signal_exit(self, reason, twistd.text, signal.SIGINT)

    @async_test
    async def test_port_already_in_use_makes_twistd_exit_instead_of_hanging(self):
        busy = await support.listen(self, support.Echo)
        twistd = Twistd(self, "--socks", f"tcp:{busy.getHost().port}:interface=127.0.0.1")
        await twistd.wait_exit(30)
        self.assertIn("cannot listen on tcp:%d:interface=127.0.0.1" % busy.getHost().port, twistd.text)
        self.assertIn("Address already in use", twistd.text)
        self.assertNotIn("Traceback", twistd.text)
        self.assertNotIn("SOCKS server listening", twistd.text)

    @async_test
    async def test_port_already_in_use_is_a_failed_start(self):
        # A daemon that could not listen must not report success: systemd's
        # Restart=on-failure, shell scripts and CI all read the exit status.
        busy = await support.listen(self, support.Echo)
        twistd = Twistd(self, "--socks", f"tcp:{busy.getHost().port}:interface=127.0.0.1")
        reason = await twistd.wait_exit(30)
        self.assertNotEqual(reason.exitCode, 0, f"{reason}:\n{twistd.text}")



class TwistdCommandLineTests(SynchronousTestCase):
    def test_broken_access_file_exits_nonzero_naming_file_line_and_column(self):
        folder = temp_dir(self)
        path = os.path.join(folder, "broken.conf")
        with open(path, "w") as f:
            f.write(BROKEN_ACCESS)
        done = run_sync(twistd_command() + ["-n", "-o", "sockssuite", "--access", path,
                                            "--socks", "tcp:0:interface=127.0.0.1"], folder)
        output = done.stdout + done.stderr
        self.assertNotEqual(done.returncode, 0, output)
        for line, column in BROKEN_ACCESS_ERRORS:
            self.assertRegex(output, rf"(?m)^{re.escape(path)}:{line}:{column}: \S", output)
        self.assertNotIn("Traceback", output)
        self.assertNotIn("SOCKS server listening", output)

    def test_missing_access_file_exits_nonzero(self):
        folder = temp_dir(self)
        path = os.path.join(folder, "no-such.conf")
        done = run_sync(twistd_command() + ["-n", "-o", "sockssuite", "--access", path], folder)
        output = done.stdout + done.stderr
        self.assertNotEqual(done.returncode, 0, output)
        self.assertIn(f"{path}:0:0: cannot read access file", output)
        self.assertNotIn("Traceback", output)

    def test_help_documents_every_option(self):
        folder = temp_dir(self)
        # The installed Options (what the installed twistd shows), not the tree's.
        options = run_python("""
            import json
            from sockssuite.tap import Options
            o = Options()
            print(json.dumps({"long": o.longOpt, "docs": o.docs, "longdesc": o.longdesc,
                              "synonyms": o.synonyms}))
            """, folder)
        done = run_sync(twistd_command() + ["sockssuite", "--help"], folder)
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertNotIn("Traceback", done.stderr)
        help_text = done.stdout
        flat = " ".join(help_text.split())
        self.assertIn("Usage: twistd [options] sockssuite [options]", help_text)
        self.assertIn(" ".join(options["longdesc"].split()), flat)
        names = [name.rstrip("=") for name in options["long"]]
        self.assertIn("socks", names)
        self.assertIn("access", names)
        for name in names:
            self.assertRegex(help_text, rf"(?m)^\s+(-\w, )?--{re.escape(name)}\b", f"--{name} not listed")
            doc = options["docs"].get(name)
            self.assertTrue(doc and doc.strip(), f"--{name} has no description")
            self.assertIn(" ".join(doc.split()), flat, f"--{name}'s description missing from --help")
        for short, long in options["synonyms"].items():
            if len(short) == 1:
                self.assertRegex(help_text, rf"(?m)^\s+-{short}, --{long}\b")


class InstalledPluginTests(SynchronousTestCase):
    def test_getPlugins_finds_the_installed_service_maker(self):
        folder = temp_dir(self)
        found = run_python("""
            import json, sys
            from twisted.application.service import IServiceMaker
            from twisted.plugin import getPlugins
            makers = [m for m in getPlugins(IServiceMaker) if m.tapname == "sockssuite"]
            result = [{"tapname": m.tapname, "module": m.module, "description": m.description,
                       "options": type(m.options()).__module__} for m in makers]
            options = makers[0].options()
            options.parseOptions(["--socks", "tcp:0:interface=127.0.0.1"])
            tree = makers[0].makeService(options)
            print(json.dumps({
                "makers": result,
                "dropin": sys.modules["twisted.plugins.sockssuite_plugin"].__file__,
                "tap": sys.modules["sockssuite.tap"].__file__,
                "tree": [tree.name, [s.name for s in tree]],
                "endpoints": tree.getServiceNamed("socks").endpoints,
            }))
            """, folder)
        self.assertEqual(len(found["makers"]), 1, found)
        [maker] = found["makers"]
        self.assertEqual(maker["module"], "sockssuite.tap")
        self.assertEqual(maker["options"], "sockssuite.tap")
        self.assertIn("SOCKS4", maker["description"])
        self.assertEqual(found["tree"], ["sockssuite", ["socks"]])
        self.assertEqual(found["endpoints"], ["tcp:0:interface=127.0.0.1"])
        for key in ("dropin", "tap"):
            self.assertFalse(found[key].startswith(ROOT + os.sep),
                             f"{key} came from the source tree, not the installed package: {found[key]}")

    def test_the_dropin_imports_neither_the_reactor_nor_the_package(self):
        # twistd imports every dropin before it installs the reactor the user chose.
        folder = temp_dir(self)
        loaded = run_python("""
            import json, sys
            import twisted.plugins.sockssuite_plugin
            print(json.dumps(sorted(m for m in sys.modules
                                    if m == "twisted.internet.reactor" or m.startswith("sockssuite"))))
            """, folder)
        self.assertEqual(loaded, [])


# -- packaging ----------------------------------------------------------------------

_NOT_SOURCE = shutil.ignore_patterns(
    ".git", "build", "dist", "*.egg-info", "_trial_temp*", ".hypothesis", ".pytest_cache",
    ".benchmarks", "__pycache__", ".tox", "*.pyc")


class WheelTests(SynchronousTestCase):
    def test_wheel_ships_the_dropin_but_no_twisted_package_files(self):
        # Built from a copy of the tree so that a stale build/ folder (or another
        # developer's build running at the same time) cannot change the result.
        work = temp_dir(self)
        source = os.path.join(work, "src")
        shutil.copytree(ROOT, source, ignore=_NOT_SOURCE)
        # A plugin cache lying in the source folder (tests create one) must not ship.
        with open(os.path.join(source, "twisted", "plugins", "dropin.cache"), "wb") as f:
            f.write(pickle.dumps({}))
        wheels = os.path.join(work, "wheels")
        done = run_sync([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
                         "--disable-pip-version-check", "-w", wheels, source], work, timeout=600)
        self.assertEqual(done.returncode, 0, done.stdout + done.stderr)
        [wheel] = [n for n in os.listdir(wheels) if n.endswith(".whl")]
        with zipfile.ZipFile(os.path.join(wheels, wheel)) as z:
            names = set(z.namelist())
            entry_points = next(z.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt"))
        self.assertIn("twisted/plugins/sockssuite_plugin.py", names)
        for forbidden in ("twisted/__init__.py", "twisted/plugins/__init__.py"):
            self.assertNotIn(forbidden, names)
        self.assertEqual([n for n in names if n.endswith("dropin.cache")], [])
        self.assertEqual([n for n in names if n.startswith("twisted/") and not n.startswith("twisted/plugins/")], [])
        self.assertEqual([n for n in names if n.split("/")[0] in ("tests", "ptests")], [])
        # Every module of the package ships (setup.py names its packages explicitly).
        package_files = {
            os.path.relpath(os.path.join(folder, name), source).replace(os.sep, "/")
            for folder, _, files in os.walk(os.path.join(source, "sockssuite"))
            for name in files if name.endswith(".py")}
        self.assertEqual(package_files - names, set(), "modules missing from the wheel")
        self.assertRegex(entry_points, r"(?m)^sockssuite\s*=\s*sockssuite\.cli:main\s*$")


# -- stale plugin caches --------------------------------------------------------------

_OTHER_DROPIN = """\
from twisted.application.service import ServiceMaker
otherthing = ServiceMaker("otherthing", "sockssuite.tap", "another plugin in the same folder", "otherthing")
"""

_NO_PLUGIN_DROPIN = """\
# An earlier version of the dropin that defined no plugin at all.
"""


class StaleDropinCacheTests(SynchronousTestCase):
    """A pseudo plugin package like ``twisted.plugins``: its ``__path__`` holds
    a folder with a copy of our dropin and the ``dropin.cache`` Twisted keeps
    next to it.  ``getCache`` reloads a dropin whose key is missing from the
    cache, or whose file is at least as new as the cache file (``>=``);
    otherwise it trusts the cached entry."""

    def setUp(self):
        root = temp_dir(self)
        self.name = f"pseudo_plugins_{os.getpid()}_{id(self)}"
        package = os.path.join(root, self.name)
        self.dropins = os.path.join(root, "dropins")
        os.makedirs(package)
        os.makedirs(self.dropins)
        with open(os.path.join(package, "__init__.py"), "w") as f:
            f.write("import os\n"
                    "__path__.append(os.path.join(os.path.dirname(os.path.dirname("
                    "os.path.abspath(__file__))), 'dropins'))\n")
        self.cache = os.path.join(self.dropins, "dropin.cache")
        sys.path.insert(0, root)
        self.addCleanup(sys.path.remove, root)
        self.addCleanup(self._forget_modules)
        importlib.invalidate_caches()
        self.package = importlib.import_module(self.name)

    def _forget_modules(self):
        for name in [m for m in sys.modules if m == self.name or m.startswith(self.name + ".")]:
            del sys.modules[name]

    def write_dropin(self, name, text, mtime=None):
        path = os.path.join(self.dropins, name)
        with open(path, "w") as f:
            f.write(text)
        if mtime is not None:
            os.utime(path, (mtime, mtime))
        # A fresh import next time: no module object, bytecode or directory listing kept.
        sys.modules.pop(f"{self.name}.{name[:-3]}", None)
        shutil.rmtree(os.path.join(self.dropins, "__pycache__"), ignore_errors=True)
        importlib.invalidate_caches()

    def install_our_dropin(self, mtime):
        with open(DROPIN_SOURCE) as f:
            self.write_dropin("sockssuite_plugin.py", f.read(), mtime)

    def tapnames(self):
        return sorted(m.tapname for m in getPlugins(IServiceMaker, self.package))

    def cached(self):
        with open(self.cache, "rb") as f:
            cache = pickle.load(f)
        return {key: sorted(p.name for p in dropin.plugins) for key, dropin in cache.items()}

    def age_cache(self, mtime):
        os.utime(self.cache, (mtime, mtime))

    def test_cache_written_before_the_dropin_existed(self):
        self.write_dropin("other_plugin.py", _OTHER_DROPIN)
        self.assertEqual(self.tapnames(), ["otherthing"])
        self.assertEqual(self.cached(), {"other_plugin": ["otherthing"]})
        now = time.time()
        self.age_cache(now)
        # Even with a file time older than the cache (an archive's preserved
        # mtime): the key is missing, so the dropin is loaded.
        self.install_our_dropin(mtime=now - 3600)
        self.assertEqual(self.tapnames(), ["otherthing", "sockssuite"])
        self.assertEqual(self.cached(), {"other_plugin": ["otherthing"], "sockssuite_plugin": ["sockssuite"]})

    def test_cache_holding_an_older_version_of_the_dropin(self):
        self.write_dropin("sockssuite_plugin.py", _NO_PLUGIN_DROPIN)
        self.assertEqual(self.tapnames(), [])
        self.assertEqual(self.cached(), {"sockssuite_plugin": []})
        written = time.time() - 100
        self.age_cache(written)
        # Reinstalled later: the file is newer than the cache.
        self.install_our_dropin(mtime=written + 50)
        self.assertEqual(self.tapnames(), ["sockssuite"])
        self.assertEqual(self.cached(), {"sockssuite_plugin": ["sockssuite"]})
        self.assertGreater(os.path.getmtime(self.cache), written, "the cache was not rewritten")

    def test_reinstalled_in_the_same_second_as_the_cache(self):
        self.write_dropin("sockssuite_plugin.py", _NO_PLUGIN_DROPIN)
        self.assertEqual(self.tapnames(), [])
        same = int(time.time()) - 10
        self.age_cache(same)
        self.install_our_dropin(mtime=same)  # equal times count as stale (>=)
        self.assertEqual(self.tapnames(), ["sockssuite"])

    def test_only_a_cache_newer_than_the_file_is_trusted(self):
        # The limit of the mtime rule: a stale entry written *after* the file's
        # time hides the plugin until the file is touched.  pip gives installed
        # files the install time, so a reinstall is always newer than the cache.
        self.write_dropin("sockssuite_plugin.py", _NO_PLUGIN_DROPIN)
        self.tapnames()
        now = time.time()
        self.age_cache(now)
        self.install_our_dropin(mtime=now - 3600)
        self.assertEqual(self.tapnames(), [])
        os.utime(os.path.join(self.dropins, "sockssuite_plugin.py"))  # touch
        self.assertEqual(self.tapnames(), ["sockssuite"])
