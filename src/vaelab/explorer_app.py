"""`vaelab explore RUN`: a Gradio app wired to explore.Explorer (pip install 'vaelab[app]').

Everything it shows is computed by explore.py; this file only lays out widgets and events.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from .errors import VaelabError
from .explore import Explorer, read_picture
from .generate import class_index, default_pair

STEP = 0.05  # slider resolution, in standard deviations
RANGE = 4.0  # sliders span +-4 standard deviations around the validation codes' mean


def port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def _gradio():
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from offline labs
    try:
        import gradio
    except ImportError:
        raise VaelabError("vaelab explore needs Gradio: pip install 'vaelab[app]'") from None
    return gradio


def build(explorer: Explorer) -> Any:
    """The app: latent sliders, interpolation, encode-your-own and the latent map."""
    gr = _gradio()
    start = explorer.code(0)
    with gr.Blocks(title="vaelab explorer", analytics_enabled=False) as app:
        gr.Markdown("## vaelab: explore the latent space\nSliders move z along the principal "
                    "directions of the validation set's posterior means (in standard "
                    "deviations); the decoder draws the result.")
        with gr.Tab("Latent sliders"):
            _slider_tab(gr, explorer, start, _DIRECTIONS)
        with gr.Tab("Latent units"):
            _slider_tab(gr, explorer, start, _UNITS)
        with gr.Tab("Interpolation"):
            _interpolation_tab(gr, explorer)
        with gr.Tab("Encode your own"):
            _encode_tab(gr, explorer)
        with gr.Tab("Latent map"):
            gr.Image(explorer.map.image, label="validation codes", format="png",
                     interactive=False, elem_id="full-map")
    return app


class _Mode(NamedTuple):
    """What a tab's sliders move: the principal directions, or the latent units."""

    prefix: str  # of the elements' ids
    values: Callable[[Explorer, Any], list[float]]  # a code's slider values
    at: Callable[..., Any]  # (explorer, values, base, label) -> (decoded, map)
    names: Callable[[Explorer], list[str]]


_DIRECTIONS = _Mode("slider", Explorer.to_sliders, Explorer.at_sliders,
                    lambda e: [f"direction {i + 1} (σ)" for i in range(len(e.directions))])
_UNITS = _Mode("unit", Explorer.to_units, Explorer.at_units,
               lambda e: [e.unit_name(u) for u in e.units])


def _slider_tab(gr, explorer: Explorer, start, mode: _Mode) -> None:
    with gr.Row():
        with gr.Column():
            index = gr.Number(0, precision=0, label="start from validation image (index)",
                              elem_id=f"{mode.prefix}-base-index")
            reset = gr.Button("Reset the sliders to this image", elem_id=f"{mode.prefix}-reset")
            # A conditional run: the sliders move the style, the class sets the digit.
            chosen = _class_picker(gr, explorer, explorer.label_of(0), "class (the digit)",
                                   f"{mode.prefix}-class")
            sliders = [gr.Slider(-RANGE, RANGE, value=_clip(value), step=STEP, label=name,
                                 elem_id=f"{mode.prefix}-{i + 1}")
                       for i, (value, name) in enumerate(zip(mode.values(explorer, start),
                                                             mode.names(explorer)))]
        with gr.Column():
            decoded = gr.Image(explorer.decode(start, explorer.label_of(0)), label="decoded",
                               format="png", interactive=False,
                               elem_id=f"{mode.prefix}-image")
            where = gr.Image(explorer.map.marked(explorer.project(start[None])[0]),
                             label="where z lies", format="png", interactive=False)
    pickers = [chosen] if chosen else []

    def show(base_index, *values):
        label = _label(explorer, values[0]) if chosen else None
        values = values[1:] if chosen else values
        return mode.at(explorer, list(values), explorer.code(_whole(base_index)), label)

    def to_image(base_index):
        values = [_clip(v) for v in mode.values(explorer, explorer.code(_whole(base_index)))]
        label = explorer.label_of(_whole(base_index))
        picked = [explorer.val.classes[label]] if chosen else []
        return picked + values + list(show(base_index, *picked, *values))

    show, to_image = _friendly(gr, show), _friendly(gr, to_image)
    for control in (*pickers, *sliders):
        control.change(show, [index, *pickers, *sliders], [decoded, where],
                       show_progress="hidden", trigger_mode="always_last")
    for event in (reset.click, index.submit):
        event(to_image, [index], [*pickers, *sliders, decoded, where], show_progress="hidden")


def _class_picker(gr, explorer: Explorer, label: int | None, title: str, elem_id: str):
    """A dropdown of the run's classes for a conditional run; None for any other."""
    if not explorer.conditional:
        return None
    classes = list(explorer.val.classes)
    return gr.Dropdown(classes, value=classes[label or 0], label=title, elem_id=elem_id)


def _label(explorer: Explorer, name) -> int:
    if name is None:
        raise VaelabError("pick a class")
    return class_index(explorer.val.classes, name)


