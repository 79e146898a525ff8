"""Pool-manager: projects worker/model state from events; warm pools, preloading, eviction."""
