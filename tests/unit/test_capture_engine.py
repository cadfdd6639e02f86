"""Choosing the capture engine: the system libpcap when it loads, else pcapy-ng."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from bulk.capture import handle, libpcap
from bulk.capture.options import CaptureOptions
from bulk.errors import CaptureError, UsageError


@pytest.fixture
def no_libpcap(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """As on a host without libpcap0.8's libpcap.so.0.8."""
    monkeypatch.setattr(libpcap, "LIBRARY", "libpcap-not-installed.so.0.8")
    libpcap._open.cache_clear()
    yield
    libpcap._open.cache_clear()


def test_auto_is_libpcap_when_it_loads() -> None:
    libpcap._open.cache_clear()
    assert libpcap.available()
    assert handle.engine(CaptureOptions("lo", "/tmp")) == "libpcap"


def test_auto_falls_back_to_pcapy_with_a_warning(
    no_libpcap: None, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="bulk.capture"):
        assert handle.engine(CaptureOptions("lo", "/tmp")) == "pcapy"
    assert "libpcap-not-installed.so.0.8: cannot load" in caplog.text
    assert "capturing with pcapy-ng" in caplog.text


def test_libpcap_asked_for_but_missing_is_one_error(no_libpcap: None) -> None:
    opts = CaptureOptions("lo", "/tmp", engine="libpcap")
    assert handle.engine(opts) == "libpcap"
    with pytest.raises(CaptureError, match=r"^libpcap-not-installed\.so\.0\.8: cannot load: "):
        handle.open_live(opts)


def test_unknown_engine_is_refused() -> None:
    with pytest.raises(UsageError, match="--engine must be one of auto, libpcap, pcapy"):
        CaptureOptions("lo", "/tmp", engine="dpdk").check()
