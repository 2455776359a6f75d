"""The ``: shell_cmd`` templates of sockd.conf: splitting and %-substitution.

Pure: stdlib only. The server decides *whether* to run a command (only with
``--allow-shell-commands``) and runs the argument vector produced here directly,
never through ``/bin/sh``; this module only turns the operator's template into
that vector.

Substituted values come from the network (a client's USERID, its identd's answer,
reverse DNS names), so every one passes through :func:`sanitize`, as the original
sockd did, even though no shell ever sees them: the command the operator runs may
itself be a shell script, or may treat a leading ``-`` as an option.
"""

from __future__ import annotations

import os
import re
import shlex

__all__ = ["SUBSTITUTIONS", "expand", "sanitize", "split_template"]

#: The %-letters and what they stand for (the original sockd's set).
SUBSTITUTIONS = {
    "A": "client host name (or address if unknown)",
    "a": "client address",
    "c": "command (connect or bind)",
    "p": "server process id",
    "S": "service name of the destination port",
    "s": "destination port number",
    "U": "user reported by identd ('unknown' if none)",
    "u": "USERID from the request",
    "Z": "destination host name (or address if unknown)",
    "z": "destination address",
}

# The original also allowed a backslash; we don't, since it can escape a quote in
# whatever script eventually sees the value.
_UNSAFE = re.compile(r"[^0-9A-Za-z!@%\-_=+:,./]")
_ENV_REFERENCE = re.compile(r"\$(?:([A-Za-z_][A-Za-z0-9_]*)|\{([A-Za-z_][A-Za-z0-9_]*)\})")
# A lone trailing '%' matches with an empty letter and is dropped like an unknown one.
_PERCENT = re.compile(r"%(.?)", re.DOTALL)

# When the caller has no value for a letter: names fall back to addresses, as
# the man page describes them.
_FALLBACK_KEY = {"A": "a", "Z": "z"}


def sanitize(value: str) -> str:
    """Make a substituted value harmless: every character outside
    ``0-9 a-z A-Z ! @ % - _ = + : , . /`` becomes ``_``, and so does a leading
    ``-`` (so the value can never be read as a command-line option)."""
    value = _UNSAFE.sub("_", value)
    if value.startswith("-"):
        value = "_" + value[1:]
    return value


def split_template(command: str) -> list[str]:
    """Split the operator's command text into words the way a POSIX shell would
    (quotes and backslashes), without any expansion.

    :raises ValueError: on unbalanced quotes or a trailing backslash.
    """
    return shlex.split(command, comments=False, posix=True)


def _value_for(letter: str, values: dict[str, str]) -> str:
    value = values.get(letter)
    if not value:
        if letter in _FALLBACK_KEY:
            value = values.get(_FALLBACK_KEY[letter])
        elif letter == "U":
            value = "unknown"
        elif letter == "p":
            value = str(os.getpid())
    return sanitize(value or "")


def expand(template_argv: list[str], values: dict[str, str], *, environ: dict[str, str]) -> list[str]:
    """Produce the argument vector to execute from a split template.

    For each word: first ``$NAME`` and ``${NAME}`` are replaced from *environ*
    (the operator's environment; an unknown name becomes empty), then the
    %-substitutions are made from *values* (keys are the letters in
    :data:`SUBSTITUTIONS`). ``%%`` is a percent sign; any other ``%x`` and a lone
    trailing ``%`` are dropped. Each pass scans the text once: what a
    substitution produced is never scanned again.
    """

    def environment(match: re.Match[str]) -> str:
        return environ.get(match.group(1) or match.group(2), "")

    def percent(match: re.Match[str]) -> str:
        letter = match.group(1)
        if letter == "%":
            return "%"
        if letter in SUBSTITUTIONS:
            return _value_for(letter, values)
        return ""

    return [_PERCENT.sub(percent, _ENV_REFERENCE.sub(environment, word)) for word in template_argv]
