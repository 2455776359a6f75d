"""``sockssuite connect`` as a real child process (netcat-like, over a real
sockssuite server and a twisted.web server, loopback only), ``sockssuite route``
and ``sockssuite check`` for socks.conf files.

127.0.0.1 always goes direct under socks.conf, so destinations that must be
reached through the proxy listen on 127.0.0.2.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import warnings

from twisted.internet import defer, error, protocol, reactor
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.protocols.policies import WrappingFactory
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

with warnings.catch_warnings():
    # twisted.web.static builds its own deprecated error pages at import time.
    warnings.simplefilter("ignore", DeprecationWarning)
    from twisted.web import server, static

from . import support
from .support import Echo, LogCapture, ReadAllThenAnswer, listen, start_server
from .test_server import async_test
from .test_socks5 import password_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OTHER_LOOPBACK = "127.0.0.2"
#: The command line users run, from this tree (not whatever copy is installed).
SOCKSSUITE = [sys.executable, "-m", "sockssuite.cli"]


def child_env(**extra):
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": ROOT, "HOME": os.environ.get("HOME", "/")}
    env.update(extra)
    return env


#: A sitecustomize for child processes: names other than ``localhost`` do
#: not resolve, so that a test of a name that "does not resolve here" never
#: asks the system's DNS server (which is not on loopback).
_NO_DNS = """
import socket

_getaddrinfo, _gethostbyname = socket.getaddrinfo, socket.gethostbyname


def _local(host):
    if host is None or host.rstrip(".").lower() == "localhost":
        return True
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host.split("%")[0])
            return True
        except OSError:
            pass
    return False


def _refuse(host):
    raise socket.gaierror(socket.EAI_NONAME, f"{host}: not resolved in tests (no DNS)")


def getaddrinfo(host, *args, **kwargs):
    text = host.decode() if isinstance(host, bytes) else host
    return _getaddrinfo(host, *args, **kwargs) if _local(text) else _refuse(text)


def gethostbyname(host):
    return _gethostbyname(host) if _local(host) else _refuse(host)


