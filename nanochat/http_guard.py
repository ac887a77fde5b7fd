"""
What the chat server does against slow and flooding clients (uvicorn alone keeps a connection
that never finishes its headers open forever, and logs a traceback for every accept that fails
once the process is out of file descriptors):

- a deadline for each request's head: a connection that has not sent a whole request line and
  headers within `header_timeout` seconds of opening (or of its previous response) is closed,
  whether it sent nothing or trickles a byte at a time;
- a connection limit (uvicorn's limit_concurrency: past it, new requests get 503 at once);
- the process's open-file limit raised to its hard limit, and accept errors (EMFILE, ENFILE)
  logged as one line per burst with the count, not a traceback per connection.

    serve(app, host, port, header_timeout=10, max_connections=512)
"""

import asyncio
import errno
import resource
import sys
import time

ACCEPT_ERRORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
BURST_SECONDS = 10.0  # accept errors within this window share one log line


def guarded_protocol(base, header_timeout):
    """A subclass of uvicorn's HTTP protocol class `base` whose connections must finish each
    request head within header_timeout seconds. It checks every header_timeout seconds: a
    connection whose request cycle is the same finished one (or none) as at the last check has
    sent no new request head in that time, and is closed; a reply still streaming is kept."""

    class Guarded(base):
        def connection_made(self, transport):
            super().connection_made(transport)
            self._seen_cycle = self.cycle
            self._deadline = asyncio.get_running_loop().call_later(header_timeout, self._check_head)

        def _check_head(self):
            cycle = self.cycle
            busy = cycle is not None and not cycle.response_complete
            if not busy and cycle is self._seen_cycle:
                self.transport.close()
                return
            self._seen_cycle = cycle
            self._deadline = asyncio.get_running_loop().call_later(header_timeout, self._check_head)

        def connection_lost(self, exc):
            self._deadline.cancel()
            super().connection_lost(exc)

    Guarded.__name__ = f"HeadDeadline{base.__name__}"
    return Guarded


class AcceptErrorLog:
    """An asyncio exception handler: accept errors of a full fd table become one line per burst;
    everything else goes to the default handler."""

    def __init__(self, out=sys.stderr):
        self.out, self.burst_start, self.count = out, None, 0

    def __call__(self, loop, context):
        error = context.get("exception")
        if not (isinstance(error, OSError) and error.errno in ACCEPT_ERRORS):
            loop.default_exception_handler(context)
            return
        now = time.monotonic()
        if self.burst_start is None or now - self.burst_start > BURST_SECONDS:
            if self.count > 1:
                print(f"server: {self.count - 1} more accept errors in that burst", file=self.out, flush=True)
            self.burst_start, self.count = now, 0
            print(f"server: cannot accept connections: {error.strerror} (too many open connections; "
                  f"raise `ulimit -n` or lower --max-connections); further errors of this burst are counted",
                  file=self.out, flush=True)
        self.count += 1


def raise_open_file_limit():
    """The soft RLIMIT_NOFILE up to the hard one; returns the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 16)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def serve(app, host, port, header_timeout, max_connections, log_level="info"):
    """uvicorn.run with the guards above."""
    import uvicorn
    from uvicorn.protocols.http.auto import AutoHTTPProtocol
    files = raise_open_file_limit()
    print(f"connections: at most {max_connections} at once (then 503), request heads within {header_timeout:g} s; "
          f"open-file limit {files}", flush=True)

    class Server(uvicorn.Server):
        async def startup(self, sockets=None):
            asyncio.get_running_loop().set_exception_handler(AcceptErrorLog())
            await super().startup(sockets)

    Server(uvicorn.Config(app, host=host, port=port, limit_concurrency=max_connections, log_level=log_level,
                          http=guarded_protocol(AutoHTTPProtocol, header_timeout))).run()
