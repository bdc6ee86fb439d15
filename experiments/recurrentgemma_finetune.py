r"""Fine-tune released RecurrentGemma weights on your text.

Arguments: ckpt=DIR (the Kaggle Flax weights' `2b` or `9b` Orbax folder),
size=2b|9b, tokenizer=PATH (default: `tokenizer.model` beside DIR),
files=GLOBS (text or .jsonl, `+`-separated; default: the Python standard
library's source, the default corpus of experiments/lm.py, built on any
machine), data_dir=DIR (where the text is prepared once as a TFDS dataset;
default $TFDS_DATA_DIR or ~/tensorflow_datasets), runlocal. A bad size=
fails before the weights or any data are read.

The weights are loaded with `recurrentgemma_jax.load_official_checkpoint`;
the run then continues like any other (checkpoints of the fine-tuned
state in the workdir, resumable). bfloat16 compute, float32 master weights
and Adam state, block remat ("dots"), parameters sharded over all devices.

Command:
  python -m recurrentgemma_jax.train \
      --config=experiments/recurrentgemma_finetune.py:ckpt=/ckpts/2b \
      --workdir=/tmp/rg2b_python

Expected: eval loss on the held-out files drops from the pretrained model's
within a few hundred steps (estimate, not measured).
Runtime: 2b, 1000 steps of 16 x 1024 tokens: about 15 minutes on one H200
(estimate; ~40 GB of state). runlocal shrinks batch, sequence and steps,
but a 2B model still needs ~40 GB of memory and hours on a CPU; on a small
machine point ckpt at a small checkpoint in the same format (the tests
build one) with `--config.init_from.preset=` and the model's window / soft
cap / scaling in `--config.model.*`.
"""

import os

from recurrentgemma_jax.config import ConfigError
from recurrentgemma_jax.data import pipeline
from recurrentgemma_jax.training import config as config_lib

SIZES = ("2b", "9b")


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, ckpt="", size="2b", tokenizer="", files="",
                             data_dir="", runlocal=False)
  if arg.size not in SIZES:
    raise ConfigError(f"size={arg.size!r} is not one of {', '.join(SIZES)}")
  c = config_lib.base_config()
  c.total_steps = 1000
  c.batch_size = 16
  c.seq_len = 1024
  c.learning_rate = 1e-5
  c.warmup_steps = 50
  c.min_lr_ratio = 0.0
  c.optimizer.weight_decay = 0.0
  c.eval_every = 200
  c.eval_batches = 8
  c.checkpoint_every = 200
  c.log_every = 10
  c.mesh.update(data=1, fsdp=-1)
  c.model = config_lib.model_config(f"recurrentgemma-{arg.size}",
                                    remat="dots")
  c.init_from.checkpoint = arg.ckpt
  c.init_from.preset = f"recurrentgemma-{arg.size}"
  default_tokenizer = os.path.join(os.path.dirname(arg.ckpt.rstrip("/")),
                                   "tokenizer.model")
  c.data = pipeline.LM_DEFAULTS.copy()
  c.data.update(tokenizer=arg.tokenizer or default_tokenizer,
                data_dir=arg.data_dir)
  if arg.files:
    c.data.update(source="text", files=arg.files.replace("+", ","))
  else:
    c.data.update(source="python")
  if arg.runlocal:
    c.total_steps = 20
    c.batch_size = 2
    c.seq_len = 128
    c.warmup_steps = 2
    c.eval_every = 20
    c.eval_batches = 2
    c.checkpoint_every = 20
    c.log_every = 5
    c.mesh.update(data=-1, fsdp=1)
  return c