socket.getaddrinfo, socket.gethostbyname = getaddrinfo, gethostbyname
"""


def no_dns_env(testcase, **extra):
    """:func:`child_env` for a child whose look-ups of names other than
    ``localhost`` fail at once, without any DNS query."""
    folder = temp_dir(testcase)
    with open(os.path.join(folder, "sitecustomize.py"), "w") as f:
        f.write(_NO_DNS)
    return child_env(PYTHONPATH=f"{folder}{os.pathsep}{ROOT}", **extra)


def temp_dir(testcase) -> str:
    """A fresh absolute folder removed at cleanup (trial's ``mktemp`` is
    relative to the current folder: the source tree under pytest)."""
    path = tempfile.mkdtemp(prefix="sockssuite-test-")
    testcase.addCleanup(shutil.rmtree, path, True)
    return path


def write_file(testcase, name, text):
    path = os.path.join(temp_dir(testcase), name)
    with open(path, "w") as f:
        f.write(text)
    return path


async def until(predicate, what, timeout=10.0):
    for _ in range(int(timeout / 0.01)):
        if predicate():
            return
        await support.deferLater(0.01)
    raise AssertionError(f"{what}: not within {timeout}s")


class Child(protocol.ProcessProtocol):
    """A child process the reactor keeps serving beside: collects stdout and
    stderr, notes when stdout ended, and is killed if it outlives ``limit``."""

    def __init__(self, limit):
        self.out = bytearray()
        self.err = bytearray()
        self.stdout_ended = False
        self.ended = defer.Deferred()
        self.limit = limit
        self.killer = None

    def connectionMade(self):
        self.killer = reactor.callLater(self.limit, self._kill)

    def _kill(self):
        self.killer = None
        try:
            self.transport.signalProcess("KILL")
        except error.ProcessExitedAlready:
            pass

    def outReceived(self, data):
        self.out += data

    def errReceived(self, data):
        self.err += data

    def outConnectionLost(self):
        self.stdout_ended = True

    def processEnded(self, reason):
        if self.killer is not None and self.killer.active():
            self.killer.cancel()
        self.ended.callback(reason.value.exitCode if reason.value.exitCode is not None else -1)


def spawn(testcase, argv, env=None, limit=30.0) -> Child:
    child = Child(limit)
    reactor.spawnProcess(child, argv[0], argv, env=env or child_env(), path=ROOT)
    testcase.addCleanup(lambda: child.ended if not child.ended.called else None)
    testcase.addCleanup(lambda: child.killer is not None and child.killer.active() and child._kill())
    return child


async def run_connect(testcase, *args, stdin=b"", close_stdin="now", env=None, limit=30.0):
    """Run ``sockssuite connect ARGS`` with ``stdin``; its (stdout, stderr, exit).

    ``close_stdin``: ``"now"`` (right after ``stdin``), ``"after-output"``
    (once stdout ended: for servers like twisted.web that drop a request
    whose client half-closed, the way ssh and most programs use it) or
    ``"never"``."""
    child = spawn(testcase, [*SOCKSSUITE, "connect", *args], env=env, limit=limit)
    if stdin:
        child.transport.write(stdin)
    if close_stdin == "now":
        child.transport.closeStdin()
    elif close_stdin == "after-output":
        await until(lambda: child.stdout_ended or child.ended.called, "the end of the output", limit)
        child.transport.closeStdin()
    code = await child.ended
    return bytes(child.out), bytes(child.err).decode("utf-8", "replace"), code


class WebServer:
    """twisted.web serving ``/blob.bin`` (random bytes) on ``interface``; at
    cleanup it waits until every connection to it closed."""

    def __init__(self, testcase, size=100 * 1024):
        self.testcase = testcase
        folder = temp_dir(testcase)
        self.blob = os.urandom(size)
        with open(os.path.join(folder, "blob.bin"), "wb") as f:
            f.write(self.blob)
        site = server.Site(static.File(folder))
        site.noisy = False
        self.factory = WrappingFactory(site)
        self.factory.noisy = False

    async def start(self, interface=OTHER_LOOPBACK):
        self.interface = interface
        self.port = (await listen(self.testcase, self.factory, interface=interface)).getHost().port
        self.testcase.addCleanup(lambda: defer.ensureDeferred(
            until(lambda: not self.factory.protocols, "connections to the web server to close")))
        return self

    def url(self, path="/blob.bin"):
        return f"http://{self.interface}:{self.port}{path}"

    def check(self, testcase, response: bytes):
        head, sep, body = response.partition(b"\r\n\r\n")
        testcase.assertTrue(sep, f"no HTTP header end in {response[:200]!r}")
        testcase.assertIn(b" 200 ", head.split(b"\r\n", 1)[0] + b" ")
        testcase.assertEqual(hashlib.sha256(body).hexdigest(), hashlib.sha256(self.blob).hexdigest())


def http_get(host, path="/blob.bin"):
    return f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode()


async def closed_port(testcase):
    port = await listen(testcase, Echo)
    number = port.getHost().port
    await port.stopListening()
    return number


@implementer(IHalfCloseableProtocol)
class GreetAndHalfClose(protocol.Protocol):
    """Says hello and shuts down its sending side at once, then reads until
    the client's EOF and keeps what it got (the other half-close direction)."""

    received = None

    def connectionMade(self):
        self.data = bytearray()
        self.transport.write(b"hello, then EOF\n")
        self.transport.loseWriteConnection()

    def dataReceived(self, data):
        self.data += data

    def readConnectionLost(self):
        self.factory.received.callback(bytes(self.data))
        self.transport.loseConnection()

    def writeConnectionLost(self):
        pass


class Silent(protocol.Protocol):
    """Accepts and never answers."""


