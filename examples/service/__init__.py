"""A small FastAPI service that uses every infrakit component."""
