"""The demo in a real browser: headless Chromium (Debian's package) driven by Playwright.

Needs `chromium` on PATH (`apt install chromium`; .ci/run installs it); without it the test is
skipped locally and fails in CI. UPDATE_SCREENSHOTS=1 also writes the README's screenshots to
assets/ from this same code path.
"""

import os
import shutil
from pathlib import Path

import pytest
from gradio_client import Client
from PIL import Image
from playwright.sync_api import sync_playwright

from conftest import ROOT

pytestmark = pytest.mark.servers  # the app in Chromium

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if not CHROMIUM and not os.environ.get("CI"):
    pytest.skip("Chromium is not installed (apt install chromium)", allow_module_level=True)

SHOTS = Path(os.environ["TMPDIR"]) / "screenshots"
PHONE = dict(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)


@pytest.fixture(scope="module")
def browser():
    assert CHROMIUM, "Chromium is not installed: apt install chromium"
    with sync_playwright() as p:
        # System Chromium, never a download; no sandbox or GPU inside containers.
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        yield browser
        browser.close()


def screenshot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=SHOTS / f"{name}.png")
    if os.environ.get("UPDATE_SCREENSHOTS"):
        with Image.open(SHOTS / f"{name}.png") as shot:  # 256 colours: small enough to commit
            shot.convert("RGB").quantize(256).save(ROOT / "assets" / f"screenshot-{name}.png", optimize=True)


def number(page, label: str):
    return page.get_by_label(f"number input for {label}")


def set_number(page, label: str, value: int) -> None:
    field = number(page, label)
    for _ in range(5):
        field.fill(str(value))
        field.press("Tab")  # the slider takes the value on blur
        page.wait_for_timeout(200)  # a slider that mounts just after the accordion opens can reset it
        if field.input_value() == str(value):
            return
    raise AssertionError(f"the {label} field does not keep {value}")


def test_generate_in_the_browser(app, browser):
    page = browser.new_page(viewport={"width": 1000, "height": 1000})
    page.goto(app.demo.local_url)
    prompt = page.get_by_placeholder("Enter your prompt")
    prompt.fill("a watercolor fox in the snow")
    assert "AoT-compiled" in page.locator("#status").inner_text()
    assert page.get_by_role("link", name="How it works").get_attribute("href").startswith("https://huggingface.co/")

    page.get_by_text("Advanced Settings").click()
    page.get_by_label("Randomize seed").uncheck()
    set_number(page, "Seed", 1234)
    set_number(page, "Width", 384)
    set_number(page, "Height", 256)
    set_number(page, "Steps", 2)
    page.get_by_role("button", name="Run").click()

    image = page.locator("#result img")
    image.wait_for(timeout=120_000)
    page.wait_for_function("document.querySelector('#result img').naturalWidth > 0")
    assert image.evaluate("img => [img.naturalWidth, img.naturalHeight]") == [384, 256]
    assert number(page, "Seed").input_value() == "1234"
    page.get_by_text("s/step").wait_for(timeout=30_000)  # the status line reports this generation's speed
    # The shown image is the one the API gives for the shown seed and settings.
    shown = page.request.get(image.get_attribute("src")).body()
    client = Client(app.demo.local_url, verbose=False, download_files=str(SHOTS.parent / "browser-client"))
    path, seed = client.predict("a watercolor fox in the snow", 1234, False, 384, 256, 3.5, 2, api_name="/infer")
    assert seed == 1234 and Path(path).read_bytes() == shown
    screenshot(page, "desktop")

    prompt.fill("   ")
    page.get_by_role("button", name="Run").click()
    page.get_by_text("Enter a prompt.").first.wait_for(timeout=30_000)  # the error toast
    page.close()


def test_a_generation_shows_its_progress_step_by_step(app, browser):
    page = browser.new_page()
    page.goto(app.demo.local_url)
    page.get_by_placeholder("Enter your prompt").fill("a slow, careful drawing")
    page.get_by_text("Advanced Settings").click()
    set_number(page, "Steps", 40)  # a few seconds at 1024x1024 on CPU: long enough to watch
    page.get_by_role("button", name="Run").click()
    # diffusers' step bar, shown through track_tqdm: "denoising - 30.0%" and "12/40 steps" (visible text only)
    page.wait_for_function("document.body.innerText.includes('denoising')", timeout=60_000)
    page.wait_for_function("/\\b\\d+\\/40 steps/.test(document.body.innerText)", timeout=60_000)
    page.locator("#result img").wait_for(timeout=120_000)
    page.close()


def test_an_example_brings_its_settings_and_its_image(app, browser):
    prompt, seed, _, width, height = app.EXAMPLES[1]
    page = browser.new_page()
    page.goto(app.demo.local_url)
    page.get_by_text(prompt).click()  # generated now (lazy cache), never at startup
    image = page.locator("#result img")
    image.wait_for(timeout=120_000)
    page.wait_for_function("document.querySelector('#result img').naturalWidth > 0")
    assert image.evaluate("img => [img.naturalWidth, img.naturalHeight]") == [width, height]
    page.get_by_text("Advanced Settings").click()
    assert number(page, "Seed").input_value() == str(seed)
    page.close()


def test_the_page_fits_a_phone(app, browser):
    context = browser.new_context(**PHONE)
    page = context.new_page()
    page.goto(app.demo.local_url)
    page.get_by_placeholder("Enter your prompt").wait_for()
    run = page.get_by_role("button", name="Run")
    box = run.bounding_box()
    assert box and box["x"] >= 0 and box["x"] + box["width"] <= PHONE["viewport"]["width"]
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")  # no sideways scrolling
    screenshot(page, "phone")
    context.close()
