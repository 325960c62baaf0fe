"""Virtual NPU partitions (FlexNPU): one simulated device split into slices of AI cores
and HBM, in the spirit of `npu-smi set -t create-vnpu -f <template>`.

A `VnpuSpec` names a slice (a template such as `vir08`, or explicit `cores=4,hbm_gb=8`),
how its cores are shared (`Slicing.HARD`: the cores are its own; `Slicing.TIME`: it
shares one core group with every other time-sliced vNPU in 1 ms turns) and the model
it serves. `plan_partitions` checks that the slices fit the device and returns one
`DeviceSlice` per vNPU, whose `device` is a `DeviceSpec` the unchanged cost model
charges steps on.

Modelling assumptions (stated once, here):

* Compute scales with cores: a slice of `k` of the device's `n` AI cores has `k/n` of its
  peak FLOP/s (Da Vinci cores are identical; the cube units do the GEMMs).
* Memory bandwidth is shared in proportion to cores under hard slicing (each core's
  DMA engines get their share of the HBM controllers; no slice can borrow an idle
  neighbour's share). This is what makes hard slicing isolate: a slice's step time
  depends on its own work only.
* HBM capacity: a template gives HBM in proportion to its cores (the 910's templates
  give 1 GiB per core of its 32 GiB, the 310P's 3 GiB per core of 24 GiB); explicit
  slices give any amount. The sum over vNPUs may not exceed the device's HBM.
* The fixed per-step host overhead (`step_overhead_seconds`) is not scaled: each vNPU's
  engine has its own host thread.
* A time-sliced group runs at the speed of its cores (the largest `cores` among its
  members), one member at a time, in turns of `TIME_SLICE_SECONDS` (see
  `npu_sim.arbiter`).
"""

from __future__ import annotations

import dataclasses
import enum
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from npu_sim.device import DeviceSpec, GiB

TIME_SLICE_SECONDS: Final = 1.0e-3  # vir01's turn length on the 310P

# Template names allowed per device family: the 910 family's and the 310P's (issue #13).
# Every template gives `virNN` NN AI cores and HBM in proportion to its cores.
TEMPLATES_910: Final = ("vir01", "vir02", "vir04", "vir08", "vir16")
TEMPLATES_310P: Final = ("vir01", "vir02", "vir04")
# vir01 is time-sliced (one core shared in 1 ms turns); the others own their cores.
TIME_SLICED_TEMPLATES: Final = frozenset({"vir01"})

_EXPLICIT_KEYS: Final = frozenset({"cores", "hbm_gb", "slicing"})
_NAME_RE: Final = re.compile(r"[A-Za-z0-9_.-]{1,32}")


class Slicing(enum.StrEnum):
    HARD = "hard"  # fixed cores, own share of HBM bandwidth: no interference
    TIME = "time"  # shares one core group in turns with the other time-sliced vNPUs


@dataclass(frozen=True, slots=True)
class VnpuSpec:
    """One `--vnpu NAME=SLICE:MODEL` as written: `template` or explicit `cores`/`hbm_gb`."""

    name: str
    model: str
    template: str | None = None
    cores: int | None = None
    hbm_gb: float | None = None
    slicing: Slicing | None = None  # None: the template's (hard unless vir01)


@dataclass(frozen=True, slots=True)
class DeviceSlice:
    """A vNPU's resources. `device` is the slice seen by the cost model: `cores`/ai_cores
    of the parent's peak FLOP/s and HBM bandwidth (for a time-sliced one: of its group's
    cores), `hbm_bytes` of its HBM."""

    name: str
    model: str
    cores: int
    hbm_bytes: int
    slicing: Slicing
    first_core: int  # cores first_core .. first_core + cores - 1 (shared ones for TIME)
    device: DeviceSpec

    @property
    def core_ids(self) -> range:
        return range(self.first_core, self.first_core + self.cores)


