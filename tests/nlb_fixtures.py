"""Fixtures the NLB app tests share (registered for every test module by conftest's
``pytest_plugins``): the OpenFlow version under test, the fake hub, the app factory."""

from __future__ import annotations

import pytest

from tests.fakes import AppFactory, install_fake_hub
from tests.nlb_lab import OF13, OF15, VERSION_IDS


@pytest.fixture(params=[OF13, OF15], ids=VERSION_IDS.get)
def version(request) -> int:
    return request.param


@pytest.fixture
def hub(monkeypatch):
    return install_fake_hub(monkeypatch)


@pytest.fixture
def make_app(tmp_path, monkeypatch, hub):
    return AppFactory(tmp_path, monkeypatch, hub)
