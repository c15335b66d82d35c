"""The data folder (``config.DATA_DIR``), and ``python -m data.fetch``, which downloads
Fashion-MNIST or CIFAR-10 into it from the official sources and verifies their published MD5s.

Training never downloads anything: ``utils.load_dataset`` reads the files from here (see
``data/README.md`` for the layout).
"""
