"""Training: one loop (``loop.py``) and one synchronisation strategy per mode (``modes.py``)."""
