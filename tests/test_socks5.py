"""SOCKS5 on the same port as SOCKS4, under the same sockd.conf: curl with
socks5:// and socks5h:// (with and without a user name and password),
python-socks, the refusal paths, and --require-auth refusing SOCKS4."""

import os
import shutil
import tempfile

from twisted.internet import threads, utils
from twisted.trial.unittest import SkipTest, TestCase

from sockssuite import passwords
from sockssuite.wire import socks4
from sockssuite.wire import socks5 as wire

from . import support
from .support import Echo, LogCapture, connect_raw, listen, socks_connect, start_server
from .test_server import async_test

_PASSWORD_FILE = None


def password_file():
    """A password file with alice:wonderland (bcrypt at low cost, made once)."""
    global _PASSWORD_FILE
    if _PASSWORD_FILE is None:
        folder = tempfile.mkdtemp()
        path = os.path.join(folder, "passwords")
        passwords.set_password(path, "alice", b"wonderland", rounds=4)
        _PASSWORD_FILE = passwords.load_passwords(path)
    return _PASSWORD_FILE


class CurlTests(TestCase):
    def setUp(self):
        if not shutil.which("curl"):
            raise SkipTest("needs curl (.ci/run installs it)")

    async def web(self):
        from twisted.web import resource, server, static
        root = resource.Resource()
        root.putChild(b"hello", static.Data(b"hello over socks5", "text/plain"))
        return await listen(self, server.Site(root))

    async def curl(self, *args):
        out, err, code = await utils.getProcessOutputAndValue(shutil.which("curl"), ["-s", *args],
                                                              env=os.environ.copy())
        return code, out

    @async_test
    async def test_socks5_and_socks5h_through_the_same_port_as_socks4(self):
        logs = LogCapture(self)
        web = await self.web()
        server = await start_server(self)
        port = support.port_of(server)
        for scheme, host in (("socks5", "127.0.0.1"), ("socks5h", "localhost"), ("socks4a", "localhost")):
            code, out = await self.curl("-x", f"{scheme}://127.0.0.1:{port}",
                                        f"http://{host}:{web.getHost().port}/hello")
            self.assertEqual((code, out), (0, b"hello over socks5"), scheme)
        events = await logs.wait_for("session-closed", 3)
        self.assertEqual([e["requested"] for e in events], ["127.0.0.1", "localhost", "localhost"])

    @async_test
    async def test_user_and_password_and_the_user_lists_see_the_name(self):
        logs = LogCapture(self)
        web = await self.web()
        server = await start_server(self, "deny *=mallory 0.0.0.0 0.0.0.0\npermit *=alice 127.0.0.0 255.0.0.0\n",
                                    passwords=password_file(), require_auth=True)
        port = support.port_of(server)
        url = f"http://127.0.0.1:{web.getHost().port}/hello"
        code, out = await self.curl("-x", f"socks5h://127.0.0.1:{port}", "-U", "alice:wonderland", url)
        self.assertEqual((code, out), (0, b"hello over socks5"))
        [event] = await logs.wait_for("session-closed")
        self.assertEqual((event["user"], event["rule_line"]), ("alice", 2))
        code, out = await self.curl("-x", f"socks5h://127.0.0.1:{port}", "-U", "alice:hunter2", url)
        self.assertEqual(code, 97)
        events = await logs.wait_for("session-closed", 2)
        self.assertEqual(events[1]["outcome"], "auth-failed")
        self.assertNotIn("hunter2", str(events[1]))  # no password in the log
        self.assertIn("alice", events[1]["detail"])
        code, out = await self.curl("-x", f"socks5h://127.0.0.1:{port}", url)  # offers only "no auth"
        self.assertEqual(code, 97)
        code, out = await self.curl("-x", f"socks4://127.0.0.1:{port}", url)  # cannot authenticate
        self.assertEqual(code, 97)
        events = await logs.wait_for("session-closed", 4)
        self.assertEqual([e["outcome"] for e in events[2:]], ["auth-failed", "denied"])

    @async_test
    async def test_python_socks_client(self):
        web = await self.web()
        server = await start_server(self, passwords=password_file())
        port = support.port_of(server)

        def fetch():
            from python_socks.sync import Proxy
            proxy = Proxy.from_url(f"socks5://alice:wonderland@127.0.0.1:{port}")
            sock = proxy.connect(dest_host="127.0.0.1", dest_port=web.getHost().port, timeout=10)
            try:
                sock.sendall(b"GET /hello HTTP/1.0\r\nHost: x\r\n\r\n")
                data = b""
                while True:
                    chunk = sock.recv(65536)
                    if not chunk:
                        return data
                    data += chunk
            finally:
                sock.close()

        data = await threads.deferToThread(fetch)
        self.assertTrue(data.endswith(b"hello over socks5"), data[-100:])


