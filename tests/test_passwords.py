"""The SOCKS5 password file: parse errors with line:col, checking, and
`sockssuite passwd` writing it."""

import io
import os
import shutil
import stat
import tempfile
from contextlib import redirect_stdout
from unittest import mock

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase, TestCase

from sockssuite import cli, passwords
from sockssuite.rulesyntax import ConfigError

from .test_real_clients import until
from .test_server import async_test


class PasswordFileTests(SynchronousTestCase):
    def setUp(self):
        self.folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.folder, True)
        self.path = os.path.join(self.folder, "passwords")

    def test_set_check_and_replace(self):
        passwords.set_password(self.path, "alice", b"one", rounds=4)
        passwords.set_password(self.path, "bob", b"two", rounds=4)
        passwords.set_password(self.path, "alice", b"three", rounds=4)
        table = passwords.load_passwords(self.path)
        self.assertEqual(sorted(table.users), [b"alice", b"bob"])
        self.assertTrue(table.check(b"alice", b"three"))
        self.assertFalse(table.check(b"alice", b"one"))
        self.assertFalse(table.check(b"nobody", b"three"))
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)

    def test_errors_name_line_and_column(self):
        with self.assertRaises(ConfigError) as caught:
            passwords.parse_passwords("# users\nalice\nbob:plaintext\n", "pw")
        self.assertEqual([str(p) for p in caught.exception.problems], [
            "pw:2:1: expected 'user:bcrypt-hash'",
            "pw:3:5: expected a bcrypt hash ($2b$...; make one with 'sockssuite passwd')",
        ])

    def test_passwd_command(self):
        with mock.patch("sys.stdin", io.StringIO("s3cret\n")), redirect_stdout(io.StringIO()):
            self.assertEqual(cli.main(["passwd", "--password-stdin", self.path, "carol"]), 0)
        self.assertTrue(passwords.load_passwords(self.path).check(b"carol", b"s3cret"))
        with open(self.path) as f:
            self.assertNotIn("s3cret", f.read())


