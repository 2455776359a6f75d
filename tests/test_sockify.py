"""The recipes of docs/sockify.rst, each run for real against a sockssuite
server on loopback: the Twisted example program, ``sockssuite connect`` as a
pipe and as an OpenSSH ProxyCommand, proxychains4, tsocks and Dante's socksify
(the Debian packages ``.ci/run`` installs), with the very files the page
includes from docs/examples/ (only the port 1080 is changed to the test's).

127.0.0.1 always goes direct under socks.conf (and under all three LD_PRELOAD
tools), so the destinations listen on 127.0.0.2.  tsocks never proxies any
127.x.y.z destination: its fetch goes to a web server in a network namespace
the test creates (root only), over a veth pair with a private /30.
"""

from __future__ import annotations

import hashlib
import ipaddress
import itertools
import os
import re
import shutil
import subprocess
import sys

from twisted.internet import defer, protocol
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.trial.unittest import SkipTest, TestCase
from zope.interface import implementer

from . import support
from .support import LogCapture, start_server
from .test_connect_cli import (OTHER_LOOPBACK, ROOT, SOCKSSUITE, WebServer, child_env, spawn,
                               temp_dir, until, write_file)
from .test_server import async_test

EXAMPLES = os.path.join(ROOT, "docs", "examples")


def example(name: str, port: int | None = None) -> str:
    """The text of docs/examples/NAME, with the proxy's port 1080 made ``port``."""
    with open(os.path.join(EXAMPLES, name)) as f:
        text = f.read()
    if port is not None:
        text = re.sub(r"\b1080\b", str(port), text)
    return text


def require(program: str) -> str:
    path = shutil.which(program)
    if path is None:
        raise SkipTest(f"{program} is not installed (.ci/run installs it with apt-get)")
    return path


async def run(testcase, argv, env=None, stdin=None, limit=60.0):
    """A child's (stdout bytes, stderr text, exit code); the reactor keeps serving."""
    child = spawn(testcase, argv, env=env or child_env(), limit=limit)
    if stdin is not None:
        child.transport.write(stdin)
    child.transport.closeStdin()
    code = await child.ended
    return bytes(child.out), bytes(child.err).decode("utf-8", "replace"), code


def curl_argv(*args):
    # -q first: ignore any .curlrc.  The environment given to children holds no
    # *_proxy variables, so curl itself connects straight to the destination
    # and only the LD_PRELOAD library can send it through SOCKS.
    return [require("curl"), "-q", "--silent", "--show-error", "--max-time", "30", *args]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def web_and_proxy(testcase):
    web = await WebServer(testcase).start()
    proxy = await start_server(testcase)
    return web, support.port_of(proxy)


