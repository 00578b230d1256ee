"""Named instances: their directory, remembered ports, background process, pid file."""

from __future__ import annotations

import configparser
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from mailproxy import runstate
from mailproxy.cli.rest import Rest, not_running
from mailproxy.cli.trust import is_loopback_url, is_server_process
from mailproxy.cli.ui import FAILED, NOT_RUNNING, USAGE, CliError
from mailproxy.config import Settings, load_settings
from mailproxy.errors import ConfigError

RESERVED = frozenset({"serve", "start", "stop", "restart", "list", "help", "settings"})
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
FIRST_PORT, FIRST_SMTP_PORT = 8000, 2525
START_TIMEOUT_SECONDS = 30.0
# `make serve` keeps its data in ./data of the checkout; the CLI run from there finds it.
LOCAL_DATA_DIR = "data"
# Where `start` writes each remembered setting in config.ini.
SECTION_OF = {"host": "server", "port": "server", "db_path": "server", "smtp_port": "smtp"}


def home() -> Path:
    return Path.home() / ".mail-proxy"


def check_name(name: str) -> str:
    if name in RESERVED:
        raise CliError(f"{name!r} is a reserved word and cannot be an instance name", USAGE)
    if not _NAME.match(name):
        raise CliError(f"invalid instance name {name!r} (letters, digits, _ . -)", USAGE)
    return name


@dataclass(frozen=True, slots=True)
class Instance:
    name: str
    dir: Path

    @classmethod
    def named(cls, name: str) -> Instance:
        """GMP_DATA_DIR when set; else ./data when the instance there (`make serve`) has
        this name; else ~/.mail-proxy/NAME."""
        check_name(name)
        override = os.environ.get("GMP_DATA_DIR")
        if override:
            return cls(name, Path(override).expanduser())
        local = local_instance()
        if local is not None and local.name == name:
            return local
        return cls(name, home() / name)

    @property
    def config_path(self) -> Path:
        return self.dir / "config.ini"

    @property
    def pid_path(self) -> Path:
        return self.dir / "server.pid"

    @property
    def log_path(self) -> Path:
        return self.dir / "server.log"

    @property
    def token_path(self) -> Path:
        return self.dir / "api_token"

    def exists(self) -> bool:
        return self.dir.is_dir()

    @property
    def is_local(self) -> bool:
        return self.dir == Path.cwd() / LOCAL_DATA_DIR

    def url(self) -> str:
        """Where the running server listens: as it recorded at start (the port it bound,
        whatever flags or variables it was given), else as its configuration says."""
        state = runstate.read(self.dir)
        running = self.pid()
        if running is not None and state.get("pid") == running and state.get("url"):
            return str(state["url"])
        return base_url(self.settings())

    def settings(self) -> Settings:
        try:
            return load_settings({"instance": self.name, "data_dir": str(self.dir)})
        except ConfigError as exc:
            raise CliError(f"instance {self.name}: {exc}", FAILED) from None

    def pid(self) -> int | None:
        """The pid of the running server, or None (a stale pid file is ignored)."""
        try:
            pid = int(self.pid_path.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if _alive(pid) else None

    def admin_token(self, settings: Settings) -> str:
        if settings.api_token:
            return settings.api_token
        try:
            token = self.token_path.read_text(encoding="ascii").strip()
        except OSError:
            token = ""
        if not token:
            raise CliError(f"instance {self.name} has no admin token yet; start it with: "
                           f"{self.start_command}", NOT_RUNNING)
        return token

    @property
    def start_command(self) -> str:
        return "make serve" if self.is_local else f"mail-proxy start {self.name}"

    def rest(self) -> Rest:
        """A client for the running instance (exit 3 when there is none)."""
        if not self.exists():
            raise unknown_instance(self.name)
        settings = self.settings()
        url = self.url()
        refuse_remote(self.name, url)
        return Rest(url, self.admin_token(settings), self.name, self.start_command)

    def stale_reason(self) -> str | None:
        """Why a recorded server is not taken for running, in plain words, or None."""
        try:
            pid = int(self.pid_path.read_text().strip())
        except (OSError, ValueError):
            return None
        if _alive(pid):
            return None
        return f"{self.pid_path} names pid {pid}, which is no running mail-proxy serve"


def refuse_remote(name: str, url: str) -> None:
    """The admin token goes to this machine only: a data directory naming another host
    (perhaps an untrusted checkout's ./data) gets treated as no running instance."""
    if not is_loopback_url(url):
        raise CliError(f"instance {name} is not running here: its data directory names "
                       f"{url}, which is not a loopback address, and the admin token is "
                       "sent only to a server on this machine", NOT_RUNNING)


def unknown_instance(name: str) -> CliError:
    """No such instance: name the ones that exist rather than invite a second, empty one."""
    known = all_instances()
    if not known:
        return CliError(f"no instance named {name}; start one with `make serve` in a "
                        f"checkout (it is named default) or: mail-proxy start {name}",
                        NOT_RUNNING)
    names = ", ".join(i.name for i in known)
    return CliError(f"no instance named {name} (known here: {names}); see: mail-proxy list",
                    NOT_RUNNING)


def local_instance() -> Instance | None:
    """The instance of ./data in the current directory (`make serve`), named as it
    recorded when it last ran (`default` unless GMP_INSTANCE said otherwise)."""
    path = Path.cwd() / LOCAL_DATA_DIR
    if not runstate.is_data_dir(path):
        return None
    name = str(runstate.read(path).get("name") or "default")
    return Instance(name, path) if _NAME.match(name) and name not in RESERVED else None


def base_url(settings: Settings) -> str:
    host = settings.host
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.port}"


