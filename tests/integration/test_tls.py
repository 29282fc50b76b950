"""amqps:// against a real RabbitMQ node with a TLS listener and a certificate from our own CA:
the broker URL, [broker.tls] ca/verify, and a clear refusal for a certificate we do not trust."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pika
import pytest

from support.rabbit import PrivateNode, free_port
from utilitarian import queues


def openssl(*args: str, cwd) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_ca_and_server(directory, name: str = "ca") -> None:
    """A CA and a server certificate for localhost/127.0.0.1 signed by it."""
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN=utilitarian test {name}",
            "-keyout", f"{name}.key", "-out", f"{name}.pem", cwd=directory)
    (directory / "san.cnf").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-keyout", f"{name}-server.key",
            "-out", f"{name}-server.csr", cwd=directory)
    openssl("x509", "-req", "-in", f"{name}-server.csr", "-CA", f"{name}.pem", "-CAkey", f"{name}.key",
            "-CAcreateserial", "-days", "2", "-extfile", "san.cnf", "-out", f"{name}-server.pem", cwd=directory)


@pytest.fixture(scope="module")
def tls_node(tmp_path_factory):
    if not shutil.which("rabbitmq-server") or not shutil.which("openssl"):
        pytest.skip("needs rabbitmq-server and openssl for a private TLS node")
    certs = tmp_path_factory.mktemp("certs")
    make_ca_and_server(certs, "ca")
    make_ca_and_server(certs, "other")  # a CA the broker does not use
    ssl_port = free_port()
    files = {n: (certs / n).read_bytes() for n in ("ca.pem", "ca-server.pem", "ca-server.key")}
    node = PrivateNode(files=files, extra_conf=(
        f"listeners.ssl.default = 127.0.0.1:{ssl_port}\n"
        "ssl_options.cacertfile = {base}/ca.pem\nssl_options.certfile = {base}/ca-server.pem\n"
        "ssl_options.keyfile = {base}/ca-server.key\nssl_options.verify = verify_none\n"
        "ssl_options.fail_if_no_peer_cert = false\n"))
    conf = node.base + "/rabbitmq.conf"
    text = open(conf).read().replace("{base}", node.base)
    open(conf, "w").write(text)
    try:
        node.start()
        yield node, ssl_port, certs
    finally:
        node.stop()


def run_cli(tmp_path, url: str, tls: str, *args: str):
    cfg = tmp_path / "u.toml"
    cfg.write_text(f'[broker]\nurl = "{url}"\nretry_backoff_max = 0.2\nconnection_timeout = 3.0\n'
                   f'[broker.tls]\n{tls}\n[beat]\nbuiltin_schedules = false\n')
    return subprocess.run([sys.executable, "-m", "utilitarian", *args, "--config", str(cfg)],
                          capture_output=True, text=True, timeout=120)


def test_amqps_with_our_ca_publishes(tls_node, tmp_path):
    node, ssl_port, certs = tls_node
    url = f"amqps://guest:guest@localhost:{ssl_port}/"
    proc = run_cli(tmp_path, url, f'ca = "{certs / "ca.pem"}"', "call", "utilitarian.ping")
    assert proc.returncode == 0, proc.stderr
    # the message is there, read back over the plain listener of the same node
    conn = pika.BlockingConnection(pika.URLParameters(node.url))
    method, props, _ = conn.channel().basic_get(queues.DEFAULT, auto_ack=True)
    conn.close()
    assert method is not None and props.headers["id"] == proc.stdout.strip()


def test_a_certificate_we_do_not_trust_is_refused_with_exit_78(tls_node, tmp_path):
    node, ssl_port, certs = tls_node
    url = f"amqps://guest:guest@localhost:{ssl_port}/"
    proc = run_cli(tmp_path, url, f'ca = "{certs / "other.pem"}"', "call", "utilitarian.ping")
    assert proc.returncode == 78, proc.stderr
    assert "certificate" in proc.stderr.lower() and "Traceback" not in proc.stderr
    # verify = false accepts it (an operator's explicit choice)
    proc = run_cli(tmp_path, url, "verify = false", "call", "utilitarian.ping")
    assert proc.returncode == 0, proc.stderr


def test_worker_with_an_untrusted_certificate_exits_78_without_respawning(tls_node, tmp_path):
    node, ssl_port, certs = tls_node
    proc = run_cli(tmp_path, f"amqps://guest:guest@localhost:{ssl_port}/", f'ca = "{certs / "other.pem"}"',
                   "worker", "-Q", "default", "-c", "2")
    assert proc.returncode == 78
    assert proc.stderr.count("spawned child") == 2 and "certificate was not accepted" in proc.stderr


def test_config_check_connect_over_tls(tls_node, tmp_path):
    node, ssl_port, certs = tls_node
    url = f"amqps://guest:guest@localhost:{ssl_port}/"
    # Our CA: connected over TLS with the certificate verified.
    proc = run_cli(tmp_path, url, f'ca = "{certs / "ca.pem"}"', "config", "check", "--connect")
    assert proc.returncode == 0, proc.stderr
    assert "over TLS (certificate verified)" in proc.stdout
    # A CA the broker's certificate does not chain to: refused (78), saying what to check.
    proc = run_cli(tmp_path, url, f'ca = "{certs / "other.pem"}"', "config", "check", "--connect")
    assert proc.returncode == 78
    assert "TLS certificate was not accepted" in proc.stderr and "[broker.tls] ca" in proc.stderr
    assert "Traceback" not in proc.stderr
