"""cachesaver: cheaper, faster, reproducible LLM requests."""
