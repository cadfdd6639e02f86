"""``bulk compress``: crash-safe compression of closed traces, and retention.

- :mod:`bulk.compress.codec`: compress one trace into seekable frames, verify it.
- :mod:`bulk.compress.safe`: the crash-safe replace (temp name, fsync, verify,
  rename, catalogue, delete) and the startup sweep that finishes or undoes it.
- :mod:`bulk.compress.retention`: what to delete by age and disk budget.
- :mod:`bulk.compress.run`: one run over an archive directory, under a lock.
"""