@implementer(IHalfCloseableProtocol)
class HTTP10(protocol.Protocol):
    """A minimal HTTP/1.0 server that, like most servers, answers a request
    whose client already half-closed (netcat-style clients do)."""

    def connectionMade(self):
        self.buffer = b""
        self.answered = False

    def dataReceived(self, data):
        self.buffer += data
        if b"\r\n\r\n" in self.buffer and not self.answered:
            self.answer()

    def answer(self):
        self.answered = True
        path = self.buffer.split(b" ", 2)[1]
        body = self.factory.pages.get(path)
        if body is None:
            self.transport.write(b"HTTP/1.0 404 Not Found\r\n\r\n")
        else:
            self.transport.write(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        self.transport.loseConnection()

    def readConnectionLost(self):
        if not self.answered:
            self.transport.loseConnection()

    def writeConnectionLost(self):
        pass


class TwistedRecipeTests(TestCase):
    @async_test
    async def test_the_agent_example_fetches_through_socks_conf(self):
        logs = LogCapture(self)
        web, port = await web_and_proxy(self)
        conf = write_file(self, "socks.conf", example("socks.conf", port))
        out, err, code = await run(self, [sys.executable,
                                          os.path.join(EXAMPLES, "routed_fetch.py"), conf, web.url()])
        # (Twisted's readBody may warn that a finished response's transport
        # has no abortConnection: it does so without SOCKS too.)
        self.assertEqual(code, 0, err)
        self.assertNotIn("Traceback", err)
        self.assertEqual(sha(out), sha(web.blob))
        [event] = await logs.wait_for("session-closed")
        self.assertEqual(event["requested"], OTHER_LOOPBACK)


class ConnectRecipeTests(TestCase):
    @async_test
    async def test_a_request_piped_through_sockssuite_connect(self):
        logs = LogCapture(self)
        factory = protocol.Factory.forProtocol(HTTP10)
        factory.pages = {b"/motd": b"through the firewall\n"}
        web = await support.listen(self, factory, interface=OTHER_LOOPBACK)
        proxy = await start_server(self)
        conf = write_file(self, "socks.conf", example("socks.conf", support.port_of(proxy)))
        command = " ".join(SOCKSSUITE)
        # The documented pipeline, with the command from this tree.
        script = (f"printf 'GET /motd HTTP/1.0\\r\\n\\r\\n' | {command} connect --routes {conf} "
                  f"{OTHER_LOOPBACK} {web.getHost().port}")
        out, err, code = await run(self, ["/bin/sh", "-c", script])
        self.assertEqual((code, err), (0, ""))
        self.assertTrue(out.startswith(b"HTTP/1.0 200 OK\r\n"), out)
        self.assertTrue(out.endswith(b"\r\n\r\nthrough the firewall\n"), out)
        await logs.wait_for("session-closed")

    @async_test
    async def test_a_denied_destination_is_refused_before_any_connection(self):
        # Through "route", which never connects: the documented deny line.
        conf = write_file(self, "socks.conf", example("socks.conf", 1080))
        out, err, code = await run(self, [*SOCKSSUITE, "route", "--routes", conf, "10.99.0.1", "80"])
        self.assertEqual((code, out), (1, b"Line 3: deny    10.99.0.1 255.255.255.255\nConnection denied.\n"))

    @async_test
    async def test_ssh_proxycommand(self):
        """ssh runs ``sockssuite connect`` as its ProxyCommand and speaks SSH
        through it: the client's version line reaches the server through the
        proxy and the server's comes back (the fake server then stops, so
        the login itself fails: no SSH server is started here)."""
        ssh = require("ssh")
        logs = LogCapture(self)
        heard = defer.Deferred()

        class FakeSSHServer(protocol.Protocol):
            def dataReceived(self, data):
                if not heard.called:
                    heard.callback(data)
                    self.transport.write(b"SSH-2.0-FakeSSHThroughSOCKS\r\n")
                    self.transport.loseConnection()

        server = await support.listen(self, protocol.Factory.forProtocol(FakeSSHServer), interface=OTHER_LOOPBACK)
        proxy = await start_server(self)
        conf = write_file(self, "socks.conf", example("socks.conf", support.port_of(proxy)))
        config = (example("ssh_config")
                  .replace("*.internal.example.org", OTHER_LOOPBACK)
                  .replace("/etc/socks.conf", conf)
                  .replace("sockssuite connect", " ".join(SOCKSSUITE) + " connect"))
        config_file = write_file(self, "ssh_config", config)
        home = temp_dir(self)
        out, err, code = await run(self, [
            ssh, "-v", "-F", config_file, "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=20",
            "-p", str(server.getHost().port), f"nobody@{OTHER_LOOPBACK}", "true"],
            env=child_env(HOME=home, SHELL="/bin/sh"))
        self.assertTrue((await heard).startswith(b"SSH-2.0-"))
        self.assertIn("remote software version FakeSSHThroughSOCKS", err)
        self.assertIn("sockssuite.cli connect --routes", err)  # "debug1: Executing proxy command: ..."
        [event] = await logs.wait_for("session-closed")
        self.assertEqual(event["requested"], OTHER_LOOPBACK)


class ProxychainsRecipeTests(TestCase):
    @async_test
    async def test_proxychains4_fetches_a_page_with_curl(self):
        proxychains = require("proxychains4")
        logs = LogCapture(self)
        web, port = await web_and_proxy(self)
        config = write_file(self, "proxychains4.conf", example("proxychains4.conf", port))
        out, err, code = await run(self, [proxychains, "-f", config, *curl_argv(web.url())])
        self.assertEqual(code, 0, err)
        self.assertEqual(sha(out), sha(web.blob))
        [event] = await logs.wait_for("session-closed")
        self.assertEqual((event["user"], event["requested"]), ("alice", OTHER_LOOPBACK))

    @async_test
    async def test_a_denied_destination_fails_the_program(self):
        proxychains = require("proxychains4")
        web = await WebServer(self).start()
        proxy = await start_server(self, "deny 0.0.0.0 0.0.0.0\n")
        config = write_file(self, "proxychains4.conf", example("proxychains4.conf", support.port_of(proxy)))
        out, err, code = await run(self, [proxychains, "-f", config, *curl_argv(web.url())])
        self.assertNotEqual(code, 0)
        self.assertEqual(out, b"")


class TsocksRecipeTests(TestCase):
    """tsocks 1.8 always counts 127.0.0.0/8 as a local network (its library
    adds that line after reading the file), so it never proxies a loopback
    destination.  Here: tsocks reads the recipe's file as intended, its own
    SOCKS probe recognises sockssuite, and the 127/8 rule itself (so this
    class notices if a tsocks ever changes it).  The fetch through sockssuite,
    to a non-loopback destination, is TsocksNamespaceTests."""

    @async_test
    async def test_validateconf_reads_the_recipe(self):
        validateconf = require("validateconf")
        config = write_file(self, "tsocks.conf", example("tsocks.conf", 11080))
        out, err, code = await run(self, [validateconf, "-f", config])
        self.assertEqual(code, 0, err)
        text = out.decode()
        self.assertRegex(text, r"Server:\s+127\.0\.0\.1")
        self.assertRegex(text, r"Port:\s+11080")
        self.assertRegex(text, r"SOCKS type:\s+4")
        self.assertRegex(text, r"Network:\s+127\.0\.0\.0 NetMask:\s+255\.0\.0\.0")

    @async_test
    async def test_inspectsocks_recognises_sockssuite(self):
        # inspectsocks probes with a SOCKS5 greeting first: a port serving both
        # versions is a version 5 server to it, one serving SOCKS4 only a 4.
        inspectsocks = require("inspectsocks")
        for versions, expected in (((4, 5), b"version 5 socks server"), ((4,), b"version 4 socks server")):
            proxy = await start_server(self, socks_versions=versions)
            out, err, code = await run(self, [inspectsocks, "127.0.0.1", str(support.port_of(proxy))])
            self.assertEqual(code, 0, err)
            self.assertIn(expected, out + err.encode())

    @async_test
    async def test_tsocks_leaves_loopback_destinations_direct(self):
        tsocks = require("tsocks")
        logs = LogCapture(self)
        web, port = await web_and_proxy(self)
        config = write_file(self, "tsocks.conf", example("tsocks.conf", port))
        out, err, code = await run(self, [tsocks, *curl_argv(web.url())],
                                   env=child_env(TSOCKS_CONF_FILE=config))
        self.assertEqual(code, 0, err)
        self.assertEqual(sha(out), sha(web.blob))
        await support.deferLater(0.2)
        self.assertEqual(logs.named("session-closed"), [])


#: The web server alone in its namespace, and its port there.
NETNS_WEB = os.path.join(ROOT, "tests", "netns_web.py")
NETNS_WEB_PORT = 8080
#: The private (RFC 1918) network whose /30s the namespaces use.
NETNS_NETWORK = ipaddress.ip_network("10.213.0.0/16")
_namespaces = itertools.count()
_ROUTE_TYPES = {"unicast", "local", "broadcast", "multicast", "anycast", "unreachable", "blackhole",
                "prohibit", "throw", "nat"}


def ip_command(*args, check=True) -> str:
    """``ip ARGS``' output; an error (or more than 10 s) fails the test."""
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL)
    if check and done.returncode != 0:
        raise AssertionError(f"ip {' '.join(args)}: exit {done.returncode}: {done.stderr.strip()}")
    return done.stdout


