"""Runs the API on Gilgal's $PORT ($HOST inside containers, loopback otherwise)."""
import os

import uvicorn

uvicorn.run(
    "app.main:app",
    host=os.environ.get("HOST", "127.0.0.1"),
    port=int(os.environ["PORT"]),
    log_level="info",
)
