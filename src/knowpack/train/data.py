"""Tokenized training batches with answer-only labels and length grouping.

In:  `TrainExample`s, a tokenizer, `loss_on` ("answer" or "sequence").
Out: batches of similar length, split into micro-batches (`Batch`: input_ids / attention_mask / labels,
     right-padded to the longest row of the micro-batch).

The prompt (system + question, `knowpack.probe.prompts.format_prompt`) and the answer ("Answer: X" plus the
end-of-turn token) are tokenized separately and concatenated, so the answer span is known exactly;
labels never come from counting padding.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch

from knowpack.lm.training import IGNORE
from knowpack.probe.prompts import ANSWER_LABEL, format_prompt, uses_chat_template
from knowpack.train.mixture import TrainExample

Row = tuple[list[int], list[int]]  # (input ids, labels) of one example


@dataclass
class Batch:
    input_ids: torch.Tensor       # [B, T]
    attention_mask: torch.Tensor  # [B, T]
    labels: torch.Tensor          # [B, T], IGNORE outside the trained span
    base_hidden: torch.Tensor | None = None  # [N, H] base model's hidden states at the N trained positions

    def to(self, device) -> "Batch":
        return Batch(self.input_ids.to(device), self.attention_mask.to(device), self.labels.to(device),
                     None if self.base_hidden is None else self.base_hidden.to(device))


def answer_request(tokenizer, question: str, answer: str) -> tuple[str, str]:
    """(context, continuation) texts whose continuation is exactly the answer's tokens of the training format.

    For `knowpack.lm.score.loglikelihood`: the context ends at "Answer:" (its tokens are the training
    prompt's), the continuation is " " + the answer, without the end-of-turn token (the bits about a
    fact are in its answer, not in the format around it).
    """
    prompt = format_prompt(tokenizer, question)  # without a chat template it already ends at "Answer:"
    if uses_chat_template(tokenizer):
        bos = tokenizer.bos_token
        # The scoring core puts the tokenizer's leading special ids (BOS, if any) itself: not twice.
        if bos and prompt.startswith(bos) and tokenizer("a").input_ids[:1] == [tokenizer.bos_token_id]:
            prompt = prompt[len(bos):]
        prompt += ANSWER_LABEL
    return prompt, f" {answer}"


def encode_example(tokenizer, example: TrainExample, loss_on: str = "answer") -> tuple[list[int], list[int]]:
    """(input ids, labels) for one question/answer pair."""
    prompt = format_prompt(tokenizer, example.question)
    if uses_chat_template(tokenizer):
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        end = tokenizer.eos_token or ""
        answer_ids = tokenizer(f"{ANSWER_LABEL} {example.answer}{end}", add_special_tokens=False)["input_ids"]
    else:
        prompt_ids = tokenizer(prompt)["input_ids"]
        answer_ids = tokenizer(f" {example.answer}\n", add_special_tokens=False)["input_ids"]
    ids = prompt_ids + answer_ids
    labels = ids.copy() if loss_on == "sequence" else [IGNORE] * len(prompt_ids) + answer_ids
    return ids, labels


def collate(rows: Sequence[Row], pad_id: int) -> Batch:
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for row, (ids, row_labels) in enumerate(rows):
        input_ids[row, :len(ids)] = torch.tensor(ids)
        labels[row, :len(ids)] = torch.tensor(row_labels)
        mask[row, :len(ids)] = 1
    return Batch(input_ids, mask, labels)


def length_grouped_batches(encoded: Sequence[Row], batch_size: int, rng: random.Random) -> Iterator[list[int]]:
    """Batches (lists of example indices) of similar length (little padding) in a seeded random order."""
    order = list(range(len(encoded)))
    rng.shuffle(order)
    # Sort within windows of 8 batches: close lengths share a batch, yet epochs still differ in order.
    window = batch_size * 8
    grouped = []
    for start in range(0, len(order), window):
        grouped += sorted(order[start:start + window], key=lambda i: len(encoded[i][0]))
    batches = [grouped[i:i + batch_size] for i in range(0, len(grouped), batch_size)]
    rng.shuffle(batches)
    yield from batches


def micro_batches(encoded: Sequence[Row], batch: Sequence[int], count: int, pad_id: int,
                  base_cache: Sequence[torch.Tensor] | None = None) -> list[Batch]:
    """One batch (example indices) split into ``count`` consecutive micro-batches (fewer if it has fewer
    rows), each right-padded to its own longest row, with the cached base hidden states of its rows."""
    count = min(count, len(batch))
    parts = [batch[i * len(batch) // count:(i + 1) * len(batch) // count] for i in range(count)]
    micro = []
    for part in parts:
        collated = collate([encoded[i] for i in part], pad_id)
        if base_cache is not None:  # row by row, positions in order: the order of a [B, T] mask selection
            collated.base_hidden = torch.cat([base_cache[i] for i in part])
        micro.append(collated)
    return micro
