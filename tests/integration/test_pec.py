"""PEC receipts (§8.3) from a real Dovecot mailbox to pec_* report items."""

from __future__ import annotations

from typing import Any

from tests.conftest import Api, ApiFactory, eventually, message
from tests.endpoint import EndpointFactory
from tests.imap import Dovecot
from tests.relay import Relay

TIMEOUT = 5


def receipt(kind: str | None, subject: str, *, ref: str | None = None,
            client_id: str | None = None, error: str | None = None, n: int = 0) -> bytes:
    lines = ["From: posta-certificata@pec.provider.it", "To: sender@pec.acme.test",
             f"Subject: {subject}", f"Message-ID: <receipt-{n}-{kind}@pec.provider.it>",
             "Date: Tue, 01 Dec 2026 10:00:00 +0100"]
    if kind:
        lines.append(f"X-Ricevuta: {kind}")
    if ref:
        lines.append(f"X-Riferimento-Message-ID: {ref}")
    if client_id:
        lines.append(f"X-Genro-Mail-ID: {client_id}")
    if error:
        lines.append(f"X-Errore: {error}")
    return ("\r\n".join(lines) + "\r\n\r\nRicevuta di servizio.\r\n").encode()


async def pec_account(api: Api, relay: Relay, dovecot: Dovecot, folder: str,
                      tenant_id: str = "acme") -> None:
    await api.account(relay, tenant_id=tenant_id, account_id="pec", is_pec_account=True,
                      imap_host=dovecot.host, imap_port=dovecot.port, imap_user=dovecot.user,
                      imap_password=dovecot.password, imap_folder=folder, imap_ssl=False)


async def records(api: Api, tenant_id: str = "acme") -> dict[str, dict[str, Any]]:
    return {m["id"]: m for m in await api.messages(tenant_id, include_history="true")}


async def test_receipts_become_pec_events_and_missing_acceptance_times_out(
    make_api: ApiFactory, relay: Relay, make_endpoint: EndpointFactory, dovecot: Dovecot
) -> None:
    endpoint = await make_endpoint()
    folder = await dovecot.new_folder()
    api = await make_api(pec_poll_interval=0.3, pec_timeout_seconds=TIMEOUT)
    await api.tenant("acme", client_base_url=endpoint.base_url)
    await api.tenant("beta")
    await pec_account(api, relay, dovecot, folder)
    await api.account(relay, tenant_id="beta")
    await api.send(*(message(i, account_id="pec") for i in (1, 2, 3)))
    await api.send(message(9, tenant_id="beta"))
    await relay.wait_for(4, timeout=10)

    async def all_sent() -> bool:
        found = await records(api)
        return all(found.get(f"m{i}", {}).get("status") == "sent" for i in (1, 2, 3))

    await eventually(all_sent, timeout=10)
    acme = await records(api)
    assert acme["m1"]["is_pec"] is True
    beta_pk = (await records(api, "beta"))["m9"]["pk"]
    await dovecot.append(
        folder,
        receipt("accettazione", "ACCETTAZIONE: Hello 1", ref=f"<{acme['m1']['pk']}@acme.test>"),
        receipt(None, "CONSEGNA: Hello 1", client_id="m1", n=1),  # subject prefix only
        receipt("accettazione", "ACCETTAZIONE: Hello 3", ref=f"<{acme['m3']['pk']}@acme.test>",
                n=3),
        receipt("mancata-consegna", "AVVISO DI MANCATA CONSEGNA: Hello 3", client_id="m3",
                error="casella piena", n=4),
        # Another tenant's message, by its exact Message-ID: never this account's event.
        receipt("accettazione", "ACCETTAZIONE: Hello 9", ref=f"<{beta_pk}@acme.test>", n=9),
        receipt("avvenuta-consegna", "CONSEGNA: unknown", ref="<nobody@acme.test>", n=10),
        b"From: someone@example.org\r\nSubject: hello\r\n\r\nnot a receipt\r\n",
    )

    def kinds(row: dict[str, Any]) -> list[str]:
        return [h["event_type"] for h in row["history"] if h["event_type"].startswith("pec_")]

    async def settled() -> bool:
        found = await records(api)
        return (kinds(found["m1"]) == ["pec_acceptance", "pec_delivery"]
                and kinds(found["m2"]) == ["pec_timeout"]
                and kinds(found["m3"]) == ["pec_acceptance", "pec_error"])

    await eventually(settled, timeout=30)
    assert [h["event_type"] for h in (await records(api, "beta"))["m9"]["history"]] == ["sent"]
    items = [i for i in await endpoint.wait_items(8, timeout=15) if "pec_event" in i]
    by_id = {(i["id"], i["pec_event"]): i for i in items}
    assert set(by_id) == {("m1", "pec_acceptance"), ("m1", "pec_delivery"),
                          ("m2", "pec_timeout"), ("m3", "pec_acceptance"), ("m3", "pec_error")}
    assert by_id[("m3", "pec_error")]["pec_details"] == "casella piena"
    assert isinstance(by_id[("m1", "pec_delivery")]["pec_ts"], int)
    # Read-only: nothing in the mailbox was flagged, moved or removed.
    assert len(await dovecot.uids(folder, "UNSEEN")) == 7
    # Polling again (and again) never repeats an event.
    runner = api.parts.pec_runner  # type: ignore[attr-defined]
    poller = runner.pollers[("acme", "pec")]
    polls = poller.polls

    async def polled_twice() -> bool:
        return poller.polls >= polls + 2

    await eventually(polled_twice, timeout=10)
    assert kinds((await records(api))["m1"]) == ["pec_acceptance", "pec_delivery"]


