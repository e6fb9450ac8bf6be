"""A real network for the tests of this package: the clients in a network namespace of
their own, `chute serve` in another, joined by a veth pair (the test link) on link-local
addresses. The test link can be shaped (`tc ... tbf`; the netem qdisc is missing on
these kernels) and taken down for a while: a silent drop.

      client namespace                          server namespace
    chute upload, Chromium ── cli_dev ══ srv_dev ── chute serve, on 0.0.0.0:8000
                                                    │ (mgmt_srv)
    the test process (root namespace) ── mgmt_root ─┘

The test link is 169.254.N.0/29 (server .1, client .2, or .3 once renumbered), N drawn
per run. The test process reaches the server over a second veth pair, the management
link (169.254.N.8/30), which is never shaped nor taken down: through it the tests make
users, read an upload's state and a job's result while the test link is down. Shaping
applies to what the client sends (the upload direction); the server's answers are a few
hundred bytes. After each test the link is up and unshaped again, and nothing of the
test still runs in the client's namespace.

A drop takes the server's end of the test link down. Neither side then receives a
packet, so no RST or FIN reaches either: the server's route to the client is gone (what
it sends is dropped before the wire) and the client's end has no carrier (what it sends
is counted as dropped by its own end). To the client it is a black hole, as when a
laptop sleeps or a NAT on the way forgets it; `Link.counters` lets a test check it.

The tests are marked `net` (`pytest -m net` runs only them) and run in the normal suite.
They need root, iproute2 (`ip`, `tc`, `ss`) and the tbf qdisc. Without them they skip
with the reason; with CI set they fail instead, as `require_services` does.
Names are unique per run (`chnet-<pid>-<hex>-cli`) and a run first removes the
namespaces of earlier runs whose test process is gone, with what still runs in them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

from tests.client_support import user_env
from tests.conftest import Server

PORT = 8000  # inside the server's own namespace every port is free
NETNS_PREFIX = "chnet-"
_STALE = re.compile(rf"^{NETNS_PREFIX}(\d+)-[0-9a-f]+-(cli|srv)$")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "net: real-network tests (network namespaces, veth, tc); select with -m net"
    )


def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, check=check, timeout=30)


@cache
def netns_unavailable() -> str | None:
    """Why this machine cannot run the real-network tests, or None when it can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    missing = [tool for tool in ("ip", "tc", "ss") if shutil.which(tool) is None]
    if missing:
        return f"iproute2 is missing ({', '.join(missing)})"
    # A namespace with a veth pair and a tbf qdisc: everything the tests use, tried once.
    name = f"{NETNS_PREFIX}{os.getpid()}-{secrets.token_hex(3)}-cli"
    try:
        _run("ip", "netns", "add", name)
    except subprocess.CalledProcessError as exc:
        return f"`ip netns add` failed: {exc.stderr.strip()}"
    try:
        _run("ip", "-n", name, "link", "add", "probe0", "type", "veth", "peer", "name", "probe1")
        tbf = ("tc", "-n", name, "qdisc", "add", "dev", "probe0", "root", "tbf")
        _run(*tbf, "rate", "40mbit", "burst", "256kb", "latency", "50ms")
    except subprocess.CalledProcessError as exc:
        return f"no veth pair or tbf qdisc here: {exc.stderr.strip()}"
    finally:
        _run("ip", "netns", "del", name, check=False)
    return None


def require_netns() -> None:
    """Skip the calling test where namespaces cannot be made; in CI, fail it instead."""
    reason = netns_unavailable()
    if reason is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{reason}, and CI is set: the real-network tests must run", pytrace=False)
    pytest.skip(f"real-network tests: {reason}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_inside(netns: str) -> None:
    """Kill what still runs in a namespace of this harness (by pid), so it can go."""
    pids = _run("ip", "netns", "pids", netns, check=False).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)


def remove_stale_namespaces() -> None:
    """Namespaces left by a run whose test process was killed before its teardown."""
    listed = _run("ip", "-j", "netns", "list", check=False).stdout.strip()
    for entry in json.loads(listed or "[]"):
        match = _STALE.match(entry["name"])
        if match and not _pid_alive(int(match.group(1))):
            _kill_inside(entry["name"])
            _run("ip", "netns", "del", entry["name"], check=False)


