"""The prediction store: every prediction's outputs (and, optionally, features) and its later outcome."""