def _alive(pid: int) -> bool:
    """A live `mail-proxy serve` process; a pid that cannot be checked is not one."""
    return pid > 0 and is_server_process(pid)


def all_instances() -> list[Instance]:
    """./data of the current directory first (it shadows a home instance of its name),
    then ~/.mail-proxy/*."""
    local = local_instance()
    found = [] if local is None else [local]
    if home().is_dir():
        for path in sorted(home().iterdir()):
            if (path.is_dir() and _NAME.match(path.name) and path.name not in RESERVED
                    and (local is None or path.name != local.name)):
                found.append(Instance(path.name, path))
    return found


# -- config.ini ------------------------------------------------------------------------------

def _read_config(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None)
    if path.exists():
        try:
            parser.read(path, encoding="utf-8")
        except configparser.Error as exc:
            raise CliError(f"{path}: {exc}", FAILED) from None
    return parser


def config_values(path: Path) -> dict[str, str]:
    parser = _read_config(path)
    return {k: v for section in parser.sections() for k, v in parser.items(section)}


def remember(instance: Instance, values: dict[str, str]) -> None:
    """Write settings into config.ini, in the section that already holds each key."""
    parser = _read_config(instance.config_path)
    for key, value in values.items():
        section = next((s for s in parser.sections() if parser.has_option(s, key)),
                       SECTION_OF.get(key, "server"))
        if not parser.has_section(section):
            parser.add_section(section)
        parser.set(section, key, value)
    with instance.config_path.open("w", encoding="utf-8") as handle:
        parser.write(handle)


def _ports_of_other_instances(instance: Instance) -> set[int]:
    taken: set[int] = set()
    for other in all_instances():
        if other.dir == instance.dir:
            continue
        with contextlib.suppress(CliError):
            values = config_values(other.config_path)
            for key in ("port", "smtp_port"):
                if values.get(key, "").isdigit():
                    taken.add(int(values[key]))
    return taken


def free_port(host: str, first: int, avoid: set[int]) -> int:
    """The first port from `first` that nobody listens on and no other instance claims."""
    bind_host = "127.0.0.1" if host in ("", "localhost") else host
    for port in range(first, first + 1000):
        if port in avoid:
            continue
        with socket.socket(socket.AF_INET6 if ":" in bind_host else socket.AF_INET) as sock:
            try:
                sock.bind((bind_host, port))
            except OSError:
                continue
            return port
    raise CliError(f"no free port found from {first}", FAILED)