def parse_vnpu(spec: str) -> VnpuSpec:
    """Parse `NAME=TEMPLATE:MODEL` or `NAME=cores=K,hbm_gb=G[,slicing=hard|time]:MODEL`.

    Raises `ValueError` naming the problem. Model names are checked by the caller.
    """
    name, sep, rest = spec.partition("=")
    if not sep or not _NAME_RE.fullmatch(name):
        raise ValueError(
            f"vnpu {spec!r}: expected NAME=SLICE:MODEL with NAME of letters, digits, . _ -"
        )
    slice_part, sep, model = rest.rpartition(":")
    if not sep or not slice_part or not model:
        raise ValueError(f"vnpu {spec!r}: expected NAME=SLICE:MODEL (e.g. a=vir08:tiny-llama)")
    if "=" not in slice_part:
        if not re.fullmatch(r"vir\d\d", slice_part):
            raise ValueError(f"vnpu {spec!r}: unknown template {slice_part!r} (virNN)")
        return VnpuSpec(name=name, model=model, template=slice_part)
    fields: dict[str, str] = {}
    for item in slice_part.split(","):
        key, eq, value = item.partition("=")
        if not eq or key not in _EXPLICIT_KEYS or key in fields:
            raise ValueError(
                f"vnpu {spec!r}: bad slice item {item!r}; use cores=K,hbm_gb=G[,slicing=...]"
            )
        fields[key] = value
    if "cores" not in fields or "hbm_gb" not in fields:
        raise ValueError(f"vnpu {spec!r}: an explicit slice needs cores= and hbm_gb=")
    try:
        cores, hbm_gb = int(fields["cores"]), float(fields["hbm_gb"])
        slicing = Slicing(fields["slicing"]) if "slicing" in fields else None
    except ValueError:
        raise ValueError(
            f"vnpu {spec!r}: cores must be an int, hbm_gb a number, slicing hard or time"
        ) from None
    if cores < 1 or hbm_gb <= 0:
        raise ValueError(f"vnpu {spec!r}: need cores >= 1 and hbm_gb > 0")
    return VnpuSpec(name=name, model=model, cores=cores, hbm_gb=hbm_gb, slicing=slicing)


def templates_for(device: DeviceSpec) -> tuple[str, ...]:
    """The template names `device` offers (310P-class: 8 cores or fewer)."""
    return TEMPLATES_310P if device.ai_cores <= 8 else TEMPLATES_910


def _resolve(spec: VnpuSpec, device: DeviceSpec) -> tuple[int, int, Slicing]:
    """(cores, hbm_bytes, slicing) of `spec` on `device`."""
    if spec.template is not None:
        allowed = templates_for(device)
        if spec.template not in allowed:
            raise ValueError(
                f"vnpu {spec.name!r}: {device.name} has no template {spec.template!r}; "
                f"choose one of: {', '.join(allowed)}"
            )
        cores = int(spec.template[3:])
        hbm = device.hbm_bytes * cores // device.ai_cores
        hard = spec.template not in TIME_SLICED_TEMPLATES
        return cores, hbm, Slicing.HARD if hard else Slicing.TIME
    assert spec.cores is not None and spec.hbm_gb is not None  # parse_vnpu guarantees
    return spec.cores, int(spec.hbm_gb * GiB), spec.slicing or Slicing.HARD


def slice_device(device: DeviceSpec, cores: int, hbm_bytes: int, label: str) -> DeviceSpec:
    """`device` cut down to `cores` of its AI cores and `hbm_bytes` (see module doc)."""
    if not 1 <= cores <= device.ai_cores:
        raise ValueError(f"{label}: {cores} cores, but {device.name} has {device.ai_cores}")
    share = cores / device.ai_cores
    return dataclasses.replace(
        device,
        name=f"{device.name}/{label}",
        hbm_bytes=hbm_bytes,
        peak_flops=device.peak_flops * share,
        hbm_bandwidth=device.hbm_bandwidth * share,
        ai_cores=cores,
    )


def plan_partitions(device: DeviceSpec, specs: Sequence[VnpuSpec]) -> list[DeviceSlice]:
    """Place `specs` on `device`: hard slices on consecutive cores, then one shared group
    for the time-sliced ones. Raises `ValueError` if names repeat or cores or HBM do not
    fit (the message says by how much)."""
    if device.ai_cores < 1:
        raise ValueError(f"device {device.name} has no AI cores to partition")
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"vnpu names must be unique, got {names}")
    resolved = [(_resolve(s, device), s) for s in specs]
    hard_cores = sum(c for (c, _, sl), _ in resolved if sl is Slicing.HARD)
    group = max((c for (c, _, sl), _ in resolved if sl is Slicing.TIME), default=0)
    if hard_cores + group > device.ai_cores:
        raise ValueError(
            f"vnpus need {hard_cores} hard-sliced + {group} time-sliced cores, but "
            f"{device.name} has {device.ai_cores}"
        )
    hbm = sum(h for (_, h, _), _ in resolved)
    if hbm > device.hbm_bytes:
        raise ValueError(
            f"vnpus need {hbm / GiB:g} GiB of HBM, but {device.name} has "
            f"{device.hbm_bytes / GiB:g} GiB"
        )
    slices: list[DeviceSlice] = []
    next_core = 0
    for (cores, hbm_bytes, slicing), spec in resolved:
        if slicing is Slicing.HARD:
            first, speed_cores = next_core, cores
            next_core += cores
        else:
            first, speed_cores = hard_cores, group
        slices.append(
            DeviceSlice(
                name=spec.name,
                model=spec.model,
                cores=speed_cores,
                hbm_bytes=hbm_bytes,
                slicing=slicing,
                first_core=first,
                device=slice_device(device, speed_cores, hbm_bytes, spec.name),
            )
        )
    return slices