class ConnectTests(TestCase):
    @async_test
    async def test_http_get_through_the_proxy_by_socks_conf(self):
        logs = LogCapture(self)
        web = await WebServer(self).start()
        proxy = await start_server(self)
        conf = write_file(self, "socks.conf", f"sockd @=127.0.0.1:{support.port_of(proxy)} 0.0.0.0 0.0.0.0\n")
        out, err, code = await run_connect(self, "--routes", conf, "--user", "alice",
                                           OTHER_LOOPBACK, str(web.port), stdin=http_get(OTHER_LOOPBACK),
                                           close_stdin="after-output")
        self.assertEqual((code, err), (0, ""))
        web.check(self, out)
        [event] = await logs.wait_for("session-closed")
        self.assertEqual((event["user"], event["requested"]), ("alice", OTHER_LOOPBACK))

    @async_test
    async def test_http_get_through_an_explicit_proxy_with_a_socks4a_name(self):
        logs = LogCapture(self)
        web = await WebServer(self).start(interface="127.0.0.1")
        proxy = await start_server(self)
        out, err, code = await run_connect(self, "--proxy", f"127.0.0.1:{support.port_of(proxy)}",
                                           "localhost", str(web.port), stdin=http_get("localhost"),
                                           close_stdin="after-output")
        self.assertEqual((code, err), (0, ""))
        web.check(self, out)
        [event] = await logs.wait_for("session-closed")
        self.assertEqual((event["requested"], event["resolved"]), ("localhost", "127.0.0.1"))

    @async_test
    async def test_failover_to_the_second_server(self):
        web = await WebServer(self).start()
        proxy = await start_server(self)
        dead = await closed_port(self)
        conf = write_file(self, "socks.conf",
                          f"sockd @=127.0.0.1:{dead},127.0.0.1:{support.port_of(proxy)} 0.0.0.0 0.0.0.0\n")
        out, err, code = await run_connect(self, "--routes", conf, OTHER_LOOPBACK, str(web.port),
                                           stdin=http_get(OTHER_LOOPBACK), close_stdin="after-output")
        self.assertEqual((code, err), (0, ""))
        web.check(self, out)

    @async_test
    async def test_the_default_server_comes_from_socks_server(self):
        web = await WebServer(self).start()
        proxy = await start_server(self)
        conf = write_file(self, "socks.conf", "sockd 0.0.0.0 0.0.0.0\n")
        out, err, code = await run_connect(
            self, "--routes", conf, OTHER_LOOPBACK, str(web.port), stdin=http_get(OTHER_LOOPBACK),
            close_stdin="after-output", env=child_env(SOCKS_SERVER=f"127.0.0.1:{support.port_of(proxy)}"))
        self.assertEqual((code, err), (0, ""))
        web.check(self, out)

    @async_test
    async def test_a_direct_line_fetches_without_the_proxy(self):
        web = await WebServer(self).start()
        conf = write_file(self, "socks.conf", f"direct {OTHER_LOOPBACK} 255.255.255.255\n")
        out, err, code = await run_connect(self, "--routes", conf, OTHER_LOOPBACK, str(web.port),
                                           stdin=http_get(OTHER_LOOPBACK), close_stdin="after-output")
        self.assertEqual((code, err), (0, ""))
        web.check(self, out)

    @async_test
    async def test_end_of_input_is_a_half_close_and_the_answer_still_arrives(self):
        dest = await listen(self, ReadAllThenAnswer, interface=OTHER_LOOPBACK)
        proxy = await start_server(self)
        data = os.urandom(300 * 1024)
        out, err, code = await run_connect(self, "--proxy", f"127.0.0.1:{support.port_of(proxy)}",
                                           OTHER_LOOPBACK, str(dest.getHost().port), stdin=data)
        self.assertEqual((code, err), (0, ""))
        self.assertEqual(out, b"%d %s" % (len(data), hashlib.sha256(data).hexdigest().encode()))

    @async_test
    async def test_the_destinations_eof_closes_stdout_while_input_still_flows(self):
        factory = protocol.Factory.forProtocol(GreetAndHalfClose)
        factory.received = defer.Deferred()
        dest = await listen(self, factory, interface=OTHER_LOOPBACK)
        proxy = await start_server(self)
        child = spawn(self, [*SOCKSSUITE, "connect", "--proxy", f"127.0.0.1:{support.port_of(proxy)}",
                             OTHER_LOOPBACK, str(dest.getHost().port)])
        await until(lambda: child.stdout_ended, "stdout closed after the destination's EOF")
        self.assertEqual(bytes(child.out), b"hello, then EOF\n")
        self.assertFalse(child.ended.called)
        child.transport.write(b"still sending after your EOF")
        child.transport.closeStdin()
        self.assertEqual(await factory.received, b"still sending after your EOF")
        self.assertEqual(await child.ended, 0)

    @async_test
    async def test_a_connection_reset_mid_session_exits_1(self):
        class SayAndReset(protocol.Protocol):
            def connectionMade(self):
                self.transport.write(b"partial answer")
                # Reset once the answer has surely been read (data still
                # queued when a reset arrives may be thrown away).
                self.timer = reactor.callLater(0.5, self.transport.abortConnection)

            def connectionLost(self, reason):
                if self.timer.active():
                    self.timer.cancel()

        dest = await listen(self, protocol.Factory.forProtocol(SayAndReset), interface=OTHER_LOOPBACK)
        conf = write_file(self, "socks.conf", "direct ALL 0.0.0.0\n")
        out, err, code = await run_connect(self, "--routes", conf, OTHER_LOOPBACK, str(dest.getHost().port),
                                           close_stdin="never")
        self.assertEqual((code, out), (1, b"partial answer"))
        self.assertEqual(err, f"sockssuite connect: connection to {OTHER_LOOPBACK}:{dest.getHost().port} lost\n")

    @async_test
    async def test_a_deny_line_exits_1_naming_the_line(self):
        conf = write_file(self, "socks.conf", f"# first\ndeny {OTHER_LOOPBACK} 255.255.255.255 eq 80\n")
        out, err, code = await run_connect(self, "--routes", conf, OTHER_LOOPBACK, "80")
        self.assertEqual((code, out), (1, b""))
        self.assertEqual(err, f"sockssuite connect: socks.conf denies {OTHER_LOOPBACK}:80: "
                              f"line 2: deny {OTHER_LOOPBACK} 255.255.255.255 eq 80\n")

    @async_test
    async def test_no_matching_line_exits_1(self):
        conf = write_file(self, "socks.conf", "direct 10.0.0.0 255.0.0.0\n")
        out, err, code = await run_connect(self, "--routes", conf, OTHER_LOOPBACK, "80")
        self.assertEqual(code, 1)
        self.assertEqual(err.count("\n"), 1)
        self.assertIn(f"socks.conf denies {OTHER_LOOPBACK}:80: no line of {conf} matches", err)

    @async_test
    async def test_a_refused_direct_connection_exits_1(self):
        dead = await closed_port(self)
        out, err, code = await run_connect(self, "--routes", write_file(self, "socks.conf", "direct ALL 0.0.0.0\n"),
                                           "127.0.0.1", str(dead))
        self.assertEqual(code, 1)
        self.assertEqual(err, f"sockssuite connect: connection to 127.0.0.1:{dead} refused\n")

    @async_test
    async def test_a_socks_refusal_exits_1_with_the_reply_code(self):
        proxy = await start_server(self, "deny 0.0.0.0 0.0.0.0\n")
        out, err, code = await run_connect(self, "--proxy", f"127.0.0.1:{support.port_of(proxy)}",
                                           OTHER_LOOPBACK, "80")
        self.assertEqual(code, 1)
        self.assertEqual(err, f"sockssuite connect: SOCKS server refused {OTHER_LOOPBACK}:80: "
                              "reply 91 (rejected or failed)\n")

    @async_test
    async def test_no_reachable_server_exits_1_listing_the_attempts(self):
        dead1, dead2 = await closed_port(self), await closed_port(self)
        conf = write_file(self, "socks.conf", f"sockd @=127.0.0.1:{dead1},127.0.0.1:{dead2} 0.0.0.0 0.0.0.0\n")
        out, err, code = await run_connect(self, "--routes", conf, OTHER_LOOPBACK, "80")
        self.assertEqual(code, 1)
        self.assertEqual(err, f"sockssuite connect: no SOCKS server reachable for {OTHER_LOOPBACK}:80 (line 1): "
                              f"127.0.0.1:{dead1} refused the connection; "
                              f"127.0.0.1:{dead2} refused the connection\n")

    @async_test
    async def test_a_proxy_that_never_answers_times_out(self):
        hung = await listen(self, Silent)
        out, err, code = await run_connect(self, "--proxy", f"127.0.0.1:{hung.getHost().port}", "--timeout", "0.5",
                                           OTHER_LOOPBACK, "80", close_stdin="never")
        self.assertEqual(code, 1)
        self.assertEqual(err, f"sockssuite connect: connection to {OTHER_LOOPBACK}:80 timed out after 0.5s\n")

    @async_test
    async def test_a_broken_socks_conf_exits_2_with_file_line_column(self):
        conf = write_file(self, "socks.conf", "direct 0.0.0.0 0.0.0.0\nsockd @=a:0 0.0.0.0 0.0.0.0\n")
        out, err, code = await run_connect(self, "--routes", conf, OTHER_LOOPBACK, "80")
        self.assertEqual(code, 2)
        self.assertEqual(err, f"sockssuite connect: {conf}:2:9: invalid server 'a:0': "
                              "port '0' out of range (1..65535)\n")

    @async_test
    async def test_usage_errors_exit_2(self):
        for args, message in [(["--proxy", "h:0", "127.0.0.2", "80"], "--proxy: "),
                              (["127.0.0.2", "http-nonsense"], "invalid port"),
                              (["--routes", "/nonexistent/socks.conf", "127.0.0.2", "80"], "cannot read socks.conf")]:
            out, err, code = await run_connect(self, *args)
            self.assertEqual(code, 2, args)
            self.assertIn(message, err)
        out, err, code = await run_connect(self, "--routes", "x", "--proxy", "y", "h", "1")
        self.assertEqual(code, 2)
        self.assertIn("not allowed with argument", err)


