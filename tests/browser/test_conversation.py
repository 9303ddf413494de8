"""A conversation in a real headless Chromium against a real 3-node cluster:
an admin invites a viewer from the dashboard, the viewer sets their password
through the link and asks a question the bot answers from the ledger, then
asks for a person; the admin sees the unread badge and replies; the viewer
sees the reply without reloading; a second viewer sees neither thread; after
the leader is killed, the thread is intact on a surviving node."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.browser.test_dashboard import log_in, open_page
from tests.cluster.hubs import running_cluster
from tests.support import wait_until
from tools.lab.cluster import ClusterError, LocalCluster

pytestmark = [pytest.mark.browser, pytest.mark.cluster]

PLUG = "plug-1"
ADMIN = ("ada", "ada's long password")
VIEWER = ("vic", "vic's long password")
OTHER = ("val", "val's long password")
QUESTION = f"why did {PLUG} switch off?"
REPLY = "Hello vic, I switched it off for maintenance; it is back tomorrow."


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with running_cluster(tmp_path_factory.mktemp("conversation")) as c:
        admin = c.any_client()
        admin.post("/v1/devices", {"device_id": PLUG})
        admin.request("PUT", f"/v1/users/{ADMIN[0]}", json={"role": "admin", "password": ADMIN[1]})
        body = {"role": "viewer", "password": OTHER[1], "devices": [PLUG]}
        admin.request("PUT", f"/v1/users/{OTHER[0]}", json=body)
        # An operator's command in the ledger: what the bot's answer rests on.
        cmd = {"device": PLUG, "action": "relay.set", "params": {"on": False}}
        admin.post("/v1/commands", {**cmd, "command_id": "maint-1"})
        yield c


def url(cluster: LocalCluster, i: int) -> str:
    return f"http://127.0.0.1:{cluster.ports[i].http}"


def new_leader(cluster: LocalCluster, old: int) -> bool:
    try:
        return cluster.leader() != old
    except ClusterError:
        return False


def invite_from_the_dashboard(page: Any, shots: Path) -> str:
    page.goto(page.url.split("#")[0] + "#/invites")
    page.locator("#invite-name").fill(VIEWER[0])
    page.locator("#invite-role").select_option("viewer")
    page.locator("#invite-devices").fill(PLUG)
    page.locator("#invite-send").click()
    link = page.locator("#invite-link").inner_text()
    page.locator("#invite-list tr[data-name='vic']").wait_for()
    page.screenshot(path=str(shots / "01-admin-invites.png"))
    return str(link)


def accept_the_link(page: Any, link: str, shots: Path) -> None:
    page.goto(link)
    page.locator("#invite-for").filter(has_text="invited as vic").wait_for()
    page.locator("#invite-password").fill(VIEWER[1])
    page.locator("#invite-again").fill(VIEWER[1])
    page.screenshot(path=str(shots / "02-invitation-link.png"))
    page.locator("#invite-accept").click()
    page.locator(".view-chat[data-ready='1']").wait_for()
    page.locator("#live[data-state='live']").wait_for()
    assert page.locator("#who").inner_text().startswith(VIEWER[0])


def test_a_conversation_reaches_a_person_and_survives_a_failover(
    chromium: Any, cluster: LocalCluster, artifacts: Path
) -> None:
    print(f"screenshots: {artifacts}")
    leader = cluster.leader()
    home = (leader + 1) % 3  # the pages' node: a follower, alive throughout
    base = url(cluster, home)
    (ctx_a, admin, err_a), (ctx_v, vic, err_v) = open_page(chromium), open_page(chromium)
    ctx_o, other, err_o = open_page(chromium)
    try:
        log_in(admin, base, ADMIN)
        link = invite_from_the_dashboard(admin, artifacts)
        assert link.startswith(f"{base}/#/invite/")
        accept_the_link(vic, link, artifacts)
        # The same link again is refused: it worked once.
        again = httpx.post(
            link.replace("/#/invite/", "/v1/invites/") + "/accept",
            json={"password": "another long password"},
            timeout=20,
        )
        assert again.status_code == 410

        admin.goto(base + "/#/inbox")
        admin.locator(".view-inbox[data-ready='1']").wait_for()
        log_in(other, base, OTHER)
        other.goto(base + "/#/chat")
        other.locator(".view-chat[data-ready='1']").wait_for()

        # The bot answers from the ledger: the operator's command, by its id.
        vic.evaluate("window.notReloaded = true")
        vic.locator("#chat-input").fill(QUESTION)
        vic.locator("#chat-send").click()
        bot = vic.locator("#thread .msg-bot").first
        bot.wait_for()
        assert "maint-1" in bot.inner_text() and "relay.set" in bot.inner_text()
        vic.screenshot(path=str(artifacts / "03-viewer-bot-answer.png"))
        vic.locator("#chat-person").click()
        vic.locator(".view-chat[data-state='person']").wait_for()

        # The admin's badge and inbox count vic's two messages, live.
        admin.locator("#inbox-count").filter(has_text="2").wait_for()
        row = admin.locator("#inbox tr[data-user='vic']")
        row.locator(".unread").filter(has_text="2").wait_for()
        admin.screenshot(path=str(artifacts / "04-admin-inbox.png"))
        row.locator("a").click()
        admin.locator(".view-inbox[data-ready='1'] #reply-input").fill(REPLY)
        admin.locator("#reply-send").click()
        admin.locator("#thread .msg-admin").filter(has_text=REPLY).wait_for()
        admin.locator("#inbox-count").wait_for(state="hidden")  # read: nothing unread
        admin.screenshot(path=str(artifacts / "05-admin-thread.png"))

        # The viewer sees the reply without reloading; the other viewer nothing.
        vic.locator("#thread .msg-admin").filter(has_text=REPLY).wait_for()
        vic.screenshot(path=str(artifacts / "06-viewer-sees-the-reply.png"))
        assert vic.evaluate("window.notReloaded === true")  # the same page, never reloaded
        assert other.locator("#thread .msg").count() == 0
        assert "vic" not in other.locator("#thread").inner_text()
        token = other.evaluate("JSON.parse(sessionStorage.getItem('aiot.session')).token")
        peek = httpx.get(
            f"{base}/v1/threads/vic", headers={"Authorization": f"Bearer {token}"}, timeout=20
        )
        assert peek.status_code == 404
        texts = vic.locator("#thread .msg .answer-text").all_inner_texts()
        assert len(texts) == 5 and texts[0] == QUESTION and texts[-1] == REPLY

        # The leader dies; the thread is whole on the survivors.
        cluster.kill(leader)
        wait_until(lambda: new_leader(cluster, leader), 30, "a new leader")
        survivor = next(i for i in range(3) if i not in (leader, home))
        log_in(vic, url(cluster, survivor), VIEWER)
        vic.goto(url(cluster, survivor) + "/#/chat")
        vic.locator(".view-chat[data-ready='1']").wait_for()
        assert vic.locator("#thread .msg .answer-text").all_inner_texts() == texts
        vic.screenshot(path=str(artifacts / "07-after-failover.png"))
        assert not (err_a or err_v or err_o), (err_a, err_v, err_o)
    finally:
        for ctx in (ctx_a, ctx_v, ctx_o):
            ctx.close()
