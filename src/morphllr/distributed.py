"""Scoring in several processes or on several GPUs: contiguous shards, launch or join, gathers to rank 0.

``morphllr score`` and ``morphllr compare`` take ``--accelerator``, ``--devices`` and
``--num-nodes`` like ``morphllr train``.  This module owns everything about processes:

* :func:`resolve` checks those options and decides how to run (:class:`Plan`): one process;
  **spawn** the processes of this node itself (``--devices N`` on CPU: N processes joined by
  gloo; on GPUs one process per GPU, NCCL); or **join** processes someone else started -
  torchrun / ``torch.distributed.launch`` (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
  ``MASTER_ADDR``, ``MASTER_PORT``), SLURM ``srun`` (``SLURM_PROCID``, ``SLURM_NTASKS``,
  ``SLURM_LOCALID``; address and port chosen as Lightning does), Lightning's launcher
  (``LOCAL_RANK``, ``NODE_RANK``, ``WORLD_SIZE``) or an already initialised
  ``torch.distributed`` process group.  ``--num-nodes M`` without such a launcher starts
  this node's processes with global ranks ``NODE_RANK * devices + i``, as Lightning's own
  launcher does for ``morphllr train --num-nodes``.
* :func:`run_sharded` runs ``fn(ctx, *args)`` on every rank with a :class:`Context`: rank,
  world, device, CPU threads (the node's idle cores split between its processes), the
  shard of a set (:func:`shard_slices`: contiguous, in rank order) and the collectives
  the scoring needs: :meth:`Context.gather` (numpy arrays to rank 0, in rank order),
  :meth:`Context.sum`, :meth:`Context.exchange`.  Rank 0 alone writes outputs and
  returns the result; the others return None.

Every collective starts with a small status exchange, so an error on any rank (a NaN
image in its shard, a bug, a dead process) stops every rank at its next collective and
rank 0 raises the same one-line :class:`~morphllr.errors.MorphllrError` (or the remote
traceback for a bug) instead of hanging; a process that dies (out of memory) is one
error line too.  Spawned processes are fresh interpreters (``python -c``: safe with OpenMP
thread pools and CUDA, and the caller's script is never re-run), ignore Ctrl-C (the parent
stops them) and read their arguments pickled from a pipe (model weights and in-memory arrays
copied; image files, memory-mapped ``.npy`` arrays included, are reopened by name).  With an
existing process group every rank of it must make the call.
"""

from __future__ import annotations

import contextlib
import io
import mmap
import os
import pickle
import signal
import socket
import sys
import time
import traceback
import warnings
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from morphllr import runtime
from morphllr.data.imageset import ImageSet
from morphllr.errors import MorphllrError, MorphllrWarning
from morphllr.parallel import how_it_ended

#: largest ``--devices`` count (processes or GPUs per node)
MAX_DEVICES = 4096
#: a collective waiting longer than this is a hang (a crashed peer is noticed at once)
COLLECTIVE_TIMEOUT = timedelta(hours=2)
#: spawned processes must have imported torch and unpickled their arguments within this
START_TIMEOUT_S = 900.0
#: shards are aligned to whole batches when every rank gets at least this many batches
ALIGN_MIN_BATCHES = 4
_MESSAGE_BYTES = 8192
_HEADER_BYTES = 24  # kind, value, message length (3 x int64)
_OK, _USER, _MEMORY, _INTERRUPT, _BUG = 0, 1, 2, 3, 4
DEVICES_ERROR = ("give a number of processes/GPUs (1..4096), 'auto', -1 (all GPUs) or GPU indices such as 0,1")


# --------------------------------------------------------------------------- options
def parse_devices(value: int | str) -> int | str:
    """``--devices``: a positive count, ``auto``, ``-1`` (all GPUs) or a comma list of GPU indices.

    Args:
        value: the option's value (text from the command line, or an int).

    Returns:
        an int count, or the text ("auto", "-1", "0,1").
    """
    if isinstance(value, bool):
        raise MorphllrError(f"--devices {value!r}: {DEVICES_ERROR}")
    if isinstance(value, (int, np.integer)):
        if 1 <= int(value) <= MAX_DEVICES:
            return int(value)
        if int(value) == -1:
            return "-1"
        raise MorphllrError(f"--devices {value!r}: {DEVICES_ERROR}")
    text = str(value).strip()
    if text.isdigit() and 1 <= int(text) <= MAX_DEVICES:
        return int(text)
    if text in ("auto", "-1") or ("," in text and all(part.strip().isdigit() for part in text.split(","))):
        return text
    raise MorphllrError(f"--devices {value!r}: {DEVICES_ERROR}")


def parse_accelerator(text: str) -> str:
    """``--accelerator``: ``cpu``, ``cuda`` (``gpu`` is the same) or ``auto`` (CUDA when a GPU is visible).

    Returns:
        "cpu" or "cuda".
    """
    value = str(text).strip().lower()
    if value not in ("auto", "cpu", "cuda", "gpu"):
        raise MorphllrError(f"--accelerator {text!r}: choose cpu, cuda (or gpu) or auto")
    if value == "auto":
        return "cuda" if _cuda_count() > 0 else "cpu"
    if value == "cpu":
        return "cpu"
    if _cuda_count() == 0:
        import torch

        why = "this torch is built without CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
        raise MorphllrError(f"--accelerator {text}: {why} (torch {torch.__version__}); use --accelerator cpu "
                            "(with --devices N for N processes)")
    return "cuda"


