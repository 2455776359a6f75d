"""The service tree: names, reload (SIGHUP), graceful stop, picklable state."""

import os
import pickle
import signal
import tempfile

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from sockssuite import access, tap
from sockssuite.server import ServerSettings
from sockssuite.service import SockssuiteService, SOCKSServerService, TapVersionError
from sockssuite.wire import socks4

from . import support
from .support import Echo, LogCapture, listen, socks_connect
from .test_server import async_test


def write(path, text):
    with open(path, "w") as f:
        f.write(text)


class ReloadTests(TestCase):
    async def start(self, rules, **kw):
        kw.setdefault("shutdown_grace", 0)
        folder = tempfile.mkdtemp()
        self.addCleanup(__import__("shutil").rmtree, folder, True)
        self.path = os.path.join(folder, "sockd.conf")
        write(self.path, rules)
        service = SOCKSServerService(["tcp:0:interface=127.0.0.1"], access.load_access(self.path),
                                     ServerSettings(), access_path=self.path, **kw)
        root = SockssuiteService()
        service.setServiceParent(root)
        root.startService()
        await defer.gatherResults(service._listening)
        self.addCleanup(root.stopService)
        self.echo = await listen(self, Echo)
        return root, service

    async def ask(self, service):
        client, reply = await socks_connect(support.port_of(service), "127.0.0.1", self.echo.getHost().port)
        return client, reply.code

    @async_test
    async def test_reload_applies_new_rules_to_new_sessions_only(self):
        logs = LogCapture(self)
        root, service = await self.start("permit 127.0.0.0 255.0.0.0\n")
        in_flight, code = await self.ask(service)
        self.assertEqual(code, socks4.GRANTED)
        write(self.path, "# now closed\ndeny 0.0.0.0 0.0.0.0\n")
        self.assertTrue(root.reload())
        _, code = await self.ask(service)
        self.assertEqual(code, socks4.REJECTED)
        [reloaded] = logs.named("reloaded")
        self.assertEqual((reloaded["filename"], reloaded["count"]), (self.path, 1))
        in_flight.transport.write(b"still relayed")
        self.assertEqual(await in_flight.wait_bytes(13), b"still relayed")

    @async_test
    async def test_broken_file_keeps_the_old_rules_and_logs_where(self):
        logs = LogCapture(self)
        root, service = await self.start("permit 127.0.0.0 255.0.0.0\n")
        write(self.path, "permit 127.0.0.0\nallow everything\n")
        self.assertFalse(root.reload())
        _, code = await self.ask(service)
        self.assertEqual(code, socks4.GRANTED)
        [failed] = logs.named("reload-failed")
        self.assertIn(f"{self.path}:1:", failed["problems"])
        self.assertIn(f"{self.path}:2:1:", failed["problems"])

    @async_test
    async def test_sighup_reloads(self):
        logs = LogCapture(self)
        root, service = await self.start("permit 127.0.0.0 255.0.0.0\n")
        write(self.path, "deny 0.0.0.0 0.0.0.0\n")
        os.kill(os.getpid(), signal.SIGHUP)
        await logs.wait_for("reloaded")
        _, code = await self.ask(service)
        self.assertEqual(code, socks4.REJECTED)

    def test_a_reload_that_raises_does_not_stop_the_other_reloads(self):
        from twisted.application import service as app_service
        logs = LogCapture(self)
        reloaded = []

        class Broken(app_service.Service):
            name = "broken"

            def reload(self):
                raise ValueError("a bug")

        class Fine(app_service.Service):
            name = "fine"

            def reload(self):
                reloaded.append(self.name)
                return True

        root = SockssuiteService()
        Broken().setServiceParent(root)
        Fine().setServiceParent(root)
        self.assertFalse(root.reload())
        self.assertEqual(reloaded, ["fine"])
        [failure] = [e for e in logs.events if "log_failure" in e]
        self.assertEqual(failure["name"], "broken")
        self.flushLoggedErrors(ValueError)

    @async_test
    async def test_stop_lets_sessions_finish_within_the_grace(self):
        logs = LogCapture(self)
        root, service = await self.start("permit 127.0.0.0 255.0.0.0\n", shutdown_grace=5)
        client, code = await self.ask(service)
        stopping = root.stopService()
        await support.deferLater(0.2)
        self.assertFalse(stopping.called, "stop did not wait for the session in flight")
        client.transport.write(b"last words")
        self.assertEqual(await client.wait_bytes(10), b"last words")
        with self.assertRaises(Exception):  # no new sessions are accepted
            await support.connect_raw(support.port_of(service))
        client.transport.loseConnection()
        await stopping
        [event] = await logs.wait_for("session-closed")
        self.assertEqual(event["outcome"], "closed")

    @async_test
    async def test_stop_closes_sessions_still_open_after_the_grace(self):
        logs = LogCapture(self)
        root, service = await self.start("permit 127.0.0.0 255.0.0.0\n", shutdown_grace=0.3)
        client, code = await self.ask(service)
        started = reactor.seconds()
        await root.stopService()
        self.assertLess(reactor.seconds() - started, 3)
        await client.closed
        [event] = await logs.wait_for("session-closed")
        self.assertEqual(event["outcome"], "shutdown")


