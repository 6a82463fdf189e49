"""Training stage: data over shards, model configs (JSON), the loop, zero-shot evaluation."""
