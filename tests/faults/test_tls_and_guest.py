"""A broker set up as broker_config/ ships it, on a private node (its listeners and users are
node-wide): guest logs in from the node's own loopback only; the users `fedmq broker add-user`
makes log in from anywhere; workers and clients talk to it over TLS (`amqps://...?cafile=`).

The CA and the server certificate are made here with `cryptography`; the node gets a TLS
listener on 127.0.0.1 and a plain one on this machine's LAN address (when it has one)."""
from __future__ import annotations

import datetime
import ipaddress
import os
import socket
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import pytest
import torch

import fedmq
from fedmq.errors import TransportError
from fedmq.management import ManagementAPIError, api_get
from private_rabbitmq import PrivateNodeError, PrivateRabbitMQ, free_ports
from test_broker_config import DEFINITIONS, read_conf, rabbitmqctl, wait_for

pytestmark = [pytest.mark.amqp, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


def make_certificates(directory: Path) -> dict[str, Path]:
    """A CA, and a server certificate it signs for localhost / 127.0.0.1: PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    def builder(subject: str, key, issuer: str) -> x509.CertificateBuilder:
        return (x509.CertificateBuilder().subject_name(name(subject)).issuer_name(name(issuer))
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(hours=1))
                .not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                               critical=False))

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (builder("fedmq test CA", ca_key, "fedmq test CA")
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    server = (builder("localhost", key, "fedmq test CA")
              .add_extension(x509.SubjectAlternativeName([
                  x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                  critical=False)
              .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
              .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                             critical=False)
              .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                  ca_key.public_key()), critical=False)
              .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    files = {"ca": directory / "ca.pem", "cert": directory / "server.pem",
             "key": directory / "server.key"}
    files["ca"].write_bytes(ca.public_bytes(pem))
    files["cert"].write_bytes(server.public_bytes(pem))
    files["key"].write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    return files


def lan_address() -> str | None:
    """This machine's address on its LAN (not loopback), or None."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("192.0.2.1", 9))  # sends nothing: picks the interface a route would use
        address = probe.getsockname()[0]
    except OSError:
        return None
    finally:
        probe.close()
    return None if address.startswith("127.") else address


class Node:
    def __init__(self, node: PrivateRabbitMQ, tls_port: int, lan: str | None, lan_port: int,
                 certificates: dict[str, Path]) -> None:
        self.node, self.tls_port, self.lan, self.lan_port = node, tls_port, lan, lan_port
        self.certificates = certificates

    def amqps(self, user: str, password: str | None, cafile: bool = True) -> str:
        login = urllib.parse.quote(user, safe="")
        if password is not None:
            login += ":" + urllib.parse.quote(password, safe="")
        query = f"?cafile={self.certificates['ca']}" if cafile else ""
        return f"amqps://{login}@127.0.0.1:{self.tls_port}/{query}"


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    certificates = make_certificates(tmp_path_factory.mktemp("tls"))
    private = PrivateRabbitMQ()
    tls_port, lan_port = free_ports(2)
    lan = lan_address()
    guest = read_conf(ROOT / "broker_config" / "rabbitmq.conf")["loopback_users.guest"]
    private.extra_conf = (
        f"listeners.ssl.1 = 127.0.0.1:{tls_port}\n"
        f"ssl_options.cacertfile = {certificates['ca']}\n"
        f"ssl_options.certfile = {certificates['cert']}\n"
        f"ssl_options.keyfile = {certificates['key']}\n"
        f"ssl_options.verify = verify_none\n"
        f"ssl_options.fail_if_no_peer_cert = false\n"
        f"loopback_users.guest = {guest}\n"  # as broker_config/rabbitmq.conf ships it
        + (f"listeners.tcp.2 = {lan}:{lan_port}\n"
           f"management.tcp.ip = 0.0.0.0\n" if lan else ""))
    try:
        private.start()
    except (PrivateNodeError, OSError, subprocess.TimeoutExpired) as exc:
        private.stop()
        pytest.skip(f"could not start a private RabbitMQ node with a TLS listener: {exc}")
    try:
        rabbitmqctl("import_definitions", str(DEFINITIONS), node=private)
        wait_for(lambda: api_get("exchanges/%2F/fedmq.commands", url=private.management_url))
        yield Node(private, tls_port, lan, lan_port, certificates)
    finally:
        private.stop()


def add_user(node: Node, name: str, role: str, tmp_path: Path) -> str:
    """`fedmq broker add-user` as guest on the node's loopback; the user's password."""
    out = tmp_path / f"{name}.password"
    done = subprocess.run([sys.executable, "-m", "fedmq.cli", "broker", "add-user", name,
                           "--role", role, "--password-out", str(out),
                           "--management-url", node.node.management_url],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return out.read_text().strip()


def test_guest_logs_in_from_loopback_only_and_role_users_from_anywhere(node, tmp_path):
    if node.lan is None:
        pytest.skip("this machine has no LAN address to connect from")
    hook = fedmq.TorchHook(torch)
    try:
        lan_url = f"amqp://guest:guest@{node.lan}:{node.lan_port}/"
        with pytest.raises(TransportError, match="refused the user name or password"):
            fedmq.AMQPClientWorker(hook, id="nobody", url=lan_url, timeout=10).objects_count()
        with pytest.raises(ManagementAPIError) as refused:
            api_get("overview", url=f"http://{node.lan}:{node.node.management_port}")
        assert refused.value.status == 401
        assert api_get("overview", url=node.node.management_url)  # loopback: allowed
        password = add_user(node, "lan-client", "client", tmp_path)
        transport = fedmq.transport.amqp.AMQPTransport(
            f"amqp://lan-client:{urllib.parse.quote(password, safe='')}@{node.lan}:"
            f"{node.lan_port}/")
        transport.close()
    finally:
        hook.context.close()


def test_a_worker_and_a_client_round_trip_over_tls(node, tmp_path):
    """`fedmq worker --url amqps://...?cafile=` under a worker user and an AMQPClientWorker over
    amqps under a client user: a tensor goes there and back, and the broker says both
    connections are TLS."""
    worker_password = add_user(node, "tls-alice", "worker", tmp_path)
    client_password = add_user(node, "tls-client", "client", tmp_path)
    secret = tmp_path / "alice.secret"
    secret.write_text(worker_password + "\n")
    log_path = tmp_path / "worker.log"
    with open(log_path, "a") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fedmq.cli", "worker", "--id", "tls-alice",
             "--url", node.amqps("tls-alice", None)], stdout=log, stderr=subprocess.STDOUT,
            env=dict(os.environ, PYTHONUNBUFFERED="1", FEDMQ_AMQP_PASSWORD_FILE=str(secret)))
    hook = fedmq.TorchHook(torch)
    try:
        alice = fedmq.AMQPClientWorker(hook, id="tls-alice",
                                       url=node.amqps("tls-client", client_password),
                                       timeout=30).wait_until_served(60)
        x = torch.arange(6.0).reshape(2, 3)
        assert torch.equal(x.send(alice).get(), x)
        assert "consuming fedmq.worker.tls-alice on amqps://127.0.0.1:" in log_path.read_text()

        def connections():
            found = {c.get("user"): c.get("ssl") for c in api_get(
                "connections", url=node.node.management_url)}
            return found if {"tls-alice", "tls-client"} <= set(found) else None
        assert set(wait_for(connections).items()) >= {("tls-alice", True), ("tls-client", True)}
    finally:
        hook.context.close()
        proc.terminate()
        assert proc.wait(30) == 0, log_path.read_text()[-3000:]