class TreeTests(TestCase):
    def test_named_children(self):
        options = tap.Options()
        options.parseOptions(["--log-json", os.devnull])
        root = tap.makeService(options)
        self.assertEqual(root.name, "sockssuite")
        self.assertIsInstance(root.getServiceNamed("socks"), SOCKSServerService)
        self.assertEqual(root.getServiceNamed("json-log").path, os.devnull)
        self.assertEqual(root.getServiceNamed("socks").endpoints, [tap.DEFAULT_SOCKS_ENDPOINT])
        self.assertIs(root.getServiceNamed("socks").policy, access.DEFAULT_POLICY)

    def test_defaults_are_safe(self):
        options = tap.Options()
        options.parseOptions([])
        self.assertEqual(options["socks"], ["tcp:1080:interface=127.0.0.1"])
        settings = options.settings()
        self.assertFalse(settings.allow_shell_commands)
        self.assertEqual(settings.default_ident, "n")
        self.assertEqual(settings.idle_timeout, 7200)
        self.assertEqual(settings.socks_versions, (4, 5))  # a tuple, not the unparsed "4,5"
        self.assertFalse(settings.require_auth)
        decision = access.decide(options["policy"], access.AccessRequest("", "192.0.2.1", "127.0.0.1", 80))
        self.assertFalse(decision.permitted, "a non-loopback client must be refused by default")

    def test_tree_pickles_as_plain_configuration_and_round_trips(self):
        options = tap.Options()
        options.parseOptions(["--socks", "tcp:0:interface=127.0.0.1", "--idle-timeout", "60"])
        root = tap.makeService(options)
        copy = pickle.loads(pickle.dumps(root))
        socks = copy.getServiceNamed("socks")
        self.assertEqual(socks.endpoints, ["tcp:0:interface=127.0.0.1"])
        self.assertEqual(socks.settings.idle_timeout, 60)
        self.assertEqual(socks.policy, access.DEFAULT_POLICY)
        self.assertIsNone(socks.factory)
        self.assertFalse(copy.running)

    def test_state_of_another_version_fails_with_a_clear_message(self):
        socks = SOCKSServerService(["tcp:0"], access.DEFAULT_POLICY)
        data = pickle.dumps(socks).replace(b"_state_version", b"_state_versioX")
        e = self.assertRaises(TapVersionError, pickle.loads, data)
        self.assertIn("sockssuite mktap", str(e))

    def test_broken_access_file_refuses_to_start(self):
        folder = tempfile.mkdtemp()
        self.addCleanup(__import__("shutil").rmtree, folder, True)
        path = os.path.join(folder, "bad.conf")
        write(path, "permit 10.0.0.0 255.0.0\n")
        options = tap.Options()
        e = self.assertRaises(Exception, options.parseOptions, ["--access", path])
        self.assertIn(f"{path}:1:", str(e))
