"""Continuous verification of MongoDB against PostgreSQL, through the mapping.

Both sides are compared range by range with digests computed over the rows the mapping
produces; a mismatch is rechecked and counts as drift only once the applier has passed
the cluster time at which it was seen (DESIGN §3.7).
"""
