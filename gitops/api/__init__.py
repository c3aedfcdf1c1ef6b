"""HTTP API: agent endpoints (token-authenticated) and the read-only JSON API."""
