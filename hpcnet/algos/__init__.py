"""Training algorithms: what communicates when. ``sync`` and ``avg`` share the
driver in :mod:`hpcnet.algos.runner`."""
