"""Every command: one runner (absl), each command a console script (pyproject.toml)."""
