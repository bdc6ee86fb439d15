r"""The paper's scaling runs (De et al. 2024, Table 2), for TPU pod slices.

Arguments: model=griffin|hawk|mqa, size=100m|400m|1b|3b|7b|14b,
dataset=NAME (a prepared TFDS dataset, default c4/en:3.1.0), data_dir=DIR,
tokenizer=PATH (a SentencePiece model, e.g. RecurrentGemma's 256k
`tokenizer.model`; default bytes), runlocal.

Sizes (width / RNN width / depth / heads) and token budgets follow Table 2:
100m 768/1024/12/6 on 1.9B tokens, 400m 1536/2048/12/12 on 7.8B,
1b 2048/2560/24/16 on 25B, 3b 3072/4096/24/24 on 60B, 7b 4096/5632/32/32 on
132B, 14b 5120/8192/40/40 on 300B; MLP expansion 3, local window 1024,
sequence length 2048. Global batch: 512 sequences (1M tokens), so
`total_steps = tokens / 2^20`. The learning rates are ours (the paper does
not list them): 1e-3 at 100m down to 2e-4 at 14b, cosine to 10%.

Parallelism: parameters and optimizer state sharded over all chips (fsdp =
-1); tensor parallelism of 2 / 4 / 8 from 3b / 7b / 14b; block remat.

Command (on every host of a slice; launch/tpu.py runs it for you):
  recurrentgemma train \
      --config=experiments/paper_scaling.py:model=griffin,size=400m \
      --workdir=gs://BUCKET/griffin_400m
Quick CPU run: `--config=experiments/paper_scaling.py:runlocal` trains a
width-64 stand-in for 50 steps on the Python standard library's source (the
default corpus of experiments/lm.py, built on any machine; prepared in
data_dir, default $TFDS_DATA_DIR or ~/tensorflow_datasets).
A bad model= or size= fails before any data is read.

Expected: final validation loss decreasing with size along the paper's
Figure 1(a) curves (absolute values depend on the dataset and tokenizer).
Runtime: 400m on a v5p-64 slice, a few hours (estimate from the FLOP count
in docs/flops.md at 40% MFU); runlocal, about 1 minute on 2 CPU cores.
"""

from recurrentgemma_jax import presets
from recurrentgemma_jax.config import ConfigError
from recurrentgemma_jax.data import pipeline
from recurrentgemma_jax.training import config as config_lib
from recurrentgemma_jax.training import experiment_files

common = experiment_files.sibling(__file__, "common")  # experiments/common.py

# size -> (training tokens from Table 2, peak learning rate, tensor axis).
BUDGETS = {
    "100m": (1.9e9, 1e-3, 1),
    "400m": (7.8e9, 7.5e-4, 1),
    "1b": (25e9, 5e-4, 1),
    "3b": (60e9, 4e-4, 2),
    "7b": (132e9, 3e-4, 4),
    "14b": (300e9, 2e-4, 8),
}


def get_config(arg=None):
  arg = common.parse_arg(arg, model="griffin", size="400m",
                         dataset="c4/en:3.1.0", data_dir="",
                         tokenizer="bytes", runlocal=False)
  if arg.model not in presets.MODEL_KINDS:
    raise ConfigError(f"model={arg.model!r} is not one of "
                      f"{', '.join(presets.MODEL_KINDS)}")
  if arg.size not in BUDGETS:
    raise ConfigError(
        f"size={arg.size!r} is not one of {', '.join(BUDGETS)}")
  tokens, lr, tensor = BUDGETS[arg.size]
  c = config_lib.base_config()
  c.batch_size = 512
  c.seq_len = 2048
  c.total_steps = int(tokens // (c.batch_size * c.seq_len))
  c.learning_rate = lr
  c.warmup_steps = min(1000, c.total_steps // 10)
  c.eval_every = 1000
  c.eval_batches = 16
  c.checkpoint_every = 1000
  c.log_every = 20
  c.model = config_lib.model_config(f"{arg.model}-{arg.size}", remat="dots")
  c.mesh.update(data=1, fsdp=-1, tensor=tensor)
  c.data = pipeline.LM_DEFAULTS.copy()
  c.data.update(source="tfds", name=arg.dataset, data_dir=arg.data_dir,
                tokenizer=arg.tokenizer)
  if arg.runlocal:
    c.total_steps = 50
    c.batch_size = 8
    c.seq_len = 128
    c.warmup_steps = 5
    c.eval_every = 50
    c.eval_batches = 2
    c.checkpoint_every = 50
    c.log_every = 10
    c.mesh.update(data=-1, fsdp=1, tensor=1)
    c.model = config_lib.model_config(
        "", kind=arg.model, depth=3, width=64, mlp_expanded_width=192,
        num_heads=2, lru_width=64,
        attention_window_size=0 if arg.model == "mqa" else 64,
        dtype="float32")
    c.data.update(source="python", name="")
  return c
