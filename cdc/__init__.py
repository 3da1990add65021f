"""The replication core: source model, document→row mapping, PostgreSQL sink, checkpoints.

``cdc`` imports nothing else of mongo2pg; ``backfill``, ``verify`` and ``ops`` build on
it. It owns the three things every other stage must agree on:

* the source model — :class:`~cdc.types.Namespace`, :class:`~cdc.types.ClusterTime`
  (a BSON Timestamp packed as ``seconds << 32 | increment``, the version every target
  row carries) and resume tokens;
* the mapping — pure synchronous functions turning a raw BSON document into rows, used
  unchanged by CDC, backfill and verification so verification checks exactly what was
  written;
* the sink — the only code that writes data to PostgreSQL. It applies a batch with one
  version-guarded set-based merge per table and commits the batch's checkpoint in the
  same transaction, so delivery can be at-least-once while the effect is exactly-once.

Errors raised anywhere in mongo2pg come from :mod:`cdc.errors`.
"""
