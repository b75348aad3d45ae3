"""The duty-desk page in headless Chromium (Debian's /usr/bin/chromium, driven by
Playwright): a desk signs in, an alert arrives live without a reload, and is acknowledged.
"""

import os
import shutil

import pytest
from playwright.async_api import async_playwright, expect

from services.notifier.app import create_app
from services.notifier.settings import NotifierSettings
from tests.conftest import bearer, eventually, served
from tests.notifier_helpers import WANTED, alert_of, make_hit, send, send_incident

CHROMIUM = os.environ.get("GIAPRANH_CHROMIUM", "/usr/bin/chromium")
# The flags a root CI machine on a closed network needs (see .ci/run).
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-dev-shm-usage"]


@pytest.fixture
async def browser():
    # Not skipped when missing: .ci/run installs Debian's chromium; a missing browser fails.
    assert shutil.which(CHROMIUM), f"{CHROMIUM} not found: apt-get install chromium"
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


async def test_an_alert_appears_live_and_is_acknowledged_from_the_page(
        env, topics, directory, browser):
    app = create_app(env.settings(NotifierSettings))
    async with served(app) as url:
        page = await browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        external: list[str] = []
        page.on("request", lambda r: None if r.url.startswith(url) else external.append(r.url))

        await page.goto(f"{url}/desk")
        await page.fill("#key", "gpk_wrong")
        await page.click("button[type=submit]")
        await expect(page.locator("#signin-error")).to_have_text(
            "Khoá không hợp lệ hoặc đã bị thu hồi.")

        await page.fill("#key", directory["CA-30307"])
        await page.click("button[type=submit]")
        await expect(page.locator("#unit")).to_have_text(
            "Công an phường Long Xuyên (CA-30307) · duty desk")
        await expect(page.locator(".empty")).to_have_text("Không có cảnh báo.")
        await expect(page.locator("#live")).to_have_class("live on")

        hit = make_hit(WANTED)
        await send(env, hit)
        card = page.locator("article").first
        await expect(card).to_be_visible(timeout=15_000)  # pushed, no reload
        await expect(card.locator("h2")).to_contain_text("Truy nã: Nguyễn Văn Hùng")
        # The desk reads Vietnamese: the server's reasons and "why you" too.
        await expect(card).to_contain_text("số CCCD 089091004217 trùng khớp")
        await expect(card).to_contain_text("đơn vị lập hồ sơ đối tượng")
        await expect(card).not_to_contain_text("national id")
        await expect(card.locator(".countdown")).to_contain_text("còn")
        await expect(card.locator(".status")).to_have_text("Mới")

        await card.locator("[data-action=ack]").click()
        await expect(card.locator(".status")).to_have_text("Đã nhận")
        await expect(card.locator("[data-action=ack]")).to_have_count(0)

        await page.select_option("#lang", "en")
        await expect(card.locator(".status")).to_have_text("Acknowledged")
        await expect(card.locator("[data-action=confirm]")).to_have_text("Confirm still wanted")
        await expect(card).to_contain_text("national id 089091004217 exact")  # reloaded
        await expect(card).to_contain_text("this unit listed the subject")
        await page.select_option("#lang", "vi")
        await expect(card).to_contain_text("số CCCD 089091004217 trùng khớp")
        await expect(page.locator("#live")).to_have_class("live on")  # the stream reopened

        # The acknowledgement is the server's, not just the page's.
        import httpx
        async with httpx.AsyncClient(base_url=url) as client:
            stored = await eventually(lambda: alert_of(client, directory["CA-30307"], hit),
                                      what="the alert over the API")
            assert stored["status"] == "acknowledged"
            assert stored["acknowledged_at"] is not None
            seen_side = await alert_of(client, directory["CA-31212"], hit)
            assert seen_side["acknowledged_at"] is None  # per desk
            history = await client.get(f"/v1/alerts/{stored['alert_id']}/history",
                                       headers=bearer(directory["CA-30307"]))
            assert [s["action"] for s in history.json()] == ["raised", "acknowledged"]
            history_vi = (await client.get(
                f"/v1/alerts/{stored['alert_id']}/history",
                headers={**bearer(directory["CA-30307"]), "Accept-Language": "vi-VN"})).json()
            assert [s["label"] for s in history_vi] == ["đã phát cảnh báo", "đã tiếp nhận"]
            assert "đơn vị nhận, xác nhận trong" in history_vi[0]["detail"]
        assert errors == []
        assert external == []  # usable offline: every asset comes from the notifier


async def test_the_desk_shows_an_incident_and_the_hot_list_hit_with_what_to_do_first(
        env, topics, directory, browser):
    """An incident alert (what happened, suspects, vehicles, where they fled) and a hit on
    its hot list (with the incident, the action asked for and the safety flags first)
    arrive live; the incident alert is acknowledged from its card."""
    from datetime import UTC, datetime

    from shared.events import (
        Category,
        Caution,
        IncidentReported,
        Place,
        RequiredAction,
        SharingScope,
        Suspect,
        Vehicle,
        WatchlistEntry,
    )

    incident = IncidentReported(
        occurred_at=datetime.now(UTC), producer_unit="CA-31212",
        incident_type="cướp giật tài sản", summary="giật túi xách tại bến phà",
        place=Place(unit_code="CA-31212"), severity="immediate",
        suspects=(Suspect(name="Trần Văn Tèo", cautions=(Caution.ARMED,)),),
        vehicles=(Vehicle(plate="65-B1 234.56", description="Exciter đỏ"),),
        fled_towards=("CA-31207",))
    hot = WatchlistEntry(
        entry_id=f"INC-{incident.event_id.hex}-V1", owner_unit="CA-31212",
        category=Category.INCIDENT_VEHICLE, plates=("65-B1 234.56",),
        sharing_scope=SharingScope.OWNER_ONLY, incident_id=incident.event_id,
        action=RequiredAction.ARREST, cautions=(Caution.ARMED,))
    app = create_app(env.settings(NotifierSettings))
    async with served(app) as url:
        page = await browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        await page.goto(f"{url}/desk")
        await page.fill("#key", directory["CA-31212"])
        await page.click("button[type=submit]")
        await expect(page.locator("#live")).to_have_class("live on")

        await send_incident(env, incident)
        card = page.locator("article").first
        await expect(card.locator("h2")).to_contain_text("Vụ việc: cướp giật tài sản",
                                                         timeout=15_000)
        await expect(card).to_contain_text("Trần Văn Tèo · CÓ VŨ KHÍ")
        await expect(card).to_contain_text("65-B1 234.56 · Exciter đỏ")
        await expect(card).to_contain_text("Bỏ chạy về")
        await expect(card).to_contain_text("vụ việc xảy ra trên địa bàn đơn vị")
        await expect(card.locator("[data-action=confirm]")).to_have_count(0)
        await card.locator("[data-action=ack]").click()
        await expect(card.locator(".status")).to_have_text("Đã nhận")

        await send(env, make_hit(hot, seen="CA-31207"))
        hit_card = page.locator("article", has_text="Phương tiện vụ việc")
        await expect(hit_card).to_be_visible(timeout=15_000)
        await expect(hit_card.locator(".flags")).to_have_text("CÓ VŨ KHÍ · Bắt giữ")
        await expect(hit_card).to_contain_text("cướp giật tài sản – giật túi xách tại bến phà")
        assert errors == []
