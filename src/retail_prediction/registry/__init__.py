"""The model registry: versions pushed once, one promoted to ``current/`` (what the servers load), a
history to roll back with. `root` is where it lives (a folder or S3), `operations` what it does, `gate`
the quality check before a promotion, `commands` the CLI. Only the CLI imports this package."""
