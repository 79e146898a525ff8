"""Delivery: stores approved images, signs expiring URLs, calls webhooks."""
