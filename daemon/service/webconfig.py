"""The Prometheus web configuration file: TLS, client certificates and basic auth.

The format is exporter-toolkit's (``--web.config.file`` of node_exporter, dcgm-exporter and
Prometheus itself), so one file serves every exporter on a host:

.. code-block:: yaml

    tls_server_config:
      cert_file: server.crt
      key_file: server.key
      client_auth_type: RequireAndVerifyClientCert
      client_ca_file: ca.crt
    basic_auth_users:
      prometheus: $2y$10$...    # bcrypt
    http_server_config:
      headers: {Strict-Transport-Security: max-age=31536000}

It becomes an immutable :class:`WebConfig` holding a ready ``ssl.SSLContext`` and an
:class:`Authenticator`. :class:`WebConfigSource` re-reads it (and the files it names) when any
of them changes, so a rotated certificate is served without a restart; a file that no longer
parses keeps the last good configuration. The differences from exporter-toolkit, all refused
with a one-line error rather than ignored, are listed in docs/security.md.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import hashlib
import logging
import os
import re
import ssl
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpuprobe.daemon.core.safeyaml import YamlFileError, display_path, load_file, short

log = logging.getLogger("gpuprobe.http")


class WebConfigError(ValueError):
    """A web configuration problem, as one line naming the file and the key."""


CLIENT_AUTH = {
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
# Go accepts these too, but they take a certificate without verifying it, which Python's ssl
# module cannot do (and exporter-toolkit itself calls them insecure).
_UNVERIFIED_CLIENT_AUTH = ("RequestClientCert", "RequireAnyClientCert")
TLS_VERSIONS = {"TLS10": ssl.TLSVersion.TLSv1, "TLS11": ssl.TLSVersion.TLSv1_1,
                "TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}
# Go's names (crypto/tls CipherSuites(), TLS 1.2 and below) and OpenSSL's for the same suite.
# TLS 1.3 suites are not configurable, in Go as in OpenSSL's cipher list.
CIPHER_SUITES = {
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
}
CURVES = {"CurveP256": "prime256v1", "CurveP384": "secp384r1", "CurveP521": "secp521r1",
          "X25519": "X25519"}
# exporter-toolkit's http_server_config.headers: these and only these, each value checked.
HEADERS: dict[str, Callable[[str], bool]] = {
    "Content-Security-Policy": lambda v: True,
    "X-Frame-Options": lambda v: v.lower() in ("deny", "sameorigin"),
    "X-Content-Type-Options": lambda v: v.lower() == "nosniff",
    "X-XSS-Protection": lambda v: True,
    "Strict-Transport-Security": lambda v: True,
}
_BCRYPT = re.compile(r"^\$2[abxy]?\$\d{2}\$[./A-Za-z0-9]{53}$")
_TOP_KEYS = ("tls_server_config", "http_server_config", "basic_auth_users", "rate_limit")
_TLS_KEYS = ("cert", "key", "client_ca", "cert_file", "key_file", "client_ca_file",
             "client_auth_type", "client_allowed_sans", "min_version", "max_version",
             "cipher_suites", "prefer_server_cipher_suites", "curve_preferences")
class Authenticator:
    """Basic auth against bcrypt hashes. A successful check is cached (keyed by a SHA-256 of
    user, password and hash, as exporter-toolkit does) so a scrape every few seconds does
    not cost a bcrypt run each; an unknown user is checked against a dummy hash so that the
    answer takes as long as for a known one. :meth:`check` blocks for the bcrypt run: the
    HTTP server runs it on one thread of its own and bounds how many wait for it."""

    def __init__(self, users: Mapping[str, str]) -> None:
        self.users = dict(users)
        self._ok: set[bytes] = set()
        self._lock = threading.Lock()  # the cache is read on the event loop, filled here
        self._dummy: bytes | None = None

    def _key(self, user: str, password: str, hashed: str) -> bytes:
        return hashlib.sha256(f"{user}\0{password}\0{hashed}".encode()).digest()

    @staticmethod
    def _credentials(header: str | None) -> tuple[str, str] | str:
        """(user, password) from an ``Authorization`` header, or why there are none."""
        if not header or header[:6].lower() != "basic ":
            return "no credentials"
        try:
            decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            return "malformed credentials"
        user, sep, password = decoded.partition(":")
        return (user, password) if sep else "malformed credentials"

    def quick(self, header: str | None) -> tuple[bool, str] | None:
        """The verdict where it needs no bcrypt run (malformed, or cached as good); None
        when :meth:`check` must run, on a thread that may block."""
        creds = self._credentials(header)
        if isinstance(creds, str):
            return False, creds
        user, password = creds
        hashed = self.users.get(user)
        if hashed is not None and self._key(user, password, hashed) in self._ok:
            return True, user
        return None

    def check(self, header: str | None) -> tuple[bool, str]:
        """(True, user) when the ``Authorization`` header carries a known user's password,
        (False, why) when it does not."""
        verdict = self.quick(header)
        if verdict is not None:
            return verdict
        creds = self._credentials(header)
        assert not isinstance(creds, str)  # quick() answered every malformed header
        user, password = creds
        hashed = self.users.get(user)
        key = self._key(user, password, hashed or "")
        import bcrypt

        if hashed is None:
            if self._dummy is None:
                self._dummy = bcrypt.hashpw(b"gpuprobe", bcrypt.gensalt(10))
            bcrypt.checkpw(password.encode(), self._dummy)
            return False, f"unknown user {short(user)}"
        if not bcrypt.checkpw(password.encode(), hashed.encode()):
            return False, f"wrong password for user {short(user)}"
        with self._lock:
            if len(self._ok) > 1024:
                self._ok.clear()
            self._ok.add(key)
        return True, user



@dataclass(frozen=True)
class RateLimit:
    interval: float  # seconds between requests on average; 0 disables
    burst: int


@dataclass(frozen=True)
class WebConfig:
    """What a web config file says, made ready to serve."""

    path: str | None = None
    ssl_context: ssl.SSLContext | None = None
    allowed_sans: frozenset[str] = frozenset()
    auth: Authenticator | None = None
    headers: tuple[tuple[str, str], ...] = ()
    rate_limit: RateLimit | None = None
    # the files it was built from, with their (mtime_ns, size, inode), to tell a change
    stamps: tuple[tuple[str, tuple[int, int, int] | None], ...] = field(default=(),
                                                                          compare=False)

    @property
    def tls(self) -> bool:
        return self.ssl_context is not None


def _stamp(path: str) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


def _fail(where: str, key: str, message: str) -> WebConfigError:
    return WebConfigError(f"web config {where}: {key}: {message}")


def _string(section: Mapping[str, Any], key: str, where: str, prefix: str) -> str | None:
    value = section.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise _fail(where, f"{prefix}{key}", f"expected a string, got {short(value)}")
    return value


def _strings(section: Mapping[str, Any], key: str, where: str, prefix: str) -> list[str]:
    value = section.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _fail(where, f"{prefix}{key}", f"expected a list of strings, got {short(value)}")
    return value


def _mapping(value: Any, where: str, key: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _fail(where, key, f"expected a mapping, got {short(value)}")
    for k in value:
        if not isinstance(k, str):
            raise _fail(where, key, f"keys must be strings, got {short(k)}")
    return value


def _unknown(section: Mapping[str, Any], known: tuple[str, ...], where: str,
             prefix: str) -> None:
    for k in section:
        if k not in known:
            close = difflib.get_close_matches(k, known, n=1)
            hint = f"did you mean {close[0]!r}?" if close else "docs/security.md lists the keys"
            raise _fail(where, f"{prefix}{short(k)[1:-1]}", f"unknown key ({hint})")


def _ssl_context(tls: Mapping[str, Any], base: Path, where: str
                 ) -> tuple[ssl.SSLContext, frozenset[str], list[str]]:
    p = "tls_server_config."
    files: list[str] = []

    def path_of(key: str) -> str | None:
        value = _string(tls, key, where, p)
        if value is None:
            return None
        full = str(base / value)
        files.append(full)
        return full

    cert, key = _string(tls, "cert", where, p), _string(tls, "key", where, p)
    cert_file, key_file = path_of("cert_file"), path_of("key_file")
    if cert and cert_file:
        raise _fail(where, p + "cert", "give cert or cert_file, not both")
    if key and key_file:
        raise _fail(where, p + "key", "give key or key_file, not both")
    if not (cert or cert_file):
        raise _fail(where, p + "cert_file", "required to serve TLS")
    if not (key or key_file):
        raise _fail(where, p + "key_file", "required to serve TLS")

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    versions = {}
    for k, default in (("min_version", "TLS12"), ("max_version", "TLS13")):
        name = _string(tls, k, where, p) or default
        if name not in TLS_VERSIONS:
            raise _fail(where, p + k, f"must be one of {', '.join(TLS_VERSIONS)}; "
                                      f"got {short(name)}")
        versions[k] = TLS_VERSIONS[name]
    if versions["min_version"] > versions["max_version"]:
        raise _fail(where, p + "min_version", "must not be above max_version")
    try:
        ctx.minimum_version = versions["min_version"]
        ctx.maximum_version = versions["max_version"]
    except (ValueError, ssl.SSLError) as e:
        raise _fail(where, p + "min_version", f"not allowed by this OpenSSL: {e}") from None

    try:
        _load_chain(ctx, cert, key, cert_file, key_file)
    except OSError as e:
        raise _fail(where, p + ("cert_file" if cert_file else "cert"),
                    f"cannot read: {e.strerror or e}") from None
    except ssl.SSLError as e:
        raise _fail(where, p + ("cert_file" if cert_file else "cert"),
                    f"certificate and key do not load: {e.reason or e}") from None

    auth_type = _string(tls, "client_auth_type", where, p) or "NoClientCert"
    if auth_type in _UNVERIFIED_CLIENT_AUTH:
        raise _fail(where, p + "client_auth_type",
                    f"{auth_type} accepts unverified certificates and is not supported; use "
                    "RequireAndVerifyClientCert (or VerifyClientCertIfGiven)")
    if auth_type not in CLIENT_AUTH:
        raise _fail(where, p + "client_auth_type",
                    f"must be one of {', '.join(CLIENT_AUTH)}; got {short(auth_type)}")
    ctx.verify_mode = CLIENT_AUTH[auth_type]
    client_ca, client_ca_file = _string(tls, "client_ca", where, p), path_of("client_ca_file")
    if client_ca and client_ca_file:
        raise _fail(where, p + "client_ca", "give client_ca or client_ca_file, not both")
    if ctx.verify_mode != ssl.CERT_NONE and not (client_ca or client_ca_file):
        raise _fail(where, p + "client_ca_file", f"required with client_auth_type {auth_type}")
    if client_ca or client_ca_file:
        try:
            ctx.load_verify_locations(cafile=client_ca_file, cadata=client_ca)
        except OSError as e:
            raise _fail(where, p + "client_ca_file", f"cannot read: {e.strerror or e}"
                        ) from None
        except ssl.SSLError as e:
            raise _fail(where, p + ("client_ca_file" if client_ca_file else "client_ca"),
                        f"not a PEM CA certificate: {e.reason or e}") from None

    sans = frozenset(_strings(tls, "client_allowed_sans", where, p))
    if sans and ctx.verify_mode != ssl.CERT_REQUIRED:
        raise _fail(where, p + "client_allowed_sans",
                    "needs client_auth_type RequireAndVerifyClientCert")

    suites = _strings(tls, "cipher_suites", where, p)
    if suites:
        unknown = [s for s in suites if s not in CIPHER_SUITES]
        if unknown:
            raise _fail(where, p + "cipher_suites", f"unknown or insecure suite "
                        f"{short(unknown[0])} (docs/security.md lists the ECDHE suites taken)")
        ctx.set_ciphers(":".join(CIPHER_SUITES[s] for s in suites))
    prefer = tls.get("prefer_server_cipher_suites", True)
    if not isinstance(prefer, bool):
        raise _fail(where, p + "prefer_server_cipher_suites",
                    f"expected true or false, got {short(prefer)}")
    if prefer:
        ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    curves = _strings(tls, "curve_preferences", where, p)
    if curves:
        if len(curves) > 1 or curves[0] not in CURVES:
            raise _fail(where, p + "curve_preferences",
                        f"one curve of {', '.join(CURVES)} (Python's ssl module sets a single "
                        f"ECDH curve); got {short(curves)}")
        ctx.set_ecdh_curve(CURVES[curves[0]])
    return ctx, sans, files


def _load_chain(ctx: ssl.SSLContext, cert: str | None, key: str | None,
                cert_file: str | None, key_file: str | None) -> None:
    """``load_cert_chain`` reads files only: inline PEM goes through a private temporary
    directory that is removed at once."""
    if cert is None and key is None:
        ctx.load_cert_chain(cert_file or "", key_file)
        return
    with tempfile.TemporaryDirectory(prefix="gpuprobe-tls-") as tmp:
        if cert is not None:
            cert_file = os.path.join(tmp, "cert.pem")
            Path(cert_file).write_text(cert, encoding="utf-8")
        if key is not None:
            key_file = os.path.join(tmp, "key.pem")
            fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(key)
        ctx.load_cert_chain(cert_file or "", key_file)


def parse(data: Any, where: str, base: Path, path: str | None = None) -> WebConfig:
    """Validate a parsed web config document. Raises WebConfigError."""
    top = _mapping(data, where, "top level")
    _unknown(top, _TOP_KEYS, where, "")
    files: list[str] = [path] if path else []
    ctx, sans = None, frozenset[str]()
    tls = _mapping(top.get("tls_server_config"), where, "tls_server_config")
    _unknown(tls, _TLS_KEYS, where, "tls_server_config.")
    if tls:
        ctx, sans, tls_files = _ssl_context(tls, base, where)
        files += tls_files

    users = _mapping(top.get("basic_auth_users"), where, "basic_auth_users")
    for user, hashed in users.items():
        if not isinstance(hashed, str) or not _BCRYPT.match(hashed):
            raise _fail(where, f"basic_auth_users.{short(user)[1:-1]}",
                        "expected a bcrypt hash such as $2y$10$... "
                        "(htpasswd -nBC 10 \"\" | tr -d ':\\n')")
        if ":" in user:
            raise _fail(where, "basic_auth_users", f"user {short(user)} contains ':'")

    http = _mapping(top.get("http_server_config"), where, "http_server_config")
    _unknown(http, ("http2", "headers"), where, "http_server_config.")
    if not isinstance(http.get("http2", True), bool):
        raise _fail(where, "http_server_config.http2",
                    f"expected true or false, got {short(http.get('http2'))}")
    headers = []
    for name, value in _mapping(http.get("headers"), where,
                                "http_server_config.headers").items():
        key = f"http_server_config.headers.{name}"
        if name not in HEADERS:
            raise _fail(where, key, f"not settable (known: {', '.join(HEADERS)})")
        if value is None or value == "":
            continue
        if not isinstance(value, str) or not HEADERS[name](value) or \
                any(c in value for c in "\r\n\0"):
            raise _fail(where, key, f"invalid value {short(value)}")
        headers.append((name, value))

    limit = None
    rate = _mapping(top.get("rate_limit"), where, "rate_limit")
    _unknown(rate, ("interval", "burst"), where, "rate_limit.")
    if rate:
        from gpuprobe.daemon.core.config import ConfigError, parse_duration

        try:
            interval = parse_duration(rate.get("interval", 0), "rate_limit.interval")
        except ConfigError as e:
            raise WebConfigError(f"web config {where}: {e}") from None
        burst = rate.get("burst", 0)
        if isinstance(burst, bool) or not isinstance(burst, int) or not 0 <= burst <= 10**6:
            raise _fail(where, "rate_limit.burst", f"expected an integer from 0 to 1000000, "
                                                   f"got {short(burst)}")
        if not 0 <= interval <= 3600:
            raise _fail(where, "rate_limit.interval", "must be between 0 and 1h")
        if interval > 0:
            limit = RateLimit(interval, max(burst, 1))

    return WebConfig(path=path, ssl_context=ctx, allowed_sans=sans,
                     auth=Authenticator(users) if users else None, headers=tuple(headers),
                     rate_limit=limit, stamps=tuple((f, _stamp(f)) for f in files))


def load(path: str) -> WebConfig:
    """Read and validate a web config file. Raises WebConfigError."""
    try:
        data = load_file(path, label="web config")
    except YamlFileError as e:
        raise WebConfigError(str(e)) from None
    return parse(data, display_path(path), Path(path).resolve().parent, path)


class WebConfigSource:
    """The current web configuration, re-read when its file or a file it names changes.

    ``current()`` is cheap (a stat of each file at most once a second); the HTTP server
    calls it for every new connection. A change that fails to load is logged once and the
    previous configuration stays in force; the self-metrics say whether the last reload
    succeeded."""

    CHECK_EVERY = 1.0

    def __init__(self, path: str | None) -> None:
        self.path = path or None
        self._config = load(path) if path else WebConfig()
        self._checked = time.monotonic()
        self._lock = threading.Lock()
        self.last_reload_ok = True
        self.last_reload_success = time.time()
        self._failed_stamps: tuple[Any, ...] | None = None

    def current(self) -> WebConfig:
        if self.path is not None and time.monotonic() - self._checked >= self.CHECK_EVERY:
            self.reload(force=False)
        return self._config

    def reload(self, force: bool = True) -> bool:
        """Re-read the file if it (or a file it names) changed, or always with ``force``.
        True when the configuration in force is the file's current content."""
        if self.path is None:
            return True
        with self._lock:
            self._checked = time.monotonic()
            stamps = tuple((f, _stamp(f)) for f, _ in self._config.stamps) or \
                ((self.path, _stamp(self.path)),)
            if not force and (stamps == self._config.stamps or stamps == self._failed_stamps):
                return self.last_reload_ok
            try:
                config = load(self.path)
            except WebConfigError as e:
                if stamps != self._failed_stamps or force:
                    log.error("%s; still serving the previous web configuration", e)
                self._failed_stamps = stamps
                self.last_reload_ok = False
                return False
            self._failed_stamps = None
            changed = config != self._config or stamps != self._config.stamps
            self._config = config
            self.last_reload_ok = True
            self.last_reload_success = time.time()
            if changed:
                log.info("web config %s loaded (%s)", self.path, describe(config))
            return True


def describe(config: WebConfig) -> str:
    parts = ["TLS" if config.tls else "plain HTTP"]
    if config.ssl_context is not None and config.ssl_context.verify_mode == ssl.CERT_REQUIRED:
        parts.append("client certificates required")
    if config.auth is not None:
        parts.append(f"basic auth for {len(config.auth.users)} user(s)")
    if config.rate_limit is not None:
        parts.append("rate limited")
    return ", ".join(parts)


def peer_allowed(config: WebConfig, cert: Mapping[str, Any] | None) -> bool:
    """Whether a verified client certificate names one of ``client_allowed_sans``."""
    if not config.allowed_sans:
        return True
    if not cert:
        return False
    return any(value in config.allowed_sans for _kind, value in cert.get("subjectAltName", ()))

