"""A private Postfix instance on loopback, relaying everything to one loopback port.

It has its own config_directory, queue_directory and data_directory in a temporary dir, so
it never touches the system's Postfix; it listens on 127.0.0.1:<free port> and relays every
accepted message to [127.0.0.1]:<relay port> (never off loopback). Its queue is Postfix's
default durable queue (one fsync per message). Used by the Postfix relay tests and by
bench/compare.py.

    with PrivatePostfix(relay_port=sink.port, extra_main={...}) as postfix:
        ... connect to 127.0.0.1:postfix.port ...
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

POSTFIX = "/usr/sbin/postfix"
DAEMONS = "/usr/lib/postfix/sbin"

# service type private unpriv chroot wakeup maxproc command
_MASTER = """\
{listen} inet n - n - - smtpd
pickup unix n - n 60 1 pickup
cleanup unix n - n - 0 cleanup
qmgr unix n - n 300 1 qmgr
rewrite unix - - n - - trivial-rewrite
bounce unix - - n - 0 bounce
defer unix - - n - 0 bounce
trace unix - - n - 0 bounce
verify unix - - n - 1 verify
flush unix n - n 1000? 0 flush
proxymap unix - - n - - proxymap
smtp unix - - n - - smtp
relay unix - - n - - smtp
showq unix n - n - - showq
error unix - - n - - error
retry unix - - n - - error
discard unix - - n - - discard
local unix - n n - - local
anvil unix - - n - 1 anvil
scache unix - - n - 1 scache
postlog unix-dgram n - n - 1 postlogd
"""


def available() -> bool:
    return Path(POSTFIX).exists() and Path(DAEMONS, "master").exists()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PrivatePostfix:
    """Start with start() (or as a context manager); stop() ends it and removes its files."""

    def __init__(self, relay_port: int, extra_main: dict[str, str] | None = None) -> None:
        self.port = _free_port()
        self.relay_port = relay_port
        self.root = Path(tempfile.mkdtemp(prefix="mailproxy-postfix-"))
        self.root.chmod(0o755)  # the postfix user walks into its queue below
        self.config = self.root / "conf"
        self.queue = self.root / "queue"
        self.log = self.root / "maillog"
        self.extra_main = extra_main or {}

    def main_cf(self) -> dict[str, str]:
        return {
            "compatibility_level": "3.6",
            "queue_directory": str(self.queue),
            "data_directory": str(self.root / "data"),
            "command_directory": "/usr/sbin",
            "daemon_directory": DAEMONS,
            "meta_directory": "/etc/postfix",
            "shlib_directory": "/usr/lib/postfix",
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "maillog_file": str(self.log),
            "maillog_file_prefixes": str(self.root),
            "myhostname": "postfix.test",
            "mydomain": "postfix.test",
            "myorigin": "postfix.test",
            "mydestination": "",
            "inet_interfaces": "loopback-only",
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "relayhost": f"[127.0.0.1]:{self.relay_port}",
            "smtpd_relay_restrictions": "permit_mynetworks, reject",
            "alias_maps": "",
            "alias_database": "",
            "local_recipient_maps": "",
            "smtp_tls_security_level": "none",
            "smtpd_tls_security_level": "none",
            "smtp_dns_support_level": "disabled",
            "biff": "no",
            **self.extra_main,
        }

    def start(self, timeout: float = 30) -> PrivatePostfix:
        self.config.mkdir()
        self.queue.mkdir(mode=0o755)
        (self.config / "main.cf").write_text(
            "".join(f"{key} = {value}\n" for key, value in self.main_cf().items()))
        (self.config / "master.cf").write_text(_MASTER.format(listen=f"127.0.0.1:{self.port}"))
        self._postfix("start")
        deadline = time.monotonic() + timeout
        while not self._listening():
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"postfix did not listen on 127.0.0.1:{self.port}")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        pid_file = self.queue / "pid" / "master.pid"
        if pid_file.exists():
            subprocess.run([POSTFIX, "-c", str(self.config), "stop"],
                           capture_output=True, timeout=60, check=False)
            for _ in range(200):  # postfix stop returns before the master has exited
                if not pid_file.exists():
                    break
                time.sleep(0.05)
        shutil.rmtree(self.root, ignore_errors=True)

    def queued(self) -> int:
        """Messages still in the queue (not yet relayed)."""
        count = 0
        for name in ("incoming", "active", "deferred", "maildrop"):
            for _, _, files in os.walk(self.queue / name):
                count += len(files)
        return count

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def __enter__(self) -> PrivatePostfix:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _postfix(self, command: str) -> None:
        done = subprocess.run([POSTFIX, "-c", str(self.config), command],
                              capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:  # postfix logs to stderr only on a terminal; else to the log
            tail = self.log_text()[-2000:]
            raise RuntimeError(f"postfix {command} failed: {done.stderr.strip()} {tail}")

    def _listening(self) -> bool:
        with socket.socket() as sock:
            sock.settimeout(0.5)
            return sock.connect_ex(("127.0.0.1", self.port)) == 0
