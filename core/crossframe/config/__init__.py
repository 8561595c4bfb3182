"""Run configuration: schema, loading, overrides, validation."""
