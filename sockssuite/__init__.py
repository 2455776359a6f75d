"""sockssuite: a SOCKS proxy suite on Twisted (sockd, access control, relays, clients)."""

__version__ = "0.1.0"
