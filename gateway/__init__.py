"""The local OpenFaaS-compatible gateway and queue-worker (the embedded default runtime)."""
