"""Log-likelihood of continuations given contexts, lm-evaluation-harness style.

In:  a causal LM, its tokenizer and ``(context, continuation)`` text pairs.
Out: per pair, the sum of log p(continuation tokens | context), encoded exactly as lm-eval's HF
     model encodes a request (`encode_request`).

Speed: requests are grouped by context, and contexts by a shared token prefix (the few-shot block).
The shared prefix runs once, each context body once on top of it, and each continuation on its own
context's keys/values, so 5-shot MMLU costs about one question per question instead of four 5-shot
prompts. Where the model allows it the prefix is read through one shared copy (`prefix_attention`)
instead of being copied into every row. One-token continuations (MMLU's " A" … " D") share one
next-token distribution. ``reuse_prefix=False`` scores every request as one full sequence instead
(the reference the fast path is tested against; same numbers up to float rounding).
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Callable, Iterator, Sequence

import torch

from knowpack.errors import KnowpackError
from knowpack.lm import context_limit, eval_mode
from knowpack.lm.cache import Past, can_reuse_cache, extend, prefix_keys_values
from knowpack.lm.prefix_attention import note_plain_path, shared_prefix_attention, supports_shared_prefix

Request = tuple[str, str]  # (context, continuation)
Encoded = tuple[list[int], list[int]]  # (context ids, continuation ids)


def loglikelihood(model, tokenizer, requests: Sequence[Request], *, batch_size: int = 16,
                  reuse_prefix: bool = True, progress: Callable[[int], None] | None = None) -> list[float]:
    """Sum of log p(continuation tokens | context) for each request, in request order.

    ``progress`` is an optional callable taking the number of requests just scored. A model served by
    vLLM (`VllmModel`) scores the same encoded requests from its engine's prompt log-probabilities.
    """
    if batch_size < 1:
        raise KnowpackError(f"batch_size must be at least 1, got {batch_size}")
    unique = list(dict.fromkeys(requests))  # MC1 and MC2 share most of their options
    served = hasattr(model, "loglikelihood_encoded")  # a model served by vLLM (`VllmModel`)
    limit = context_limit(model)
    if served and limit:  # encode_request keeps limit + 1 tokens; the engine's prompt plus the one token
        limit -= 2        # it must generate have to fit in its context
    special = leading_special_ids(tokenizer)
    encoded = [encode_request(tokenizer, context, continuation, special, limit) for context, continuation in unique]
    advance = progress or (lambda n: None)
    if served:
        scores = model.loglikelihood_encoded(encoded, progress=advance)
    else:
        if reuse_prefix:
            note_plain_path(model)
        with eval_mode(model), torch.inference_mode():
            if reuse_prefix and can_reuse_cache(model):
                scores = _score_shared(model, encoded, batch_size, advance)
            else:
                scores = _score_full(model, encoded, batch_size, advance)
    by_request = dict(zip(unique, scores))
    return [by_request[request] for request in requests]


def leading_special_ids(tokenizer) -> list[int]:
    """Ids the tokenizer puts before text by default (BOS for Llama-style tokenizers, none for SmolLM2)."""
    plain = tokenizer("a", add_special_tokens=False).input_ids
    full = tokenizer("a").input_ids
    for start in range(len(full) - len(plain) + 1):
        if full[start:start + len(plain)] == plain:
            return full[:start]
    return []


def encode_request(tokenizer, context: str, continuation: str, special: list[int], limit: int | None) -> Encoded:
    """(context ids, continuation ids) exactly as lm-eval's HF model encodes a request."""
    # lm-eval moves trailing spaces of the context onto the continuation ("Answer:" + " A"), then
    # takes the continuation as the tail of the whole encoding, so the boundary tokenizes naturally.
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    if context:
        context_ids = special + tokenizer(context, add_special_tokens=False).input_ids
        whole = special + tokenizer(context + continuation, add_special_tokens=False).input_ids
        continuation_ids = whole[len(context_ids):]
    else:  # lm-eval scores a bare continuation after end-of-text
        context_ids = special or [tokenizer.eos_token_id]
        continuation_ids = tokenizer(continuation, add_special_tokens=False).input_ids
    if not continuation_ids:
        raise ValueError(f"continuation {continuation!r} encodes to no tokens")
    # A question longer than the context: like lm-eval, keep the last limit + 1 tokens of context +
    # continuation (the final token is only predicted, so the model sees exactly `limit` positions).
    if limit and len(context_ids) + len(continuation_ids) > limit + 1:
        if len(continuation_ids) > limit:
            raise KnowpackError(f"an answer option of {len(continuation_ids)} tokens does not fit in "
                                f"the model's {limit} positions; score this benchmark with a longer-context model")
        context_ids = context_ids[-(limit + 1 - len(continuation_ids)):]
    return context_ids, continuation_ids


def target_logprobs(logits: torch.Tensor, targets: Sequence[Sequence[int]]) -> list[torch.Tensor]:
    """Per row, log p of each target token, read off the last len(target) positions of ``logits`` [B, T, V]."""
    out = []
    for i, target in enumerate(targets):
        scored = logits[i, logits.shape[1] - len(target):].float()  # [C, V]
        # log p = logit - logsumexp: no [B, T, V] log-softmax tensor is written.
        picked = scored.gather(-1, torch.as_tensor(target, device=logits.device)[:, None]).squeeze(-1)
        out.append(picked - scored.logsumexp(dim=-1))
    return out