def _interpolation_tab(gr, explorer: Explorer) -> None:
    labelled = explorer.val.labels is not None
    begin, end = default_pair(explorer.val)
    with gr.Row():
        if labelled:  # for unlabelled data the images are picked by index alone
            classes = list(explorer.val.classes)
            source = gr.Dropdown(classes, value=begin, label="from class", elem_id="from-digit")
            target = gr.Dropdown(classes, value=end, label="to class", elem_id="to-digit")
        first = gr.Number(explorer.first_of_class(begin) if labelled else int(begin),
                          precision=0, label="from image (index)")
        second = gr.Number(explorer.first_of_class(end) if labelled else int(end),
                           precision=0, label="to image (index)")
    with gr.Row():
        position = gr.Slider(0, 1, value=0.5, step=0.01, label="position", elem_id="interp-t")
        steps = gr.Slider(2, 20, value=10, step=1, label="steps in the strip")
        spherical = gr.Checkbox(False, label="spherical (slerp)")
    point, strip = explorer.interpolate(int(first.value), int(second.value), 0.5, 10, False)
    with gr.Row():
        shown = gr.Image(point, label="decoded point", format="png", interactive=False,
                         elem_id="interp-point", scale=1)
        whole = gr.Image(strip, label="the whole path", format="png", interactive=False,
                         elem_id="interp-strip", scale=4)

    def draw(i, j, t, n, slerp):
        return explorer.interpolate(_whole(i), _whole(j), float(t), int(n), bool(slerp))

    draw = _friendly(gr, draw)
    inputs = [first, second, position, steps, spherical]
    for control in (position, steps, spherical):
        control.change(draw, inputs, [shown, whole], show_progress="hidden",
                       trigger_mode="always_last")
    for picker, index in ((source, first), (target, second)) if labelled else ():
        picker.change(_friendly(gr, explorer.first_of_class), [picker], [index])
    for index in (first, second):
        index.change(draw, inputs, [shown, whole], show_progress="hidden")


def _encode_tab(gr, explorer: Explorer) -> None:
    with gr.Row():
        if explorer.drawable:  # a canvas only where a drawn digit is like the training data
            sketch = gr.Sketchpad(type="numpy", label="draw a digit (pick the brush)",
                                  canvas_size=(280, 280), layers=False, elem_id="sketch",
                                  brush=gr.Brush(default_size=18, colors=["#000000"],
                                                 color_mode="fixed"))
        # A file, not an image widget: a file named like a picture that is not one then
        # reaches read_picture, which explains the problem, instead of failing inside Gradio.
        upload = gr.File(label="upload a picture (PNG, JPEG, ...)", file_types=["image"],
                         type="filepath", elem_id="upload")
    chosen = _class_picker(gr, explorer, 0, "the picture's class (a conditional run encodes "
                           "and decodes with it)", "encode-class")
    if explorer.drawable:
        encode = gr.Button("Encode the drawing", elem_id="encode-drawing")
    status = gr.Markdown("", elem_id="encode-status")
    shape = "x".join(map(str, explorer.model.shape[1:]))
    with gr.Row():
        prepared = gr.Image(label="as MNIST (28x28)" if explorer.drawable else
                            f"as the model sees it ({shape})", format="png", interactive=False)
        rebuilt = gr.Image(label="reconstruction", format="png", interactive=False,
                           elem_id="encoded-reconstruction")
        where = gr.Image(label="on the map", format="png", interactive=False)
    neighbours = gr.Image(label="nearest validation images in latent space", format="png",
                          interactive=False)
    outputs = [status, prepared, rebuilt, neighbours, where]

    def run(image, name=None):
        try:
            if isinstance(image, dict):  # the sketchpad's layers: use what is shown
                image = image.get("composite")
            elif isinstance(image, str):  # an uploaded file's path
                image = read_picture(image, digit=explorer.drawable)
            result = explorer.encode_image(image, _label(explorer, name) if chosen else None)
        except VaelabError as err:
            return [f"**Could not encode:** {err}", None, None, None, None]
        labels = ", ".join(map(str, result["neighbour_labels"]))
        return [f"Encoded. Nearest validation images: {labels}.", result["input"],
                result["reconstruction"], result["neighbours"], result["map"]]

    picked = [chosen] if chosen else []
    if explorer.drawable:
        encode.click(run, [sketch, *picked], outputs)
    # The file widget is emptied again so that the next picture can be uploaded straight away.
    upload.upload(lambda path, *name: [*run(path, *name), None], [upload, *picked],
                  [*outputs, upload])


def _friendly(gr, handler):
    """A user's mistake (an index out of range) becomes a message in the page, not a crash."""
    def wrapped(*args):
        try:
            return handler(*args)
        except VaelabError as err:
            raise gr.Error(str(err)) from None
    return wrapped


def _whole(value) -> int:
    """A number box's value as an index; an emptied box is a message, not a TypeError."""
    if value is None:
        raise VaelabError("enter an image index (a whole number) or pick a digit")
    return int(value)


def _clip(value: float) -> float:
    return max(-RANGE, min(RANGE, round(round(value / STEP) * STEP, 2)))


def check_can_serve(host: str, port: int) -> None:
    """Gradio installed and the port free: checked before the slow set-up, and again at launch."""
    _gradio()
    if not port_free(host, port):
        raise VaelabError(f"port {port} on {host} is in use; choose another with --port")


def launch(explorer: Explorer, host: str = "127.0.0.1", port: int = 7860,
           block: bool = True) -> Any:
    """Serve the app until Ctrl-C (KeyboardInterrupt reaches the caller once the server is
    closed); with block=False return it running (call .close() to stop it)."""
    check_can_serve(host, port)
    gr = _gradio()
    app = build(explorer)
    app.launch(server_name=host, server_port=port, prevent_thread_lock=True, quiet=True,
               max_file_size="50mb", theme=gr.themes.Soft())
    if block:
        serve_until_interrupted(app)
    return app


def serve_until_interrupted(app: Any) -> None:
    """Keep serving until Ctrl-C, then close the server and let KeyboardInterrupt reach the
    caller (the CLI's one line and exit code 130). Gradio's own blocking wait would catch it,
    print its own message and return as if all went well."""
    try:
        while True:
            time.sleep(3600)
    finally:
        app.close()
