r"""Language modelling on Python source, a TFDS dataset or your own text.

Arguments (after `:`, comma-separated):
  corpus=python   the default corpus: the `.py` files of the running
                  interpreter's standard library (9.4 MB for CPython 3.12,
                  46 of 560 files held out), built on any machine without a
                  download (recurrentgemma_jax/data/code_corpus.py; a
                  manifest.json of each split's files and bytes lies beside
                  the prepared data); `site_packages` adds the installed
                  packages, `max_bytes=N` keeps a stable subset of N bytes;
  dataset=NAME    a prepared TFDS dataset (array_record; e.g. lm1b) instead;
  files=GLOBS     local text or .jsonl files instead (`+`-separated globs),
                  prepared once as a TFDS dataset by the package's builder;
  data_dir=DIR    where prepared datasets go (corpus, files) or are read
                  (dataset); default: TFDS's folder, $TFDS_DATA_DIR or else
                  ~/tensorflow_datasets (the corpus and files= are prepared
                  there once, in local_text/<digest of files and options>/);
  tokenizer=PATH  a SentencePiece model (default: bytes, no file needed);
  format=chat     files= (or dataset=) hold conversations, one JSON line
                  `{"messages": [{"role", "content"}, ...]}` each, trained
                  in the Gemma chat template with the loss on the model
                  turns (recurrentgemma_jax/data/chat.py; default: text);
  model=griffin|hawk|mqa, runlocal;
  size=100m (default: the paper's 100M size, sequences of 2048) or small
                  (the comparison of docs/results.md: six blocks of width
                  256 at equal parameter counts, 4.64M MQA, 4.65M Griffin,
                  4.66M Hawk with RNN width 192; 600 steps of 32 x 512
                  bytes; Griffin's window 256).
Give at most one of corpus, dataset, files. The argument values are checked
before any data is prepared.

Command:
  recurrentgemma train \
      --config=experiments/lm.py:files=/path/to/*.txt --workdir=/tmp/lm
  recurrentgemma train \
      --config=experiments/lm.py:runlocal --workdir=/tmp/lm_python

Model: the paper's 100M size of the chosen family (vocabulary from the
tokenizer, padded to a multiple of 128), sequences of 2048. Its 10k steps
of 64 x 2048 bytes are about 140 passes over the standard library: for the
full size, add `site_packages` or give a larger dataset or files.

Expected: on the default corpus with bytes, runlocal (a 3-block width-128
Griffin, 300 steps of 16 x 256 bytes) goes from ln 259 = 5.56 nats per byte
(uniform) to an eval loss of about 1.68 (next-byte accuracy 0.56; measured
once, CPython 3.12.1, over the 4 eval batches of 16 x 256 bytes); on
tinyshakespeare (`files=`) the same run reached about 1.75 (accuracy 0.48,
measured). The full model goes well below that.
Runtime: runlocal, about 4 minutes on 2 shared CPU cores (measured; the
corpus is prepared in under a second), 6 in an earlier run; full
(10k steps of 64 x 2048 tokens, 100M parameters), about an hour on one H200
(estimate).
"""

import pathlib
import sys

from recurrentgemma_jax import presets
from recurrentgemma_jax.config import ConfigError
from recurrentgemma_jax.data import pipeline
from recurrentgemma_jax.training import config as config_lib

_REPO = str(pathlib.Path(__file__).resolve().parents[1])
if _REPO not in sys.path:  # loaded by path, from any directory
  sys.path.insert(0, _REPO)
from experiments import common  # pylint: disable=g-import-not-at-top

SIZES = ("100m", "small")


def get_config(arg=None):
  arg = common.parse_arg(arg, corpus="", site_packages=False,
                         max_bytes=0, dataset="", files="", data_dir="",
                         tokenizer="bytes", model="griffin",
                         size="100m", runlocal=False, format="text")
  if arg.model not in presets.MODEL_KINDS:
    raise ConfigError(f"model={arg.model!r} is not one of "
                      f"{', '.join(presets.MODEL_KINDS)}")
  if arg.size not in SIZES:
    raise ConfigError(f"size={arg.size!r} is not one of {', '.join(SIZES)}")
  if arg.corpus not in ("", "python"):
    raise ConfigError(f"corpus={arg.corpus!r} is not one of python (or give "
                      "files= or dataset=)")
  if sum(map(bool, (arg.corpus, arg.dataset, arg.files))) > 1:
    raise ConfigError("give at most one of corpus=, dataset=, files=")
  if (arg.site_packages or arg.max_bytes) and (arg.dataset or arg.files):
    raise ConfigError("site_packages and max_bytes apply to corpus=python, "
                      "not to dataset= or files=")
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
  elif arg.files:
    c.data.update(source="text", files=arg.files.replace("+", ","))
  else:
    c.data.update(source="python", python_site_packages=arg.site_packages,
                  python_max_bytes=arg.max_bytes)
  pipeline.set_format(c.data, arg.format)
  if arg.size == "small":
    # docs/results.md (tinyshakespeare, files=): a 2000-step schedule overfit
    # that 1 MB corpus (eval loss lowest near step 500, then rising while
    # train loss fell to 0.1). On the default corpus, 600 steps of 32 x 512
    # bytes are about one pass.
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
