"""The latent-space explorer's logic as plain functions: tensors in, uint8 arrays out.

`vaelab explore` (app.py) only wires these to Gradio widgets, so everything here is tested
without a browser. Sliders move z along the principal directions of the validation set's
posterior means, in units of each direction's standard deviation.
"""

from __future__ import annotations

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image, ImageOps

from . import generate, plots
from .data import Split, to_float
from .errors import VaelabError
from .runs import Run

SHOWN = 8  # screen pixels per image pixel: a 28x28 digit is shown at 224x224
MAX_UPLOAD_PIXELS = 4096 * 4096  # larger uploads are refused rather than resized for seconds


class Explorer:
    """A run's model with its validation set's codes and their principal directions."""

    def __init__(self, run: Run, val: Split, directions: int = 8):
        self.model, self.val = run.model, val
        self.codes = generate.encode_means(run.model, val.images).double()  # (N, D)
        self.mean, axes, scales = generate.principal_axes(self.codes)
        self.directions = axes[:directions]  # (k, D), orthonormal rows; k = D when D is small
        # the floor keeps a direction with no spread (collapsed codes) usable
        self.scales = scales[:directions].clamp_min(1e-6)
        self.map = LatentMap(self.project(self.codes), val.labels)

    # ---- sliders -----------------------------------------------------------------------

    def to_sliders(self, z: torch.Tensor) -> list[float]:
        """Coordinates of z (D,) along the principal directions, in standard deviations."""
        return self._slider_coordinates(z).tolist()

    def from_sliders(self, values: list[float], base: torch.Tensor) -> torch.Tensor:
        """The point whose slider coordinates are `values` and whose other coordinates (those
        outside the principal directions) are base's."""
        change = torch.tensor(values, dtype=torch.float64) - self._slider_coordinates(base)
        return base.double() + (change * self.scales) @ self.directions

    def at_sliders(self, values: list[float], base: torch.Tensor
                   ) -> tuple[np.ndarray, np.ndarray]:
        """What a slider move shows: the decoded point and the map marked where it lies."""
        z = self.from_sliders(values, base)
        return self.decode(z), self.map.marked(self.project(z[None])[0])

    def _slider_coordinates(self, z: torch.Tensor) -> torch.Tensor:
        return ((z.double() - self.mean) @ self.directions.T) / self.scales

    def code(self, index: int) -> torch.Tensor:
        if not 0 <= index < len(self.codes):
            raise VaelabError(f"image {index} is not in the validation set "
                              f"(0-{len(self.codes) - 1})")
        return self.codes[index]

    def first_of_class(self, digit: int) -> int:
        found = torch.nonzero(self.val.labels == digit).flatten()
        if not len(found):
            raise VaelabError(f"no validation image of class {digit}")
        return int(found[0])

    # ---- images ------------------------------------------------------------------------

    def decode(self, z: torch.Tensor) -> np.ndarray:
        """z (D,) -> the decoded digit as a (224, 224) uint8 image, ink dark on white."""
        return enlarge(generate.decode_means(self.model, z.float().unsqueeze(0))[0])

    def interpolate(self, i: int, j: int, t: float, steps: int, spherical: bool
                    ) -> tuple[np.ndarray, np.ndarray]:
        """The decoded point at position t in [0, 1] between images i and j, and the strip."""
        a, b = self.code(i), self.code(j)
        strip = generate.decode_means(self.model, generate.interpolation_path(
            a, b, steps, spherical).float())
        point = generate.interpolate_at(a, b, t, spherical)[0]
        return self.decode(point), enlarge_row(strip)

    def encode_image(self, image: np.ndarray | None) -> dict[str, object]:
        """A drawn or uploaded image -> its MNIST-style 28x28 version, reconstruction, five
        nearest validation codes and its place on the map."""
        digit = preprocess(image)
        z = generate.encode_means(self.model, torch.from_numpy(digit)[None, None])[0].double()
        nearest = torch.cdist(z[None], self.codes)[0].topk(5, largest=False).indices
        return {"input": enlarge(to_float(torch.from_numpy(digit))[None]),
                "reconstruction": self.decode(z), "z": z,
                "neighbours": enlarge_row(to_float(self.val.images[nearest])),
                "neighbour_labels": self.val.labels[nearest].tolist(),
                "map": self.map.marked(self.project(z[None])[0])}

    def project(self, codes: torch.Tensor) -> torch.Tensor:
        """(N, D) -> (N, 2): the first two principal coordinates (the second 0 when D = 1)."""
        coordinates = (codes.double() - self.mean) @ self.directions[:2].T
        return torch.nn.functional.pad(coordinates, (0, 2 - coordinates.shape[1]))


def enlarge(image: torch.Tensor) -> np.ndarray:
    """(1, 28, 28) in [0, 1] (white ink) -> (224, 224) uint8, dark ink on white, nearest
    neighbour so the pixels stay visible."""
    pixels = ((1 - image[0].clamp(0, 1)) * 255).round().to(torch.uint8).numpy()
    return np.kron(pixels, np.ones((SHOWN, SHOWN), dtype=np.uint8))


