"""/-/dashboard in real headless Chromium (Debian's /usr/bin/chromium, driven by Playwright).

No browser is downloaded: Playwright's bundled driver talks CDP to the system
Chromium.  The page must render the emulated fleet from /-/fleet, load nothing
from outside the balancer, and follow a cold load started through the balancer.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from playwright.async_api import Request, async_playwright, expect

from ollama_emulator import ModelSpec, default_catalogue
from tests.harness.fleet import RigFactory, node

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOT = Path("/tmp/ollama-fleet-dashboard.png")
LLAMA = "llama3.2:latest"
SLOW = "slowload:1b"  # loads in 300 emulated s = 3 s at time_scale 0.01: long enough to see


def cell(pod: str, model: str) -> str:
    return f'td.cell[data-pod="{pod}"][data-model="{model}"]'


@pytest.fixture
def chromium() -> str:
    """Debian's browser; .ci/tools.sh installs it (a missing browser fails, never skips)."""
    assert Path(CHROMIUM).exists(), "install Debian's chromium: apt-get install -y chromium"
    return CHROMIUM


async def test_dashboard_renders_the_fleet_and_follows_a_load(
    rig_factory: RigFactory, chromium: str
) -> None:
    catalogue = default_catalogue().with_specs(
        [ModelSpec(name=SLOW, size_bytes=1_000_000_000, load_seconds=300.0)]
    )
    rig = await rig_factory(
        [node("gpu-a", [LLAMA], [LLAMA]), node("gpu-b", [LLAMA, SLOW])],
        catalogue=catalogue,
        poll_interval=0.2,
    )
    foreign: list[str] = []

    def on_request(request: Request) -> None:
        if not request.url.startswith(rig.url + "/"):
            foreign.append(request.url)

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1000, "height": 420})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("request", on_request)
            await page.goto(rig.url + "/-/dashboard")
            expect.set_options(timeout=10_000)

            # The fleet as polled: two healthy pods, llama resident on a, both installed on b.
            await expect(page.locator("#pods-up")).to_have_text("2 / 2")
            await expect(page.locator("#draining")).to_be_hidden()
            for pod in ("gpu-a", "gpu-b"):
                await expect(page.locator(f'th.pod[data-pod="{pod}"]')).to_have_attribute(
                    "data-status", "up"
                )
            await expect(page.locator(cell("gpu-a", LLAMA))).to_have_attribute(
                "data-state", "resident"
            )
            await expect(page.locator(cell("gpu-b", LLAMA))).to_have_attribute(
                "data-state", "installed"
            )
            await expect(page.locator(cell("gpu-a", SLOW))).to_have_attribute(
                "data-state", "absent"
            )
            slow = page.locator(cell("gpu-b", SLOW))
            await expect(slow).to_have_attribute("data-state", "installed")
            await expect(page.locator(cell("gpu-a", LLAMA))).to_contain_text("pinned")

            # A request through the balancer makes gpu-b load the model: loading, then resident.
            request = asyncio.create_task(rig.generate(SLOW, stream=False))
            await expect(slow).to_have_attribute("data-state", "loading")
            await expect(slow).to_have_attribute("data-inflight", "1")
            await expect(page.locator("#loading-total")).to_have_text("1")
            png = await page.screenshot(path=str(SCREENSHOT), full_page=True)
            status, _ = await request
            assert status == 200
            await expect(slow).to_have_attribute("data-state", "resident")
            await expect(slow).to_have_attribute("data-inflight", "0")
            await expect(page.locator("#loading-total")).to_have_text("0")

            # A pod that stops answering turns red after fail_threshold polls.
            await rig.node("gpu-a").stop_listening()
            await expect(page.locator('th.pod[data-pod="gpu-a"]')).to_have_attribute(
                "data-status", "down"
            )
            await expect(page.locator("#pods-up")).to_have_text("1 / 2")
        finally:
            await browser.close()
    assert errors == []
    assert foreign == []
    assert len(png) > 10_000
