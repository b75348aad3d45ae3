"""The officers' field page in Chromium with a phone's viewport: signed in, it goes offline
(and still opens, from its service worker), three sightings are filed, and when the
connection returns all three arrive once, by their event ids, one of them raising the alert
on the Long Xuyên desk; the check form shows the wanted person with reasons; a refusal
shows the field at fault."""

from __future__ import annotations

import uuid

import httpx
from playwright.async_api import expect

from services.ingest.app import create_app as create_ingest
from services.ingest.settings import IngestSettings
from tests.conftest import bearer, eventually, served
from tests.test_desk_page import browser  # noqa: F401 - the Chromium fixture
from tests.test_pipeline import WANTED, list_entry

PHONE = {"viewport": {"width": 390, "height": 844}, "device_scale_factor": 3,
         "is_mobile": True, "has_touch": True}


async def file_sighting(page, *, name: str = "", national_id: str = "", plate: str = "",
                        when: str = "") -> None:
    form = page.locator("#sighting")
    await form.locator("[name=name]").fill(name)
    await form.locator("[name=national_id]").fill(national_id)
    await form.locator("[name=plate]").fill(plate)
    await form.locator("[name=address]").fill("chốt kiểm soát Thới Thuận")
    if when:
        await form.locator("[name=when]").fill(when)
    await form.locator("button[type=submit]").click()


async def test_sightings_filed_offline_arrive_once_and_raise_the_alert(
        env, topics, pool, directory, notifier, matcher, browser):  # noqa: F811
    await list_entry(env, pool)  # Long Xuyên's wanted man (WANTED)
    settings = env.settings(IngestSettings, relay_idle_seconds=0.2,
                            matcher_url=f"http://127.0.0.1:{matcher.port}")
    async with served(create_ingest(settings)) as url:
        context = await browser.new_context(**PHONE)
        page = await context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        requests: list[str] = []
        page.on("request", lambda r: requests.append(r.url))

        await page.goto(f"{url}/field/")
        await page.fill("#key", "gpk_wrong")
        await page.click("#signin-button")
        await expect(page.locator("#signin-error")).to_have_text(
            "Khóa không hợp lệ hoặc đã bị thu hồi.")
        await page.fill("#key", directory["CA-31212"])
        await page.click("#signin-button")
        await expect(page.locator("#who")).to_contain_text("(CA-31212)")
        assert await page.evaluate("navigator.serviceWorker.ready.then(() => true)")

        await context.set_offline(True)
        await page.reload()  # the page itself comes from its service worker
        await expect(page.locator("#net")).to_have_text(
            "Mất kết nối: báo cáo được lưu trên máy và gửi khi có mạng")
        await file_sighting(page, name="NGUYEN VAN HUNG", national_id="089 091 004 217")
        await file_sighting(page, name="TRAN VAN KHACH")
        await file_sighting(page, plate="65-B1 999.99")
        await page.click("nav button[data-tab=queue]")
        reports = page.locator("#reports li")
        await expect(reports).to_have_count(3)
        await expect(page.locator("#reports li[data-state=queued]")).to_have_count(3)
        await expect(reports.first).to_contain_text("Đang chờ gửi")

        await context.set_offline(False)
        await expect(page.locator("#reports li[data-state=sent], #reports li[data-state=matched]")
                     ).to_have_count(3, timeout=15_000)
        ids = [await item.get_attribute("data-event-id") for item in await reports.all()]
        assert len(set(ids)) == 3
        stored = await pool.fetch("SELECT event_id::text AS id FROM events "
                                  "WHERE event_id = ANY($1::uuid[])", [uuid.UUID(i) for i in ids])
        assert sorted(row["id"] for row in stored) == sorted(ids)  # each once (its key)
        wanted_id = ids[-1]  # the list shows the newest first: the first filed is last

        async def alert_at_long_xuyen():
            response = await notifier.get("/v1/alerts", headers=bearer(directory["CA-30307"]))
            return [a for a in response.json() if a["correlation_id"] == wanted_id]
        [alert] = await eventually(alert_at_long_xuyen, timeout=30,
                                   what="the alert on the Long Xuyên desk")
        assert alert["entry"]["entry_id"] == WANTED.entry_id
        await expect(page.locator(f"#reports li[data-event-id='{wanted_id}']")).to_have_attribute(
            "data-state", "matched", timeout=25_000)

        # A check of the wanted man, with the reasons.
        await page.click("nav button[data-tab=check]")
        check = page.locator("#check")
        await check.locator("[name=name]").fill("Nguyen Van Hung")
        await check.locator("[name=national_id]").fill("089091004217")
        await check.locator("button[type=submit]").click()
        result = page.locator("#check-result .match")
        await expect(result).to_have_count(1)
        await expect(result).to_contain_text("Nguyễn Văn Hùng")
        await expect(result.locator("li").first).to_contain_text(
            "số CCCD 089091004217 trùng khớp")  # the page reads Vietnamese: the reasons too

        # A refusal is kept with the field at fault, and not sent again.
        await page.click("nav button[data-tab=sighting]")
        await file_sighting(page, name="LE VAN TUONG LAI", when="2099-01-01T10:00")
        await page.click("nav button[data-tab=queue]")
        refused = page.locator("#reports li[data-state=refused]")
        await expect(refused).to_have_count(1)
        await expect(refused).to_contain_text("(occurred_at)")

        assert errors == []
        assert requests and all(r.startswith(url) for r in requests), requests
        await context.close()