def enlarge_row(images: torch.Tensor) -> np.ndarray:
    """(N, 1, 28, 28) -> one row of enlarged digits with white gaps between them."""
    gap = np.full((28 * SHOWN, SHOWN), 255, dtype=np.uint8)
    parts = [part for image in images for part in (enlarge(image), gap)]
    return np.concatenate(parts[:-1], axis=1)


def read_picture(path: str) -> np.ndarray:
    """An image file -> (H, W, 4) uint8 RGBA; a one-line VaelabError for anything else."""
    try:
        with Image.open(path) as picture:
            size = picture.width, picture.height
            if size[0] * size[1] <= MAX_UPLOAD_PIXELS:  # checked before decoding
                # Phone photos store their rotation in EXIF; apply it so the digit stands up.
                return np.asarray(ImageOps.exif_transpose(picture).convert("RGBA"))
    except Exception:  # a user's file: Pillow raises OSError, ValueError, EOFError, ...
        raise VaelabError("that file is not a picture this app can read; upload a PNG or "
                          "JPEG of a digit") from None
    raise _too_large(*size)


def preprocess(image: np.ndarray | None) -> np.ndarray:
    """Any image -> a (28, 28) uint8 digit prepared as MNIST's were: grayscale, white ink on
    black (inverted if the background is light), the ink's box scaled to fit 20x20, then
    placed so its centre of mass is at the centre of the 28x28 frame."""
    if image is None or not isinstance(image, np.ndarray) or image.ndim not in (2, 3):
        raise VaelabError("no image: draw a digit or upload a picture of one")
    if image.shape[0] * image.shape[1] > MAX_UPLOAD_PIXELS:
        raise _too_large(image.shape[1], image.shape[0])
    gray = _grayscale(image.astype(np.float64) / (255 if image.dtype == np.uint8 else 1))
    background = np.median(np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]]))
    if background > 0.5:  # dark ink on light paper: MNIST's digits are light on dark
        gray, background = 1 - gray, 1 - background
    ink = np.clip(gray - background, 0, 1)
    if ink.max() < 0.05:
        raise VaelabError("the image is blank: draw or upload a digit with visible strokes")
    ink /= ink.max()
    rows, cols = np.nonzero(ink > 0.1)
    box = ink[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    scale = 20 / max(box.shape)
    size = (max(1, round(box.shape[1] * scale)), max(1, round(box.shape[0] * scale)))
    # Resized in floating point, then rescaled: thin strokes shrunk from a large picture stay
    # as dark as MNIST's instead of fading into rounding.
    small = np.asarray(Image.fromarray(box.astype(np.float32)).resize(
        size, Image.Resampling.LANCZOS), dtype=np.float64).clip(0, None)
    if small.max() <= 0:
        raise VaelabError("the strokes vanish at 28x28; draw or upload a bolder digit")
    return _centre_by_mass(small * 255 / small.max()).round().clip(0, 255).astype(np.uint8)


def _too_large(width: int, height: int) -> VaelabError:
    return VaelabError(f"image of {width}x{height} pixels is too large; upload one of at most "
                       "4096x4096")


def _grayscale(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2:
        return image
    if image.shape[2] == 4:  # transparent parts are paper: composite over white
        alpha = image[..., 3:4]
        image = image[..., :3] * alpha + (1 - alpha)
    return image[..., :3].mean(2) if image.shape[2] >= 3 else image[..., 0]


def _centre_by_mass(digit: np.ndarray) -> np.ndarray:
    frame = np.zeros((28, 28))
    total = digit.sum()
    rows, cols = np.indices(digit.shape)
    centre = ((rows * digit).sum() / total, (cols * digit).sum() / total)
    top = int(round(14 - centre[0]))
    left = int(round(14 - centre[1]))
    top = min(max(top, 0), 28 - digit.shape[0])
    left = min(max(left, 0), 28 - digit.shape[1])
    frame[top:top + digit.shape[0], left:left + digit.shape[1]] = digit
    return frame


class LatentMap:
    """The validation codes' 2-D scatter, rendered once; marking a point only draws a cross."""

    def __init__(self, points: torch.Tensor, labels: torch.Tensor):
        figure = Figure(figsize=(5, 4.6), dpi=100, layout="constrained")
        axes = figure.add_subplot()
        plots.scatter_codes(axes, points, labels, "principal direction", size=2, alpha=0.6)
        canvas = FigureCanvasAgg(figure)
        canvas.draw()
        self.image = np.asarray(canvas.buffer_rgba())[..., :3].copy()
        self.to_pixels = axes.transData.transform  # data -> display, origin bottom-left
        self.height = self.image.shape[0]

    def marked(self, point: torch.Tensor) -> np.ndarray:
        """The map with a red cross at `point` (clipped to the picture)."""
        x, y = self.to_pixels(np.asarray(point, dtype=float)[None])[0]
        row = int(np.clip(self.height - y, 0, self.height - 1))
        col = int(np.clip(x, 0, self.image.shape[1] - 1))
        image = self.image.copy()
        for offset in range(-7, 8):
            for r, c in ((row + offset, col), (row, col + offset)):
                if 0 <= r < image.shape[0] and 0 <= c < image.shape[1]:
                    image[max(r - 1, 0):r + 2, max(c - 1, 0):c + 2] = (220, 20, 20)
        return image
