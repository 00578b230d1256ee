"""The bounce poller against a real Dovecot (§12): mail in over IMAP APPEND, bounce events
reported to a real tenant endpoint, suppression of the next REST and SMTP send."""

from __future__ import annotations

import time
from typing import Any

import aiosmtplib
import pytest

from mailproxy.bounces.runner import BounceRunner
from mailproxy.compose import header_value
from tests.conftest import Api, ApiFactory, eventually, message
from tests.endpoint import Endpoint, EndpointFactory
from tests.imap import Dovecot
from tests.relay import HOST, Relay, free_port
from tests.unit.test_bounce_parse import CORPUS, corpus

RETURN_PATH = "bounces@proxy.test"
DEAD = "nosuch@example.org"


def bounce_settings(dovecot: Dovecot, folder: str, **extra: Any) -> dict[str, Any]:
    return {"bounce_enabled": True, "bounce_imap_host": dovecot.host,
            "bounce_imap_port": dovecot.port, "bounce_imap_user": dovecot.user,
            "bounce_imap_password": dovecot.password, "bounce_imap_folder": folder,
            "bounce_imap_ssl": False, "bounce_poll_interval": 1,
            "bounce_return_path": RETURN_PATH, **extra}


def runner(api: Api) -> BounceRunner:
    found: BounceRunner = api.parts.bounce_runner  # type: ignore[attr-defined]
    return found


async def records(api: Api) -> dict[str, dict[str, Any]]:
    return {m["id"]: m for m in await api.messages(include_history="true")}


async def sent(api: Api, relay: Relay, *ids: int, to: str = DEAD) -> dict[str, str]:
    """Send messages and wait for them to be delivered; their pk by client id."""
    before = relay.accepted
    await api.send(*(message(i, to=[to]) for i in ids))
    await relay.wait_for(before + len(ids), timeout=10)

    async def all_sent() -> bool:
        found = await records(api)
        return all(found.get(f"m{i}", {}).get("status") == "sent" for i in ids)

    await eventually(all_sent, timeout=10)
    found = await records(api)
    return {f"m{i}": found[f"m{i}"]["pk"] for i in ids}


async def setup(make_api: ApiFactory, relay: Relay, endpoint: Endpoint, dovecot: Dovecot,
                folder: str, **extra: Any) -> Api:
    api = await make_api(**{**bounce_settings(dovecot, folder), **extra})
    await api.tenant("acme", client_base_url=endpoint.base_url)
    await api.account(relay)
    return api


async def bounce_items(endpoint: Endpoint) -> list[dict[str, Any]]:
    return [i for i in endpoint.items() if "bounce_ts" in i]


async def wait_polls(api: Api, n: int, timeout: float = 15) -> None:
    start = runner(api).poller.polls
    await api.ok("POST", "/instance/reload-bounce")

    async def done() -> bool:
        return runner(api).poller.polls >= start + n

    await eventually(done, timeout=timeout)


