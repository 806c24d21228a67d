"""s4d-serve: FastAPI app, sessions, scheduler, backends, metrics, settings."""
