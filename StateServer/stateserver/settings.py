"""Django settings of the State Server: no database, minimal middleware, env-driven.

Environment variables (all optional):

* ``ESYNC_DEBUG=1``: Django debug mode (never on a shared network).
* ``ESYNC_SECRET_KEY``: secret key; a random one is generated at start when unset
  (nothing signed by it outlives the process).
* ``ESYNC_ALLOWED_HOSTS``: comma-separated Host header values; default: the names of the
  address the server is bound to (``ESYNC_BIND``, which gunicorn.conf.py sets; runserver
  sets them itself), never ``*``, which would let a rebound DNS name in (docs/security.md).
* ``ESYNC_TOKEN``: shared token required on every write (``X-ESync-Token: <token>`` or
  ``Authorization: Bearer <token>``) and on reads from other machines; launch.py makes one
  per run. Without it a server bound to a non-loopback address does not start, unless
  ``ESYNC_INSECURE=1`` (or runserver's ``--insecure``).
* ``ESYNC_CLUSTER_SIZE``: the run's number of workers (launch.py sets it for the State Server
  it starts). An init or rejoin of another ``num_workers`` is refused with HTTP 409. Unset (a
  hand-started server): any size may start a run, but a plain init of another size than a
  run in progress is refused with 409 (``StateServer.scheduler.Bounds``;
  docs/state-server.md, "Semantic bounds"). Anything but an integer in [1, 10000] stops the
  server at start.
* ``ESYNC_HTTPS=1``: served behind a TLS-terminating proxy that sets
  ``X-Forwarded-Proto: https``: turns on HSTS, the HTTPS redirect and secure cookies.
* ``ESYNC_ACCESS_LOG=1``: log every request (runserver); default logs only 4xx/5xx.
"""

from __future__ import annotations

import os
import secrets

from django.core.exceptions import ImproperlyConfigured

from ..messages import MAX_BODY_BYTES
from ..scheduler import CLUSTER_SIZE_VAR, parse_cluster_size
from ..security import allowed_hosts, bind_hosts


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


DEBUG = _flag("ESYNC_DEBUG")
SECRET_KEY = os.environ.get("ESYNC_SECRET_KEY") or secrets.token_urlsafe(64)
_EXPLICIT_HOSTS = [h.strip() for h in os.environ.get("ESYNC_ALLOWED_HOSTS", "").split(",")]
ALLOWED_HOSTS = [h for h in _EXPLICIT_HOSTS if h] or [
    name
    for host in bind_hosts(os.environ.get("ESYNC_BIND", "127.0.0.1:10010"))
    for name in allowed_hosts(host)
]
ESYNC_TOKEN = os.environ.get("ESYNC_TOKEN") or None
try:
    ESYNC_CLUSTER_SIZE = parse_cluster_size(os.environ.get(CLUSTER_SIZE_VAR))
except ValueError as exc:
    raise ImproperlyConfigured(str(exc)) from None

INSTALLED_APPS = ["StateServer.stateserver", "StateServer.dashboard"]  # 1st overrides runserver
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]
ROOT_URLCONF = "StateServer.stateserver.urls"
WSGI_APPLICATION = "StateServer.stateserver.wsgi.application"
DATABASES: dict[str, dict[str, str]] = {}  # in-memory state only
TEMPLATES: list[dict[str, object]] = []
USE_I18N = False
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"

# Request limits: bodies above MAX_BODY_BYTES are refused, uploads never touch the disk.
DATA_UPLOAD_MAX_MEMORY_SIZE = MAX_BODY_BYTES
DATA_UPLOAD_MAX_NUMBER_FIELDS = 100
DATA_UPLOAD_MAX_NUMBER_FILES = 1
FILE_UPLOAD_MAX_MEMORY_SIZE = MAX_BODY_BYTES
FILE_UPLOAD_HANDLERS = ["django.core.files.uploadhandler.MemoryFileUploadHandler"]

# Security headers and cookies (see docs/state-server.md, "check --deploy").
CSRF_FAILURE_VIEW = "StateServer.stateserver.views.csrf_failure"
CSRF_COOKIE_SECURE = True  # no view sets a CSRF cookie; if one ever does, HTTPS only
SESSION_COOKIE_SECURE = True
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
if _flag("ESYNC_HTTPS"):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = True
    SECURE_HSTS_SECONDS = 31_536_000
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
else:
    # Plain HTTP on a private cluster network: HSTS and the HTTPS redirect cannot apply.
    SILENCED_SYSTEM_CHECKS = ["security.W004", "security.W008"]

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "[{asctime}] {levelname} {name}: {message}", "style": "{"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "loggers": {
        "django.server": {
            "handlers": ["console"],
            "propagate": False,
            "level": "INFO" if _flag("ESYNC_ACCESS_LOG") else "WARNING",
        },
        "django.request": {"handlers": ["console"], "level": "ERROR", "propagate": False},
        "StateServer": {"handlers": ["console"], "level": "INFO", "propagate": False},
    },
}