def _cuda_count() -> int:
    import torch

    try:
        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except RuntimeError:
        return 0


# --------------------------------------------------------------------------- environments
@dataclass(frozen=True)
class Environment:
    """Processes started by someone else (a launcher, or a process group already initialised).

    Attributes:
        rank, world: global rank and number of processes.
        local_rank, local_world: rank and number of processes on this node.
        node_rank: this node's index.
        address, port: the rendezvous (rank 0's TCP store); unused for an existing group.
        source: who started the processes (for messages).
        existing_group: a ``torch.distributed`` default group is initialised already (used, never destroyed).
    """

    rank: int
    world: int
    local_rank: int
    local_world: int
    node_rank: int
    address: str | None
    port: int | None
    source: str
    existing_group: bool = False
    from_env: bool = False  # RANK / WORLD_SIZE / MASTER_* are in os.environ: init_method "env://" (torchrun's store)


def _env_int(name: str, default: int | None = None) -> int | None:
    text = os.environ.get(name, "").strip()
    return int(text) if text.lstrip("-").isdigit() else default


def _slurm_tasks_per_node() -> int | None:
    text = os.environ.get("SLURM_NTASKS_PER_NODE") or os.environ.get("SLURM_TASKS_PER_NODE") or ""
    digits = ""
    for ch in text:
        if not ch.isdigit():
            break
        digits += ch
    return int(digits) if digits else None


def detect_environment(local_devices: int | None = None) -> Environment | None:
    """The processes this one belongs to, when a launcher started several (None: a plain run).

    Order: an initialised ``torch.distributed`` group; ``RANK`` + ``WORLD_SIZE`` (torchrun,
    ``torch.distributed.launch``, the processes :func:`run_sharded` spawns, a manual start);
    Lightning's launcher (``LOCAL_RANK``, ``NODE_RANK``, ``WORLD_SIZE``: global rank =
    ``NODE_RANK * devices + LOCAL_RANK``); SLURM ``srun`` with several tasks (not in a job
    named ``bash`` / ``interactive``, as Lightning decides).  One process in all is a plain run.

    Args:
        local_devices: processes per node asked for (``--devices``), for Lightning's convention.

    Returns:
        an :class:`Environment`, or None.
    """
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        world, rank = dist.get_world_size(), dist.get_rank()
        local_world = _env_int("LOCAL_WORLD_SIZE", world)
        return Environment(rank, world, _env_int("LOCAL_RANK", rank % max(1, local_world)), local_world,
                           _env_int("GROUP_RANK", _env_int("NODE_RANK", 0)), None, None,
                           "the torch.distributed process group", existing_group=True)
    env = os.environ
    address, port = env.get("MASTER_ADDR"), _env_int("MASTER_PORT")
    if "RANK" in env and "WORLD_SIZE" in env:
        world, rank = _env_int("WORLD_SIZE", 1), _env_int("RANK", 0)
        local_world = _env_int("LOCAL_WORLD_SIZE", local_devices or world)
        source = "torchrun" if "TORCHELASTIC_RUN_ID" in env else "RANK/WORLD_SIZE"
        env_found = Environment(rank, world, _env_int("LOCAL_RANK", rank % max(1, local_world)), local_world,
                                _env_int("GROUP_RANK", _env_int("NODE_RANK", 0)), address, port, source,
                                from_env=True)
    elif "LOCAL_RANK" in env and "WORLD_SIZE" in env:
        world, local_rank = _env_int("WORLD_SIZE", 1), _env_int("LOCAL_RANK", 0)
        node = _env_int("NODE_RANK", _env_int("GROUP_RANK", 0))
        local_world = _env_int("LOCAL_WORLD_SIZE", local_devices or max(1, world))
        env_found = Environment(node * local_world + local_rank, world, local_rank, local_world, node,
                                address or "127.0.0.1", port, "Lightning's launcher (LOCAL_RANK/NODE_RANK)")
    elif (_env_int("SLURM_NTASKS", 1) or 1) > 1 and env.get("SLURM_JOB_NAME") not in ("bash", "interactive"):
        world, rank = _env_int("SLURM_NTASKS", 1), _env_int("SLURM_PROCID", 0)
        local_world = _slurm_tasks_per_node() or local_devices or 1
        if address is None:
            from lightning.fabric.plugins.environments import SLURMEnvironment  # the address training uses

            address = SLURMEnvironment.resolve_root_node_address(env.get("SLURM_NODELIST", "127.0.0.1"))
        if port is None:  # Lightning's rule: 15000 + the job id's last 4 digits
            job = env.get("SLURM_JOB_ID", "")
            port = 15000 + int(job[-4:]) if job[-4:].isdigit() else 12910
        env_found = Environment(rank, world, _env_int("SLURM_LOCALID", 0), local_world, _env_int("SLURM_NODEID", 0),
                                address, port, "SLURM (srun)")
    else:
        return None
    if env_found.world <= 1:
        return None
    if not 0 <= env_found.rank < env_found.world:
        raise MorphllrError(f"rank {env_found.rank} of {env_found.world} processes ({env_found.source}): the rank "
                            "must lie in 0..world size-1; check the launcher's RANK / WORLD_SIZE")
    if env_found.address is None or env_found.port is None:
        raise MorphllrError(f"{env_found.source}: {env_found.world} processes but MASTER_ADDR / MASTER_PORT are not "
                            "set; set both to rank 0's host and a free port on every process (torchrun does this)")
    return env_found


