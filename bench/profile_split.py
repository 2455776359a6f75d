"""Where a sockssuite process spends its time, from a py-spy raw profile.

    python bench/bench.py --targets sockssuite --figures rate --py-spy /tmp/rate.txt
    python bench/profile_split.py /tmp/rate.txt

py-spy's raw format is one line per distinct stack: frames from the
outermost to the innermost, separated by ``;``, then a space and the number
of samples.  py-spy leaves out samples of an idle thread (one waiting in
``epoll_wait``), so the shares are shares of busy time.  A sample whose
innermost frame is a line calling into C (a ``send``, a ``close``) counts
against that line: the time of the system call is there.

The split, each sample counted once, in this order:

* **logging**: any frame in ``twisted/logger`` or in the proxy's
  ``_log_close``: making the session event, the observers formatting and
  writing it;
* **reactor dispatch**: the innermost frame in Twisted's per-event wrappers
  (``callWithLogger`` and the log context in ``twisted/python``, the epoll
  loop, ``_doReadOrWrite``);
* everything else by the file of the innermost frame.
"""

from __future__ import annotations

import argparse
import collections
import re

_FRAME = re.compile(r"^(?P<function>.*?) \((?P<file>.*?):(?P<line>\d+)\)$")
_DISPATCH_FILES = ("twisted/python/log.py", "twisted/python/context.py", "twisted/internet/epollreactor.py",
                   "twisted/internet/posixbase.py", "twisted/internet/base.py")


def short(path: str) -> str:
    """``.../site-packages/twisted/internet/tcp.py`` -> ``twisted/internet/tcp.py``."""
    for marker in ("site-packages/", "/work/main/", "lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return path.lstrip("/").removeprefix(".11/").removeprefix(".12/")


def parse(lines):
    """(frames, samples) for each stack; a frame is (function, file, line)."""
    for raw in lines:
        raw = raw.rstrip("\n")
        if not raw.strip():
            continue
        stack, _, count = raw.rpartition(" ")
        frames = []
        for text in stack.split(";"):
            m = _FRAME.match(text)
            frames.append((m["function"], short(m["file"]), int(m["line"])) if m else (text, "?", 0))
        yield frames, int(count)


def split(stacks):
    """Samples by category, samples by innermost line, and the total."""
    categories = collections.Counter()
    lines = collections.Counter()
    total = 0
    for frames, n in stacks:
        total += n
        function, path, line = frames[-1]
        lines[f"{path}:{line} {function}"] += n
        if any(f[1].startswith("twisted/logger/") or f[0].endswith("_log_close") for f in frames):
            categories["logging"] += n
        elif path in _DISPATCH_FILES:
            categories["reactor dispatch"] += n
        else:
            categories[path] += n
    return categories, lines, total


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("profile", help="a py-spy profile in raw format")
    parser.add_argument("--top", type=int, default=15, help="how many innermost lines to list")
    args = parser.parse_args()
    with open(args.profile, encoding="utf-8") as f:
        categories, lines, total = split(parse(f))
    if not total:
        raise SystemExit(f"{args.profile}: no samples")
    print(f"{total} samples")
    for name, n in categories.most_common():
        print(f"{100 * n / total:6.1f}%  {name}")
    print(f"\ninnermost lines, top {args.top}:")
    for name, n in lines.most_common(args.top):
        print(f"{100 * n / total:6.1f}%  {name}")


if __name__ == "__main__":
    main()
