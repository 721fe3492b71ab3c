"""The page in headless Chromium: upload an X-ray, see the findings chart and the overlay.

Drives Debian's ``chromium`` (``make browser`` installs it) through Playwright; skipped,
saying why, where either is missing. The screenshot is kept in ``test-artifacts/``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxrkit.inference import load
from cxrkit.serve import background_server, create_app

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"
NIH_ORIGINAL = Path("originals/images_001/images/00000001_000.png")


def upload_image(request, phantom_release) -> Path:
    """A real NIH original (1024 px) where the sample is present, else a phantom."""
    try:
        return request.getfixturevalue("nih_sample") / NIH_ORIGINAL
    except pytest.skip.Exception:
        return sorted(phantom_release.rglob("*.png"))[0]


def test_page_shows_findings_and_overlay(request, phantom_run, phantom_release):
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (make browser installs it)")
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')"
    )
    image = upload_image(request, phantom_release)
    lm = load(phantom_run)
    answer = lm.predict(image)
    ranked = answer[list(lm.findings)].iloc[0].sort_values(ascending=False)
    flagged = bool(answer["ood_flag"].iloc[0])
    app = create_app(lm)
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "serve_page.png"

    with background_server(app) as url, sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("requestfailed", lambda r: errors.append(f"failed: {r.url}"))
            page.goto(url + "/", wait_until="networkidle")
            assert "Research use only" in page.inner_text("#disclaimer")
            assert "not a medical device" in page.inner_text("#disclaimer")
            page.wait_for_function("document.getElementById('model').textContent.includes('cnn4')")
            assert not page.is_visible("#patient")  # this model takes no patient metadata

            page.set_input_files("#file", str(image))
            page.wait_for_selector("#chart g.bar", timeout=30_000)
            page.wait_for_selector("#preview-fig:not([hidden])", timeout=30_000)
            assert page.evaluate("document.getElementById('preview').naturalWidth") > 0
            bars = page.eval_on_selector_all("#chart g.bar", "gs => gs.map(g => g.dataset.finding)")
            assert bars == list(ranked.index)  # every finding, sorted by probability
            chart_text = page.text_content("#chart")
            for finding in lm.findings:
                assert finding.replace("_", " ") in chart_text
            top = f"{ranked.iloc[0] * 100:.1f}%"
            assert top in chart_text

            overlay = page.wait_for_selector("#overlay-fig:not([hidden]) #overlay", timeout=30_000)
            assert overlay.get_attribute("src").startswith("data:image/png;base64,")
            page.wait_for_function("document.getElementById('overlay').naturalWidth > 0")
            assert ranked.index[0] in page.inner_text("#overlay-caption")

            # pick another finding: its overlay replaces the first
            other = ranked.index[3]
            page.click(f'#chart g.bar[data-finding="{other}"]')
            page.wait_for_function(
                "f => document.getElementById('overlay-caption').textContent"
                ".startsWith('Grad-CAM: ' + f)",
                arg=other,
                timeout=30_000,
            )
            assert page.input_value("#finding") == other
            page.screenshot(path=str(shot), full_page=True)
            # the out-of-distribution warning shows exactly when the image is flagged
            assert page.is_visible("#ood-alert") == flagged

            # noise is no radiograph: a warning above the findings chart
            noise = ARTIFACTS / "noise.png"
            rng = np.random.default_rng(0)
            Image.fromarray(rng.integers(0, 256, (256, 256), dtype=np.uint8)).save(noise)
            page.set_input_files("#file", str(noise))
            page.wait_for_selector("#ood-alert:not([hidden])", timeout=30_000)
            page.wait_for_selector("#chart g.bar", timeout=30_000)
            assert "does not look like the images this model was trained on" in page.inner_text(
                "#ood-alert"
            )
            alert_box, chart_box = (
                page.query_selector("#ood-alert").bounding_box(),
                page.query_selector("#chart").bounding_box(),
            )
            assert alert_box["y"] + alert_box["height"] <= chart_box["y"]
            page.screenshot(path=str(ARTIFACTS / "serve_page_ood.png"), full_page=True)
            noise.unlink()

            # a non-image gets the service's message on the page, and the page still works
            bad = ARTIFACTS / "not-an-xray.png"
            bad.write_bytes(b"plain text, not pixels\n" * 10)
            page.set_input_files("#file", str(bad))
            page.wait_for_selector("#status.error", timeout=30_000)
            assert "415" in page.inner_text("#status")
            assert "not a recognised image" in page.inner_text("#status")
            # ... and no preview box: neither the refused file (a broken image) nor the
            # previous X-ray under the new file's name
            # (evaluate, not wait_for_function: polling a string trips the page's CSP)
            assert page.evaluate("document.getElementById('preview-fig').hidden")
            assert not page.is_visible("#preview")
            assert page.get_attribute("#preview", "src") is None
            broken = page.evaluate("""[...document.images].filter(i => i.offsetParent !== null
                && i.complete && i.naturalWidth === 0).map(i => i.id)""")
            assert broken == [], broken
            page.screenshot(path=str(ARTIFACTS / "serve_page_rejected.png"), full_page=True)
            bad.unlink()
            assert not errors, errors
        finally:
            browser.close()
    assert shot.stat().st_size > 10_000


def test_page_sends_patient_metadata(tmp_path):
    """A model trained with age/sex/view: the page shows the fields and sends them."""
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (make browser installs it)")
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')"
    )
    from test_export import make_checkpoint

    lm = load(
        make_checkpoint(tmp_path, "cnn4", cache=32, input_size=32, model_kw={"meta_features": 4})
    )
    image = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 48), dtype=np.uint8)).save(image)
    with pytest.warns(UserWarning):  # no OOD record in a bare checkpoint
        want = lm.predict(image, meta=[{"age": 71, "sex": "M", "view": "AP"}])
    top = want[list(lm.findings)].iloc[0].sort_values(ascending=False)
    with background_server(create_app(lm)) as url, sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url + "/", wait_until="networkidle")
            page.wait_for_selector("#patient:not([hidden])", timeout=30_000)
            page.fill("#age", "71")
            page.select_option("#sex", "M")
            page.select_option("#view", "AP")
            page.set_input_files("#file", str(image))
            page.wait_for_selector("#chart g.bar", timeout=30_000)
            page.wait_for_selector("#status.ok", timeout=30_000)
            assert "Patient metadata: all given" in page.inner_text("#status")
            assert f"{top.iloc[0] * 100:.1f}%" in page.text_content("#chart")
            # clearing a field re-runs the image and names what is now missing
            page.select_option("#sex", "")
            page.wait_for_function(
                "t => document.getElementById('status').textContent.includes(t)",
                arg="missing (training defaults used): sex",
                timeout=30_000,
            )
            assert not errors, errors
        finally:
            browser.close()
