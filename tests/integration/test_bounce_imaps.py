"""The bounce and PEC pollers over IMAPS (§12.1 `bounce_imap_ssl`) against a real Dovecot with
`ssl = required` and a self-signed certificate the fixture makes: trusted only through
GMP_BOUNCE_IMAP_CA_FILE, refused without it. (Dovecot counts a loopback connection as secure,
so its refusal of a clear-text login under `ssl = required` cannot be shown on 127.0.0.1.)"""

from __future__ import annotations

from typing import Any

from tests.conftest import Api, ApiFactory, eventually, message
from tests.endpoint import EndpointFactory
from tests.imap import Dovecot
from tests.integration.test_bounce_poller import DEAD, bounce_settings, records, runner, sent
from tests.integration.test_pec import receipt
from tests.relay import Relay
from tests.unit.test_bounce_parse import corpus


def tls_settings(dovecot: Dovecot, folder: str, **extra: Any) -> dict[str, Any]:
    return {**bounce_settings(dovecot, folder), "bounce_imap_ssl": True,
            "bounce_imap_port": dovecot.tls_port, **extra}


async def failure(api: Api) -> str:
    poller = runner(api).poller

    async def failed() -> bool:
        return poller.last_error is not None

    await eventually(failed, timeout=15)
    assert poller.polls == 0
    return str(poller.last_error)


async def test_poller_reads_the_mailbox_over_imaps_with_the_configured_ca(
    make_api: ApiFactory, relay: Relay, make_endpoint: EndpointFactory, dovecot_tls: Dovecot
) -> None:
    endpoint = await make_endpoint()
    folder = await dovecot_tls.new_folder()
    api = await make_api(**tls_settings(dovecot_tls, folder,
                                        bounce_imap_ca_file=dovecot_tls.ca_file))
    await api.tenant("acme", client_base_url=endpoint.base_url)
    await api.account(relay)
    pks = await sent(api, relay, 1)
    await dovecot_tls.append(folder, corpus("dsn_511.eml", pk=pks["m1"], client_id="m1",
                                            rcpt=DEAD))

    async def bounced() -> bool:
        return (await records(api))["m1"]["status"] == "bounced"

    await eventually(bounced, timeout=20)
    assert runner(api).poller.last_error is None
    listed = await api.ok("GET", "/tenant/acme/suppressions")
    assert [s["address"] for s in listed["suppressions"]] == [DEAD]


async def test_untrusted_certificate_and_missing_ca_file_are_refused(
    make_api: ApiFactory, dovecot_tls: Dovecot
) -> None:
    folder = await dovecot_tls.new_folder()
    # The self-signed certificate is not in the system store: the poll fails, and says why.
    api = await make_api(**tls_settings(dovecot_tls, folder))
    assert "CERTIFICATE_VERIFY_FAILED" in await failure(api)
    await api.client.close()
    # A CA file that does not exist: the poll fails with the reason, not silently.
    api = await make_api(**tls_settings(dovecot_tls, folder,
                                        bounce_imap_ca_file=str(dovecot_tls.dir / "none.pem")))
    assert "FileNotFoundError" in await failure(api)


async def test_pec_mailbox_over_imaps_with_the_configured_ca(
    make_api: ApiFactory, relay: Relay, make_endpoint: EndpointFactory, dovecot_tls: Dovecot
) -> None:
    endpoint = await make_endpoint()
    folder = await dovecot_tls.new_folder()
    api = await make_api(pec_poll_interval=0.3, bounce_imap_ca_file=dovecot_tls.ca_file)
    await api.tenant("acme", client_base_url=endpoint.base_url)
    await api.account(relay, account_id="pec", is_pec_account=True,
                      imap_host=dovecot_tls.host, imap_port=dovecot_tls.tls_port,
                      imap_user=dovecot_tls.user, imap_password=dovecot_tls.password,
                      imap_folder=folder, imap_ssl=True)
    await api.send(message(1, account_id="pec"))
    await relay.wait_for(1, timeout=10)

    async def is_sent() -> bool:
        return (await records(api))["m1"]["status"] == "sent"

    await eventually(is_sent, timeout=10)
    pk = (await records(api))["m1"]["pk"]
    await dovecot_tls.append(folder, receipt("accettazione", "ACCETTAZIONE: Hello 1",
                                             ref=f"<{pk}@acme.test>"))

    async def accepted() -> bool:
        history = (await records(api))["m1"]["history"]
        return "pec_acceptance" in [h["event_type"] for h in history]

    await eventually(accepted, timeout=20)
