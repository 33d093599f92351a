"""Field-strength profiles (TOML data files) for the low-field simulator."""
