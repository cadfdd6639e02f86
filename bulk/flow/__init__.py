"""The flow table, TCP reassembly and the analyzer plugin interface.

See :mod:`bulk.flow.analyzer` for the hooks an analyzer implements,
:mod:`bulk.flow.table` for the table and :mod:`bulk.flow.tcp` for the
reassembly policies.
"""

from __future__ import annotations
