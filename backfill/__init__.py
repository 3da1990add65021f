"""Parallel, chunked, resumable copy of the documents that already exist.

The change stream is opened (and its start time persisted) before the first chunk is
read. Each collection is cut into ``_id`` ranges along BSON type order; workers read a
chunk with ``find`` on its range and label every row with the cluster time at which the
read *started*, a lower bound of the content's age. The sink's version guard then makes
any change event after that start win over the copy, so a backfill never writes stale
data and may run at the same time as the stream, in any order, any number of times.
"""
