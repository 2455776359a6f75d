"""Two clients people really point at a SOCKS server, through the real service,
over loopback only.

* ncat (``--proxy-type socks5`` with and without ``--proxy-auth``, and
  ``socks4``, which becomes SOCKS4a for a name) carries random bytes to an
  echo server and back;
* headless Chromium (``--proxy-server=socks5://`` and ``socks4://``) loads a
  page whose marker must come out of ``--dump-dom``, and the proxy's session
  log must show the CONNECT that carried it.

Each server serves only the SOCKS version under test (``socks_versions``), so a
client that quietly fell back to the other version would fail, not pass.  The
rules permit loopback destinations only, and the server's resolver answers
``localhost`` alone: whatever else a client might try stays on this machine.
"""

from __future__ import annotations

import os
import shutil
import signal
import uuid
import warnings

from twisted.internet import defer, error, protocol, reactor
from twisted.trial.unittest import SkipTest, TestCase

with warnings.catch_warnings():
    # twisted.web.static builds its own deprecated error pages at import time.
    warnings.simplefilter("ignore", DeprecationWarning)
    from twisted.web import static

from . import support
from .support import Echo, LogCapture, listen, start_server
from .test_real_clients import WebServer, temp_dir, until
from .test_server import async_test
from .test_socks5 import password_file

#: Source and destination both on 127/8: nothing leaves the machine.
LOOPBACK_TO_LOOPBACK = "permit 127.0.0.0 255.0.0.0 127.0.0.0 255.0.0.0\n"

NCAT_TIMEOUT = 30.0
#: Chromium's start-up alone can take many seconds on a loaded CI machine.
CHROMIUM_TIMEOUT = 60.0


# -- child processes ------------------------------------------------------------

class _Collected(protocol.ProcessProtocol):
    """Feeds ``stdin`` then closes it; collects stdout and stderr."""

    def __init__(self, stdin: bytes):
        self.stdin = stdin
        self.out = bytearray()
        self.err = bytearray()
        self.ended = defer.Deferred()
        self.running = True

    def connectionMade(self):
        self.transport.write(self.stdin)
        self.transport.closeStdin()

    def outReceived(self, data):
        self.out += data

    def errReceived(self, data):
        self.err += data

    def processEnded(self, reason):
        self.running = False
        self.ended.callback(reason.value)

    def kill(self):
        if self.running:
            try:
                # The process group: Chromium's zygote and renderers go too.
                os.killpg(self.transport.pid, signal.SIGKILL)
            except (OSError, TypeError):
                try:
                    self.transport.signalProcess("KILL")
                except error.ProcessExitedAlready:
                    pass
        return self.ended


async def run_program(testcase, argv, timeout, stdin=b"", env=None):
    """Run ``argv`` as a child (its own session, so a kill reaches its
    children), never blocking the reactor; returns (stdout, stderr, exit code).
    Killed after ``timeout`` seconds (the test then fails) and at cleanup."""
    child = _Collected(stdin)
    setsid = shutil.which("setsid")
    # setsid(1) execs in place: the pid stays the child's, now a group leader.
    command = [setsid, *argv] if setsid else list(argv)
    if env is None:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    reactor.spawnProcess(child, command[0], command, env=env)
    testcase.addCleanup(child.kill)
    timer = reactor.callLater(timeout, child.kill)
    ended = await child.ended
    if not timer.active():
        raise AssertionError(f"{argv[0]} still running after {timeout}s, killed; stderr ends: "
                             f"{bytes(child.err[-2000:])!r}")
    timer.cancel()
    code = getattr(ended, "exitCode", None)
    if code is None:
        raise AssertionError(f"{argv[0]} ended by signal {getattr(ended, 'signal', '?')}; "
                             f"stderr ends: {bytes(child.err[-2000:])!r}")
    return bytes(child.out), bytes(child.err), code


class LocalhostOnlyResolver:
    """The reactor's resolver for ``localhost`` only; any other name fails at
    once, so no client can make the proxy look anything up elsewhere."""

    def __init__(self):
        self.asked = []

    def getHostByName(self, name, timeout=None):
        self.asked.append(name)
        if name.lower().rstrip(".") != "localhost":
            return defer.fail(error.DNSLookupError(f"{name}: only localhost in these tests"))
        return reactor.resolver.getHostByName(name, timeout)


async def loopback_proxy(testcase, **settings):
    """A started server that permits and resolves loopback destinations only."""
    server = await start_server(testcase, LOOPBACK_TO_LOOPBACK, **settings)
    server.factory.resolver = resolver = LocalhostOnlyResolver()
    return server, resolver


