"""Synthetic retrieval data and user (prompt, answer) pairs: content, lengths, tokenization, determinism."""

from __future__ import annotations

import re

import pytest
import torch

from byte_tokenizer import byte_tokenizer
from leank_hf.errors import LeanKUsageError
from leank_hf.training.data import (
    PromptAnswerData,
    SyntheticRetrievalData,
    as_training_data,
    chat_prompt_ids,
    make_multikey_sample,
    make_multivalue_sample,
    tokenize_sample,
)


@pytest.fixture(scope="module")
def tokenizer():
    return byte_tokenizer()


def test_multikey_sample_hides_each_asked_number_once(tokenizer):
    sample = make_multikey_sample(tokenizer, 900, seed=3, num_needles=5, num_questions=3)
    assert len(sample.questions) == 3
    keys = [re.search(r"for (\w+)\?", q.question).group(1) for q in sample.questions]
    assert len(set(keys)) == 3
    for key, question in zip(keys, sample.questions):
        (number,) = question.facts
        assert re.fullmatch(r"\d{7}", number)
        assert sample.context.count(f"The special magic number for {key} is: {number}.") == 1
        assert number in question.answer and key in question.answer
    assert len(re.findall(r"The special magic number for \w+ is: \d{7}\.", sample.context)) == 5


def test_multivalue_answer_lists_the_numbers_in_text_order(tokenizer):
    sample = make_multivalue_sample(tokenizer, 800, seed=4, num_keys=2, values_per_key=3)
    for question in sample.questions:
        key = re.search(r"for (\w+)\?", question.question).group(1)
        hidden = re.findall(rf"One of the special magic numbers for {key} is: (\d{{7}})\.", sample.context)
        assert hidden == question.facts and len(hidden) == 3
        assert ", ".join(hidden) in question.answer


@pytest.mark.parametrize("length", [700, 1111, 1500])
def test_prompt_length_is_close_to_target(tokenizer, length):
    group = tokenize_sample(tokenizer, make_multikey_sample(tokenizer, length, seed=length))
    for total in group.prompt_lengths:
        assert abs(total - length) <= 0.1 * length + 20


def test_tokenized_group_splits_shared_prefix_exactly(tokenizer):
    sample = make_multikey_sample(tokenizer, 500, seed=9)
    group = tokenize_sample(tokenizer, sample)
    for question, tokenized in zip(sample.questions, group.questions):
        full = chat_prompt_ids(tokenizer, f"{sample.context}\n\n{question.question}")
        assert torch.cat([group.prefix_ids, tokenized.suffix_ids]).tolist() == full
        assert len(tokenized.suffix_ids) >= 1
        assert tokenized.answer_ids[-1] == tokenizer.eos_token_id
        assert tokenizer.decode(tokenized.answer_ids[:-1]) == question.answer


def test_synthetic_stream_is_deterministic_alternates_tasks_and_spreads_lengths(tokenizer):
    data = SyntheticRetrievalData(tokenizer, min_length=200, max_length=600, seed=1, questions_per_sample=4)
    assert data.sample(5).context == SyntheticRetrievalData(tokenizer, 200, 600, seed=1).sample(5).context
    assert data.sample(5).context != SyntheticRetrievalData(tokenizer, 200, 600, seed=2).sample(5).context
    assert [data.sample(i).task for i in range(4)] == ["multikey", "multivalue", "multikey", "multivalue"]
    lengths = [data.sample(i).target_length for i in range(12)]
    assert all(200 <= n <= 600 for n in lengths) and len(set(lengths)) > 6
    assert len(data.group(0).questions) == 4 and len(data.group(1).questions) == 2


def test_prompt_answer_pairs_use_the_chat_template_and_supervise_the_answer(tokenizer):
    data = as_training_data([("What is 2+2?", "4"), ("Name a colour.", "Blue")], tokenizer, seed=0)
    assert isinstance(data, PromptAnswerData)
    group = data.group(3)  # cycles
    (question,) = group.questions
    assert torch.cat([group.prefix_ids, question.suffix_ids]).tolist() == chat_prompt_ids(tokenizer, "Name a colour.")
    assert tokenizer.decode(question.answer_ids[:-1]) == "Blue"
    assert data.describe()["num_pairs"] == 2


@pytest.mark.parametrize("bad", [[], [("prompt only",)], [("", "x")], "not a list of pairs"])
def test_bad_user_data_is_refused(tokenizer, bad):
    with pytest.raises(LeanKUsageError):
        as_training_data(bad, tokenizer, seed=0)


def test_bad_synthetic_settings_are_refused(tokenizer):
    with pytest.raises(LeanKUsageError, match="tasks"):
        SyntheticRetrievalData(tokenizer, tasks=("passkey",))
    with pytest.raises(LeanKUsageError, match="min_length"):
        SyntheticRetrievalData(tokenizer, min_length=500, max_length=100)


def test_missing_chat_template_is_explained(tokenizer):
    plain = byte_tokenizer()
    plain.chat_template = None
    with pytest.raises(LeanKUsageError, match="chat template"):
        chat_prompt_ids(plain, "hello")
