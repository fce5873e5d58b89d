"""TLS, client certificates and basic auth from a Prometheus web config file, each case tried
with a real TLS client; the file re-read on change (certificate rotation without restart);
bad web configs refused in one line. The last test has a real Prometheus scrape the daemon
over mutual TLS with basic auth."""

from __future__ import annotations

import base64
import http.client
import logging
import socket
import ssl
import subprocess
import time
from pathlib import Path

import bcrypt
import pytest
import trustme
import yaml

from gpuprobe.daemon.core.config import HttpConfig
from gpuprobe.daemon.service.webconfig import WebConfigError, WebConfigSource, load

from .conftest import RunningDaemon, gpuprobe_cmd, wait_for, write_yaml
from .test_http import serve

PASSWORD = "s3cret-Pa55"
# cost 4 keeps the tests quick; the format is the same as cost 10's
HASH = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()


class Pki:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.ca = trustme.CA()
        self.other_ca = trustme.CA()
        self.server = self.ca.issue_cert("127.0.0.1", "localhost")
        self.client = self.ca.issue_cert("prometheus.example")
        self.stranger = self.other_ca.issue_cert("prometheus.example")
        self.cert, self.key, self.client_ca = tmp / "server.crt", tmp / "server.key", tmp / "ca.crt"
        self.write_server(self.server)
        self.ca.cert_pem.write_to_path(str(self.client_ca))

    def write_server(self, cert: trustme.LeafCert) -> None:
        # write the new files beside and rename over: what cert-manager and certbot do
        for pem, path in ((cert.cert_chain_pems[0], self.cert), (cert.private_key_pem, self.key)):
            tmp = path.with_suffix(".new")
            pem.write_to_path(str(tmp))
            tmp.replace(path)

    def web_config(self, **tls: object) -> Path:
        cfg = {"tls_server_config": {"cert_file": self.cert.name, "key_file": self.key.name,
                                     "client_auth_type": "RequireAndVerifyClientCert",
                                     "client_ca_file": self.client_ca.name, **tls},
               "basic_auth_users": {"prometheus": HASH}}
        return write_yaml(self.tmp / "web.yml", cfg)

    def context(self, client: trustme.LeafCert | None = None) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        self.ca.configure_trust(ctx)
        if client is not None:
            client.configure_cert(ctx)
        return ctx


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path)