async def test_hard_bounce_is_reported_suppresses_and_blocks_rest_and_smtp(
    make_api: ApiFactory, relay: Relay, make_endpoint: EndpointFactory, dovecot: Dovecot
) -> None:
    endpoint = await make_endpoint()
    folder = await dovecot.new_folder()
    smtp_port = free_port()
    api = await setup(make_api, relay, endpoint, dovecot, folder, smtp_port=smtp_port)
    pks = await sent(api, relay, 1)
    assert relay.messages[-1].mail_from == RETURN_PATH  # so that DSNs reach the mailbox
    await dovecot.append(folder, corpus("dsn_511.eml", pk=pks["m1"], client_id="m1",
                                        rcpt=DEAD))

    async def bounced() -> bool:
        return (await records(api))["m1"]["status"] == "bounced"

    await eventually(bounced, timeout=15)
    row = (await records(api))["m1"]
    assert (row["bounce_type"], row["bounce_code"]) == ("hard", "511")
    assert row["history"][-1]["event_type"] == "bounce"
    await endpoint.wait_items(2, timeout=15)
    [item] = await bounce_items(endpoint)
    assert item["id"] == "m1" and item["bounce_type"] == "hard"
    assert item["bounce_code"] == "511" and item["bounce_recipient"] == DEAD
    assert "User unknown" in item["bounce_reason"]
    listed = await api.ok("GET", "/tenant/acme/suppressions")
    [entry] = listed["suppressions"]
    assert (entry["address"], entry["source"], entry["bounce_type"], entry["bounce_code"],
            entry["message_id"]) == (DEAD, "bounce", "hard", "511", "m1")
    # The next REST message to that address is not sent.
    await api.send(message(2, to=[DEAD.upper()]))

    async def suppressed() -> bool:
        return (await records(api)).get("m2", {}).get("status") == "suppressed"

    await eventually(suppressed, timeout=10)
    # Nor is an SMTP submission to it.
    token = (await api.ok("POST", "/tenant/acme/api-key"))["api_key"]
    smtp = aiosmtplib.SMTP(hostname=HOST, port=smtp_port, start_tls=False, timeout=10)
    await smtp.connect()
    await smtp.ehlo()
    await smtp.auth_plain("acme/main", token)
    await smtp.mail("sender@acme.test")
    with pytest.raises(aiosmtplib.SMTPRecipientRefused) as refused:
        await smtp.rcpt(DEAD)
    assert refused.value.code == 550
    await smtp.quit()
    metrics = await api.client.get("/metrics")
    text = await metrics.text()
    assert 'gmp_bounces_total{tenant_id="acme",type="hard"} 1.0' in text


async def test_the_corpus_is_classified_and_one_bad_message_does_not_stop_the_poller(
    make_api: ApiFactory, relay: Relay, make_endpoint: EndpointFactory, dovecot: Dovecot
) -> None:
    endpoint = await make_endpoint()
    folder = await dovecot.new_folder()
    api = await setup(make_api, relay, endpoint, dovecot, folder)
    names = ["malformed.eml", "dsn_511.eml", "autoreply.eml", "dsn_422_delayed.eml",
             "normal.eml", "exim.eml", "dsn_441_no_answer.eml", "gmail.eml"]
    pks = await sent(api, relay, *range(1, len(names) + 1))
    mails = [corpus(name, pk=pks[f"m{i}"], client_id=f"m{i}", rcpt=DEAD)
             for i, name in enumerate(names, 1)]
    await dovecot.append(folder, *mails)
    await wait_polls(api, 2)
    views = await api.parts.bounces.list_bounces(_admin())  # type: ignore[attr-defined]
    got = {v.message_id: (v.type.value, v.code) for v in views}
    assert got == {"m2": ("hard", "5.1.1"), "m4": ("soft", "4.2.2"), "m6": ("hard", "5.1.1"),
                   "m7": ("soft", "4.4.1"), "m8": ("hard", "5.1.1")}
    status = {k: v["status"] for k, v in (await records(api)).items()}
    assert status["m2"] == status["m6"] == status["m8"] == "bounced"
    assert status["m4"] == status["m7"] == "sent"  # soft: the remote side may still deliver
    assert status["m1"] == status["m3"] == status["m5"] == "sent"
    # Only the exact (DSN) hard bounce suppresses; Exim and Gmail notices are heuristic.
    listed = await api.ok("GET", "/tenant/acme/suppressions")
    assert [(s["address"], s["message_id"]) for s in listed["suppressions"]] == [(DEAD, "m2")]
    await endpoint.wait_items(len(names) + 5, timeout=15)
    assert sorted(i["id"] for i in await bounce_items(endpoint)) == ["m2", "m4", "m6", "m7",
                                                                     "m8"]
    # The mailbox was read, not modified.
    assert await dovecot.uids(folder, "UNSEEN") == await dovecot.uids(folder)


def _admin() -> Any:
    from mailproxy.service import Caller

    return Caller()


