"""Input pipelines: synthetic tasks, tokenizers, packing, local text."""
