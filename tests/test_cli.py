"""The ``sockssuite`` command: ``check`` and ``explain``.

Run in-process through ``sockssuite.cli.main([...])`` with stdout/stderr
captured, and as the installed console script in a child process.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout

from twisted.trial.unittest import SynchronousTestCase, TestCase

from sockssuite.cli import main

from .test_real_clients import temp_dir

#: The example file of the spec (section 4), from the socks4 package's own test script.
SPEC_EXAMPLE = (
    "deny\t*=bonnie,clyde\t128.12.6.0 255.255.255.0 : /usr/ucb/mail -s 'Rejected SOCKS access by %u' $USER\n"
    "permit\t*=ylee\t128.12.6.4 255.255.255.255 137.12.0.0 255.255.0.0\n"
    "deny\t128.12.0.0 255.255.0.0 eq telnet\n"
    "permit\t128.12.0.0 255.255.0.0\n"
    "#NO_IDENTD: /usr/ucb/mail -s 'please run identd on %A' $USER\n"
    "#BAD_ID: /usr/ucb/mail -s '%U pretends to be %u on %A' $USER\n"
)
SPEC_LINES = SPEC_EXAMPLE.splitlines()
NO_MATCH = "*** No match with any line. Access denied."

BROKEN = (
    "# header comment\n"
    "permit 127.0.0.0 255.0.0.0\n"
    "permit\t1.2.3 255.0.0.0\n"
    "allow 0.0.0.0 0.0.0.0\n"
    "permit 10.0.0.0 255.0.0.0 eq nosuchservice\n"
    "deny 10.0.0.0 255.0.0.0 10.0.0.0\n"
    "\n"
    "permit ?=X 10.0.0.0 255.0.0.0\n"
)
#: (line, column) of every error in BROKEN (a tab counts as one column).
BROKEN_ERRORS = [(3, 8), (4, 1), (5, 30), (6, 25), (8, 8)]


def _exit_status(code) -> int:
    # What the interpreter makes of SystemExit(code).
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    return 1


def run_cli(*argv):
    """``main(argv)`` in-process: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            status = main(list(argv))
        except SystemExit as e:
            status = _exit_status(e.code)
            if not isinstance(e.code, (int, type(None))):
                print(e.code, file=err)
    return status, out.getvalue(), err.getvalue()


def console_script() -> list[str]:
    """The installed ``sockssuite`` script of this interpreter (or PATH's)."""
    sibling = os.path.join(os.path.dirname(sys.executable), "sockssuite")
    if os.access(sibling, os.X_OK):
        return [sibling]
    found = shutil.which("sockssuite")
    if found is None:
        raise AssertionError("the sockssuite console script is not installed: pip install .")
    return [found]


def run_script(*argv, cwd):
    done = subprocess.run(console_script() + list(argv), cwd=cwd, capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL)
    return done.returncode, done.stdout, done.stderr