async def test_restart_neither_reprocesses_nor_skips_and_uidvalidity_change_is_handled(
    make_api: ApiFactory, relay: Relay, make_endpoint: EndpointFactory, dovecot: Dovecot
) -> None:
    endpoint = await make_endpoint()
    folder = await dovecot.new_folder()
    api = await setup(make_api, relay, endpoint, dovecot, folder)
    pks = await sent(api, relay, 1, 2, 3)
    first = corpus("dsn_511.eml", pk=pks["m1"], client_id="m1", rcpt=DEAD)
    await dovecot.append(folder, first)
    await wait_polls(api, 1)
    assert len(await api.parts.bounces.list_bounces(_admin())) == 1  # type: ignore[attr-defined]
    await api.client.close()  # the whole app stops (store closed, poller stopped)

    # While it is down, another bounce arrives; after the restart it is read, once.
    await dovecot.append(folder, corpus("dsn_522_headers_only.eml", pk=pks["m2"],
                                        client_id="m2", rcpt=DEAD))
    api = await make_api(**bounce_settings(dovecot, folder))
    await wait_polls(api, 2)
    views = await api.parts.bounces.list_bounces(_admin())  # type: ignore[attr-defined]
    assert sorted(v.message_id for v in views) == ["m1", "m2"]
    history = (await records(api))["m1"]["history"]
    assert [h["event_type"] for h in history].count("bounce") == 1

    # A new UIDVALIDITY: the folder is read from UID 1 again; what was seen is not recorded
    # twice (fingerprints), what is new is.
    await dovecot.recreate(folder)
    await dovecot.append(folder, first, corpus("dsn_441_no_answer.eml", pk=pks["m3"],
                                               client_id="m3", rcpt=DEAD))
    await wait_polls(api, 2)
    views = await api.parts.bounces.list_bounces(_admin())  # type: ignore[attr-defined]
    assert sorted(v.message_id for v in views) == ["m1", "m2", "m3"]
    cursor = await api.parts.bounces.store.get_cursor("bounce")  # type: ignore[attr-defined]
    assert cursor is not None and cursor.last_uid == 2


async def test_connection_failure_backs_off_then_recovers_after_settings_change(
    make_api: ApiFactory, relay: Relay, make_endpoint: EndpointFactory, dovecot: Dovecot
) -> None:
    endpoint = await make_endpoint()
    folder = await dovecot.new_folder()
    api = await setup(make_api, relay, endpoint, dovecot, folder,
                      bounce_imap_port=free_port())  # nothing listens there
    poller = runner(api).poller

    async def failed() -> bool:
        return poller.last_error is not None

    await eventually(failed, timeout=10)
    assert poller.polls == 0
    pks = await sent(api, relay, 1)
    await dovecot.append(folder, corpus("dsn_511.eml", pk=pks["m1"], client_id="m1",
                                        rcpt=DEAD))
    await api.ok("PUT", "/instance", json={"bounce_imap_port": dovecot.port})
    await wait_polls(api, 1)
    assert poller.last_error is None
    assert (await records(api))["m1"]["status"] == "bounced"


async def test_bounce_enabled_drives_the_poller_and_the_return_path(
    make_api: ApiFactory, relay: Relay, make_endpoint: EndpointFactory, dovecot: Dovecot
) -> None:
    endpoint = await make_endpoint()
    folder = await dovecot.new_folder()
    api = await setup(make_api, relay, endpoint, dovecot, folder, bounce_enabled=False)
    await sent(api, relay, 1)
    assert relay.messages[-1].mail_from == "sender@acme.test"  # no bounce mailbox: From
    started = time.monotonic()
    while time.monotonic() - started < 2.5:  # more than two poll intervals
        await eventually(_true, timeout=1)
        assert runner(api).poller.polls == 0
    await api.ok("PUT", "/instance", json={"bounce_enabled": True})
    assert (await api.ok("POST", "/instance/reload-bounce"))["bounce_enabled"] is True
    await wait_polls(api, 1)
    await sent(api, relay, 2)
    assert relay.messages[-1].mail_from == RETURN_PATH


async def _true() -> bool:
    return True


async def test_processed_mail_is_flagged_or_moved_when_asked(
    make_api: ApiFactory, relay: Relay, make_endpoint: EndpointFactory, dovecot: Dovecot
) -> None:
    endpoint = await make_endpoint()
    folder = await dovecot.new_folder()
    done = await dovecot.new_folder()
    api = await setup(make_api, relay, endpoint, dovecot, folder,
                      bounce_processed_folder=done)
    pks = await sent(api, relay, 1)
    await dovecot.append(folder, corpus("dsn_511.eml", pk=pks["m1"], client_id="m1",
                                        rcpt=DEAD))
    await wait_polls(api, 1)
    assert await dovecot.uids(folder) == []
    assert len(await dovecot.uids(done)) == 1


