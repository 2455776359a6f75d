"""Client-controlled text made safe for log lines."""

from __future__ import annotations



def printable(text: str, limit: int = 256) -> str:
    """``text`` with every control, non-ASCII-printable or backslash character
    written as an escape (``\\n``, ``\\x1b``, ``\\u202e``), cut at ``limit``
    characters: a user name or host name can then never forge a log line,
    move the terminal's cursor or hide text."""
    if len(text) > limit:
        text = text[:limit] + "..."
    if text.isascii() and text.isprintable() and "\\" not in text:
        return text
    out = []
    for ch in text:
        o = ord(ch)
        if ch == "\\":
            out.append("\\\\")
        elif 0x20 <= o < 0x7F:
            out.append(ch)
        else:
            out.append(ch.encode("unicode_escape").decode("ascii") if o > 0xFF or o < 0x20 or o == 0x7F
                       else "\\x%02x" % o)
    return "".join(out)
