"""/docs in a real headless Chromium (Debian's chromium + chromium-driver, through Selenium)
against Gunicorn on loopback: Swagger UI renders the operations from the service's own assets,
"try it out" uploads a TIFF to /predict and shows the 200, and no request leaves the machine.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest

from tests.conftest import tiff_bytes
from tests.integration.servers import GunicornServer, tiny_model_server

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="Debian's chromium and chromium-driver are not installed (.ci/run installs them)",
)

# Known to work in containers as root; no background traffic (updates, sync, field trials).
_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
          "--disable-background-networking", "--disable-component-update", "--disable-sync",
          "--disable-dev-shm-usage", "--window-size=1280,2000")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GunicornServer]:
    with tiny_model_server(tmp_path_factory.mktemp("gunicorn"), max_batch_size=2, threads=4) as running:
        yield running


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[object]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    # Every request the page makes, as DevTools Network events.
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def _requested_urls(driver: object) -> list[str]:
    urls = []
    for entry in driver.get_log("performance"):  # type: ignore[attr-defined]
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def test_swagger_ui_renders_from_local_assets_and_try_it_out_uploads_a_tiff(
    server: GunicornServer, browser: object, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.select import Select
    from selenium.webdriver.support.ui import WebDriverWait

    driver = browser
    wait = WebDriverWait(driver, 60)  # type: ignore[arg-type]
    driver.get(f"{server.url}/docs")  # type: ignore[attr-defined]
    # The operations, rendered by Swagger UI from /openapi.json (readable operation ids shown).
    wait.until(ready.presence_of_element_located((By.ID, "operations-predict-predict")))
    ids = {element.get_attribute("id") for element in driver.find_elements(By.CSS_SELECTOR, ".opblock")}  # type: ignore[attr-defined]
    assert {"operations-predict-predict", "operations-inference-v2-v2_infer",
            "operations-tfserving-v1-tfserving_predict"} <= ids

    image = tmp_path / "field.tif"
    image.write_bytes(tiff_bytes(np.random.default_rng(0).integers(0, 4096, (48, 64), dtype=np.uint16)))
    operation = driver.find_element(By.ID, "operations-predict-predict")  # type: ignore[attr-defined]
    operation.find_element(By.CSS_SELECTOR, ".opblock-summary").click()
    media = wait.until(lambda _: operation.find_element(By.CSS_SELECTOR, ".opblock-section-request-body select"))
    Select(media).select_by_value("multipart/form-data")
    wait.until(lambda _: operation.find_elements(By.XPATH, ".//button[contains(., 'Add')]"))[0].click()
    upload = wait.until(lambda _: operation.find_element(By.CSS_SELECTOR, "input[type=file]"))
    upload.send_keys(str(image))
    operation.find_element(By.CSS_SELECTOR, "button.execute").click()
    status = wait.until(lambda _: operation.find_element(
        By.CSS_SELECTOR, ".live-responses-table .response .response-col_status"))
    body = operation.find_element(By.CSS_SELECTOR, ".live-responses-table .response-col_description pre")
    assert status.text.strip() == "200", body.text
    answer = json.loads(body.text)
    assert answer["model"] == "tiny" and len(answer["predictions"]) == 1
    assert answer["predictions"][0]["input"]["dtype"] == "uint16"

    urls = _requested_urls(driver)
    assert f"{server.url}/docs/assets/swagger-ui-bundle.js" in urls and f"{server.url}/openapi.json" in urls
    assert any(url.startswith(f"{server.url}/predict") for url in urls)
    # Nothing fetched over the network from anywhere but the service itself (chrome:// pages are
    # the browser's own new-tab page, data: URIs are inline).
    network = [url for url in urls if urlsplit(url).scheme not in ("chrome", "chrome-untrusted", "data", "blob")]
    assert [url for url in network if not url.startswith(f"{server.url}/")] == []
