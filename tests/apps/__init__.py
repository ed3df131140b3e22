"""Small FastAPI apps the integration tests and the client benchmark run as real processes."""
