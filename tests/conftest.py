"""Fixtures every test gets: no test reaches a host outside this machine.

data.download is on by default, so a test that loads a public dataset from an empty folder would start a
real download. torchvision's dataset classes take their mirror URLs from class attributes; for the whole
session they point at a port of 127.0.0.1 that is bound but never listens, so a download attempt fails at
once with "connection refused".

The `ray` fixture is what every Ray test takes: Ray, shut down after the test; a skip where it is not installed,
a failure where LOTTERY_REQUIRE_RAY=1 (.ci/run), so CI never passes by skipping them.

`make test` gives whole test files to two pytest-xdist processes. Each runs torch on its share of the cores, and
the files with the most `slow` tests are handed out first, so that no long file is left to the end while the other
process idles.
"""
from __future__ import annotations

import os
import socket
from collections import Counter

import pytest


def pytest_configure(config):
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers:  # one of `make test`'s pytest processes: torch in it gets its share of the cores
        import torch

        # Two threads beside a busy second process wait on each other at every parallel region: the
        # LeNet-300-100 ticket of test_realdata took 27 s alone and 156 s with two threads under xdist.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(workers)))


def pytest_collection_modifyitems(items):
    slow = Counter(item.path for item in items if item.get_closest_marker("slow"))
    items.sort(key=lambda item: -slow[item.path])  # stable: a file's tests keep their order


@pytest.fixture(scope="session")
def refused_url():
    """http://127.0.0.1:PORT/ where nothing listens (the port stays bound, so nothing else can take it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/"


@pytest.fixture(scope="session", autouse=True)
def offline_dataset_mirrors(refused_url):
    from torchvision import datasets

    patch = pytest.MonkeyPatch()
    for name in ("MNIST", "FashionMNIST"):
        patch.setattr(getattr(datasets, name), "mirrors", [f"{refused_url}{name.lower()}/"])
    for name in ("CIFAR10", "CIFAR100"):
        patch.setattr(getattr(datasets, name), "url", f"{refused_url}{name.lower()}-python.tar.gz")
    yield refused_url
    patch.undo()


@pytest.fixture
def ray():
    try:
        import ray
    except ImportError as error:
        if os.environ.get("LOTTERY_REQUIRE_RAY") == "1":
            pytest.fail(f"LOTTERY_REQUIRE_RAY=1 but Ray cannot be imported ({error})")
        pytest.skip(f"Ray is not installed ({error})")
    yield ray
    ray.shutdown()
