"""`python -m harness profile`: the profiler commands, the choice of tool, and the run without one."""
import json
import shlex

import pytest
import torch

from harness import Impl, Suite, Tolerance, cli, profile, registry, tensors_close


def _suite(device="cpu"):
    return Suite(
        name="toy",
        impls=[Impl("float64", lambda x: x.double() * 2, timed=False), Impl("base", lambda x: x * 2),
               Impl("ours", lambda x: x + x)],
        reference="float64", baseline="base",
        axes={"n": (1000, 4096), "content": ("a", "b")}, dtypes=(torch.float32, torch.float16), devices=(device,),
        make_inputs=lambda case, g: (torch.rand(case["n"], generator=g).to(case.dtype).to(case.device),),
        compare=lambda got, exp, case, inputs: tensors_close(got, exp, Tolerance(1e-3, 1e-3), dtype=case.dtype),
        bytes_moved=lambda case: 2 * case["n"] * case.dtype.itemsize,
    )


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.setattr(registry, "all_suites", lambda: {"toy": _suite()})


def test_ncu_command_captures_one_call_and_keeps_the_clocks():
    command = profile.profiler_command("ncu", "out/profile-toy-ours", ["profile", "--suite", "toy"], nvtx_available=True,
                                       tool_args="--set full", python="python3")
    text = shlex.join(command)
    assert text.startswith("ncu --profile-from-start off --clock-control none")
    # ranges recorded, not filtered on: autograd's device thread launches backward kernels outside them
    assert "--nvtx --set full" in text and "--nvtx-include" not in text
    assert text.endswith("--force-overwrite --export out/profile-toy-ours python3 -m harness profile --suite toy")
    without_nvtx = profile.profiler_command("ncu", "r", [], nvtx_available=False)
    assert "--nvtx" not in without_nvtx


def test_nsys_command_uses_the_profiler_api_capture_range():
    command = profile.profiler_command("nsys", "r", ["profile"], nvtx_available=True, python="py")
    assert command[:4] == ["nsys", "profile", "--capture-range=cudaProfilerApi", "--capture-range-end=stop"]
    assert "--trace=cuda,nvtx,osrt" in command and command[-4:] == ["py", "-m", "harness", "profile"]


def test_tool_choice_says_plainly_what_is_missing():
    only_ncu = lambda tool: "/usr/bin/ncu" if tool == "ncu" else None  # the H200 image
    assert profile.choose_tool(None, only_ncu) == ("ncu", None)
    tool, message = profile.choose_tool("nsys", only_ncu)
    assert tool == "ncu" and message == "nsys is not installed (not on PATH): running under ncu instead"
    tool, message = profile.choose_tool("ncu", lambda tool: None)
    assert tool is None and "ncu is not installed" in message and "without a profiler" in message
    assert profile.choose_tool(None, lambda tool: None)[0] is None
    assert profile.choose_tool("none", only_ncu) == (None, None)


def test_case_lookup(toy):
    suite = registry.all_suites()["toy"]
    assert profile.find_case(suite, "n=4096,content=b", None, "cpu").dtype == torch.float32  # the first dtype
    assert profile.find_case(suite, "n=4096,content=b", "float16", "cpu").dtype == torch.float16
    assert profile.find_case(suite, "n=1000,content=a,dtype=float16,device=cpu", None, "cpu").case_id == "n=1000,content=a"
    assert profile.find_case(suite, "4096.*content=a", None, "cpu").case_id == "n=4096,content=a"
    with pytest.raises(profile.ProfileError, match="several cases"):
        profile.find_case(suite, "n=4096", None, "cpu")
    with pytest.raises(profile.ProfileError, match="no case"):
        profile.find_case(suite, "n=7", None, "cpu")


def test_cpu_case_runs_once_without_a_profiler_and_says_so(tmp_path, toy, capsys):
    out = tmp_path / "prof"
    code = cli.main(["profile", "--suite", "toy", "--case", "n=4096,content=a", "--impl", "ours", "--device", "cpu",
                     "--out", str(out)])
    assert code == 0
    err = capsys.readouterr().err.replace("\n", " ")
    assert "ncu and nsys capture CUDA work" in err
    # the command to run on a GPU machine: this one on CUDA, the run folder left to that run
    gpu_command = " ".join(err.split()).split("On a GPU machine: ")[1].split(" profiled one call")[0]
    assert gpu_command == "python -m harness profile --suite toy --case n=4096,content=a --impl ours --device cuda"
    record = json.loads((out / profile.PROFILE_FILE).read_text())
    assert record["label"] == "n=4096,content=a,dtype=float32,device=cpu" and record["call_ms"] > 0
    assert record["nvtx_ranges"] == ["detbench", "toy", "ours", record["label"]] and record["bytes"] == 2 * 4096 * 4
    assert (out / "environment.json").exists()


def test_usage_errors(tmp_path, toy):
    base = ["profile", "--suite", "toy", "--device", "cpu", "--out", str(tmp_path)]
    assert cli.main([*base, "--case", "n=4096,content=a", "--impl", "nope"]) == 2
    assert cli.main([*base, "--case", "n=5", "--impl", "ours"]) == 2
    assert cli.main(["profile", "--suite", "nope", "--case", "x", "--impl", "ours", "--device", "cpu"]) == 2


@pytest.mark.cuda
def test_cuda_case_without_a_profiler(tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "all_suites", lambda: {"toy": _suite("cuda")})
    out = tmp_path / "prof"
    assert cli.main(["profile", "--suite", "toy", "--case", "n=4096,content=a", "--impl", "ours", "--device", "cuda",
                     "--tool", "none", "--out", str(out)]) == 0
    record = json.loads((out / profile.PROFILE_FILE).read_text())
    assert record["device"] == "cuda" and record["call_ms"] > 0 and record["tool"] is None


def test_the_inner_command_gets_the_outer_run_folder(tmp_path):
    outer = ["profile", "--suite", "toy", "--out", "elsewhere", "--case", "n=1000", "--out=other", "--impl", "ours"]
    assert profile.inner_arguments(outer, tmp_path) == ["profile", "--suite", "toy", "--case", "n=1000", "--impl", "ours",
                                                   "--out", str(tmp_path)]
