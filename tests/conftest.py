"""Fixtures shared by every test: the real broker, per-test vhosts, configs and processes."""

from __future__ import annotations

import os

import pytest

from support.broker_admin import VhostSupply
from support.rabbit import ContainerRabbit, PrivateNode, find_broker

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(scope="session")
def rabbit():
    """A real RabbitMQ: in CI a missing broker fails the run; locally the test skips."""
    broker, how = find_broker()
    if broker is None:
        message = (f"no RabbitMQ for integration tests ({how}); start one with "
                   "`rabbitmq-server -detached` or set UTILITARIAN_TEST_BROKER_URL")
        if IN_CI:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    yield broker
    if isinstance(broker, (PrivateNode, ContainerRabbit)):
        broker.stop()


@pytest.fixture(scope="session")
def vhost_supply(rabbit):
    if not rabbit.has_ctl:
        pytest.fail("per-test vhosts need rabbitmqctl for the test broker", pytrace=False)
    supply = VhostSupply(rabbit)
    yield supply
    supply.close()


@pytest.fixture
def vhost(vhost_supply):
    """A fresh vhost for one test, deleted afterwards: fixed queue names cannot collide."""
    name = vhost_supply.take()
    yield name
    vhost_supply.give_back(name)


@pytest.fixture
def broker_url(rabbit, vhost):
    return rabbit.url_for(vhost)


@pytest.fixture
def broker_settings(broker_url):
    from utilitarian.broker.connection import settings_from_url

    return settings_from_url(broker_url, confirm_timeout=15.0, connection_timeout=5.0)
