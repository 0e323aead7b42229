"""Observation: one event per request, counters, and dependency health."""
