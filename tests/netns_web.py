"""A web server alone in a network namespace of its own: the destination of
tests that need a non-loopback address (tests/test_sockify.py, tsocks).

Run as root by the test, which talks to it over stdin and stdout::

    python netns_web.py PARENT_PID INTERFACE ADDRESS/PREFIX PORT FOLDER

1. It arranges to be killed when its parent dies (PR_SET_PDEATHSIG), moves
   itself into a new, anonymous network namespace (unshare(CLONE_NEWNET)) and
   prints ``netns``.
2. The test creates a veth pair whose peer ``INTERFACE`` it puts into this
   process's namespace (``ip link add ... peer name INTERFACE netns PID``) and
   writes a line on stdin.
3. It brings ``lo`` and ``INTERFACE`` up, gives ``INTERFACE`` the address
   (IPv6 stays off it: no link-local address, so no neighbour or router
   discovery traffic), serves ``FOLDER`` over HTTP on ``ADDRESS:PORT`` and
   prints ``listening``.

The namespace has no name (nothing under /run/netns) and belongs to this
process alone: when it ends, however it ends, the kernel dismantles the
namespace and the veth pair with it, so nothing outlives the test even if the
test process is killed.
"""

import ctypes
import functools
import http.server
import os
import signal
import subprocess
import sys

CLONE_NEWNET = 0x40000000
PR_SET_PDEATHSIG = 1


def ip(*args):
    subprocess.run(["ip", *args], check=True, timeout=10, stdin=subprocess.DEVNULL)


class Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # to stderr, which the test keeps
        sys.stderr.write("netns_web: %s\n" % (format % args))


def main():
    parent, interface, address, port, folder = sys.argv[1:]
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")
    if os.getppid() != int(parent):  # the test died before prctl took hold
        return 1
    if libc.unshare(CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, "unshare(CLONE_NEWNET): " + os.strerror(errno))
    print("netns", flush=True)
    if not sys.stdin.readline():  # the test gave up
        return 1
    ip("link", "set", "dev", "lo", "up")
    ip("link", "set", "dev", interface, "addrgenmode", "none")
    ip("address", "add", address, "dev", interface)
    ip("link", "set", "dev", interface, "up")
    host = address.split("/")[0]
    handler = functools.partial(Handler, directory=folder)
    server = http.server.ThreadingHTTPServer((host, int(port)), handler)
    print("listening", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
