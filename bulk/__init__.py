"""bulk: a bulk packet-capture appliance and offline trace analysis toolkit."""

from __future__ import annotations

__version__ = "0.1.0"
