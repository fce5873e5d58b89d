"""Configuration: defaults, the documented file, and one-line errors naming the key."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from gpuprobe.daemon.core import config
from gpuprobe.daemon.core.config import ConfigError

from .conftest import ROOT, write_yaml

DEPLOY_CONFIG = ROOT / "deploy" / "gpuprobe.yaml"


def test_defaults():
    c = config.from_mapping({})
    assert c.listen == "127.0.0.1:14787"  # loopback until the operator chooses (security.md)
    assert c.listen_address() == ("127.0.0.1", 14787)
    assert c.collectors["nvidia"].interval == 5.0
    assert c.collectors["nvidia"].deadline() == 4.0
    assert c.collectors["nvidia_processes"].interval == 10.0
    assert c.exporter.max_processes_per_device == 32


def test_deploy_file_documents_every_key_with_its_default():
    data = yaml.safe_load(DEPLOY_CONFIG.read_text())
    assert config.load(DEPLOY_CONFIG) == config.from_mapping({})

    def keys(obj, prefix=""):
        out = set()
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                out |= keys(value, f"{prefix}{f.name}.")
            elif f.name == "collectors":
                for name, cc in value.items():
                    out |= keys(cc, f"collectors.{name}.")
            else:
                out.add(prefix + f.name)
        return out

    def present(d, prefix=""):
        out = set()
        for k, v in d.items():
            if isinstance(v, dict):
                out |= present(v, f"{prefix}{k}.")
            else:
                out.add(prefix + k)
        return out

    assert keys(config.from_mapping({})) == present(data)


def test_durations_and_overrides():
    c = config.from_mapping({"collectors": {"nvidia": {"interval": "2m"},
                                            "nvidia_processes": {"interval": 30,
                                                                 "timeout": "500ms"}}})
    assert c.collectors["nvidia"].interval == 120.0
    assert c.collectors["nvidia"].deadline() == pytest.approx(96.0)  # follows the interval
    assert c.collectors["nvidia_processes"].deadline() == 0.5
    assert config.parse_listen("[::1]:9", "x") == ("::1", 9)
    assert config.parse_listen(":9", "x") == ("0.0.0.0", 9)


@pytest.mark.parametrize("data, message", [
    ({"listne": "x"}, "listne: unknown key (did you mean 'listen'?)"),
    ({"leaks": {"min_snr": 4}}, "leaks.min_snr: unknown key (replaced by leaks.min_significance"),
    ({"collectors": {"nvidia": {"intervall": "5s"}}},
     "collectors.nvidia.intervall: unknown key (did you mean 'interval'?)"),
    ({"collectors": {"amdgpu": {}}}, "collectors.amdgpu: unknown key"),
    ({"collectors": {"nvidia": {"interval": "fast"}}},
     "collectors.nvidia.interval: expected a duration such as 5s or 1m, got 'fast'"),
    ({"collectors": {"nvidia": {"interval": 0}}},
     "collectors.nvidia.interval: must be at least 0.05, got 0.0"),
    ({"collectors": {"nvidia": {"enabled": "yes"}}},
     "collectors.nvidia.enabled: expected true or false, got a string 'yes'"),
    ({"exporter": {"max_processes_per_device": -1}},
     "exporter.max_processes_per_device: must be at least 0, got -1"),
    ({"exporter": {"max_processes_per_device": True}},
     "exporter.max_processes_per_device: expected an integer, got a boolean True"),
    ({"log_level": "verbose"}, "log_level: must be one of debug, info, warning, error"),
    ({"listen": "localhost"}, "listen: expected HOST:PORT"),
    ({"listen": "0.0.0.0:70000"}, "listen: port must be between 1 and 65535, got 70000"),
    ({"nvidia": {"xid_codes": [79, "x"]}}, "nvidia.xid_codes[1]: expected an integer"),
    ({"nvidia": {"retry_initial": "10s", "retry_max": "1s"}},
     "nvidia.retry_max: must not be shorter than nvidia.retry_initial"),
    ({"exporter": []}, "exporter: expected a mapping, got a list"),
    (["a"], "top level: expected a mapping of keys, got a list"),
])
def test_bad_values_name_the_key(data, message):
    with pytest.raises(ConfigError) as e:
        config.from_mapping(data)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_file_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match=r"config file .*missing.yaml: No such file"):
        config.load(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("listen: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: not valid YAML \(line 2, column 1\)"):
        config.load(bad)
    wrong = write_yaml(tmp_path / "wrong.yaml", {"collectors": {"nvidia": {"timeout": "x"}}})
    with pytest.raises(ConfigError, match=r"wrong.yaml: collectors.nvidia.timeout: expected"):
        config.load(wrong)
    assert config.load(write_yaml(tmp_path / "empty.yaml", None)) == config.from_mapping({})
