"""A real three-node RabbitMQ cluster on this machine for scale-out and failover tests: private
nodes (own ports, data dirs and names unique to the run) started in parallel and joined one after the
other with `join_cluster` (recipes/rabbitmq-cluster.md), per-test vhosts, and the faults: stop a node's
broker application, find the node a client is connected to or the one leading a quorum queue."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import threading
import time
import urllib.parse
import uuid

from support.rabbit import PrivateNode

class Cluster:
    """`size` private nodes forming one cluster; node 0 is the one the others joined."""

    def __init__(self, size: int = 3):
        run = f"utilcl{os.getpid()}x{uuid.uuid4().hex[:5]}"
        self.nodes = [PrivateNode(f"{run}n{i}") for i in range(size)]  # ports clear of the shared broker's
        self.stopped: set[int] = set()
        self.stopping: dict[int, subprocess.Popen] = {}  # node -> its `stop_app` still running
        self.boot_seconds = 0.0

    # --- life cycle -------------------------------------------------------------------------------
    def start(self, timeout: float = 180.0) -> None:
        began = time.monotonic()
        # pika logs every refused connection while the nodes boot (ERROR lines in a failed test's
        # captured log that say nothing): quiet while we wait.
        pika_log = logging.getLogger("pika")
        level, pika_log.level = pika_log.level, logging.CRITICAL
        try:
            self._start(timeout)
        finally:
            pika_log.setLevel(level)
        self.boot_seconds = time.monotonic() - began

    def _start(self, timeout: float) -> None:
        errors: list[BaseException] = []

        def boot(i: int) -> None:
            try:
                try:
                    self.nodes[i].start(timeout / 2)
                except RuntimeError:
                    # Seen once under load: a node that never opened its port (a free port taken
                    # by another process between our probe and its bind). One retry, fresh ports.
                    failed = self.nodes[i]
                    failed.stop()
                    self.nodes[i] = PrivateNode(f"{failed.name}r")
                    self.nodes[i].start(timeout / 2)
            except BaseException as exc:  # reported below, with the other nodes' fate
                errors.append(exc)

        threads = [threading.Thread(target=boot, args=(i,)) for i in range(len(self.nodes))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise RuntimeError(f"cluster nodes did not start: {errors[0]}\n{self.log_tails()}")
        seed = self.nodes[0].node

        # One node after the other, as the recipe does: two nodes starting their broker at once
        # right after joining can both merge the seed's Mnesia schema, and one of them may then fail
        # to start (seen in CI: `{badmatch,{error,{normal,{mnesia_app,start,...}}}}`, start_app exit
        # 69). A start that fails anyway is tried once more: the schema is in place by then.
        for node in self.nodes[1:]:
            try:
                node.ctl("stop_app", timeout=120)
                node.ctl("join_cluster", seed, timeout=120)
                try:
                    node.ctl("start_app", timeout=120)
                except subprocess.CalledProcessError:
                    time.sleep(2)
                    node.ctl("start_app", timeout=120)
                node.wait_ready(timeout)
            except Exception as exc:
                raise RuntimeError(f"cluster node {node.node} did not join: {exc}\n{self.log_tails()}") from None
        members = self.running_nodes()
        if len(members) != len(self.nodes):
            raise RuntimeError(f"cluster has {len(members)} running nodes, expected {len(self.nodes)}: {members}")

    def log_tails(self, lines: int = 15) -> str:
        out = []
        for node in self.nodes:
            log_dir = os.path.join(node.base, "log")
            for name in sorted(os.listdir(log_dir)) if os.path.isdir(log_dir) else ():
                if name.endswith(".log"):
                    with open(os.path.join(log_dir, name), errors="replace") as fh:
                        tail = fh.read().splitlines()[-lines:]
                    out.append(f"--- {node.node} {name}\n" + "\n".join(tail))
        return "\n".join(out)

    def close(self) -> None:
        threads = [threading.Thread(target=n.stop) for n in self.nodes]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)

    # --- admin (through a running node) -------------------------------------------------------------
    def ctl(self, *args: str, timeout: float = 60.0, check: bool = True) -> subprocess.CompletedProcess:
        return self.nodes[self.any_running()].ctl(*args, timeout=timeout, check=check)

    def any_running(self) -> int:
        return next(i for i in range(len(self.nodes)) if i not in self.stopped)

    def running_nodes(self) -> list[str]:
        out = self.ctl("eval", "rabbit_nodes:all_running().", timeout=60).stdout
        return [n for n in (x.strip(" []'\n") for x in out.split(",")) if n]

    def add_vhost(self, prefix: str = "cl") -> str:
        vhost = f"{prefix}-{uuid.uuid4().hex[:10]}"
        self.ctl("add_vhost", vhost)
        self.ctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        return vhost

    def delete_vhost(self, vhost: str) -> None:
        """In the background: deleting 40 quorum queues takes a while, and nothing waits for it
        (the cluster's data goes with the nodes at the end of the session)."""
        node = self.nodes[self.any_running()]
        subprocess.Popen(["rabbitmqctl", "-n", node.node, "delete_vhost", vhost], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, env={**os.environ, **node.env})

    def url(self, vhost: str, order: list[int] | None = None) -> str:
        """The broker URL listing every node (in `order`), as an operator would configure it."""
        hosts = ",".join(f"127.0.0.1:{self.nodes[i].port}" for i in (order or range(len(self.nodes))))
        return f"amqp://guest:guest@{hosts}/{urllib.parse.quote(vhost, safe='')}"

    def node_url(self, i: int, vhost: str) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.nodes[i].port}/{urllib.parse.quote(vhost, safe='')}"

    # --- faults -------------------------------------------------------------------------------------
    def stop_node(self, i: int) -> float:
        """Stop node i's broker application (connections drop, its port closes, its quorum replicas
        stop; the Erlang VM stays for a quick restart). Returns the monotonic time the node dropped
        its client connections, as a probe connection to it saw it."""
        watch = DropWatch(self.node_url(i, "/"))
        node = self.nodes[i]
        # `stop_app` returns only once the whole application stopped (tens of seconds under load);
        # the test goes on as soon as the node dropped its connections, `start_node` waits for it.
        self.stopping[i] = subprocess.Popen(["rabbitmqctl", "-n", node.node, "stop_app"], stdout=subprocess.DEVNULL,
                                            stderr=subprocess.DEVNULL, env={**os.environ, **node.env})
        self.stopped.add(i)
        try:
            watch.thread.join(120)
        finally:
            watch.close()
        if watch.dropped_at is None:
            raise AssertionError(f"node {node.node} did not drop its connections within 120 s of stop_app")
        return watch.dropped_at

    def start_node(self, i: int, timeout: float = 120.0) -> None:
        stopping = self.stopping.pop(i, None)
        if stopping is not None:
            stopping.wait(timeout)
        self.nodes[i].ctl("start_app", timeout=timeout)
        self.nodes[i].wait_ready(timeout)
        self.stopped.discard(i)

    def index_of(self, node_name: str) -> int:
        return next(i for i, n in enumerate(self.nodes) if n.node == node_name)

    def connections(self, vhost: str) -> list[tuple[int, str]]:
        """(node index, connection name) of every client connection in the vhost."""
        port_to_node = {n.port: i for i, n in enumerate(self.nodes)}
        out = self.ctl("list_connections", "-p", vhost, "port", "client_properties", "--quiet",
                       "--no-table-headers").stdout
        found = []
        for line in out.splitlines():
            port, _, props = line.partition("\t")
            name = re.search(r'\{"connection_name","([^"]*)"\}', props)
            if port.strip().isdigit() and int(port) in port_to_node:
                found.append((port_to_node[int(port)], name.group(1) if name else ""))
        return found

    def nodes_of(self, vhost: str, name_part: str) -> set[int]:
        """Nodes that hold connections whose connection_name contains `name_part`."""
        return {i for i, name in self.connections(vhost) if name_part in name}

    def leader_of(self, vhost: str, queue: str) -> int | None:
        out = self.ctl("list_queues", "-p", vhost, "name", "leader", "--quiet", "--no-table-headers").stdout
        for line in out.splitlines():
            name, _, leader = line.partition("\t")
            if name == queue and leader.strip() in {n.node for n in self.nodes}:
                return self.index_of(leader.strip())
        return None

    def wait_members_online(self, vhost: str, timeout: float = 120.0) -> None:
        """Until every quorum queue of the vhost has all its members online again (after a restart)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = self.ctl("list_queues", "-p", vhost, "name", "type", "online", "--quiet",
                           "--no-table-headers", check=False).stdout
            rows = [line.split("\t") for line in out.splitlines() if "\tquorum\t" in line]
            if rows and all(row[2].count("@") == len(self.nodes) for row in rows):
                return
            time.sleep(0.5)
        raise AssertionError(f"quorum members of {vhost} not all online within {timeout}s")


class DropWatch:
    """A connection to one node pumped by a thread; `dropped_at` is when the node closed it."""

    def __init__(self, url: str):
        import pika

        self.connection = pika.BlockingConnection(pika.URLParameters(url))
        self.dropped_at: float | None = None
        self.running = True
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            while self.running:
                self.connection.process_data_events(time_limit=0.02)
        except Exception:  # the node closed the connection: that is the event we wait for
            self.dropped_at = time.monotonic()

    def close(self) -> None:
        self.running = False
        self.thread.join(5)
        try:
            if self.connection.is_open:
                self.connection.close()
        except Exception:  # already closed by the node
            pass


def reconnect_seconds(url: str, queue: str, down_at: float, want: int, timeout: float = 60.0,
                      interval: float = 0.05) -> float:
    """Seconds from `down_at` until `queue` has `want` consumers again, seen from `url` (a node
    that stayed up): the broker's own count, evidence that the clients consume again. A passive
    declare may fail while the queue elects a leader; that only means "not yet"."""
    import pika

    deadline = time.monotonic() + timeout
    connection = None
    try:
        while time.monotonic() < deadline:
            try:
                if connection is None or not connection.is_open:
                    connection = pika.BlockingConnection(pika.URLParameters(url))
                    channel = connection.channel()
                elif not channel.is_open:
                    channel = connection.channel()
                if channel.queue_declare(queue, passive=True).method.consumer_count >= want:
                    return time.monotonic() - down_at
            except pika.exceptions.AMQPError:
                pass
            time.sleep(interval)
    finally:
        if connection is not None and connection.is_open:
            connection.close()
    raise AssertionError(f"{queue} did not get {want} consumer(s) back within {timeout}s")


def write_config(path, broker_url: str, extra: str = "", *, queue_type: str = "quorum", name: str = "",
                 beat: str = ""):
    """A config for processes on the cluster: quorum queues, a short reconnect backoff cap, state
    and runtime dirs of their own (`name` tells apart several "hosts" sharing a test dir), `beat`
    lines added to the [beat] table."""
    base = path.parent / name if name else path.parent
    path.write_text(f'[broker]\nurl = "{broker_url}"\nretry_backoff_max = 1.0\nqueue_type = "{queue_type}"\n\n'
                    f'[paths]\nstate_dir = "{base / "state"}"\nruntime_dir = "{base / "run"}"\n\n'
                    f'[beat]\nbuiltin_schedules = false\n{beat}\n\n{extra}\n')
    return path


def celery_producer(url: str, queue_type: str, names):
    """A Celery 5 producer with the settings of README's "Working with Celery producers"."""
    from celery import Celery
    from kombu import Exchange, Queue

    app = Celery("producer", broker=url)
    app.conf.update(task_serializer="json", accept_content=["json"], task_protocol=2,
                    broker_transport_options={"confirm_publish": True})
    if queue_type == "quorum":
        app.conf.task_queues = [Queue(name, Exchange(name, type="direct"), routing_key=name,
                                      queue_arguments={"x-queue-type": "quorum"}) for name in names]
    else:
        app.conf.task_create_missing_queues = True
    return app


__all__ = ["Cluster", "celery_producer", "reconnect_seconds", "write_config"]
