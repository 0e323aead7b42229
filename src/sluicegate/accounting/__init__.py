"""Accounting: what calls cost."""
