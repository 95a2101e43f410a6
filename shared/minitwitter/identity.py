"""The client address of an async invocation, decided at submission, carried unforgeably.

A rate limit counts a request in its client's bucket (:func:`http.client_ip`, which believes
``X-Forwarded-For`` only from a trusted proxy). An ``/async-function`` request is run later by
the queue-worker, which calls the function through the gateway from its own address, so the
client must travel with it: the gateway decides the address at submission, exactly as a sync
call would see it, and stores it in the job; the worker sends it as::

    X-Minitwitter-Client: <address> <expiry, Unix seconds> <hex HMAC-SHA256>

signed over the address, the expiry and the call id with a key derived from ``jwt-secret``
(which the gateway and the worker hold, and whose holders can mint any token anyway). The
gateway removes the header from every request it receives and, when the signature verifies and
has not expired, passes the address to the function in the WSGI environ (:data:`ENVIRON_KEY`,
which no HTTP header can set), where :func:`http.client_ip` takes it before anything else. A
client sending the header gets nothing from it; one replaying a header it saw is bounded by the
expiry and the call id, and never sees one: functions do not receive it.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import ipaddress
import time
from collections.abc import MutableMapping
from typing import Any

HEADER = "X-Minitwitter-Client"
#: The header as a WSGI environ key.
ENVIRON_HEADER = "HTTP_X_MINITWITTER_CLIENT"
#: Where the gateway puts a verified address for the function (not an ``HTTP_*`` key).
ENVIRON_KEY = "minitwitter.client_ip"
#: Seconds a signature is good for: the worker signs when it sends the request.
VALID_SECONDS = 60


@functools.lru_cache(maxsize=4)
def _key(secret: str) -> bytes:
    """A key of its own for this purpose, derived from the token key."""
    return hmac.new(secret.encode(), b"minitwitter client identity v1", hashlib.sha256).digest()


def _mac(secret: str, address: str, expires: int, call_id: str) -> str:
    message = f"{address}\n{expires}\n{call_id}".encode()
    return hmac.new(_key(secret), message, hashlib.sha256).hexdigest()


def sign(address: str, call_id: str, secret: str, now: float | None = None) -> str:
    """The header value carrying ``address`` for the call ``call_id``."""
    expires = int(now if now is not None else time.time()) + VALID_SECONDS
    return f"{address} {expires} {_mac(secret, address, expires, call_id)}"


def verify(value: str, call_id: str, secret: str, now: float | None = None) -> str | None:
    """The address a header value carries, or None when it is forged, malformed or expired."""
    parts = value.split(" ")
    if len(parts) != 3 or not secret or not parts[1].isdigit():
        return None
    address, expires, mac = parts[0], int(parts[1]), parts[2]
    if expires < (now if now is not None else time.time()):
        return None
    if not hmac.compare_digest(mac, _mac(secret, address, expires, call_id)):
        return None
    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        return None


def accept(environ: MutableMapping[str, Any], call_id: str, secret: str) -> None:
    """Take the header out of a request's environ; a verified address goes to :data:`ENVIRON_KEY`."""
    value = environ.pop(ENVIRON_HEADER, None)
    environ.pop(ENVIRON_KEY, None)
    if value:
        address = verify(value, call_id, secret)
        if address is not None:
            environ[ENVIRON_KEY] = address
