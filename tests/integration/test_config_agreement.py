"""One validation path (issue 11 item 6): every file of the config corpus goes through `config check`
and through starting the real `worker` and `beat` processes, and all three agree: exit 78 naming the
same key, or (the accepted corpus) exit 0 from `config check` and both processes reaching READY=1
and stopping with 0 on TERM.

Limits of the evidence: the processes get a fresh vhost of the test broker through
$UTILITARIAN_BROKER_URL where a file names no broker, so a file the processes wrongly accepted would
show as a process that never exits (killed at the deadline, the test fails naming it). Negative
control: `test_the_comparison_can_fail` puts an accepted file through the refusal comparison: both
processes are still running at the deadline (no 78), which is how a disagreement shows.
"""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from support.procs import NotifySocket, wait_for
from utilitarian.cli import main

CORPUS_DIR = pathlib.Path(__file__).parents[1] / "unit" / "config_corpus"
REFUSED = sorted(CORPUS_DIR.glob("*.toml"))
ACCEPTED = sorted((CORPUS_DIR / "accepted").glob("*.toml"))
DEADLINE = 60.0  # a refusal takes a second or two; this is for a loaded machine


@pytest.fixture(scope="module")
def shared_vhost(rabbit, vhost_supply):
    name = vhost_supply.take()
    yield rabbit.url_for(name)
    vhost_supply.give_back(name)


def expected(path: pathlib.Path) -> str:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect: ")
    return first[len("# expect: "):]


def refused_by(path: pathlib.Path) -> list[str] | None:
    """The worker's arguments when only the worker of one profile refuses the file (`# refused by:
    worker --profile NAME`), else None: every process refuses it."""
    for line in path.read_text().splitlines()[1:3]:
        if line.startswith("# refused by: worker "):
            return line[len("# refused by: worker "):].split(" (")[0].split()
    return None


def start(kind: str, config: pathlib.Path, env: dict, log: pathlib.Path) -> subprocess.Popen:
    args = ["worker", *(refused_by(config) or ["-c", "1"])] if kind == "worker" else ["beat"]
    return subprocess.Popen([sys.executable, "-m", "utilitarian", *args, "--config", str(config)],
                            env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)


def environment(tmp_path: pathlib.Path, broker_url: str, notify: NotifySocket | None = None) -> dict:
    env = {**os.environ, "UTILITARIAN_BROKER_URL": broker_url, "PYTHONUNBUFFERED": "1",
           "STATE_DIRECTORY": str(tmp_path / "state"), "RUNTIME_DIRECTORY": str(tmp_path / "run")}
    env.pop("CREDENTIALS_DIRECTORY", None)  # the corpus's secret files sit beside its TOML files
    env.pop("NOTIFY_SOCKET", None)
    if notify is not None:
        env["NOTIFY_SOCKET"] = notify.path
    return env


def exit_codes(config: pathlib.Path, tmp_path: pathlib.Path, broker_url: str,
               deadline: float = DEADLINE, kinds=("worker", "beat")) -> dict[str, tuple[int | None, str]]:
    """worker and beat started side by side on `config`: {kind: (exit code or None, output)}."""
    env = environment(tmp_path, broker_url)
    procs = {kind: start(kind, config, env, tmp_path / f"{kind}.log") for kind in kinds}
    out = {}
    end = time.monotonic() + deadline  # one deadline for both: they started side by side
    for kind, proc in procs.items():
        try:
            code = proc.wait(max(0.0, end - time.monotonic()))
        except subprocess.TimeoutExpired:  # it accepted the file and runs: the disagreement we look for
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
            code = None
        out[kind] = (code, (tmp_path / f"{kind}.log").read_text(errors="replace"))
    return out


def test_corpus_covers_issue_11():
    names = {p.stem for p in REFUSED}
    for needle in ("database-mysql", "broker-ipv6-unclosed", "schedule-unknown-task", "password-file-not-utf8",
                   "url-file-not-utf8", "webhook-port-zero"):
        assert any(needle in n for n in names), needle
    assert len(ACCEPTED) >= 3


@pytest.mark.parametrize("path", REFUSED, ids=lambda p: p.stem)
def test_refused_by_config_check_worker_and_beat_alike(path, tmp_path, shared_vhost, capsys):
    # Given a file `config check` refuses with 78 naming a key
    assert main(["config", "check", "--config", str(path)]) == 78
    assert expected(path) in capsys.readouterr().err
    if refused_by(path) is not None:
        # When only one profile's worker needs what is wrong, Then that worker refuses it and the
        # beat (standing for every other process) starts.
        code, output = exit_codes(path, tmp_path, shared_vhost, kinds=("worker",))["worker"]
        assert code == 78 and expected(path) in output, f"worker exit {code}:\n{output[-2000:]}"
        _assert_ready_then_stops("beat", path, tmp_path, shared_vhost)
        return
    # When the real worker and beat start on it, Then both refuse it too, naming the same key
    for kind, (code, output) in exit_codes(path, tmp_path, shared_vhost).items():
        assert code == 78, f"{kind} exit {code} for a file config check refuses:\n{output[-2000:]}"
        assert expected(path) in output, f"{kind} refused for another reason:\n{output[-2000:]}"
        assert "Traceback" not in output


@pytest.mark.parametrize("path", ACCEPTED, ids=lambda p: p.stem)
def test_accepted_by_config_check_worker_and_beat_alike(path, tmp_path, shared_vhost, capsys):
    # Given a file `config check` accepts
    assert main(["config", "check", "--config", str(path)]) == 0, capsys.readouterr().err
    # When worker and beat start on it, Then both become ready and stop with 0 on TERM
    for kind in ("worker", "beat"):
        _assert_ready_then_stops(kind, path, tmp_path, shared_vhost)


def _assert_ready_then_stops(kind: str, path: pathlib.Path, tmp_path: pathlib.Path, broker_url: str) -> None:
    notify = NotifySocket()
    log = tmp_path / f"{kind}.log"
    proc = start(kind, path, environment(tmp_path, broker_url, notify), log)
    try:
        wait_for(lambda: notify.seen("READY=1") or proc.poll() is not None, DEADLINE, what=f"{kind} READY=1")
        assert proc.poll() is None, f"{kind} exit {proc.returncode} for an accepted file:\n{log.read_text()}"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(DEADLINE) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        notify.close()


def test_the_comparison_can_fail(tmp_path, shared_vhost):
    # A file the processes accept shows as no exit at all within the deadline: had `config check`
    # refused it, the refusal test would fail on exactly this.
    codes = exit_codes(ACCEPTED[0], tmp_path, shared_vhost, deadline=15.0)
    assert [code for code, _ in codes.values()] == [None, None]
