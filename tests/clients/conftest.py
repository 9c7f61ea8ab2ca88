"""One real server process (tiny SD1.x checkpoint) shared by the third-party client tests."""

from __future__ import annotations

import pytest

from .live import live_server, server_base


@pytest.fixture(scope="session")
def server_url(tmp_path_factory):
    with live_server(server_base(tmp_path_factory, "clients_server")) as url:
        yield url
