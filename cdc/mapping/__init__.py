"""Document → row mapping: pure, synchronous functions shared by CDC, backfill and verify.

Placeholder package docstring; the mapping module documents its mechanism in full.
"""
