"""A real RabbitMQ for tests, found in the order of DESIGN section 8, with per-test vhosts.

1. $UTILITARIAN_TEST_BROKER_URL, 2. amqp://guest:guest@127.0.0.1:5672/, 3. a private node
started from the `rabbitmq-server` binary, 4. testcontainers where Docker runs.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.parse
import uuid

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/"


def reachable(url: str, timeout: float = 2.0) -> bool:
    """True when an AMQP handshake with these credentials succeeds."""
    import pika

    try:
        params = pika.URLParameters(url)
        params.socket_timeout = timeout
        params.connection_attempts = 1
        params.blocked_connection_timeout = timeout
        conn = pika.BlockingConnection(params)
        conn.close()
        return True
    except Exception:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Private nodes listen below the kernel's ephemeral range (32768-60999 by default). A port from
# bind(0) lies inside it: while a node is stopped (stop_app, a restart) any outgoing connection on
# the machine may take that port as its source port, and the node's listener then fails to come back
# (EADDRINUSE; the parallel test groups open thousands of connections). AMQP ports and distribution
# ports come from ranges of their own, so that the CLI tools' ports (distribution port + 10000..10010,
# RabbitMQ's rule) land in 30000-32710: clear of both, and still below the ephemeral range.
AMQP_PORTS = range(10000, 20000)
DIST_PORTS = range(20000, 22700)


def listen_port(ports: range = AMQP_PORTS) -> int:
    """A free port from `ports` on 127.0.0.1."""
    import random

    while True:
        port = random.choice(ports)
        if port == 15672:  # the shared broker's management plugin, if enabled
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port


class Rabbit:
    """A broker the tests may use: its URL and, when local, rabbitmqctl for admin."""

    def __init__(self, url: str, node: str | None = None, env: dict | None = None):
        self.url = url
        self.node = node  # None: the default local node
        self.env = env or {}
        self.has_ctl = bool(shutil.which("rabbitmqctl")) and _is_local(url)

    def ctl(self, *args: str, timeout: float = 60.0, check: bool = True) -> subprocess.CompletedProcess:
        cmd = ["rabbitmqctl"]
        if self.node:
            cmd += ["-n", self.node]
        cmd += list(args)
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=check,
                              env={**os.environ, **self.env})

    def url_for(self, vhost: str, user: str = "guest", password: str = "guest") -> str:
        parts = urllib.parse.urlsplit(self.url)
        host = parts.hostname or "127.0.0.1"
        port = parts.port or 5672
        return f"amqp://{user}:{password}@{host}:{port}/{urllib.parse.quote(vhost, safe='')}"

    def add_vhost(self, prefix: str = "t") -> str:
        vhost = f"{prefix}-{uuid.uuid4().hex[:10]}"
        self.ctl("add_vhost", vhost)
        self.ctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        return vhost

    def user_on(self, vhost: str, password: str, prefix: str = "u"):
        """A generator for fixtures: a new broker user with full permissions on `vhost` (like a
        site's `utilitarian` user), deleted afterwards."""
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        # One `eval` for both steps: every rabbitmqctl call boots an Erlang VM (1-10 s).
        user, pw, vh = (erlang_binary(text) for text in (name, password, vhost))
        self.ctl("eval", f"ok = rabbit_auth_backend_internal:add_user({user}, {pw}, <<\"tests\">>), "
                         f"ok = rabbit_auth_backend_internal:set_permissions({user}, {vh}, <<\".*\">>, "
                         f"<<\".*\">>, <<\".*\">>, <<\"tests\">>).")
        yield name
        # deleted while the next test runs; not a daemon, so the session waits for it at exit
        threading.Thread(target=self.ctl, args=("delete_user", name), kwargs={"check": False}).start()

    def delete_vhost(self, vhost: str, wait: bool = False) -> None:
        cmd = ["rabbitmqctl"] + (["-n", self.node] if self.node else []) + ["delete_vhost", vhost]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env={**os.environ, **self.env})
        if wait:
            proc.wait(60)

    def close_connections(self, vhost: str, reason: str = "test drops connections") -> None:
        self.ctl("close_all_connections", "-p", vhost, reason)

    def connection_names(self, vhost: str) -> list[str]:
        out = self.ctl("list_connections", "-p", vhost, "client_properties", "--quiet", "--no-table-headers").stdout
        return [line for line in out.splitlines() if line.strip()]


