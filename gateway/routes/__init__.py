"""Routers, one per resource; each handler parses, calls a plain function, returns a model."""
