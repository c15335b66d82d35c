"""The Django project that serves the State Server over HTTP.

``settings``, ``urls``, ``views``, ``apps``, ``wsgi``, ``fastserver`` and the ``runserver``
command need Django; ``status_page`` and ``service`` do not. The Django-free core
(``messages``, ``state``, ``scheduler``, ``router``, ``dispatcher``) is one level up, in
the ``StateServer`` package.
"""
