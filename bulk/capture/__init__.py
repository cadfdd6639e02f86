"""Live capture into a rotating archive: ``bulk capture``, ``bulk rotate``, ``bulk status``.

- :mod:`.options`: the frozen options of one capture (command line over bulk.toml).
- :mod:`.handle`: the pcapy-ng handle (create, activate, filter, fanout, non-blocking).
- :mod:`.series`: one worker's series of files, written by libpcap's dumper.
- :mod:`.archiver`: the background thread that finalises, catalogues and indexes files.
- :mod:`.worker`: the capture loop (poll, dispatch, rotation, signals, live state).
- :mod:`.supervisor`: pid file, repair of files left open, fanout worker processes.
- :mod:`.state`: the live state file that ``bulk status`` reads.
- :mod:`.status`: what ``bulk status`` reports, in text, JSON and Prometheus form.
- :mod:`.control`: ``bulk rotate``: signal the running capture or start one.
"""
