"""Training configurations (TOML)."""
