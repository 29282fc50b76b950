"""Fleet control over the broker, with real processes on the real RabbitMQ: three workers standing
in for three hosts (own UTILITARIAN_HOSTNAME and node names) and a beat. `status --all` lists all
four, a SIGSTOPped worker as silent (its roster announcement proves it exists; it cannot answer);
`control` changes only what it names, refuses unknown hosts and pools without changing anything,
and a broker user without permission on the vhost gets a clear error and changes nothing.

Limits of the evidence: the "hosts" share one machine and one clock; a real host's silence (power
loss) looks to the broker like the SIGSTOP case until its connection times out, and afterwards like
a member that is only on the roster, which `test_silent_member_is_listed` covers too."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid

import pytest

from support.procs import Proc, wait_for, write_config
from utilitarian.broker.topology import declare_topology, inspect_queues

PROFILES = """
[[workers.alpha.pools]]
name = "main"
queues = ["default", "amr"]
processes = 1
threads = 2

[[workers.beta.pools]]
name = "main"
queues = ["default"]
processes = 1
threads = 2

[[workers.beta.pools]]
name = "commits"
queues = ["commits"]
processes = 1
threads = 2
"""


def cli(config, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "utilitarian", *args, "--config", str(config)],
                          capture_output=True, text=True, timeout=timeout)


def fleet(config, timeout: float = 2.0) -> dict[str, dict]:
    proc = cli(config, "status", "--all", "--json", "--timeout", str(timeout))
    assert proc.returncode in (0, 1, 3), proc.stderr
    return {m["member"]: m for m in json.loads(proc.stdout)["members"]}


@pytest.fixture
def hosts(tmp_path, broker_url, broker_settings):
    declare_topology(broker_settings)
    config = write_config(tmp_path / "utilitarian.toml", broker_url, PROFILES)
    procs: list[Proc] = []

    def start(args: list[str], host: str, name: str) -> Proc:
        proc = Proc([*args, "--config", str(config)], env={"UTILITARIAN_HOSTNAME": host},
                    log=tmp_path / f"{name}.log")
        procs.append(proc)
        return proc

    workers = {
        "alpha@host1": start(["worker", "--profile", "alpha", "-n", "alpha@host1"], "host1", "w1"),
        "beta@host2": start(["worker", "--profile", "beta", "-n", "beta@host2"], "host2", "w2"),
        "alpha@host3": start(["worker", "--profile", "alpha", "-n", "alpha@host3"], "host3", "w3"),
    }
    beat = start(["beat"], "host4", "beat")
    names = set(workers) | {"beat@host4"}
    wait_for(lambda: names <= {m for m, r in fleet(config).items() if r["state"] == "answering"}
             and all(r.get("consuming", "").startswith(("yes", "leader")) for r in fleet(config).values()),
             timeout=90, interval=0.5, what="three workers and a beat answering and consuming")
    yield config, workers, beat
    for proc in procs:
        try:
            os.killpg(proc.pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
        proc.kill_tree()


def pool_size(report: dict, pool: str) -> int:
    return next(p["processes"] for p in report["pools"] if p["name"] == pool)


def test_status_all_lists_every_worker_and_beat_and_a_stopped_one_as_silent(hosts):
    config, workers, beat = hosts
    # Given three workers and a beat answering
    members = fleet(config)
    assert {m["kind"] for m in members.values()} == {"worker", "beat"}
    w2 = members["beta@host2"]
    assert w2["host"] == "host2" and w2["profile"] == "beta" and w2["version"]
    assert [p["name"] for p in w2["pools"]] == ["main", "commits"] and w2["children"] == 2
    assert w2["consuming"] == "yes" and w2["in_flight"] == 0 and w2["failed"] == 0
    assert members["beat@host4"]["role"] == "leader"
    text = cli(config, "status", "--all")
    assert text.returncode == 0 and "beta@host2" in text.stdout and "leader" in text.stdout
    # When one worker (master, children and agent) is stopped by SIGSTOP
    os.killpg(workers["alpha@host3"].pid, signal.SIGSTOP)
    try:
        # Then it is still listed, as silent, and the others answer
        members = fleet(config, timeout=1.5)
        assert members["alpha@host3"]["state"] == "silent", members["alpha@host3"]
        assert members["alpha@host3"]["host"] == "host3"
        assert all(members[n]["state"] == "answering" for n in ("alpha@host1", "beta@host2", "beat@host4"))
        proc = cli(config, "status", "--all", "--timeout", "1.5")
        assert proc.returncode == 1 and "SILENT" in proc.stdout
        # and a command for everyone lists it as silent too
        ping = cli(config, "control", "ping", "--timeout", "1.5")
        assert ping.returncode == 1 and "SILENT" in ping.stdout and ping.stdout.count("pong") == 3
    finally:
        os.killpg(workers["alpha@host3"].pid, signal.SIGCONT)
    wait_for(lambda: fleet(config)["alpha@host3"]["state"] == "answering", timeout=30, what="answering again")


def test_a_killed_child_serving_the_control_agent_hands_it_to_a_sibling(hosts):
    import psutil

    config, workers, beat = hosts
    # Given beta's two children, one of them serving the worker's control agent (a thread)
    serving = wait_for(lambda: fleet(config)["beta@host2"]["status"].get("control_agent"), timeout=30,
                       what="the serving child reported to its master")
    master = psutil.Process(workers["beta@host2"].pid)
    assert serving in {c.pid for c in master.children()}
    # When that child is killed
    psutil.Process(serving).kill()
    # Then a sibling (or the master's replacement of the killed child) serves within seconds, the
    # worker answers again and its tasks never depended on it
    wait_for(lambda: (fleet(config)["beta@host2"]["status"].get("control_agent") or serving) != serving,
             timeout=30, interval=0.5, what="another child serving the control agent")
    members = fleet(config)
    assert members["beta@host2"]["state"] == "answering"
    wait_for(lambda: fleet(config)["beta@host2"]["consuming"] == "yes", timeout=30, what="consuming again")


def test_control_grow_shrink_drain_resume_change_only_what_they_name(hosts, broker_settings):
    config, workers, beat = hosts
    # grow one host's pool: only that host changes
    proc = cli(config, "control", "grow", "main", "2", "--host", "host1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    wait_for(lambda: fleet(config)["alpha@host1"]["children"] == 3, timeout=60, what="host1 grown to 3 children")
    members = fleet(config)
    assert pool_size(members["alpha@host1"], "main") == 3 and pool_size(members["alpha@host3"], "main") == 1
    assert members["beta@host2"]["children"] == 2
    assert cli(config, "control", "shrink", "main", "1", "--host", "alpha@host1").returncode == 0
    wait_for(lambda: fleet(config)["alpha@host1"]["children"] == 2, timeout=60, what="host1 shrunk to 2")
    # drain amr everywhere (only the alpha workers consume it), then resume
    assert cli(config, "control", "drain", "amr").returncode == 0
    amr = "utilitarian.tasks.amr"
    wait_for(lambda: inspect_queues(broker_settings, [amr])[0].consumers == 0, timeout=60,
             what="no consumer left on the amr queue")
    members = fleet(config)
    assert "drained amr" in members["alpha@host1"]["consuming"]
    assert inspect_queues(broker_settings, ["utilitarian.tasks.default"])[0].consumers == 4  # 2 + 1 + 1
    assert cli(config, "control", "resume", "amr").returncode == 0
    wait_for(lambda: inspect_queues(broker_settings, [amr])[0].consumers == 3, timeout=60,
             what="the alpha workers' three children consume amr again")


def test_bad_input_and_no_permission_change_nothing(hosts, rabbit, vhost, tmp_path):
    config, workers, beat = hosts
    before = {m: r.get("pools") for m, r in fleet(config).items()}
    cases = [("grow", "nosuchpool", "1"), ("grow", "main", "1", "--host", "nosuchhost"),
             ("drain", "nosuchqueue"), ("drain", "cleanup"), ("shrink", "main", "5"), ("grow", "main", "0")]
    for case in cases:
        proc = cli(config, "control", *case)
        assert proc.returncode != 0, (case, proc.stdout)
        assert proc.stderr.strip() or "ERROR" in proc.stdout, case
    assert "nosuchhost" in cli(config, "control", "ping", "--host", "nosuchhost").stderr
    # A broker user without permissions on the vhost
    user, password = f"nop-{uuid.uuid4().hex[:8]}", "nop"
    rabbit.ctl("add_user", user, password)
    try:
        (tmp_path / "nop").mkdir()
        other = write_config(tmp_path / "nop" / "utilitarian.toml", rabbit.url_for(vhost, user, password), PROFILES)
        proc = cli(other, "control", "grow", "main", "1")
        assert proc.returncode != 0 and "vhost" in proc.stderr and "nothing was sent" in proc.stderr
        assert cli(other, "status", "--all").returncode != 0
    finally:
        rabbit.ctl("delete_user", user)
    assert {m: r.get("pools") for m, r in fleet(config).items()} == before


def test_a_stopped_worker_leaves_the_list_a_killed_one_stays_silent(hosts):
    config, workers, beat = hosts
    # When one master is stopped on purpose and another one dies
    workers["beta@host2"].signal(signal.SIGTERM)
    assert workers["beta@host2"].wait(60) == 0
    os.kill(workers["alpha@host3"].pid, signal.SIGKILL)  # its children and agent follow it
    # Then the stopped one said goodbye; the dead one is listed as silent, not left out
    members = fleet(config, timeout=1.5)
    assert "beta@host2" not in members
    assert members["alpha@host3"]["state"] == "silent"
    assert members["alpha@host1"]["state"] == "answering"
