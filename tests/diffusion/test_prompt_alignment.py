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
