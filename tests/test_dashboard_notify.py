"""The dashboard tells the submitter when a job ends (browser notifications), in a real
Chromium against a real bf-server; a scripted node (``fakenode``) does the rendering.

An init script wraps ``window.Notification`` so that every notification the page raises
is also kept in ``window.notes`` (title, body, tag, and the notification itself, to
click). Chromium gets the "notifications" permission where a test says so.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from blenderfarm.protocol import messages as m
from blenderfarm.server import tokens
from procs import ServerProc, free_port, get_json, post_ok, wait_for
from test_dashboard import (  # noqa: F401 - fixtures
    BLOB,
    BROWSER_MARKS,
    ThreadNode,
    browser,
    post_job,
    quick_server,
)

try:
    from playwright.sync_api import Browser, Page, expect
except ImportError:  # pragma: no cover - make test installs it; the module skips
    expect = None

pytestmark = BROWSER_MARKS

# Before the dashboard's own scripts: every notification is kept, and can be clicked.
RECORD = """
window.notes = [];
if (window.Notification) {
  const Real = window.Notification;
  window.Notification = class extends Real {
    constructor(title, options) {
      super(title, options);
      window.notes.push({ title, body: options.body, tag: options.tag, note: this });
    }
  };
}
"""
NOTES = "window.notes.map(({ title, body, tag }) => ({ title, body, tag }))"

Opener = Callable[..., "Page"]


@pytest.fixture
def open_page(browser: Browser) -> Iterator[Opener]:  # noqa: F811 - the imported fixture
    """open_page(url, grant=True, init=""): a fresh profile that records notifications,
    with the permission granted (or not), at the jobs list; page errors fail the test."""
    contexts = []
    errors: list[str] = []

    def opener(url: str, grant: bool = True, init: str = "") -> Page:
        context = browser.new_context(viewport={"width": 1440, "height": 900})
        contexts.append(context)
        if grant:
            context.grant_permissions(["notifications"], origin=url)
        context.add_init_script(init + RECORD)
        page = context.new_page()
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(f"{url}/#/jobs")
        expect(page.locator("#live")).to_have_text("live", timeout=10_000)
        return page

    try:
        yield opener
    finally:
        for context in contexts:
            context.close()
    assert not errors, f"errors on the page: {errors}"


def submitted_here(page: Page, job_id: str) -> None:
    """What the New job page does after a submit: the id joins localStorage bf.submitted."""
    page.evaluate("""id => {
      const ids = JSON.parse(localStorage.getItem("bf.submitted") || "[]");
      localStorage.setItem("bf.submitted", JSON.stringify([...ids, id]));
    }""", job_id)


def status(url: str, job_id: str) -> str:
    return str(get_json(f"{url}/api/jobs/{job_id}")["job"]["status"])


def assign_of(node: ThreadNode, job_id: str) -> m.Assign:
    """The node's next assign for this job; those of other jobs wait their turn."""
    waiting = ASSIGNS.setdefault(id(node), {})
    while job_id not in waiting:
        got = node.call(node.node.expect(m.Assign, timeout=10), 15)
        waiting[got.job_id] = got
    return waiting.pop(job_id)


ASSIGNS: dict[int, dict[str, m.Assign]] = {}


def turn_on(page: Page) -> None:
    button = page.locator("#notify")
    expect(button).to_have_text("Notify me")
    button.click()
    expect(button).to_have_text("Notifying")
    expect(button).to_have_attribute("aria-pressed", "true")
    assert page.evaluate("localStorage.getItem('bf.notify')") == "on"


