"""A real HTTP proxy in front of moto's EC2 for what moto never answers: capacity errors and spot interruptions.

`async with Ec2Proxy(moto.url) as proxy:` then point the EC2 client at `proxy.url`. RunInstances for an instance
type or subnet in `proxy.fail` is answered with that EC2 error (the XML and HTTP status EC2 uses); instances in
`proxy.interrupted` read as ended by a spot interruption in DescribeInstances. Everything else goes to moto
unchanged. `proxy.runs` records every RunInstances: (instance type, subnet, "ok" or the error code), and
`proxy.actions` every API action.
"""

from __future__ import annotations

import uuid
import xml.etree.ElementTree as ET
from urllib.parse import parse_qs

from aiohttp import ClientSession, web

SERVER_ERRORS = frozenset({"InsufficientInstanceCapacity", "InsufficientCapacity"})  # EC2 answers these with 500
_SKIP_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection"})


def error_xml(code: str, message: str) -> str:
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error><Code>{code}</Code>'
            f"<Message>{message}</Message></Error></Errors><RequestID>{uuid.uuid4()}</RequestID></Response>")


def _interrupt(body: bytes, instance_ids: set[str]) -> bytes:
    """Give the listed instances the state reason EC2 gives an instance ended by a spot interruption."""
    root = ET.fromstring(body)
    ns = root.tag.partition("}")[0] + "}" if root.tag.startswith("{") else ""  # the API version's namespace
    ET.register_namespace("", ns.strip("{}"))
    for item in root.iter(f"{ns}item"):
        if item.findtext(f"{ns}instanceId") not in instance_ids:
            continue
        reason = item.find(f"{ns}stateReason")
        if reason is None:
            reason = ET.SubElement(item, f"{ns}stateReason")
        for child in list(reason):
            reason.remove(child)
        ET.SubElement(reason, f"{ns}code").text = "Server.SpotInstanceTermination"
        ET.SubElement(reason, f"{ns}message").text = "Server.SpotInstanceTermination: Spot instance termination"
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


class Ec2Proxy:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.fail: dict[str, str] = {}  # instance type or subnet id -> the error code RunInstances gets
        self.interrupted: set[str] = set()
        self.runs: list[tuple[str, str | None, str]] = []
        self.actions: list[str] = []  # every API action, in order
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._http: ClientSession | None = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        form = {k: v[0] for k, v in parse_qs(body.decode(errors="replace")).items()}
        action = form.get("Action")
        self.actions.append(action or "")
        if action == "RunInstances":
            itype, subnet = form.get("InstanceType", ""), form.get("SubnetId")
            code = self.fail.get(itype) or (self.fail.get(subnet) if subnet else None)
            self.runs.append((itype, subnet, code or "ok"))
            if code:
                message = f"We currently do not have sufficient {itype} capacity in the zone of {subnet}."
                return web.Response(status=500 if code in SERVER_ERRORS else 400, text=error_xml(code, message),
                                    content_type="text/xml")
        assert self._http is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _SKIP_HEADERS}
        async with self._http.request(request.method, self.upstream + request.path_qs, data=body,
                                      headers=headers) as up:
            data = await up.read()
            if action == "DescribeInstances" and up.status == 200 and self.interrupted:
                data = _interrupt(data, self.interrupted)
            return web.Response(status=up.status, body=data, content_type=up.content_type)

    async def __aenter__(self) -> Ec2Proxy:
        self._http = ClientSession()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._http is not None:
            await self._http.close()