def plan_settings(instance: Instance, flags: dict[str, str | int | None]) -> dict[str, str]:
    """What `start` writes into config.ini: given flags, and ports picked on first start."""
    stored = config_values(instance.config_path)
    values = {k: str(v) for k, v in flags.items() if v is not None}
    host = str(values.get("host") or stored.get("host") or os.environ.get("GMP_HOST")
               or "127.0.0.1")
    avoid = _ports_of_other_instances(instance)
    if "port" not in values and "port" not in stored and not os.environ.get("GMP_PORT"):
        values["port"] = str(free_port(host, FIRST_PORT, avoid))
    if ("smtp_port" not in values and "smtp_port" not in stored
            and not os.environ.get("GMP_SMTP_PORT")):
        avoid.add(int(values.get("port") or stored.get("port") or 0))
        smtp_host = os.environ.get("GMP_SMTP_HOST") or stored.get("smtp_host") or "127.0.0.1"
        values["smtp_port"] = str(free_port(smtp_host, FIRST_SMTP_PORT, avoid))
    return values


# -- process ---------------------------------------------------------------------------------

def spawn(instance: Instance) -> subprocess.Popen[bytes]:
    """`mail-proxy serve NAME` in the background, detached, logging to server.log."""
    command = [sys.executable, "-m", "mailproxy", "serve", instance.name,
               "--data-dir", str(instance.dir)]
    with instance.log_path.open("ab") as log, open(os.devnull, "rb") as null:
        process = subprocess.Popen(
            command, stdin=null, stdout=log, stderr=log, start_new_session=True,
            close_fds=True,
        )
    instance.pid_path.write_text(f"{process.pid}\n", encoding="ascii")
    return process


def wait_healthy(instance: Instance, process: subprocess.Popen[bytes], url: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            instance.pid_path.unlink(missing_ok=True)
            raise CliError(f"instance {instance.name} did not start: {_last_log_line(instance)}"
                           f" (log: {instance.log_path})", FAILED)
        if _healthy(url):
            return
        time.sleep(0.1)
    raise CliError(f"instance {instance.name} did not answer /health within "
                   f"{START_TIMEOUT_SECONDS:.0f} s (log: {instance.log_path})", FAILED)


def _healthy(url: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=timeout) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, ConnectionError, OSError):
        return False


def _last_log_line(instance: Instance) -> str:
    try:
        lines = instance.log_path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return "no log"
    meaningful = [line for line in lines if line.strip()]
    return meaningful[-1].strip() if meaningful else "no log output"


def terminate(instance: Instance, pid: int, grace: float) -> bool:
    """SIGTERM, wait for the graceful shutdown, then SIGKILL. True if it had to be killed."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace + 5.0  # in-flight sends, then closing the store
    while time.monotonic() < deadline:
        if not _alive(pid):
            instance.pid_path.unlink(missing_ok=True)
            return False
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    for _ in range(50):
        if not _alive(pid):
            break
        time.sleep(0.1)
    instance.pid_path.unlink(missing_ok=True)
    return True


def require_running(instance: Instance) -> None:
    """Exit 3 early when there is no server (no pid file and nothing on the port)."""
    url = instance.url()
    refuse_remote(instance.name, url)
    if instance.pid() is None and not _healthy(url):
        raise not_running(instance.name, instance.stale_reason(), instance.start_command)


def foreign_server(port: int) -> str | None:
    """The URL of a mail-proxy on 127.0.0.1:port that no instance known here owns
    (typically `make serve` of a checkout, seen from another directory)."""
    url = f"http://127.0.0.1:{port}"
    if not _healthy(url, timeout=5.0):  # a busy server must not pass for none
        return None
    for instance in all_instances():
        with contextlib.suppress(CliError):
            if instance.pid() is not None and instance.url() == url:
                return None
    return url