def free_slash30(n: int) -> ipaddress.IPv4Network:
    """A /30 of NETNS_NETWORK that no address and no route of this host
    overlaps (a default route aside), so that adding it reroutes nothing:
    where the search starts depends on the process and ``n``, so concurrent
    test runs take different ones."""
    blocks = list(NETNS_NETWORK.subnets(new_prefix=30))
    start = int.from_bytes(hashlib.sha256(f"{os.getpid()} {n}".encode()).digest()[:4], "big")
    for i in range(64):
        net = blocks[(start + i) % len(blocks)]
        if ip_command("-4", "-o", "address", "show", "to", str(net)).strip():
            continue
        routes = (ip_command("-4", "route", "show", "table", "all", "root", str(net)).splitlines()
                  + ip_command("-4", "route", "show", "table", "all", "match", str(net)).splitlines())
        prefixes = []
        for line in routes:
            words = line.split()
            if words and words[0] in _ROUTE_TYPES:
                words = words[1:]
            if words:
                prefixes.append(words[0])
        if all(p in ("default", "0.0.0.0/0") for p in prefixes):
            return net
    raise AssertionError(f"no /30 of {NETNS_NETWORK} is free of addresses and routes on this host")


class TsocksNamespaceTests(TestCase):
    """The tsocks recipe end to end, as in real use: the destination is not
    on loopback.  setUp creates a network namespace of the test's own (with
    tests/netns_web.py: an anonymous one, which lives only as long as the web
    server in it), a veth pair from the root namespace into it, a free /30
    of 10.213.0.0/16 (its first address on the host end, its second on the
    namespace end), the web server on the second and a sockssuite server on
    127.0.0.1 that permits only that web server.  Nothing else is created, and no traffic leaves loopback and the
    veth pair (which carries no IPv6: no link-local address on either end).
    Cleanup deletes the pair and kills the server (the namespace then goes
    away), and checks that the host end is gone."""

    def setUp(self):
        if os.geteuid() != 0:
            raise SkipTest("creating a network namespace and a veth pair needs root")
        for program in ("ip", "tsocks", "curl"):
            require(program)
        return defer.ensureDeferred(self.start_namespace())

    async def start_namespace(self):
        n = next(_namespaces)
        net = free_slash30(n)
        host_address, self.address = (str(a) for a in net.hosts())
        host_end, ns_end = f"ssx{os.getpid()}h{n}", f"ssx{os.getpid()}n{n}"  # at most 15 characters
        folder = temp_dir(self)
        self.blob = os.urandom(100 * 1024)
        with open(os.path.join(folder, "blob.bin"), "wb") as f:
            f.write(self.blob)

        # Registered first, run last: the host end must be gone in the end.
        self.addCleanup(lambda: defer.ensureDeferred(until(
            lambda: ip_command("-o", "link", "show", "dev", host_end, check=False) == "",
            f"{host_end} to go away with the namespace", 10)))
        web = spawn(self, [sys.executable, NETNS_WEB, str(os.getpid()), ns_end, f"{self.address}/30",
                           str(NETNS_WEB_PORT), folder], limit=120)

        async def stop_web():
            # Ended here and awaited: spawn's own cleanup would leave its timer pending.
            if not web.ended.called:
                web.transport.signalProcess("KILL")
                await until(lambda: web.ended.called, "netns_web.py to end", 10)

        self.addCleanup(lambda: defer.ensureDeferred(stop_web()))

        async def web_says(word):
            await until(lambda: word in web.out or web.ended.called, f"netns_web.py to say {word!r}", 10)
            if word not in web.out:
                raise AssertionError(f"netns_web.py ended: {bytes(web.err).decode('utf-8', 'replace')}")

        await web_says(b"netns\n")
        ip_command("link", "add", host_end, "type", "veth", "peer", "name", ns_end, "netns", str(web.transport.pid))
        self.addCleanup(ip_command, "link", "delete", "dev", host_end, check=False)
        ip_command("link", "set", "dev", host_end, "addrgenmode", "none")
        ip_command("address", "add", f"{host_address}/30", "dev", host_end)
        ip_command("link", "set", "dev", host_end, "up")
        web.transport.write(b"go\n")
        await web_says(b"listening\n")
        self.proxy = await start_server(
            self, f"permit 127.0.0.0 255.0.0.0 {self.address} 255.255.255.255 eq {NETNS_WEB_PORT}\n")

    @async_test
    async def test_tsocks_fetches_a_page_through_sockssuite(self):
        tsocks = require("tsocks")
        logs = LogCapture(self)
        config = write_file(self, "tsocks.conf", example("tsocks.conf", support.port_of(self.proxy)))
        url = f"http://{self.address}:{NETNS_WEB_PORT}/blob.bin"
        out, err, code = await run(self, [tsocks, *curl_argv(url)], env=child_env(TSOCKS_CONF_FILE=config))
        self.assertEqual(code, 0, err)
        self.assertEqual(sha(out), sha(self.blob))
        [event] = await logs.wait_for("session-closed")
        self.assertEqual((event["requested"], event["port"], event["outcome"]),
                         (self.address, NETNS_WEB_PORT, "closed"))


