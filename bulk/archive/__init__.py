"""The archive: rotated trace files in a directory, with a catalogue beside them."""
