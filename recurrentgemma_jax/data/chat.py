r"""Chat / instruction data in the RecurrentGemma (Gemma) chat template.

A conversation is one JSON line `{"messages": [{"role": R, "content": C},
...]}` (the key is `data.text_field`; the experiments set "messages"). It is
rendered as one document, the template of the instruction-tuned
checkpoints (`google/recurrentgemma-2b-it` on Hugging Face; Gemma's
"formatting and system instructions" page):

  <bos><start_of_turn>user\n{user}<end_of_turn>\n
  <start_of_turn>model\n{model}<end_of_turn>\n ...

BOS once at the start of each conversation, no EOS; each turn's content is
stripped of surrounding whitespace (the Hugging Face template's `| trim`). A
prompt for generation ends with the model header `<start_of_turn>model\n`.

Roles: "user" and "model"; "assistant" is read as "model". Gemma has no
system role: a leading "system" message is prepended to the first user turn,
followed by a blank line (what Gemma 3's template does). Turns alternate,
starting with a user turn; a training conversation needs a model turn.
Malformed records are one-line `ConfigError`s naming the file and line.

Loss mask (1 = trained on): each model turn's content tokens and its
`<end_of_turn>`, i.e. what the model must write when it answers (the
sampler stops at `<end_of_turn>`). Not trained on: BOS, the user turns, the
`<start_of_turn>model\n` header (the prompt supplies it) and the `\n` after
`<end_of_turn>` (the template adds it before the next turn). This is TRL's
"assistant-only loss" with the separator left to the template.

Tokens: `<start_of_turn>` and `<end_of_turn>` are inserted as the
tokenizer's single ids (Gemma's `tokenizer.model` has them), never parsed
from the text. A SentencePiece model without those pieces is a
`ConfigError` (train yours with `user_defined_symbols=<start_of_turn>,
<end_of_turn>`); the byte tokenizer, which has no special pieces, spells
the markers as text (documented fallback for small experiments). The role
header and the content are tokenized separately, so that the loss mask
falls on a token boundary; on a Gemma-like tokenizer (identity
normalization, no dummy prefix) that equals tokenizing the whole rendered
string (tests/train/test_chat_data.py checks it).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from recurrentgemma_jax.config import ConfigError
from recurrentgemma_jax.data import jsonl

START_OF_TURN = "<start_of_turn>"
END_OF_TURN = "<end_of_turn>"
USER, MODEL = "user", "model"
# Accepted role names -> the template's role.
ROLES = {"user": USER, "model": MODEL, "assistant": MODEL, "system": "system"}
SYSTEM_SEPARATOR = "\n\n"


@dataclasses.dataclass(frozen=True)
class Turn:
  """One turn of a normalized conversation: role "user" or "model"."""

  role: str
  content: str


def parse_messages(messages: Any, *, require_model: bool = True
                   ) -> list[Turn]:
  """Validates `messages` and returns the template's turns.

  Args:
    messages: a list of `{"role": str, "content": str}` (other keys are
      ignored).
    require_model: whether a model turn is needed (training data) or not
      (a prompt).

  Raises:
    ConfigError: one line naming the message at fault (1-based).
  """
  if not isinstance(messages, (list, tuple)):
    raise ConfigError("'messages' must be a list of {role, content} "
                      f"objects, got {type(messages).__name__}")
  if not messages:
    raise ConfigError("empty conversation ('messages' is [])")
  turns: list[Turn] = []
  system: str | None = None
  for i, message in enumerate(messages, 1):
    if not isinstance(message, Mapping):
      raise ConfigError(f"message {i} is not an object with role and "
                        f"content, got {type(message).__name__}")
    for key in ("role", "content"):
      if key not in message:
        raise ConfigError(f"message {i} has no {key!r}")
    role, content = message["role"], message["content"]
    if role not in ROLES:
      raise ConfigError(f"message {i}: role {role!r} is not one of "
                        f"{', '.join(ROLES)}")
    if not isinstance(content, str):
      raise ConfigError(f"message {i}: content must be a string, got "
                        f"{type(content).__name__}")
    role, content = ROLES[role], content.strip()
    if role == "system":
      if i != 1:
        raise ConfigError(
            f"message {i}: a system message may only come first (Gemma has "
            "no system role: it is prepended to the first user turn)")
      system = content
      continue
    if not turns and role != USER:
      raise ConfigError(f"message {i}: the conversation must start with a "
                        f"user turn (after an optional system message), got "
                        f"{role!r}")
    if turns and turns[-1].role == role:
      raise ConfigError(f"messages {i - 1} and {i} are both {role!r} turns; "
                        "turns must alternate user / model")
    if system is not None:
      content = (system + SYSTEM_SEPARATOR + content if content
                 else system)
      system = None
    turns.append(Turn(role, content))
  if not turns:
    raise ConfigError("the conversation has only a system message")
  if require_model and not any(t.role == MODEL for t in turns):
    raise ConfigError("no model turn to train on")
  return turns


def parse_record(record: Any, field: str = "messages") -> list[Turn]:
  """The turns of one JSON record `{field: [...]}` (or a bare list)."""
  if isinstance(record, (list, tuple)):
    return parse_messages(record)
  if not isinstance(record, Mapping) or field not in record:
    raise ConfigError(f"no {field!r} field (data.text_field)")
  return parse_messages(record[field])


def read_conversations(path: str, field: str = "messages"
                       ) -> Iterator[list[Turn]]:
  """The conversations of one JSON-lines file, one per non-blank line.

  Raises:
    ConfigError: `PATH:LINE: reason` for a malformed line.
  """
  for line_no, record in jsonl.json_lines(path):
    try:
      yield parse_record(record, field)
    except ConfigError as e:
      raise ConfigError(f"{path}:{line_no}: {e}") from None


def dumps(turns: Sequence[Turn]) -> str:
  """The stored form of a normalized conversation (a `messages` list)."""
  return json.dumps([{"role": t.role, "content": t.content} for t in turns],
                    ensure_ascii=False)


def loads(text: str | bytes, field: str = "messages") -> list[Turn]:
  """Turns from `dumps` output or any JSON record `parse_record` reads."""
  if isinstance(text, bytes):
    text = text.decode("utf-8")
  try:
    record = json.loads(text)
  except ValueError as e:
    raise ConfigError(f"not a JSON conversation ({e})") from None
  return parse_record(record, field)


def _piece_id(tokenizer: Any, piece: str) -> int | None:
  lookup = getattr(tokenizer, "piece_id", None)
  return lookup(piece) if lookup is not None else None


class ChatFormat:
  """The chat template on one tokenizer: token ids and loss weights.

  Args:
    tokenizer: `encode(str) -> list[int]`, `bos_id`, and `piece_id(str) ->
      int | None` for the special pieces (ours in `tokenizers.py`); one with
      `lossless = True` and no such pieces (the byte tokenizer) spells the
      markers as text.

  Raises:
    ConfigError: the tokenizer has no BOS, or lacks the markers and cannot
      spell them.
  """

  def __init__(self, tokenizer: Any):
    self.tokenizer = tokenizer
    bos = getattr(tokenizer, "bos_id", None)
    if bos is None or bos < 0:
      raise ConfigError("chat format: the tokenizer has no BOS token (the "
                        "template starts each conversation with it)")
    self.bos_id = int(bos)
    start = _piece_id(tokenizer, START_OF_TURN)
    end = _piece_id(tokenizer, END_OF_TURN)
    # True: the markers are single ids; False: spelled as text.
    self.special_tokens = start is not None and end is not None
    if self.special_tokens:
      self._start, self._end = [start], [end]
    elif getattr(tokenizer, "lossless", False):
      self._start = list(tokenizer.encode(START_OF_TURN))
      self._end = list(tokenizer.encode(END_OF_TURN))
    else:
      missing = [p for p, i in ((START_OF_TURN, start), (END_OF_TURN, end))
                 if i is None]
      raise ConfigError(
          f"chat format: the tokenizer has no single piece for "
          f"{' and '.join(missing)}; use the Gemma tokenizer.model, or train "
          "your SentencePiece model with user_defined_symbols="
          f"{START_OF_TURN},{END_OF_TURN}")
    self._newline = list(tokenizer.encode("\n"))
    self._header = {role: self._start + list(tokenizer.encode(role + "\n"))
                    for role in (USER, MODEL)}

  @property
  def end_of_turn_ids(self) -> list[int]:
    """The ids of `<end_of_turn>` (one id unless spelled as text)."""
    return list(self._end)

  @property
  def stop(self) -> int | str:
    """What ends a generated model turn: the id, or the text fallback's
    string (for `Sampler.generate(stop=...)`)."""
    return self._end[0] if self.special_tokens else END_OF_TURN

  def _turn(self, turn: Turn, *, last_newline: bool = True
            ) -> tuple[list[int], list[float]]:
    header = self._header[turn.role]
    body = list(self.tokenizer.encode(turn.content)) + self._end
    tail = self._newline if last_newline else []
    train = 1.0 if turn.role == MODEL else 0.0
    ids = header + body + tail
    weights = [0.0] * len(header) + [train] * len(body) + [0.0] * len(tail)
    return ids, weights

  def encode(self, turns: Sequence[Turn]) -> tuple[np.ndarray, np.ndarray]:
    """`(ids int32 [n], loss weights float32 [n])` of a whole conversation.

    `weights[j]` is 1 when token j is trained on as a target (model content
    and its `<end_of_turn>`), 0 elsewhere.
    """
    ids, weights = [self.bos_id], [0.0]
    for turn in turns:
      more, w = self._turn(turn)
      ids += more
      weights += w
    return np.asarray(ids, np.int32), np.asarray(weights, np.float32)

  def prompt(self, turns: Sequence[Turn], *, bos: bool = True) -> list[int]:
    """Ids of a conversation that ends with a user turn, then the model
    header: what the model continues with its answer."""
    if not turns or turns[-1].role != USER:
      raise ConfigError("a chat prompt must end with a user turn")
    ids = [self.bos_id] if bos else []
    for turn in turns:
      ids += self._turn(turn)[0]
    return ids + self._header[MODEL]

  def continuation(self, turns: Sequence[Turn], *, close_model_turn: bool
                   ) -> list[int]:
    """Ids to feed after a generated model turn: the `\\n` separator (with
    `<end_of_turn>` first if the reply did not end with it), `turns` (ending
    with a user turn) and the model header."""
    ids = (self._end if close_model_turn else []) + self._newline
    return ids + self.prompt(turns, bos=False)

  def ends_turn(self, ids: Sequence[int]) -> bool:
    """Whether generated `ids` end with `<end_of_turn>`."""
    n = len(self._end)
    return len(ids) >= n and list(ids[-n:]) == self._end


def as_turns(prompt: str | Sequence[Mapping[str, Any]]) -> list[Turn]:
  """A chat prompt: a string (one user turn) or a `messages` list."""
  if isinstance(prompt, str):
    return [Turn(USER, prompt.strip())]
  return parse_messages(list(prompt), require_model=False)
