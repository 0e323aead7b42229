"""Resilience: circuit breakers, retries, fallback chains and graceful degradation (docs/resilience.md)."""
