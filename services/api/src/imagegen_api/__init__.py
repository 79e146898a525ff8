"""HTTP submission API (FastAPI).

Accepts generation requests and publishes them to `imagegen.jobs.requested`.
"""
