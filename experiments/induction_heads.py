r"""Induction heads (De et al. 2024, Appendix H; Olsson et al. 2022).

A random sequence over a vocabulary of 16 holds a trigger token followed by
some token; at the end the trigger appears again and the model must output
the token that followed it. Train length 256; five blocks of width 64;
Griffin's third block is local attention with window 128.

Command (model = griffin | hawk | mqa):
  recurrentgemma train \
      --config=experiments/induction_heads.py:model=griffin \
      --workdir=/tmp/induction_heads_griffin

Expected: accuracy of the final answer rises from chance (1/15 = 0.067) to
1 at train length for all three families. Measured on H200 (docs/results.md;
13.5k steps, two seeds, about 10 minutes per run with six runs sharing a
GPU): 1.00 for all at 256 tokens; evaluated at 64x (16,384 tokens, with
`recurrentgemma evaluate --length_multipliers=1,2,...,64`),
Hawk 0.98, Griffin 0.19, MQA 0.09. One scored token per sequence makes this
the slowest synthetic task to start learning.
The official `recurrentgemma` Griffin trained from the same weights on the
same batches (6.2k steps, one H200) extrapolated no better than ours
(docs/results.md, Section 2b). That control is the `official_control`
study of `recurrentgemma reproduce run`; one run of it trains both models:
  recurrentgemma reproduce control \
      --config=experiments/induction_heads.py:model=griffin \
      --workdir=/tmp/induction_heads_control --config.total_steps=6200
Runtime: runlocal (sequence 64, window 32, 1000 steps of 64 sequences),
roughly 10-20 minutes on 2 CPU cores; full size, about 10 minutes on H200.
"""

from recurrentgemma_jax.training import experiment_files

common = experiment_files.sibling(__file__, "common")  # experiments/common.py


def get_config(arg=None):
  arg = common.parse_arg(arg, model="griffin", runlocal=False)
  c = common.synthetic_task_config("induction_heads", arg.model,
                                   window=128)
  c.batch_size = 128
  c.seq_len = 256
  c.eval_batches = 8
  c.data.vocab_size = 16
  if arg.runlocal:
    common.shrink_for_cpu(c, arg.model, total_steps=1000, batch_size=64,
                          eval_every=250, checkpoint_every=500)
  return c
