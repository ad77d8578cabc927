"""The console in a real headless browser (Debian's chromium + chromedriver, Selenium).

The seeded app runs under uvicorn on a free local port; the browser signs in with a
tenant key, promotes the candidate version through the confirmation dialog, watches a
running job's status update by polling, checks that Chart.js drew the charts, and saves
screenshots of the main pages (to docs/screenshots/ for the README with
TAILOR_CONSOLE_SCREENSHOTS=docs/screenshots). Skipped where chromium,
chromedriver or selenium are missing (`.ci/run` installs them).
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from adapters import promotion
from tests.console.console_world import World, console_app, seed
from trainer import job_records

pytestmark = pytest.mark.browser

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser")) if p), None)
CHROMEDRIVER = shutil.which("chromedriver")
# The README's screenshots are refreshed on request only (TAILOR_CONSOLE_SCREENSHOTS=docs/screenshots);
# otherwise they go to a temporary folder, so a test run leaves the working tree alone.
SCREENSHOTS = Path(os.environ.get("TAILOR_CONSOLE_SCREENSHOTS") or tempfile.mkdtemp(prefix="tailor-console-"))
WAIT_S = 20.0

if CHROMIUM is None or CHROMEDRIVER is None:
    pytest.skip(
        "browser test: chromium and chromedriver are not installed (apt-get install chromium chromium-driver)",
        allow_module_level=True,
    )
webdriver = pytest.importorskip("selenium.webdriver", reason="browser test: selenium is not installed")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as ec  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, World]]:
    """The seeded app served by uvicorn in a thread, on a port the OS picked."""
    tmp = tmp_path_factory.mktemp("console-live")
    app = console_app(tmp)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}", seed(app, tmp)
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # An explicit driver: Selenium Manager would otherwise try to download one.
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def wait(driver: Any, condition: Any) -> Any:
    return WebDriverWait(driver, WAIT_S).until(condition)


def sign_in(driver: Any, base: str, key: str) -> None:
    driver.delete_all_cookies()
    driver.get(f"{base}/console")
    wait(driver, ec.url_contains("/console/login"))
    driver.find_element(By.ID, "key").send_keys(key)
    driver.find_element(By.CSS_SELECTOR, "main form button[type=submit]").click()
    wait(driver, ec.presence_of_element_located((By.CSS_SELECTOR, ".who form")))


def chart_drawn(driver: Any, canvas_id: str) -> bool:
    """Chart.js made a chart on the canvas, the canvas has a size, and pixels were painted."""
    return bool(
        driver.execute_script(
            """
            const canvas = document.getElementById(arguments[0]);
            if (!canvas || !window.Chart || !Chart.getChart(canvas)) return false;
            if (!canvas.width || !canvas.height) return false;
            const pixels = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
            for (let i = 3; i < pixels.length; i += 4) { if (pixels[i] > 0) return true; }
            return false;
            """,
            canvas_id,
        )
    )


def screenshot(driver: Any, name: str) -> None:
    """The whole page: the window is made as tall as the document first."""
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1280, min(max(int(height), 600), 2400))
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    assert driver.save_screenshot(str(path)) and path.stat().st_size > 10_000
    driver.set_window_size(1280, 900)


def csp_violations(driver: Any) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if "Content Security Policy" in e["message"]]


def test_console_in_a_browser(live: tuple[str, World], browser: Any) -> None:
    base, w = live
    driver = browser

    # A tenant signs in and promotes its candidate through the confirmation dialog.
    sign_in(driver, base, w.keys["acme"])
    assert "Overview of acme" in driver.find_element(By.TAG_NAME, "h1").text
    driver.get(f"{base}/console/tenants/acme/adapters/support")
    assert "active" in driver.find_element(By.CSS_SELECTOR, "#version-1 .badge").text
    assert "candidate" in driver.find_element(By.CSS_SELECTOR, "#version-2 .badge").text
    driver.find_element(By.CSS_SELECTOR, "#version-2 form button").click()
    dialog = wait(driver, ec.visibility_of_element_located((By.ID, "confirm-dialog")))
    assert "Promote version 2 of support?" in dialog.text
    driver.find_element(By.ID, "confirm-yes").click()
    wait(driver, ec.text_to_be_present_in_element((By.CSS_SELECTOR, "p.notice"), "Promoted"))
    assert "active" in driver.find_element(By.CSS_SELECTOR, "#version-2 .badge").text
    assert "retired" in driver.find_element(By.CSS_SELECTOR, "#version-1 .badge").text
    assert promotion.active_version(w.services.db, w.acme.id, "support").version == 2  # type: ignore[union-attr]
    screenshot(driver, "adapter")

    # Cancelling the dialog changes nothing.
    driver.find_element(By.CSS_SELECTOR, "#version-1 form button").click()
    wait(driver, ec.visibility_of_element_located((By.ID, "confirm-dialog")))
    driver.find_element(By.CSS_SELECTOR, "#confirm-dialog button[value=cancel]").click()
    wait(driver, ec.invisibility_of_element_located((By.ID, "confirm-dialog")))
    assert promotion.active_version(w.services.db, w.acme.id, "support").version == 2  # type: ignore[union-attr]

    # A finished job: the loss curve and the evaluation are drawn by Chart.js.
    driver.get(f"{base}/console/tenants/acme/jobs/{w.trained_job}")
    for canvas in ("loss-chart", "quality-chart", "perplexity-chart"):
        wait(driver, lambda d, c=canvas: chart_drawn(d, c))
    screenshot(driver, "job")

    # A running job's status and loss curve follow its new steps without a reload.
    driver.get(f"{base}/console/tenants/acme/jobs/{w.running_job}")
    wait(driver, lambda d: chart_drawn(d, "loss-chart"))
    progress = {"step": 4, "total_steps": 40, "train_loss": 0.9}
    job_records.add_event(w.services.db, w.running_job, "Step 4/40", data=progress)
    wait(driver, ec.text_to_be_present_in_element((By.ID, "job-status"), "step 4 of 40"))
    wait(driver, lambda d: chart_drawn(d, "loss-chart"))

    driver.get(f"{base}/console/tenants/acme/feedback")
    wait(driver, lambda d: chart_drawn(d, "signal-chart"))
    screenshot(driver, "feedback")
    # Filtering swaps only the results (htmx) and keeps the filter in the address.
    Select(driver.find_element(By.ID, "f-rating")).select_by_value("bad")
    driver.find_element(By.CSS_SELECTOR, "form[role=search] button").click()
    wait(driver, ec.url_contains("rating=bad"))
    wait(driver, lambda d: "badge-good" not in d.find_element(By.ID, "feedback-results").get_attribute("innerHTML"))
    assert chart_drawn(driver, "signal-chart")  # the rest of the page stayed

    driver.get(f"{base}/console/tenants/acme")
    screenshot(driver, "tenant")

    # The operator's view: every tenant, and cost and latency across them.
    sign_in(driver, base, "adm")
    assert "Tenants" in driver.find_element(By.TAG_NAME, "h1").text
    screenshot(driver, "overview")
    driver.get(f"{base}/console/cost")
    for canvas in ("cost-chart", "tokens-chart", "latency-chart"):
        wait(driver, lambda d, c=canvas: chart_drawn(d, c))
    screenshot(driver, "cost")

    assert csp_violations(driver) == []