def _free_octet() -> int:
    """A third octet for 169.254.N.0/24 that no route of the root namespace uses yet
    (another run's management link); never 169 (169.254.169.254 is the cloud's)."""
    routes = _run("ip", "-4", "route", "show", "table", "all").stdout
    for _ in range(100):
        octet = secrets.choice([n for n in range(1, 255) if n != 169])
        if f"169.254.{octet}." not in routes:
            return octet
    raise RuntimeError("no free 169.254.N.0/24 for the test links")


@dataclass(frozen=True)
class Counters:
    rx_packets: int
    tx_packets: int
    tx_dropped: int


@dataclass(frozen=True)
class Connection:
    """One TCP connection as `ss` shows it, from the side of the namespace asked."""

    state: str
    send_q: int  # bytes sent but not yet acknowledged, or not yet sent
    local: str
    peer: str
    pid: int | None
    bytes_acked: int
    bytes_received: int


_SS_FIELD = re.compile(r"\b(bytes_acked|bytes_received):(\d+)")
_SS_PID = re.compile(r"pid=(\d+)")


@dataclass
class Link:
    """The two namespaces, the test link between them (169.254.N.0/29) and the management
    link (169.254.N.8/30)."""

    cli_ns: str
    srv_ns: str
    cli_dev: str
    srv_dev: str
    mgmt_root: str
    octet: int
    client_host: int = 2  # the client's address on the test link: 169.254.N.<client_host>

    @property
    def server_address(self) -> str:
        """The server on the test link: what the clients connect to."""
        return f"169.254.{self.octet}.1"

    @property
    def client_address(self) -> str:
        return f"169.254.{self.octet}.{self.client_host}"

    @property
    def mgmt_address(self) -> str:
        """The server on the management link: what the test process connects to."""
        return f"169.254.{self.octet}.10"

    def in_client(self, *command: str) -> list[str]:
        return ["ip", "netns", "exec", self.cli_ns, *command]

    def in_server(self, *command: str) -> list[str]:
        return ["ip", "netns", "exec", self.srv_ns, *command]

    def shape(self, rate: str, burst: str = "256kb") -> None:
        """Cap what the client sends to `rate` (tc's units: "40mbit")."""
        tbf = ("tc", "-n", self.cli_ns, "qdisc", "replace", "dev", self.cli_dev, "root", "tbf")
        _run(*tbf, "rate", rate, "burst", burst, "latency", "50ms")

    def unshape(self) -> None:
        _run("tc", "-n", self.cli_ns, "qdisc", "del", "dev", self.cli_dev, "root", check=False)

    def down(self) -> None:
        _run("ip", "-n", self.srv_ns, "link", "set", self.srv_dev, "down")

    def up(self) -> None:
        _run("ip", "-n", self.srv_ns, "link", "set", self.srv_dev, "up")

    def renumber_client(self) -> None:
        """Give the client another address on the test link, as a laptop gets on another
        network: its connections from the old address can never carry a byte again."""
        old = self.client_address
        self.client_host = 3 if self.client_host == 2 else 2
        _run("ip", "-n", self.cli_ns, "addr", "del", f"{old}/29", "dev", self.cli_dev)
        _run("ip", "-n", self.cli_ns, "addr", "add", f"{self.client_address}/29",
             "dev", self.cli_dev)  # fmt: skip

    def counters(self, side: str) -> Counters:
        """Packet counters of one end of the test link ("cli" or "srv")."""
        netns, dev = (self.cli_ns, self.cli_dev) if side == "cli" else (self.srv_ns, self.srv_dev)
        stats = json.loads(_run("ip", "-n", netns, "-s", "-j", "link", "show", "dev", dev).stdout)
        stats64 = stats[0]["stats64"]
        return Counters(
            stats64["rx"]["packets"], stats64["tx"]["packets"], stats64["tx"]["dropped"]
        )

    def connections(self, side: str) -> list[Connection]:
        """TCP connections between client and server on the test link, seen from one side."""
        netns = self.cli_ns if side == "cli" else self.srv_ns
        out = _run("ip", "netns", "exec", netns, "ss", "-HtinpO").stdout
        server = f"{self.server_address}:{PORT}"
        found = []
        for line in out.splitlines():
            cells = line.split()
            if len(cells) < 5 or server not in (cells[3], cells[4]):
                continue
            fields = dict(_SS_FIELD.findall(line))
            pid = _SS_PID.search(line)
            found.append(
                Connection(
                    state=cells[0],
                    send_q=int(cells[2]),
                    local=cells[3],
                    peer=cells[4],
                    pid=int(pid.group(1)) if pid else None,
                    bytes_acked=int(fields.get("bytes_acked", 0)),
                    bytes_received=int(fields.get("bytes_received", 0)),
                )
            )
        return found

    def server_pids(self) -> list[int]:
        return [int(p) for p in _run("ip", "netns", "pids", self.srv_ns).stdout.split()]