def test_a_certificate_not_trusted_fails_at_once_saying_to_give_the_ca(node, tmp_path):
    hook = fedmq.TorchHook(torch)
    try:
        started = time.monotonic()
        with pytest.raises(TransportError) as info:
            fedmq.AMQPClientWorker(hook, id="x", url=node.amqps("guest", "guest", cafile=False),
                                   timeout=10).objects_count()
        assert "CERTIFICATE_VERIFY_FAILED" in str(info.value) and "?cafile=" in str(info.value)
        plain = node.amqps("guest", "guest").replace(f":{node.tls_port}/",
                                                     f":{node.node.amqp_port}/")
        with pytest.raises(TransportError, match="WRONG_VERSION_NUMBER.*does not speak TLS"):
            fedmq.AMQPClientWorker(hook, id="x", url=plain, timeout=10).objects_count()
    finally:
        hook.context.close()
    done = subprocess.run([sys.executable, "-m", "fedmq.cli", "worker", "--id", "untrusting",
                           "--url", node.amqps("guest", "guest", cafile=False)],
                          capture_output=True, text=True, timeout=120)
    output = done.stdout + done.stderr
    assert done.returncode == 2 and "Traceback" not in output, output[-3000:]
    assert "CERTIFICATE_VERIFY_FAILED" in output and "?cafile=" in output
    assert time.monotonic() - started < 30  # not tried again for --connect-wait (60 s)
