"""Metrics an operator can scrape (``--metrics ENDPOINT``), in the Prometheus
exposition format written by the ``prometheus-client`` library.

The numbers come from the log events the services already emit (one per
session close, per denial, per reload, per UDP association...), counted by a
log observer.  That keeps the hot paths free of metrics code, and with
``--workers N`` the workers' events reach the parent's log publisher too, so
the figures are the whole daemon's, not one process's.  What no event
carries per occurrence (UDP drops, which are logged rate-limited, and DNS
queries) is read from the services' own counters when scraped.
"""

from __future__ import annotations

from twisted.application import service
from twisted.internet import endpoints
from twisted.logger import Logger, globalLogPublisher
from twisted.web import resource, server

from .service import BoundService, StartError

log = Logger(namespace="sockssuite.metrics")

#: Session outcomes that are refusals (the request was not served).
REFUSALS = ("denied", "ident-unreachable", "ident-mismatch", "bind-refused", "client-limit",
            "server-full", "protocol-error", "handshake-timeout", "resolve-failed")
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    """The metric families and the observer that feeds them."""

    def __init__(self, services_root=None):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
        self.root = services_root
        r = self.registry = CollectorRegistry()
        self.opened = Counter("sockssuite_sessions_opened", "Sessions granted (relaying began)",
                              ["command"], registry=r)
        self.closed = Counter("sockssuite_sessions_closed", "Sessions ended, by command and outcome",
                              ["command", "outcome"], registry=r)
        self.current = Gauge("sockssuite_sessions_current", "Sessions relaying now", registry=r)
        self.bytes = Counter("sockssuite_relayed_bytes", "Bytes relayed (up: client to destination)",
                             ["direction"], registry=r)
        self.denials = Counter("sockssuite_denials", "Requests refused, by reason and deciding rule line",
                               ["reason", "rule_line"], registry=r)
        self.ident = Counter("sockssuite_ident_results", "identd outcomes", ["outcome"], registry=r)
        self.ident_seconds = Histogram("sockssuite_ident_seconds", "Time to an identd result",
                                       buckets=_LATENCY_BUCKETS, registry=r)
        self.handshake_seconds = Histogram("sockssuite_handshake_seconds",
                                           "Time from accept to the granting reply",
                                           buckets=_LATENCY_BUCKETS, registry=r)
        self.connect_failures = Counter("sockssuite_connect_failures", "Failed connects to destinations",
                                        ["kind"], registry=r)
        self.udp_associations = Counter("sockssuite_udp_associations", "UDP associations, by event",
                                        ["event"], registry=r)
        self.udp_datagrams = Counter("sockssuite_udp_datagrams", "Datagrams relayed by closed associations",
                                     ["direction"], registry=r)
        self.reloads = Counter("sockssuite_config_reloads", "Configuration reloads", ["result"], registry=r)
        self.rules = Gauge("sockssuite_rules_loaded", "Rules (or lines) in force, by file", ["file"],
                           registry=r)
        r.register(_ServiceCounters(self))

    # -- the observer ----------------------------------------------------------
    def __call__(self, event):
        kind = event.get("event")
        if kind is None:
            return
        try:
            handler = self._handlers.get(kind)
            if handler is not None:
                handler(self, event)
        except Exception:  # metrics must never break logging or a session
            pass

    def _session_opened(self, event):
        self.opened.labels(event.get("command", "-")).inc()
        self.current.inc()
        seconds = event.get("handshake_seconds")
        if seconds is not None:
            self.handshake_seconds.observe(seconds)

    def _session_closed(self, event):
        command, outcome = event.get("command", "-"), event.get("outcome", "-")
        self.closed.labels(command, outcome).inc()
        datagrams = event.get("datagrams")
        if event.get("engine") is not None or datagrams is not None:  # relaying: opened before
            self.current.dec()
        if datagrams:  # a SOCKS5 UDP ASSOCIATE
            self.udp_datagrams.labels("out").inc(datagrams.get("up") or 0)
            self.udp_datagrams.labels("in").inc(datagrams.get("down") or 0)
        self.bytes.labels("up").inc(event.get("bytes_up") or 0)
        self.bytes.labels("down").inc(event.get("bytes_down") or 0)
        if outcome in REFUSALS:
            line = event.get("rule_line")
            self.denials.labels(outcome, "-" if line is None else str(line)).inc()
        ident = str(event.get("ident") or "not-checked").split(" ", 1)[0]
        if ident != "not-checked":
            detail = str(event.get("ident") or "")
            self.ident.labels("timeout" if "within" in detail else ident).inc()
        seconds = event.get("ident_seconds")
        if seconds is not None:
            self.ident_seconds.observe(seconds)
        if outcome == "connect-failed":
            detail = str(event.get("detail") or "").lower()
            kind = "timeout" if "timed out" in detail else "refused" if "refused" in detail else "other"
            self.connect_failures.labels(kind).inc()

    def _reloaded(self, event):
        self.reloads.labels("ok").inc()
        if event.get("filename") is not None and event.get("count") is not None:
            self.rules.labels(str(event["filename"])).set(event["count"])

    def _reload_failed(self, event):
        self.reloads.labels("failed").inc()

    def _rules_loaded(self, event):
        self.rules.labels(str(event.get("filename"))).set(event.get("count") or 0)

    def _association_opened(self, event):
        self.udp_associations.labels("opened").inc()

    def _association_closed(self, event):
        self.udp_associations.labels("closed").inc()
        self.udp_datagrams.labels("out").inc(event.get("datagrams_out") or 0)
        self.udp_datagrams.labels("in").inc(event.get("datagrams_in") or 0)

    _handlers = {
        "session-opened": _session_opened,
        "session-closed": _session_closed,
        "reloaded": _reloaded,
        "reload-failed": _reload_failed,
        "rules-loaded": _rules_loaded,
        "association-opened": _association_opened,
        "association-closed": _association_closed,
    }


