"""Shipped preprocessing presets (TOML files read by morphllr.preprocess.Preprocessing.preset)."""