# -- ncat -----------------------------------------------------------------------

_NCAT = shutil.which("ncat")


class NcatTests(TestCase):
    """``ncat --proxy 127.0.0.1:PORT --proxy-type socks5|socks4 HOST PORT``:
    ncat copies its stdin to the destination, shuts its side down at EOF and
    prints what comes back until the destination closes."""

    def setUp(self):
        if _NCAT is None:
            raise SkipTest("ncat is not installed (apt-get install ncat); these tests drive the real ncat")

    async def ncat(self, proxy, proxy_type, host, port, data, *options):
        return await run_program(self, [_NCAT, "--proxy", f"127.0.0.1:{proxy}", "--proxy-type", proxy_type,
                                        *options, host, str(port)],
                                 timeout=NCAT_TIMEOUT, stdin=data)

    async def echo_round_trip(self, proxy_type, host, versions, *options, **settings):
        """Send 256 KiB of random bytes through ncat to an echo server; return
        the one session-closed event of it."""
        logs = LogCapture(self)
        echo = (await listen(self, Echo)).getHost().port
        server, resolver = await loopback_proxy(self, socks_versions=versions, **settings)
        proxy = support.port_of(server)
        data = os.urandom(256 * 1024)
        out, err, code = await self.ncat(proxy, proxy_type, host, echo, data, *options)
        self.assertEqual(code, 0, err)
        self.assertEqual(len(out), len(data))
        self.assertTrue(out == data, "the echoed bytes differ from the bytes sent")
        [event] = await logs.wait_for("session-closed")
        self.assertEqual((event["command"], event["port"], event["outcome"]), ("connect", echo, "closed"))
        self.assertEqual((event["bytes_up"], event["bytes_down"]), (len(data), len(data)))
        return event, resolver

    @async_test
    async def test_socks5_no_auth_echo_is_byte_exact(self):
        event, resolver = await self.echo_round_trip("socks5", "127.0.0.1", (5,))
        self.assertEqual(event["requested"], "127.0.0.1")
        self.assertEqual(resolver.asked, [])

    @async_test
    async def test_socks5_sends_the_name_for_the_proxy_to_resolve(self):
        # --proxy-dns remote is ncat's default; spelled out so the test says it.
        event, resolver = await self.echo_round_trip("socks5", "localhost", (5,), "--proxy-dns", "remote")
        self.assertEqual((event["requested"], event["resolved"]), ("localhost", "127.0.0.1"))
        self.assertEqual(resolver.asked, ["localhost"])

    @async_test
    async def test_socks5_user_and_password(self):
        event, resolver = await self.echo_round_trip("socks5", "127.0.0.1", (5,),
                                                     "--proxy-auth", "alice:wonderland",
                                                     passwords=password_file(), require_auth=True)
        self.assertEqual(event["user"], "alice")

    @async_test
    async def test_socks5_wrong_password_fails_and_the_log_keeps_no_password(self):
        logs = LogCapture(self)
        echo = await listen(self, Echo)
        server, resolver = await loopback_proxy(self, socks_versions=(5,), passwords=password_file(),
                                                require_auth=True)
        proxy = support.port_of(server)
        out, err, code = await self.ncat(proxy, "socks5", "127.0.0.1", echo.getHost().port,
                                         b"must not arrive", "--proxy-auth", "alice:hunter2")
        self.assertNotEqual(code, 0, err)
        self.assertEqual(out, b"")  # nothing was relayed
        [event] = await logs.wait_for("session-closed")
        self.assertEqual(event["outcome"], "auth-failed")
        self.assertIn("alice", event["detail"])
        for e in logs.events:
            self.assertNotIn("hunter2", repr(e))
        # The right password on the same server: the refusal was the password's.
        out, err, code = await self.ncat(proxy, "socks5", "127.0.0.1", echo.getHost().port,
                                         b"ping", "--proxy-auth", "alice:wonderland")
        self.assertEqual((code, out), (0, b"ping"), err)

    @async_test
    async def test_socks4_echo_is_byte_exact_and_the_user_is_the_userid(self):
        event, resolver = await self.echo_round_trip("socks4", "127.0.0.1", (4,), "--proxy-auth", "carol")
        self.assertEqual((event["requested"], event["user"]), ("127.0.0.1", "carol"))

    @async_test
    async def test_socks4_with_a_name_sends_socks4a(self):
        event, resolver = await self.echo_round_trip("socks4", "localhost", (4,))
        self.assertEqual((event["requested"], event["resolved"]), ("localhost", "127.0.0.1"))
        self.assertEqual(resolver.asked, ["localhost"])


