"""One real three-node RabbitMQ cluster for every test of this directory that asks for it: it boots
in the background as soon as collection shows such a test (nodes in parallel), so the tests that
run on the ordinary test broker meanwhile hide its boot time; a vhost per test; and the figures
each fault test measured, printed at the end of the run (`cluster figures`), pass or fail."""

from __future__ import annotations

import os
import shutil
import threading

import pytest

from support.cluster import Cluster

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
FIGURES: list[str] = []
_BOOT: dict = {}  # "cluster", "thread", "error" once a boot was started


def _binaries() -> bool:
    return bool(shutil.which("rabbitmq-server") and shutil.which("rabbitmqctl"))


def _boot(cluster: Cluster) -> None:
    try:
        cluster.start()
    except BaseException as exc:  # reported by the fixture, in the test that needs the cluster
        _BOOT["error"] = exc


def _start_boot() -> None:
    if not _BOOT:
        cluster = Cluster(3)
        thread = threading.Thread(target=_boot, args=(cluster,), name="cluster boot", daemon=True)
        _BOOT.update(cluster=cluster, thread=thread)
        thread.start()


def _needs_cluster(item) -> bool:
    return "cluster" in getattr(item, "fixturenames", ())


@pytest.hookimpl(trylast=True)  # after -k/-m deselection: no boot when no selected test needs it
def pytest_collection_modifyitems(session, config, items):
    # This directory's tests that need no cluster run first, while it boots.
    here = os.path.dirname(os.path.abspath(__file__))
    slots = [i for i, item in enumerate(items) if str(item.path).startswith(here + os.sep)]
    ours = [items[i] for i in slots]
    for i, item in zip(slots, sorted(ours, key=_needs_cluster)):
        items[i] = item
    if _binaries() and any(_needs_cluster(item) for item in ours) and not config.option.collectonly:
        _start_boot()


def pytest_sessionfinish(session, exitstatus):
    if _BOOT:
        _BOOT["thread"].join(300)
        _BOOT["cluster"].close()


@pytest.fixture(scope="session")
def cluster():
    if not _binaries():
        message = "a RabbitMQ cluster needs the rabbitmq-server and rabbitmqctl binaries on this machine"
        if IN_CI:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    _start_boot()  # no-op when collection started it already
    _BOOT["thread"].join()
    if "error" in _BOOT:
        pytest.fail(f"could not start a three-node cluster: {_BOOT['error']}", pytrace=False)
    c = _BOOT["cluster"]
    FIGURES.append(f"cluster of {len(c.nodes)} nodes started and joined in {c.boot_seconds:.1f}s (in the background)")
    yield c


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
