"""Fetch a URL the way socks.conf says: twisted.web's Agent over RoutedEndpoint.

    python routed_fetch.py /etc/socks.conf http://www.example.org/

Each connection the Agent opens asks socks.conf: direct, denied, or through
the SOCKS servers of the deciding line (with failover).  SOCKS_SERVER, if
set, is the server of "sockd" lines that name none.
"""

import os
import sys

from twisted.internet import defer, task
from twisted.web.client import Agent, readBody
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from sockssuite.client import RoutedEndpoint
from sockssuite.routing import load_socks_conf


@implementer(IAgentEndpointFactory)
class SocksConfEndpoints:
    """Gives the Agent a RoutedEndpoint for every host it connects to."""

    def __init__(self, reactor, routes):
        self.reactor = reactor
        self.routes = routes

    def endpointForURI(self, uri):
        host = uri.host.decode("ascii")
        endpoint = RoutedEndpoint(self.reactor, self.routes, host, uri.port,
                                  default_server=os.environ.get("SOCKS_SERVER"))
        if uri.scheme == b"https":
            # TLS runs end to end, inside the SOCKS connection (needs pyOpenSSL).
            from twisted.internet.endpoints import wrapClientTLS
            from twisted.internet.ssl import optionsForClientTLS
            endpoint = wrapClientTLS(optionsForClientTLS(host), endpoint)
        return endpoint


async def main(reactor, conf_path, url):
    routes = load_socks_conf(conf_path)
    agent = Agent.usingEndpointFactory(reactor, SocksConfEndpoints(reactor, routes))
    response = await agent.request(b"GET", url.encode("ascii"))
    body = await readBody(response)
    sys.stdout.buffer.write(body)


if __name__ == "__main__":
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, *sys.argv[1:])))
