"""Who may talk to the State Server: the rules, Django-free (docs/security.md).

* **Exposure.** A server bound to an address other than loopback needs ``ESYNC_TOKEN``
  (``launch.py`` makes one per run); without it, it refuses to start unless told
  ``--insecure`` (runserver) or ``ESYNC_INSECURE=1`` (gunicorn, which has no flags of ours).
* **Host names** (DNS rebinding: a page of ``evil.example`` whose name turns into 127.0.0.1):
  Django's ``ALLOWED_HOSTS`` comes from the bind address, and the fast path checks it too.
* **Writes** need the token and ``Content-Type: application/json``, and a browser's ``Origin``
  must be the server's own: a web page can send a form or a ``text/plain`` POST to any address
  without asking, but neither a JSON body nor the token header without a CORS preflight,
  which the server never grants.
* **Reads** (the dashboard and the status pages) are open to loopback clients; others need the
  token, as a header or as ``?token=`` (the link launch.py prints once).
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import socket
from urllib.parse import urlsplit

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
WILDCARDS = ("0.0.0.0", "::", "[::]", "")
INSECURE_VAR = "ESYNC_INSECURE"
EXPOSED_ERROR = (
    "the State Server is bound to {host}, which other machines reach, and ESYNC_TOKEN is not "
    "set: anyone who reaches it could steer or stop the run. Set ESYNC_TOKEN (launch.py makes "
    "one per run), bind to 127.0.0.1, or accept the risk with {override}"
)


def insecure_from_env() -> bool:
    """``ESYNC_INSECURE=1``: the user accepts an exposed server without a token."""
    return os.environ.get(INSECURE_VAR, "").strip().lower() in {"1", "true", "yes", "on"}


def bind_hosts(binds: str) -> list[str]:
    """The hosts of a comma-separated ``host:port`` list (gunicorn's ``--bind`` values)."""
    hosts = []
    for bind in binds.split(","):
        bind = bind.strip()
        if bind.startswith("unix:") or not bind:
            continue
        host = bind.rsplit(":", 1)[0] if bind.count(":") == 1 or bind.startswith("[") else bind
        hosts.append(host)
    return hosts


def is_loopback(host: str) -> bool:
    """``host`` (an address or ``localhost``, IPv6 with or without brackets) is loopback."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def exposure_error(host: str, token: str | None, insecure: bool, override: str) -> str | None:
    """Why a server bound to ``host`` must not start, or None (loopback, a token, or the
    user's explicit ``override``: ``--insecure`` or ``ESYNC_INSECURE=1``)."""
    if is_loopback(host) or token or insecure:
        return None
    return EXPOSED_ERROR.format(host=host or "0.0.0.0", override=override)


def local_addresses() -> list[str]:
    """This machine's addresses that a client may use as the Host header (those its host
    name resolves to, and the one it routes out of)."""
    found: list[str] = []
    name = socket.gethostname()
    for candidate in (name, socket.getfqdn()):
        try:
            found += [info[4][0] for info in socket.getaddrinfo(candidate, None)]
        except OSError:
            continue
    return [f"[{a}]" if ":" in a else a for a in dict.fromkeys(found)]


def allowed_hosts(bind: str) -> list[str]:
    """Django's ``ALLOWED_HOSTS`` for a server bound to ``bind``: the loopback names, the
    bound address, and for a wildcard bind this machine's names and addresses; never ``*``
    (which lets a rebound DNS name through)."""
    names = list(LOOPBACK_NAMES)
    if bind.strip("[]") in (w.strip("[]") for w in WILDCARDS):
        names += [socket.gethostname(), socket.getfqdn(), *local_addresses()]
    elif not is_loopback(bind):
        names.append(f"[{bind.strip('[]')}]" if ":" in bind else bind)
    return list(dict.fromkeys(n.lower() for n in names if n))


def same_origin(origin: str, host: str | None) -> bool:
    """A browser's ``Origin`` names this server (``http(s)://`` + the request's Host)."""
    if host is None or origin == "null":
        return False
    parts = urlsplit(origin)
    return parts.scheme in ("http", "https") and parts.netloc.lower() == host.lower()


def token_matches(given: str | None, expected: str) -> bool:
    """Constant-time comparison of a given token with the expected one."""
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())
