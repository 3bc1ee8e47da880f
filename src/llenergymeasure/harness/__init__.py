"""Measurement harness: one experiment through the protocol, and ``measure()`` for any code.

A regular package (not a namespace one) so that the API reference can document it.
"""
