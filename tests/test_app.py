"""`vaelab explore`: the Gradio app on 127.0.0.1, driven in headless Chromium."""

import socket

import numpy as np
import pytest
from PIL import Image

from vaelab import load_run
from vaelab.cli import main
from vaelab.data import load_split
from vaelab.explore import Explorer
from vaelab.explorer_app import launch, port_free


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def served(trained_run, data_dir):
    run = load_run(trained_run)
    port = free_port()
    app = launch(Explorer(run, load_split("mnist", "val", data_dir)), port=port, block=False)
    yield f"http://127.0.0.1:{port}/"
    app.close()
    assert port_free("127.0.0.1", port)  # the server is really gone


def image_src(page, selector):
    found = page.locator(f"{selector} img")
    return found.first.get_attribute("src") if found.count() else None


def changed(page, selector, before, timeout=30):
    """The new src of SELECTOR's image, once the page has changed it (the browser tells)."""
    page.wait_for_function(
        "([selector, before]) => { const img = document.querySelector(selector + ' img');"
        " const src = img && img.getAttribute('src'); return !!src && src !== before; }",
        arg=[selector, before], timeout=timeout * 1000)
    return image_src(page, selector)


def set_number(page, selector, value):
    box = page.locator(f"{selector} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def test_the_app_in_a_real_browser(served, browser, data_dir, tmp_path):
    page = browser.new_page(viewport={"width": 1300, "height": 1000})
    page.goto(served, timeout=120_000)  # Gradio's scripts load slowly on a busy CPU
    page.wait_for_selector("#slider-image img", timeout=60_000)

    before = image_src(page, "#slider-image")
    set_number(page, "#slider-1", 3)
    after = changed(page, "#slider-image", before)
    set_number(page, "#slider-2", -2.5)
    changed(page, "#slider-image", after)

    page.get_by_role("tab", name="Latent units").click()
    page.wait_for_selector("#unit-image img", timeout=60_000)
    # the unit sliders are the units themselves, the most informative first
    names = [page.locator(f"#unit-{i} label").first.inner_text() for i in (1, 2)]
    kls = [float(name.split("KL ")[1].split(")")[0]) for name in names]
    assert kls[0] >= kls[1], names
    before = image_src(page, "#unit-image")
    set_number(page, "#unit-1", 3.5)
    changed(page, "#unit-image", before)

    page.get_by_role("tab", name="Interpolation").click()
    page.wait_for_selector("#interp-point img")
    before = image_src(page, "#interp-point")
    set_number(page, "#interp-t", 0.9)
    changed(page, "#interp-point", before)

    page.get_by_role("tab", name="Encode your own").click()
    digit = load_split("mnist", "val", data_dir, limit=1).images[0, 0].numpy()
    Image.fromarray(np.kron(255 - digit, np.ones((8, 8), dtype=np.uint8))).save(tmp_path / "d.png")
    page.locator("#upload input[type=file]").set_input_files(str(tmp_path / "d.png"))
    changed(page, "#encoded-reconstruction", None)
    assert "Nearest validation images" in page.locator("#encode-status").inner_text()

    (tmp_path / "bad.png").write_text("not a picture")
    page.locator("#upload input[type=file]").set_input_files(str(tmp_path / "bad.png"))
    page.wait_for_function("document.querySelector('#encode-status').innerText"
                           ".includes('not a picture')", timeout=30_000)
    page.get_by_role("tab", name="Latent sliders").click()  # still serving after the error
    before = image_src(page, "#slider-image")
    set_number(page, "#slider-1", -3)
    changed(page, "#slider-image", before)
    page.close()


def slider_value(page, number):
    return float(page.locator(f"#slider-{number} input[type=number]").input_value())


def test_the_other_controls_in_a_real_browser(served, browser, data_dir):
    """Reset, the class dropdowns, the latent-map tab and drawing with the mouse."""
    page = browser.new_page(viewport={"width": 1300, "height": 1000})
    page.goto(served, timeout=120_000)
    page.wait_for_selector("#slider-image img", timeout=60_000)
    start = slider_value(page, 1)
    set_number(page, "#slider-1", 3.5)
    page.wait_for_function("document.querySelector('#slider-1 input[type=number]').value"
                           " === '3.5'")
    page.locator("#slider-reset").click()
    page.wait_for_function(f"Math.abs(document.querySelector('#slider-1 input[type=number]')"
                           f".value - {start}) < 1e-9", timeout=30_000)

    page.get_by_role("tab", name="Interpolation").click()
    labels = load_split("mnist", "val", data_dir).labels
    first_three = int((labels == 3).nonzero()[0])
    page.locator("#from-digit input").click()
    page.get_by_role("option", name="3", exact=True).click()
    page.wait_for_function(f"Array.from(document.querySelectorAll('input[type=number]'))"
                           f".some(box => box.value === '{first_three}')", timeout=30_000)

    page.get_by_role("tab", name="Latent map").click()
    page.wait_for_function("(() => { const i = document.querySelector('#full-map img');"
                           " return i && i.complete && i.naturalWidth > 0; })()",
                           timeout=30_000)

    page.get_by_role("tab", name="Encode your own").click()
    page.locator("#sketch button[aria-label='Brush']").first.click()  # as a user must
    canvas = page.locator("#sketch canvas").last
    canvas.wait_for(timeout=30_000)
    box = canvas.bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.2)
    page.mouse.down()
    for step in range(1, 21):  # a vertical stroke: a "1"
        page.mouse.move(box["x"] + box["width"] * 0.5,
                        box["y"] + box["height"] * (0.2 + 0.6 * step / 20))
    page.mouse.up()
    page.locator("#encode-drawing").click()
    page.wait_for_function("document.querySelector('#encode-status').innerText"
                           ".includes('Nearest validation images')", timeout=30_000)
    changed(page, "#encoded-reconstruction", None)
    nearest = page.locator("#encode-status").inner_text().split(":")[1]
    assert "1" in nearest  # a vertical stroke lands among the ones
    page.close()


