"""Parameter server: shard windows, the shard service loop, the replica client."""
