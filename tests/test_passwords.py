"""The SOCKS5 password file: parse errors with line:col, checking, and
`sockssuite passwd` writing it."""

import io
import os
import shutil
import stat
import tempfile
from contextlib import redirect_stdout
from unittest import mock

from twisted.trial.unittest import SynchronousTestCase

from sockssuite import cli, passwords
from sockssuite.rulesyntax import ConfigError


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