@contextlib.contextmanager
def network() -> Iterator[Link]:
    """Two fresh namespaces joined by the test link, the server's also by the management
    link; everything removed after, with whatever still runs inside."""
    require_netns()
    remove_stale_namespaces()
    tag = f"{os.getpid()}-{secrets.token_hex(3)}"
    short = secrets.token_hex(3)  # interface names have at most 15 characters
    octet = _free_octet()
    link = Link(
        cli_ns=f"{NETNS_PREFIX}{tag}-cli",
        srv_ns=f"{NETNS_PREFIX}{tag}-srv",
        cli_dev=f"cn{short}c",
        srv_dev=f"cn{short}s",
        mgmt_root=f"cn{short}m",
        octet=octet,
    )
    mgmt_srv = f"cn{short}n"
    cli, srv = link.cli_ns, link.srv_ns
    try:
        _run("ip", "netns", "add", cli)
        _run("ip", "netns", "add", srv)
        _run("ip", "link", "add", link.cli_dev, "netns", cli, "type", "veth",
             "peer", "name", link.srv_dev, "netns", srv)  # fmt: skip
        _run("ip", "link", "add", link.mgmt_root, "type", "veth",
             "peer", "name", mgmt_srv, "netns", srv)  # fmt: skip
        for netns, dev, address in (
            (cli, link.cli_dev, f"{link.client_address}/29"),
            (srv, link.srv_dev, f"{link.server_address}/29"),
            (srv, mgmt_srv, f"{link.mgmt_address}/30"),
        ):
            _run("ip", "-n", netns, "addr", "add", address, "dev", dev)
            _run("ip", "-n", netns, "link", "set", dev, "up")
        _run("ip", "addr", "add", f"169.254.{octet}.9/30", "dev", link.mgmt_root)
        _run("ip", "link", "set", link.mgmt_root, "up")
        for netns in (cli, srv):
            _run("ip", "-n", netns, "link", "set", "lo", "up")
        yield link
    finally:
        for netns in (cli, srv):
            _kill_inside(netns)
            _run("ip", "netns", "del", netns, check=False)
        _run("ip", "link", "del", link.mgmt_root, check=False)


@dataclass
class NetServer(Server):
    """A `chute serve` inside the server's namespace, on every address of it. The test
    process reaches it at `url` (the management link), the clients at `link_url`."""

    link: Link | None = None

    @property
    def url(self) -> str:
        assert self.link is not None
        return f"http://{self.link.mgmt_address}:{PORT}"

    @property
    def link_url(self) -> str:
        assert self.link is not None
        return f"http://{self.link.server_address}:{PORT}"

    def start(self, same_port: bool = False) -> None:
        assert self.link is not None
        self.port = PORT
        env = {**self.env, "CHUTE_HOST": "0.0.0.0", "CHUTE_PORT": str(PORT)}
        self.log_path = self.data_dir.parent / "serve.log"
        command = self.link.in_server(sys.executable, "-m", "chute", "serve", *self.args)
        with self.log_path.open("ab") as log:
            # `ip netns exec` execs the command: the pid and its group are the server's.
            self.process = subprocess.Popen(
                command,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir.parent,
                start_new_session=True,
            )
        if not self.answers(self.process):
            raise RuntimeError(f"chute serve did not answer in 30 s:\n{self.log()}")

    def held_lock_files(self) -> list[str]:
        """Part-lock files the server's processes hold open. A part is locked only while
        its lock file is open (an OFD lock on one byte of `uploads/<id>/locks`, released
        with the file), so with no chunk in flight this must be empty."""
        held = []
        for pid in self.link.server_pids() if self.link else []:
            with contextlib.suppress(FileNotFoundError, PermissionError):
                for fd in Path(f"/proc/{pid}/fd").iterdir():
                    with contextlib.suppress(FileNotFoundError):
                        target = os.readlink(fd)
                        if re.search(r"/uploads/[^/]+/locks( \(deleted\))?$", target):
                            held.append(f"pid {pid}: {target}")
        return held


