"""Fixtures every test gets: no test reaches a host outside this machine.

data.download is on by default, so a test that loads a public dataset from an empty folder would start a
real download. torchvision's dataset classes take their mirror URLs from class attributes; for the whole
session they point at a port of 127.0.0.1 that is bound but never listens, so a download attempt fails at
once with "connection refused".

The `ray` fixture is what every Ray test takes: Ray, shut down after the test; a skip where it is not installed,
a failure where LOTTERY_REQUIRE_RAY=1 (.ci/run), so CI never passes by skipping them.
"""
from __future__ import annotations

import os
import socket

import pytest


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
