"""HTTP submission API (FastAPI). Accepts generation requests and publishes `imagegen.generation.requested`."""
