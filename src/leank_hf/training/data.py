"""Training and evaluation data: synthetic long-context retrieval samples, or the user's own (prompt, answer) pairs.

A sample is one long context with one or more questions about it. All its prompts go through the tokenizer's chat
template; the prompts share the context, so the trainer runs their common token prefix once and only the short
question suffix and the answer per question. Only answer tokens are supervised.

Haystack text is generated from the word lists in `resources/haystack_words.json` (plain invented sentences), so no
data is downloaded. Everything a sample contains is a function of `(seed, index)`, which makes training resumable
bit for bit and evaluation seeds held out from training seeds.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

import torch

from ..errors import LeanKUsageError

TASKS = ("multikey", "multivalue")
_INTRO = "Below is a long text. Some special magic numbers are hidden in it; remember them.\n\n"


@dataclass
class RetrievalQuestion:
    """One question about a context: the answer text supervised in training and the facts a correct reply holds.

    Args:
        question (`str`): appended to the context.
        answer (`str`): the reply the trainer supervises (phrased the way the model tends to reply).
        facts (`list[str]`, *optional*): strings that must all appear in a generated reply for it to count as
            correct in evaluation; defaults to `[answer]`.
    """

    question: str
    answer: str
    facts: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.facts:
            self.facts = [self.answer]


@dataclass
class RetrievalSample:
    """A long context and the questions asked about it.

    Args:
        task (`str`): generator name (`"multikey"`, `"multivalue"` or `"pairs"`).
        context (`str`): the text every question is asked about (may be empty for user pairs).
        questions (`list[RetrievalQuestion]`): questions, each appended to the context in its own prompt.
        target_length (`int`): the prompt length in tokens the generator aimed at (0 for user pairs).
    """

    task: str
    context: str
    questions: list[RetrievalQuestion]
    target_length: int = 0


@dataclass
class TokenizedQuestion:
    """Token ids of one question: `suffix_ids` follow the shared prefix, `answer_ids` end with the end-of-turn id."""

    suffix_ids: torch.Tensor
    answer_ids: torch.Tensor
    answer: str
    facts: list[str]


@dataclass
class TokenizedGroup:
    """A tokenized sample: `prefix_ids [P]` shared by all questions, then per question its suffix and answer."""

    task: str
    prefix_ids: torch.Tensor
    questions: list[TokenizedQuestion]
    target_length: int = 0

    @property
    def prompt_lengths(self) -> list[int]:
        return [len(self.prefix_ids) + len(q.suffix_ids) for q in self.questions]


@cache
def _words() -> dict[str, list[str]]:
    text = resources.files(__package__).joinpath("resources/haystack_words.json").read_text(encoding="utf-8")
    return json.loads(text)


def filler_sentence(rng: random.Random) -> str:
    """One invented haystack sentence, e.g. "The village baker repaired a wooden chair near the harbour at dawn."."""
    words = _words()
    sentence = (
        f"{rng.choice(words['subjects'])} {rng.choice(words['verbs'])} {rng.choice(words['objects'])} "
        f"{rng.choice(words['places'])} {rng.choice(words['times'])}."
    )
    sentence = sentence[0].upper() + sentence[1:]
    if rng.random() < 0.3:
        sentence += " " + rng.choice(words["comments"])
    return sentence


def _magic_number(rng: random.Random) -> str:
    return str(rng.randrange(1_000_000, 10_000_000))


def _haystack(tokenizer: Any, rng: random.Random, length: int, needles: list[str], question: str) -> str:
    """Intro, filler sentences and `needles` (at random depths in the first 90%) for a prompt of about `length`
    tokens: the filler gets what the chat template, intro, needles and `question` leave."""
    fixed = " ".join([_INTRO, *needles, question])
    ids = chat_prompt_ids(tokenizer, fixed) if getattr(tokenizer, "chat_template", None) else tokenizer(fixed)
    num_tokens = max(32, length - len(ids if isinstance(ids, list) else ids["input_ids"]))
    sentences: list[str] = []
    total = 0
    while total < num_tokens:
        batch = [filler_sentence(rng) for _ in range(32)]
        for sentence, ids in zip(batch, tokenizer(batch, add_special_tokens=False)["input_ids"]):
            if total >= num_tokens:
                break
            sentences.append(sentence)
            total += len(ids) + 1
    positions = sorted(rng.randrange(0, max(1, int(0.9 * len(sentences)))) for _ in needles)
    for offset, (position, needle) in enumerate(zip(positions, needles)):
        sentences.insert(position + offset, needle)
    return _INTRO + " ".join(sentences)


def make_multikey_sample(tokenizer: Any, length: int, seed: int, num_needles: int = 6, num_questions: int = 4):
    """Multi-key needle task: several keys each hide one 7-digit number; each question asks for one key's number.

    Args:
        tokenizer: the model's tokenizer (used to size the haystack).
        length (`int`): approximate prompt length in tokens.
        seed (`int`): everything in the sample follows from it.
        num_needles (`int`, *optional*, defaults to 6): keys hidden in the text.
        num_questions (`int`, *optional*, defaults to 4): questions asked (distinct keys).

    Returns:
        `RetrievalSample`
    """
    rng = random.Random(seed)
    keys = rng.sample(_words()["keys"], num_needles)
    values = [_magic_number(rng) for _ in keys]
    needles = [f"The special magic number for {k} is: {v}." for k, v in zip(keys, values)]
    context = _haystack(tokenizer, rng, length, needles, f"What is the special magic number for {keys[0]}?")
    asked = rng.sample(range(num_needles), min(num_questions, num_needles))
    questions = [
        RetrievalQuestion(
            f"What is the special magic number for {keys[i]}?",
            f"The special magic number for {keys[i]} is {values[i]}.",
            [values[i]],
        )
        for i in asked
    ]
    return RetrievalSample("multikey", context, questions, length)


def make_multivalue_sample(tokenizer: Any, length: int, seed: int, num_keys: int = 2, values_per_key: int = 3):
    """Multi-value task: each key hides several numbers; each question asks for all numbers of one key, in order.

    Args:
        tokenizer: the model's tokenizer (used to size the haystack).
        length (`int`): approximate prompt length in tokens.
        seed (`int`): everything in the sample follows from it.
        num_keys (`int`, *optional*, defaults to 2): keys, one question each.
        values_per_key (`int`, *optional*, defaults to 3): numbers hidden per key.

    Returns:
        `RetrievalSample`
    """
    rng = random.Random(seed)
    keys = rng.sample(_words()["keys"], num_keys)
    values = {k: [_magic_number(rng) for _ in range(values_per_key)] for k in keys}
    needles = [f"One of the special magic numbers for {k} is: {v}." for k in keys for v in values[k]]
    rng.shuffle(needles)
    context = _haystack(tokenizer, rng, length, needles, f"What are all the special magic numbers for {keys[0]}?")
    order = {k: [v for n in needles for v in values[k] if n.endswith(f" {k} is: {v}.")] for k in keys}
    questions = [
        RetrievalQuestion(
            f"What are all the special magic numbers for {k}?",
            f"The special magic numbers for {k} are: {', '.join(order[k])}.",
            order[k],
        )
        for k in keys
    ]
    return RetrievalSample("multivalue", context, questions, length)


GENERATORS = {"multikey": make_multikey_sample, "multivalue": make_multivalue_sample}


def chat_prompt_ids(tokenizer: Any, user_text: str) -> list[int]:
    """Token ids of a one-turn chat prompt ending with the assistant header (the tokenizer's own template)."""
    if getattr(tokenizer, "chat_template", None) is None:
        raise LeanKUsageError(
            "the tokenizer has no chat template; give it one (tokenizer.chat_template = ...) or pass prompts that "
            "are already formatted as (prompt, answer) pairs through `PromptAnswerData(..., chat_template=False)`"
        )
    ids = tokenizer.apply_chat_template([{"role": "user", "content": user_text}], add_generation_prompt=True)
    if isinstance(ids, dict) or hasattr(ids, "keys"):
        ids = ids["input_ids"]
    return list(ids)


def answer_token_ids(tokenizer: Any, answer: str) -> list[int]:
    """Answer ids followed by the end-of-turn id (the tokenizer's `eos_token_id`)."""
    ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        ids = ids + [tokenizer.eos_token_id]
    return ids


def _common_prefix_length(sequences: Sequence[Sequence[int]]) -> int:
    first = sequences[0]
    length = min(len(s) for s in sequences)
    for other in sequences[1:]:
        n = 0
        while n < length and other[n] == first[n]:
            n += 1
        length = n
    return length


def tokenize_sample(tokenizer: Any, sample: RetrievalSample, chat_template: bool = True) -> TokenizedGroup:
    """Tokenize every question's prompt and split off the prefix all prompts share.

    Args:
        tokenizer: the model's tokenizer.
        sample (`RetrievalSample`): context and questions.
        chat_template (`bool`, *optional*, defaults to `True`): format prompts with the tokenizer's chat template;
            `False` tokenizes `context + question` as is.

    Returns:
        `TokenizedGroup` whose `prefix_ids` is at least one token shorter than every prompt.
    """
    prompts = []
    for q in sample.questions:
        text = f"{sample.context}\n\n{q.question}" if sample.context else q.question
        prompts.append(chat_prompt_ids(tokenizer, text) if chat_template else tokenizer(text)["input_ids"])
    shared = min(_common_prefix_length(prompts), min(len(p) for p in prompts) - 1)
    if shared < 1:
        raise LeanKUsageError("a prompt tokenizes to fewer than 2 tokens; give longer prompts")
    questions = [
        TokenizedQuestion(
            torch.tensor(p[shared:], dtype=torch.long),
            torch.tensor(answer_token_ids(tokenizer, q.answer), dtype=torch.long),
            q.answer,
            list(q.facts),
        )
        for p, q in zip(prompts, sample.questions)
    ]
    return TokenizedGroup(
        sample.task, torch.tensor(prompts[0][:shared], dtype=torch.long), questions, sample.target_length
    )


@dataclass
class SyntheticRetrievalData:
    """The synthetic training stream: tasks alternate, lengths are drawn uniformly from `[min_length, max_length]`.

    Args:
        tokenizer: the model's tokenizer.
        min_length (`int`, *optional*, defaults to 1024): shortest prompt, in tokens.
        max_length (`int`, *optional*, defaults to 4096): longest prompt, in tokens.
        tasks (`tuple[str, ...]`, *optional*, defaults to `("multikey", "multivalue")`): generators to alternate.
        seed (`int`, *optional*, defaults to 0): sample `i` is generated from seed `seed * 1_000_003 + i`.
        questions_per_sample (`int`, *optional*, defaults to 4): questions per context (multi-key: this many of
            `questions_per_sample + 2` keys; multi-value: `questions_per_sample // 2` keys of 3 numbers each, at
            least 2). Each extra question costs a few answer rows, far less than the context's prefill.
    """

    tokenizer: Any
    min_length: int = 1024
    max_length: int = 4096
    tasks: tuple[str, ...] = TASKS
    seed: int = 0
    questions_per_sample: int = 4

    def __post_init__(self) -> None:
        unknown = [t for t in self.tasks if t not in GENERATORS]
        if unknown or not self.tasks:
            raise LeanKUsageError(f"tasks must be a non-empty subset of {list(GENERATORS)}, got {list(self.tasks)}")
        if self.questions_per_sample < 1:
            raise LeanKUsageError(f"questions_per_sample must be >= 1, got {self.questions_per_sample}")
        if not 16 <= self.min_length <= self.max_length:
            raise LeanKUsageError(
                f"need 16 <= min_length <= max_length, got min_length={self.min_length}, max_length={self.max_length}"
            )

    def sample(self, index: int) -> RetrievalSample:
        seed = self.seed * 1_000_003 + index
        length = random.Random(seed ^ 0x5EED).randint(self.min_length, self.max_length)
        task = self.tasks[index % len(self.tasks)]
        if task == "multikey":
            q = self.questions_per_sample
            return make_multikey_sample(self.tokenizer, length, seed, num_needles=q + 2, num_questions=q)
        return make_multivalue_sample(self.tokenizer, length, seed, num_keys=max(2, self.questions_per_sample // 2))

    def group(self, index: int) -> TokenizedGroup:
        return tokenize_sample(self.tokenizer, self.sample(index))

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "synthetic_retrieval",
            "tasks": list(self.tasks),
            "min_length": self.min_length,
            "max_length": self.max_length,
            "seed": self.seed,
            "questions_per_sample": self.questions_per_sample,
        }


@dataclass
class PromptAnswerData:
    """The user's own data: `(prompt, answer)` pairs, used in order and cycled.

    Args:
        tokenizer: the model's tokenizer.
        pairs (`Sequence[tuple[str, str]]`): prompts (the user message) and the answers to supervise.
        chat_template (`bool`, *optional*, defaults to `True`): wrap prompts in the tokenizer's chat template;
            `False` when prompts are already formatted.
        name (`str`, *optional*): recorded in the mask's metadata.
    """

    tokenizer: Any
    pairs: Sequence[tuple[str, str]]
    chat_template: bool = True
    name: str | None = None
    _groups: dict[int, TokenizedGroup] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if len(self.pairs) == 0:
            raise LeanKUsageError("the (prompt, answer) dataset is empty")
        for i, pair in enumerate(self.pairs):
            if len(pair) != 2 or not all(isinstance(x, str) and x for x in pair):
                raise LeanKUsageError(f"item {i} of the dataset must be a (prompt, answer) pair of non-empty strings")

    def group(self, index: int) -> TokenizedGroup:
        key = index % len(self.pairs)
        if key not in self._groups:
            prompt, answer = self.pairs[key]
            sample = RetrievalSample("pairs", "", [RetrievalQuestion(prompt, answer)])
            self._groups[key] = tokenize_sample(self.tokenizer, sample, self.chat_template)
        return self._groups[key]

    def describe(self) -> dict[str, Any]:
        return {"kind": "prompt_answer_pairs", "num_pairs": len(self.pairs), "name": self.name}


def as_training_data(data: Any, tokenizer: Any, seed: int):
    """Turn `train_masks(data=...)` into a stream with `group(index)` and `describe()`.

    `None` gives `SyntheticRetrievalData(tokenizer, seed=seed)`; a stream passes through; a sequence of
    `(prompt, answer)` pairs becomes `PromptAnswerData`.
    """
    if data is None:
        return SyntheticRetrievalData(tokenizer, seed=seed)
    if hasattr(data, "group") and hasattr(data, "describe"):
        return data
    if isinstance(data, Sequence) and not isinstance(data, str):
        return PromptAnswerData(tokenizer, list(data))
    raise LeanKUsageError(
        f"`data` must be None, SyntheticRetrievalData, PromptAnswerData or a list of (prompt, answer) pairs, "
        f"got {type(data).__name__}"
    )
