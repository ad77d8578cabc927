"""HTTP surface of Tailor: the OpenAI-compatible API, the admin API and the CLI."""
