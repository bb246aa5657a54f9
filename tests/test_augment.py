import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmnist.augment import Augmentation, rotate, warp, warp_by_matmul

RECIPE_LIKE = Augmentation(degrees=15.0, translate=0.1, scale=0.1, crop_p=0.5)


@pytest.fixture(scope="module")
def digits(mnist):
    return jnp.asarray(mnist.train.images_NHW[:16], jnp.float32) / 255.0


def l_shape() -> jnp.ndarray:
    """An image with no symmetry: any flip or wrong-way rotation changes it."""
    image = np.zeros((28, 28), np.float32)
    image[4:20, 6:9] = 1.0
    image[17:20, 6:16] = 0.5
    image[5, 20] = 0.25
    return jnp.asarray(image)[None]


def test_zero_rotation_and_inactive_augmentation_return_the_input(digits):
    np.testing.assert_allclose(rotate(digits, jnp.zeros(16)), digits, atol=1e-6)
    assert not Augmentation().active
    np.testing.assert_allclose(Augmentation()(jax.random.key(0), digits), digits, atol=1e-6)


@pytest.mark.parametrize("quarter_turns", [1, 2, 3])
def test_right_angle_rotations_match_np_rot90_counter_clockwise(quarter_turns):
    image = l_shape()
    rotated = rotate(image, jnp.array([90.0 * quarter_turns]))
    np.testing.assert_allclose(rotated[0], np.rot90(image[0], quarter_turns), atol=1e-5)


def test_rotation_of_a_real_digit_matches_np_rot90(digits):
    np.testing.assert_allclose(rotate(digits, jnp.full(16, 90.0)), np.rot90(digits, 1, axes=(1, 2)), atol=1e-5)


def test_whole_pixel_translation_shifts_with_zero_fill():
    image = l_shape()
    shifted = warp(image, jnp.eye(2)[None], jnp.array([[3.0, -2.0]]))  # 3 rows down, 2 columns left
    expected = np.zeros((28, 28), np.float32)
    expected[3:, :-2] = np.asarray(image[0])[:-3, 2:]
    np.testing.assert_allclose(shifted[0], expected, atol=1e-6)


def test_centre_crop_then_resize_is_a_zoom_about_the_centre(digits):
    """Crop 22 and bilinear resize to 28 (half-pixel centres, as torchvision's Resize) equals the
    zoom by 28/22 that Augmentation applies with crop_p=1."""
    crop = digits[:, 3:25, 3:25]
    resized = jax.image.resize(crop, (16, 28, 28), "bilinear", antialias=False)
    zoomed = Augmentation(crop_p=1.0)(jax.random.key(0), digits)
    # The outermost ring differs: resize clamps at the crop's edge, the zoom reads the pixel beyond it.
    np.testing.assert_allclose(zoomed[:, 1:-1, 1:-1], resized[:, 1:-1, 1:-1], atol=1e-5)


def test_shapes_dtypes_and_range_are_kept(digits):
    out = RECIPE_LIKE(jax.random.key(1), digits)
    chex.assert_shape(out, digits.shape)
    chex.assert_type(out, jnp.float32)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0 + 1e-6  # bilinear mixes, zero fill adds black
    assert not np.allclose(out, digits)


def test_same_key_same_output_different_key_different_output(digits):
    a = RECIPE_LIKE(jax.random.key(2), digits)
    np.testing.assert_array_equal(a, RECIPE_LIKE(jax.random.key(2), digits))
    b = RECIPE_LIKE(jax.random.key(3), digits)
    assert not np.allclose(a, b)
    # Each image draws its own transform: identical inputs come out different.
    same = jnp.broadcast_to(digits[:1], (4, 28, 28))
    out = RECIPE_LIKE(jax.random.key(4), same)
    assert not np.allclose(out[0], out[1])


def test_draws_stay_within_the_configured_ranges(digits):
    """A bar right of the centre, rotated within +-15 degrees: the direction of its centre of mass
    turns by at most 15 degrees either way, and 64 draws use most of that range."""
    image = jnp.zeros((1, 28, 28)).at[0, 13:15, 20:26].set(1.0)  # a bar right of centre
    out = Augmentation(degrees=15.0)(jax.random.key(5), jnp.broadcast_to(image, (64, 28, 28)))
    rows = np.arange(28)[None, :, None]
    cols = np.arange(28)[None, None, :]
    mass = np.asarray(out).sum(axis=(1, 2))
    dr = (np.asarray(out) * rows).sum(axis=(1, 2)) / mass - 13.5
    dc = (np.asarray(out) * cols).sum(axis=(1, 2)) / mass - 13.5
    angles = np.degrees(np.arctan2(-dr, dc))  # counter-clockwise from the bar's direction
    assert np.abs(angles).max() <= 15.5 and np.abs(angles).max() > 10, angles


class AugmentJitVmapTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_jit_and_eager_agree(self):
        images = jax.random.uniform(jax.random.key(6), (8, 28, 28))
        augment = self.variant(RECIPE_LIKE.__call__)
        chex.assert_trees_all_close(augment(jax.random.key(7), images), RECIPE_LIKE(jax.random.key(7), images),
                                    atol=1e-5)

    def test_vmap_over_keys_and_batches_matches_a_loop(self):
        images = jax.random.uniform(jax.random.key(8), (3, 8, 28, 28))
        keys = jax.random.split(jax.random.key(9), 3)
        batched = jax.jit(jax.vmap(RECIPE_LIKE.__call__))(keys, images)
        for i in range(3):
            chex.assert_trees_all_close(batched[i], RECIPE_LIKE(keys[i], images[i]), atol=1e-5)


@pytest.mark.parametrize("augmentation", [
    RECIPE_LIKE,
    Augmentation(degrees=15.0, crop_p=0.1, crop_size=22),  # conv6's and under20k's recipes
    Augmentation(degrees=15.0, translate=0.1, scale=0.1),  # res8k's
    Augmentation(degrees=180.0, translate=0.4, scale=0.5, crop_p=0.5),  # far out of frame
])
def test_the_gather_free_form_draws_the_same_images(mnist, augmentation):
    images = jnp.asarray(mnist.train.images_NHW[:256], jnp.float32) / 255.0
    for seed in range(3):
        gathered = augmentation(jax.random.key(seed), images)
        multiplied = dataclasses.replace(augmentation, gather_free=True)(jax.random.key(seed), images)
        np.testing.assert_allclose(multiplied, gathered, rtol=0, atol=1e-6)


def test_the_gather_free_form_is_exact_on_whole_pixels_and_zero_fills(digits):
    shifts = jnp.array([[0.0, 0.0], [5.0, -3.0], [-27.0, 0.0], [28.0, 0.0], [-30.0, 40.0]] * 3 + [[1.0, 1.0]])
    inverse = jnp.broadcast_to(jnp.eye(2), (16, 2, 2))
    np.testing.assert_array_equal(warp_by_matmul(digits, inverse, shifts), warp(digits, inverse, shifts))
    np.testing.assert_array_equal(warp_by_matmul(digits, inverse, shifts)[3], np.zeros((28, 28)))  # wholly out
