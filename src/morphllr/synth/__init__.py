"""The embedded default: a synthetic galaxy universe with a known answer."""
