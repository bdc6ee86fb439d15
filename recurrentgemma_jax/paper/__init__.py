"""Reproduction of the paper's small-scale studies (De et al. 2024):
`studies` (what runs), `runner` (running them in parallel, resumably) and
`report` (figures and tables). `recurrentgemma reproduce` is the command
line; it needs a checkout (the experiment files live in `experiments/`)."""
