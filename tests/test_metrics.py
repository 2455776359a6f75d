"""Metrics scraped over HTTP after real sessions: sessions, bytes, denials by
rule line, reloads."""

import os
import re
import shutil
import tempfile

from twisted.internet import defer, utils
from twisted.trial.unittest import TestCase

from sockssuite import access
from sockssuite.metrics import MetricsService
from sockssuite.server import ServerSettings
from sockssuite.service import SockssuiteService, SOCKSServerService

from . import support
from .support import Echo, listen, socks_connect
from .test_server import async_test

try:
    import prometheus_client  # noqa: F401
except ImportError:  # pragma: no cover
    prometheus_client = None


def value(text, name, **labels):
    """The sample of ``name`` with exactly these labels, or 0."""
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = re.match(r"^([a-z_]+)(\{(.*)\})? (\S+)$", line)
        if not m or m.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', m.group(3) or ""))
        if found == {k: str(v) for k, v in labels.items()}:
            return float(m.group(4))
    return 0.0


class MetricsTests(TestCase):
    if prometheus_client is None:
        skip = "needs prometheus-client (the test extra)"

    async def start(self, rules):
        folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, folder, True)
        self.access = os.path.join(folder, "sockd.conf")
        with open(self.access, "w") as f:
            f.write(rules)
        root = SockssuiteService()
        metrics = MetricsService("tcp:0:interface=127.0.0.1")
        metrics.setName("metrics")
        metrics.setServiceParent(root)
        socks = SOCKSServerService(["tcp:0:interface=127.0.0.1"], access.load_access(self.access),
                                   ServerSettings(), access_path=self.access, shutdown_grace=0)
        socks.setServiceParent(root)
        root.startService()
        await defer.gatherResults(socks._listening)
        self.addCleanup(root.stopService)
        self.root, self.socks, self.metrics = root, socks, metrics
        return socks

    async def close_and_wait_current_zero(self, client):
        """Close the client's connection; wait (bounded) for the gauge of
        current sessions to come back to 0."""
        client.transport.loseConnection()
        await client.closed
        for _ in range(100):
            if value(await self.scrape(), "sockssuite_sessions_current") == 0:
                break
            await support.deferLater(0.02)

    async def scrape(self):
        out, err, code = await utils.getProcessOutputAndValue(
            shutil.which("curl"), ["-s", f"http://127.0.0.1:{self.metrics.port.getHost().port}/metrics"],
            env=os.environ.copy())
        self.assertEqual(code, 0, err)
        return out.decode()

    @async_test
    async def test_sessions_bytes_denials_and_reloads_are_counted(self):
        if not shutil.which("curl"):
            raise __import__("twisted.trial.unittest", fromlist=["SkipTest"]).SkipTest("needs curl")
        echo = await listen(self, Echo)
        socks = await self.start("deny 0.0.0.0 0.0.0.0 127.0.0.1 255.255.255.255 eq 9\n"
                                 "permit 127.0.0.0 255.0.0.0\n")
        logs = support.LogCapture(self)
        for _ in range(3):
            client, reply = await socks_connect(support.port_of(socks), "127.0.0.1", echo.getHost().port)
            client.transport.write(b"12345")
            await client.wait_bytes(5)
            client.transport.loseConnection()
            await client.closed
        for _ in range(2):
            client, reply = await socks_connect(support.port_of(socks), "127.0.0.1", 9)
            self.assertEqual(reply.code, 91)
        await logs.wait_for("session-closed", 5)
        text = await self.scrape()
        self.assertEqual(value(text, "sockssuite_sessions_opened_total", command="connect"), 3)
        self.assertEqual(value(text, "sockssuite_sessions_closed_total", command="connect",
                               outcome="closed"), 3)
        self.assertEqual(value(text, "sockssuite_sessions_current"), 0)
        self.assertEqual(value(text, "sockssuite_relayed_bytes_total", direction="up"), 15)
        self.assertEqual(value(text, "sockssuite_relayed_bytes_total", direction="down"), 15)
        self.assertEqual(value(text, "sockssuite_denials_total", reason="denied", rule_line="1"), 2)
        self.assertEqual(value(text, "sockssuite_handshake_seconds_count"), 3)
        self.assertEqual(value(text, "sockssuite_rules_loaded", file=self.access), 2)

        with open(self.access, "w") as f:
            f.write("permit 127.0.0.0 255.0.0.0\n")
        self.assertTrue(self.root.reload())
        with open(self.access, "w") as f:
            f.write("permit 127.0.0.0\n")
        self.assertFalse(self.root.reload())
        text = await self.scrape()
        self.assertEqual(value(text, "sockssuite_config_reloads_total", result="ok"), 1)
        self.assertEqual(value(text, "sockssuite_config_reloads_total", result="failed"), 1)
        self.assertEqual(value(text, "sockssuite_rules_loaded", file=self.access), 1)

    @async_test
    async def test_curl_sessions_through_the_proxy_are_counted(self):
        if not shutil.which("curl"):
            raise __import__("twisted.trial.unittest", fromlist=["SkipTest"]).SkipTest("needs curl")
        from twisted.web import resource, server as web_server, static
        root = resource.Resource()
        body = b"x" * 4096
        root.putChild(b"f", static.Data(body, "application/octet-stream"))
        web = await listen(self, web_server.Site(root))
        socks = await self.start("permit 127.0.0.0 255.0.0.0\n")
        logs = support.LogCapture(self)
        for scheme in ("socks4", "socks4a"):
            out, err, code = await utils.getProcessOutputAndValue(
                shutil.which("curl"), ["-s", "-x", f"{scheme}://127.0.0.1:{support.port_of(socks)}",
                                       f"http://localhost:{web.getHost().port}/f"], env=os.environ.copy())
            self.assertEqual((code, out), (0, body))
        events = await logs.wait_for("session-closed", 2)
        text = await self.scrape()
        self.assertEqual(value(text, "sockssuite_sessions_closed_total", command="connect", outcome="closed"), 2)
        self.assertEqual(value(text, "sockssuite_relayed_bytes_total", direction="down"),
                         sum(e["bytes_down"] for e in events))
        self.assertGreater(value(text, "sockssuite_relayed_bytes_total", direction="down"), 2 * len(body))

    @async_test
    async def test_a_live_session_is_current(self):
        if not shutil.which("curl"):
            raise __import__("twisted.trial.unittest", fromlist=["SkipTest"]).SkipTest("needs curl")
        echo = await listen(self, Echo)
        socks = await self.start("permit 127.0.0.0 255.0.0.0\n")
        client, reply = await socks_connect(support.port_of(socks), "127.0.0.1", echo.getHost().port)
        await support.deferLater(0.05)
        self.assertEqual(value(await self.scrape(), "sockssuite_sessions_current"), 1)
        await self.close_and_wait_current_zero(client)
        self.assertEqual(value(await self.scrape(), "sockssuite_sessions_current"), 0)

    @async_test
    async def test_a_udp_association_is_current_while_it_lives_and_its_datagrams_count(self):
        if not shutil.which("curl"):
            raise __import__("twisted.trial.unittest", fromlist=["SkipTest"]).SkipTest("needs curl")
        import socket
        from twisted.internet import threads
        from sockssuite.wire import socks5 as wire
        from .test_ipv6 import socks5
        from .test_udp_associate_server import exchange, udp_echo
        echo = udp_echo(self)
        socks = await self.start("permit 127.0.0.0 255.0.0.0\n")
        client, reply = await socks5(support.port_of(socks), wire.UDP_ASSOCIATE, "0.0.0.0", 0)
        answers = await threads.deferToThread(exchange, socket.AF_INET, (reply.host, reply.port),
                                              [wire_udp(echo, b"one"), wire_udp(echo, b"two")])
        self.assertEqual(len(answers), 2)
        self.assertEqual(value(await self.scrape(), "sockssuite_sessions_current"), 1)
        await self.close_and_wait_current_zero(client)
        text = await self.scrape()
        self.assertEqual(value(text, "sockssuite_sessions_current"), 0)
        self.assertEqual(value(text, "sockssuite_udp_datagrams_total", direction="out"), 2)
        self.assertEqual(value(text, "sockssuite_udp_datagrams_total", direction="in"), 2)


def wire_udp(port, data):
    from sockssuite.wire import udp as udpwire
    return udpwire.encode_udp("127.0.0.1", port, data)