async def test_processed_mail_is_flagged_seen_when_asked(
    make_api: ApiFactory, relay: Relay, make_endpoint: EndpointFactory, dovecot: Dovecot
) -> None:
    endpoint = await make_endpoint()
    folder = await dovecot.new_folder()
    api = await setup(make_api, relay, endpoint, dovecot, folder, bounce_mark_seen=True)
    pks = await sent(api, relay, 1)
    await dovecot.append(folder, corpus("dsn_511.eml", pk=pks["m1"], client_id="m1",
                                        rcpt=DEAD), corpus("normal.eml"))
    await wait_polls(api, 1)
    assert await dovecot.uids(folder, "UNSEEN") == []
    assert len(await dovecot.uids(folder)) == 2


def client_dsn(message_id: str, sender: str, rcpt: str, n: int) -> bytes:
    """A DSN whose returned headers carry only a client-supplied Message-ID."""
    raw = (CORPUS / "dsn_511_client_message_id.eml").read_bytes()
    for key, value in (("MSGID", message_id), ("FROM", sender), ("RCPT", rcpt), ("N", str(n))):
        raw = raw.replace(b"{%s}" % key.encode(), value.encode())
    return raw


async def test_client_message_id_finds_the_right_tenant_through_the_poller(
    make_api: ApiFactory, relay: Relay, make_endpoint: EndpointFactory, dovecot: Dovecot
) -> None:
    """§12.2 rule 2 for a client-supplied Message-ID: two tenants sent the same one (and the
    same client id) from different addresses; the returned From picks the right one, which
    is recorded but does not suppress (a choice among several). A Message-ID only one
    message carries matches it alone and suppresses."""
    acme_endpoint, beta_endpoint = await make_endpoint(), await make_endpoint()
    folder = await dovecot.new_folder()
    api = await setup(make_api, relay, acme_endpoint, dovecot, folder)
    await api.tenant("beta", client_base_url=beta_endpoint.base_url)
    await api.account(relay, tenant_id="beta")
    shared, unique, other = "<order-77@shop.test>", "<only-acme-1@shop.test>", "gone@example.org"
    await api.send(message(1, to=[DEAD], message_id=shared, **{"from": "Shop <orders@acme.test>"}),
                   message(2, to=[other], headers={"Message-ID": unique}))
    await api.send(message(1, tenant_id="beta", to=[DEAD], message_id=shared,
                           **{"from": "News <news@beta.test>"}))
    await relay.wait_for(3, timeout=10)
    sent_ids = {header_value(m.content, "message-id") for m in relay.messages}
    assert sent_ids == {shared, unique}  # they went out with the client's Message-IDs

    async def all_sent() -> bool:
        acme, beta = await records(api), {m["id"]: m for m in await api.messages("beta")}
        return (acme["m1"]["status"] == acme["m2"]["status"] == beta["m1"]["status"]
                == "sent")

    await eventually(all_sent, timeout=10)
    await dovecot.append(folder, client_dsn(shared, "Shop <ORDERS@acme.test>", DEAD, 1),
                         client_dsn(unique, "Sender <sender@acme.test>", other, 2))

    async def bounced() -> bool:
        acme = await records(api)
        return acme["m1"]["status"] == acme["m2"]["status"] == "bounced"

    await eventually(bounced, timeout=20)
    beta = {m["id"]: m for m in await api.messages("beta", include_history="true")}
    assert beta["m1"]["status"] == "sent" and beta["m1"]["bounce_type"] is None
    assert [h["event_type"] for h in beta["m1"]["history"]] == ["sent"]
    listed = await api.ok("GET", "/tenant/acme/suppressions")
    assert [(s["address"], s["message_id"]) for s in listed["suppressions"]] == [(other, "m2")]
    assert (await api.ok("GET", "/tenant/beta/suppressions"))["total"] == 0
    await acme_endpoint.wait_items(4, timeout=15)
    assert sorted((i["id"], i["bounce_recipient"]) for i in await bounce_items(acme_endpoint)
                  ) == [("m1", DEAD), ("m2", other)]
    assert await bounce_items(beta_endpoint) == []
