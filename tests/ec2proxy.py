"""A real HTTP proxy in front of moto's EC2 for what moto never answers: capacity errors and spot interruptions.

`async with Ec2Proxy(moto.url) as proxy:` then point the EC2 client at `proxy.url`. RunInstances for an instance
type or subnet in `proxy.fail` is answered with that EC2 error (the XML and HTTP status EC2 uses); instances in
`proxy.interrupted` read as ended by a spot interruption in DescribeInstances. Everything else goes to moto
unchanged. `proxy.runs` records every RunInstances: (instance type, subnet, "ok" or the error code), and
`proxy.actions` every API action, `proxy.forms` every RunInstances' parameters.

moto (5.2) has no placement groups: the proxy serves CreatePlacementGroup, DescribePlacementGroups (by name or
`tag:` filter) and DeletePlacementGroup itself (`proxy.groups`), refusing to delete a group that still holds an
instance not terminated through it (InvalidPlacementGroup.InUse), and records which group each RunInstances put
its instances in (`proxy.placed`). `proxy.short[instance type] = k` makes moto launch only k instances of a
RunInstances for that type, whatever its MinCount (a gang that came up partly; EC2 itself never does that).
"""

from __future__ import annotations

import uuid
import xml.etree.ElementTree as ET
from urllib.parse import parse_qs, urlencode

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


def _indexed(form: dict[str, str], prefix: str) -> list[str]:
    """`Prefix.1`, `Prefix.2`... in order."""
    return [form[k] for k in sorted((k for k in form if k.startswith(prefix + ".") and k[len(prefix) + 1:].isdigit()),
                                    key=lambda k: int(k[len(prefix) + 1:]))]


def _tags(form: dict[str, str]) -> dict[str, str]:
    keys = {k[: -len(".Key")]: v for k, v in form.items() if k.startswith("TagSpecification.1.Tag.") and
            k.endswith(".Key")}
    return {v: form.get(f"{k}.Value", "") for k, v in keys.items()}


def _ok(action: str, inner: str = "") -> web.Response:
    body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<{action}Response xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">'
            f"<requestId>{uuid.uuid4()}</requestId>{inner}</{action}Response>")
    return web.Response(status=200, text=body, content_type="text/xml")


def _group_xml(name: str, group: dict[str, object]) -> str:
    tags = "".join(f"<item><key>{k}</key><value>{v}</value></item>"
                   for k, v in group["tags"].items())  # type: ignore[attr-defined]
    return (f"<item><groupName>{name}</groupName><groupId>{group['id']}</groupId><strategy>{group['strategy']}"
            f"</strategy><state>available</state><tagSet>{tags}</tagSet></item>")


def _error(code: str, message: str) -> web.Response:
    return web.Response(status=400, text=error_xml(code, message), content_type="text/xml")


class Ec2Proxy:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.fail: dict[str, str] = {}  # instance type or subnet id -> the error code RunInstances gets
        self.interrupted: set[str] = set()
        self.runs: list[tuple[str, str | None, str]] = []
        self.actions: list[str] = []  # every API action, in order
        self.forms: list[dict[str, str]] = []  # every RunInstances' parameters
        self.short: dict[str, int] = {}  # instance type -> how many instances RunInstances makes at most
        self.groups: dict[str, dict[str, object]] = {}  # placement group name -> id, strategy, tags
        self.placed: dict[str, str] = {}  # instance id -> its placement group
        self.terminated: set[str] = set()  # instances terminated through the proxy
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._http: ClientSession | None = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        form = {k: v[0] for k, v in parse_qs(body.decode(errors="replace")).items()}
        action = form.get("Action")
        self.actions.append(action or "")
        if action in ("CreatePlacementGroup", "DescribePlacementGroups", "DeletePlacementGroup"):
            return self._group(action, form)
        if action == "TerminateInstances":
            self.terminated.update(_indexed(form, "InstanceId"))
        if action == "RunInstances":
            self.forms.append(form)
            itype, subnet = form.get("InstanceType", ""), form.get("SubnetId")
            code = self.fail.get(itype) or (self.fail.get(subnet) if subnet else None)
            self.runs.append((itype, subnet, code or "ok"))
            if code:
                message = f"We currently do not have sufficient {itype} capacity in the zone of {subnet}."
                return web.Response(status=500 if code in SERVER_ERRORS else 400, text=error_xml(code, message),
                                    content_type="text/xml")
            if (most := self.short.get(itype)) is not None and int(form.get("MaxCount", "1")) > most:
                body = urlencode({**form, "MinCount": str(most), "MaxCount": str(most)}).encode()
        assert self._http is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _SKIP_HEADERS}
        async with self._http.request(request.method, self.upstream + request.path_qs, data=body,
                                      headers=headers) as up:
            data = await up.read()
            if action == "DescribeInstances" and up.status == 200 and self.interrupted:
                data = _interrupt(data, self.interrupted)
            if action == "RunInstances" and up.status == 200 and (group := form.get("Placement.GroupName")):
                for iid in ET.fromstring(data).iter():
                    if iid.tag.endswith("instanceId") and iid.text:
                        self.placed[iid.text] = group
            return web.Response(status=up.status, body=data, content_type=up.content_type)

    def _group(self, action: str, form: dict[str, str]) -> web.Response:
        name = form.get("GroupName", "")
        if action == "CreatePlacementGroup":
            if name in self.groups:
                return _error("InvalidPlacementGroup.Duplicate", f"The Placement Group '{name}' already exists.")
            self.groups[name] = {"id": f"pg-{uuid.uuid4().hex[:17]}", "strategy": form.get("Strategy", ""),
                                 "tags": _tags(form)}
            return _ok(action, f"<return>true</return><placementGroup>{_group_xml(name, self.groups[name])[6:-7]}"
                               "</placementGroup>")
        if action == "DeletePlacementGroup":
            if name not in self.groups:
                return _error("InvalidPlacementGroup.Unknown", f"The Placement Group '{name}' is unknown.")
            held = [i for i, g in self.placed.items() if g == name and i not in self.terminated | self.interrupted]
            if held:
                return _error("InvalidPlacementGroup.InUse", f"The placement group '{name}' is in use.")
            del self.groups[name]
            return _ok(action, "<return>true</return>")
        names = set(_indexed(form, "GroupName"))
        wanted = {form[k[: -len(".Name")] + ".Value.1"]: form[k][len("tag:"):] for k in form
                  if k.startswith("Filter.") and k.endswith(".Name") and form[k].startswith("tag:")}
        found = [(n, g) for n, g in sorted(self.groups.items()) if (not names or n in names)
                 and all(g["tags"].get(key) == value for value, key in wanted.items())]  # type: ignore[attr-defined]
        return _ok(action, f"<placementGroupSet>{''.join(_group_xml(n, g) for n, g in found)}</placementGroupSet>")

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
