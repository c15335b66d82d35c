"""The dashboard app: ``POST /progress/`` (what every worker reports), ``GET /dashboard/``
(HTML with server-drawn SVG curves) and ``GET /dashboard.json``.

The data lives in :class:`StateServer.progress.ProgressStore` (Django-free, its own lock, not
the Alg. 2 dispatcher); ``page`` and ``svg`` are plain functions (no Django), ``views`` are
thin. See docs/state-server.md, "Dashboard".
"""
