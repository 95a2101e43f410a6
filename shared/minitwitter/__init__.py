"""Minitwitter's shared library: every function, the gateway and the workers import it.

Modules are flat and noun-named (``config``, ``db``, ``cache``, ``errors``, ``http``, ...).
Domain modules never import Flask; ``http`` is the only place that knows about HTTP.
"""
