import pytest
import torch

from editsweep.diffusion.backbone import clip_bpe_tokenizer
from editsweep.diffusion.prompt_alignment import refine_mapper, replace_mapper, word_positions


@pytest.fixture(scope="module")
def tokenizer():
    return clip_bpe_tokenizer()


def test_word_swap_maps_every_other_token_to_itself(tokenizer):
    mapper = replace_mapper(tokenizer, "a photo of a cat", "a photo of a dog")
    cat, dog = word_positions(tokenizer, "a photo of a cat", "cat"), word_positions(tokenizer, "a photo of a dog", "dog")
    assert cat == dog == [5]
    assert torch.equal(mapper, torch.eye(77))  # one token for one token at the same place


def test_word_swap_spreads_a_split_word(tokenizer):
    source, target = "a photo of a cat", "a photo of a hippopotamus"
    n_target = len(tokenizer("hippopotamus", add_special_tokens=False).input_ids)
    assert n_target > 1
    mapper = replace_mapper(tokenizer, source, target)
    assert torch.allclose(mapper[5, 5 : 5 + n_target], torch.ones(n_target))
    # Every target position takes a convex combination of source positions.
    assert torch.allclose(mapper.sum(0), torch.ones(77))
    # The end token follows the longer word.
    assert mapper[6, 5 + n_target] == 1


def test_word_swap_needs_equal_word_counts(tokenizer):
    with pytest.raises(ValueError, match="same number of words"):
        replace_mapper(tokenizer, "a cat", "a fluffy cat")


def test_refinement_aligns_shared_tokens_and_frees_added_ones(tokenizer):
    mapper, alphas = refine_mapper(tokenizer, "a photo of a cat", "a photo of a fluffy cat")
    fluffy = word_positions(tokenizer, "a photo of a fluffy cat", "fluffy")
    cat = word_positions(tokenizer, "a photo of a fluffy cat", "cat")
    assert alphas[fluffy].eq(0).all() and alphas[cat].eq(1).all()
    assert mapper[5, cat[0]] == 1  # "cat" was at position 5 in the source
    assert alphas[:5].eq(1).all() and mapper[:5, :5].equal(torch.eye(5))


def reference_mapper(x: list[int], y: list[int], max_len: int = 77) -> tuple[list[int], list[float]]:
    """A transcription of the prompt-to-prompt reference code's `seq_aligner.get_mapper` (global_align
    with ScoreParams(gap=0, match=1, mismatch=-1), get_aligned_sequences, then the padding rule):
    an index mapper (target position -> source position) and alphas."""
    rows, cols = len(x) + 1, len(y) + 1
    matrix = [[0] * cols for _ in range(rows)]
    trace = [[0] * cols for _ in range(rows)]
    trace[0] = [4] + [1] * (cols - 1)
    for i in range(1, rows):
        trace[i][0] = 2
    for i in range(1, rows):
        for j in range(1, cols):
            left = matrix[i][j - 1]
            up = matrix[i - 1][j]
            diag = matrix[i - 1][j - 1] + (1 if x[i - 1] == y[j - 1] else -1)
            matrix[i][j] = max(left, up, diag)
            trace[i][j] = 1 if matrix[i][j] == left else 2 if matrix[i][j] == up else 3
    i, j, base = len(x), len(y), []
    while i > 0 or j > 0:
        if trace[i][j] == 3:
            i, j = i - 1, j - 1
            base.append((j, i))
        elif trace[i][j] == 1:
            j = j - 1
            base.append((j, -1))
        elif trace[i][j] == 2:
            i = i - 1
        else:
            break
    base.reverse()
    alphas = [1.0] * max_len
    mapper = [0] * max_len
    for k, (_, source) in enumerate(base):
        alphas[k] = float(source != -1)
        mapper[k] = source
    for k in range(len(base), max_len):
        mapper[k] = len(y) + (k - len(base))
    return mapper, alphas


PAIRS = [
    ("a photo of a cat", "a photo of a fluffy cat"),  # inserted word
    ("a photo of a fluffy cat", "a photo of a cat"),  # removed word
    ("a cat sitting on a mat", "a black cat sitting on a red mat in the sun"),  # several words added
    ("a large red circle on the left", "a red circle"),  # several words removed
    ("a dog and a dog", "a dog and a small dog and a cat"),  # repeated tokens: tie-breaking matters
]


@pytest.mark.parametrize(("source", "target"), PAIRS)
def test_refinement_mapper_is_the_reference_rule(tokenizer, source, target):
    src = tokenizer(source).input_ids
    tgt = tokenizer(target).input_ids
    want_mapper, want_alphas = reference_mapper(src, tgt)
    mapper, alphas = refine_mapper(tokenizer, source, target)
    assert alphas.tolist() == want_alphas
    for j in range(77):
        if want_alphas[j]:
            expected = torch.zeros(77)
            expected[want_mapper[j]] = 1.0
            assert torch.equal(mapper[:, j], expected), f"target position {j}"
        else:  # an added token keeps its own map: the mapper column does not matter (alpha 0)
            assert mapper[:, j].sum() == 0
    # The quirk: the target's padding maps to the same index of the source, whatever the lengths.
    assert all(want_mapper[j] == j for j in range(len(tgt), 77))
