"""vNPU templates, explicit slices, placement checks and the sliced cost model."""

from __future__ import annotations

import pytest

from npu_sim.cost_model import step_cost
from npu_sim.device import GiB, get_device
from npu_sim.model_config import get_cost_model_config
from npu_sim.vnpu import Slicing, parse_vnpu, plan_partitions, slice_device

B3 = get_device("ascend-910b3")  # 20 AI cores, 64 GiB
P310 = get_device("ascend-310p")  # 8 AI cores, 24 GiB


def test_parse_template_and_explicit() -> None:
    a = parse_vnpu("a=vir08:tiny-llama")
    assert (a.name, a.template, a.model) == ("a", "vir08", "tiny-llama")
    b = parse_vnpu("b=cores=4,hbm_gb=8,slicing=time:smollm2-135m")
    assert (b.cores, b.hbm_gb, b.slicing, b.model) == (4, 8.0, Slicing.TIME, "smollm2-135m")


@pytest.mark.parametrize(
    "spec",
    [
        "vir08:tiny-llama",
        "a=vir08",
        "a=virXX:tiny-llama",
        "a=cores=4:tiny-llama",
        "a=cores=0,hbm_gb=1:tiny-llama",
        "a=cores=2,hbm_gb=1,color=red:tiny-llama",
        "a b=vir08:tiny-llama",
        "a\n=vir08:tiny-llama",  # re.match with $ let a trailing newline through
        "a=cores=x,hbm_gb=1:tiny-llama",
    ],
)
def test_parse_rejects(spec: str) -> None:
    with pytest.raises(ValueError, match="vnpu"):
        parse_vnpu(spec)


def test_templates_give_cores_and_proportional_hbm() -> None:
    specs = [parse_vnpu("a=vir08:m"), parse_vnpu("b=vir04:m"), parse_vnpu("c=vir02:m")]
    a, b, c = plan_partitions(B3, specs)
    assert (a.cores, b.cores, c.cores) == (8, 4, 2)
    assert a.hbm_bytes == 64 * GiB * 8 // 20
    assert list(a.core_ids) == list(range(8)) and list(b.core_ids) == list(range(8, 12))
    assert all(s.slicing is Slicing.HARD for s in (a, b, c))
    # 310P: 3 GiB per core, vir01 time-sliced.
    (v1,) = plan_partitions(P310, [parse_vnpu("x=vir01:m")])
    assert (v1.cores, v1.hbm_bytes, v1.slicing) == (1, 3 * GiB, Slicing.TIME)


def test_quotas_must_fit_the_device() -> None:
    with pytest.raises(ValueError, match="cores"):
        plan_partitions(B3, [parse_vnpu("a=vir16:m"), parse_vnpu("b=vir08:m")])
    with pytest.raises(ValueError, match="HBM"):
        plan_partitions(
            B3, [parse_vnpu("a=cores=2,hbm_gb=40:m"), parse_vnpu("b=cores=2,hbm_gb=30:m")]
        )
    with pytest.raises(ValueError, match="template"):
        plan_partitions(P310, [parse_vnpu("a=vir08:m")])
    with pytest.raises(ValueError, match="unique"):
        plan_partitions(B3, [parse_vnpu("a=vir02:m"), parse_vnpu("a=vir02:m")])


def test_time_sliced_vnpus_share_one_group() -> None:
    slices = plan_partitions(
        P310, [parse_vnpu("h=vir04:m"), parse_vnpu("x=vir01:m"), parse_vnpu("y=vir01:m")]
    )
    h, x, y = slices
    assert list(h.core_ids) == [0, 1, 2, 3]
    assert list(x.core_ids) == list(y.core_ids) == [4]


def test_sliced_step_time_scales_with_cores() -> None:
    model = get_cost_model_config("llama-3-8b")
    half = slice_device(B3, 10, 32 * GiB, "half")
    assert half.peak_flops == pytest.approx(B3.peak_flops / 2)
    assert half.hbm_bandwidth == pytest.approx(B3.hbm_bandwidth / 2)
    for chunks in ([(1, 512)] * 8, [(512, 512)]):  # memory-bound decode, compute-bound prefill
        full, sliced = step_cost(model, B3, chunks), step_cost(model, half, chunks)
        overhead = B3.step_overhead_seconds
        assert sliced.seconds - overhead == pytest.approx(2 * (full.seconds - overhead))
