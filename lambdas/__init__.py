"""Lambda entry points (one module per function) and the shared core they call."""
