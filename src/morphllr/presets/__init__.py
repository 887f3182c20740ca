"""Shipped preprocessing presets (TOML files read by morphllr.data.preprocess.Preprocessing.preset)."""
