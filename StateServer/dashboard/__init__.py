"""The dashboard app: ``POST /progress/`` (what every worker reports), ``GET /dashboard/``
(HTML with server-drawn SVG curves) and ``GET /dashboard.json``.

Its logic is Django-free: ``reports`` (the messages and their strict parsing: a worker's
:class:`~StateServer.dashboard.reports.WorkerReport`, the launcher's ``RunMsg``), ``store``
(:class:`~StateServer.dashboard.store.DashboardStore`: runs, workers and curves, its own lock,
not the Alg. 2 dispatcher), ``series`` (bounded curves), ``page`` and ``svg`` (the HTML); the
``views`` are thin. See docs/state-server.md, "Dashboard".
"""
