"""Cache policies, each an interface with implementations registered by name.

* :mod:`cache.policies.eviction`: which block a full tier gives up first.
* :mod:`cache.policies.admission`: whether an evicted HBM block is written to DDR/flash
  at all (selective write-back), and whether a hot one is written through early.

The server's cache manager and the offline simulator (``load.policy_sim``) run these
same classes.
"""
