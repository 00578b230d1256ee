"""GET /download/{file_id}-{expires}-{sig}/{filename} (§11): no token, the link is the key."""

from __future__ import annotations

from urllib.parse import quote

from aiohttp import web

from mailproxy.ingress.openapi import Spec, documented
from mailproxy.offload.links import BadLink, ExpiredLink
from mailproxy.offload.service import Offloader

OFFLOADER = web.AppKey("offloader", Offloader)


def _error(status: int, detail: str) -> web.Response:
    return web.json_response({"detail": detail}, status=status)


@documented(Spec("Large-file download (§11)", "signed", media_type="application/octet-stream",
                 extra_responses=(404, 410)))
async def download(request: web.Request) -> web.StreamResponse:
    offloader = request.app.get(OFFLOADER)
    if offloader is None:
        return _error(404, "Not Found")
    filename = request.match_info["filename"]
    try:
        found = await offloader.download(request.match_info["token"], filename)
    except (BadLink, LookupError):
        # One answer for a forged link and a missing file (§11): a prober learns nothing.
        return _error(404, "Not Found")
    except ExpiredLink:
        return _error(410, "Download link expired")
    response = web.StreamResponse(headers={
        "Content-Type": found.file.mime_type,
        "Content-Disposition": f"attachment; filename*=utf-8''{quote(filename)}",
        "Content-Length": str(found.file.size),
    })
    await response.prepare(request)
    async for chunk in found.chunks:
        await response.write(chunk)
    await response.write_eof()
    return response
