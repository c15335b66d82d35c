"""data/fetch.py's table: the official sources and their published MD5s. Fetching is
tests/integration/test_fetch.py's (a loopback server)."""

from __future__ import annotations

import re

import utils
from data import fetch

FASHION = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")
FASHION += ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
CIFAR_TAR = "cifar-10-python.tar.gz"


def test_table_has_the_official_sources_and_published_md5s() -> None:
    fm, cf = fetch.SOURCES["fashion-mnist"], fetch.SOURCES["cifar10"]
    assert [f.name for f in fm.files] == [base + ".gz" for base in FASHION]
    for f in fm.files:
        assert f.url == "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/" + f.name
    assert fm.files[0].md5 == "8d4fb7e6c68d591d4c3dfef9ec88bf0d"
    assert [(f.name, f.url, f.md5) for f in cf.files] == [
        (
            CIFAR_TAR,
            "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
            "c58f30108f718f92721af3b95e74349a",
        )
    ]
    for src in (fm, cf):
        assert all(re.fullmatch(r"[0-9a-f]{32}", f.md5) for f in src.files)
    assert set(fetch.SOURCES) < set(utils.DATASETS)
