"""The response cache: keys, policy, tiers, single-flight and the cache stage."""
