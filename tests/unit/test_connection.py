"""Broker URLs: schemes, several hosts, ports, vhosts, TLS, and the password kept out of reprs."""

from __future__ import annotations

import pytest

from utilitarian.broker.connection import check_url, parse_url, replace_password, settings_from_url


def test_cluster_url_with_defaults_and_ipv6():
    scheme, hosts, user, password, vhost = parse_url("amqp://svc:p%40ss@r1,r2:5673,[::1]:5674/prod%2Feu")
    assert scheme == "amqp" and user == "svc" and password == "p@ss" and vhost == "prod/eu"
    assert hosts == (("r1", 5672), ("r2", 5673), ("::1", 5674))


def test_amqps_defaults_to_5671_and_tls():
    settings = settings_from_url("amqps://u:p@broker.example/")
    assert settings.tls and settings.hosts == (("broker.example", 5671),) and settings.vhost == "/"
    params = settings.pika_parameters()
    assert params[0].ssl_options is not None and params[0].ssl_options.server_hostname == "broker.example"


def test_one_pika_parameter_set_per_host_and_no_password_in_repr():
    settings = settings_from_url("amqp://u:topsecret@a,b/")
    assert [p.host for p in settings.pika_parameters()] == ["a", "b"]
    assert "topsecret" not in repr(settings) and settings.where == "a:5672,b:5672/"


@pytest.mark.parametrize("url,reason", [
    ("redis://localhost/0", "scheme must be amqp or amqps"),
    ("amqp://u:p@h:notaport/", "is not a number"),
    ("amqp://u:p@h:70000/", "out of range"),
    ("amqp://u:p@h1,,h2/", "empty host"),
    ("localhost:5672", "must look like"),
])
def test_bad_urls_are_explained(url, reason):
    assert reason in check_url(url)


def test_replace_password_quotes_it():
    assert replace_password("amqp://svc@h:5672/v", "a/b:c@d") == "amqp://svc:a%2Fb%3Ac%40d@h:5672/v"
    assert parse_url(replace_password("amqp://svc:old@h/v", "n:ew"))[3] == "n:ew"
