"""Durable jobs: submission (web side) and the wake-up messages both sides send."""
