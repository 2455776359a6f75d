"""``sockssuite report LOGFILE``: summaries of a ``--log-json`` session log.

Reads the JSON lines, keeps the ``session-closed`` and ``denied`` events, and
prints per-user and per-destination totals, the denials by deciding rule line,
and sessions per hour; ``--plot FILE.png`` draws bytes and sessions over time
(matplotlib, an optional extra).  Lines that are not JSON, or not ours, are
skipped and counted.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import sys
from dataclasses import dataclass, field


@dataclass
class Totals:
    sessions: int = 0
    bytes_up: int = 0
    bytes_down: int = 0


@dataclass
class Report:
    users: dict = field(default_factory=lambda: collections.defaultdict(Totals))
    destinations: dict = field(default_factory=lambda: collections.defaultdict(Totals))
    denials: collections.Counter = field(default_factory=collections.Counter)
    per_hour: dict = field(default_factory=lambda: collections.defaultdict(Totals))
    outcomes: collections.Counter = field(default_factory=collections.Counter)
    skipped: int = 0
    sessions: int = 0


def read_report(lines) -> Report:
    report = Report()
    for line in lines:
        line = line.strip()
        if not line:
            continue
        try:
            event = json.loads(line)
        except ValueError:
            report.skipped += 1
            continue
        if not isinstance(event, dict):
            report.skipped += 1
            continue
        kind = event.get("event")
        if kind == "session-closed":
            _session(report, event)
        elif kind == "denied":
            line_no = event.get("rule_line")
            rule = event.get("rule")
            key = (line_no, rule) if line_no is not None else (None, "no line matched")
            report.denials[key] += 1
        else:
            report.skipped += 1
    return report


def _add(totals: Totals, up: int, down: int):
    totals.sessions += 1
    totals.bytes_up += up
    totals.bytes_down += down


def _session(report: Report, event: dict):
    up = int(event.get("bytes_up") or 0)
    down = int(event.get("bytes_down") or 0)
    report.sessions += 1
    report.outcomes[event.get("outcome", "-")] += 1
    _add(report.users[event.get("user") or "(none)"], up, down)
    destination = event.get("requested") or event.get("resolved") or "-"
    _add(report.destinations[f"{destination}:{event.get('port', 0)}"], up, down)
    when = event.get("log_time")
    if isinstance(when, (int, float)):
        hour = datetime.datetime.fromtimestamp(when, datetime.timezone.utc).strftime("%Y-%m-%d %H:00")
        _add(report.per_hour[hour], up, down)


def _table(title, rows, out):
    print(title, file=out)
    if not rows:
        print("  (none)", file=out)
    for name, totals in rows:
        print(f"  {name:<40} {totals.sessions:>8} sessions {totals.bytes_up:>14} B up "
              f"{totals.bytes_down:>14} B down", file=out)
    print(file=out)


def format_report(report: Report, top: int, out=None):
    out = sys.stdout if out is None else out
    print(f"{report.sessions} session(s); outcomes: "
          + (", ".join(f"{k} {v}" for k, v in report.outcomes.most_common()) or "-"), file=out)
    if report.skipped:
        print(f"({report.skipped} other line(s) skipped)", file=out)
    print(file=out)
    by_bytes = lambda item: (-(item[1].bytes_up + item[1].bytes_down), item[0])  # noqa: E731
    _table("Per user", sorted(report.users.items(), key=by_bytes)[:top], out)
    _table("Per destination", sorted(report.destinations.items(), key=by_bytes)[:top], out)
    print("Denials by rule line", file=out)
    if not report.denials:
        print("  (none)", file=out)
    for (line_no, rule), count in report.denials.most_common(top):
        where = f"Line {line_no}: {rule}" if line_no is not None else rule
        print(f"  {count:>8}  {where}", file=out)
    print(file=out)
    _table("Sessions per hour (UTC)", sorted(report.per_hour.items()), out)


def plot(report: Report, path: str):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    hours = sorted(report.per_hour)
    sessions = [report.per_hour[h].sessions for h in hours]
    traffic = [(report.per_hour[h].bytes_up + report.per_hour[h].bytes_down) / 2**20 for h in hours]
    fig, left = plt.subplots(figsize=(9, 4))
    left.bar(range(len(hours)), sessions, color="#4c72b0", label="sessions")
    left.set_ylabel("sessions per hour")
    right = left.twinx()
    right.plot(range(len(hours)), traffic, color="#dd8452", marker="o", label="MiB relayed")
    right.set_ylabel("MiB relayed per hour")
    left.set_xticks(range(len(hours)))
    left.set_xticklabels([h[5:] for h in hours], rotation=45, ha="right", fontsize=8)
    left.set_title("sockssuite sessions and traffic (UTC)")
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


def report_main(argv) -> int:
    parser = argparse.ArgumentParser(prog="sockssuite report",
                                     description="Summarize a --log-json session log.")
    parser.add_argument("logfile", metavar="LOGFILE", help="the JSON-lines log ('-' for standard input)")
    parser.add_argument("--top", type=int, default=20, help="rows per table (default 20)")
    parser.add_argument("--plot", metavar="FILE.png", help="also draw sessions and bytes per hour")
    args = parser.parse_args(argv)
    try:
        if args.logfile == "-":
            report = read_report(sys.stdin)
        else:
            with open(args.logfile, encoding="utf-8", errors="replace") as f:
                report = read_report(f)
    except OSError as e:
        print(f"sockssuite report: {args.logfile}: {e.strerror or e}", file=sys.stderr)
        return 2
    format_report(report, args.top)
    if args.plot:
        try:
            plot(report, args.plot)
        except ImportError:
            print("sockssuite report: --plot needs matplotlib (pip install 'sockssuite[plot]')",
                  file=sys.stderr)
            return 2
        print(f"wrote {args.plot}")
    return 0