def test_a_port_in_use_is_a_one_line_error(capsys, trained_run):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        code = main(["explore", str(trained_run), "--port", str(busy.getsockname()[1])])
    err = capsys.readouterr().err
    assert code == 1 and "is in use" in err and "--port" in err
    assert len(err.strip().splitlines()) == 1


def test_a_run_without_checkpoint_is_a_one_line_error(capsys, tmp_path):
    code = main(["explore", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 1 and "no checkpoint" in err and len(err.strip().splitlines()) == 1


def test_the_class_selector_of_a_conditional_run_in_a_real_browser(conditional_run, browser,
                                                                     data_dir, tmp_path):
    """The sliders keep the style; the class selector changes the digit (and Reset sets it back
    to the image's own class). An upload is encoded with the class picked for it."""
    port = free_port()
    val = load_split("mnist", "val", data_dir, limit=500)
    app = launch(Explorer(load_run(conditional_run), val), port=port, block=False)
    try:
        page = browser.new_page(viewport={"width": 1300, "height": 1000})
        page.goto(f"http://127.0.0.1:{port}/", timeout=120_000)
        page.wait_for_selector("#slider-image img", timeout=60_000)
        own = val.classes[int(val.labels[0])]
        assert page.locator("#slider-class input").input_value() == own
        before = image_src(page, "#slider-image")
        other = "1" if own != "1" else "0"
        page.locator("#slider-class input").click()
        page.get_by_role("option", name=other, exact=True).click()
        changed(page, "#slider-image", before)
        page.locator("#slider-reset").click()
        page.wait_for_function(f"document.querySelector('#slider-class input').value === "
                               f"'{own}'", timeout=30_000)

        page.get_by_role("tab", name="Encode your own").click()
        digit = val.images[0, 0].numpy()
        Image.fromarray(np.kron(255 - digit, np.ones((8, 8), dtype=np.uint8))).save(
            tmp_path / "d.png")
        page.locator("#upload input[type=file]").set_input_files(str(tmp_path / "d.png"))
        changed(page, "#encoded-reconstruction", None)
        assert "Nearest validation images" in page.locator("#encode-status").inner_text()
        page.close()
    finally:
        app.close()