class ServerPasswordTests(TestCase):
    """The server's side: checks off the reactor thread, reload on SIGHUP."""

    async def authenticate(self, port, user, password):
        from sockssuite.wire import socks5 as wire
        from .support import connect_raw
        client = await connect_raw(port)
        client.transport.write(wire.encode_greeting(b"\x02") + bytes([1, len(user)]) + user
                               + bytes([len(password)]) + password)
        data = await client.wait_bytes(4, timeout=15)
        client.transport.loseConnection()
        return bytes(data[:4])

    @async_test
    async def test_a_slow_check_does_not_stall_other_sessions(self):
        import threading
        from . import support
        entered, release = threading.Event(), threading.Event()

        class SlowPasswords:
            users = {b"alice": b""}
            filename = None

            def check(self, username, password):
                entered.set()
                release.wait(5)  # in the reactor thread, this would stall the test's sessions
                return password == b"right"

        echo = await support.listen(self, support.Echo)
        server = await support.start_server(self, passwords=SlowPasswords())
        port = support.port_of(server)
        pending = defer.ensureDeferred(self.authenticate(port, b"alice", b"right"))
        await until(entered.is_set, "the check to start", 5)
        client, reply = await support.socks_connect(port, "127.0.0.1", echo.getHost().port)
        self.assertEqual(reply.code, 90)
        client.transport.write(b"served meanwhile")
        self.assertEqual(bytes(await client.wait_bytes(16)), b"served meanwhile")
        self.assertFalse(pending.called)
        release.set()
        self.assertEqual(await pending, b"\x05\x02\x01\x00")  # method 2, then auth success
        client.transport.loseConnection()

    @async_test
    async def test_clients_that_reset_during_their_check_do_not_free_its_slot(self):
        # bcrypt cannot be stopped once it runs: a client that resets while
        # its check runs must not let another check start beside it, or a
        # client resetting in a loop gets the whole thread pool.
        import threading
        from . import support
        from sockssuite.wire import socks5 as wire
        release = threading.Event()
        self.addCleanup(release.set)
        lock = threading.Lock()
        running, most = [0], [0]

        class SlowPasswords:
            users = {b"alice": b""}
            filename = None

            def check(self, username, password):
                with lock:
                    running[0] += 1
                    most[0] = max(most[0], running[0])
                release.wait(10)
                with lock:
                    running[0] -= 1
                return True

        server = await support.start_server(self, passwords=SlowPasswords())
        port = support.port_of(server)
        for _ in range(6):
            client = await support.connect_raw(port)
            client.transport.write(wire.encode_greeting(b"\x02") + b"\x01\x05alice\x01x")
            await client.wait_bytes(2)  # the method reply: the credentials are in
            await support.deferLater(0.05)
            client.transport.abortConnection()
        await support.deferLater(0.3)
        self.assertEqual(most[0], 2)  # PASSWORD_CHECKS, though six clients came and went
        release.set()
        await until(lambda: running[0] == 0, "the checks to end", 5)
        await until(lambda: server.factory.password_waiting == 0, "the queue to empty", 5)
        # The slots come back once the checks are done.
        self.assertEqual(await self.authenticate(port, b"alice", b"x"), b"\x05\x02\x01\x00")

    @async_test
    async def test_user_lists_without_require_auth_get_a_warning(self):
        # A SOCKS4 USERID is a claim, not a login: with a password file, a
        # *= list that it can match deserves a word at start-up.
        from . import support
        from .support import LogCapture

        class Passwords:
            users = {b"alice": b""}
            filename = None

            def check(self, username, password):
                return False

        rules = "permit *=alice 127.0.0.0 255.0.0.0\n"
        for settings, warned in [({}, True), ({"require_auth": True}, False),
                                 ({"socks_versions": (5,)}, False)]:
            logs = LogCapture(self)
            await support.start_server(self, rules, passwords=Passwords(), **settings)
            self.assertEqual(len(logs.named("unauthenticated-names")), int(warned), settings)
        logs = LogCapture(self)
        await support.start_server(self, "permit 127.0.0.0 255.0.0.0\n", passwords=Passwords())
        self.assertEqual(logs.named("unauthenticated-names"), [])  # no user lists: nothing to say

    @async_test
    async def test_reload_reads_the_password_file_again(self):
        from . import support
        folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, folder, True)
        path = os.path.join(folder, "passwords")
        passwords.set_password(path, "alice", b"old", rounds=4)
        server = await support.start_server(self, passwords=passwords.load_passwords(path))
        port = support.port_of(server)
        self.assertEqual(await self.authenticate(port, b"alice", b"old"), b"\x05\x02\x01\x00")
        passwords.set_password(path, "alice", b"new", rounds=4)
        self.assertTrue(server.reload())
        self.assertEqual(await self.authenticate(port, b"alice", b"old"), b"\x05\x02\x01\x01")
        self.assertEqual(await self.authenticate(port, b"alice", b"new"), b"\x05\x02\x01\x00")
        with open(path, "a") as f:
            f.write("broken line\n")
        self.assertFalse(server.reload())  # logged; the users in force stay
        self.assertEqual(await self.authenticate(port, b"alice", b"new"), b"\x05\x02\x01\x00")

    @async_test
    async def test_a_flood_of_logins_is_bounded_and_does_not_starve_name_resolution(self):
        import threading
        from sockssuite import server as server_module
        from . import support
        self.patch(server_module, "PASSWORD_QUEUE", 3)
        release = threading.Event()
        self.addCleanup(release.set)
        running = []

        class SlowPasswords:
            users = {b"alice": b""}
            filename = None

            def check(self, username, password):
                running.append(1)
                release.wait(10)
                return True

        echo = await support.listen(self, support.Echo)
        server = await support.start_server(self, passwords=SlowPasswords())
        port = support.port_of(server)
        logins = [defer.ensureDeferred(self.authenticate(port, b"alice", b"x")) for _ in range(5)]
        await until(lambda: len(running) == 2 and sum(d.called for d in logins) == 2, "two checks running", 5)
        # The queue holds 3: the 4th and 5th are refused at once.
        self.assertEqual(sorted(d.result for d in logins if d.called), [b"\x05\x02\x01\x01"] * 2)
        self.assertEqual(len(running), 2)  # no more than PASSWORD_CHECKS at once
        # Names still resolve (the reactor's pool has threads left): SOCKS4a localhost.
        client, reply = await support.socks_connect(port, "localhost", echo.getHost().port, socks4a=True)
        self.assertEqual(reply.code, 90)
        client.transport.loseConnection()
        release.set()
        results = [await d for d in logins]
        self.assertEqual(results.count(b"\x05\x02\x01\x00"), 3)