# -- Chromium -------------------------------------------------------------------

_CHROMIUM = shutil.which("chromium")


class PageServer(WebServer):
    """The test web server plus ``/page.html``, a page with a marker made for
    this test (it is in no URL, so only the page itself can bring it)."""

    def __init__(self, testcase):
        super().__init__(testcase, size=0)
        self.marker = f"sockssuite-{uuid.uuid4().hex}"
        self.page = (f"<!doctype html><html><head><title>proxied</title></head>"
                     f"<body><p id=\"marker\">{self.marker}</p></body></html>").encode()
        self.factory.wrappedFactory.resource.putChild(b"page.html", static.Data(self.page, "text/html"))


class ChromiumTests(TestCase):
    """Headless Chromium with ``--proxy-server``.  Chromium never proxies
    loopback destinations unless told to: ``<-loopback>`` in the bypass list
    removes that implicit rule.  Three runs in all: Chromium is slow to start."""

    def setUp(self):
        if _CHROMIUM is None:
            raise SkipTest("chromium is not installed (apt-get install chromium); "
                           "these tests drive the real browser")

    async def dump_dom(self, proxy_url, page_url):
        home = temp_dir(self)  # profile, NSS db and caches: nothing lands in the real $HOME
        argv = [_CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", f"--user-data-dir={os.path.join(home, 'profile')}",
                f"--proxy-server={proxy_url}", "--proxy-bypass-list=<-loopback>",
                # Chromium resolves names itself for socks4://: only localhost may resolve.
                "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1",
                "--dump-dom", page_url]
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": home}
        return await run_program(self, argv, timeout=CHROMIUM_TIMEOUT, env=env)

    async def load_through_proxy(self, scheme, versions, host):
        """Load the page with Chromium through a proxy serving only SOCKS
        ``versions``; returns the sessions that carried it."""
        logs = LogCapture(self)
        web = PageServer(self)
        await web.start()
        server, _ = await loopback_proxy(self, socks_versions=versions)
        proxy = support.port_of(server)
        out, err, code = await self.dump_dom(f"{scheme}://127.0.0.1:{proxy}",
                                             web.url(host=host, path="/page.html"))
        self.assertEqual(code, 0, err[-2000:])
        self.assertIn(web.marker.encode(), out, err[-2000:])
        # Chromium has exited: its connections to the proxy are closed or closing.
        await until(lambda: not server.factory.sessions, "the proxy's sessions to end")
        events = logs.named("session-closed")
        carried = [e for e in events if e["port"] == web.port]
        self.assertTrue(carried, f"no session to the web server's port {web.port}: {events}")
        for e in carried:
            self.assertEqual(e["command"], "connect", e)
            # Chromium may abort a kept-alive connection as it exits (seen
            # about once in 50 runs): a reset then, but only ever its own.
            if e["outcome"] != "closed":
                self.assertEqual(e["outcome"], "reset", e)
                self.assertTrue(e["detail"].startswith("client:"), e)
        # The page came down through the proxy: its bytes plus the HTTP header.
        self.assertTrue(any(e["bytes_down"] > len(web.page) for e in carried), carried)
        # Chromium sends its own background requests (update.googleapis.com,
        # accounts.google.com, ... despite the flags) to the proxy too: none
        # of them may have got anywhere.
        for e in events:
            if e["port"] != web.port:
                self.assertIn(e["outcome"], ("resolve-failed", "denied", "client-gone"), e)
                self.assertEqual((e["engine"], e["bytes_up"], e["bytes_down"]), (None, 0, 0), e)
        return carried

    @async_test
    async def test_socks5_loads_a_loopback_page_through_the_proxy(self):
        carried = await self.load_through_proxy("socks5", (5,), "127.0.0.1")
        self.assertEqual({e["requested"] for e in carried}, {"127.0.0.1"})

    @async_test
    async def test_socks5_sends_the_host_name_to_the_proxy(self):
        carried = await self.load_through_proxy("socks5", (5,), "localhost")
        self.assertEqual({(e["requested"], e["resolved"]) for e in carried}, {("localhost", "127.0.0.1")})

    @async_test
    async def test_socks4_loads_a_loopback_page_through_the_proxy(self):
        carried = await self.load_through_proxy("socks4", (4,), "127.0.0.1")
        self.assertEqual({e["requested"] for e in carried}, {"127.0.0.1"})
