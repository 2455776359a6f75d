"""Real SOCKS clients through the real service, over loopback sockets only.

* curl (``-x socks4://`` and ``socks4a://``, user name in the proxy URL), run as a
  child process with ``getProcessOutputAndValue`` so the reactor keeps serving;
* PySocks (``socks.socksocket``) and python-socks (``python_socks.sync``): both
  block, so they run in the reactor's thread pool (``deferToThread``).

Every client downloads the same file from a twisted.web static server started
in the test and the SHA-256 of the body is compared with the file's.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import warnings

from twisted.internet import defer, threads
from twisted.internet.utils import getProcessOutputAndValue
from twisted.protocols.policies import WrappingFactory
from twisted.trial.unittest import SkipTest, TestCase

with warnings.catch_warnings():
    # twisted.web.static builds its own deprecated error pages at import time.
    warnings.simplefilter("ignore", DeprecationWarning)
    from twisted.web import server, static

from . import support
from .support import async_test
from .support import LogCapture, start_server

BLOB_SIZE = 200 * 1024
CURL_SOCKS_ERROR = 97  # CURLE_PROXY: the SOCKS server refused (curl >= 7.73)


def temp_dir(testcase) -> str:
    """A fresh absolute folder removed at cleanup.  (trial's ``mktemp`` is
    relative to the current folder, which under pytest is the source tree.)"""
    path = tempfile.mkdtemp(prefix="sockssuite-test-")
    testcase.addCleanup(shutil.rmtree, path, True)
    return path


async def until(predicate, what, timeout=10.0):
    for _ in range(int(timeout / 0.01)):
        if predicate():
            return
        await support.deferLater(0.01)
    raise AssertionError(f"{what}: not within {timeout}s")


class WebServer:
    """A twisted.web static server on 127.0.0.1:<free port> serving ``/blob.bin``
    (random bytes).  At cleanup it waits until every connection to it has
    closed, so no socket or timer outlives the test."""

    def __init__(self, testcase, size=BLOB_SIZE):
        self.testcase = testcase
        folder = temp_dir(testcase)
        self.blob = os.urandom(size)
        self.sha256 = hashlib.sha256(self.blob).hexdigest()
        with open(os.path.join(folder, "blob.bin"), "wb") as f:
            f.write(self.blob)
        site = server.Site(static.File(os.path.abspath(folder)))
        site.noisy = False
        self.factory = WrappingFactory(site)
        self.factory.noisy = False

    async def start(self):
        self.port = (await support.listen(self.testcase, self.factory)).getHost().port
        # Registered after listen(): runs before stopListening (cleanups are LIFO),
        # and after the proxy's own cleanup when the proxy is started later.
        self.testcase.addCleanup(self.drained)
        return self

    def url(self, host="127.0.0.1", path="/blob.bin"):
        return f"http://{host}:{self.port}{path}"

    def drained(self):
        return defer.ensureDeferred(
            until(lambda: not self.factory.protocols, "connections to the web server to close"))


async def web_then_proxy(testcase, rules=support.LOOPBACK_ONLY, **settings):
    """The web server first, then the proxy: at cleanup the proxy stops (its
    sessions are closed) before the web server is waited for."""
    web = await WebServer(testcase).start()
    proxy = await start_server(testcase, rules, **settings)
    return web, support.port_of(proxy)


def _body_and_head(data: bytes):
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        raise AssertionError(f"no HTTP header end in {data[:200]!r}")
    return head, body


def _check_http_200(testcase, head: bytes, body: bytes, web: WebServer):
    status = head.split(b"\r\n", 1)[0]
    testcase.assertIn(b" 200 ", status + b" ")
    testcase.assertEqual(len(body), len(web.blob))
    testcase.assertEqual(hashlib.sha256(body).hexdigest(), web.sha256)


# -- curl ---------------------------------------------------------------------

_CURL = shutil.which("curl")


def require_curl():
    if _CURL is None:
        raise SkipTest("curl is not installed (apt-get install curl); these tests drive the real curl")


async def run_curl(*args):
    """curl's (stdout, stderr, exit code), never blocking the reactor.  ``-q``
    first ignores any .curlrc; the environment is reduced to PATH so that no
    *_proxy / NO_PROXY variable changes where curl connects."""
    require_curl()
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    out, err, code = await getProcessOutputAndValue(
        _CURL, ["-q", "--silent", "--show-error", "--max-time", "30", *args], env=env)
    return out, err, code


class CurlTests(TestCase):
    @async_test
    async def test_socks4_download_is_byte_exact(self):
        logs = LogCapture(self)
        web, proxy = await web_then_proxy(self)
        out, err, code = await run_curl("--fail", "-x", f"socks4://127.0.0.1:{proxy}", web.url())
        self.assertEqual(code, 0, err)
        self.assertEqual(len(out), BLOB_SIZE)
        self.assertEqual(hashlib.sha256(out).hexdigest(), web.sha256)
        [event] = await logs.wait_for("session-closed")
        self.assertEqual(event["outcome"], "closed")
        self.assertEqual(event["requested"], "127.0.0.1")
        self.assertEqual(event["port"], web.port)
        self.assertEqual(event["user"], "")
        self.assertEqual(event["rule_line"], 1)
        self.assertGreater(event["bytes_down"], BLOB_SIZE)  # body plus the response header
        self.assertGreater(event["bytes_up"], 0)

    @async_test
    async def test_socks4a_name_is_resolved_by_the_proxy(self):
        logs = LogCapture(self)
        web, proxy = await web_then_proxy(self)
        out, err, code = await run_curl("--fail", "-x", f"socks4a://127.0.0.1:{proxy}",
                                        web.url(host="localhost"))
        self.assertEqual(code, 0, err)
        self.assertEqual(hashlib.sha256(out).hexdigest(), web.sha256)
        [event] = await logs.wait_for("session-closed")
        self.assertEqual(event["requested"], "localhost")
        self.assertEqual(event["resolved"], "127.0.0.1")
        self.assertEqual(event["outcome"], "closed")

    @async_test
    async def test_user_name_in_the_proxy_url_is_the_socks_userid(self):
        logs = LogCapture(self)
        web, proxy = await web_then_proxy(self)
        out, err, code = await run_curl("--fail", "-x", f"socks4://alice@127.0.0.1:{proxy}", web.url())
        self.assertEqual(code, 0, err)
        self.assertEqual(hashlib.sha256(out).hexdigest(), web.sha256)
        out, err, code = await run_curl("--fail", "-x", f"socks4a://bob@127.0.0.1:{proxy}",
                                        web.url(host="localhost"))
        self.assertEqual(code, 0, err)
        events = await logs.wait_for("session-closed", 2)
        self.assertEqual([e["user"] for e in events], ["alice", "bob"])
        self.assertEqual([e["outcome"] for e in events], ["closed", "closed"])

    @async_test
    async def test_user_list_rule_lets_only_the_listed_user_through(self):
        logs = LogCapture(self)
        web, proxy = await web_then_proxy(self, "permit *=alice,carol 127.0.0.0 255.0.0.0\n")
        out, err, code = await run_curl("--fail", "-x", f"socks4://carol@127.0.0.1:{proxy}", web.url())
        self.assertEqual(code, 0, err)
        self.assertEqual(hashlib.sha256(out).hexdigest(), web.sha256)
        out, err, code = await run_curl("--fail", "-x", f"socks4://mallory@127.0.0.1:{proxy}", web.url())
        self.assertEqual(code, CURL_SOCKS_ERROR, err)
        [denied] = await logs.wait_for("denied")
        self.assertEqual(denied["user"], "mallory")
        self.assertEqual(denied["reason"], "no line matched")
        self.assertIsNone(denied["rule_line"])

    @async_test
    async def test_denied_destination_fails_curl_with_its_socks_error(self):
        logs = LogCapture(self)
        web = await WebServer(self).start()
        rules = ("# the web server's port is off limits\n"
                 "permit 127.0.0.0 255.0.0.0 127.0.0.1 255.255.255.255 eq 7\n"
                 f"deny 127.0.0.0 255.0.0.0 127.0.0.1 255.255.255.255 eq {web.port}\n"
                 "permit 127.0.0.0 255.0.0.0\n")
        proxy = support.port_of(await start_server(self, rules))
        for scheme, host in (("socks4", "127.0.0.1"), ("socks4a", "localhost")):
            out, err, code = await run_curl("-x", f"{scheme}://eve@127.0.0.1:{proxy}", web.url(host=host))
            self.assertEqual(code, CURL_SOCKS_ERROR, f"{scheme}: {err!r}")
            self.assertEqual(out, b"")
            self.assertIn(b"91", err)  # curl names the SOCKS4 reply code
        denials = await logs.wait_for("denied", 2)
        for denied in denials:
            self.assertEqual(denied["rule_line"], 3)
            self.assertEqual(denied["reason"], "denied by line 3")
            self.assertEqual(denied["rule"], f"deny 127.0.0.0 255.0.0.0 127.0.0.1 255.255.255.255 eq {web.port}")
            self.assertEqual(denied["user"], "eve")
            self.assertEqual(denied["port"], web.port)
        self.assertEqual([d["requested"] for d in denials], ["127.0.0.1", "localhost"])
        closed = await logs.wait_for("session-closed", 2)
        self.assertEqual({e["outcome"] for e in closed}, {"denied"})
        self.assertEqual(len(web.factory.protocols), 0, "a denied request reached the web server")

    @async_test
    async def test_parallel_downloads_are_each_byte_exact(self):
        require_curl()  # before gatherResults, which would wrap the SkipTest
        logs = LogCapture(self)
        web, proxy = await web_then_proxy(self)
        runs = [run_curl("--fail", "-x", f"socks4a://u{i}@127.0.0.1:{proxy}", web.url(host="localhost"))
                for i in range(6)]
        results = await defer.gatherResults([defer.ensureDeferred(r) for r in runs], consumeErrors=True)
        for out, err, code in results:
            self.assertEqual(code, 0, err)
            self.assertEqual(hashlib.sha256(out).hexdigest(), web.sha256)
        events = await logs.wait_for("session-closed", 6)
        self.assertEqual(sorted(e["user"] for e in events), [f"u{i}" for i in range(6)])
        self.assertEqual({e["outcome"] for e in events}, {"closed"})


# -- PySocks ------------------------------------------------------------------

def _http_get_over(sock, host_header: str, path="/blob.bin"):
    """A blocking HTTP/1.0 GET on an already connected socket; (head, body)."""
    try:
        sock.sendall(f"GET {path} HTTP/1.0\r\nHost: {host_header}\r\n\r\n".encode())
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        sock.close()
    return _body_and_head(b"".join(chunks))


def _pysocks_fetch(proxy_port, host, port, rdns, username=None):
    import socks
    sock = socks.socksocket()
    sock.settimeout(30)
    sock.set_proxy(socks.SOCKS4, "127.0.0.1", proxy_port, rdns=rdns, username=username)
    try:
        sock.connect((host, port))
    except BaseException:
        sock.close()
        raise
    return _http_get_over(sock, f"{host}:{port}")


class PySocksTests(TestCase):
    @async_test
    async def test_rdns_true_lets_the_proxy_resolve_the_name(self):
        logs = LogCapture(self)
        web, proxy = await web_then_proxy(self)
        head, body = await threads.deferToThread(_pysocks_fetch, proxy, "localhost", web.port, True)
        _check_http_200(self, head, body, web)
        [event] = await logs.wait_for("session-closed")
        self.assertEqual(event["requested"], "localhost")  # a SOCKS4a request
        self.assertEqual(event["resolved"], "127.0.0.1")

    @async_test
    async def test_rdns_false_resolves_locally_and_sends_plain_socks4(self):
        logs = LogCapture(self)
        web, proxy = await web_then_proxy(self)
        head, body = await threads.deferToThread(_pysocks_fetch, proxy, "localhost", web.port, False)
        _check_http_200(self, head, body, web)
        [event] = await logs.wait_for("session-closed")
        self.assertEqual(event["requested"], "127.0.0.1")

    @async_test
    async def test_username_becomes_the_userid(self):
        logs = LogCapture(self)
        web, proxy = await web_then_proxy(self)
        head, body = await threads.deferToThread(_pysocks_fetch, proxy, "127.0.0.1", web.port, False,
                                                 "dave")
        _check_http_200(self, head, body, web)
        [event] = await logs.wait_for("session-closed")
        self.assertEqual(event["user"], "dave")

    @async_test
    async def test_denied_request_raises_the_91_error(self):
        import socks
        logs = LogCapture(self)
        web, proxy = await web_then_proxy(self, "deny 0.0.0.0 0.0.0.0\n")
        for rdns, host in ((False, "127.0.0.1"), (True, "localhost")):
            d = threads.deferToThread(_pysocks_fetch, proxy, host, web.port, rdns)
            error = await self.assertFailure(d, socks.ProxyError)
            self.assertIn("0x5b", str(error).lower())
        denials = await logs.wait_for("denied", 2)
        self.assertEqual([d["rule_line"] for d in denials], [1, 1])


# -- python-socks -------------------------------------------------------------

def _python_socks_fetch(url, host, port, **kwargs):
    from python_socks.sync import Proxy
    proxy = Proxy.from_url(url, **kwargs)
    sock = proxy.connect(dest_host=host, dest_port=port, timeout=30)
    sock.settimeout(30)
    return _http_get_over(sock, f"{host}:{port}")


class PythonSocksTests(TestCase):
    @async_test
    async def test_socks4_url_fetches_the_page(self):
        logs = LogCapture(self)
        web, proxy = await web_then_proxy(self)
        head, body = await threads.deferToThread(
            _python_socks_fetch, f"socks4://127.0.0.1:{proxy}", "127.0.0.1", web.port)
        _check_http_200(self, head, body, web)
        [event] = await logs.wait_for("session-closed")
        self.assertEqual(event["requested"], "127.0.0.1")
        self.assertEqual(event["outcome"], "closed")

    @async_test
    async def test_user_in_the_url_and_remote_resolution(self):
        logs = LogCapture(self)
        web, proxy = await web_then_proxy(self)
        # python-socks 3.2's parse_proxy_url drops a user name that has no ":"
        # after it ("socks4://frank@..."), so the URL carries an empty password.
        head, body = await threads.deferToThread(
            _python_socks_fetch, f"socks4://frank:@127.0.0.1:{proxy}", "localhost", web.port, rdns=True)
        _check_http_200(self, head, body, web)
        [event] = await logs.wait_for("session-closed")
        self.assertEqual(event["user"], "frank")
        self.assertEqual(event["requested"], "localhost")
        self.assertEqual(event["resolved"], "127.0.0.1")

    @async_test
    async def test_denied_request_raises_proxy_error(self):
        from python_socks import ProxyError
        logs = LogCapture(self)
        web, proxy = await web_then_proxy(self, "permit 127.0.0.0 255.0.0.0 eq 7\n")
        d = threads.deferToThread(_python_socks_fetch, f"socks4://127.0.0.1:{proxy}",
                                  "127.0.0.1", web.port)
        await self.assertFailure(d, ProxyError)
        [denied] = await logs.wait_for("denied")
        self.assertEqual(denied["reason"], "no line matched")

    @async_test
    async def test_the_reactor_keeps_serving_while_a_blocking_client_waits(self):
        # A blocking client in a thread holds its connection open mid-request;
        # meanwhile curl-free, in-reactor clients are served by the same proxy.
        web, proxy = await web_then_proxy(self)
        echo = await support.listen(self, support.Echo)

        def half_request():
            from python_socks.sync import Proxy
            sock = Proxy.from_url(f"socks4://127.0.0.1:{proxy}").connect(
                dest_host="127.0.0.1", dest_port=web.port, timeout=30)
            sock.settimeout(30)
            return sock

        sock = await threads.deferToThread(half_request)
        try:
            for i in range(3):
                client, reply = await support.socks_connect(proxy, "127.0.0.1", echo.getHost().port)
                client.transport.write(b"ping%d" % i)
                self.assertEqual(await client.wait_bytes(5), b"ping%d" % i)
                client.transport.loseConnection()
                await client.closed
            head, body = await threads.deferToThread(_http_get_over, sock, f"127.0.0.1:{web.port}")
        finally:
            sock.close()
        _check_http_200(self, head, body, web)

