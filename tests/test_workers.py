"""--workers N against the installed plugin: workers serve, a dead worker is
restarted, SIGHUP reaches the workers, SIGTERM stops them all."""

import os
import re
import shutil
import signal
import socket
import sys

from twisted.internet import defer, protocol, reactor, utils
from twisted.trial.unittest import TestCase

from . import support
from .test_server import async_test


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Twistd(protocol.ProcessProtocol):
    def __init__(self):
        self.output = b""
        self.ended = defer.Deferred()

    def outReceived(self, data):
        self.output += data

    errReceived = outReceived

    def processEnded(self, reason):
        self.ended.callback(reason)

    @property
    def text(self):
        return self.output.decode("utf-8", "replace")

    async def wait_for(self, pattern, count=1, timeout=15.0):
        deadline = reactor.seconds() + timeout
        while reactor.seconds() < deadline:
            if len(re.findall(pattern, self.text)) >= count:
                return re.findall(pattern, self.text)
            await support.deferLater(0.05)
        raise AssertionError(f"no {count}x {pattern!r} in:\n{self.text}")


def alive(pid):
    """Running (a zombie left to an init that does not reap counts as gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("State:"):
                    return "Z" not in line.split()[1]
    except OSError:
        return False
    return True


class WorkersTests(TestCase):
    if not shutil.which("curl"):
        skip = "needs curl (.ci/run installs it)"

    @async_test
    async def test_workers_serve_restart_reload_and_stop(self):
        from twisted.web import resource, server, static
        root = resource.Resource()
        root.putChild(b"x", static.Data(b"served by a worker", "text/plain"))
        web = await support.listen(self, server.Site(root))
        folder = __import__("tempfile").mkdtemp()
        self.addCleanup(shutil.rmtree, folder, True)
        access = os.path.join(folder, "sockd.conf")
        with open(access, "w") as f:
            f.write("permit 127.0.0.0 255.0.0.0\n")
        port = free_port()
        metrics_port = free_port()
        twistd = Twistd()
        exe = shutil.which("twistd")
        argv = ([exe] if exe else [sys.executable, "-m", "twisted"]) + [
            "-n", "-o", "--pidfile=", "sockssuite", "--socks", f"tcp:{port}:interface=127.0.0.1",
            "--workers", "2", "--access", access, "--shutdown-grace", "1",
            "--metrics", f"tcp:{metrics_port}:interface=127.0.0.1"]
        process = reactor.spawnProcess(twistd, argv[0], argv, env=os.environ.copy())

        async def stop():
            if twistd.ended.called:
                return
            process.signalProcess("KILL")
            try:
                await twistd.ended
            except Exception:
                pass
        self.addCleanup(lambda: defer.ensureDeferred(stop()))
        started = await twistd.wait_for(r"worker (\d) started \(pid (\d+)\)", 2)
        pids = {int(index): int(pid) for index, pid in started}
        await twistd.wait_for(r"accepting on 1 inherited socket", 2)

        async def fetch():
            return await utils.getProcessOutputAndValue(
                shutil.which("curl"), ["-s", "-x", f"socks4://127.0.0.1:{port}",
                                       f"http://127.0.0.1:{web.getHost().port}/x"], env=os.environ.copy())

        for _ in range(6):
            out, err, code = await fetch()
            self.assertEqual((code, out), (0, b"served by a worker"))
        await twistd.wait_for(r"session w[01]-\d+ connect", 6)

        # The metrics are the whole daemon's: the workers' sessions are counted
        # in the twistd process, which serves /metrics.
        out, err, code = await utils.getProcessOutputAndValue(
            shutil.which("curl"), ["-s", f"http://127.0.0.1:{metrics_port}/metrics"], env=os.environ.copy())
        closed = re.search(r'^sockssuite_sessions_closed_total\{command="connect",outcome="closed"\} (\S+)$',
                           out.decode(), re.M)
        self.assertIsNotNone(closed, out.decode()[:2000])
        self.assertEqual(float(closed.group(1)), 6.0)

        # A worker that dies is started again.
        os.kill(pids[0], signal.SIGKILL)
        await twistd.wait_for(r"worker 0 ended", 1)
        await twistd.wait_for(r"worker 0 started \(pid \d+\)", 2)
        await twistd.wait_for(r"accepting on 1 inherited socket", 3)
        out, err, code = await fetch()
        self.assertEqual(code, 0)

        # SIGHUP reaches every worker: each re-reads the access file.
        with open(access, "w") as f:
            f.write("deny 0.0.0.0 0.0.0.0\n")
        before = len(re.findall(r"reloaded .*sockd\.conf: 1 rule", twistd.text))
        process.signalProcess("HUP")
        # the parent and both workers
        await twistd.wait_for(r"reloaded .*sockd\.conf: 1 rule", before + 3)
        out, err, code = await fetch()
        self.assertEqual(code, 97, "a worker still used the old rules")

        # SIGTERM stops the workers and the parent.
        current = {int(pid) for _, pid in re.findall(r"worker (\d) started \(pid (\d+)\)", twistd.text)}
        process.signalProcess("TERM")
        try:
            await twistd.ended
        except Exception:
            pass  # twistd re-raises SIGTERM on itself after a clean stop
        for _ in range(100):
            if not any(alive(pid) for pid in current):
                break
            await support.deferLater(0.05)
        self.assertEqual([pid for pid in current if alive(pid)], [])
        self.assertNotIn("Traceback", twistd.text)


class OrphanTests(TestCase):
    @async_test
    async def test_workers_exit_when_the_parent_is_killed(self):
        port = free_port()
        twistd = Twistd()
        exe = shutil.which("twistd")
        argv = ([exe] if exe else [sys.executable, "-m", "twisted"]) + [
            "-n", "-o", "--pidfile=", "sockssuite", "--socks", f"tcp:{port}:interface=127.0.0.1",
            "--workers", "2"]
        process = reactor.spawnProcess(twistd, argv[0], argv, env=os.environ.copy())
        started = await twistd.wait_for(r"worker (\d) started \(pid (\d+)\)", 2)
        pids = [int(pid) for _, pid in started]
        await twistd.wait_for(r"accepting on 1 inherited socket", 2)
        process.signalProcess("KILL")
        try:
            await twistd.ended
        except Exception:
            pass
        for _ in range(100):
            if not any(alive(pid) for pid in pids):
                break
            await support.deferLater(0.05)
        self.assertEqual([pid for pid in pids if alive(pid)], [], "orphaned workers kept running")
