"""Uplink to the central platform: `protocol` (pure wire format) and `client` (trio WSS client)."""
