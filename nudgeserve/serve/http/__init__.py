"""Routes, request bodies and status codes. No Ray."""
