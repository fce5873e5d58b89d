#!/usr/bin/env bash
# Installs what the tests need and runs them: a virtual environment (.venv) with gpuprobe and
# its test extras, and Debian's prometheus package (prometheus and promtool), unpacked into
# .cache/prometheus without starting any service, and systemd-analyze (Debian's systemd
# package) where it is missing. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v promtool >/dev/null 2>&1 || ! command -v prometheus >/dev/null 2>&1; then
    if [ ! -x .cache/prometheus/usr/bin/promtool ]; then
        mkdir -p .cache/prometheus
        SUDO=""
        [ "$(id -u)" -eq 0 ] || SUDO="sudo"
        # apt-get download needs the package lists; fetch them if this machine has none.
        if ! (cd .cache/prometheus && apt-get download prometheus >/dev/null 2>&1); then
            $SUDO apt-get update -qq
            (cd .cache/prometheus && apt-get download prometheus)
        fi
        dpkg -x .cache/prometheus/prometheus_*.deb .cache/prometheus
    fi
    export PATH="$PWD/.cache/prometheus/usr/bin:$PATH"
fi

# systemd-analyze checks the shipped unit (tests/test_systemd.py); nothing is started.
if ! command -v systemd-analyze >/dev/null 2>&1; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends systemd
fi

python3 -m venv .venv
.venv/bin/pip install --quiet --disable-pip-version-check -e '.[test]'
.venv/bin/ruff check .
# mypy and import-linter check the package under its installed names: a tree of links maps daemon/ and probes/
# to gpuprobe.daemon and gpuprobe.probes, as pyproject's package-dir does for pip.
mkdir -p .cache/typecheck/gpuprobe
: > .cache/typecheck/gpuprobe/__init__.py
ln -sfn ../../../daemon .cache/typecheck/gpuprobe/daemon
ln -sfn ../../../probes .cache/typecheck/gpuprobe/probes
(cd .cache/typecheck && ../../.venv/bin/mypy --config-file ../../pyproject.toml -p gpuprobe)
# import-linter keeps the layers (pyproject's [tool.importlinter]) over the same tree.
(cd .cache/typecheck && ../../.venv/bin/lint-imports --no-cache ../../pyproject.toml)
GPUPROBE_REQUIRE_PROMETHEUS=1 .venv/bin/pytest -q "$@"
