"""Upstream providers: the transport seam, the OpenAI-compatible provider and the mock."""
