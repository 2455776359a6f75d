"""Log observers: JSON lines for machines, one-line text, and syslog.

Every observer here swallows its own failures: a full disk or a closed
stream must never take a session (or the daemon) down with it.
"""

from __future__ import annotations

import json

from twisted.logger import LogLevel, eventAsJSON, formatEvent, formatTime

_SYSLOG_PRIORITY = {
    LogLevel.debug: "LOG_DEBUG",
    LogLevel.info: "LOG_INFO",
    LogLevel.warn: "LOG_WARNING",
    LogLevel.error: "LOG_ERR",
    LogLevel.critical: "LOG_CRIT",
}


def _one_line(event) -> str:
    text = formatEvent(event)
    failure = event.get("log_failure")
    if failure is not None:
        text += f" ({failure.getErrorMessage()})"
    # Client-controlled text is escaped where events are made; this keeps a
    # stray newline from anything else from splitting a record.
    return text.replace("\r", "\\r").replace("\n", "\\n")


def jsonl_observer(stream):
    """sockssuite's own events as JSON lines (one object a line, no record
    separator), for machines that read the log."""

    def observe(event):
        if not str(event.get("log_namespace", "")).startswith("sockssuite"):
            return
        try:
            record = {k: v for k, v in event.items()
                      if not k.startswith("log_") or k in ("log_namespace", "log_level", "log_time")}
            if "log_level" in record:
                record["log_level"] = record["log_level"].name
            record["message"] = formatEvent(event)
            line = json.dumps(record, default=str, ensure_ascii=True)
        except Exception:
            line = eventAsJSON(event)
        try:
            stream.write(line + "\n")
            stream.flush()
        except (OSError, ValueError):
            pass

    return observe


def text_observer(stream):
    """One line an event: time, namespace, message."""

    def observe(event):
        if event.get("log_format") is None and "log_failure" not in event:
            return  # an event for machines only (session-opened): no text
        try:
            stream.write(f"{formatTime(event.get('log_time'))} [{event.get('log_namespace', '-')}] "
                         f"{_one_line(event)}\n")
            stream.flush()
        except (OSError, ValueError):
            pass

    return observe


def syslog_observer(ident: str = "sockssuite", facility: str = "LOG_DAEMON"):
    """Events to the local syslog, each at its own priority (twistd's own
    --syslog maps every error to LOG_ALERT)."""
    import syslog

    syslog.openlog(ident, syslog.LOG_PID, getattr(syslog, facility))

    def observe(event):
        try:
            priority = getattr(syslog, _SYSLOG_PRIORITY.get(event.get("log_level"), "LOG_INFO"))
            syslog.syslog(priority, _one_line(event))
        except Exception:
            pass

    return observe
