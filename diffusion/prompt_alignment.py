"""Token alignment between a source and a target prompt, as Prompt-to-Prompt needs it.

A mapper is a (L, L) matrix M over token positions: the target's attention map for token j is
taken as sum_i source_map[i] * M[i, j]. `alphas[j]` is 1 where target token j has a source
counterpart and 0 where it was added (it then keeps its own map). We write the alignment
ourselves because diffusers ships no P2P aligner; the algorithms follow Hertz et al. 2022:
word swap maps word to word (a word split into several tokens shares its counterpart's mean map),
refinement aligns the token sequences globally (Needleman-Wunsch, match 1, mismatch -1, gap 0) with
the reference code's tie-breaking and padding rule (`refine_mapper`).
"""

from __future__ import annotations

import torch
from transformers import PreTrainedTokenizerBase


def word_tokens(tokenizer: PreTrainedTokenizerBase, word: str) -> list[int]:
    """Token ids of one word, without start/end tokens."""
    return tokenizer(word, add_special_tokens=False).input_ids


def prompt_tokens(tokenizer: PreTrainedTokenizerBase, prompt: str) -> list[int]:
    """Token ids of a prompt with start and end tokens, not padded."""
    return tokenizer(prompt, truncation=True, max_length=tokenizer.model_max_length).input_ids


def word_positions(tokenizer: PreTrainedTokenizerBase, prompt: str, word: str) -> list[int]:
    """Positions (in the padded sequence) of every occurrence of `word`'s tokens in `prompt`."""
    target = word_tokens(tokenizer, word)
    ids = prompt_tokens(tokenizer, prompt)
    positions: list[int] = []
    for start in range(1, len(ids) - len(target) + 1):
        if target and ids[start : start + len(target)] == target:
            positions += range(start, start + len(target))
    return positions


def replace_mapper(tokenizer: PreTrainedTokenizerBase, source: str, target: str) -> torch.Tensor:
    """Word-swap mapper for prompts with the same number of words; (L, L)."""
    length = tokenizer.model_max_length
    src_words, tgt_words = source.split(), target.split()
    if len(src_words) != len(tgt_words):
        raise ValueError(
            f"word swap needs prompts with the same number of words: {source!r} vs {target!r}; use mode 'refine'"
        )
    mapper = torch.zeros(length, length)
    mapper[0, 0] = 1.0
    i_src = i_tgt = 1
    for src_word, tgt_word in zip(src_words, tgt_words):
        n_src, n_tgt = len(word_tokens(tokenizer, src_word)), len(word_tokens(tokenizer, tgt_word))
        if i_src + n_src >= length or i_tgt + n_tgt >= length:
            break
        if src_word == tgt_word:
            for k in range(n_src):
                mapper[i_src + k, i_tgt + k] = 1.0
        else:
            mapper[i_src : i_src + n_src, i_tgt : i_tgt + n_tgt] = 1.0 / n_src
        i_src, i_tgt = i_src + n_src, i_tgt + n_tgt
    # End and padding tokens follow one to one.
    for k in range(length - max(i_src, i_tgt)):
        mapper[i_src + k, i_tgt + k] = 1.0
    return mapper


def refine_mapper(tokenizer: PreTrainedTokenizerBase, source: str, target: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Refinement mapper (words added or removed) and its alphas; (L, L) and (L,).

    As the reference code's `seq_aligner.get_refinement_mapper` (the code PIE-Bench's numbers come
    from), including its protocol quirk at the padding: every target position j at or after the
    target's token count maps to source position j itself (the same index, not the source's
    padding shifted by the difference in length) with alpha 1.
    """
    length = tokenizer.model_max_length
    src, tgt = prompt_tokens(tokenizer, source), prompt_tokens(tokenizer, target)
    mapper = torch.zeros(length, length)
    alphas = torch.ones(length)
    for j, i in enumerate(_align(src, tgt)):
        if i >= 0:
            mapper[i, j] = 1.0
        else:
            alphas[j] = 0.0
    for j in range(len(tgt), length):
        mapper[j, j] = 1.0
    return mapper, alphas


def _align(src: list[int], tgt: list[int]) -> list[int]:
    """For each target position, the aligned source position or -1: the reference's global
    alignment (`seq_aligner.global_align`: gap 0, match 1, mismatch -1; on ties it prefers a gap
    in the source, then a gap in the target, then the diagonal) read back from the end."""
    n, m = len(src), len(tgt)
    score = [[0] * (m + 1) for _ in range(n + 1)]
    move = [[0] * (m + 1) for _ in range(n + 1)]  # 1: left (target token unaligned), 2: up, 3: diagonal
    for j in range(1, m + 1):
        move[0][j] = 1
    for i in range(1, n + 1):
        move[i][0] = 2
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            left, up = score[i][j - 1], score[i - 1][j]
            diagonal = score[i - 1][j - 1] + (1 if src[i - 1] == tgt[j - 1] else -1)
            score[i][j] = max(left, up, diagonal)
            move[i][j] = 1 if score[i][j] == left else 2 if score[i][j] == up else 3
    mapping = [-1] * m
    i, j = n, m
    while i > 0 or j > 0:
        if move[i][j] == 3:
            i, j = i - 1, j - 1
            mapping[j] = i
        elif move[i][j] == 1:
            j -= 1
        else:
            i -= 1
    return mapping
