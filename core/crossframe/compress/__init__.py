"""Neutral compression: compressors act on canonical weights, so one implementation serves every backend."""
