"""Core of Tailor: settings, persistence, errors and ids shared by every package.

Nothing here imports `gateway`, `adapters` or `trainer`.
"""