class _ServiceCounters:
    """Read at scrape time: UDP drops by reason, DNS queries."""

    def __init__(self, metrics):
        self.metrics = metrics

    def collect(self):
        from prometheus_client.core import CounterMetricFamily
        drops = CounterMetricFamily("sockssuite_udp_dropped", "Datagrams dropped, by reason",
                                    labels=["reason"])
        dns = CounterMetricFamily("sockssuite_dns_queries", "DNS forwarder queries, by result",
                                  labels=["result"])
        root = self.metrics.root
        if root is not None:
            for child in root:
                counters = getattr(child, "counters", None)
                if child.name == "udprelay" and counters:
                    for key, value in sorted(counters.items()):
                        if key.startswith("dropped-"):
                            drops.add_metric([key[len("dropped-"):]], value)
                if child.name == "dns":
                    dns.add_metric(["answered"], getattr(child, "queries", 0))
                    dns.add_metric(["refused"], getattr(child, "refused", 0))
        yield drops
        yield dns


class _MetricsPage(resource.Resource):
    isLeaf = True

    def __init__(self, metrics):
        resource.Resource.__init__(self)
        self.metrics = metrics

    def render_GET(self, request):
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode())
        return generate_latest(self.metrics.registry)


class MetricsService(BoundService):
    """Serves ``/metrics`` (any path, in fact) over HTTP on an endpoint string."""

    name = "metrics"
    _live = ("_reactor", "metrics", "port")

    def __init__(self, endpoint: str, reactor=None):
        self.endpoint = endpoint
        self._reset_live()
        self._reactor = reactor

    def _reset_live(self):
        self._reactor = None
        self.metrics = None
        self.port = None

    def _bind(self):
        reactor = self.reactor
        self.metrics = Metrics(self.parent)
        # Observe from now on: the metrics service is started first (see
        # tap.makeService), so it sees every other service's events.
        globalLogPublisher.addObserver(self.metrics)
        site = server.Site(_MetricsPage(self.metrics))
        site.noisy = False
        failures = []
        endpoints.serverFromString(reactor, self.endpoint).listen(site).addCallbacks(
            self._listening, failures.append)
        if failures:
            globalLogPublisher.removeObserver(self.metrics)
            raise StartError(f"sockssuite: --metrics {self.endpoint}: {failures[0].getErrorMessage()}")

    def _listening(self, port):
        self.port = port
        log.info("metrics on http://{host}:{port}/metrics", host=getattr(port.getHost(), "host", "?"),
                 port=getattr(port.getHost(), "port", "?"))

    def stopService(self):
        service.Service.stopService(self)
        self._unbound()
        if self.metrics is not None:
            globalLogPublisher.removeObserver(self.metrics)
        port, self.port = self.port, None
        if port is not None:
            return port.stopListening()