def auth(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def get(port: int, ctx: ssl.SSLContext, headers: dict[str, str] | None = None,
        path: str = "/metrics") -> tuple[int, bytes, http.client.HTTPResponse]:
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
    conn.request("GET", path, headers=headers or {})
    r = conn.getresponse()
    return r.status, r.read(), r


@pytest.fixture
def tls_server(pki: Pki):
    server, _ = serve(HttpConfig(read_header_timeout=2.0),
                      web=WebConfigSource(str(pki.web_config())))
    yield server
    server.stop()


def test_right_certificate_and_password_get_metrics(pki, tls_server):
    status, body, _ = get(tls_server.port, pki.context(pki.client), auth("prometheus", PASSWORD))
    assert status == 200 and b"gpuprobe_test_value" in body
    # the successful check is cached: a second scrape is not another bcrypt run
    assert get(tls_server.port, pki.context(pki.client), auth("prometheus", PASSWORD))[0] == 200


def test_wrong_password_is_401_counted_and_logged_once_without_the_secret(pki, tls_server,
                                                                          caplog):
    caplog.set_level(logging.WARNING, logger="gpuprobe.http")
    for _ in range(3):
        status, _, r = get(tls_server.port, pki.context(pki.client),
                           auth("prometheus", "guess-" + PASSWORD))
        assert status == 401
        assert r.getheader("WWW-Authenticate") == 'Basic realm="gpuprobe"'
    status, _, _ = get(tls_server.port, pki.context(pki.client), auth("mallory", PASSWORD))
    assert status == 401
    assert tls_server.stats.refused["unauthorized"] == 4
    lines = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(lines) == 1, lines  # once a minute per reason
    assert "wrong password for user 'prometheus'" in lines[0]
    assert PASSWORD not in caplog.text


def test_no_credentials_get_401_with_a_challenge(pki, tls_server):
    status, _, r = get(tls_server.port, pki.context(pki.client))
    assert status == 401 and r.getheader("WWW-Authenticate", "").startswith("Basic")


@pytest.mark.parametrize("who", ["none", "stranger"])
def test_missing_or_foreign_client_certificate_is_refused(pki, tls_server, who):
    client = None if who == "none" else pki.stranger
    with pytest.raises((ssl.SSLError, ConnectionError, http.client.RemoteDisconnected)):
        get(tls_server.port, pki.context(client), auth("prometheus", PASSWORD))
    wait_for(lambda: tls_server.stats.refused["client_certificate"] == 1, timeout=5)


def test_plain_http_to_the_tls_port_is_answered_fast(pki, tls_server):
    with socket.create_connection(("127.0.0.1", tls_server.port), timeout=5) as s:
        started = time.monotonic()
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = s.recv(4096)
        took = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 400 "), answer
    assert b"Client sent an HTTP request to an HTTPS server." in answer
    assert took < 5  # not the 10 s a stalled handshake used to take; generous for CI
    assert tls_server.stats.refused["plain_http_on_tls_port"] == 1


def test_a_rotated_certificate_is_served_without_restart(pki, tls_server):
    def served_cert() -> bytes:
        ctx = pki.context(pki.client)
        with socket.create_connection(("127.0.0.1", tls_server.port)) as raw, \
                ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
            return s.getpeercert(binary_form=True)

    first = served_cert()
    new = pki.ca.issue_cert("127.0.0.1", "localhost")
    pki.write_server(new)
    wait_for(lambda: served_cert() != first, timeout=10, interval=0.3)
    assert served_cert() == ssl.PEM_cert_to_DER_cert(new.cert_chain_pems[0].bytes().decode())


def test_a_broken_change_keeps_the_last_good_config_and_says_so(pki, tls_server, caplog):
    web = pki.tmp / "web.yml"
    good = web.read_text()
    web.write_text("tls_server_config: [not, a, mapping]\n")

    def reload_flag() -> float:
        _, body, _ = get(tls_server.port, pki.context(pki.client), auth("prometheus", PASSWORD))
        line = [x for x in body.decode().splitlines()
                if x.startswith("gpuprobe_web_config_last_reload_successful")]
        return float(line[0].split()[-1])

    wait_for(lambda: reload_flag() == 0.0, timeout=10, interval=0.3)
    assert "still serving the previous web configuration" in caplog.text
    web.write_text(good + "\n")
    wait_for(lambda: reload_flag() == 1.0, timeout=10, interval=0.3)


def test_client_allowed_sans(pki):
    web = WebConfigSource(str(pki.web_config(client_allowed_sans=["scraper.example"])))
    server, _ = serve(web=web)
    try:
        with pytest.raises((ssl.SSLError, ConnectionError, http.client.RemoteDisconnected)):
            get(server.port, pki.context(pki.client), auth("prometheus", PASSWORD))
        assert server.stats.refused["client_certificate"] == 1
    finally:
        server.stop()
    web = WebConfigSource(str(pki.web_config(client_allowed_sans=["prometheus.example"])))
    server, _ = serve(web=web)
    try:
        assert get(server.port, pki.context(pki.client), auth("prometheus", PASSWORD))[0] == 200
    finally:
        server.stop()


@pytest.mark.parametrize(("change", "message"), [
    ({"tls_server_config": {"client_auth_type": "RequireAnyClientCert"}},
     "tls_server_config.client_auth_type: RequireAnyClientCert accepts unverified"),
    ({"tls_server_config": {"client_auth_type": "Sometimes"}},
     "tls_server_config.client_auth_type: must be one of"),
    ({"tls_server_config": {"min_version": "TLS14"}}, "tls_server_config.min_version"),
    ({"tls_server_config": {"cert_file": "missing.crt"}},
     "tls_server_config.cert_file: cannot read"),
    ({"tls_server_config": {"cipher_suites": ["TLS_RSA_WITH_RC4_128_SHA"]}},
     "tls_server_config.cipher_suites: unknown or insecure suite"),
    ({"tls_server_config": {"colour": "blue"}}, "tls_server_config.colour: unknown key"),
    ({"basic_auth_users": {"prometheus": "plaintext"}},
     "basic_auth_users.prometheus: expected a bcrypt hash"),
    ({"http_server_config": {"headers": {"X-Frame-Options": "allow-all"}}},
     "http_server_config.headers.X-Frame-Options: invalid value"),
    ({"http_server_config": {"headers": {"Set-Cookie": "a=b"}}},
     "http_server_config.headers.Set-Cookie: not settable"),
    ({"rate_limit": {"interval": ".nan"}}, "rate_limit.interval"),
])
def test_bad_web_configs_are_one_line_naming_the_key(pki, change, message):
    cfg = yaml.safe_load(pki.web_config().read_text())
    for section, values in change.items():
        cfg[section] = {**cfg.get(section, {}), **values}
    path = write_yaml(pki.tmp / "bad.yml", cfg)
    with pytest.raises(WebConfigError) as e:
        load(str(path))
    text = str(e.value)
    assert message in text and "\n" not in text and len(text) - len(str(path)) < 200, text
    assert text.startswith(f"web config {path}: ")


def test_cli_refuses_a_bad_web_config_in_one_line(pki, tmp_path):
    bad = tmp_path / "web-bad.yml"
    bad.write_text("basic_auth_users: {admin: hunter2}\n")
    for args in (["run", "--simulate", "--web.config.file", str(bad)],
                 ["run", "--simulate", "--web.config.file", str(tmp_path / "nope.yml")]):
        p = subprocess.run(gpuprobe_cmd(*args), capture_output=True, text=True, timeout=60)
        assert p.returncode == 2, p.stderr
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("gpuprobe: error: web config "), lines
        assert "hunter2" not in p.stderr
    config = write_yaml(tmp_path / "c.yaml", {"web_config_file": str(bad)})
    p = subprocess.run(gpuprobe_cmd("check-config", str(config)), capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 2 and "basic_auth_users.admin" in p.stderr


@pytest.mark.slow
def test_prometheus_scrapes_over_mutual_tls_with_basic_auth(pki, tmp_path,
                                                            prometheus_binary):
    from .test_e2e_prometheus import Prometheus

    web = pki.web_config()
    client_crt, client_key = tmp_path / "client.crt", tmp_path / "client.key"
    pki.client.cert_chain_pems[0].write_to_path(str(client_crt))
    pki.client.private_key_pem.write_to_path(str(client_key))
    fast = write_yaml(tmp_path / "fast.yaml", {
        "collectors": {"pcie_probe": {"enabled": False}, "launch_probe": {"enabled": False}}})
    d = RunningDaemon("--simulate", "--config", str(fast), "--web.config.file", str(web))
    rules = write_yaml(tmp_path / "rules.yml", {"groups": []})
    prom = Prometheus(prometheus_binary, tmp_path, f"127.0.0.1:{d.port}", rules, scrape={
        "scheme": "https",
        "tls_config": {"ca_file": str(pki.client_ca), "cert_file": str(client_crt),
                       "key_file": str(client_key), "server_name": "127.0.0.1"},
        "basic_auth": {"username": "prometheus", "password": PASSWORD}})
    try:
        wait_for(prom.ready, timeout=60, interval=0.5)

        def scraped() -> bool:
            result = prom.api("query", query='up{job="gpuprobe"}')["result"]
            devices = prom.api("query", query="count(gpuprobe_device_up)")["result"]
            return bool(result) and result[0]["value"][1] == "1" and bool(devices)
        wait_for(scraped, timeout=60, interval=1)
    finally:
        prom.stop()
        out = d.stop()
    assert "Traceback" not in out


def test_password_checks_that_hang_do_not_hold_up_a_scraper_already_checked(pki, tls_server,
                                                                             monkeypatch):
    """bcrypt runs on a thread of its own: wrong passwords arriving faster than bcrypt can
    check them must not occupy the threads that render /metrics."""
    import threading

    good = auth("prometheus", PASSWORD)
    assert get(tls_server.port, pki.context(pki.client), good)[0] == 200  # now cached
    gate = threading.Event()
    real = bcrypt.checkpw
    monkeypatch.setattr(bcrypt, "checkpw", lambda pw, h: gate.wait(30) and real(pw, h))
    attackers = [threading.Thread(target=lambda: get(
        tls_server.port, pki.context(pki.client), auth("prometheus", "wrong"))) for _ in range(3)]
    try:
        for t in attackers:
            t.start()
        time.sleep(0.5)  # all three are waiting for bcrypt
        status, body, _ = get(tls_server.port, pki.context(pki.client), good)
        assert status == 200 and b"gpuprobe_test_value" in body
    finally:
        gate.set()
        for t in attackers:
            t.join(30)


def test_beyond_eight_waiting_password_checks_the_next_is_refused_busy(pki, tls_server,
                                                                      monkeypatch):
    import threading

    gate = threading.Event()
    real = bcrypt.checkpw
    monkeypatch.setattr(bcrypt, "checkpw", lambda pw, h: gate.wait(30) and real(pw, h))
    statuses: list[int] = []

    def attempt() -> None:
        statuses.append(get(tls_server.port, pki.context(pki.client),
                            auth("prometheus", "wrong"))[0])

    attackers = [threading.Thread(target=attempt) for _ in range(9)]
    try:
        for t in attackers:
            t.start()
        wait_for(lambda: tls_server.stats.refused["busy"] >= 1, timeout=10)
    finally:
        gate.set()
        for t in attackers:
            t.join(30)
    assert sorted(statuses) == [401] * 8 + [503]
