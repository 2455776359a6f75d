# A dropin: it must import nothing but ServiceMaker (never the reactor), because
# twistd imports every dropin before it installs the reactor the user asked for.
from twisted.application.service import ServiceMaker

sockssuite = ServiceMaker(
    "sockssuite",
    "sockssuite.tap",
    "SOCKS4/4a proxy server with sockd.conf access control",
    "sockssuite",
)
