"""The control socket: `sockssuite sessions` lists a live transfer and closing
it ends the transfer; the socket's mode keeps other users out."""

import json
import os
import shutil
import tempfile

from twisted.internet import defer, threads, utils
from twisted.trial.unittest import TestCase

from sockssuite import access, cli
from sockssuite.control import ControlService
from sockssuite.server import ServerSettings
from sockssuite.service import SockssuiteService, SOCKSServerService

from . import support
from .support import Echo, LogCapture, listen, socks_connect
from .test_server import async_test


def run_cli(argv):
    """sockssuite <argv> in a thread (it blocks on the socket): (status, stdout)."""
    import io
    from contextlib import redirect_stdout, redirect_stderr

    def call():
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            status = cli.main(argv)
        return status, out.getvalue(), err.getvalue()

    return threads.deferToThread(call)


class ControlTests(TestCase):
    async def start(self):
        folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, folder, True)
        self.path = os.path.join(folder, "sockssuite.ctl")
        root = SockssuiteService()
        socks = SOCKSServerService(["tcp:0:interface=127.0.0.1"], access.parse_access(support.LOOPBACK_ONLY),
                                   ServerSettings(), shutdown_grace=0)
        socks.setServiceParent(root)
        control = ControlService(f"unix:{self.path}:mode=600")
        control.setServiceParent(root)
        root.startService()
        await defer.gatherResults(socks._listening)
        self.addCleanup(root.stopService)
        return socks

    @async_test
    async def test_sessions_lists_a_live_session_and_close_ends_it(self):
        logs = LogCapture(self)
        socks = await self.start()
        echo = await listen(self, Echo)
        client, reply = await socks_connect(support.port_of(socks), "127.0.0.1", echo.getHost().port,
                                            userid=b"carol")
        client.transport.write(b"hello")
        await client.wait_bytes(5)
        status, out, err = await run_cli(["sessions", "--control", self.path, "--json"])
        self.assertEqual(status, 0, err)
        [session] = json.loads(out)["sessions"]
        self.assertEqual((session["user"], session["command"], session["state"]),
                         ("carol", "connect", "relaying"))
        self.assertEqual((session["bytes_up"], session["bytes_down"]), (5, 5))
        self.assertEqual(session["destination"], f"127.0.0.1:{echo.getHost().port}")
        status, out, err = await run_cli(["sessions", "--control", self.path])
        self.assertIn("carol", out)
        self.assertIn("1 session(s)", out)
        status, out, err = await run_cli(["sessions", "--control", self.path, "--close", session["id"]])
        self.assertEqual(status, 0, err)
        await client.closed
        [event] = await logs.wait_for("session-closed")
        self.assertEqual(event["outcome"], "operator-closed")
        status, out, err = await run_cli(["sessions", "--control", self.path, "--close", session["id"]])
        self.assertEqual(status, 1)
        self.assertIn("no session", err)

    @async_test
    async def test_sessions_lists_a_live_curl_transfer_and_closing_it_ends_the_transfer(self):
        if not shutil.which("curl"):
            raise __import__("twisted.trial.unittest", fromlist=["SkipTest"]).SkipTest("needs curl")
        from twisted.internet import reactor
        from twisted.web import resource, server as web_server
        from twisted.web.server import NOT_DONE_YET

        class Trickle(resource.Resource):
            """Sends a byte every 50 ms for up to 20 s: a transfer that stays live."""
            isLeaf = True

            def render_GET(self, request):
                def more(n=0):
                    if request.finished or request._disconnected or n > 400:
                        if not request.finished and not request._disconnected:
                            request.finish()
                        return
                    request.write(b".")
                    calls.append(reactor.callLater(0.05, more, n + 1))
                more()
                return NOT_DONE_YET

        calls = []
        self.addCleanup(lambda: [c.cancel() for c in calls if c.active()])
        web = await listen(self, web_server.Site(Trickle()))
        socks = await self.start()
        logs = LogCapture(self)
        curl = utils.getProcessOutputAndValue(
            shutil.which("curl"), ["-s", "-x", f"socks4://dave@127.0.0.1:{support.port_of(socks)}",
                                   f"http://127.0.0.1:{web.getHost().port}/"], env=os.environ.copy())
        sessions = []
        for _ in range(100):
            status, out, err = await run_cli(["sessions", "--control", self.path, "--json"])
            sessions = [s for s in json.loads(out)["sessions"] if s["state"] == "relaying"]
            if sessions and sessions[0]["bytes_down"] > 0:
                break
            await support.deferLater(0.05)
        [session] = sessions
        self.assertEqual(session["user"], "dave")
        status, out, err = await run_cli(["sessions", "--control", self.path, "--close", session["id"]])
        self.assertEqual(status, 0, err)
        out, err, code = await curl
        self.assertNotEqual(code, 0, "curl should see its transfer cut")
        [event] = await logs.wait_for("session-closed")
        self.assertEqual(event["outcome"], "operator-closed")

    @async_test
    async def test_the_socket_mode_keeps_other_users_out(self):
        if os.geteuid() != 0 or not shutil.which("runuser") or not shutil.which("socat"):
            raise __import__("twisted.trial.unittest", fromlist=["SkipTest"]).SkipTest(
                "needs root, runuser and socat")
        await self.start()
        self.assertEqual(os.stat(self.path).st_mode & 0o777, 0o600)
        os.chmod(os.path.dirname(self.path), 0o755)  # nobody may reach the folder, not the socket
        out, err, code = await utils.getProcessOutputAndValue(
            shutil.which("runuser"), ["-u", "nobody", "--", shutil.which("socat"), "-",
                                      f"UNIX-CONNECT:{self.path}"],
            env=os.environ.copy(), stdinBytes=b"list\n")
        self.assertNotEqual(code, 0)
        self.assertIn(b"Permission denied", err)
        out, err, code = await utils.getProcessOutputAndValue(
            shutil.which("socat"), ["-t", "2", "-", f"UNIX-CONNECT:{self.path}"],
            env=os.environ.copy(), stdinBytes=b"list\n")
        self.assertEqual(json.loads(out), {"sessions": []})

    def test_no_daemon_is_exit_2(self):
        import io
        from contextlib import redirect_stderr
        err = io.StringIO()
        with redirect_stderr(err):
            self.assertEqual(cli.main(["sessions", "--control", "/nonexistent/ctl"]), 2)
        self.assertIn("/nonexistent/ctl", err.getvalue())


