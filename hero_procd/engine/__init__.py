"""The engine: executor (jobs), flusher (batched writes), and their helpers."""
