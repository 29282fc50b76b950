"""`utilitarian config check --connect` against the real RabbitMQ: every way the broker refuses a
configuration is exit 78 with a line naming what to fix (never the password), an unreachable broker
is 69, and a configuration the broker accepts is 0. The check must not leave anything behind that
a worker would trip over (its permission probe queue is exclusive)."""

from __future__ import annotations

import secrets

import pika
import pytest

from utilitarian import queues
from utilitarian.broker.connection import settings_from_url
from utilitarian.broker.topology import declare_topology, inspect_queues
from utilitarian.cli import main

PASSWORD = "s3cret-" + secrets.token_hex(6)  # distinctive: must never appear in any output


@pytest.fixture
def user(rabbit, vhost):
    yield from rabbit.user_on(vhost, PASSWORD, "fsx")


def check(tmp_path, capsys, url: str, password: str, *extra: str, queue_type: str = "classic"):
    (tmp_path / "broker-password").write_text(password + "\n" if password else "")
    cfg = tmp_path / "u.toml"
    cfg.write_text(f'[broker]\nurl = "{url}"\npassword_file = "{tmp_path}/broker-password"\n'
                   f'queue_type = "{queue_type}"\nconnection_timeout = 3.0\n')
    code = main(["config", "check", "--config", str(cfg), "--connect", *extra])
    out, err = capsys.readouterr()
    assert password not in out + err or not password, "the password was printed"
    assert "Traceback" not in err
    return code, out, err


def url_for(user: str, vhost: str, port: int = 5672, scheme: str = "amqp") -> str:
    return f"{scheme}://{user}@127.0.0.1:{port}/{vhost}"


def test_accepted_configuration_passes_and_reports_what_it_checked(tmp_path, capsys, user, vhost, broker_url):
    # Given the topology declared as a worker declares it,
    declare_topology(settings_from_url(broker_url))
    # when the site's user checks its configuration,
    code, out, err = check(tmp_path, capsys, url_for(user, vhost), PASSWORD)
    # then it passes, saying it connected, may work, and found the queues as they should be,
    assert code == 0, err
    assert f"connected to 127.0.0.1:5672/{vhost} as user '{user}'" in out
    assert "may configure, write and read" in out
    assert "39 of 39 queues exist, as classic queues" in out
    assert not err
    # and the permission probe left no queue behind.
    names = [q["name"] for q in _queues(vhost)]
    assert not [n for n in names if n.startswith("utilitarian.preflight")], names


def test_quiet_accepted_configuration_prints_nothing(tmp_path, capsys, user, vhost):
    code, out, err = check(tmp_path, capsys, url_for(user, vhost), PASSWORD, "--quiet")
    assert (code, out, err) == (0, "", "")


def test_wrong_password_is_78(tmp_path, capsys, user, vhost):
    code, out, err = check(tmp_path, capsys, url_for(user, vhost), "not-" + PASSWORD)
    assert code == 78
    assert f"the broker refused user '{user}' with this password" in err
    assert "not-" + PASSWORD not in out + err


def test_empty_password_is_78_and_says_it_is_empty(tmp_path, capsys, user, vhost):
    code, out, err = check(tmp_path, capsys, url_for(user, vhost), "")
    assert code == 78
    assert "the password is empty" in err


def test_missing_vhost_is_78_and_names_it(tmp_path, capsys, user, vhost):
    code, out, err = check(tmp_path, capsys, url_for(user, vhost + "-nope"), PASSWORD)
    assert code == 78
    assert f"vhost '{vhost}-nope' does not exist" in err and "rabbitmqctl add_vhost" in err


def test_user_without_permission_on_the_vhost_is_78(tmp_path, capsys, rabbit, user, vhost):
    rabbit.ctl("clear_permissions", "-p", vhost, user)
    code, out, err = check(tmp_path, capsys, url_for(user, vhost), PASSWORD)
    assert code == 78
    assert f"user '{user}' has no permissions on vhost '{vhost}'" in err and "set_permissions" in err


@pytest.mark.parametrize("configure, write, read, refused", [
    ("^$", ".*", ".*", "configure"),
    (".*", "^$", ".*", "write"),
    (".*", ".*", "^$", "read"),
])
def test_user_missing_one_permission_is_78(tmp_path, capsys, rabbit, user, vhost, configure, write, read, refused):
    rabbit.ctl("set_permissions", "-p", vhost, user, configure, write, read)
    code, out, err = check(tmp_path, capsys, url_for(user, vhost), PASSWORD)
    assert code == 78
    assert f"the broker refused {refused}" in err, err


def test_queue_of_the_other_type_is_78_naming_the_queue(tmp_path, capsys, user, vhost, broker_url):
    # Given classic queues on the broker and a configuration that asks for quorum queues,
    declare_topology(settings_from_url(broker_url))
    code, out, err = check(tmp_path, capsys, url_for(user, vhost), PASSWORD, queue_type="quorum")
    # then every queue that exists as classic is reported, with the way out.
    assert code == 78
    assert f"queue '{queues.DEFAULT}' exists as a classic queue but [broker] queue_type = \"quorum\"" in err
    assert "topology migrate" in err
    assert err.count("exists as a classic queue") == 39


def test_queue_with_other_arguments_is_78(tmp_path, capsys, user, vhost, broker_url):
    # Given a producer that declared one task queue with a priority argument,
    connection = pika.BlockingConnection(pika.URLParameters(broker_url))
    connection.channel().queue_declare(queues.AMR_DAILY, durable=True, arguments={"x-max-priority": 10})
    connection.close()
    code, out, err = check(tmp_path, capsys, url_for(user, vhost), PASSWORD)
    assert code == 78
    assert f"queue '{queues.AMR_DAILY}' exists with other arguments" in err
    # and the check changed nothing: the queue is still there, with its messages' home intact.
    (state,) = inspect_queues(settings_from_url(broker_url), [queues.AMR_DAILY])
    assert state.messages == 0


def test_unreachable_broker_is_69(tmp_path, capsys, user, vhost):
    from support.rabbit import free_port

    code, out, err = check(tmp_path, capsys, url_for(user, vhost, port=free_port()), PASSWORD)
    assert code == 69
    assert "cannot reach" in err and "Connection refused" in err


def test_tls_to_a_plain_listener_is_78(tmp_path, capsys, user, vhost):
    code, out, err = check(tmp_path, capsys, url_for(user, vhost, scheme="amqps"), PASSWORD)
    assert code == 78
    assert "TLS handshake failed" in err


def _queues(vhost: str) -> list[dict]:
    import json
    import subprocess

    proc = subprocess.run(["rabbitmqctl", "-q", "list_queues", "-p", vhost, "name", "--formatter", "json"],
                          capture_output=True, text=True, timeout=60, check=True)
    return json.loads(proc.stdout or "[]")
