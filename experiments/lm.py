r"""Language modelling on a TFDS dataset or on your own text / JSON-lines.

Arguments (after `:`, comma-separated):
  dataset=NAME    a prepared TFDS dataset (array_record; e.g. lm1b), read
                  from data_dir=DIR (default: the TFDS data folder);
  files=GLOBS     local text or .jsonl files instead (`+`-separated globs),
                  prepared once as a TFDS dataset by the package's builder;
  tokenizer=PATH  a SentencePiece model (default: bytes, no file needed);
  model=griffin|hawk|mqa, runlocal;
  size=100m (default: the paper's 100M size, sequences of 2048) or small
                  (the tinyshakespeare comparison of docs/results.md: six
                  blocks of width 256 at equal parameter counts, 4.64M MQA,
                  4.65M Griffin, 4.66M Hawk with RNN width 192; 600 steps of
                  32 x 512 bytes; Griffin's window 256).
With neither dataset nor files, the project's sample corpus
(../shared/data/tinyshakespeare.txt beside the repository) is used.

Command:
  python -m recurrentgemma_jax.train \
      --config=experiments/lm.py:files=/path/to/*.txt --workdir=/tmp/lm
  python -m recurrentgemma_jax.train \
      --config=experiments/lm.py:runlocal --workdir=/tmp/lm_shakespeare

Model: the paper's 100M size of the chosen family (vocabulary from the
tokenizer, padded to a multiple of 128), sequences of 2048.

Expected: on tinyshakespeare with bytes, runlocal (a 3-block width-128
Griffin, 300 steps of 16 x 256 bytes) goes from ln 259 = 5.56 nats per byte
(uniform) to an eval loss of about 1.75 (next-byte accuracy 0.48, measured);
the full model goes well below that.
Runtime: runlocal, about 6 minutes on 2 shared CPU cores (measured); full
(10k steps of 64 x 2048 tokens, 100M parameters), about an hour on one H200
(estimate).
"""

import os

from recurrentgemma_jax.data import pipeline
from recurrentgemma_jax.training import config as config_lib

SAMPLE_CORPUS = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                             "..", "..", "shared", "data",
                             "tinyshakespeare.txt")


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, dataset="", files="", data_dir="",
                             tokenizer="bytes", model="griffin",
                             size="100m", runlocal=False)
  if arg.size not in ("100m", "small"):
    raise ValueError(f"size={arg.size!r} is not one of 100m, small")
  c = config_lib.base_config()
  c.total_steps = 10_000
  c.batch_size = 64
  c.seq_len = 2048
  c.learning_rate = 1e-3
  c.warmup_steps = 500
  c.eval_every = 1000
  c.eval_batches = 16
  c.checkpoint_every = 1000
  c.log_every = 50
  c.model = config_lib.model_config(f"{arg.model}-100m")
  c.data = pipeline.LM_DEFAULTS.copy()
  c.data.update(tokenizer=arg.tokenizer, data_dir=arg.data_dir)
  if arg.dataset:
    c.data.update(source="tfds", name=arg.dataset)
  else:
    c.data.update(source="text",
                  files=arg.files.replace("+", ",") or SAMPLE_CORPUS)
  if arg.size == "small":
    # docs/results.md: a 2000-step schedule overfit this 1 MB corpus (eval
    # loss lowest near step 500, then rising while train loss fell to 0.1).
    c.total_steps = 600
    c.batch_size = 32
    c.seq_len = 512
    c.warmup_steps = 100
    c.eval_every = 100
    c.eval_batches = 8
    c.checkpoint_every = 500
    c.model = config_lib.model_config(
        "", kind=arg.model, depth=6, width=256, mlp_expanded_width=768,
        num_heads=4, lru_width=192,
        attention_window_size=0 if arg.model == "mqa" else 256)
  if arg.runlocal:
    c.total_steps = 300
    c.batch_size = 16
    c.seq_len = 256
    c.warmup_steps = 30
    c.learning_rate = 3e-3
    c.eval_every = 100
    c.eval_batches = 4
    c.checkpoint_every = 150
    c.log_every = 25
    c.model = config_lib.model_config(
        "", kind=arg.model, depth=3, width=128, mlp_expanded_width=384,
        num_heads=4, lru_width=96,  # equal parameters: 0.60M for each kind
        attention_window_size=0 if arg.model == "mqa" else 128,
        dtype="float32")
  return c
