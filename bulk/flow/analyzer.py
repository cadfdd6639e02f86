"""The analyzer plugin interface of the flow table.

An analyzer is an object registered with one :class:`bulk.flow.table.FlowTable`.
The table calls its hooks; the analyzer keeps whatever it needs per flow in a
state object it creates itself, and the table hands that object back on every
call. Analyzers never keep their own flow table.

Lifecycle of one flow, seen by one analyzer::

    on_flow_start(flow)            -> state, or None to ignore this flow
    on_packet(flow, state, direction, pkt)          every packet (if overridden)
    on_data(flow, state, direction, data, ts_ns)    in-order TCP bytes
    on_gap(flow, state, direction, nbytes, ts_ns)   bytes that never arrived
    on_roles_swapped(flow, state)                   originator/responder swapped
    on_flow_end(flow, state, reason)                exactly once, always last
    ...
    finish()                                        after the last flow ended

Rules:

* ``direction`` is :data:`ORIG` (originator to responder) or :data:`RESP`.
  Roles can change while a flow lives (a SYN seen late, a payload signature):
  the table then swaps the flow's endpoints, counters and stream state and
  calls ``on_roles_swapped``; an analyzer that keeps per-direction state
  swaps it there. Directions passed afterwards follow the new roles.
* ``on_packet`` runs for every packet of the flow, before that packet's
  reassembled bytes are delivered. It is only called when the analyzer
  overrides it (the table checks), so leave it out if you only need bytes.
* ``on_data`` / ``on_gap`` are TCP only and only for analyzers with
  ``wants_stream = True``. Bytes arrive in sequence order exactly once per
  direction (overlap policy: first copy wins, see :mod:`bulk.flow.tcp`).
  ``data`` is a ``bytes`` object the analyzer may keep. By default one call
  carries one segment's new bytes; an analyzer that sets ``coalesce = True``
  may get several segments joined in one call (fewer calls on bulk data).
* Returning :data:`DONE` (``True``) from ``on_packet``, ``on_data`` or
  ``on_gap`` detaches the analyzer from this flow: it gets no more packets or
  bytes for it, but still gets ``on_roles_swapped`` and the final
  ``on_flow_end``. When no attached analyzer wants the stream any more, the
  table stops reassembling the flow (the fast path for analyzers that only
  look at the first bytes). Returning ``None`` or ``False`` continues.
* ``on_flow_end`` gets one of the ``END_*`` reasons. Flows still open when the
  input ends get :data:`END_EOF`.
* Hooks must not raise for odd traffic; exceptions propagate and stop the run.
* To re-decide roles from payload, call ``flow.swap_roles(evidence)`` from a
  hook (see :class:`bulk.flow.table.Flow`); analyzers registered after the
  one that swaps see the new roles for the same chunk. Register role-deciding
  analyzers before output-writing ones.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Generic, TypeVar

if TYPE_CHECKING:
    from bulk.decode import Decoded
    from bulk.flow.table import Flow

S = TypeVar("S")

ORIG = 0
"""Direction: originator to responder."""
RESP = 1
"""Direction: responder to originator."""

DONE = True
"""Return from a hook to detach the analyzer from the flow."""

# Reasons passed to on_flow_end.
END_FIN = "fin"  # both sides closed with FIN (after the close delay)
END_RST = "rst"  # a RST ended the connection (after the close delay)
END_IDLE = "idle"  # no packet for the idle timeout (packet time)
END_ACTIVE = "active"  # the flow lived longer than the active timeout
END_EVICTED = "evicted"  # pushed out of the table by the flow limit (LRU)
END_REUSED = "reused"  # a new connection (new SYN) took over its 4-tuple
END_EOF = "eof"  # the input ended

END_REASONS = (END_FIN, END_RST, END_IDLE, END_ACTIVE, END_EVICTED, END_REUSED, END_EOF)


class Analyzer(Generic[S]):
    """Base class of flow-table analyzers; override the hooks you need.

    ``S`` is the type of the per-flow state object returned by
    :meth:`on_flow_start`. Subclasses set :attr:`name` (the registry name)
    and :attr:`wants_stream` when they need reassembled TCP bytes.
    """

    name: ClassVar[str] = "analyzer"
    wants_stream: ClassVar[bool] = False
    coalesce: ClassVar[bool] = False
    """True when ``on_data`` chunk boundaries mean nothing to the analyzer (it
    only wants the byte stream): the table may then join consecutive in-order
    segments into one ``on_data`` call (``ts_ns`` is the last segment's)."""

    def on_flow_start(self, flow: Flow) -> S | None:
        """A flow starts (its first packet is being processed).

        Return the per-flow state object (anything but ``None``), or ``None``
        to ignore the flow entirely (no further calls for it, no
        ``on_flow_end``). ``flow.proto`` tells TCP (6) from UDP (17) etc.
        """
        return None

    def on_packet(self, flow: Flow, state: S, direction: int, pkt: Decoded) -> bool | None:
        """One packet of the flow (sizes, flags, timing); return DONE to detach."""
        return None

    def on_data(self, flow: Flow, state: S, direction: int, data: bytes, ts_ns: int) -> bool | None:
        """In-order reassembled TCP bytes; ``ts_ns`` is the delivering packet's time."""
        return None

    def on_gap(self, flow: Flow, state: S, direction: int, nbytes: int, ts_ns: int) -> bool | None:
        """``nbytes`` of this direction's stream were never seen (capture loss)."""
        return None

    def on_roles_swapped(self, flow: Flow, state: S) -> None:
        """Originator and responder were swapped; swap per-direction state."""
        return

    def on_flow_end(self, flow: Flow, state: S, reason: str) -> None:
        """The flow ended; the last call for it. ``reason`` is an END_* value."""
        return

    def finish(self) -> None:
        """The input ended and every flow was ended; flush reports."""
        return