def _score_rows(model, past: Past | None, inputs: list[list[int]], targets: list[list[int]], shared) -> list[float]:
    """Sum of log-probs of each row's targets, predicted by the last len(target) positions of its input."""
    logits, _ = extend(model, past, inputs, keep=max(len(t) for t in targets), shared_prefix=shared)
    return torch.stack([lp.sum() for lp in target_logprobs(logits, targets)]).tolist()


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _score_full(model, encoded: list[Encoded], batch_size: int, advance) -> list[float]:
    """The baseline: every request runs as one full sequence, as lm-eval does."""
    scores = [0.0] * len(encoded)
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i][0]) - len(encoded[i][1]))
    for chunk in _chunks(order, batch_size):
        inputs = [(encoded[i][0] + encoded[i][1])[:-1] for i in chunk]  # the last token predicts nothing
        for i, score in zip(chunk, _score_rows(model, None, inputs, [encoded[i][1] for i in chunk], None)):
            scores[i] = score
        advance(len(chunk))
    return scores


def _score_shared(model, encoded: list[Encoded], batch_size: int, advance) -> list[float]:
    """Shared prefix once, each context body once on top of it, each continuation on its context's past."""
    by_context: dict[tuple[int, ...], list[tuple[int, list[int]]]] = {}
    for i, (context_ids, continuation_ids) in enumerate(encoded):
        by_context.setdefault(tuple(context_ids), []).append((i, continuation_ids))
    scores = [0.0] * len(encoded)
    share = supports_shared_prefix(model)
    for prefix_len, contexts in prefix_groups(list(by_context)):
        prefix = extend(model, None, [list(contexts[0][:prefix_len])])[1] if prefix_len else None  # one row
        shared = prefix_keys_values(prefix) if share and prefix is not None else None

        contexts.sort(key=len, reverse=True)  # similar body lengths share a batch: less padding
        with shared_prefix_attention(model) if shared is not None else nullcontext():
            for chunk in _chunks(contexts, batch_size):
                past = _rows_on_prefix(prefix, len(chunk), shared is not None)
                # The last context token is held back: it runs with the continuation and predicts its first token.
                bodies = [list(context[prefix_len:-1]) for context in chunk]
                if any(bodies):
                    past = extend(model, past, bodies, shared_prefix=shared)[1]
                _score_single_tokens(model, chunk, by_context, past, shared, scores, advance)
                rows = [(j, index, [context[-1]] + continuation[:-1], continuation)
                        for j, context in enumerate(chunk) for index, continuation in by_context[context]
                        if len(continuation) > 1]
                rows.sort(key=lambda row: len(row[3]), reverse=True)  # similar lengths share a batch
                for batch in _chunks(rows, batch_size):
                    batch_past = past.select([row[0] for row in batch]) if past is not None else None
                    batch_scores = _score_rows(model, batch_past, [row[2] for row in batch],
                                               [row[3] for row in batch], shared)
                    for row, score in zip(batch, batch_scores):
                        scores[row[1]] = score
                    advance(len(batch))
    return scores


def _rows_on_prefix(prefix: Past | None, rows: int, shared: bool) -> Past | None:
    """``rows`` rows continuing a one-row prefix: empty after it (shared attention) or holding a copy."""
    if prefix is None:
        return None
    return Past.empty(rows, start=int(prefix.lengths[0])) if shared else prefix.select([0] * rows)


def _score_single_tokens(model, chunk: list[tuple[int, ...]], by_context, past: Past | None, shared,
                         scores: list[float], advance) -> None:
    """One-token continuations (MMLU's " A" … " D") all read the same next-token distribution:
    one row per context instead of one row, and one copy of its past, per option."""
    owners = [j for j, context in enumerate(chunk) if any(len(c) == 1 for _, c in by_context[context])]
    if not owners:
        return
    logits, _ = extend(model, past.select(owners) if past is not None else None,
                       [[chunk[j][-1]] for j in owners], shared_prefix=shared)
    next_token = logits[:, -1].float()  # [B, V]
    log_norm = next_token.logsumexp(dim=-1)  # [B]
    done = 0
    for row, j in enumerate(owners):
        for index, continuation in by_context[chunk[j]]:
            if len(continuation) == 1:
                scores[index] = (next_token[row, continuation[0]] - log_norm[row]).item()
                done += 1
    advance(done)


def prefix_groups(contexts: list[tuple[int, ...]]) -> list[tuple[int, list[tuple[int, ...]]]]:
    """Split contexts into runs sharing a token prefix worth computing once: [(prefix length, contexts)].

    In sorted order a run's common prefix is that of its first and last member. A context joins the
    run when the prefix tokens it saves outweigh the tokens a shorter common prefix pushes back into
    the bodies of the run's members (the few-shot block of one MMLU subject ends up one run).
    """
    groups: list[list] = []  # [prefix length, members]
    for context in sorted(contexts):
        if groups:
            prefix_len, members = groups[-1]
            common = min(prefix_len, len(context) - 1, _common_prefix_len(members[0], context))
            if common >= len(members) * (prefix_len - common):
                groups[-1][0] = common
                members.append(context)
                continue
        groups.append([len(context) - 1, [context]])  # the last token always runs with the continuation
    return [(prefix_len, members) for prefix_len, members in groups]


def _common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n
