"""Launchers: several JAX processes on this machine (`local`), and gcloud
commands for Cloud TPU VMs and pod slices (`tpu_commands`). Their command
lines are `recurrentgemma launch-local` and `recurrentgemma launch-tpu`
(`launch/local.py`, `launch/tpu.py` in a checkout)."""