def launched_rank() -> int:
    """This process's global rank as told by a launcher or a process group (0 in a plain run).

    Used before any work to let only rank 0 claim the outputs.  On a node other than the first
    (``NODE_RANK`` > 0, ``--num-nodes``) the value is positive even before any process exists.
    """
    try:
        env = detect_environment()
    except MorphllrError:
        env = None
    if env is not None:
        return env.rank
    return max(0, _env_int("NODE_RANK", 0) or 0, _env_int("GROUP_RANK", 0) or 0)


# --------------------------------------------------------------------------- the plan
@dataclass(frozen=True)
class Plan:
    """How a sharded run is executed (see :func:`resolve`).

    Attributes:
        accelerator: "cpu" or "cuda".
        local_devices: processes on this node.
        num_nodes: nodes.
        gpu_ids: CUDA devices of this node's processes, in local-rank order (empty on CPU).
        environment: the launcher's processes to join, or None.
        backend: "gloo" (CPU) or "nccl" (CUDA).
        follow_models: one process and no accelerator asked for (library default): the models stay on
            their device, as before multi-process scoring existed.
    """

    accelerator: str
    local_devices: int
    num_nodes: int
    gpu_ids: tuple[int, ...]
    environment: Environment | None
    backend: str
    follow_models: bool = False  # accelerator None, one process: score where the models already are (no move)

    @property
    def world(self) -> int:
        return self.environment.world if self.environment is not None else self.local_devices * self.num_nodes

    @property
    def mode(self) -> str:
        """``"single"``, ``"spawn"`` (this process starts the others) or ``"join"`` (a launcher did)."""
        if self.environment is not None:
            return "join"
        return "single" if self.world == 1 else "spawn"


