"""Input pipelines: synthetic tasks, tokenizers, packing, local text and the
Python-source corpus."""
