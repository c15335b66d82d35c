"""ESync State Server (paper Alg. 2): Django project plus Django-free core modules.

``messages``, ``state``, ``scheduler``, ``router`` and ``dispatcher`` are plain Python; only
``settings``, ``urls``, ``views``, ``wsgi`` and ``fastserver`` need Django.
"""