class Files:
    def __init__(self, testcase):
        self.folder = temp_dir(testcase)

    def write(self, name, text):
        path = os.path.join(self.folder, name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path


def _problem_positions(testcase, stderr, path):
    """Every stderr line must be PATH:LINE:COL: message; the (line, col) list."""
    positions = []
    for line in stderr.splitlines():
        m = re.match(rf"{re.escape(path)}:(\d+):(\d+): \S", line)
        testcase.assertIsNotNone(m, f"not a file:line:col report: {line!r}")
        positions.append((int(m.group(1)), int(m.group(2))))
    return positions


class CheckTests(SynchronousTestCase):
    def setUp(self):
        self.files = Files(self)

    def test_valid_file_exits_0_and_says_ok(self):
        path = self.files.write("sockd.conf", SPEC_EXAMPLE)
        status, out, err = run_cli("check", path)
        self.assertEqual(status, 0)
        self.assertEqual(err, "")
        self.assertRegex(out, rf"^{re.escape(path)}: OK, 4 rule\(s\), 2 ident command line\(s\)\n\Z")

    def test_broken_file_exits_1_and_reports_every_error_as_file_line_col(self):
        path = self.files.write("broken.conf", BROKEN)
        status, out, err = run_cli("check", path)
        self.assertEqual(status, 1)
        self.assertNotIn("OK", out)
        self.assertEqual(_problem_positions(self, err, path), BROKEN_ERRORS)
        self.assertIn("'1.2.3'", err)
        self.assertIn("'allow'", err)
        self.assertIn("'nosuchservice'", err)
        self.assertIn("'?=X'", err)

    def test_several_files_are_each_checked(self):
        good = self.files.write("good.conf", SPEC_EXAMPLE)
        broken = self.files.write("broken.conf", BROKEN)
        other = self.files.write("other.conf", "permit 127.0.0.0 255.0.0.0\n")
        status, out, err = run_cli("check", good, broken, other)
        self.assertEqual(status, 1)
        self.assertEqual([line.split(":")[0] for line in out.splitlines()], [good, other])
        self.assertIn(f"{other}: OK, 1 rule(s)", out)
        self.assertEqual(_problem_positions(self, err, broken), BROKEN_ERRORS)
        status, out, err = run_cli("check", good, other)
        self.assertEqual((status, err), (0, ""))
        self.assertEqual(len(out.splitlines()), 2)

    def test_missing_file_is_an_error_at_line_0(self):
        path = os.path.join(self.files.folder, "absent.conf")
        status, out, err = run_cli("check", path)
        self.assertEqual(status, 1)
        self.assertEqual(out, "")
        self.assertEqual(_problem_positions(self, err, path), [(0, 0)])
        self.assertIn("cannot read access file", err)

    def test_warnings_are_printed_but_do_not_fail_the_check(self):
        missing = os.path.join(self.files.folder, "no-such-users")
        path = self.files.write("warn.conf", f"permit *={missing},alice 127.0.0.0 255.0.0.0\n")
        status, out, err = run_cli("check", path)
        self.assertEqual(status, 0)
        self.assertIn(f"{path}: OK, 1 rule(s)", out)
        [warning] = err.splitlines()
        self.assertRegex(warning, rf"^{re.escape(path)}:1:10: .*{re.escape(missing)}.*\(warning\)$")

    def test_check_needs_a_file(self):
        status, out, err = run_cli("check")
        self.assertEqual(status, 2)
        self.assertIn("usage:", err)


class ExplainTests(SynchronousTestCase):
    """The decisions of the spec's example (section 4)."""

    def setUp(self):
        self.path = Files(self).write("sockd.conf", SPEC_EXAMPLE)

    def explain(self, *args):
        return run_cli("explain", "--access", self.path, *args)

    def assertLine(self, args, lineno, status):
        code, out, err = self.explain(*args)
        self.assertEqual(err, "")
        self.assertEqual(out.splitlines()[0], f"Line {lineno}: {SPEC_LINES[lineno - 1]}")
        self.assertEqual(code, status, out)
        return out

    def test_bonnie_and_clyde_are_denied_by_line_1(self):
        out = self.assertLine(["bonnie", "128.12.6.9", "137.12.1.1", "80"], 1, 1)
        self.assertEqual(out.splitlines()[1:], ["Access denied."])
        self.assertLine(["clyde", "128.12.6.200", "10.1.1.1", "telnet"], 1, 1)

    def test_bonnie_outside_the_subnet_falls_through_to_line_4(self):
        self.assertLine(["bonnie", "128.12.7.1", "137.12.1.1", "80"], 4, 0)

    def test_ylee_from_her_host_to_137_12_is_permitted_by_line_2(self):
        out = self.assertLine(["ylee", "128.12.6.4", "137.12.1.1", "80"], 2, 0)
        self.assertEqual(out.splitlines()[1:], ["Access permitted."])
        # Line 2 has no port condition: the first match wins over line 3.
        self.assertLine(["ylee", "128.12.6.4", "137.12.1.1", "telnet"], 2, 0)

    def test_ylee_elsewhere_is_decided_by_the_later_lines(self):
        self.assertLine(["ylee", "128.12.6.5", "137.12.1.1", "telnet"], 3, 1)
        self.assertLine(["ylee", "128.12.6.4", "10.1.1.1", "80"], 4, 0)

    def test_anyone_from_128_12_to_telnet_is_denied_by_line_3(self):
        self.assertLine(["anyone", "128.12.3.3", "10.1.1.1", "telnet"], 3, 1)
        self.assertLine(["anyone", "128.12.3.3", "10.1.1.1", "23"], 3, 1)

    def test_anyone_from_128_12_to_port_80_is_permitted_by_line_4(self):
        self.assertLine(["anyone", "128.12.3.3", "10.1.1.1", "80"], 4, 0)
        self.assertLine(["", "128.12.3.3", "10.1.1.1", "http"], 4, 0)

    def test_a_client_outside_every_line_is_denied_without_a_line(self):
        code, out, err = self.explain("anyone", "10.0.0.1", "128.12.3.3", "80")
        self.assertEqual((code, out, err), (1, NO_MATCH + "\n", ""))

    def test_json_output_fields(self):
        code, out, err = self.explain("--json", "ylee", "128.12.6.4", "137.12.1.1", "80")
        self.assertEqual((code, err), (0, ""))
        self.assertEqual(len(out.splitlines()), 1, "one JSON object on one line")
        result = json.loads(out)
        expected = {
            "permitted": True, "decision": "permit", "line": 2, "rule": SPEC_LINES[1],
            "ident": "n", "command": None, "file": self.path,
            "request": {"user": "ylee", "src": "128.12.6.4", "dst": "137.12.1.1", "port": 80,
                        "command": "connect"},
        }
        self.assertEqual({k: result.get(k) for k in expected}, expected)

        code, out, _ = self.explain("--json", "bonnie", "128.12.6.9", "137.12.1.1", "80")
        result = json.loads(out)
        self.assertEqual(code, 1)
        self.assertEqual((result["permitted"], result["decision"], result["line"]), (False, "deny", 1))
        self.assertEqual(result["command"], "/usr/ucb/mail -s 'Rejected SOCKS access by %u' $USER")
        self.assertEqual(result["rule"], SPEC_LINES[0])

        code, out, _ = self.explain("--json", "anyone", "10.0.0.1", "128.12.3.3", "80")
        result = json.loads(out)
        self.assertEqual(code, 1)
        self.assertEqual((result["permitted"], result["decision"], result["line"], result["rule"],
                          result["command"]), (False, "deny", None, None, None))

    def test_port_may_be_a_service_name(self):
        for name, number in (("telnet", 23), ("http", 80), ("ssh", 22)):
            code, out, _ = self.explain("--json", "anyone", "128.12.3.3", "10.1.1.1", name)
            self.assertEqual(json.loads(out)["request"]["port"], number)
            by_number = self.explain("--json", "anyone", "128.12.3.3", "10.1.1.1", str(number))
            self.assertEqual(json.loads(by_number[1])["line"], json.loads(out)["line"])

    def test_a_name_as_source_is_resolved_and_matches_a_name_rule(self):
        path = Files(self).write("names.conf", "permit localhost 255.255.255.255\n")
        code, out, err = run_cli("explain", "--access", path, "--json", "u", "localhost", "127.0.0.1", "80")
        result = json.loads(out)
        self.assertEqual((code, result["line"]), (0, 1))
        self.assertTrue(result["request"]["src"].startswith("127."))
        # The same address given as a number has no confirmed name: no match.
        code, out, err = run_cli("explain", "--access", path, "u", "127.0.0.1", "127.0.0.1", "80")
        self.assertEqual((code, out), (1, NO_MATCH + "\n"))

    def test_broken_access_file_exits_2_with_file_line_col(self):
        path = Files(self).write("broken.conf", BROKEN)
        code, out, err = run_cli("explain", "--access", path, "u", "127.0.0.1", "127.0.0.1", "80")
        self.assertEqual((code, out), (2, ""))
        self.assertEqual(_problem_positions(self, err, path), BROKEN_ERRORS)

    def test_missing_arguments_are_a_usage_error(self):
        code, out, err = self.explain("ylee", "128.12.6.4")
        self.assertEqual(code, 2)
        self.assertIn("usage:", err)


class ExplainExtensionTests(SynchronousTestCase):
    """IPv6 addresses and the cmd= field, our extensions."""

    def setUp(self):
        self.path = Files(self).write("sockd.conf", "deny ::/0 2001:db8:ffff::/48\n"
                                                    "permit cmd=connect 2001:db8::/32 ::/0\n"
                                                    "permit cmd=bind,udp 127.0.0.0/8\n")

    def explain(self, *args):
        code, out, err = run_cli("explain", "--access", self.path, "--json", *args)
        self.assertEqual(err, "")
        return code, json.loads(out)

    def test_ipv6_addresses(self):
        code, out = self.explain("alice", "2001:db8:1::5", "2001:db8:ffff:0::1", "80")
        self.assertEqual((code, out["line"], out["permitted"]), (1, 1, False))
        self.assertEqual(out["request"]["dst"], "2001:db8:ffff::1")
        code, out = self.explain("alice", "2001:db8:1::5", "::1", "80")
        self.assertEqual((code, out["line"], out["permitted"]), (0, 2, True))

    def test_command(self):
        code, out = self.explain("alice", "127.0.0.1", "10.0.0.1", "21")
        self.assertEqual((code, out["line"]), (1, None))
        for command in ("bind", "udp"):
            code, out = self.explain("--command", command, "alice", "127.0.0.1", "10.0.0.1", "21")
            self.assertEqual((code, out["line"], out["request"]["command"]), (0, 3, command))
        code, _, err = run_cli("explain", "--access", self.path, "--command", "fly", "a", "127.0.0.1",
                               "10.0.0.1", "21")
        self.assertEqual(code, 2)
        self.assertIn("invalid choice", err)


class ExplainErrorStatusTests(TestCase):
    """``explain`` documents "Exit 0 if permitted, 1 if denied, 2 on errors"."""

    def setUp(self):
        self.path = Files(self).write("sockd.conf", SPEC_EXAMPLE)

    def test_unknown_service_name_exits_2_not_1(self):
        code, out, err = run_cli("explain", "--access", self.path, "u", "128.12.3.3", "10.1.1.1", "nosuchservice")
        self.assertIn("unknown service name", err)
        self.assertEqual(code, 2, "an error must not look like a denial (1)")


    def test_port_out_of_range_exits_2_not_1(self):
        code, out, err = run_cli("explain", "--access", self.path, "u", "128.12.3.3", "10.1.1.1", "70000")
        self.assertIn("out of range", err)
        self.assertEqual(code, 2)


    def test_odd_digit_characters_are_an_error_not_a_traceback(self):
        # str.isdigit() accepts '²', int() does not: ValueError escapes main().
        code, out, err = run_cli("explain", "--access", self.path, "u", "128.12.3.3", "10.1.1.1", "\u00b2")
        self.assertEqual(code, 2)


    def test_installed_script_exit_status_on_a_bad_port(self):
        folder = temp_dir(self)
        code, out, err = run_script("explain", "--access", self.path, "u", "128.12.3.3", "10.1.1.1",
                                    "nosuchservice", cwd=folder)
        self.assertNotIn("Traceback", err)
        self.assertIn("unknown service name", err)
        self.assertEqual(code, 2)



class InstalledScriptTests(SynchronousTestCase):
    """The console script pip installed (``sockssuite = sockssuite.cli:main``)."""

    def setUp(self):
        self.files = Files(self)

    def test_check(self):
        good = self.files.write("sockd.conf", SPEC_EXAMPLE)
        broken = self.files.write("broken.conf", BROKEN)
        code, out, err = run_script("check", good, cwd=self.files.folder)
        self.assertEqual((code, err), (0, ""))
        self.assertIn(f"{good}: OK", out)
        code, out, err = run_script("check", broken, good, cwd=self.files.folder)
        self.assertEqual(code, 1)
        self.assertIn(f"{good}: OK", out)
        self.assertEqual(_problem_positions(self, err, broken), BROKEN_ERRORS)

    def test_explain(self):
        path = self.files.write("sockd.conf", SPEC_EXAMPLE)
        code, out, err = run_script("explain", "--access", path, "bonnie", "128.12.6.9", "137.12.1.1", "80",
                                    cwd=self.files.folder)
        self.assertEqual((code, out.splitlines()[0], err), (1, f"Line 1: {SPEC_LINES[0]}", ""))
        code, out, err = run_script("explain", "--access", path, "ylee", "128.12.6.4", "137.12.1.1", "80",
                                    cwd=self.files.folder)
        self.assertEqual((code, out.splitlines()[0]), (0, f"Line 2: {SPEC_LINES[1]}"))
        code, out, err = run_script("explain", "--access", path, "--json", "anyone", "128.12.3.3",
                                    "10.1.1.1", "telnet", cwd=self.files.folder)
        result = json.loads(out)
        self.assertEqual((code, result["line"], result["request"]["port"]), (1, 3, 23))
        code, out, err = run_script("explain", "--access", path, "x", "10.0.0.1", "10.1.1.1", "80",
                                    cwd=self.files.folder)
        self.assertEqual((code, out), (1, NO_MATCH + "\n"))

    def test_version_and_usage(self):
        code, out, err = run_script("--version", cwd=self.files.folder)
        self.assertEqual(code, 0)
        self.assertRegex(out, r"^sockssuite \d+\.\d+")
        code, out, err = run_script(cwd=self.files.folder)
        self.assertEqual(code, 2)
        self.assertIn("usage: sockssuite", err)


class CheckUDPRelayTests(TestCase):
    def test_udprelay_files_are_checked_in_their_own_format(self):
        import tempfile
        import shutil as _shutil
        from io import StringIO
        from unittest import mock
        from sockssuite import cli
        folder = tempfile.mkdtemp()
        self.addCleanup(_shutil.rmtree, folder, True)
        good = os.path.join(folder, "udprelay.conf")
        bad = os.path.join(folder, "other.conf")
        with open(good, "w") as f:
            f.write("relay 10.0.0.0/8 * 1525 192.0.2.7 1525 any\nencapsulate 10.0.0.0/8 1080\n")
        with open(bad, "w") as f:
            f.write("relay 10.0.0.0/8 * 1525\n")
        out, err = StringIO(), StringIO()
        with mock.patch("sys.stdout", out), mock.patch("sys.stderr", err):
            self.assertEqual(cli.main(["check", good]), 0)
            self.assertEqual(cli.main(["check", "--format", "udprelay", bad]), 1)
        self.assertIn("OK, 1 relay and 1 encapsulate line(s)", out.getvalue())
        self.assertIn(f"{bad}:1:", err.getvalue())