class ConnectSOCKS5Tests(TestCase):
    """``connect`` through servers written socks5://, with credentials from
    the environment (Dante's variables)."""

    async def socks5_server(self, rules="permit *=alice 127.0.0.0 255.0.0.0\npermit *=alice 127.0.0.0/8 ::/0\n"):
        return await start_server(self, rules, passwords=password_file(), require_auth=True, socks_versions=(5,))

    @async_test
    async def test_http_get_through_a_socks5_line_with_the_password_from_the_environment(self):
        logs = LogCapture(self)
        web = await WebServer(self).start()
        proxy = await self.socks5_server()
        dead = await closed_port(self)
        conf = write_file(self, "socks.conf", f"sockd @=socks5://127.0.0.1:{dead},socks5://127.0.0.1:"
                                              f"{support.port_of(proxy)} 0.0.0.0 0.0.0.0\n")
        out, err, code = await run_connect(self, "--routes", conf, OTHER_LOOPBACK, str(web.port),
                                           stdin=http_get(OTHER_LOOPBACK), close_stdin="after-output",
                                           env=child_env(SOCKS_USERNAME="alice", SOCKS_PASSWORD="wonderland"))
        self.assertEqual((code, err), (0, ""))
        web.check(self, out)
        [event] = await logs.wait_for("session-closed")
        self.assertEqual((event["user"], event["requested"]), ("alice", OTHER_LOOPBACK))

    @async_test
    async def test_an_explicit_socks5_proxy_to_an_ipv6_destination(self):
        dest = await listen(self, ReadAllThenAnswer, interface="::1")
        proxy = await self.socks5_server()
        data = os.urandom(100 * 1024)
        out, err, code = await run_connect(self, "--proxy", f"socks5://127.0.0.1:{support.port_of(proxy)}",
                                           "--user", "alice", "::1", str(dest.getHost().port), stdin=data,
                                           env=child_env(SOCKS5_PASSWD="wonderland"))
        self.assertEqual((code, err), (0, ""))
        self.assertEqual(out, b"%d %s" % (len(data), hashlib.sha256(data).hexdigest().encode()))

    @async_test
    async def test_authentication_failures_exit_1_saying_what_to_do(self):
        proxy = await self.socks5_server()
        where = f"{OTHER_LOOPBACK}:80"
        out, err, code = await run_connect(self, "--proxy", f"socks5://127.0.0.1:{support.port_of(proxy)}",
                                           OTHER_LOOPBACK, "80")
        self.assertEqual((code, out), (1, b""))
        self.assertEqual(err, f"sockssuite connect: SOCKS5 server refused {where}: it requires a user name and "
                              "password (set SOCKS_USERNAME and SOCKS_PASSWORD)\n")
        out, err, code = await run_connect(self, "--proxy", f"socks5://127.0.0.1:{support.port_of(proxy)}",
                                           OTHER_LOOPBACK, "80",
                                           env=child_env(SOCKS_USERNAME="alice", SOCKS_PASSWORD="hunter2"))
        self.assertEqual(code, 1)
        self.assertEqual(err, f"sockssuite connect: SOCKS5 server refused {where}: wrong user name or password "
                              "(user 'alice')\n")

    @async_test
    async def test_a_socks5_refusal_exits_1_with_the_reply_code(self):
        proxy = await self.socks5_server("deny 0.0.0.0 0.0.0.0\n")
        conf = write_file(self, "socks.conf", f"sockd @=socks5://127.0.0.1:{support.port_of(proxy)} 0.0.0.0 0.0.0.0\n")
        out, err, code = await run_connect(self, "--routes", conf, OTHER_LOOPBACK, "80",
                                           env=child_env(SOCKS_USERNAME="alice", SOCKS_PASSWORD="wonderland"))
        self.assertEqual(code, 1)
        self.assertEqual(err, f"sockssuite connect: SOCKS5 server refused {OTHER_LOOPBACK}:80: "
                              "reply 2 (not allowed by the server's rules)\n")


