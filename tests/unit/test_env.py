"""``machine_info``: offline, cheap, and free of secrets."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from delibench.env import cpu_count, machine_info, memory_bytes
from delibench.records import MachineInfo, from_dict, to_dict


def test_machine_info_describes_this_host():
    info = machine_info()
    assert isinstance(info, MachineInfo)
    assert info.hostname and info.python_version.count(".") == 2
    assert 1 <= info.cpu_count <= (os.cpu_count() or 1)
    assert info.memory_bytes == memory_bytes() > 0
    assert info.delibench_version
    assert from_dict(MachineInfo, json.loads(json.dumps(to_dict(info)))) == info


def test_endpoint_is_stored_without_credentials():
    info = machine_info("https://AKIAEXAMPLE:supersecret@s3.example.com:9000/bucket?X-Amz-Signature=abc&X-Amz-Credential=AKIA")
    assert info.endpoint == "https://s3.example.com:9000/bucket"
    assert "supersecret" not in json.dumps(to_dict(info)) and "AKIA" not in json.dumps(to_dict(info))


def test_machine_info_does_not_import_torch_but_still_reports_its_version():
    code = (
        "import sys, json; from delibench.env import machine_info; m = machine_info(); "
        "print(json.dumps([m.torch_version, m.accelerator, 'torch' in sys.modules]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    version, accelerator, imported = json.loads(out.stdout)
    assert imported is False
    assert version and version.split("+")[0] == __import__("torch").__version__.split("+")[0]
    assert accelerator in ("none", "cuda")


def test_cpu_count_respects_affinity():
    if hasattr(os, "sched_getaffinity"):
        assert cpu_count() == len(os.sched_getaffinity(0))
