"""ESync State Server (paper Alg. 2).

The core is plain Python, importable without Django: ``messages`` (the wire protocol, shared
with ``trainer/state_client.py``), ``state``, ``scheduler``, ``router`` and ``dispatcher``.
The Django project that serves it over HTTP is ``StateServer.stateserver``; its command line
is ``python -m StateServer <command>`` (run from the repo root).
"""