class RouteCommandTests(SynchronousTestCase):
    def run_route(self, conf_text, *args, env=None):
        folder = tempfile.mkdtemp(prefix="sockssuite-test-")
        self.addCleanup(shutil.rmtree, folder, True)
        conf = os.path.join(folder, "socks.conf")
        with open(conf, "w") as f:
            f.write(conf_text)
        result = subprocess.run([*SOCKSSUITE, "route", "--routes", conf, *args], capture_output=True,
                                text=True, env=env or no_dns_env(self), cwd=ROOT, timeout=60)
        return result.stdout, result.stderr, result.returncode

    CONF = ("# routes\n"
            "direct 127.0.0.0 255.255.0.0\n"
            "deny *=guest 0.0.0.0 0.0.0.0\n"
            "sockd @=127.0.0.7,localhost:1081,nowhere.invalid 0.0.0.0 0.0.0.0 eq telnet : /bin/echo %u\n"
            "sockd 0.0.0.0 0.0.0.0\n")

    def test_a_sockd_decision_lists_the_servers_in_the_order_tried(self):
        out, err, code = self.run_route(self.CONF, "--user", "alice", "127.1.0.1", "telnet")
        self.assertEqual((code, err), (0, ""))
        self.assertEqual(out.splitlines(), [
            "Line 4: sockd @=127.0.0.7,localhost:1081,nowhere.invalid 0.0.0.0 0.0.0.0 eq telnet : /bin/echo %u",
            "Command (run by 'sockssuite connect' only with --allow-shell-commands): /bin/echo %u",
            "Route: through a SOCKS server; servers in the order tried:",
            "  1. 127.0.0.7:1080",
            "  2. localhost:1081 (127.0.0.1)",
            "  3. nowhere.invalid:1080 (does not resolve here: skipped)",
        ])

    def test_a_denied_connection_exits_1(self):
        out, err, code = self.run_route(self.CONF, "--user", "guest", "127.1.0.1", "80")
        self.assertEqual(code, 1)
        self.assertEqual(out.splitlines(), ["Line 3: deny *=guest 0.0.0.0 0.0.0.0", "Connection denied."])
        out, err, code = self.run_route("direct 10.0.0.0 255.0.0.0\n", "127.1.0.1", "80")
        self.assertEqual((code, out), (1, "*** No match with any line. Connection denied.\n"))

    def test_direct_lines_and_always_direct_addresses(self):
        out, err, code = self.run_route(self.CONF, "127.0.0.9", "80")
        self.assertEqual((code, out.splitlines()), (0, ["Line 2: direct 127.0.0.0 255.255.0.0",
                                                        "Route: direct (no SOCKS server)."]))
        out, err, code = self.run_route("deny 0.0.0.0 0.0.0.0\n", "localhost", "80")
        self.assertEqual(out.splitlines(), ["localhost resolves here to 127.0.0.1",
                                            "127.0.0.1 always goes direct.", "Route: direct (no SOCKS server)."])

    def test_socks_server_is_the_default_server(self):
        out, err, code = self.run_route("sockd @= 0.0.0.0 0.0.0.0\n", "127.1.0.1", "80",
                                        env=child_env(SOCKS_SERVER="127.0.0.8:1081"))
        self.assertEqual(out.splitlines()[-1], "  1. 127.0.0.8:1081")
        out, err, code = self.run_route("sockd 0.0.0.0 0.0.0.0\n", "127.1.0.1", "80",
                                        env=no_dns_env(self, SOCKS_SERVER="x:0"))
        self.assertEqual(code, 2)
        self.assertIn("sockssuite route: SOCKS_SERVER: invalid server 'x:0'", err)

    def test_socks5_servers_are_shown_with_their_version_and_credentials(self):
        conf = "sockd @=127.0.0.7,socks5://127.0.0.8:1081 0.0.0.0 0.0.0.0\nsockd @=socks5://[::1] ::/0\n"
        out, err, code = self.run_route(conf, "127.1.0.1", "80")
        self.assertEqual((code, err), (0, ""))
        self.assertEqual(out.splitlines()[1:], [
            "Route: through a SOCKS server; servers in the order tried:",
            "  1. 127.0.0.7:1080",
            "  2. socks5://127.0.0.8:1081",
            "SOCKS5 servers are offered no user name and password (set SOCKS_USERNAME and SOCKS_PASSWORD "
            "to offer them)."])
        out, err, code = self.run_route(conf, "--user", "bob", "127.1.0.1", "80",
                                        env=child_env(SOCKS_PASSWORD="secret"))
        self.assertEqual(out.splitlines()[-1],
                         "SOCKS5 servers are offered user name 'bob' and a password (from the environment).")
        self.assertNotIn("secret", out)
        out, err, code = self.run_route(conf, "::1", "80", env=no_dns_env(self, SOCKS_SERVER="socks5://127.0.0.9"))
        self.assertEqual(out.splitlines()[:3], ["Line 1: sockd @=127.0.0.7,socks5://127.0.0.8:1081 0.0.0.0 0.0.0.0",
                                                "Route: through a SOCKS server; servers in the order tried:",
                                                "  1. 127.0.0.7:1080 (SOCKS4 cannot carry an IPv6 destination: "
                                                "skipped)"])
        out, err, code = self.run_route("sockd 0.0.0.0 0.0.0.0\n", "127.1.0.1", "80",
                                        env=no_dns_env(self, SOCKS_SERVER="socks5://127.0.0.9"))
        self.assertEqual(out.splitlines()[2], "  1. socks5://127.0.0.9:1080")

    def test_a_name_that_is_not_resolved_matches_only_any_address_lines(self):
        out, err, code = self.run_route("direct 127.0.0.0 255.0.0.0\nsockd @=127.0.0.7 0.0.0.0 0.0.0.0\n",
                                        "--no-resolve", "localhost", "80")
        self.assertEqual(out.splitlines()[0], "Line 2: sockd @=127.0.0.7 0.0.0.0 0.0.0.0")


