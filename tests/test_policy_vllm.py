"""The vLLM policy. The GPU tests run only where vllm is installed and nvidia-smi lists a GPU;
the checks around them (doctor, a clear error without vllm) run everywhere."""

from __future__ import annotations

import importlib.util
import os

import pytest

from data_schemas.errors import PrmforgeError
from labelers.config import VllmPolicyConfig
from labelers.policy.base import GenerationRequest
from labelers.policy.factory import make_policy
from labelers.policy.prompts import STEP_STOP, assistant_prefix, solution_messages
from labelers.policy.vllm_backend import doctor_check, gpu_visible

HAS_VLLM = importlib.util.find_spec("vllm") is not None


def test_doctor_says_what_is_missing() -> None:
    item = doctor_check()
    visible, found = gpu_visible()
    assert item.ok == (HAS_VLLM and visible)
    assert found in item.detail
    if not HAS_VLLM:
        assert item.detail.startswith("vllm not installed")
        assert item.hint == "on a CUDA machine: pip install 'prmforge[vllm]'"


@pytest.mark.skipif(HAS_VLLM, reason="vllm is installed here")
def test_without_vllm_the_backend_is_a_clear_error() -> None:
    with pytest.raises(PrmforgeError, match=r"the vllm backend needs vllm .*pip install 'prmforge\[vllm\]'"):
        make_policy(VllmPolicyConfig(model="Qwen/Qwen2.5-0.5B-Instruct"))


@pytest.fixture(scope="module")
def vllm_policy():
    pytest.importorskip("vllm", reason="vllm not installed (needs a CUDA machine: pip install 'prmforge[vllm]')")
    visible, found = gpu_visible()
    if not visible:
        pytest.skip(f"no CUDA GPU: {found}")
    # A small instruct model; set PRMFORGE_VLLM_TEST_MODEL to a local path on offline machines.
    model = os.environ.get("PRMFORGE_VLLM_TEST_MODEL", "Qwen/Qwen2.5-0.5B-Instruct")
    policy = make_policy(VllmPolicyConfig(model=model, gpu_memory_utilization=0.5, n_ctx=2048))
    yield policy
    policy.close()


@pytest.mark.gpu
@pytest.mark.slow
def test_vllm_generates_n_seeded_completions_in_one_call(vllm_policy) -> None:
    question = "Tom has 3 boxes with 12 apples each. He eats 5 apples. How many apples are left?"
    request = GenerationRequest(solution_messages(question), assistant_prefix(["3 * 12 = 36 apples."]),
                                n=4, max_tokens=32, temperature=1.0, stop=STEP_STOP, seed=21)
    greedy = GenerationRequest(solution_messages(question), n=1, max_tokens=8, temperature=0.0, stop=(), seed=1)
    first = vllm_policy.generate([request, greedy])
    again = vllm_policy.generate([request])
    assert [r.request for r in first] == [request, greedy]
    assert all(r.ok for r in first)
    assert len(first[0].completions) == 4
    assert all("\nStep " not in c.text and 0 < c.completion_tokens <= 32 for c in first[0].completions)
    assert first[1].completions[0].finish_reason == "length" and first[1].completions[0].completion_tokens == 8
    assert [c.text for c in again[0].completions] == [c.text for c in first[0].completions]
    assert vllm_policy.usage.requests == 3
