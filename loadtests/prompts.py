"""Short questions the benchmarks and the locust scenarios send (request i uses PROMPTS[i % len])."""

PROMPTS = (
    "What is the capital of France?",
    "Explain photosynthesis in one sentence.",
    "Give me three tips for writing clean Python code.",
    "Why is the sky blue?",
    "Write a haiku about autumn leaves.",
    "What is the difference between a list and a tuple?",
    "How do vaccines work?",
    "Suggest a name for a friendly robot.",
)
