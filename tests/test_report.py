"""sockssuite report: exact totals from a generated log, and a PNG plot."""

import io
import json
import os
import shutil
import tempfile
from contextlib import redirect_stdout

from twisted.trial.unittest import SynchronousTestCase

from sockssuite import cli
from sockssuite.report import read_report

HOUR = 3600.0
T0 = 1_795_000_000.0  # some hour boundary-ish in 2026


def session(user, dest, port, up, down, when, outcome="closed"):
    return {"event": "session-closed", "user": user, "requested": dest, "port": port,
            "bytes_up": up, "bytes_down": down, "log_time": when, "outcome": outcome,
            "log_namespace": "sockssuite.session"}


def generated_log():
    events = []
    for i in range(30):
        events.append(session("alice", "www.example.org", 80, 100, 1000 + i, T0 + i))
    for i in range(12):
        events.append(session("bob", "10.0.0.5", 22, 50, 70, T0 + HOUR + i))
    events.append(session("bob", "10.0.0.9", 23, 0, 0, T0 + HOUR + 30, outcome="denied"))
    events.append({"event": "denied", "rule_line": 3, "rule": "deny 0.0.0.0 0.0.0.0 eq telnet",
                   "log_time": T0 + HOUR + 30})
    events.append({"event": "denied", "rule_line": None, "rule": None, "log_time": T0 + HOUR + 31})
    lines = [json.dumps(e) for e in events]
    lines.insert(5, "not json at all")
    lines.insert(9, json.dumps({"event": "reloaded", "filename": "x", "count": 1}))
    return "\n".join(lines) + "\n"


class ReportTests(SynchronousTestCase):
    def test_totals_are_exact(self):
        report = read_report(io.StringIO(generated_log()))
        self.assertEqual(report.sessions, 43)
        alice = report.users["alice"]
        self.assertEqual((alice.sessions, alice.bytes_up, alice.bytes_down),
                         (30, 3000, sum(1000 + i for i in range(30))))
        bob = report.users["bob"]
        self.assertEqual((bob.sessions, bob.bytes_up, bob.bytes_down), (13, 600, 840))
        self.assertEqual(report.destinations["10.0.0.5:22"].sessions, 12)
        self.assertEqual(report.denials[(3, "deny 0.0.0.0 0.0.0.0 eq telnet")], 1)
        self.assertEqual(report.denials[(None, "no line matched")], 1)
        self.assertEqual(sorted(t.sessions for t in report.per_hour.values()), [13, 30])
        self.assertEqual(report.skipped, 2)

    def test_command_prints_tables_and_draws_a_png(self):
        folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, folder, True)
        log = os.path.join(folder, "sessions.jsonl")
        with open(log, "w") as f:
            f.write(generated_log())
        png = os.path.join(folder, "report.png")
        out = io.StringIO()
        with redirect_stdout(out):
            self.assertEqual(cli.main(["report", log, "--plot", png]), 0)
        text = out.getvalue()
        self.assertIn("43 session(s)", text)
        self.assertIn("Line 3: deny 0.0.0.0 0.0.0.0 eq telnet", text)
        self.assertIn("alice", text)
        with open(png, "rb") as f:
            self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n")

    def test_missing_log_is_exit_2(self):
        self.assertEqual(cli.main(["report", "/nonexistent/log.jsonl"]), 2)