class DanteRecipeTests(TestCase):
    @async_test
    async def test_socksify_fetches_a_page_with_curl_over_socks4(self):
        socksify = require("socksify")
        logs = LogCapture(self)
        web, port = await web_and_proxy(self)
        config = write_file(self, "dante.conf", example("dante.conf", port))
        # SOCKS_AUTOADD_LANROUTES=no: Dante's library otherwise adds a direct
        # route for each local interface's network, 127.0.0.0/8 included.
        out, err, code = await run(self, [socksify, *curl_argv(web.url())],
                                   env=child_env(SOCKS_CONF=config, SOCKS_AUTOADD_LANROUTES="no"))
        self.assertEqual(code, 0, err)
        self.assertEqual(sha(out), sha(web.blob))
        [event] = await logs.wait_for("session-closed")
        self.assertEqual(event["requested"], OTHER_LOOPBACK)

    @async_test
    async def test_without_the_lanroutes_switch_loopback_goes_direct(self):
        socksify = require("socksify")
        logs = LogCapture(self)
        web, port = await web_and_proxy(self)
        config = write_file(self, "dante.conf", example("dante.conf", port))
        out, err, code = await run(self, [socksify, *curl_argv(web.url())], env=child_env(SOCKS_CONF=config))
        self.assertEqual(code, 0, err)
        self.assertEqual(sha(out), sha(web.blob))
        await support.deferLater(0.2)
        self.assertEqual(logs.named("session-closed"), [])
