from tests.conftest import ADMIN, message
from tests.dashboard.ui import sign_in


async def test_smoke(api, relay):
    await api.tenant("acme")
    await api.account(relay)
    await api.send(message(1), message(2, batch_code="b1"))
    csrf = await sign_in(api.client, ADMIN)
    for path in ("/ui/", "/ui/fragments/overview", "/ui/queue", "/ui/queue?q=status:sent",
                 "/ui/rates", "/ui/bounces", "/ui/fragments/queue?q=to:rcpt"):
        async with api.client.get(path) as resp:
            text = await resp.text()
            assert resp.status == 200, (path, text)
    async with api.client.get("/ui/queue") as resp:
        text = await resp.text()
    import re
    pk = re.search(r'data-pk="([^"]+)"', text).group(1)
    async with api.client.get(f"/ui/messages/{pk}") as resp:
        text = await resp.text()
        assert resp.status == 200, text
    print(text[-3000:])
