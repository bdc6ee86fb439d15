r"""Fine-tune released RecurrentGemma weights on your text.

Arguments: the weights, exactly one of ckpt=DIR (the Kaggle Flax weights'
`2b` or `9b` Orbax folder), hf=DIR (a Hugging Face checkpoint folder, e.g.
a download of google/recurrentgemma-2b: config.json and *.safetensors) or
weights=none (random initialisation: for `--compile_only` memory reports);
size=2b|9b (the model for ckpt= and weights=none; with hf= the folder's
config.json describes it), tokenizer=PATH (default: `tokenizer.model`
beside the ckpt folder, or inside the hf folder), files=GLOBS (text or
.jsonl, `+`-separated; default: the Python standard library's source, the
default corpus of experiments/lm.py, built on any machine), format=chat
(files= hold conversations, one JSON line `{"messages": [...]}` each, in
the -it models' chat template with the loss on the model turns;
recurrentgemma_jax/data/chat.py), lora=RANK (train low-rank adapters of
that rank on every projection instead of all parameters: alpha 2 x rank,
learning rate 1e-4, the frozen base in bfloat16; `--config.lora.*` tunes
them, docs/finetuning.md), data_dir=DIR (where
the text is prepared once as a TFDS dataset; default $TFDS_DATA_DIR or
~/tensorflow_datasets), runlocal. A bad size=, format= or choice of
weights fails before the weights or any data are read (hf= reads only
config.json).

The weights are loaded with `recurrentgemma_jax.load_official_checkpoint`
or `recurrentgemma_jax.from_hf` (the model then comes from config.json,
with transformers' attention window, one less than the official model's:
`--config.model.attention_window_size=2048` restores the official one);
the run then continues like any other (checkpoints of the fine-tuned
state in the workdir, resumable). bfloat16 compute, float32 master weights
and Adam state, block remat ("dots"), parameters sharded over all devices.

Command:
  recurrentgemma train \
      --config=experiments/recurrentgemma_finetune.py:ckpt=/ckpts/2b \
      --workdir=/tmp/rg2b_python
  recurrentgemma train \
      --config=experiments/recurrentgemma_finetune.py:hf=/ckpts/rg-2b \
      --workdir=/tmp/rg2b_python_hf
  recurrentgemma train \
      --config=experiments/recurrentgemma_finetune.py:hf=/ckpts/rg-2b-it,lora=16,format=chat,files=/data/chat.jsonl \
      --workdir=/tmp/rg2b_it_lora

Expected: eval loss on the held-out files drops from the pretrained model's
within a few hundred steps (estimate, not measured).
Runtime: 2b, 1000 steps of 16 x 1024 tokens on one H200: about 10 minutes
(28.3K tokens/s, 83 GB peak) for full fine-tuning, 7.5 with lora=16 (37.3K
tokens/s, 55 GB), plus about a minute of compilation (measured,
docs/finetuning.md). runlocal shrinks batch, sequence and steps,
but a 2B model still needs ~40 GB of memory and hours on a CPU; on a small
machine point ckpt at a small checkpoint in the same format (the tests
build one) with `--config.init_from.preset=` and the model's window / soft
cap / scaling in `--config.model.*`.
"""

import os

from recurrentgemma_jax.config import ConfigError
from recurrentgemma_jax.data import pipeline
from recurrentgemma_jax.training import config as config_lib
from recurrentgemma_jax.training import experiment_files

common = experiment_files.sibling(__file__, "common")  # experiments/common.py

SIZES = ("2b", "9b")


def get_config(arg=None):
  arg = common.parse_arg(arg, ckpt="", hf="", weights="", size="2b",
                         tokenizer="", files="", data_dir="",
                         runlocal=False, format="text", lora=0)
  if arg.size not in SIZES:
    raise ConfigError(f"size={arg.size!r} is not one of {', '.join(SIZES)}")
  if arg.weights not in ("", "none"):
    raise ConfigError(f"weights={arg.weights!r}: only weights=none (no "
                      "released weights) exists; use ckpt=DIR or hf=DIR")
  given = [f"{k}=" for k in ("ckpt", "hf", "weights") if arg[k]]
  if len(given) != 1:
    raise ConfigError(
        "give exactly one of ckpt=DIR (official Orbax weights), hf=DIR "
        "(Hugging Face weights) or weights=none (random initialisation, "
        f"e.g. for --compile_only); got {', '.join(given) or 'none'}")
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
  if arg.hf:  # the checkpoint's config.json describes the model
    c.model = config_lib.hf_model_config(arg.hf, remat="dots")
  else:
    c.model = config_lib.model_config(f"recurrentgemma-{arg.size}",
                                      remat="dots")
  c.init_from.checkpoint = arg.ckpt
  c.init_from.hf = arg.hf
  c.init_from.preset = f"recurrentgemma-{arg.size}"
  # Kaggle puts tokenizer.model beside the weights' folder, Hugging Face in it.
  default_tokenizer = os.path.join(
      arg.hf or os.path.dirname(arg.ckpt.rstrip("/")), "tokenizer.model")
  c.data = pipeline.LM_DEFAULTS.copy()
  c.data.update(tokenizer=arg.tokenizer or default_tokenizer,
                data_dir=arg.data_dir)
  if arg.files:
    c.data.update(source="text", files=arg.files.replace("+", ","))
  else:
    c.data.update(source="python")
  pipeline.set_format(c.data, arg.format)
  if arg.lora:
    if arg.lora < 0:
      raise ConfigError(f"lora={arg.lora!r}: the adapters' rank, an integer "
                        ">= 0 (0: train every parameter)")
    # The usual LoRA recipe: alpha = 2 * rank, a 10x higher learning rate
    # than full fine-tuning, the frozen base stored in bfloat16.
    c.lora.update(rank=arg.lora, alpha=2.0 * arg.lora, base_dtype="bfloat16")
    c.learning_rate = 1e-4
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
