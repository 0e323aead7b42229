"""Admission: rate limits on requests, before the cache (docs/cost-control.md)."""