class ProtocolTests(TestCase):
    async def greet(self, server, methods=b"\x00"):
        client = await connect_raw(support.port_of(server))
        client.transport.write(wire.encode_greeting(methods))
        await client.wait_bytes(2)
        return client

    @async_test
    async def test_denied_request_gets_reply_2_not_allowed(self):
        server = await start_server(self, "deny 0.0.0.0 0.0.0.0 127.0.0.1 255.255.255.255 eq 9\n"
                                          "permit 127.0.0.0 255.0.0.0\n")
        client = await self.greet(server)
        self.assertEqual(bytes(client.received), b"\x05\x00")
        client.transport.write(wire.encode_request(wire.CONNECT, "127.0.0.1", 9))
        await client.closed
        reply = wire.ReplyParser().feed(bytes(client.received[2:]))
        self.assertEqual(reply.code, wire.NOT_ALLOWED)

    @async_test
    async def test_refused_destination_gets_reply_5(self):
        server = await start_server(self)
        closed = await listen(self, Echo)
        port = closed.getHost().port
        await closed.stopListening()
        client = await self.greet(server)
        client.transport.write(wire.encode_request(wire.CONNECT, "127.0.0.1", port))
        await client.closed
        self.assertEqual(wire.ReplyParser().feed(bytes(client.received[2:])).code, wire.CONNECTION_REFUSED)

    @async_test
    async def test_granted_connect_relays_and_reports_the_bound_address(self):
        server = await start_server(self)
        echo = await listen(self, Echo)
        client = await self.greet(server)
        client.transport.write(wire.encode_request(wire.CONNECT, "127.0.0.1", echo.getHost().port) + b"early")
        data = await client.wait_bytes(2 + 10 + 5)
        reply = wire.ReplyParser().feed(data[2:12])
        self.assertEqual((reply.code, reply.host), (wire.SUCCEEDED, "127.0.0.1"))
        self.assertEqual(data[12:], b"early")
        client.transport.loseConnection()

    @async_test
    async def test_no_acceptable_method(self):
        server = await start_server(self)
        client = await self.greet(server, methods=b"\x01\x80")  # GSSAPI and a private one
        await client.closed
        self.assertEqual(bytes(client.received), b"\x05\xff")

    @async_test
    async def test_versions_can_be_restricted(self):
        echo = await listen(self, Echo)
        server = await start_server(self, socks_versions=(5,))
        client, reply = await socks_connect(support.port_of(server), "127.0.0.1", echo.getHost().port)
        self.assertEqual(reply.code, socks4.REJECTED)
        server = await start_server(self, socks_versions=(4,))
        client = await connect_raw(support.port_of(server))
        client.transport.write(wire.encode_greeting(b"\x00"))
        await client.closed
        self.assertEqual(bytes(client.received), socks4.encode_reply(socks4.REJECTED))


class VersionInTheLogTests(TestCase):
    @async_test
    async def test_session_closed_says_which_version(self):
        logs = LogCapture(self)
        echo = await listen(self, Echo)
        server = await start_server(self)
        port = support.port_of(server)
        client, reply = await socks_connect(port, "127.0.0.1", echo.getHost().port)
        client.transport.loseConnection()
        client = await connect_raw(port)
        client.transport.write(wire.encode_greeting(b"\x00") + wire.encode_request(wire.CONNECT, "127.0.0.1",
                                                                                    echo.getHost().port))
        await client.wait_bytes(12)
        client.transport.loseConnection()
        client = await connect_raw(port)
        client.transport.write(b"GET / HTTP/1.0\r\n\r\n")
        await client.closed
        events = await logs.wait_for("session-closed", 3)
        self.assertEqual(sorted((e["version"] is None, e["version"] or 0) for e in events),
                         [(False, 4), (False, 5), (True, 0)])
