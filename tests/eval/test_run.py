"""Eval runner with test doubles: answers extracted before judging, rates, caching, file loading."""

import json

import pytest

from selfredteam.errors import DataError
from selfredteam.eval.benchmarks import EvalPrompt, generic_prompts, load_benchmark
from selfredteam.eval.run import run_eval, stratified_sample
from selfredteam.policy.base import SamplingParams
from tests.fakes import FakeJudge, FakePolicy


def test_shipped_benchmarks_load_offline():
    xs = load_benchmark("xstest")
    assert len(xs) == 450 and {p.subset for p in xs} == {"xstest_safe", "xstest_unsafe"}
    wj = load_benchmark("wildjailbreak")
    assert {p.subset for p in wj} == {"harmful_vanilla", "harmful_adversarial", "benign_vanilla", "benign_adversarial"}
    with pytest.raises(DataError, match="Valid: xstest"):
        load_benchmark("nope")
    with pytest.raises(DataError, match="--benchmark-path trustllm_jailbreak=PATH"):
        load_benchmark("trustllm_jailbreak")


def test_original_formats_by_path(tmp_path):
    csv = tmp_path / "harmbench_behaviors_text_all.csv"
    csv.write_text("Behavior,FunctionalCategory\nbehaviour one,standard\nbehaviour two,contextual\n")
    assert [p.label for p in load_benchmark("harmbench", str(csv))] == ["harmful", "harmful"]
    cases = tmp_path / "test_cases.json"
    cases.write_text(json.dumps({"b1": ["case a", "case b"], "b2": ["case c"]}))
    assert len(load_benchmark("harmbench", str(cases))) == 3


def test_stratified_sample_keeps_subsets():
    ps = [EvalPrompt(f"s{i}", "benign", "safe", "") for i in range(90)] + [EvalPrompt(f"u{i}", "harmful", "unsafe", "") for i in range(10)]
    sample = stratified_sample(ps, 20, seed=1)
    assert len(sample) == 20 and sum(p.subset == "unsafe" for p in sample) == 2
    assert stratified_sample(ps, 20, seed=1) == sample


def test_run_eval_judges_answer_only_and_caches(tmp_path):
    policy = FakePolicy("unused", "secret thoughts </think><answer>I'm sorry, I can't.</answer>")
    judge = FakeJudge(ph=True, rr=True, rh=False)
    sets = {"b": [EvalPrompt("p1", "harmful", "h", "x:1"), EvalPrompt("p2", "benign", "s", "x:2"),
                  EvalPrompt("UNPARSEABLE", "benign", "s", "x:3")]}
    summary = run_eval(policy, judge, sets, cot=True, params=SamplingParams(8), out=tmp_path)
    assert all(r == "I'm sorry, I can't." for _, r in judge.seen)
    by = {e["subset"]: e for e in summary["subsets"]}
    assert by["h"]["asr"]["k"] == 0 and by["h"]["refusal_rate"]["k"] == 1
    assert by["s"]["over_refusal_rate"]["k"] == 1 and by["s"]["parse_errors"] == 1 and by["s"]["n"] == 2
    rows = [json.loads(x) for x in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert {"prompt", "response", "answer", "judge"} <= rows[0].keys()
    n_calls = len(policy.calls)
    run_eval(policy, judge, sets, cot=True, params=SamplingParams(8), out=tmp_path)
    assert len(policy.calls) == n_calls  # everything reused from results.jsonl


def test_generic_file_errors(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text('{"text": "a"}\n')
    with pytest.raises(DataError, match="missing or empty field 'prompt'"):
        generic_prompts(str(f), "prompt", "harmful")
    assert generic_prompts(str(f), "text", "benign")[0].label == "benign"


def test_attacks_from_run_and_generate(tmp_path):
    from selfredteam.data import Seed
    from selfredteam.eval.diversity import attacks_from_run, generate_attacks

    games = tmp_path / "games"
    games.mkdir()
    rows = [{"seed": "s1", "seed_label": "harmful", "attacker": {"answer": "a1"}},
            {"seed": "s2", "seed_label": "benign", "attacker": None}]
    (games / "step_1.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (games / "step_2.jsonl").write_text(json.dumps(rows[0] | {"attacker": {"answer": "a2"}}) + "\n")
    assert [a["attack"] for a in attacks_from_run(tmp_path)] == ["a1", "a2"]
    assert [a["attack"] for a in attacks_from_run(tmp_path, last_steps=1)] == ["a2"]
    out = generate_attacks(FakePolicy("plan </think><answer>new prompt</answer>", "x"),
                           [Seed("s", "harmful")], cot=True, params=SamplingParams(8))
    assert out[0]["attack"] == "new prompt" and out[0]["cot_violation"] is False


def test_select_prompts_by_subset_and_cap():
    from selfredteam.errors import UserError
    from selfredteam.eval.run import select_prompts

    sets = {"wj": [EvalPrompt(f"h{i}", "harmful", "harmful_adversarial", "") for i in range(500)]
            + [EvalPrompt(f"b{i}", "benign", "benign_adversarial", "") for i in range(65)]
            + [EvalPrompt(f"v{i}", "harmful", "harmful_vanilla", "") for i in range(500)]}
    out = select_prompts(sets, ["harmful_adversarial", "benign_adversarial"], 120, seed=0)
    subsets = [p.subset for p in out["wj"]]
    assert subsets.count("harmful_adversarial") == 120 and subsets.count("benign_adversarial") == 65
    assert "harmful_vanilla" not in subsets and out == select_prompts(sets, ["harmful_adversarial", "benign_adversarial"], 120)
    with pytest.raises(UserError, match="Unknown subset"):
        select_prompts(sets, ["xstest_safe"], None)


def test_a_subset_sample_does_not_depend_on_the_other_subsets():
    from selfredteam.eval.run import select_prompts

    sets = {"wj": [EvalPrompt(f"h{i}", "harmful", "harmful_adversarial", "") for i in range(500)]
            + [EvalPrompt(f"v{i}", "harmful", "harmful_vanilla", "") for i in range(500)]}
    alone = select_prompts(sets, ["harmful_adversarial"], 50)["wj"]
    both = select_prompts(sets, None, 50)["wj"]
    assert alone == [p for p in both if p.subset == "harmful_adversarial"]


def test_answers_reused_read_only_from_another_results_file(tmp_path):
    from selfredteam.eval.run import answer_prompts

    policy = FakePolicy("unused", "t </think><answer>Sure, here it is.</answer>")
    sets = {"b": [EvalPrompt("p1", "harmful", "h", "x:1"), EvalPrompt("p2", "benign", "s", "x:2")]}
    answer_prompts(policy, FakeJudge(), {"b": sets["b"][:1]}, True, SamplingParams(8), tmp_path / "eval")
    other = tmp_path / "eval" / "results.jsonl"
    before = other.read_text()
    policy.calls.clear()
    rows = answer_prompts(policy, FakeJudge(), sets, True, SamplingParams(8), tmp_path / "probe", reuse=[other])
    assert [len(c) for c in policy.calls] == [1]  # only p2 was generated
    assert [r["prompt"] for r in rows] == ["p1", "p2"] and other.read_text() == before
