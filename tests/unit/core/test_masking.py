"""Secrets in output (issue 11 item 8): one URL masker (utilitarian.log.mask_url) behind every path
that prints config or URLs: `config check` text and JSON, log lines and their tracebacks, and the
CLI's error line. Passwords hold '@', ':' and '/' (percent-encoded, and a raw '@' as operators
type it); the webhook carries a token in its query. The process paths (worker start log, status,
refused credentials) are in tests/integration/worker/test_secrets_in_output.py."""

from __future__ import annotations

import json
import logging

import pytest

from utilitarian.cli import main
from utilitarian.errors import ConfigError
from utilitarian.log import MaskingFilter, _JsonFormatter, mask_text, mask_url

PASSWORD = "p@ss:w/rd"
ENCODED = "p%40ss%3Aw%2Frd"
TOKEN = "tok3n-SECRET"
PIECES = ("p@ss", "ss:w", "w/rd", "%40ss", "%2Frd", "rd@", TOKEN)


def leaks(text: str) -> list[str]:
    return [p for p in PIECES if p in text]


@pytest.mark.parametrize("url, shown", [
    (f"amqp://meter:{ENCODED}@rabbit.example:5672/prod", "amqp://meter:****@rabbit.example:5672/prod"),
    (f"amqp://meter:{PASSWORD.replace('/', '%2F')}@h1:5672,h2:5673/v", "amqp://meter:****@h1:5672,h2:5673/v"),
    (f"amqp://meter:{ENCODED}@[::1]:5672/v", "amqp://meter:****@[::1]:5672/v"),
    ("amqp://meter:pa/ss@h/v", "amqp://meter:****@h/v"),                 # a raw '/' in the password
    (f"https://hooks.example/r?token={TOKEN}&region=n", "https://hooks.example/r?token=****&region=n"),
    (f"https://u:{ENCODED}@hooks.example/r?sig={TOKEN}", "https://u:****@hooks.example/r?sig=****"),
    ("amqp://meter@h/", "amqp://meter@h/"),                                # nothing secret: unchanged
    ("https://h/x?email=a@b", "https://h/x?email=a@b"),
])
def test_mask_url(url, shown):
    assert mask_url(url) == shown
    assert not leaks(mask_url(url))


def test_a_secret_field_masks_every_query_value():
    url = f"https://hooks.example/r?t={TOKEN}&x=1#frag"
    assert mask_url(url, secret=True) == "https://hooks.example/r?t=****&x=****#****"


def test_free_text_masks_each_url_in_it():
    text = f"cannot reach amqp://meter:{PASSWORD}@h/v (then https://w/x?token={TOKEN}); giving up"
    masked = mask_text(text)
    assert leaks(masked) == [] and "amqp://meter:****@h/v" in masked and masked.endswith("giving up")


def write(tmp_path, text: str):
    path = tmp_path / "u.toml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("password", [ENCODED, "p@ss:w%2Frd"], ids=["encoded", "raw-at"])
def test_config_check_text_and_json_mask_passwords_and_webhook_token(tmp_path, capsys, password):
    path = write(tmp_path, f'[broker]\nurl = "amqp://meter:{password}@rabbit.example:5672/prod"\n'
                           f'[database]\nurl = "postgresql://amr:{password}@db.example/amr"\n'
                           f'[amr.publish]\nwebhook_url = "https://hooks.example/r?token={TOKEN}"\n')
    assert main(["config", "check", "--config", path]) == 0
    text = capsys.readouterr().out
    assert main(["config", "check", "--json", "--config", path]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert leaks(text) == [] and leaks(json.dumps(doc)) == []
    assert doc["broker.url"] == "amqp://meter:****@rabbit.example:5672/prod"
    assert doc["amr.publish.webhook_url"] == "https://hooks.example/r?token=****"
    assert doc["database.url"] == "postgresql://amr:****@db.example/amr"


def test_password_file_with_special_characters_is_masked(tmp_path, capsys):
    (tmp_path / "pw").write_text(PASSWORD + "\n")
    path = write(tmp_path, f'[broker]\nurl = "amqp://meter@rabbit.example/prod"\npassword_file = "{tmp_path}/pw"\n')
    assert main(["config", "check", "--config", path]) == 0
    assert leaks(capsys.readouterr().out) == []


def test_log_lines_and_their_tracebacks_are_masked():
    try:
        raise RuntimeError(f"refused by amqp://meter:{PASSWORD}@h/v")
    except RuntimeError:
        import sys

        record = logging.LogRecord("t", logging.ERROR, __file__, 1, "publish to %s failed", (
            f"https://hooks.example/r?token={TOKEN}",), sys.exc_info())
    MaskingFilter().filter(record)
    for formatter in (logging.Formatter(), _JsonFormatter()):  # [logging] format = "text" / "json"
        line = formatter.format(record)
        assert leaks(line) == [] and "token=****" in line and "meter:****@h/v" in line


def test_cli_error_line_masks_a_quoted_url(capsys, monkeypatch):
    import utilitarian.commands.config_cmd as config_cmd

    def boom(args):
        raise ConfigError(f"cannot use amqp://meter:{PASSWORD}@h/v", key="broker.url")

    monkeypatch.setattr(config_cmd, "run_check", boom)
    assert main(["config", "check"]) == 78
    err = capsys.readouterr().err
    assert leaks(err) == [] and "meter:****@h/v" in err
