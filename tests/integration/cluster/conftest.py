"""One real three-node RabbitMQ cluster for every test of this directory (started once, nodes in
parallel), a vhost per test, and the figures each fault test measured, printed at the end of the
run (`cluster figures`) whether the tests passed or not."""

from __future__ import annotations

import os
import shutil

import pytest

from support.cluster import Cluster

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
FIGURES: list[str] = []


@pytest.fixture(scope="session")
def cluster():
    if not shutil.which("rabbitmq-server") or not shutil.which("rabbitmqctl"):
        message = "a RabbitMQ cluster needs the rabbitmq-server and rabbitmqctl binaries on this machine"
        if IN_CI:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    c = Cluster(3)
    try:
        c.start()
    except Exception as exc:
        c.close()
        pytest.fail(f"could not start a three-node cluster: {exc}", pytrace=False)
    FIGURES.append(f"cluster of {len(c.nodes)} nodes started and joined in {c.boot_seconds:.1f}s")
    yield c
    c.close()


@pytest.fixture
def cluster_vhost(cluster):
    """A fresh vhost on the cluster; every node is running again when the test ends."""
    vhost = cluster.add_vhost()
    yield vhost
    for i in sorted(cluster.stopped):
        cluster.start_node(i)
    cluster.delete_vhost(vhost)


@pytest.fixture
def figures():
    """Append lines to be printed in the `cluster figures` section of the test summary."""
    return FIGURES


def pytest_terminal_summary(terminalreporter):
    if FIGURES:
        terminalreporter.section("cluster figures")
        for line in FIGURES:
            terminalreporter.write_line(line)
