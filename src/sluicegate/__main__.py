"""``python -m sluicegate``."""

from .cli import main

main()
