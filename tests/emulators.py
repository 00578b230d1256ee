"""Local GCS and Azure Blob emulators on 127.0.0.1 for offload tests: PyPI
gcp-storage-emulator (in this process) and npm azurite (a child process; `.ci/run`
installs it under AZURITE_PREFIX, default /tmp/azurite). Missing or failing to start, the
tests that need one are skipped, or fail when CI=true."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.relay import HOST, free_port

# Azurite's documented development account (public, the same in every installation).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = ("Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/"
               "KBHBeksoGMGw==")


def unavailable(message: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def wait_listening(port: int, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex((HOST, port)) == 0:
                return True
        time.sleep(0.1)
    return False


@dataclass(frozen=True, slots=True)
class Gcs:
    endpoint_url: str
    bucket: str


@pytest.fixture(scope="module")
def gcs() -> Iterator[Gcs]:
    try:
        from gcp_storage_emulator.server import create_server
    except ImportError:
        unavailable("gcp-storage-emulator is not installed")
    port = free_port()
    server = create_server(HOST, port, in_memory=True, default_bucket="offload")
    server.start()
    try:
        if not wait_listening(port):
            unavailable("gcp-storage-emulator did not start")
        yield Gcs(f"http://{HOST}:{port}", "offload")
    finally:
        server.stop()


@dataclass(frozen=True, slots=True)
class Azurite:
    port: int

    @property
    def blob_endpoint(self) -> str:
        return f"http://{HOST}:{self.port}/{AZURITE_ACCOUNT}"

    @property
    def connection_string(self) -> str:
        return (f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};"
                f"AccountKey={AZURITE_KEY};BlobEndpoint={self.blob_endpoint};")

    def service(self) -> Any:
        from azure.storage.blob import BlobServiceClient

        return BlobServiceClient.from_connection_string(self.connection_string)


@pytest.fixture(scope="module")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    prefix = Path(os.environ.get("AZURITE_PREFIX", "/tmp/azurite"))
    binary = prefix / "node_modules" / ".bin" / "azurite-blob"
    if not binary.exists():
        unavailable(f"azurite is not installed at {binary} (npm install --prefix {prefix} "
                    "azurite)")
    port = free_port()
    workdir = tmp_path_factory.mktemp("azurite")
    proc = subprocess.Popen(
        [str(binary), "--blobHost", HOST, "--blobPort", str(port), "--inMemoryPersistence",
         "--skipApiVersionCheck", "--disableTelemetry", "--silent"],
        cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        if not wait_listening(port):
            unavailable("azurite did not start")
        yield Azurite(port)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
