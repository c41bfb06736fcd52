"""A private local Redis Cluster for tests: 3 masters, no replicas, on free loopback ports.

    with LocalCluster() as cluster:
        client = redis.asyncio.RedisCluster.from_url(cluster.url, decode_responses=True)

or, in a test module, ``redis_cluster = cluster.cluster_fixture`` and ask for
``redis_cluster``: session scope, so the cluster starts once, on first use, and stops at the
end of the run (the module attribute's name is the fixture's name).

Every node is a ``redis-server`` of our own (the binary ``watcher.redis_server`` finds) in a
temp dir of its own, run with ``--cluster-enabled yes --cluster-config-file nodes.conf
--save '' --appendonly no``; ``redis-cli --cluster create ... --cluster-replicas 0
--cluster-yes`` joins them, and `start()` returns once every node's ``CLUSTER INFO`` says
``cluster_state:ok`` with all 16384 slots assigned and every node known. Each node's cluster
bus port (``--cluster-port``, Redis 7) comes from the OS too: the default, port + 10000, may
be taken, or beyond 65535 for a port from the ephemeral range.

The admin helpers (`owner`, `begin_migration`, `migrate_keys`, `finish_migration`) move one
slot by hand, step by step, the way ``redis-cli --cluster reshard`` does.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Iterator
from types import TracebackType
from typing import Any

import pytest
import redis
from redis.crc import key_slot

from watcher.redis_server import RedisServer, RedisServerError, find_redis_server, free_port

HOST = "127.0.0.1"


class ClusterError(RuntimeError):
    pass


def _call(port: int, *args: str | int, timeout: float = 2.0) -> Any:
    """One command on one node over a short-lived plain connection (no cluster routing)."""
    with redis.Redis(
        host=HOST,
        port=port,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        decode_responses=True,
    ) as node:
        return node.execute_command(*args)


class LocalCluster:
    """Start with `start()` or `with LocalCluster() as cluster:`. `url` is the first node's
    URL (a cluster client discovers the others from it), `ports` the client ports."""

    def __init__(self, masters: int = 3) -> None:
        if masters < 3:
            raise ValueError("redis-cli --cluster create needs at least 3 masters")
        self.masters = masters
        cli = shutil.which("redis-cli")
        if cli is None:
            raise ClusterError("redis-cli is not on PATH: it creates the cluster")
        self.cli = cli
        self.nodes: list[RedisServer] = []

    @property
    def ports(self) -> list[int]:
        return [node.port for node in self.nodes]

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def url_of(self, port: int) -> str:
        return f"redis://{HOST}:{port}/0"

    # -- lifecycle -------------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> LocalCluster:
        if self.nodes:
            return self
        deadline = time.monotonic() + timeout
        try:
            for _ in range(self.masters):
                self.nodes.append(self._node().start())
            self._create(deadline)
            self._wait_state_ok(deadline)
        except BaseException:
            self.stop()
            raise
        return self

    @staticmethod
    def _node() -> RedisServer:
        port = free_port()
        bus = free_port()  # the default, port + 10000, can land above 65535
        while bus == port:
            bus = free_port()
        cluster_mode = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
        return RedisServer(port=port, extra_args=[*cluster_mode, "--cluster-port", str(bus)])

    def _create(self, deadline: float) -> None:
        nodes = [f"{HOST}:{port}" for port in self.ports]
        command = [self.cli, "--cluster", "create", *nodes]
        command += ["--cluster-replicas", "0", "--cluster-yes"]
        try:
            done = subprocess.run(
                command,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=max(1.0, deadline - time.monotonic()),
            )
        except subprocess.TimeoutExpired:
            raise ClusterError("redis-cli --cluster create timed out") from None
        if done.returncode != 0:
            output = (done.stdout + done.stderr).strip()[-2000:]
            raise ClusterError(f"redis-cli --cluster create failed ({done.returncode}): {output}")

    def info(self, port: int) -> dict[str, str]:
        """CLUSTER INFO of one node."""
        text = str(_call(port, "CLUSTER", "INFO"))
        return dict(line.split(":", 1) for line in text.strip().splitlines() if ":" in line)

    def healthy(self, port: int) -> bool:
        info = self.info(port)
        return (
            info.get("cluster_state") == "ok"
            and info.get("cluster_slots_assigned") == "16384"
            and info.get("cluster_known_nodes") == str(self.masters)
        )

    def _wait_state_ok(self, deadline: float) -> None:
        for port in self.ports:
            while True:
                with contextlib.suppress(redis.RedisError):
                    if self.healthy(port):
                        break
                if time.monotonic() > deadline:
                    raise ClusterError(f"node {port} never reached cluster_state:ok")
                time.sleep(0.05)

    def stop(self) -> None:
        for node in self.nodes:
            node.cleanup()
        self.nodes = []

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- admin: who serves a key, moving a slot by hand --------------------------------------

    def node_id(self, port: int) -> str:
        return str(_call(port, "CLUSTER", "MYID"))

    def owner(self, key: str) -> int:
        """The client port of the node that serves `key`'s slot (as the first node sees it)."""
        slot = key_slot(key.encode())
        for line in str(_call(self.ports[0], "CLUSTER", "NODES")).splitlines():
            fields = line.split()
            for part in fields[8:]:
                if part.startswith("["):
                    continue  # a slot being migrated or imported: not a served range
                low, _, high = part.partition("-")
                if int(low) <= slot <= int(high or low):
                    return int(fields[1].split("@")[0].rsplit(":", 1)[1])
        raise ClusterError(f"no node serves slot {slot}")

    def keys_in_slot(self, port: int, slot: int) -> list[str]:
        return list(_call(port, "CLUSTER", "GETKEYSINSLOT", slot, 100_000))

    def begin_migration(self, slot: int, source: int, target: int) -> None:
        """Reshard step 1: the slot is importing on the target, migrating on the source."""
        _call(target, "CLUSTER", "SETSLOT", slot, "IMPORTING", self.node_id(source))
        _call(source, "CLUSTER", "SETSLOT", slot, "MIGRATING", self.node_id(target))

    def migrate_keys(self, source: int, target: int, keys: list[str]) -> None:
        """Reshard step 2, one batch: these keys move from the source to the target."""
        if keys:
            _call(source, "MIGRATE", HOST, target, "", 0, 5000, "KEYS", *keys)

    def finish_migration(self, slot: int, source: int, target: int) -> None:
        """Reshard step 3: the keys left move, then every node gives the slot to the target."""
        self.migrate_keys(source, target, self.keys_in_slot(source, slot))
        target_id = self.node_id(target)
        for port in (target, source, *(p for p in self.ports if p not in (source, target))):
            _call(port, "CLUSTER", "SETSLOT", slot, "NODE", target_id)


def cluster_unavailable() -> str | None:
    """Why a local cluster cannot be started here, or None when it can."""
    if shutil.which("redis-cli") is None:
        return "redis-cli is not on PATH"
    try:
        find_redis_server()
    except RedisServerError as exc:
        return str(exc)
    return None


@pytest.fixture(scope="session")
def cluster_fixture() -> Iterator[LocalCluster]:
    """One local cluster for the session; tests isolate by queue name (hash tag)."""
    with LocalCluster() as cluster:
        yield cluster