def resolve(devices: int | str = 1, accelerator: str | None = "auto", num_nodes: int = 1) -> Plan:
    """Check ``--devices`` / ``--accelerator`` / ``--num-nodes`` and decide how to run.

    CPU: ``--devices N`` = N processes on this node (``auto`` = 1).  CUDA: a count (GPUs
    0..N-1), ``auto`` / ``-1`` (all visible GPUs) or indices (``0,2``).  Under a launcher
    (:func:`detect_environment`) its processes are joined; ``--devices`` x ``--num-nodes`` must
    then be 1 (the default: follow the launcher) or the launcher's world size.

    Args:
        devices: processes (CPU) or GPUs per node.
        accelerator: "auto", "cpu", "cuda" or "gpu"; None (the library default) = "auto" for several
            processes, and for one process: wherever the models are (they are not moved).
        num_nodes: nodes.

    Returns:
        a :class:`Plan`; raises MorphllrError (one line naming the option) for impossible requests.
    """
    devices = parse_devices(devices)
    if isinstance(num_nodes, bool) or not isinstance(num_nodes, (int, np.integer)) \
            or not 1 <= int(num_nodes) <= 100_000:
        raise MorphllrError(f"--num-nodes {num_nodes!r}: give a whole number of nodes, 1..100000")
    num_nodes = int(num_nodes)
    accel = parse_accelerator("auto" if accelerator is None else accelerator)
    gpu_ids: tuple[int, ...] = ()
    if accel == "cpu":
        if devices == "auto":
            devices = 1
        if not isinstance(devices, int):
            raise MorphllrError(f"--devices {devices}: GPU indices and -1 (all GPUs) need --accelerator cuda; on the "
                                "CPU give a number of processes, e.g. --devices 2")
        local = devices
    else:
        count = _cuda_count()
        if devices in ("auto", "-1"):
            gpu_ids = tuple(range(count))
        elif isinstance(devices, int):
            if devices > count:
                raise MorphllrError(f"--devices {devices}: only {count} CUDA GPU(s) are visible; give at most "
                                    f"{count} (or 'auto' for all)")
            gpu_ids = tuple(range(devices))
        else:
            ids = [int(p) for p in devices.split(",")]
            bad = [i for i in ids if i >= count]
            if bad or len(set(ids)) != len(ids):
                raise MorphllrError(f"--devices {devices}: GPU indices must be distinct and below {count} (the "
                                    "visible CUDA GPUs are 0.." + f"{count - 1})")
            gpu_ids = tuple(ids)
        local = len(gpu_ids)
    backend = "gloo"
    if accel == "cuda":
        import torch.distributed as dist

        backend = "nccl" if dist.is_available() and dist.is_nccl_available() else "gloo"
    env = detect_environment(local)
    if env is not None:
        asked = local * num_nodes
        if asked != 1 and asked != env.world:
            nodes = max(1, env.world // max(1, env.local_world))
            raise MorphllrError(
                f"--devices {local} --num-nodes {num_nodes} ask for {asked} processes but {env.source} started "
                f"{env.world}; give --devices {env.local_world} --num-nodes {nodes} or leave both out to follow "
                "the launcher")
    elif num_nodes > 1 and not (os.environ.get("MASTER_ADDR") and _env_int("MASTER_PORT")):
        raise MorphllrError(
            f"--num-nodes {num_nodes}: no launcher found (torchrun, srun); start the same command on every node with "
            "NODE_RANK (0.." f"{num_nodes - 1}), MASTER_ADDR (node 0's address) and MASTER_PORT (a free port) set, "
            "as for `morphllr train --num-nodes`, or launch it with torchrun / srun")
    elif num_nodes > 1 and not 0 <= (_env_int("NODE_RANK", _env_int("GROUP_RANK", 0)) or 0) < num_nodes:
        raise MorphllrError(f"NODE_RANK={os.environ.get('NODE_RANK')}: must lie in 0..{num_nodes - 1} "
                            f"for --num-nodes {num_nodes}")
    plan = Plan(accelerator=accel, local_devices=local, num_nodes=num_nodes, gpu_ids=gpu_ids, environment=env,
                backend=backend)
    if accelerator is None and plan.mode == "single":
        plan = Plan(accelerator=accel, local_devices=local, num_nodes=num_nodes, gpu_ids=gpu_ids, environment=env,
                    backend=backend, follow_models=True)
    return plan


# --------------------------------------------------------------------------- shards
def shard_slices(n: int, world: int, batch_size: int = 1) -> list[slice]:
    """Split images 0..n-1 into ``world`` contiguous shards, in rank order (some may be empty).

    Shards are balanced to one image; when every rank gets at least :data:`ALIGN_MIN_BATCHES`
    batches they are balanced to whole batches instead, so every image is scored in exactly the
    batch one process would put it in.

    Args:
        n: images in the set.
        world: processes.
        batch_size: images per forward pass.

    Returns:
        ``world`` slices with ``start <= stop``, ``slices[0].start == 0``, each starting where the
        previous one stops, the last stopping at ``n``.
    """
    n, world, batch_size = int(n), int(world), max(1, int(batch_size))
    if n < 0 or world < 1:
        raise ValueError(f"shard_slices: n={n}, world={world}")
    unit = batch_size if n >= ALIGN_MIN_BATCHES * world * batch_size else 1
    units = -(-n // unit)
    base, extra = divmod(units, world)
    out, first = [], 0
    for r in range(world):  # the extra units go to the last ranks, which hold the short last batch (and rank 0 writes)
        last = first + base + (1 if r >= world - extra else 0)
        out.append(slice(min(n, first * unit), min(n, last * unit)))
        first = last
    return out


def read_range(source: Any, start: int, stop: int) -> np.ndarray:
    """Images ``start:stop`` of an ImageSource as float32 ``(B, C, H, W)`` (one contiguous read)."""
    if isinstance(source, ImageSet):  # a slice of /images, read directly (indices go through h5py's fancy path)
        return source.read(slice(start, stop))
    return source.read(np.arange(start, stop))  # ArraySource reads contiguous indices as one slice


# --------------------------------------------------------------------------- peers' failures
class FromPeer:
    """Mixin of the exceptions raised because another rank failed (that rank reported it already)."""

    rank: int = -1


class PeerError(MorphllrError, FromPeer):
    """A user error on another rank (same message: e.g. a NaN image in that rank's shard)."""


class PeerMemoryError(MemoryError, FromPeer):
    """Another rank ran out of memory."""


class PeerInterrupt(KeyboardInterrupt, FromPeer):
    """Another rank was interrupted."""


class PeerFailure(RuntimeError, FromPeer):
    """A bug on another rank; the message holds its traceback."""


def _peer_exception(rank: int, world: int, kind: int, message: str) -> BaseException:
    if kind == _USER:
        exc: BaseException = PeerError(message)
    elif kind == _MEMORY:
        exc = PeerMemoryError(message)
    elif kind == _INTERRUPT:
        exc = PeerInterrupt(message)
    else:
        exc = PeerFailure(f"process {rank} of {world} failed: {message}")
    exc.rank = rank
    return exc


def _describe(exc: BaseException) -> tuple[int, str]:
    if isinstance(exc, MorphllrError):
        return _USER, str(exc)
    if isinstance(exc, MemoryError):
        return _MEMORY, str(exc)
    if isinstance(exc, KeyboardInterrupt):
        return _INTERRUPT, "interrupted"
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    head = f"{type(exc).__name__}: {exc}\n"
    room = _MESSAGE_BYTES - len(head.encode()) - 16
    return _BUG, head + (text if len(text.encode()) <= room else "...\n" + text.encode()[-room:].decode("utf-8",
                                                                                                    "replace"))


# --------------------------------------------------------------------------- the context
class Context:
    """One rank of a sharded run: who it is, what it scores, and the collectives it needs.

    Attributes:
        rank, world: global rank and number of processes.
        local_rank, local_world: the same on this node.
        device: torch device the models run on (``cpu`` or ``cuda:K``; None: wherever they are).
        threads: CPU threads of this process (None: the usual automatic choice of a single run).
        backend: "gloo" / "nccl" (None for a single process).

    Every collective (:meth:`exchange`, :meth:`gather`, :meth:`sum`, :meth:`done`) must be called by
    every rank in the same order; each first exchanges a status, so a rank that failed
    (:meth:`fail`) makes the others raise its error at their next collective.
    """

    def __init__(self, rank: int = 0, world: int = 1, local_rank: int = 0, local_world: int = 1,
                 device: Any = "cpu", threads: int | None = None, backend: str | None = None,
                 owns_group: bool = False):
        import torch

        self.rank, self.world = int(rank), int(world)
        self.local_rank, self.local_world = int(local_rank), int(local_world)
        self.device = None if device is None else torch.device(device)
        self.threads = threads
        self.backend = backend
        self._owns_group = owns_group
        self._comm_device = torch.device("cpu")  # gloo: CPU tensors; NCCL: CUDA tensors
        if backend == "nccl":
            self._comm_device = self.device if self.device is not None and self.device.type == "cuda" else \
                torch.device("cuda", torch.cuda.current_device())
        self._finished = self.world == 1
        self.broken = False

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes outputs and returns results."""
        return self.rank == 0

    # ----------------------------------------------------------------- shards
    def shards(self, n: int, batch_size: int = 1) -> list[slice]:
        """Every rank's shard of ``n`` images (:func:`shard_slices`)."""
        return shard_slices(n, self.world, batch_size)

    def shard(self, n: int, batch_size: int = 1) -> slice:
        """This rank's contiguous shard of ``n`` images."""
        return self.shards(n, batch_size)[self.rank]

    def steps(self, n: int, batch_size: int) -> int:
        """Batches every rank walks through for a set of ``n`` images (the largest shard's)."""
        return max((-(-(s.stop - s.start) // batch_size) for s in self.shards(n, batch_size)), default=0)

    def batches(self, source: Any, batch_size: int) -> Iterator[tuple[int, np.ndarray | None]]:
        """``(start, batch)`` of this rank's shard, in lockstep: ``batch`` is None once the shard is done.

        Every rank yields :meth:`steps` items, so the loop body may call collectives.  One
        process reads ``source.batches`` (exactly a single run's reads).
        """
        n = len(source)
        batch_size = max(1, int(batch_size))
        mine = self.shard(n, batch_size)
        if self.world == 1:
            start = 0
            for batch in source.batches(batch_size):
                yield start, batch
                start += len(batch)
            return
        for step in range(self.steps(n, batch_size)):
            start = mine.start + step * batch_size
            if start < mine.stop:
                yield start, read_range(source, start, min(mine.stop, start + batch_size))
            else:
                yield mine.stop, None

    def batch_start(self, n: int, batch_size: int, rank: int, step: int) -> int:
        """Index of the first image of ``rank``'s batch number ``step`` (for writing gathered batches)."""
        return self.shards(n, batch_size)[rank].start + step * batch_size

    # ----------------------------------------------------------------- collectives
    def _collective(self, op: Callable, *args, **kwargs) -> None:
        try:
            op(*args, **kwargs)
        except BaseException:
            self.broken = True  # the ranks may now disagree on where they are: no more collectives
            raise

    def _status(self, kind: int, value: int, message: str) -> list[tuple[int, int, str]]:
        import torch
        import torch.distributed as dist

        data = message.encode("utf-8", "replace")[:_MESSAGE_BYTES]
        buf = np.zeros(_HEADER_BYTES + _MESSAGE_BYTES, np.uint8)
        buf[:_HEADER_BYTES] = np.array([kind, value, len(data)], dtype=np.int64).view(np.uint8)
        buf[_HEADER_BYTES:_HEADER_BYTES + len(data)] = np.frombuffer(data, np.uint8)
        mine = torch.from_numpy(buf).to(self._comm_device)
        every = [torch.empty_like(mine) for _ in range(self.world)]
        self._collective(dist.all_gather, every, mine)
        out = []
        for t in every:
            raw = t.cpu().numpy()
            k, v, length = raw[:_HEADER_BYTES].view(np.int64)
            out.append((int(k), int(v), bytes(raw[_HEADER_BYTES:_HEADER_BYTES + int(length)]).decode("utf-8",
                                                                                                    "replace")))
        return out

    def _check_open(self) -> None:
        if self._finished:
            raise RuntimeError("distributed.Context: a collective after done() or a failure")

    def exchange(self, value: int = 0) -> list[int]:
        """Every rank's ``value`` (e.g. images just scored, for rank 0's progress bar).

        Raises the error of the lowest failed rank (:class:`PeerError` etc.) when any rank failed.
        """
        if self.world == 1:
            return [int(value)]
        self._check_open()
        statuses = self._status(_OK, int(value), "")
        failed = [(r, k, m) for r, (k, _, m) in enumerate(statuses) if k != _OK]
        if failed:
            self._finished = True  # the failed rank makes no further collective
            rank, kind, message = failed[0]
            raise _peer_exception(rank, self.world, kind, message)
        return [v for _, v, _ in statuses]

    def gather(self, array: np.ndarray) -> list[np.ndarray] | None:
        """Rank 0 receives every rank's array (leading lengths may differ, the rest of the shape may not).

        Args:
            array: this rank's numpy array (any numeric or bool dtype).

        Returns:
            on rank 0 the arrays in rank order; None elsewhere.
        """
        array = np.ascontiguousarray(array)
        if self.world == 1:
            return [array]
        import torch
        import torch.distributed as dist

        lengths = self.exchange(len(array))
        longest = max(lengths)
        if longest == 0:
            return [array[:0].copy() for _ in range(self.world)] if self.is_main else None
        send = array.view(np.uint8) if array.dtype == bool else array
        padded = np.zeros((longest,) + send.shape[1:], send.dtype)
        padded[:len(send)] = send
        mine = torch.from_numpy(padded).to(self._comm_device)
        parts = [torch.empty_like(mine) for _ in range(self.world)] if self.is_main else None
        self._collective(dist.gather, mine, parts, dst=0)
        if not self.is_main:
            return None
        out = [p[:k].cpu().numpy() for p, k in zip(parts, lengths)]
        return [o.view(bool) for o in out] if array.dtype == bool else out

    def gather_rows(self, array: np.ndarray) -> np.ndarray | None:
        """Rank 0 receives every rank's rows concatenated in rank order (= input order of the shards)."""
        parts = self.gather(array)
        return None if parts is None else np.concatenate(parts, axis=0)

    def sum(self, array: np.ndarray) -> np.ndarray | None:
        """Sum over ranks of a fixed-shape array, added in rank order on rank 0 (None elsewhere)."""
        parts = self.gather(np.asarray(array)[None])
        if parts is None:
            return None
        total = np.array(parts[0][0], copy=True)
        for part in parts[1:]:
            total += part[0]
        return total

    def done(self) -> None:
        """The last collective: other ranks may return; rank 0 then writes outputs on its own."""
        if self._finished:
            return
        self.exchange(0)
        self._finished = True

    def fail(self, exc: BaseException) -> None:
        """Tell the other ranks (at their next collective) that this one failed; never raises."""
        if self._finished or self.broken or isinstance(exc, (FromPeer, KeyboardInterrupt)):
            return
        self._finished = True
        kind, message = _describe(exc)
        try:
            self._status(kind, 0, message)
        except BaseException:  # noqa: BLE001 - the original error is the one to raise
            self.broken = True

    def close(self) -> None:
        """Destroy the process group this context created (an existing one is left alone)."""
        if self._owns_group:
            import torch.distributed as dist

            with contextlib.suppress(Exception):
                if dist.is_initialized():
                    dist.destroy_process_group()
            self._owns_group = False


def _connect(env: Environment, plan: Plan, threads: int | None) -> Context:
    """Join (or create, as rank ``env.rank``) the process group of ``env``."""
    import torch
    import torch.distributed as dist

    device: Any = "cpu"
    if plan.accelerator == "cuda":
        count = _cuda_count()
        gpu = plan.gpu_ids[env.local_rank] if len(plan.gpu_ids) == env.local_world else env.local_rank % max(1, count)
        device = torch.device("cuda", gpu)
        torch.cuda.set_device(device)
    if env.existing_group:
        backend = str(dist.get_backend())
        return Context(env.rank, env.world, env.local_rank, env.local_world, device, threads, backend)
    if env.from_env:  # torchrun may host the store in its agent: env:// knows (TORCHELASTIC_USE_AGENT_STORE)
        dist.init_process_group(plan.backend, init_method="env://", timeout=COLLECTIVE_TIMEOUT)
    else:
        dist.init_process_group(plan.backend, init_method=f"tcp://{_url_host(env.address)}:{env.port}",
                                rank=env.rank, world_size=env.world, timeout=COLLECTIVE_TIMEOUT)
    return Context(env.rank, env.world, env.local_rank, env.local_world, device, threads, plan.backend,
                   owns_group=True)


def _url_host(address: str) -> str:
    return f"[{address}]" if ":" in address and not address.startswith("[") else address


def cpu_threads_per_process(local_world: int, threads: int | None = None) -> int:
    """Threads of each of ``local_world`` processes on this node: ``threads``, else ``MORPHLLR_THREADS``, else
    the idle usable cores split between the processes (:func:`morphllr.runtime.idle_cores`)."""
    if threads:
        return max(1, int(threads))
    env = os.environ.get("MORPHLLR_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    return max(1, runtime.idle_cores() // max(1, local_world))


# --------------------------------------------------------------------------- running
def run_sharded(fn: Callable[..., Any], args: Sequence[Any] = (), kwargs: dict | None = None, *,
                devices: int | str = 1, accelerator: str = "auto", num_nodes: int = 1,
                threads: int | None = None, plan: Plan | None = None) -> Any:
    """Run ``fn(ctx, *args, **kwargs)`` on every rank of the plan; rank 0's return value comes back.

    * one process: ``fn`` runs here with a one-rank :class:`Context` (no collectives happen);
    * a launcher's processes (:func:`detect_environment`): this process joins them and runs ``fn``;
    * ``--devices N`` (and ``--num-nodes`` without a launcher): this process is the node's first
      rank and starts the others as fresh interpreters (module-level ``fn``, importable
      ``args``: pickled through a pipe, image sources reopen their files), each with ``RANK``,
      ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT`` set
      like torchrun's, which they join through.

    ``fn`` must call the context's collectives in the same order on every rank and should call
    ``ctx.done()`` after its last one (otherwise it is called when ``fn`` returns).

    Args:
        fn: module-level function of ``(ctx, *args, **kwargs)``.
        args, kwargs: its arguments.
        devices, accelerator, num_nodes: as for :func:`resolve` (ignored when ``plan`` is given).
        threads: CPU threads per process (None: a single run's automatic choice; several processes
            on a node share its idle cores, :func:`cpu_threads_per_process`).
        plan: a :class:`Plan` from :func:`resolve`.

    Returns:
        ``fn``'s result on global rank 0; None on the other ranks of a joined run.
    """
    plan = plan or resolve(devices, accelerator, num_nodes)
    kwargs = dict(kwargs or {})
    if plan.mode == "single":
        import torch

        device = torch.device("cuda", plan.gpu_ids[0]) if plan.accelerator == "cuda" else torch.device("cpu")
        return fn(Context(device=None if plan.follow_models else device, threads=threads), *args, **kwargs)
    if plan.mode == "join":
        env = plan.environment
        share = cpu_threads_per_process(env.local_world, threads) if plan.accelerator == "cpu" or threads else None
        ctx = _connect(env, plan, share)
        try:
            return _run_rank(ctx, fn, args, kwargs)
        finally:
            ctx.close()
    return _spawn(plan, fn, args, kwargs, threads)


def _run_rank(ctx: Context, fn: Callable, args: Sequence, kwargs: dict) -> Any:
    try:
        result = fn(ctx, *args, **kwargs)
    except BaseException as exc:
        ctx.fail(exc)
        raise
    ctx.done()
    return result if ctx.is_main else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Pickler(pickle.Pickler):
    """Pickles a memory-mapped ``.npy`` array as its file name (reopened read-only), not its pixels."""

    def reducer_override(self, obj):  # noqa: D102
        if isinstance(obj, np.memmap) and isinstance(obj.base, mmap.mmap) and getattr(obj, "filename", None) \
                and getattr(obj, "mode", None) in ("r", "c"):
            order = "F" if obj.flags.f_contiguous and not obj.flags.c_contiguous else "C"
            return _open_memmap, (obj.filename, obj.dtype.str, obj.shape, int(obj.offset), order)
        return NotImplemented


def _open_memmap(filename: str, dtype: str, shape: tuple, offset: int, order: str) -> np.memmap:
    return np.memmap(filename, dtype=np.dtype(dtype), mode="r", offset=offset, shape=tuple(shape), order=order)


def _dumps(value: Any) -> bytes:
    buf = io.BytesIO()
    _Pickler(buf, protocol=pickle.HIGHEST_PROTOCOL).dump(value)
    return buf.getvalue()


@dataclass
class _Child:
    rank: int
    process: Any  # subprocess.Popen
    status: int  # read end of the pipe the child reports "ready" (or why it could not start) on
    ready: bool = False
    reason: str = ""


def _death(child: _Child) -> str:
    how = how_it_ended(child.process.poll())
    how = f"was {how}" if how.startswith("killed") else how
    return (f"scoring process {child.rank} {how}; use a smaller --batch-size or fewer --devices "
            "(--devices 1 scores in one process)")


#: the command a spawned rank runs: a fresh interpreter (never the caller's main script, which the
#: ``multiprocessing`` spawn method would re-run), joined to the group through torchrun's variables
_CHILD_CODE = "from morphllr.distributed import _child_main; _child_main()"


def _spawn(plan: Plan, fn: Callable, args: Sequence, kwargs: dict, threads: int | None) -> Any:
    import subprocess

    local = plan.local_devices
    world = plan.world
    if plan.num_nodes > 1:
        address, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
        node = _env_int("NODE_RANK", _env_int("GROUP_RANK", 0)) or 0
    else:
        address, port, node = "127.0.0.1", _free_port(), 0
    if plan.accelerator == "cpu":
        cores = runtime.usable_cores()
        if local > cores:
            warnings.warn(f"--devices {local} starts {local} processes on {cores} usable CPU core(s): they compete "
                          f"for the cores; --devices {cores} or fewer is faster", MorphllrWarning, stacklevel=3)
    share = cpu_threads_per_process(local, threads) if plan.accelerator == "cpu" or threads else None
    # sys.path first (plain pickle), so the job's modules import in the child as they do here
    payload = pickle.dumps(list(sys.path)) + _dumps((fn, tuple(args), kwargs, plan, share))
    children: list[_Child] = []
    clean = False
    try:
        for local_rank in range(1, local):
            rank = node * local + local_rank
            env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(local_rank),
                   "LOCAL_WORLD_SIZE": str(local), "GROUP_RANK": str(node), "NODE_RANK": str(node),
                   "MASTER_ADDR": address, "MASTER_PORT": str(port)}
            status_r, status_w = os.pipe()
            env["MORPHLLR_STATUS_FD"] = str(status_w)
            try:
                process = subprocess.Popen([sys.executable, "-c", _CHILD_CODE], stdin=subprocess.PIPE, env=env,
                                           pass_fds=(status_w,), close_fds=True)
            finally:
                os.close(status_w)
            child = _Child(rank, process, status_r)
            children.append(child)
            try:
                process.stdin.write(payload)
                process.stdin.close()
            except OSError:  # it died before reading its arguments
                process.wait(timeout=30)
                raise MorphllrError(_death(child)) from None
        _wait_ready(children)
        env0 = Environment(node * local, world, 0, local, node, address, port, "morphllr --devices")
        with runtime.torch_threads(share):
            ctx = _connect(env0, plan, share)
            try:
                result = _run_rank(ctx, fn, args, kwargs)
            except Exception as exc:
                if not isinstance(exc, (FromPeer, MorphllrError, MemoryError)):
                    dead = _dead(children)  # a collective failed: did a process die (out of memory)?
                    if dead is not None:
                        raise MorphllrError(_death(dead)) from exc
                raise
            finally:
                ctx.close()
        clean = True
        return result
    finally:
        _stop(children, clean)


def _wait_ready(children: list[_Child]) -> None:
    """Wait until every child has imported torch and unpickled its arguments (or say why one could not)."""
    import selectors

    deadline = time.monotonic() + START_TIMEOUT_S
    with selectors.DefaultSelector() as selector:
        for c in children:
            selector.register(c.status, selectors.EVENT_READ, c)
        while not all(c.ready for c in children):
            left = deadline - time.monotonic()
            if left <= 0:
                pending = ", ".join(str(c.rank) for c in children if not c.ready)
                raise MorphllrError(f"scoring process(es) {pending} did not start within {START_TIMEOUT_S:.0f} s; "
                                    "the machine is overloaded - use fewer --devices")
            for key, _ in selector.select(timeout=min(left, 5.0)):
                c = key.data
                chunk = os.read(c.status, 65536)
                if chunk:
                    c.reason += chunk.decode("utf-8", "replace")
                    if c.reason == "ready":
                        c.ready = True
                        selector.unregister(c.status)
                    continue
                selector.unregister(c.status)  # end of file: the child has exited
                with contextlib.suppress(Exception):
                    c.process.wait(timeout=30)
                if c.reason:
                    raise RuntimeError(f"scoring process {c.rank} could not start:\n{c.reason}")
                raise MorphllrError(_death(c))


def _dead(children: list[_Child], grace: float = 3.0) -> _Child | None:
    deadline = time.monotonic() + grace
    while True:
        for c in children:
            if c.process.poll() not in (0, None):
                return c
        if time.monotonic() > deadline:
            return None
        time.sleep(0.05)


def _stop(children: list[_Child], clean: bool) -> None:
    import subprocess

    for c in children:
        with contextlib.suppress(subprocess.TimeoutExpired):
            c.process.wait(timeout=30 if clean else 0.5)
    for c in children:
        with contextlib.suppress(Exception):
            if c.process.poll() is None:
                c.process.terminate()
                c.process.wait(timeout=5)
        with contextlib.suppress(Exception):
            if c.process.poll() is None:
                c.process.kill()
                c.process.wait(timeout=5)
        with contextlib.suppress(OSError):
            os.close(c.status)


def _child_main() -> None:
    """A spawned rank (``python -c``): read the job from stdin, join the group via the torchrun variables, run it.

    Exits 0 when done, 1 after a failure (reported to the group: rank 0 raises it).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group; the parent stops us
    status = int(os.environ.pop("MORPHLLR_STATUS_FD"))
    try:
        data = sys.stdin.buffer.read()
        sys.stdin.close()
        stream = io.BytesIO(data)
        for entry in reversed(pickle.load(stream)):
            if entry not in sys.path:
                sys.path.insert(0, entry)
        fn, args, kwargs, plan, threads = pickle.load(stream)
        if threads:
            runtime.configure_cpu(threads)
        environment = detect_environment(plan.local_devices)
        if environment is None:
            raise RuntimeError("the launcher variables RANK / WORLD_SIZE are missing")
    except BaseException:  # noqa: BLE001 - sent to the parent, which raises it
        with contextlib.suppress(OSError):
            os.write(status, traceback.format_exc().encode("utf-8", "replace") or b"?")
        sys.exit(1)
    os.write(status, b"ready")
    os.close(status)
    code = 0
    ctx = None
    try:
        ctx = _connect(environment, plan, threads)
        _run_rank(ctx, fn, args, kwargs)
    except BaseException as exc:  # noqa: BLE001 - reported to the group (rank 0 raises it)
        code = 1
        if ctx is None:
            traceback.print_exc()
        elif ctx.broken:  # the group broke (rank 0 was killed): nobody else will say why this one stops
            print(f"morphllr: scoring process {environment.rank} stopped: {' '.join(str(exc).split())[:300]}",
                  file=sys.stderr)
    finally:
        if ctx is not None:
            ctx.close()
    sys.exit(code)


# --------------------------------------------------------------------------- models on a device
@contextlib.contextmanager
def models_on(device: Any, models: Iterable[Any]) -> Iterator[None]:
    """Move the networks of ``models`` (LoadedModels, PixelCNNs, modules) to ``device``; move them back after.

    Nothing happens for models already there, nor when ``device`` is None.
    """
    import torch

    if device is None:
        yield
        return
    device = torch.device(device)
    moved = []
    try:
        for model in models:
            net = getattr(model, "net", model)
            if not isinstance(net, torch.nn.Module):
                continue
            first = next(iter(net.parameters()), None)
            if first is None:
                first = next(iter(net.buffers()), None)
            old = first.device if first is not None else torch.device("cpu")
            if old != device:
                net.to(device)
                moved.append((net, old))
        yield
    finally:
        for net, old in moved:
            with contextlib.suppress(Exception):
                net.to(old)


def describe_plan(plan: Plan) -> str:
    """One phrase for messages: "2 CPU processes (gloo)", "4 GPUs (nccl), joined from torchrun"."""
    n = plan.world
    what = f"{n} GPU{'s' if n != 1 else ''}" if plan.accelerator == "cuda" else \
        f"{n} CPU process{'es' if n != 1 else ''}"
    if n == 1:
        return what
    joined = f", joined from {plan.environment.source}" if plan.environment is not None else ""
    return f"{what} ({plan.backend}){joined}"
