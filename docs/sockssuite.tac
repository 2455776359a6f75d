# sockssuite as a .tac file: the service tree built from Python.
#
#   twistd -n -o --pidfile= -y sockssuite.tac        # in the foreground
#   twistd -o --pidfile /run/sockssuite/sockssuite.pid \
#          --logfile /var/log/sockssuite/twistd.log -y sockssuite.tac
#
# twistd looks for a module-level variable named "application".  The options
# are the ones of "twistd sockssuite" (see twistd-sockssuite(8)), checked
# exactly as on the command line: a wrong option or an access file with
# errors stops twistd before it starts, with the reason.
# (With -y, twistd never saves a sockssuite-shutdown.tap: -o is implied.)

from twisted.application import service

from sockssuite import tap

OPTIONS = [
    "--socks", "tcp:1080:interface=127.0.0.1",
    # "--access", "/etc/sockd.conf",
    # "--ident", "if-available",
    "--shutdown-grace", "10",
]

options = tap.Options()
options.parseOptions(OPTIONS)

application = service.Application("sockssuite")
tap.makeService(options).setServiceParent(application)
