"""The ``--passwords`` file for SOCKS5 username/password authentication.

One ``user:hash`` a line, the hash made by bcrypt (``sockssuite passwd FILE
USER`` writes one); ``#`` starts a comment line; blank lines are ignored.
Errors name file:line:column like the other configuration files.  Checking
takes the same time whether or not the user exists (a dummy hash is checked
for unknown users), and no password is ever logged.
"""

from __future__ import annotations

from dataclasses import dataclass

from .rulesyntax import ConfigError, Problem

#: bcrypt's cost for new hashes (2**12 rounds).
ROUNDS = 12
#: bcrypt reads at most this many bytes of a password (RFC 1929 allows 255);
#: longer ones are refused when set, and never match when checked.
MAX_PASSWORD = 72


def _bcrypt():
    try:
        import bcrypt
    except ImportError:  # pragma: no cover - installed with the package
        raise RuntimeError("SOCKS5 passwords need bcrypt (pip install bcrypt)")
    return bcrypt


@dataclass(frozen=True)
class PasswordFile:
    users: dict  # user name (bytes) -> bcrypt hash (bytes)
    filename: str

    def check(self, username: bytes, password: bytes) -> bool:
        bcrypt = _bcrypt()
        stored = self.users.get(username)
        if stored is None or len(password) > MAX_PASSWORD:
            # Same work as for a real user: the answer's timing says nothing.
            bcrypt.checkpw(password[:MAX_PASSWORD], _DUMMY())
            return False
        try:
            return bcrypt.checkpw(password, stored)
        except ValueError:
            return False


_dummy_hash = None


def _DUMMY():
    global _dummy_hash
    if _dummy_hash is None:
        _dummy_hash = _bcrypt().hashpw(b"not a password", _bcrypt().gensalt(ROUNDS))
    return _dummy_hash


def parse_passwords(text: str, filename: str = "<string>") -> PasswordFile:
    users, problems = {}, []
    for lineno, raw in enumerate(text.split("\n"), 1):
        line = raw.rstrip("\r")
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        user, sep, hashed = stripped.partition(":")
        column = line.index(stripped[0]) + 1
        if not sep or not user:
            problems.append(Problem(filename, lineno, column, "expected 'user:bcrypt-hash'"))
            continue
        if not hashed.startswith(("$2a$", "$2b$", "$2y$")) or len(hashed) != 60:
            problems.append(Problem(filename, lineno, column + len(user) + 1,
                                    "expected a bcrypt hash ($2b$...; make one with 'sockssuite passwd')"))
            continue
        key = user.encode("utf-8", "surrogateescape")
        if len(key) > 255:
            problems.append(Problem(filename, lineno, column, "user name over 255 bytes"))
            continue
        if key in users:
            problems.append(Problem(filename, lineno, column, f"user {user!r} listed twice"))
            continue
        users[key] = hashed.encode("ascii")
    if problems:
        raise ConfigError(problems)
    return PasswordFile(users, filename)


def load_passwords(path: str) -> PasswordFile:
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError([Problem(path, 0, 0, f"cannot read password file: {e.strerror or e}")]) from None
    return parse_passwords(text, path)


def set_password(path: str, user: str, password: bytes, rounds: int = ROUNDS) -> None:
    """Add or replace ``user`` in the file (created if missing), atomically."""
    import os
    import tempfile
    bcrypt = _bcrypt()
    if not user or ":" in user or "\n" in user:
        raise ValueError("a user name may not be empty or contain ':' or a newline")
    if len(password) > MAX_PASSWORD:
        raise ValueError(f"a password may be at most {MAX_PASSWORD} bytes (bcrypt reads no more)")
    hashed = bcrypt.hashpw(password, bcrypt.gensalt(rounds)).decode("ascii")
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        lines = []
    out, replaced = [], False
    for line in lines:
        if line.partition(":")[0].strip() == user and not line.strip().startswith("#"):
            if not replaced:
                out.append(f"{user}:{hashed}")
                replaced = True
            continue
        out.append(line)
    if not replaced:
        out.append(f"{user}:{hashed}")
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".passwd-")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write("\n".join(out) + "\n")
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
