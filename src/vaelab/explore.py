"""The latent-space explorer's logic as plain functions: tensors in, uint8 arrays out.

`vaelab explore` (explorer_app.py) only wires these to Gradio widgets, so everything here is tested
without a browser. Sliders move z along the principal directions of the validation set's
posterior means, in units of each direction's standard deviation; unit sliders move the latent
units themselves (their values: the prior's standard deviations for a single Gaussian latent),
sorted by their KL (a hierarchy's code units: by their spread): the view of the
disentanglement literature, where each unit should follow one factor. For a conditional run the
codes hold the style and a class selector sets the digit: every decode takes a label.
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

SHOWN_SIDE = 224  # screen pixels an image's longer side is enlarged to (8x for 28x28)
MAX_UPLOAD_PIXELS = 4096 * 4096  # larger uploads are refused rather than resized for seconds


def _codes_and_spread(run: Run, val: Split) -> tuple[torch.Tensor, torch.Tensor]:
    """The validation set's codes (N, D), and how much each unit carries: for one Gaussian
    latent its KL (units.unit_kl), from the same encoder pass; else the spread of the codes
    over the set."""
    if run.model.supports_exact:
        from .units import posteriors, unit_kl_of

        mu, logvar = posteriors(run, val.images, val.labels)
        return mu.double(), unit_kl_of(mu, logvar).double()
    codes = generate.encode_means(run.model, val.images, val.labels).double()
    return codes, codes.std(0)


class Explorer:
    """A run's model with its validation set's codes and their principal directions."""

    def __init__(self, run: Run, val: Split, directions: int = 8, units: int = 10):
        self.model, self.val = run.model, val
        # The IDX sets' strokes are shown as ink on paper, as in the figures; the drawing
        # canvas (and MNIST's way of preparing a digit) only makes sense for digit-like data.
        self.ink = run.config.data is None
        self.drawable = self.ink and run.model.shape == (1, 28, 28)
        self.conditional = run.model.conditional
        self.codes, self.unit_spread = _codes_and_spread(run, val)  # (N, D), (D,)
        self.mean, axes, scales = generate.principal_axes(self.codes)
        self.directions = axes[:directions]  # (k, D), orthonormal rows; k = D when D is small
        # the floor keeps a direction with no spread (collapsed codes) usable
        self.scales = scales[:directions].clamp_min(1e-6)
        self.map = LatentMap(self.project(self.codes), val.labels, val.classes)
        self.spread_is_kl = bool(run.model.supports_exact)
        self.units = self.unit_spread.argsort(descending=True)[:units].tolist()

    # ---- sliders -----------------------------------------------------------------------

    def to_sliders(self, z: torch.Tensor) -> list[float]:
        """Coordinates of z (D,) along the principal directions, in standard deviations."""
        return self._slider_coordinates(z).tolist()

    def from_sliders(self, values: list[float], base: torch.Tensor) -> torch.Tensor:
        """The point whose slider coordinates are `values` and whose other coordinates (those
        outside the principal directions) are base's."""
        change = torch.tensor(values, dtype=torch.float64) - self._slider_coordinates(base)
        return base.double() + (change * self.scales) @ self.directions

    def at_sliders(self, values: list[float], base: torch.Tensor, label: int | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
        """What a slider move shows: the decoded point (as class `label`, for a conditional
        run) and the map marked where it lies."""
        z = self.from_sliders(values, base)
        return self.decode(z, label), self.map.marked(self.project(z[None])[0])

    def to_units(self, z: torch.Tensor) -> list[float]:
        """z's values on the unit sliders' units (the most informative first)."""
        return z.double()[self.units].tolist()

    def at_units(self, values: list[float], base: torch.Tensor, label: int | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
        """base with the slider units set to `values`, decoded, and the map marked."""
        z = base.double().clone()
        z[self.units] = torch.tensor(values, dtype=torch.float64)
        return self.decode(z, label), self.map.marked(self.project(z[None])[0])

    def unit_name(self, unit: int) -> str:
        measure = "KL" if self.spread_is_kl else "sd"
        return f"z{unit} ({measure} {self.unit_spread[unit]:.2f})"

    def _slider_coordinates(self, z: torch.Tensor) -> torch.Tensor:
        return ((z.double() - self.mean) @ self.directions.T) / self.scales

    def code(self, index: int) -> torch.Tensor:
        if not 0 <= index < len(self.codes):
            raise VaelabError(f"image {index} is not in the validation set "
                              f"(0-{len(self.codes) - 1})")
        return self.codes[index]

    def first_of_class(self, name: str | int) -> int:
        """The first validation image of a class (by name or index)."""
        if self.val.labels is None:
            raise VaelabError("this run's data have no classes; pick images by index")
        label = generate.class_index(self.val.classes, name)
        found = torch.nonzero(self.val.labels == label).flatten()
        if not len(found):
            raise VaelabError(f"no validation image of class {self.val.classes[label]!r}")
        return int(found[0])

    def label_of(self, index: int) -> int | None:
        """Validation image `index`'s label, for a conditional run (None otherwise)."""
        self.code(index)  # checks the index
        return int(self.val.labels[index]) if self.conditional else None

    def label_names(self, indices: torch.Tensor) -> list[str]:
        if self.val.labels is None:
            return [f"image {int(i)}" for i in indices]
        return [self.val.classes[int(self.val.labels[i])] for i in indices]

    # ---- images ------------------------------------------------------------------------

    def decode(self, z: torch.Tensor, label: int | torch.Tensor | None = None) -> np.ndarray:
        """z (D,) -> the decoded image enlarged to about 224 pixels, uint8 (grey or RGB). A
        conditional run needs a label: a class index, or weights over the classes."""
        labels = None if label is None else torch.as_tensor(label)[None]
        return enlarge(generate.decode_means(self.model, z.float().unsqueeze(0), labels)[0],
                       self.ink)

    def interpolate(self, i: int, j: int, t: float, steps: int, spherical: bool
                    ) -> tuple[np.ndarray, np.ndarray]:
        """The decoded point at position t in [0, 1] between images i and j, and the strip (a
        conditional run blends the two images' labels along the way, as the figure does)."""
        a, b = self.code(i), self.code(j)
        ends = torch.tensor([i, j])
        labels = self.val.labels[ends] if self.conditional else None
        strip = generate.decode_means(self.model, generate.interpolation_path(
            a, b, steps, spherical).float(), generate.label_path(self.model, labels, steps))
        point = generate.interpolate_at(a, b, t, spherical)[0]
        blend = generate.label_path(self.model, labels, 2)
        label = None if blend is None else generate.interpolate_at(blend[0], blend[1], t)[0]
        return self.decode(point, label), enlarge_row(strip, self.ink)

    def encode_image(self, image: np.ndarray | None, label: int | None = None
                     ) -> dict[str, object]:
        """A drawn or uploaded image -> the model's input made from it (an MNIST-style digit
        for digit runs; else resized and centre-cropped as the training images), its
        reconstruction, five nearest validation codes and its place on the map. A conditional
        run encodes and decodes it as class `label`."""
        prepared = preprocess(image)[None] if self.drawable else self.fit_upload(image)
        pixels = torch.from_numpy(prepared)
        labels = None if label is None else torch.tensor([label])
        z = generate.encode_means(self.model, pixels[None], labels)[0].double()
        nearest = torch.cdist(z[None], self.codes)[0].topk(min(5, len(self.codes)),
                                                            largest=False).indices
        return {"input": enlarge(to_float(pixels), self.ink),
                "reconstruction": self.decode(z, label), "z": z,
                "neighbours": enlarge_row(to_float(self.val.images[nearest]), self.ink),
                "neighbour_labels": self.label_names(nearest),
                "map": self.map.marked(self.project(z[None])[0])}

    def fit_upload(self, image: np.ndarray | None) -> np.ndarray:
        """Any picture -> (C, H, W) uint8 of the model's shape: converted, resized to cover
        it and centre-cropped (Pillow's ImageOps.fit, which also takes non-square shapes)."""
        if image is None or not isinstance(image, np.ndarray) or image.ndim not in (2, 3):
            raise VaelabError("no image: upload a picture")
        if image.shape[0] * image.shape[1] > MAX_UPLOAD_PIXELS:
            raise _too_large(image.shape[1], image.shape[0])
        channels, height, width = self.model.shape
        picture = Image.fromarray(image.astype(np.uint8)).convert("L" if channels == 1 else
                                                                  "RGB")
        fitted = np.asarray(ImageOps.fit(picture, (width, height), Image.Resampling.BILINEAR))
        return (fitted[None] if channels == 1 else fitted.transpose(2, 0, 1)).copy()

    def project(self, codes: torch.Tensor) -> torch.Tensor:
        """(N, D) -> (N, 2): the first two principal coordinates (the second 0 when D = 1)."""
        return generate.principal_coordinates(codes, self.mean, self.directions)


def enlarge(image: torch.Tensor, ink: bool = True) -> np.ndarray:
    """(C, H, W) in [0, 1] -> uint8 enlarged (nearest neighbour, so the pixels stay visible)
    to about SHOWN_SIDE pixels: (H', W') for grey, dark ink on white with `ink`; (H', W', 3)
    for colour."""
    times = max(1, SHOWN_SIDE // max(image.shape[1:]))
    shown = 1 - image if ink and image.shape[0] == 1 else image
    pixels = (shown.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    block = np.ones((times, times, 1), dtype=np.uint8)
    enlarged = np.kron(pixels, block)
    return enlarged[..., 0] if image.shape[0] == 1 else enlarged


def enlarge_row(images: torch.Tensor, ink: bool = True) -> np.ndarray:
    """(N, C, H, W) -> one row of enlarged images with white gaps between them."""
    parts = [enlarge(image, ink) for image in images]
    gap = np.full((parts[0].shape[0], 8, *parts[0].shape[2:]), 255, dtype=np.uint8)
    row = [part for image in parts for part in (image, gap)]
    return np.concatenate(row[:-1], axis=1)


def read_picture(path: str, digit: bool = True) -> np.ndarray:
    """An image file -> (H, W, 4) uint8 RGBA; a one-line VaelabError for anything else, which
    asks for a picture of a digit only where the run's pictures are digits (`digit`)."""
    try:
        with Image.open(path) as picture:
            size = picture.width, picture.height
            if size[0] * size[1] <= MAX_UPLOAD_PIXELS:  # checked before decoding
                # Phone photos store their rotation in EXIF; apply it so the digit stands up.
                return np.asarray(ImageOps.exif_transpose(picture).convert("RGBA"))
    except Exception:  # a user's file: Pillow raises OSError, ValueError, EOFError, ...
        raise VaelabError("that file is not a picture this app can read; upload a PNG or "
                          f"JPEG {'of a digit' if digit else 'picture'}") from None
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

    # Blank pixels above the plot: Gradio lays an image's label over its top-left corner and
    # its buttons over the top-right one, where they would hide the map's corner and the top
    # of the colour bar.
    TOP_BAND_PX = 48

    def __init__(self, points: torch.Tensor, labels: torch.Tensor | None,
                 classes: tuple[str, ...] = ()):
        figure = Figure(figsize=(5, 4.6), dpi=100)
        figure.set_layout_engine("constrained", rect=(0, 0, 1, 1 - self.TOP_BAND_PX / 460))
        axes = figure.add_subplot()
        plots.scatter_codes(axes, points, labels, classes, "principal direction", size=2,
                            alpha=0.6)
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
