"""Flow-table analyzers (plugins) and their pure building blocks."""
