"""``scencode.devices``: where and in which precision torch runs."""

import contextlib

import pytest
import torch

from scencode.devices import autocast, autocast_dtype, device_name, peak_flops
from scencode.errors import ScencodeError
from scencode.run_config import PRECISIONS, TrainConfig


def test_precision_on_the_cpu_is_fp32_unless_asked():
    cpu = torch.device("cpu")
    assert autocast_dtype("auto", cpu) is None and autocast_dtype("fp32", cpu) is None
    assert autocast_dtype("bf16", cpu) is torch.bfloat16 and autocast_dtype("fp16", cpu) is torch.float16
    assert isinstance(autocast(cpu, None), contextlib.nullcontext)
    with autocast(cpu, torch.bfloat16):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype is torch.bfloat16


def test_every_precision_the_trainer_accepts_is_one_devices_knows():
    for precision in PRECISIONS:
        TrainConfig(precision=precision).validate()
        autocast_dtype(precision, torch.device("cpu"))
    with pytest.raises(ScencodeError, match="train.precision 'fp8'"):
        TrainConfig(precision="fp8").validate()


def test_a_cpu_has_no_peak_and_says_so():
    name, peak = peak_flops(torch.device("cpu"))
    assert peak is None and "no peak" in name
    assert device_name(torch.device("cpu")).startswith("cpu (")
