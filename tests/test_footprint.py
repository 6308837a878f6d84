"""Start-footprint masks and masked PSNR: exact geometry on a wrapping map, exact decibels."""

import math

import numpy as np
import pytest

from slowfast_vgen.metrics import footprint_chunk_psnr, footprint_masks, masked_psnr, psnr
from slowfast_vgen.metrics.frames import PSNR_CEILING_DB


def test_a_camera_that_does_not_move_sees_only_its_footprint():
    masks = footprint_masks(np.array([[5, 7]] * 3), (4, 6), 20)
    assert masks.shape == (3, 4, 6) and masks.dtype == bool and masks.all()


def test_a_full_view_width_away_shows_none_of_the_footprint_and_coming_back_shows_all():
    masks = footprint_masks(np.array([[0, 0], [6, 0], [0, 4], [0, 0]]), (4, 6), 20)
    assert masks[0].all() and not masks[1].any() and not masks[2].any() and masks[3].all()


def test_a_half_shift_keeps_half_the_columns_or_rows():
    masks = footprint_masks(np.array([[0, 0], [3, 0], [-3, 0], [0, 2]]), (4, 6), 20)
    assert masks[1, :, :3].all() and not masks[1, :, 3:].any()  # moved right: the left half was seen
    assert masks[2, :, 3:].all() and not masks[2, :, :3].any()  # moved left: the right half was seen
    assert masks[3, :2].all() and not masks[3, 2:].any()  # moved down: the top rows were seen


def test_a_diagonal_move_keeps_the_overlap_rectangle():
    mask = footprint_masks(np.array([[10, 10], [13, 12]]), (4, 6), 20)[1]
    expected = np.zeros((4, 6), bool)
    expected[:2, :3] = True
    assert np.array_equal(mask, expected)


def test_the_footprint_wraps_around_the_map():
    # start at x = 18 on a 20-px map: the footprint is columns 18, 19, 0, 1, 2, 3
    unwrapped = footprint_masks(np.array([[18, 0], [21, 0]]), (4, 6), 20)
    wrapped = footprint_masks(np.array([[18, 0], [1, 0]]), (4, 6), 20)
    assert np.array_equal(unwrapped, wrapped)
    assert wrapped[1, :, :3].all() and not wrapped[1, :, 3:].any()
    # a full lap around the map is the start place again
    assert footprint_masks(np.array([[0, 0], [20, 0]]), (4, 6), (20, 30))[1].all()


def test_footprint_masks_refuse_bad_shapes():
    with pytest.raises(ValueError, match="must fit"):
        footprint_masks(np.array([[0, 0]]), (4, 30), 20)
    with pytest.raises(ValueError, match=r"\(F, 2\)"):
        footprint_masks(np.zeros((2, 3)), (4, 6), 20)


def test_masked_psnr_ignores_the_pixels_outside_the_mask():
    x = np.zeros((2, 3, 4, 6), np.float32)  # (F, 3, H, W) float in [0, 1]
    y = np.ones((2, 3, 4, 6), np.float32)  # off by 1.0 outside the mask ...
    mask = np.zeros((2, 4, 6), bool)
    mask[:, :, :3] = True
    y[:, :, :, :3] = 0.1  # ... and by 0.1 inside: MSE 0.01 -> 20 dB
    assert masked_psnr(x, y, mask) == pytest.approx(20.0, abs=1e-6)
    # uint8 frames: 51 / 255 = 0.2 everywhere -> 10 log10(1 / 0.04) dB
    a, b = np.zeros((1, 4, 6, 3), np.uint8), np.full((1, 4, 6, 3), 51, np.uint8)
    assert masked_psnr(a, b, np.ones((1, 4, 6), bool)) == pytest.approx(10 * math.log10(25), abs=1e-6)


def test_masked_psnr_with_a_full_mask_is_the_clip_psnr():
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (2, 3, 8, 8, 3), dtype=np.uint8)
    assert masked_psnr(x, y, np.ones((3, 8, 8), bool)) == pytest.approx(psnr(x, y), abs=1e-4)


def test_masked_psnr_edge_cases():
    x = np.zeros((1, 4, 6, 3), np.uint8)
    assert math.isnan(masked_psnr(x, x + 9, np.zeros((1, 4, 6), bool)))  # nothing to score
    assert masked_psnr(x, x, np.ones((1, 4, 6), bool)) == PSNR_CEILING_DB  # identical
    with pytest.raises(ValueError, match="mask must be"):
        masked_psnr(x, x, np.ones((4, 6), bool))


def test_footprint_chunk_psnr_scores_each_range_over_its_mask():
    truth = np.zeros((5, 4, 6, 3), np.uint8)
    generated = np.full((5, 4, 6, 3), 51, np.uint8)
    masks = footprint_masks(np.array([[0, 0], [0, 0], [3, 0], [6, 0], [6, 0]]), (4, 6), 20)
    generated[2, :, 3:] = 255  # outside frame 2's footprint: must not count
    values = footprint_chunk_psnr(generated, truth, masks, [(1, 3), (3, 5)])
    assert values[0] == pytest.approx(10 * math.log10(25), abs=1e-6) and math.isnan(values[1])
    with pytest.raises(ValueError, match="out of range"):
        footprint_chunk_psnr(generated, truth, masks, [(3, 6)])