def test_a_job_submitted_here_notifies_once_when_it_ends_and_opens_its_page(
        quick_server: ServerProc, open_page: Opener) -> None:  # noqa: F811
    url = quick_server.url
    node = ThreadNode(url, "fake-01")
    try:
        before = post_job(url, "shot005", frames="1")
        node.call(node.node.finish(assign_of(node, before)))
        wait_for(lambda: status(url, before) == "completed", 10, "the first job done")

        page = open_page(url, init="if (!localStorage.getItem('bf.submitted')) "
                                   "localStorage.setItem('bf.submitted', "
                                   f"JSON.stringify([{json.dumps(before)}]));")
        turn_on(page)
        # a job that ended before the page loaded, even if news of it comes later
        post_ok(url + f"/api/jobs/{before}/priority", {"priority": 70})
        expect(page.locator(f'tr[data-job-id="{before}"] td.num')).to_have_text("70")

        theirs = post_job(url, "someone else's", frames="1")
        mine = post_job(url, "shot010", frames="1-2", chunk=2)
        submitted_here(page, mine)
        expect(page.locator(f'tr[data-job-id="{mine}"]')).to_be_visible()
        for job_id in (theirs, mine):  # the other's first: its note would come first
            node.call(node.node.finish(assign_of(node, job_id)))
        page.wait_for_function("() => window.notes.length > 0")
        notes = page.evaluate(NOTES)
        assert [(n["title"], n["tag"]) for n in notes] == [("shot010 completed", mine)], notes
        assert notes[0]["body"].startswith("2 frames · "), notes
        assert notes[0]["body"].removeprefix("2 frames · ").endswith("s"), notes  # "1s"

        broken = post_job(url, "shot020 <b>fx</b>", frames="1")
        submitted_here(page, broken)
        expect(page.locator(f'tr[data-job-id="{broken}"]')).to_be_visible()
        task = assign_of(node, broken)
        node.call(node.node.send(m.TaskFailed(task_id=task.task_id, retryable=False,
                                              error="Blender crashed (SIGSEGV).")))
        page.wait_for_function("() => window.notes.length > 1")
        failed = page.evaluate(NOTES)[1]
        assert failed["title"] == "shot020 <b>fx</b> failed" and failed["tag"] == broken
        assert failed["body"].startswith("0 of 1 frame · "), failed
        assert failed["body"].endswith("Blender crashed (SIGSEGV)."), failed

        # Its end again (a priority change sends the job once more): not told twice.
        post_ok(url + f"/api/jobs/{mine}/priority", {"priority": 90})
        expect(page.locator(f'tr[data-job-id="{mine}"] td.num')).to_have_text("90")
        assert len(page.evaluate(NOTES)) == 2
        # Rendered again and failed again: the submitter heard of this job already.
        post_ok(url + f"/api/jobs/{broken}/requeue", {"which": "failed"})
        expect(page.locator(f'tr[data-job-id="{broken}"] .badge')).not_to_have_text("failed")
        task = assign_of(node, broken)
        node.call(node.node.send(m.TaskFailed(task_id=task.task_id, retryable=False,
                                              error="Blender crashed again.")))
        wait_for(lambda: status(url, broken) == "failed", 10, "the job failed again")
        expect(page.locator(f'tr[data-job-id="{broken}"] .badge')).to_have_text("failed")
        assert len(page.evaluate(NOTES)) == 2

        # Clicking the notification opens the job's page.
        page.evaluate("window.notes[0].note.onclick()")
        expect(page).to_have_url(f"{url}/#/jobs/{mine}")
        expect(page.locator("#job-title")).to_have_text("shot010")

        # After a reload every job had ended before it: nothing, however news comes.
        page.reload()
        expect(page.locator("#live")).to_have_text("live", timeout=10_000)
        expect(page.locator("#notify")).to_have_text("Notifying")  # remembered
        post_ok(url + f"/api/jobs/{broken}/priority", {"priority": 60})
        page.goto(f"{url}/#/jobs")
        expect(page.locator(f'tr[data-job-id="{broken}"] td.num')).to_have_text("60")
        assert page.evaluate(NOTES) == []
    finally:
        node.close()


# While window.hold is set, the page's events socket goes nowhere (a farm out of reach).
HOLD = """
window.hold = false;
const RealSocket = window.WebSocket;
window.sockets = [];
window.WebSocket = class extends RealSocket {
  constructor(url, ...rest) {
    super(window.hold ? "ws://127.0.0.1:9/" : url, ...rest);
    window.sockets.push(this);
  }
};
"""


