"""What a person checks in the Prefect UI after a fine-tune, in a real headless Chromium.

One training run (the session's ``trained_sft``, through the embedded default) serves every check.
The suite's Prefect server runs without its UI (it starts faster), so this module serves the UI of
the same Prefect installation from a second, services-free ``prefect server start --ui`` whose UI
talks to the suite's API (``PREFECT_UI_API_URL``), as a UI deployed apart from its API does.

Both of Prefect 3.9's UIs are checked where they differ: the V2 UI is what a browser opening the
server gets by default, the V1 UI is where Prefect's own "View at …" log links lead.

Screenshots (the run page, its logs and artifacts, the loss curve, the summary, the sweep chart)
are written to ``tests/output/browser/`` on every run, to look at after a failure or a UI change.

Chromium and chromedriver are Debian's (``make browser``, a step of ``make test``, installs them);
selenium drives them and downloads nothing.
"""

from __future__ import annotations

import base64
import io
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from infra.local import stack as local_stack
from tasks.reporting import artifact_key, short_job_id

SCREENSHOTS = Path(__file__).parent / "output" / "browser"
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,1000",
)
UI_WAIT = 90  # seconds: the UI shares two CPU cores with the servers, the workers and training
BYTECODE = re.compile(r"\b(LOAD_GLOBAL|LOAD_FAST|RESUME|RETURN_VALUE|CALL|PRECALL|LOAD_CONST)\b(\s+\d+)?")

SHOWN_IMAGE = """
const image = Array.from(document.images).find((candidate) => candidate.alt.startsWith(arguments[0]));
if (!image || !image.complete || image.naturalWidth === 0) return null;
image.scrollIntoView({block: "center"});
const box = image.getBoundingClientRect();
return {src: image.getAttribute("src"), width: image.naturalWidth, height: image.naturalHeight, shown: box.width * box.height};
"""

SCROLL_TO_TEXT = """
const found = document.evaluate(`//*[contains(text(), "${arguments[0]}")]`, document, null, XPathResult.FIRST_ORDERED_NODE_TYPE, null);
if (found.singleNodeValue) found.singleNodeValue.scrollIntoView({block: "center"});
"""

# Log panels may render only the rows in view: scroll every scrollable box (and the page) a screen at a time.
SCROLL_A_SCREEN = """
let moved = false;
for (const element of [document.scrollingElement, ...document.querySelectorAll("*")]) {
  if (element && element.scrollHeight > element.clientHeight + 1 && element.scrollTop + element.clientHeight < element.scrollHeight - 1) {
    const style = element === document.scrollingElement ? null : getComputedStyle(element);
    if (style && !/(auto|scroll)/.test(style.overflowY)) continue;
    element.scrollTop += Math.max(200, element.clientHeight - 50);
    moved = true;
  }
}
return moved;
"""


# -- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def prefect_ui(prefect_server, tmp_path_factory) -> Iterator[str]:
    """Prefect's UI, served by a services-free server, talking to the suite's API; yields its base URL."""
    home = tmp_path_factory.mktemp("prefect-ui")
    port = local_stack.free_port()
    env = local_stack.server_env(home / "prefect", {**os.environ, "PREFECT_UI_API_URL": prefect_server})
    command = [*local_stack.PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port), "--ui", "--no-services"]
    with (home / "server.log").open("ab") as log:
        process = subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
    try:
        local_stack.wait_healthy(local_stack.api_url(port), timeout=180, process=process)
        yield f"http://127.0.0.1:{port}"
    finally:
        local_stack.stop_process(process.pid)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not chromedriver:
        pytest.fail("chromium and chromedriver are needed: `make browser` installs Debian's chromium and chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    driver = webdriver.Chrome(options=options, service=Service(chromedriver))
    driver.set_page_load_timeout(UI_WAIT)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def training(ow_stack, trained_sft):
    """(job ID, GPU-stage flow run, its artifacts by key, the latest version of each)."""
    _, job_id, _ = trained_sft
    [stage] = ow_stack.gpu_stage_runs(job_id)
    artifacts = {artifact.key: artifact for artifact in ow_stack.artifacts(stage.id) if artifact.key}
    return job_id, stage, artifacts


# -- helpers --------------------------------------------------------------------------------------


def wait_until(driver, condition, what: str):
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, UI_WAIT, poll_frequency=0.5).until(lambda _: condition())
    except Exception:
        screenshot(driver, "failed-" + re.sub(r"[^a-z0-9]+", "-", what.lower()).strip("-"))
        raise AssertionError(f"not on screen after {UI_WAIT}s: {what} (page {driver.current_url})") from None


def page_text(driver) -> str:
    return driver.execute_script("return document.body ? document.body.innerText : ''")


def open_page(driver, url: str, expected: str) -> str:
    """Load ``url`` and wait until ``expected`` is on screen (the UI fetches its data after loading)."""
    driver.get(url)
    return wait_until(driver, lambda: (text := page_text(driver)) and expected in text and text, f"{expected!r} at {url}")