async def test_receipt_by_a_client_supplied_message_id_stays_in_the_account(
    make_api: ApiFactory, relay: Relay, make_endpoint: EndpointFactory, dovecot: Dovecot
) -> None:
    """X-Riferimento-Message-ID carrying the client's own Message-ID (§8.3, §12.2 rule 2):
    found exactly, and only among the messages of the account whose mailbox it came to."""
    endpoint = await make_endpoint()
    folder = await dovecot.new_folder()
    api = await make_api(pec_poll_interval=0.3)
    await api.tenant("acme", client_base_url=endpoint.base_url)
    await api.tenant("beta")
    await pec_account(api, relay, dovecot, folder)
    await api.account(relay, tenant_id="beta")
    ref = "<Fattura-2026-1@acme.test>"
    await api.send(message(1, account_id="pec", message_id=ref), message(2, account_id="pec"))
    await api.send(message(1, tenant_id="beta", message_id=ref))
    await relay.wait_for(3, timeout=10)

    async def all_sent() -> bool:
        acme, beta = await records(api), await records(api, "beta")
        return acme["m1"]["status"] == acme["m2"]["status"] == beta["m1"]["status"] == "sent"

    await eventually(all_sent, timeout=10)
    await dovecot.append(folder, receipt("accettazione", "ACCETTAZIONE: Hello 1", ref=ref),
                         receipt("avvenuta-consegna", "CONSEGNA: Hello 1", n=1,
                                 ref=ref.lower()))  # not the same Message-ID: no match

    def kinds(row: dict[str, Any]) -> list[str]:
        return [h["event_type"] for h in row["history"] if h["event_type"].startswith("pec_")]

    async def accepted() -> bool:
        return kinds((await records(api))["m1"]) == ["pec_acceptance"]

    await eventually(accepted, timeout=20)
    poller = api.parts.pec_runner.pollers[("acme", "pec")]  # type: ignore[attr-defined]
    polls = poller.polls

    async def polled_twice() -> bool:
        return poller.polls >= polls + 2

    await eventually(polled_twice, timeout=10)
    assert kinds((await records(api))["m1"]) == ["pec_acceptance"]
    assert kinds((await records(api))["m2"]) == []
    assert [h["event_type"] for h in (await records(api, "beta"))["m1"]["history"]] == ["sent"]
