"""The web UI in a real browser (Debian's chromium driven by Playwright) against a live cell:
the pages render the cell's state, the live refresh picks up changes without a reload,
nothing is fetched from outside the master, and a screenshot lands in bench/results/ for the
README.

Skipped with a message when chromium or the playwright package is missing.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cluster import REPO, Cell, wait_for

pytestmark = [pytest.mark.e2e]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
RESULTS = Path(REPO) / "bench" / "results"


def write(tmp_path: Path, name: str, text: str) -> str:
    p = tmp_path / name
    p.write_text(text)
    return str(p)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not os.path.exists(CHROMIUM):
        pytest.skip("chromium not installed (Debian: apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip(
            "playwright not installed (pip install playwright; its driver ships in the wheel)"
        )
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A page that records console errors, page errors and every URL it requests."""
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = ctx.new_page()
    pg.errors = []
    pg.urls = []
    pg.on("console", lambda m: m.type == "error" and pg.errors.append(m.text))
    pg.on("pageerror", lambda e: pg.errors.append(str(e)))
    pg.on("request", lambda r: pg.urls.append(r.url))
    yield pg
    ctx.close()


def test_ui_pages_render_the_live_cell_in_a_browser(cell3: Cell, page: Any, tmp_path: Path) -> None:
    web = write(
        tmp_path,
        "web.yaml",
        "name: web\nreplicas: 2\nrun_as: nobody\npriority: 200\n"
        "command: 'while true; do echo web-log-line; sleep 1; done'\n"
        "requirements: {cpu: 0.1, ram: 32Mi}\n",
    )
    assert cell3.borgcfg("up", web, "--wait", "--timeout", "30").returncode == 0
    huge = write(
        tmp_path,
        "huge.yaml",
        "name: toobig\nrun_as: nobody\ncommand: 'sleep 100'\nrequirements: {cpu: 64}\n",
    )
    assert cell3.borgcfg("up", huge).returncode == 0
    wait_for(lambda: cell3.job("toobig")["tasks"][0]["reason"], 15, what="toobig has a reason")
    follower = next(m for m in cell3.masters if m is not cell3.leader())
    base = f"http://{follower.info['http']}"

    # Overview, served by a follower: every replica with its role, the machine, the jobs.
    page.goto(base + "/")
    rows = page.locator("#replicas tr[data-replica]")
    assert rows.count() == 3
    roles = [rows.nth(i).locator("td").nth(1).inner_text() for i in range(3)]
    assert sorted(roles) == ["follower", "follower", "leader"]
    machine = cell3.borglets[0].info["name"]
    assert page.locator(f"#machines tr[data-machine='{machine}'] .state").inner_text() == "up"
    assert page.locator(f"#machines tr[data-machine='{machine}'] .bar").count() == 2
    job_row = page.locator("#jobs tr[data-job='web']")
    assert "2/2" in job_row.inner_text() and "production" in job_row.inner_text()
    assert "no-feasible-machine" in page.locator("#jobs tr[data-job='toobig']").inner_text()

    # Live refresh: a job submitted after the page loaded appears without a reload.
    late = write(
        tmp_path,
        "late.yaml",
        "name: late\nrun_as: nobody\ncommand: 'sleep 100'\nrequirements: {cpu: 0.1, ram: 16Mi}\n",
    )
    assert cell3.borgcfg("up", late, "--wait", "--timeout", "30").returncode == 0
    page.wait_for_selector("#jobs tr[data-job='late']", timeout=15_000)
    assert page.locator("#live").inner_text() == "live"
    RESULTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(RESULTS / "ui.png"), full_page=True)
    assert (RESULTS / "ui.png").stat().st_size > 10_000

    # Job page: tasks with state and machine, why pending, events, links to logs.
    page.click("#jobs tr[data-job='web'] a")
    page.wait_for_url(base + "/jobs/web")
    tasks = page.locator("#tasks tr[data-task]")
    assert tasks.count() == 2
    for i in range(2):
        assert "running" in tasks.nth(i).inner_text() and machine in tasks.nth(i).inner_text()
    assert "Every task has a machine" in page.locator("#why").inner_text()
    assert page.locator("table.events tr").count() >= 2
    page.screenshot(path=str(RESULTS / "ui-job.png"), full_page=True)
    page.locator("#tasks tr[data-task='0'] a", has_text="stdout").click()
    page.wait_for_selector("pre.log")
    wait_for(lambda: "web-log-line" in page.locator("pre.log").inner_text(), 15, what="log output")

    page.goto(base + "/jobs/toobig")
    assert "no-feasible-machine" in page.locator("#why").inner_text()

    assert not page.errors, page.errors
    outside = [u for u in page.urls if not u.startswith(base + "/")]
    assert not outside, f"the UI fetched from outside the master: {outside}"


def test_tls_cell_ui_opens_from_a_login_link_and_hides_others_logs(
    browser: Any, tmp_path: Path
) -> None:
    """A cell with --tls-dir: without an identity the browser gets 401; `borgcfg ui`'s link
    gives it a session as its holder, who sees the cell and their own logs, not others'."""
    cell = Cell(tls=True)
    try:
        cell.start(masters=1, borglets=1)
        alice = cell.cert("user", "alice", hosts=())
        mine = write(
            tmp_path,
            "mine.yaml",
            "name: mine\nrun_as: nobody\ncommand: 'echo alice-line; sleep 100'\n"
            "requirements: {cpu: 0.05, ram: 16Mi}\n",
        )
        assert cell.borgcfg("up", mine, "--wait", "--timeout", "30", tls_dir=alice).returncode == 0
        other = write(
            tmp_path,
            "other.yaml",
            "name: other\nrun_as: nobody\ncommand: 'echo admin-secret-line; sleep 100'\n"
            "requirements: {cpu: 0.05, ram: 16Mi}\n",
        )
        assert cell.borgcfg("up", other, "--wait", "--timeout", "30").returncode == 0
        http = cell.masters[0].info["http"]
        ctx = browser.new_context(ignore_https_errors=True)  # the cell's own CA
        try:
            pg = ctx.new_page()
            assert pg.goto(f"https://{http}/").status == 401
            link = cell.borgcfg("ui", tls_dir=alice).stdout.strip()
            assert pg.goto(link).status == 200  # redirected to the overview, signed in
            assert pg.locator("#jobs tr[data-job='mine']").count() == 1
            wait_for(
                lambda: "alice-line" in pg.goto(f"https://{http}/jobs/mine/logs/0?raw=1").text(),
                20,
                what="alice reads her task's log",
            )
            r = pg.goto(f"https://{http}/jobs/other/logs/0?raw=1")
            assert r.status == 403 and "admin-secret-line" not in r.text()
        finally:
            ctx.close()
    finally:
        cell.close()