async def test_the_page_and_its_files_are_served_as_an_installable_app(env, topics):
    async with served(create_ingest(env.settings(IngestSettings))) as url, \
            httpx.AsyncClient(base_url=url) as client:
        page = await client.get("/field/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert (await client.get("/field")).status_code in (302, 307)
        for name, kind in (("sw.js", "text/javascript"), ("app.js", "text/javascript"),
                           ("manifest.webmanifest", "application/manifest+json"),
                           ("icon.svg", "image/svg+xml")):
            response = await client.get(f"/field/{name}")
            assert response.status_code == 200, name
            assert response.headers["content-type"].startswith(kind), name
        manifest = (await client.get("/field/manifest.webmanifest")).json()
        assert manifest["start_url"] == "/field/" and manifest["scope"] == "/field/"
        missing = await client.get("/field/../settings.py")
        assert missing.status_code == 404
        assert (await client.get("/field/secrets.txt")).status_code == 404


async def test_what_is_typed_while_a_report_is_saved_is_kept(env, topics, pool, directory,
                                                            browser):  # noqa: F811
    """An officer filing sightings one after another types the next while the last is still
    being saved on the phone: the form is cleared as a report is taken, not once it is
    saved (which wiped what was typed meanwhile, and the next report was refused as empty
    or went without its name: the offline test lost one of three that way)."""
    async with served(create_ingest(env.settings(IngestSettings))) as url:
        context = await browser.new_context(**PHONE)
        page = await context.new_page()
        await page.goto(f"{url}/field/")
        await page.fill("#key", directory["CA-31212"])
        await page.click("#signin-button")
        await expect(page.locator("#who")).to_contain_text("(CA-31212)")
        await context.set_offline(True)
        form = page.locator("#sighting")
        await form.locator("[name=name]").fill("NGUYEN VAN HUNG")
        # Submitted, and the next name typed at once, while the first is being saved.
        await page.evaluate("""() => {
            const form = document.querySelector('#sighting');
            form.requestSubmit();
            form.elements.name.value = 'TRAN VAN KHACH';
        }""")
        await page.click("nav button[data-tab=queue]")
        await expect(page.locator("#reports li")).to_have_count(1)
        await page.click("nav button[data-tab=sighting]")
        await expect(form.locator("[name=name]")).to_have_value("TRAN VAN KHACH")
        await form.locator("button[type=submit]").click()
        await page.click("nav button[data-tab=queue]")
        await expect(page.locator("#reports li")).to_have_count(2)
        await expect(page.locator("#reports li").first).to_contain_text("TRAN VAN KHACH")
        await context.close()
