"""stubs: the code store — watches the code dir, snapshots and validates bundles, serves records."""
