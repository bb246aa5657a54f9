"""On-device augmentation: pure, jittable functions of (key, images) run inside the train step.

The seed recipes use torchvision's `RandomRotation`, `RandomAffine` (translation, scale) and
`RandomApply([CenterCrop(22), Resize(28)], p)`. Each of these is an affine map about the image
centre (a centre crop of 22 resized to 28 is a zoom by 28/22), so their composition is one affine
map per image: it is drawn once and the image is resampled once, bilinearly, with zero fill where
the source falls outside the image. torchvision resamples after every transform; one resampling
blurs less and costs a single gather. Labels are untouched, so only images pass through here.

Two forms compute the same images (to ~2e-7): `warp` by gathers (`map_coordinates`), which
XLA:CPU runs fastest, and `warp_by_matmul` by matrix products, which suits a TPU, whose gathers
of single pixels are slow; `jaxmnist.platforms` chooses.

Images are `images_BHW` float32 in [0, 1] (before normalisation, so that the fill is black, as
torchvision fills before `Normalize`). Pixel centres sit at integer coordinates and the centre of
rotation at ((H - 1) / 2, (W - 1) / 2), torchvision's centre.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax import lax
from jax.scipy.ndimage import map_coordinates


def warp(images_BHW: jax.Array, inverse_B22: jax.Array, translation_B2: jax.Array) -> jax.Array:
    """Applies per image the affine map y = c + A (x - c) + t, given A^-1 and t in (row, col) pixels.

    Each output pixel y reads the input at c + A^-1 (y - c - t), bilinearly, zero outside.
    """
    _, h, w = images_BHW.shape
    centre_2 = jnp.array([(h - 1) / 2, (w - 1) / 2], jnp.float32)
    rows, cols = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32), indexing="ij")
    out_HW2 = jnp.stack([rows, cols], axis=-1)

    def one(image_HW, inverse_22, translation_2):
        source_HW2 = centre_2 + (out_HW2 - centre_2 - translation_2) @ inverse_22.T
        return map_coordinates(image_HW, [source_HW2[..., 0], source_HW2[..., 1]], order=1, mode="constant", cval=0.0)

    return jax.vmap(one)(images_BHW, inverse_B22, translation_B2)


def warp_by_matmul(images_BHW: jax.Array, inverse_B22: jax.Array, translation_B2: jax.Array) -> jax.Array:
    """`warp` without a gather: the same map, bilinear, zero outside.

    Bilinear sampling gives the source pixel (i, j) of an output pixel that reads (s_r, s_c) the
    weight relu(1 - |s_r - i|) * relu(1 - |s_c - j|), which is zero for every pixel outside the
    image, the zero fill. So each image is a (HW x H) row-weight matrix times the image, then a
    sum along its rows weighted by the column weights: work for a TPU's matrix unit. XLA's TPU v5e
    cost model put it at 1-5% of res8k's and conv6's step, where `warp` cost 7-40x the rest of it. The
    product runs at full float32 precision (a TPU's default rounds its inputs to bfloat16), and the
    source coordinates are multiply-adds rather than `warp`'s small matrix product for the same reason.
    """
    b, h, w = images_BHW.shape
    rows, cols = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32), indexing="ij")
    centre_r, centre_c = (h - 1) / 2, (w - 1) / 2
    dr_BP = rows.reshape(1, h * w) - centre_r - translation_B2[:, 0:1]
    dc_BP = cols.reshape(1, h * w) - centre_c - translation_B2[:, 1:2]
    # Summed in `warp`'s order, so that both read the same coordinates to the last bit or so.
    source_r_BP = centre_r + (inverse_B22[:, 0, 0:1] * dr_BP + inverse_B22[:, 0, 1:2] * dc_BP)
    source_c_BP = centre_c + (inverse_B22[:, 1, 0:1] * dr_BP + inverse_B22[:, 1, 1:2] * dc_BP)
    row_weights_BPH = _tent(source_r_BP, h)
    column_weights_BPW = _tent(source_c_BP, w)
    rows_BPW = jnp.einsum("bpi,bij->bpj", row_weights_BPH, images_BHW, precision=lax.Precision.HIGHEST)
    return (rows_BPW * column_weights_BPW).sum(-1).reshape(b, h, w)


def _tent(source_BP: jax.Array, size: int) -> jax.Array:
    """(B, P, size): each source index's linear-interpolation weight; none for indices past the image."""
    return jnp.maximum(0.0, 1.0 - jnp.abs(source_BP[..., None] - jnp.arange(size, dtype=jnp.float32)))


def rotation_inverse(degrees_B: jax.Array) -> jax.Array:
    """A^-1 of a counter-clockwise rotation by `degrees_B` (as displayed, rows pointing down)."""
    theta = jnp.deg2rad(degrees_B)
    cos, sin = jnp.cos(theta), jnp.sin(theta)
    return jnp.stack([jnp.stack([cos, sin], -1), jnp.stack([-sin, cos], -1)], -2)  # (B, 2, 2)


def rotate(images_BHW: jax.Array, degrees_B: jax.Array) -> jax.Array:
    """Rotates each image counter-clockwise by its angle about the centre (`np.rot90` at 90)."""
    return warp(images_BHW, rotation_inverse(degrees_B), jnp.zeros((images_BHW.shape[0], 2)))


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """A random affine augmentation; hashable, so it can be a static argument of `jax.jit`.

    Attributes:
        degrees: rotation angle drawn from [-degrees, degrees] (`RandomRotation(degrees)`).
        translate: shift drawn from [-translate, translate] of the image size on each axis, rounded
            to whole pixels as `RandomAffine(translate=(t, t))` does.
        scale: zoom drawn from [1 - scale, 1 + scale] (`RandomAffine(scale=(1 - s, 1 + s))`).
        crop_p: probability of a centre crop to `crop_size` resized back to the full size.
        crop_size: side of that centre crop.
        gather_free: resample with `warp_by_matmul` rather than `warp` (the same images).
    """

    degrees: float = 0.0
    translate: float = 0.0
    scale: float = 0.0
    crop_p: float = 0.0
    crop_size: int = 22
    gather_free: bool = False

    @property
    def active(self) -> bool:
        return bool(self.degrees or self.translate or self.scale or self.crop_p)

    def __call__(self, key: jax.Array, images_BHW: jax.Array) -> jax.Array:
        """The batch with each image transformed by its own draw; the same key gives the same output."""
        b, h, w = images_BHW.shape
        k_angle, k_scale, k_shift, k_crop = jax.random.split(key, 4)
        degrees_B = jax.random.uniform(k_angle, (b,), minval=-self.degrees, maxval=self.degrees)
        zoom_B = jax.random.uniform(k_scale, (b,), minval=1 - self.scale, maxval=1 + self.scale)
        cropped_B = jax.random.bernoulli(k_crop, self.crop_p, (b,))
        zoom_B = zoom_B * jnp.where(cropped_B, h / self.crop_size, 1.0)
        max_shift_2 = self.translate * jnp.array([h, w], jnp.float32)
        shift_B2 = jnp.round(jax.random.uniform(k_shift, (b, 2), minval=-max_shift_2, maxval=max_shift_2))
        inverse_B22 = rotation_inverse(degrees_B) / zoom_B[:, None, None]
        return (warp_by_matmul if self.gather_free else warp)(images_BHW, inverse_B22, shift_B2)