def shown_png(driver, alt_prefix: str) -> Image.Image:
    """The image whose alt text starts with ``alt_prefix``, once the browser has decoded it; decoded
    again here from the page's own ``src`` to check it is the PNG the browser shows."""
    shown = wait_until(driver, lambda: driver.execute_script(SHOWN_IMAGE, alt_prefix), f"image {alt_prefix!r}")
    assert shown["shown"] > 0, "the image is in the page but takes no space on screen"
    assert shown["src"].startswith("data:image/png;base64,")
    image = Image.open(io.BytesIO(base64.b64decode(shown["src"].split(",", 1)[1])))
    image.load()
    assert image.format == "PNG" and image.size == (shown["width"], shown["height"])
    return image


def all_text_while_scrolling(driver, most_screens: int = 60) -> str:
    seen = [page_text(driver)]
    for _ in range(most_screens):
        if not driver.execute_script(SCROLL_A_SCREEN):
            break
        seen.append(page_text(driver))
    return "\n".join(seen)


def screenshot(driver, name: str) -> Path:
    path = SCREENSHOTS / f"{name}.png"
    driver.save_screenshot(str(path))
    return path


def click_text(driver, text: str) -> None:
    """Click the innermost element that reads exactly ``text``, as a person clicks a label."""
    from selenium.webdriver.common.by import By

    xpath = f"//*[normalize-space(.)='{text}' and not(*[normalize-space(.)='{text}'])]"
    element = wait_until(driver, lambda: next(iter(driver.find_elements(By.XPATH, xpath)), None), f"{text!r} to click")
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", element)
    element.click()


# -- what a person checks -------------------------------------------------------------------------


def test_the_loss_curve_is_an_image_on_its_artifact_page_in_both_uis(browser, prefect_ui, training):
    job_id, _, artifacts = training
    curve = artifacts[artifact_key(job_id, "loss-curve")]
    for ui, prefix in (("v2", "/v2"), ("v1", "")):
        open_page(browser, f"{prefect_ui}{prefix}/artifacts/artifact/{curve.id}", "Loss and learning rate of")
        image = shown_png(browser, f"loss curve of {job_id}")
        assert image.width >= 400 and image.height >= 200
        screenshot(browser, f"loss-curve-{ui}")


def test_the_run_page_shows_training_logs_without_bytecode_and_opens_the_loss_curve(browser, prefect_ui, training):
    job_id, stage, artifacts = training
    open_page(browser, f"{prefect_ui}/v2/runs/flow-run/{stage.id}?tab=Logs", "step 1:")
    browser.execute_script(SCROLL_TO_TEXT, "step 1:")
    screenshot(browser, "run-logs")
    logs = all_text_while_scrolling(browser)
    assert "training backend:" in logs
    bytecode = [line for line in logs.splitlines() if BYTECODE.search(line)]
    assert bytecode == [], bytecode[:5]

    click_text(browser, "Artifacts")
    for name in ("loss-curve", "metrics", "summary"):
        wait_until(browser, lambda name=name: artifact_key(job_id, name) in page_text(browser), f"the {name} artifact")
    screenshot(browser, "run-artifacts")
    click_text(browser, artifact_key(job_id, "loss-curve"))  # as a person opens the card
    wait_until(browser, lambda: f"/artifacts/artifact/{artifacts[artifact_key(job_id, 'loss-curve')].id}" in browser.current_url, "the loss curve's page")
    shown_png(browser, f"loss curve of {job_id}")
    screenshot(browser, "run-loss-curve")


def test_the_summary_is_on_screen_with_the_short_and_the_full_job_id(browser, prefect_ui, training):
    from selenium.webdriver.common.by import By

    job_id, _, artifacts = training
    summary = artifacts[artifact_key(job_id, "summary")]
    # Waited for on screen: the summary's own text, which the UI renders after the run's details.
    text = open_page(browser, f"{prefect_ui}/v2/artifacts/artifact/{summary.id}", f"ow fetch {job_id} -o DIRECTORY")
    headings = [element.text for element in browser.find_elements(By.CSS_SELECTOR, "h1")]
    assert f"finetune job {short_job_id(job_id)}" in headings, headings
    assert "Outputs" in text and f"ow fetch {job_id} -o DIRECTORY" in text and "file://" not in text
    screenshot(browser, "summary")


def test_the_sweep_chart_is_an_image_the_ui_shows(browser, prefect_ui, prefect_server):
    """The chart the sweep publishes next to its comparison table (the same function draws it);
    a whole sweep is tested in tests/test_eval_flows.py, through the API."""
    from prefect import flow
    from prefect.artifacts import create_markdown_artifact

    from flows.evals import comparison_chart_markdown
    from jobs.sweeps import SweepConfig, SweepEval

    config = SweepConfig(
        sweep_name="browser",
        models=["org/tiny-model", "ftjob-3f2a9c1b7d0e" + "0" * 52],
        evals=[SweepEval(name="arithmetic", kind="inspect"), SweepEval(name="mmlu-pro", kind="mmlu-pro")],
    )
    table = [
        {"model": config.models[0], "arithmetic": 0.25, "mmlu-pro": 0.5},
        {"model": config.models[1], "arithmetic": 0.75, "mmlu-pro": None},
    ]

    @flow(name="browser-sweep-chart")
    def publish_chart():
        return create_markdown_artifact(markdown=comparison_chart_markdown(config, table), key="eval-sweep-browser-chart")

    artifact_id = publish_chart()
    open_page(browser, f"{prefect_ui}/v2/artifacts/artifact/{artifact_id}", "Sweep browser")
    shown_png(browser, "scores of sweep browser")
    screenshot(browser, "sweep-chart")
