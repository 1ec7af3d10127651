"""Configuration: TOML files validated into frozen dataclasses (``model``) before anything listens."""
