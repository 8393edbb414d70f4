"""Guards tests/python/requirements.txt against drift.

Every line of the requirements file must be an exact pin, the installed
distribution must be that exact version, and each protocol client the
end-to-end tests rely on must import.
"""

import importlib
import importlib.metadata
import re
from pathlib import Path

import pytest

REQUIREMENTS = Path(__file__).with_name("requirements.txt")
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)$")

# Distribution name -> module the tests import.
CLIENT_MODULES = {
    "kafka-python": "kafka",
    "confluent-kafka": "confluent_kafka",
    "paho-mqtt": "paho.mqtt.client",
    "pika": "pika",
    "websocket-client": "websocket",
    "pulsar-client": "pulsar",
    "pytest": "pytest",
}


def requirement_lines():
    lines = []
    for raw in REQUIREMENTS.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            lines.append(line)
    return lines


def pins():
    result = {}
    for line in requirement_lines():
        match = PIN.match(line)
        if match:
            result[match.group(1)] = match.group(2)
    return result


def test_every_requirement_is_an_exact_pin():
    unpinned = [line for line in requirement_lines() if not PIN.match(line)]
    assert unpinned == [], f"requirements must be pinned with ==: {unpinned}"


def test_every_client_is_pinned():
    missing = sorted(set(CLIENT_MODULES) - set(pins()))
    assert missing == [], f"clients missing from requirements.txt: {missing}"


@pytest.mark.parametrize("dist,version", sorted(pins().items()))
def test_installed_version_matches_pin(dist, version):
    assert importlib.metadata.version(dist) == version


@pytest.mark.parametrize("dist,module", sorted(CLIENT_MODULES.items()))
def test_client_imports(dist, module):
    importlib.import_module(module)
