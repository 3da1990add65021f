"""The control plane: CLI, configuration, daemon, metrics, control socket, sandbox.

``ops`` is the composition root. It reads the configuration file (each stage owns its
own config struct; :mod:`ops.config` composes them), starts the stages in one task group
and serves their metrics. It is the only package that imports ``cdc``, ``backfill`` and
``verify`` together.
"""
