"""Adapter lifecycle: store, registry, residency on engines.

`validation` decides whether an uploaded PEFT LoRA adapter fits the served base model,
`store` keeps accepted adapters as immutable, content-addressed versions on any fsspec
filesystem, and the registry and residency modules track which tenant owns which
version and which engines have it loaded.
"""