class CheckTests(SynchronousTestCase):
    def check(self, *args):
        result = subprocess.run([*SOCKSSUITE, "check", *args], capture_output=True, text=True,
                                env=child_env(), cwd=ROOT, timeout=60)
        return result.stdout, result.stderr, result.returncode

    def files(self, **contents):
        folder = tempfile.mkdtemp(prefix="sockssuite-test-")
        self.addCleanup(shutil.rmtree, folder, True)
        paths = {}
        for name, text in contents.items():
            paths[name] = os.path.join(folder, name.replace("_", "."))
            with open(paths[name], "w") as f:
                f.write(text)
        return paths

    def test_socks_conf_files_are_recognised_by_name(self):
        paths = self.files(socks_conf="sockd @=a,b 0.0.0.0 0.0.0.0\ndomain x\n",
                           office_socks_conf="direct 0.0.0.0 0.0.0.0\n")
        out, err, code = self.check(paths["socks_conf"], paths["office_socks_conf"])
        self.assertEqual(code, 0)
        self.assertEqual(out.splitlines(), [f"{paths['socks_conf']}: OK, 1 rule(s)",
                                            f"{paths['office_socks_conf']}: OK, 1 rule(s)"])
        self.assertIn(f"{paths['socks_conf']}:2:1: 'domain' lines belong to another vendor's", err)
        self.assertIn("(warning)", err)

    def test_errors_are_reported_as_file_line_column(self):
        paths = self.files(socks_conf="permit 0.0.0.0 0.0.0.0\nsockd @=a,,b 0.0.0.0 0.0.0.0\n")
        out, err, code = self.check(paths["socks_conf"])
        self.assertEqual(code, 1)
        self.assertEqual([line.split(": ")[0] for line in err.splitlines()],
                         [f"{paths['socks_conf']}:1:1", f"{paths['socks_conf']}:2:11"])

    def test_the_socks5_spelling_is_accepted_and_its_errors_located(self):
        paths = self.files(socks_conf="sockd @=socks5://a,b:1081 0.0.0.0 0.0.0.0\nsockd@socks5://[::1]:1 ::/0\n",
                           bad_socks_conf="sockd @=a,socks5h://b 0.0.0.0 0.0.0.0\n"
                                          "  sockd@socks5://u:S3cr3t@c 0.0.0.0 0.0.0.0\n")
        out, err, code = self.check(paths["socks_conf"])
        self.assertEqual((code, out, err), (0, f"{paths['socks_conf']}: OK, 2 rule(s)\n", ""))
        out, err, code = self.check(paths["bad_socks_conf"])
        self.assertEqual(code, 1)
        self.assertEqual([line.split(": ")[0] for line in err.splitlines()],
                         [f"{paths['bad_socks_conf']}:1:11", f"{paths['bad_socks_conf']}:2:9"])
        self.assertIn("unknown scheme 'socks5h://'", err)
        self.assertIn("do not belong in socks.conf", err)
        self.assertNotIn("S3cr3t", err)

    def test_the_format_can_be_forced_and_other_names_stay_sockd(self):
        paths = self.files(routes="sockd 0.0.0.0 0.0.0.0\n", sockd_conf="permit 127.0.0.0 255.0.0.0\n")
        out, err, code = self.check("--format", "socks", paths["routes"])
        self.assertEqual((code, out), (0, f"{paths['routes']}: OK, 1 rule(s)\n"))
        out, err, code = self.check(paths["sockd_conf"])
        self.assertEqual((code, out), (0, f"{paths['sockd_conf']}: OK, 1 rule(s)\n"))
        out, err, code = self.check(paths["routes"])
        self.assertEqual(code, 1)
        self.assertIn("'sockd' belongs in socks.conf", err)