def erlang_binary(text: str) -> str:
    """`text` as an Erlang binary literal, for `rabbitmqctl eval`."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return f'<<"{escaped}"/utf8>>'


def _is_local(url: str) -> bool:
    host = urllib.parse.urlsplit(url).hostname
    return host in ("127.0.0.1", "localhost", "::1")


class PrivateNode(Rabbit):
    """A RabbitMQ node of our own (own port, own data dir) that a test may stop and restart."""

    def __init__(self, name: str | None = None, *, extra_conf: str = "", files: dict[str, bytes] | None = None):
        self.port = listen_port()
        self.dist_port = listen_port(DIST_PORTS)
        self.base = tempfile.mkdtemp(prefix="utilrmq-")
        self.name = name or f"utiltest{os.getpid()}x{uuid.uuid4().hex[:6]}"
        node = f"{self.name}@localhost"
        env = {
            "RABBITMQ_NODENAME": node,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": os.path.join(self.base, "mnesia"),
            "RABBITMQ_LOG_BASE": os.path.join(self.base, "log"),
            "RABBITMQ_PID_FILE": os.path.join(self.base, "node.pid"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": os.path.join(self.base, "enabled_plugins"),
            "RABBITMQ_ENABLED_PLUGINS": "",
            "RABBITMQ_CONFIG_FILE": os.path.join(self.base, "rabbitmq"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": os.path.join(self.base, "advanced.config"),
            "RABBITMQ_CONF_ENV_FILE": os.path.join(self.base, "rabbitmq-env.conf"),
        }
        with open(os.path.join(self.base, "enabled_plugins"), "w") as fh:
            fh.write("[].\n")
        with open(os.path.join(self.base, "rabbitmq.conf"), "w") as fh:
            fh.write(f"listeners.tcp.default = 127.0.0.1:{self.port}\nloopback_users = none\n{extra_conf}\n")
        for filename, content in (files or {}).items():  # certificates and the like, owned like the rest
            with open(os.path.join(self.base, filename), "wb") as fh:
                fh.write(content)
        if os.geteuid() == 0:
            # Debian's rabbitmq-server wrapper drops to the rabbitmq user, which must own the dir.
            import pwd

            try:
                pw = pwd.getpwnam("rabbitmq")
            except KeyError:
                pw = None
            if pw is not None:
                for root, dirs, files in os.walk(self.base):
                    for name in [root] + [os.path.join(root, x) for x in dirs + files]:
                        os.chown(name, pw.pw_uid, pw.pw_gid)
        super().__init__(f"amqp://guest:guest@127.0.0.1:{self.port}/", node=node, env=env)
        self.has_ctl = True

    def start(self, timeout: float = 90.0) -> None:
        subprocess.run(["rabbitmq-server", "-detached"], env={**os.environ, **self.env}, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if reachable(self.url, timeout=1.0):
                return
            time.sleep(0.3)
        raise RuntimeError(f"private RabbitMQ node {self.node} did not start within {timeout}s")

    def stop_app(self) -> None:
        """Stop the broker application (connections drop, port closes), keep the VM."""
        self.ctl("stop_app")

    def start_app(self, timeout: float = 60.0) -> None:
        self.ctl("start_app")
        self.wait_ready(timeout)

    def stop(self) -> None:
        self.ctl("stop", check=False, timeout=60)
        shutil.rmtree(self.base, ignore_errors=True)


def find_broker() -> tuple[Rabbit | None, str]:
    """The first broker that answers, and a sentence saying how it was found."""
    explicit = os.environ.get("UTILITARIAN_TEST_BROKER_URL")
    if explicit:
        if reachable(explicit):
            return Rabbit(explicit), f"UTILITARIAN_TEST_BROKER_URL={_mask(explicit)}"
        return None, f"UTILITARIAN_TEST_BROKER_URL={_mask(explicit)} does not answer"
    if reachable(DEFAULT_URL):
        return Rabbit(DEFAULT_URL), "the local RabbitMQ on 127.0.0.1:5672"
    if shutil.which("rabbitmq-server"):
        node = PrivateNode()
        try:
            node.start()
            return node, f"a private node {node.node} on port {node.port}"
        except Exception as exc:
            node.stop()
            reason = f"private node failed: {exc}"
    else:
        reason = "no rabbitmq-server binary"
    container = _start_container()
    if isinstance(container, Rabbit):
        return container, "a RabbitMQ container started with testcontainers"
    return None, f"{reason}; {container}"


class ContainerRabbit(Rabbit):
    """A broker in a container (testcontainers), where a Docker engine runs. Admin goes through
    `rabbitmqctl` inside the container."""

    def __init__(self, container):
        self.container = container
        host = container.get_container_host_ip()
        port = container.get_exposed_port(5672)
        super().__init__(f"amqp://guest:guest@{host}:{port}/")
        self.has_ctl = True
        self.node = None

    def ctl(self, *args: str, timeout: float = 60.0, check: bool = True):
        code, output = self.container.exec(["rabbitmqctl", *args])
        result = subprocess.CompletedProcess(args, code, output.decode(errors="replace"), "")
        if check and code:
            raise subprocess.CalledProcessError(code, args, result.stdout)
        return result

    def delete_vhost(self, vhost: str, wait: bool = False) -> None:
        self.ctl("delete_vhost", vhost, check=False)

    def stop(self) -> None:
        self.container.stop()


def _start_container():
    """A ContainerRabbit, or a sentence saying why there is none."""
    try:
        from testcontainers.rabbitmq import RabbitMqContainer
    except ImportError:
        return "testcontainers not installed"
    if not shutil.which("docker"):
        return "no Docker for testcontainers"
    if subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode != 0:
        return "no Docker engine answers (docker info failed)"
    try:
        container = RabbitMqContainer("rabbitmq:3.13")
        container.start()
    except Exception as exc:  # image pull or start failure: report, do not crash collection
        return f"testcontainers could not start RabbitMQ: {exc}"
    return ContainerRabbit(container)


def _mask(url: str) -> str:
    from utilitarian.log import mask_url

    return mask_url(url)


def running_private_node():
    """A started PrivateNode for one test, stopped and removed afterwards (a generator for a pytest
    fixture); skips without the rabbitmq-server binary."""
    import pytest

    if not shutil.which("rabbitmq-server"):
        pytest.skip("no rabbitmq-server binary for a private node")
    node = PrivateNode()
    try:
        node.start()
        yield node
    finally:
        node.stop()