@contextlib.contextmanager
def net_serving(base: Path, link: Link, **settings: str) -> Iterator[NetServer]:
    env = {
        **os.environ,
        "CHUTE_DATA_DIR": str(base / "data"),
        "CHUTE_MIN_FREE_BYTES": "0",
        **settings,
    }
    server = NetServer(data_dir=base / "data", env=env, link=link)
    try:
        server.start()
        yield server
    finally:
        server.close_clients()
        server.stop(kill=True)


def csv_file(path: Path, size: int, seed: int) -> Path:
    """A CSV of at least `size` bytes (whole rows), written a block of rows at a time:
    quick at 300 MB. Every block names its number, so a chunk stored in the wrong place
    or twice changes the file's SHA-256."""
    template = "".join(
        f"{i},name-{seed}-BLOCKNO-{i},{i * 7 % 1000}.{i % 100:02d}\n" for i in range(10_000)
    ).encode()
    with path.open("wb") as f:
        f.write(b"id,name,amount\n")
        written, number = 0, 0
        while written < size:
            block = template.replace(b"BLOCKNO", b"%07d" % number)
            f.write(block)
            written += len(block)
            number += 1
    return path


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def running(command: list[str], env: dict[str, str], log: Path) -> Iterator[Process]:
    """A process in a group of its own, its stdout and stderr in `log`; killed (the
    whole group) if still running at the end."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        yield Process(process, log)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@dataclass
class Process:
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait(self, timeout: float) -> int | None:
        """The exit status, or None when still running after `timeout` seconds."""
        try:
            return self.popen.wait(timeout=max(0.0, timeout))
        except subprocess.TimeoutExpired:
            return None


def chute_in_client(link: Link, *args: str) -> list[str]:
    """`chute ARGS` run in the client's namespace."""
    return link.in_client(sys.executable, "-m", "chute", *args)


def client_env(server: NetServer, home: Path, token: str) -> dict[str, str]:
    """A user's shell in the client's namespace: the server at its test-link address."""
    return {**user_env(server, home, token), "CHUTE_SERVER": server.link_url}


def upload_posts(log: str, job_id: int) -> list[int]:
    """The statuses the server's access log shows for the job's chunk requests."""
    line = re.compile(rf'"POST /api/job/{job_id}/upload-data HTTP/1\.1" (\d{{3}})\b')
    return [int(status) for status in line.findall(log)]


# The server's chunk size, which the web uploader takes: small enough that the drop test's
# files are a few chunks, big enough that a chunk takes seconds on its 80 Mbit/s link.
# The throttled test asks for 100 MiB chunks itself.
SERVER_CHUNK = 8 * 1024 * 1024


# Package-scoped: one pair of namespaces and one server for the package's tests (a server
# takes seconds to start). Each test shapes the link itself and uses users of its own.
@pytest.fixture(scope="package")
def link() -> Iterator[Link]:
    with network() as made:
        yield made


@pytest.fixture(scope="package")
def net_server(link: Link, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NetServer]:
    base = tmp_path_factory.mktemp("chute-net")
    with net_serving(base, link, CHUTE_CHUNK_SIZE=str(SERVER_CHUNK)) as server:
        yield server


@pytest.fixture(autouse=True)
def link_reset(link: Link) -> Iterator[None]:
    """After each test, even a failed one: the link up and unshaped, and whatever the test
    started in the client's namespace gone (a browser a killed script left, say)."""
    yield
    _kill_inside(link.cli_ns)
    link.up()
    link.unshape()
