"""Few-shot probe prompts, split into a prefix shared by every question and a per-question suffix.

In:  a tokenizer, the number of prompt sets F and shots per set, a seed.
Out: `PromptSet`s (exemplars fixed by the seed) that encode a batch of questions as one shared
     prefix plus one suffix per question.

Format (DESIGN.md): with a chat template, system "Answer the following question.", each exemplar a
user turn "Question: …" and an assistant turn "Answer: …", then the question as a user turn and the
generation prompt. Without a chat template the same content as plain "Question: …\nAnswer: …" lines.
Exemplars are TriviaQA validation questions with short answers, from the offline data package.

`format_prompt` is the one place this format is written: the probe's few-shot prompts, the training
prompt (no exemplars) and token shift's bare prompts (the user's words alone) all come from it.
"""

from __future__ import annotations

import ast
import os
import random
from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

from knowpack.offline_data import hf_dataset_dir

SYSTEM_PROMPT = "Answer the following question."
ANSWER_LABEL = "Answer:"
_QUESTION = "Question: {question}"
_ANSWER = ANSWER_LABEL + " {answer}"


@lru_cache(maxsize=1)
def triviaqa_exemplar_pool() -> tuple[tuple[str, str], ...]:
    """Short TriviaQA (question, answer) pairs, in the dataset's order."""
    from datasets import load_from_disk

    data = load_from_disk(str(hf_dataset_dir("trivia_qa", "rc.wikipedia.nocontext", "validation")))
    pool = []
    for question, answer in zip(data["question"], data["answer"]):
        # The offline copy stores the answer record as a Python-literal string.
        value = (ast.literal_eval(answer) if isinstance(answer, str) else answer)["value"]
        if len(question) <= 100 and 0 < len(value) <= 25 and "\n" not in question:
            pool.append((question.strip(), value.strip()))
    return tuple(pool)


def uses_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def format_prompt(tokenizer, question: str, exemplars: Sequence[tuple[str, str]] = (), *,
                  chat: bool | None = None, bare: bool = False) -> str:
    """The prompt text for ``question``, exactly as a plain ``generate`` call would receive it.

    ``exemplars``: few-shot (question, answer) pairs before the question (the probe's; training has none).
    ``chat``: render with the tokenizer's chat template; None: when the tokenizer has one.
    ``bare``: the question as a user's own request, with no system turn and no "Question:"/"Answer:"
    labels (token shift's free-form prompts); without a chat template that is the question itself.
    """
    chat = uses_chat_template(tokenizer) if chat is None else chat
    if bare and exemplars:
        raise ValueError("a bare prompt has no exemplars: they need the Question:/Answer: labels")
    if not chat:
        return question if bare else _plain_text(exemplars, question)
    messages = [{"role": "user", "content": question}] if bare else _chat_messages(exemplars, question)
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def _chat_messages(exemplars, question: str | None) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": SYSTEM_PROMPT}]
    for q, a in exemplars:
        messages.append({"role": "user", "content": _QUESTION.format(question=q)})
        messages.append({"role": "assistant", "content": _ANSWER.format(answer=a)})
    if question is not None:
        messages.append({"role": "user", "content": _QUESTION.format(question=question)})
    return messages


def _plain_text(exemplars, question: str | None) -> str:
    text = SYSTEM_PROMPT + "\n\n"
    for q, a in exemplars:
        text += _QUESTION.format(question=q) + "\n" + _ANSWER.format(answer=a) + "\n\n"
    if question is not None:
        text += _QUESTION.format(question=question) + "\n" + ANSWER_LABEL
    return text


@dataclass(frozen=True)
class PromptSet:
    """One few-shot prompt: fixed exemplars, rendered for any question."""

    prompt_id: int
    exemplars: tuple[tuple[str, str], ...]
    chat: bool

    def render(self, tokenizer, question: str) -> str:
        """The full prompt text, exactly as a plain ``generate`` call would receive it."""
        return format_prompt(tokenizer, question, self.exemplars, chat=self.chat)

    def encode(self, tokenizer, questions: Sequence[str]) -> tuple[list[int], list[list[int]]]:
        """(shared prefix ids, suffix ids per question): prefix + suffix is exactly each full prompt's ids.

        The prefix is the longest run of tokens every full prompt starts with (the system turn, the
        exemplars and the question's lead-in "…user\nQuestion:"), found on the real tokenization, so
        no template or tokenizer detail can make the split differ from encoding the whole prompt.
        Each suffix keeps at least one token (the one whose logits start the answer).
        """
        full = [_encode(tokenizer, self.render(tokenizer, q), self.chat) for q in questions]
        shared = min(len(os.path.commonprefix(full)), min(len(ids) for ids in full) - 1)
        return full[0][:shared], [ids[shared:] for ids in full]



def _encode(tokenizer, text: str, chat: bool) -> list[int]:
    # Chat templates already write BOS when the model wants one; plain prompts get the tokenizer's default.
    return tokenizer(text, add_special_tokens=not chat)["input_ids"]


def build_prompt_sets(tokenizer, num_prompts: int, shots: int, seed: int) -> list[PromptSet]:
    """F prompt sets with disjoint exemplars drawn by ``seed``."""
    pool = list(triviaqa_exemplar_pool())
    rng = random.Random(seed)
    picks = rng.sample(range(len(pool)), num_prompts * shots)
    chat = uses_chat_template(tokenizer)
    return [PromptSet(i, tuple(pool[j] for j in picks[i * shots:(i + 1) * shots]), chat)
            for i in range(num_prompts)]
