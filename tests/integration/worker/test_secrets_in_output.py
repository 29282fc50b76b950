"""Secrets in output, the process paths (issue 11 item 8): a broker user whose password holds '@', ':'
and '/' (percent-encoded in the URL) and a webhook with a token. The worker's and the beat's logs
from start to stop at debug level, `utilitarian status` as text and JSON, and the error output of a
worker whose credentials the broker refuses: none shows any piece of either secret.

Limits: only what these processes print on these paths is read; a future log line quoting a URL
is covered by the MaskingFilter, whose unit tests are in tests/unit/core/test_masking.py.
"""

from __future__ import annotations

import signal
import urllib.parse

import pytest

from support.procs import NotifySocket, Proc, wait_for

PASSWORD = "p@ss:w/rd"
TOKEN = "tok3n-SECRET"
PIECES = ("p@ss", "ss:w", "w/rd", "%40ss", "%2Frd", "rd@", TOKEN)


def leaks(text: str) -> list[str]:
    return [p for p in PIECES if p in text]


@pytest.fixture
def meter_user(rabbit, vhost):
    yield from rabbit.user_on(vhost, PASSWORD, "meter")


def config_for(tmp_path, rabbit, vhost, user: str, password: str, *, raw_at: bool = False):
    # raw_at: the '@' typed as is (parse_url takes the last '@'); the old masker printed what followed it
    quoted = urllib.parse.quote(password, safe="@" if raw_at else "")
    url = rabbit.url_for(vhost, user=user, password=quoted)
    path = tmp_path / "utilitarian.toml"
    path.write_text(f'[broker]\nurl = "{url}"\nretry_backoff_max = 1.0\n\n'
                    f'[paths]\nstate_dir = "{tmp_path / "state"}"\nruntime_dir = "{tmp_path / "run"}"\n\n'
                    f'[beat]\nbuiltin_schedules = false\n\n'
                    f'[schedule.ping]\ncron = "* * * * * *"\ntask = "utilitarian.ping"\n\n'
                    f'[amr.publish]\nwebhook_url = "https://hooks.example/readings?token={TOKEN}"\n')
    return path


def run_until_ready(args: list[str], log, notify: NotifySocket) -> Proc:
    proc = Proc(args, log=log, env={"NOTIFY_SOCKET": notify.path})
    wait_for(lambda: notify.seen("READY=1") or not proc.alive(), 60, what=f"{args[0]} READY=1")
    assert proc.alive(), proc.output()
    return proc


@pytest.mark.parametrize("raw_at", [False, True], ids=["encoded", "raw-at"])
def test_worker_beat_and_status_never_print_the_secrets(tmp_path, rabbit, vhost, meter_user, raw_at):
    config = config_for(tmp_path, rabbit, vhost, meter_user, PASSWORD, raw_at=raw_at)
    procs = []
    try:
        # Given a worker and a beat running at debug level with those credentials
        for kind, extra in (("worker", ["-c", "1", "-Q", "default"]), ("beat", [])):
            notify = NotifySocket()
            procs.append(run_until_ready([kind, "--config", str(config), "-l", "debug", *extra],
                                         tmp_path / f"{kind}.log", notify))
        # When status is asked, as text and as JSON (with queue depths: it connects too)
        outputs = []
        for flags in ([], ["--json"]):
            status = Proc(["status", "--config", str(config), *flags], log=tmp_path / f"status{len(flags)}.log")
            assert status.wait(60) == 0, status.output()
            outputs.append(status.output())
        assert '"worker"' in outputs[1]
        for proc in procs:
            proc.signal(signal.SIGTERM)
            assert proc.wait(60) == 0, proc.output()[-2000:]
        # Then no output shows a piece of the password or the token
        outputs += [proc.output() for proc in procs]
        assert [leaks(text) for text in outputs] == [[]] * 4
    finally:
        for proc in procs:
            proc.kill_tree()


def test_refused_credentials_error_never_prints_the_secrets(tmp_path, rabbit, vhost, meter_user):
    config = config_for(tmp_path, rabbit, vhost, meter_user, PASSWORD + "@wrong")
    worker = Proc(["worker", "--config", str(config), "-c", "1", "-l", "debug"], log=tmp_path / "worker.log")
    try:
        assert worker.wait(60) == 78, worker.output()
        assert "refused" in worker.output()
        assert leaks(worker.output()) == []
    finally:
        worker.kill_tree()
