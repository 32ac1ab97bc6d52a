"""Helpers of bench/certify.py: the process harness, the flapping TCP proxy, figures."""
