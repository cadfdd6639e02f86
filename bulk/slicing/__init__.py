"""Time slicing: find a time window in traces without reading them whole.

- :mod:`bulk.slicing.pcapfile`: random access to an uncompressed pcap (record
  header resynchronisation, last packet from the tail, interpolation search).
- :mod:`bulk.slicing.zstdframes`: random access to a zstd trace made of
  independent frames (seek table or frame walk).
- :mod:`bulk.slicing.sources`: one input file as a sliceable source, whatever
  its container and compression.
- :mod:`bulk.slicing.slicer`: choose the files, merge them in time order, drop
  duplicates, write pcap.
"""

from __future__ import annotations