def test_a_job_that_ends_while_the_stream_is_down_is_told_when_the_page_is_back(
        quick_server: ServerProc, open_page: Opener) -> None:  # noqa: F811
    url = quick_server.url
    node = ThreadNode(url, "fake-01")
    try:
        page = open_page(url, init=HOLD)
        turn_on(page)
        mine = post_job(url, "shot030", frames="1")
        submitted_here(page, mine)
        expect(page.locator(f'tr[data-job-id="{mine}"]')).to_be_visible()
        task = assign_of(node, mine)
        page.evaluate("window.hold = true; window.sockets.at(-1).close()")
        expect(page.locator("#live")).to_have_text("reconnecting…")
        node.call(node.node.finish(task))
        wait_for(lambda: status(url, mine) == "completed", 10, "the job done")
        page.evaluate("window.hold = false")  # the next retry gets through; a resync
        page.wait_for_function("() => window.notes.length > 0", timeout=20_000)
        assert [n["title"] for n in page.evaluate(NOTES)] == ["shot030 completed"]
        expect(page.locator("#live")).to_have_text("live")
    finally:
        node.close()


def test_without_permission_or_notifications_the_control_says_so(
        quick_server: ServerProc, open_page: Opener) -> None:  # noqa: F811
    url = quick_server.url
    blocked = open_page(url, grant=False)
    button = blocked.locator("#notify")
    expect(button).to_have_text("Notify me")
    button.click()  # headless Chromium answers "denied" to a page it was not granted
    expect(button).to_have_text("Notifications blocked")
    expect(blocked.locator("#toast")).to_contain_text("blocks notifications")
    assert blocked.evaluate("localStorage.getItem('bf.notify')") == "off"

    lacking = open_page(url, init="delete window.Notification;")
    expect(lacking.locator("#notify")).to_have_text("No notifications")
    lacking.locator("#notify").click()
    expect(lacking.locator("#toast")).to_have_text("This browser cannot show notifications.")

    # Turned off again: a job that ends says nothing.
    page = open_page(url)
    turn_on(page)
    page.locator("#notify").click()
    expect(page.locator("#notify")).to_have_text("Notify me")
    job_id = post_job(url, "shot040", frames="1")
    submitted_here(page, job_id)
    expect(page.locator(f'tr[data-job-id="{job_id}"]')).to_be_visible()
    post_ok(url + f"/api/jobs/{job_id}/cancel", {})
    expect(page.locator(f'tr[data-job-id="{job_id}"] .badge')).to_have_text("canceled")
    assert page.evaluate(NOTES) == []


def post_job_as(url: str, token: str, name: str) -> str:
    """A job submitted with a user token (its owner is the token's name)."""
    import hashlib

    sha = hashlib.sha256(BLOB).hexdigest()
    urllib.request.urlopen(urllib.request.Request(
        f"{url}/api/blobs/{sha}", data=BLOB, method="PUT",
        headers={"Authorization": f"Bearer {token}"}), timeout=5).close()
    job = post_ok(url + "/api/jobs", {"blend": "shot.blend", "manifest": {"shot.blend": sha},
                                  "frames": "1", "name": name}, token)
    return str(job["job"]["id"])


def test_with_tokens_a_job_of_the_signed_in_user_notifies_without_being_submitted_here(
        tmp_path: Path, open_page: Opener) -> None:
    data = tmp_path / "secure"
    data.mkdir()
    _, artist = tokens.create(data / "farm.db", "user", "artist")
    _, producer = tokens.create(data / "farm.db", "user", "producer")
    server = ServerProc(data, free_port())
    server.start()
    try:
        url = server.url
        page = open_page(url, init=f"localStorage.setItem('blenderfarm.token', '{artist}');")
        turn_on(page)
        theirs = post_job_as(url, producer, "producer's shot")
        mine = post_job_as(url, artist, "artist's shot")
        for job_id in (theirs, mine):  # no node: each waits until its owner cancels it
            expect(page.locator(f'tr[data-job-id="{job_id}"]')).to_be_visible()
        post_ok(url + f"/api/jobs/{theirs}/cancel", {}, producer)
        post_ok(url + f"/api/jobs/{mine}/cancel", {}, artist)
        page.wait_for_function("() => window.notes.length > 0")
        notes = page.evaluate(NOTES)
        assert [(n["title"], n["tag"]) for n in notes] == [("artist's shot canceled", mine)]
        assert notes[0]["body"].startswith("0 of 1 frame"), notes
        assert page.evaluate("localStorage.getItem('bf.submitted')") is None
    finally:
        server.stop()
