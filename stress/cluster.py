"""Part 4, Redis Cluster failover: three masters with one replica each on loopback, a
write load through ``RedisStore`` on a ``RedisCluster`` client, one master killed with
SIGKILL, its replica promoted; how many acknowledged writes were lost?

Redis replicates asynchronously: a master acknowledges a write before its replica
has it, so a write acknowledged just before the master dies can be missing on the
replica that takes over.  On loopback the replica is usually a few microseconds
behind, so the window is tiny; the "lagging replica" runs widen it as a slow network
would: the replica replicates through a proxy (the master announces the proxy's
port) that stops passing the replication stream 0.3 s before the kill, while the
master goes on acknowledging writes.  Runs:

- plain ``RedisStore(client)``, replica in step: the loss is reported (may be 0);
- plain, lagging replica: the loss is reported (some are expected);
- ``RedisStore(client, wait_replicas=1, wait_timeout=1.0)``, lagging replica: a write
  is acknowledged only once a replica has it (Redis ``WAIT``), so 0 may be lost:
  an invariant.  A write no replica confirmed in time is a 503, not an ack.

And the cost per write of ``wait_replicas=1`` on a healthy cluster, against the
plain store on the same cluster.  Every run must recover: writes acknowledged
again once the replica is promoted, without a new client.

    python stress/cluster.py [--quick]
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import generic_session as gs
from stress.app import cluster_store, has_wait_replicas
from stress.common import POLL_INTERVAL, Invariants, RedisServer, arguments, workdir
from tests.helpers import RedisClusterNode

NODE_TIMEOUT_MS = 1000
WRITERS = 12
SESSIONS_PER_WRITER = 40  # spread over the three masters' slots
EXPIRE = 600.0


class Node(RedisServer):
    """A cluster-enabled redis-server whose bus port (port + 10000) is free too."""

    _pick_port = RedisClusterNode._pick_port


class Cluster:
    """Six nodes made into three masters with one replica each by ``redis-cli --cluster
    create``; ``start()`` returns once every node says ``cluster_state:ok`` and every
    replica is in sync."""

    def __init__(self, root: Path) -> None:
        self.nodes: list[Node] = []
        for i in range(6):
            path = root / f"node{i}"
            path.mkdir(parents=True)
            self.nodes.append(Node("redis-server", path, extra_args=[
                "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
                "--cluster-replica-validity-factor", "0"]))

    def admin(self, node: Node) -> Any:
        import redis

        return redis.Redis(host=node.host, port=node.port, socket_timeout=5,
                           decode_responses=True)

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        subprocess.run(["redis-cli", "--cluster", "create",
                        *[f"{n.host}:{n.port}" for n in self.nodes],
                        "--cluster-replicas", "1", "--cluster-yes"],
                       check=True, capture_output=True, timeout=60)
        self.wait(lambda: all(self.ok(node) for node in self.nodes)
                  and all(self.synced(node) for node in self.replicas()), "cluster ready")

    def wait(self, condition: Any, what: str, timeout: float = 30.0) -> float:
        started = time.monotonic()
        while not condition():
            if time.monotonic() - started > timeout:
                raise TimeoutError(f"{what} not reached within {timeout} s")
            time.sleep(POLL_INTERVAL)
        return time.monotonic() - started

    def ok(self, node: Node) -> bool:
        try:
            with self.admin(node) as client:
                return bool(client.cluster("info")["cluster_state"] == "ok")
        except Exception:
            return False

    def role(self, node: Node) -> str:
        with self.admin(node) as client:
            return str(client.info("replication")["role"])

    def synced(self, node: Node) -> bool:
        with self.admin(node) as client:
            return bool(client.info("replication").get("master_link_status") == "up")

    def replica_port(self, node: Node) -> int:
        with self.admin(node) as client:
            return int(client.info("replication").get("master_port", 0))

    def replicas(self) -> list[Node]:
        return [node for node in self.nodes if node.running and self.role(node) == "slave"]

    def pair(self) -> tuple[Node, Node]:
        """A master and its replica."""
        replica = self.replicas()[0]
        with self.admin(replica) as client:
            info = client.info("replication")
        port = int(info["master_port"])
        return next(n for n in self.nodes if n.port == port), replica

    def client(self, avoid: Node) -> Any:
        from redis.cluster import RedisCluster

        entry = next(n for n in self.nodes if n is not avoid)
        return RedisCluster(host=entry.host, port=entry.port, socket_timeout=0.5,
                            socket_connect_timeout=0.5)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


class LinkProxy:
    """A loopback TCP proxy in front of a master, through which its replica replicates.

    ``freeze()`` holds back what the master sends on replication links (a connection
    whose client sent ``REPLCONF``), as a slow or broken network would: the master
    goes on acknowledging writes that its replica never receives.  Everything else
    (the app's commands) passes through.
    """

    def __init__(self, upstream: int) -> None:
        import socket

        self.upstream = upstream
        self.frozen = threading.Event()
        self.held = 0
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(128)
        self.port: int = self.listener.getsockname()[1]
        self.sockets: list[Any] = []
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self) -> None:
        import socket

        while True:
            try:
                downstream, _ = self.listener.accept()
                upstream = socket.create_connection(("127.0.0.1", self.upstream))
            except OSError:
                try:
                    downstream.close()
                except (OSError, UnboundLocalError):
                    return
                continue
            for sock in (downstream, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sockets += [downstream, upstream]
            link = {"replication": False}
            threading.Thread(target=self.pump, args=(downstream, upstream, link, True),
                             daemon=True).start()
            threading.Thread(target=self.pump, args=(upstream, downstream, link, False),
                             daemon=True).start()

    def pump(self, source: Any, sink: Any, link: dict[str, bool], from_client: bool) -> None:
        try:
            while data := source.recv(65536):
                if from_client and b"REPLCONF" in data.upper():
                    link["replication"] = True
                if not from_client and link["replication"] and self.frozen.is_set():
                    self.held += len(data)  # never delivered: the master dies first
                    continue
                sink.sendall(data)
        except OSError:
            pass
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.close()

    def freeze(self) -> None:
        self.frozen.set()

    def close(self) -> None:
        self.listener.close()
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.close()


class Writers:
    """``WRITERS`` threads writing a fresh key per call through one store until stopped."""

    def __init__(self, store: gs.RedisStore) -> None:
        self.store = store
        self.stop = threading.Event()
        self.acked: list[list[tuple[str, str, str, float]]] = [[] for _ in range(WRITERS)]
        self.failed = [0] * WRITERS
        self.threads = [threading.Thread(target=self.run, args=(i,)) for i in range(WRITERS)]

    def run(self, index: int) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            id = f"session:w{index}s{n % SESSIONS_PER_WRITER}"
            key, value = f"k{n}", f"w{index}:{n}"
            try:
                self.store.set(id, key, value, EXPIRE)
            except gs.StoreError:
                self.failed[index] += 1
                time.sleep(0.01)  # a failing store: do not spin
                continue
            self.acked[index].append((id, key, value, time.monotonic()))

    def count(self) -> int:
        return sum(len(acked) for acked in self.acked)

    def __enter__(self) -> Writers:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join()


def failover(root: Path, inv: Invariants, name: str, wait: int, lag: float,
             quick: bool, measure: bool = False) -> None:
    cluster = Cluster(root / name.replace(" ", "-").replace(",", ""))
    try:
        cluster.start()
        master, replica = cluster.pair()
        if measure:  # on direct links, before any proxy
            with cluster.client(avoid=master) as direct:
                cost(direct, 300 if quick else 2000)
        proxy = None
        if lag:
            # The master announces the proxy's port: its replica reconnects through it.
            proxy = LinkProxy(master.port)
            with cluster.admin(master) as admin:
                admin.config_set("cluster-announce-port", proxy.port)
            cluster.wait(lambda: cluster.replica_port(replica) == proxy.port
                         and cluster.synced(replica), "replica linked through the proxy")
        client = cluster.client(avoid=master)
        store = cluster_store(client, wait, 1.0)
        with Writers(store) as writers:
            enough = 200 if quick else 500
            cluster.wait(lambda: writers.count() >= enough, "acknowledged writes")
            if proxy is not None:
                proxy.freeze()  # from now on the master acknowledges what its replica lacks
                time.sleep(lag)
            assert master.proc is not None
            master.proc.kill()
            master.proc.wait()
            master.proc = None
            killed = time.monotonic()
            took = cluster.wait(lambda: cluster.role(replica) == "master" and cluster.ok(replica),
                                "replica promoted")
            promoted = time.monotonic()
            acked_at_promotion = writers.count()
            cluster.wait(lambda: writers.count() >= acked_at_promotion + enough,
                         "writes acknowledged after the failover", 20)
        reader = cluster.client(avoid=master)
        acked = [write for writes in writers.acked for write in writes]
        lost = 0
        for id, key, value, _ in acked:
            got = reader.hget(id, key)
            if got is None or gs.decode_json(got) != value:
                lost += 1
        reader.close()
        client.close()
        if wait:
            inv.check(lost == 0, "acknowledged writes lost with wait_replicas",
                      f"{lost} of {len(acked)}")
        before = sum(1 for *_, when in acked if when < killed)
        print(f"  {name}: {len(acked)} writes acknowledged ({before} before the kill), "
              f"{sum(writers.failed)} refused (StoreError); replica promoted {took:.1f} s "
              f"after the SIGKILL; writes acknowledged again after it: "
              f"{sum(1 for *_, when in acked if when > promoted)}; "
              f"acknowledged writes lost: {lost}")
    finally:
        cluster.stop()
        if proxy is not None:
            proxy.close()


def cost(client: Any, writes: int) -> None:
    """Microseconds per write, one writer, plain and with wait_replicas=1 on the same
    cluster: rounds of each in turn, the fastest round of each kept (the least noisy
    figure on a shared machine)."""
    stores = {"plain": cluster_store(client, 0, 1.0),
              "wait_replicas=1": cluster_store(client, 1, 1.0)}
    best = dict.fromkeys(stores, float("inf"))
    rounds = 8
    for r in range(rounds):
        for label, store in stores.items():
            store.set("session:warm", "k", "v", EXPIRE)
            started = time.perf_counter()
            for n in range(writes // rounds):
                store.set(f"session:cost{n % 50}", f"k{r}.{n}", "v", EXPIRE)
            best[label] = min(best[label], (time.perf_counter() - started) / (writes // rounds))
    plain, waits = best["plain"] * 1e6, best["wait_replicas=1"] * 1e6
    print(f"  cost per write (one writer, {writes} writes each, healthy cluster): plain "
          f"{plain:.0f} us, wait_replicas=1 {waits:.0f} us (+{waits - plain:.0f} us, "
          f"{waits / plain:.1f}x)")


def main() -> None:
    args = arguments(__doc__.split("\n")[0])
    inv = Invariants("cluster")
    print("cluster: 3 masters + 1 replica each, one master SIGKILLed under "
          f"{WRITERS} writer threads, cluster-node-timeout {NODE_TIMEOUT_MS} ms")
    waits = has_wait_replicas()
    with workdir("cluster") as tmp:
        root = Path(tmp)
        if not args.quick:
            failover(root, inv, "plain, replica in step", 0, 0.0, args.quick)
        if not args.quick or not waits:
            failover(root, inv, "plain, lagging replica", 0, 0.3, args.quick)
        if waits:
            failover(root, inv, "wait_replicas=1, lagging replica", 1, 0.3, args.quick,
                     measure=True)
        else:
            print("  skipped: RedisStore has no wait_replicas yet")
    inv.exit()


if __name__ == "__main__":
    main()
