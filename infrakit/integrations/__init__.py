"""Framework integrations (FastAPI/Starlette)."""
