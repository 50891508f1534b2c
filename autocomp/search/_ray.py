"""The Ray a search runs on: the caller's, an existing cluster joined by address, or an embedded local one.

A cluster joined by address gets the driver's autocomp package through Ray's ``runtime_env`` (its nodes need not
have it installed), and every node is checked, before any trial, to run the same Python, torch, timm and Ray as
the driver: other versions would give other numbers, or fail mid-search.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Sequence

from autocomp.config import Resources
from autocomp.errors import AutocompError
from autocomp.measure.placement import import_ray

__all__ = ["check_ray_address", "no_new_ray", "ray_running", "ray_session", "require_trial_resources",
           "require_same_versions", "trial_room", "search_ending", "check_cluster", "HeadWatch"]

VERSIONED = ("torch", "timm", "ray", "optuna", "safetensors")  # what must match the driver's on every node
PROBE_TIMEOUT_S = 600  # a loaded node can take minutes to start its first worker with the driver's package
# an HTTP/2 client's first bytes, then an empty SETTINGS frame: a gRPC server (Ray's GCS) answers with its SETTINGS
HTTP2_HELLO = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
HTTP2_SETTINGS = 4  # the frame type, a frame header's fourth byte
JOIN_PORT = "its port is 6379 unless ray start --head --port chose another"
HEAD_POLL_S = 1.0  # how often a search on a cluster checks that its head answers (a connection attempt)
HEAD_SILENT_S = 20.0  # a head silent this long is said to be lost (Ray ends the driver after 60 s by default)


@contextmanager
def ray_session(*, workers: int, ray_address: str | None, log: Callable[[str], None] = print,
                modules: Sequence[Path] = ()) -> Iterator[None]:
    """Ray for the duration of the block: the caller's, if Ray is already initialized in this process; else joined
    at ``ray_address`` or started embedded, and shut down on exit. ``ray_address`` is one that
    :func:`check_ray_address` took (:func:`~autocomp.search.run_search` checks it first thing, before any load).
    ``modules``: Python modules (a ``.py`` file or a package's folder) the workers import that their Python does not
    find on its own (a factory's module beside the job file): their folders are put at the end of the workers'
    ``sys.path`` on an embedded Ray (as the driver's: :func:`worker_path`), and the modules are sent to every node of a
    cluster joined by address (Ray's ``py_modules``: the module alone, not the folder's other files).

    Raises:
        AutocompError: a cluster that cannot be joined, or one whose nodes run other versions than the driver.
    """
    ray = import_ray()
    if ray.is_initialized():
        running = ray.get_runtime_context().gcs_address
        log(f"Ray: the one already initialized in this process ({running}); it stays up after the search")
        if modules:
            log(f"note: its workers import {', '.join(Path(m).name for m in modules)} only if they find it on their "
                "own: start it with ray.init(runtime_env={'py_modules': [...]}) naming it, or let the search start "
                "its own Ray")
        if ray_address:
            require_same_versions()
        yield
        return
    stop = signal.getsignal(signal.SIGTERM)  # ray.init sets its own (sys.exit): the caller's own stays
    try:  # an interrupt while Ray starts too: what it started so far is stopped
        try:
            with _ctrl_c_held(log, "starts"):  # then raised, Ray up: ray.shutdown() stops it whole
                _start_ray(ray, ray_address, workers, modules)
        except ConnectionError as exc:
            raise AutocompError(f"cannot join the Ray cluster at {ray_address!r}: {exc}; check the address "
                                "(ray status shows it), set RAY_AUTH_MODE=token here if the cluster was started "
                                "with it (with the cluster's token in RAY_AUTH_TOKEN or ~/.ray/auth_token, set "
                                "before the process starts), or give no Ray address (no --ray-address) for an "
                                "embedded local Ray") from None
        finally:  # the default handler too: a process forked later (OpenVINO's telemetry forks one per event and
            # terminates it) would inherit Ray's C++ one, which can deadlock there and outlive the search
            if stop is not None and threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGTERM, stop)
        if ray_address:
            require_same_versions()
            log(f"Ray: joined the cluster at {ray.get_runtime_context().gcs_address}: {_nodes()}")
        global _WATCH
        _WATCH = watch = HeadWatch(ray.get_runtime_context().gcs_address, log, raylet=_own_raylet(),
                                   embedded=not ray_address)
        watch.start()
        try:
            yield
        finally:
            watch.stop.set()
            watch.join(timeout=3 * watch.every_s)  # a look in flight ends before Ray is shut down, unsaid
            _WATCH = None
    finally:
        with _ctrl_c_held(log, "stops"):  # an impatient second Ctrl-C leaves it half stopped otherwise
            ray.shutdown()


@contextmanager
def no_new_ray() -> Iterator[None]:
    """Ray's auto-connect off while the block runs: a Ray API called in it with no Ray initialized raises, instead of
    starting a Ray. Tune's thread runs in it: a call it made as the search's Ray was being shut down started a new Ray
    from that thread, and Ray ties its processes to the thread that started them (``PR_SET_PDEATHSIG``): they were
    killed as the thread ended, the process still counted that Ray initialized, and the next search in the process
    took it, waited a minute on its head, and Ray ended the process (seen in the test suite).
    ``RAY_ENABLE_AUTO_CONNECT=0`` does the same where it is set before Ray is imported (the command line sets it)."""
    try:
        from ray._private import auto_init_hook
    except ImportError:  # another Ray than this one's: its own behaviour
        yield
        return
    before = getattr(auto_init_hook, "enable_auto_connect", None)
    if before is None:
        yield
        return
    auto_init_hook.enable_auto_connect = False
    try:
        yield
    finally:
        auto_init_hook.enable_auto_connect = before


def _start_ray(ray, ray_address: str | None, workers: int, modules: Sequence[Path]) -> None:
    if ray_address:
        ray.init(address=ray_address, log_to_driver=False, logging_level="ERROR",
                 runtime_env={"py_modules": [_package_dir(), *map(str, modules)], "excludes": ["__pycache__"]})
    else:
        # "local": a Ray of our own, even where `ray start` left a cluster (or its address file) here
        folders = os.pathsep.join(dict.fromkeys(str(Path(m).parent) for m in modules))
        ray.init(address="local", num_cpus=max(workers, os.cpu_count() or 1), include_dashboard=False,
                 log_to_driver=False, logging_level="ERROR",
                 runtime_env={"env_vars": {WORKER_PATH: folders},
                              "worker_process_setup_hook": f"{__name__}.worker_path"} if modules else None)


@contextmanager
def _ctrl_c_held(log: Callable[[str], None], doing: str) -> Iterator[None]:
    """Ctrl-C held while the block runs (Ray's start, or its stop: ``doing``), then raised as the handler before
    would have: a KeyboardInterrupt inside ``ray.init`` leaves Ray's core worker made but not marked as started,
    which ``ray.shutdown()`` does not stop, and the process's next ``ray.init`` aborts the process (a notebook's
    kernel dies). A second Ctrl-C is raised at once (a Ray that does not start). Only in the main thread, and where
    Python handles SIGINT (not where it is ignored)."""
    handler = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or not callable(handler):
        yield
        return
    held: list[int] = []

    def hold(signum: int, frame: object) -> None:
        if held:  # the second: now
            signal.signal(signal.SIGINT, handler)
            handler(signum, frame)
            return
        held.append(signum)
        log(f"interrupted while Ray {doing}: stopping once it has (Ctrl-C again to stop now, after which this "
            "process may not start Ray again)")

    signal.signal(signal.SIGINT, hold)
    try:
        yield
    finally:
        if signal.getsignal(signal.SIGINT) is hold:
            signal.signal(signal.SIGINT, handler)
    if held:
        handler(signal.SIGINT, None)


def _own_raylet() -> str | None:
    """HOST:PORT of the raylet of the node this process joined the cluster on (None where Ray does not say)."""
    ray = import_ray()
    node_id = ray.get_runtime_context().get_node_id()
    own = next((node for node in ray.nodes() if node.get("NodeID") == node_id), None)
    if own is None or not own.get("NodeManagerAddress") or not own.get("NodeManagerPort"):
        return None
    return f"{own['NodeManagerAddress']}:{own['NodeManagerPort']}"


def _nodes() -> str:
    """The cluster's live nodes and what they hold, as the log says them: '2 nodes (3 CPUs, 1 GPU)'."""
    import ray

    alive = [node for node in ray.nodes() if node.get("Alive")]
    held = {key: sum(node.get("Resources", {}).get(key, 0) for node in alive) for key in ("CPU", "GPU")}
    return (f"{len(alive)} node{'s' if len(alive) != 1 else ''} ({held['CPU']:g} CPUs"
            + (f", {held['GPU']:g} GPUs" if held["GPU"] else "") + ")")


class HeadWatch(threading.Thread):
    """Says, once, that the Ray this search runs on stopped: the raylet of the node this process joined on, or the
    cluster's head (its GCS), refuses connections (nothing listens there: said at once, as Ray ends the driver's
    process within seconds of losing its raylet (a minute where its head went with it): ``ray stop`` on the driver's
    machine stops the raylet seconds before the GCS), or the head has not answered for ``silent_s`` (its machine
    lost: Ray ends the driver's process a minute after it loses the head, ``gcs_rpc_server_reconnect_timeout_s``).
    Ray's own end of the process says nothing of the search, so the search's user learns first what is kept and how
    to resume. Polls every ``every_s`` until ``stop`` is set. ``embedded``: the search's own Ray, which ``ray stop``
    on this machine stops too (it stops every Ray here)."""

    def __init__(self, gcs_address: str, log: Callable[[str], None], *, raylet: str | None = None,
                 every_s: float = HEAD_POLL_S, silent_s: float = HEAD_SILENT_S, embedded: bool = False) -> None:
        super().__init__(name="autocomp-head-watch", daemon=True)
        self.address, self.raylet, self.log, self.every_s, self.silent_s = gcs_address, raylet, log, every_s, silent_s
        self.embedded = embedded
        self.stop = threading.Event()

        self.said, self._lock, self._since = False, threading.Lock(), None

    def run(self) -> None:
        while not self.stop.wait(self.every_s) and not self.check():
            pass

    def check(self) -> bool:
        """One look at the raylet and the head (the poll's, or at once where a trial's worker died: Ray may end
        the process before the next poll); True once it has said they stopped."""
        import sys

        with self._lock:
            if self.said or self.stop.is_set():
                return True
            head, own = _split(self.address), _split(self.raylet) if self.raylet else None
            if head is None:
                return True  # nothing to watch
            if own is not None and _refused(own, self.every_s):
                where, soon = f"its raylet at {self.raylet}", True
                what = f"the Ray node this search runs on ({where}) stopped"
            else:
                soon = _refused(head, self.every_s)  # True: refused; None: no answer
                if soon is False:
                    self._since = None
                    return False
                self._since = time.monotonic() if self._since is None else self._since
                if soon is None and time.monotonic() - self._since < self.silent_s:
                    return False
                where = f"its head at {self.address}"
                what = f"the Ray cluster's head at {self.address} " + (
                    "refuses connections (stopped)" if soon else
                    f"has not answered for {self.silent_s:g} s (stopped, or its machine lost)")
            if self.stop.is_set():  # the search ended (or is being stopped) while this look ran: Ray's own end
                return True
            if self.embedded:  # on this machine: stopped or killed, not lost
                self.log(f"warning: this search's own Ray ({where}) stopped or was killed (`ray stop` on this machine "
                         "stops every Ray here, this one too); Ray ends this search within a minute: the trials done "
                         "are kept in the run folder, and the same command resumes them, on a Ray of its own again")
            else:
                self.log(f"warning: {what}; "
                         + ("Ray ends this search within a minute" if soon
                            else "unless it answers again, Ray ends this search a minute after losing it")
                         + ": the trials done are kept in the run folder, and the same command resumes them once the "
                         "cluster runs again (or with no Ray address, on an embedded Ray)")
            sys.stdout.flush()  # Ray's end of the process flushes nothing
            self.said = True
            return True


_WATCH: HeadWatch | None = None  # the watch of the Ray this process runs its search on (joined or its own)


def search_ending() -> None:
    """The search is stopping (interrupted, terminated, failed): its Ray going down now is no news to say."""
    if (watch := _WATCH) is not None:
        watch.stop.set()


def ray_gone(timeout_s: float = 0.5) -> bool:
    """Whether the Ray this search runs on refuses connections now (its raylet or its head stopped: a SIGTERM to
    the search's process group ends them with it); Ray calls then wait a minute for it, and Ray ends the process."""
    if (watch := _WATCH) is None:
        return False
    return any(address is not None and _refused(address, timeout_s) is True
               for address in (_split(watch.address), _split(watch.raylet) if watch.raylet else None))


def check_cluster() -> None:
    """Where a search runs on a Ray it joined by address or started: look at once whether that Ray stopped (a
    trial's worker just died), and say so (:class:`HeadWatch`)."""
    if (watch := _WATCH) is not None:
        watch.check()


def _split(address: str) -> tuple[str, int] | None:
    """(host, port) of HOST:PORT as Ray writes it (an IPv6 host in brackets, or not); None if it has no port."""
    host, _, port = address.rpartition(":")
    return (host.strip("[]"), int(port)) if port.isdigit() else None


def _refused(address: tuple[str, int], timeout: float) -> bool | None:
    """Whether a connection to ``address`` is refused (nothing listens: True), made (False), or neither (timed out
    or unreachable: None)."""
    import socket

    try:
        socket.create_connection(address, timeout=timeout).close()
        return False
    except ConnectionRefusedError:
        return True
    except OSError:
        return None


def ray_running() -> bool:
    """Whether this process has initialized Ray itself (a search then runs on that Ray, with its nodes); Ray is not
    imported to find out."""
    import sys

    return "ray" in sys.modules and sys.modules["ray"].is_initialized()


def check_ray_address(ray_address: str | None) -> None:
    """Refuse, before anything is computed, a ``ray_address`` the search cannot run on.

    Raises:
        AutocompError: a Ray Client (``ray://``) address; one that is not ``auto`` nor HOST:PORT; a HOST:PORT where
            nothing answers, or something other than a Ray head (Ray would retry it for minutes, after the data and
            the baseline loaded); Ray already initialized in this process on another cluster than ``ray_address``,
            or on one whose head is gone (stopped or killed: the search would wait a minute on it, and Ray end the
            process, a notebook's kernel with it).
    """
    if ray_running():  # the caller's Ray: is it there still?
        running = import_ray().get_runtime_context().gcs_address
        if (head := _split(running)) is not None and _refused(head, 2.0) is True:
            raise AutocompError(f"the Ray initialized in this process ({running}) is not running any more: its head "
                                "refuses connections (stopped, or killed); call ray.shutdown() before the search, "
                                "which then starts a Ray of its own" + (f" or joins {ray_address}" if ray_address
                                                                         else ""))
    if not ray_address:
        return
    if ray_address.startswith("ray://"):
        raise AutocompError(f"Ray address {ray_address} (--ray-address): Ray Client (ray://) addresses are not "
                            "supported, the search keeps its study in a local file next to the driver; run autocomp "
                            "on a node of the cluster (e.g. with ray job submit) and pass the head's HOST:PORT")
    ray = import_ray()
    if ray.is_initialized():
        if not _same_address(ray_address, running := ray.get_runtime_context().gcs_address):
            raise AutocompError(f"the Ray address {ray_address} is not that of the Ray already initialized in this "
                                f"process ({running}); call ray.shutdown() before the search to join {ray_address}, "
                                f"or pass {running} (or no address) to search on the Ray already there")
        return
    if ray_address not in ("auto", "local"):  # auto: Ray finds the cluster on this machine itself, or says at once
        # there is none; local: an embedded Ray, as with no address
        host, port = _host_port(ray_address)
        _require_ray_head(ray_address, host, port)
        _require_head_where_ray_looks(ray_address, host, port)


def _require_head_where_ray_looks(ray_address: str, host: str, port: int, timeout_s: float = 2.0) -> None:
    """Ray joins a loopback address (127.0.0.1, localhost, ::1) at this machine's own address instead, unless
    ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` was set when it was imported: a head listening on loopback alone (started
    with that variable, as one kept off the network is) is then never reached, and ray.init retries without end,
    deaf to Ctrl-C. Refused here, saying so."""
    import ipaddress
    import socket

    from ray.util import get_node_ip_address

    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    looks_at = get_node_ip_address() if loopback else host
    if looks_at == host:
        return
    try:
        socket.create_connection((looks_at, port), timeout=timeout_s).close()
    except OSError:
        fix = ("start the head on 127.0.0.1 (ray start --head --node-ip-address=127.0.0.1)" if _ray_on_loopback() else
               "set RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 before Python starts (export it, as where the head was "
               "started: Ray reads it once, when first imported, and `import autocomp.search` imports Ray), so that "
               "Ray stays on loopback, or give the head's other address")
        raise AutocompError(f"Ray address {ray_address} (--ray-address): Ray would join it at this machine's address "
                            f"{looks_at}:{port}, where the head does not listen (it listens on loopback alone); "
                            f"{fix}") from None


def _ray_on_loopback() -> bool:
    """Whether Ray was imported with ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (set afterwards, Ray does not see it)."""
    try:
        from ray._private import ray_constants
    except ImportError:  # moved in another Ray: the variable as it reads now
        return os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") == "0"
    return not getattr(ray_constants, "ENABLE_RAY_CLUSTER", True)


def _host_port(ray_address: str) -> tuple[str, int]:
    """The host and port of a HOST:PORT address (an IPv6 host in brackets: ``[::1]:6379``)."""
    host, _, port = ray_address.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not host or ":" in host or not port.isdigit() or not 0 < int(port) < 65536:  # ::1 is an IPv6 host
        raise AutocompError(f"Ray address {ray_address} (--ray-address): give the head's HOST:PORT, e.g. "
                            "10.0.0.5:6379 or [fd00::5]:6379 (the address ray start --head printed for other nodes "
                            f"to join; {JOIN_PORT}), or auto for the cluster started on this machine")
    return host, int(port)


def _require_ray_head(ray_address: str, host: str, port: int, timeout_s: float = 10.0) -> None:
    """Refuse a head address where nothing answers, or where what answers does not speak gRPC as Ray's GCS does
    (the dashboard's port, say): Ray itself would retry such an address for minutes."""
    import socket

    try:
        conn = socket.create_connection((host, port), timeout=timeout_s)
    except OSError as exc:
        reason = f"no answer within {timeout_s:.0f} s" if isinstance(exc, TimeoutError) else \
            (exc.strerror or str(exc) or type(exc).__name__)
        raise AutocompError(f"Ray address {ray_address} (--ray-address): nothing answers there ({reason}); start "
                            f"the cluster's head there (ray start --head --port={port}), check the address ray start "
                            "--head printed for other nodes to join, or give no Ray address (no --ray-address) for an "
                            "embedded local Ray") from None
    with conn:
        if _tls():  # a TLS head answers plain text with an alert: the connection is all that is checked
            return
        try:
            conn.sendall(HTTP2_HELLO)
            reply = conn.recv(9)
        except TimeoutError:
            said = f"nothing within {timeout_s:.0f} s"
        except OSError as exc:
            said = f"nothing ({exc.strerror or exc})"
        else:
            if len(reply) >= 4 and reply[3] == HTTP2_SETTINGS:
                return
            said = repr(reply) if reply else "nothing (it closed the connection)"
    raise AutocompError(f"Ray address {ray_address} (--ray-address): what answers there is not a Ray head (it does "
                        f"not speak gRPC; it said {said}); give the address ray start --head printed for other "
                        f"nodes to join ({JOIN_PORT}; the dashboard's 8265 and the Ray Client's 10001 are other ports)")


def _tls() -> bool:
    return os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true")


def _same_address(given: str, running: str) -> bool:
    """Whether ``given`` (``auto``, or HOST:PORT of a head) names the Ray whose GCS runs at ``running``."""
    import socket

    if given == "auto":  # the cluster on this machine: the one this process is connected to, if any
        return True

    def resolved(address: str) -> tuple[str, str]:
        host, _, port = address.rpartition(":")
        try:
            return socket.gethostbyname(host), port
        except OSError:  # a name this machine cannot resolve: compared as written
            return host, port

    return resolved(given) == resolved(running)


WORKER_PATH = "AUTOCOMP_WORKER_PATH"  # folders an embedded Ray's workers import from, after their own sys.path


def worker_path() -> None:
    """An embedded Ray's worker setup: the folders of ``WORKER_PATH`` at the end of ``sys.path``, where the driver
    has them (:func:`autocomp.models.create_model`), so that a module of the user's named like one Python has (a
    ``random.py`` beside the job file) hides none of it."""
    import sys

    for folder in os.environ.get(WORKER_PATH, "").split(os.pathsep):
        if folder and folder not in sys.path:
            sys.path.append(folder)


def _package_dir() -> str:
    import autocomp

    return os.path.dirname(autocomp.__file__)


def _versions() -> dict[str, str]:
    """Python's and the ``VERSIONED`` packages' versions in this process ("missing" for one not installed)."""
    import platform
    from importlib import metadata

    found = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "missing"
    return found


def require_same_versions() -> None:
    """Check that every alive node of the cluster runs the driver's Python and ``VERSIONED`` packages.

    Raises:
        AutocompError: names the node, the package, both versions and the fix.
    """
    ray = import_ray()
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    probe = ray.remote(num_cpus=0, max_retries=0)(_versions)
    nodes = [node for node in ray.nodes() if node.get("Alive")]
    refs = [probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)).remote()
            for node in nodes]
    mine = _versions()
    for node, ref in zip(nodes, refs):
        where = f"Ray node {node['NodeManagerAddress']} ({node['NodeID'][:12]})"
        try:
            theirs = ray.get(ref, timeout=PROBE_TIMEOUT_S)
        except ray.exceptions.GetTimeoutError:
            raise AutocompError(f"{where} did not run a task within {PROBE_TIMEOUT_S} s (no worker could start "
                                "there); check the node with ray status, or remove it from the cluster") from None
        except ray.exceptions.RayError as exc:
            last = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            raise AutocompError(f"{where} cannot run autocomp's code ({last}); install autocomp's dependencies "
                                "there (pip install autocomp) with the driver's versions") from None
        for name, version in mine.items():
            if theirs.get(name) != version:
                fix = f"run Python {version} there" if name == "python" else f"install {name}=={version} there"
                raise AutocompError(f"{where} has {name} {theirs.get(name)}, the driver {version}; {fix} (every "
                                    "node must compute what the driver would)")


def require_trial_resources(resources: Resources, *, ray_address: str | None) -> None:
    """Check, before any trial, that some node of the Ray cluster can hold one trial's CPUs and GPUs.

    Raises:
        AutocompError: what is missing, and how to fix it.
    """
    import torch

    if resources.gpu and ray_address is None and not torch.cuda.is_available():
        raise AutocompError(f"resources.gpu is {resources.gpu:g} but CUDA is not available on this machine "
                            "(torch.cuda.is_available() is False); set resources.gpu: 0, or pass --ray-address of "
                            "a cluster with GPU nodes")
    if trial_room(resources) > 0:
        return
    ray = import_ray()
    nodes = [node.get("Resources", {}) for node in ray.nodes() if node.get("Alive")]
    have = ", ".join(f"{node.get('CPU', 0):g} CPU + {node.get('GPU', 0):g} GPU" for node in nodes) or "no node"
    if resources.gpu and not any(node.get("GPU", 0) for node in nodes):
        raise AutocompError(f"resources.gpu is {resources.gpu:g} but no node of the Ray cluster has a GPU; set "
                            "resources.gpu: 0, or add a node with GPUs (ray start ... --num-gpus=N)")
    raise AutocompError(f"resources asks {resources.cpu} CPU + {resources.gpu:g} GPU per trial, but no node of the "
                        f"Ray cluster has that many (nodes: {have}); lower resources.cpu or resources.gpu")


def trial_room(resources: Resources) -> int:
    """How many trials of ``resources`` the alive nodes of the Ray cluster can hold at once."""
    room = 0
    for node in import_ray().nodes():
        if node.get("Alive"):
            have = node.get("Resources", {})
            fits = int(have.get("CPU", 0) // resources.cpu) if resources.cpu else 1 << 30
            if resources.gpu:
                fits = min(fits, int(have.get("GPU", 0) // resources.gpu))
            room += fits
    return room
