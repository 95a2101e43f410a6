"""Developer scripts run as modules: ``python -m scripts.bench`` (``make bench``) and friends."""
