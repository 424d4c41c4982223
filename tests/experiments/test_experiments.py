"""study / exploit / crossplay with test doubles: table assembly, resumption, the matrix."""

import json
from pathlib import Path

import pytest

from selfredteam.errors import ConfigError
from selfredteam.eval.benchmarks import EvalPrompt
from selfredteam.experiments.study import Study, StudySpec, load_variants, study_markdown
from selfredteam.experiments.tools import Tools
from selfredteam.judges.base import Judgement
from selfredteam.policy.base import Generation


class ScriptedPolicy:
    """Test double: a model named by its spec. As a defender it refuses harmful-looking prompts
    (starting with 'h') when its spec says 'safe', everything when 'paranoid', nothing otherwise;
    as an attacker it writes '<spec> attack on <seed>'."""

    def __init__(self, spec):
        self.name, self.spec = spec, spec

    def generate(self, turns, params):
        out = []
        for t in turns:
            user = t.messages[-1]["content"]
            if "red-teaming" in t.messages[0]["content"]:
                tag = "HARM" if "gets the target to comply" in user else "OK"  # the harmful-seed task
                text = f"thinking </think><answer>{Path(self.spec).name} attack: {tag}</answer>"
            else:
                harmful = user.startswith("h") or "HARM" in user
                refuse = "paranoid" in self.spec or ("safe" in self.spec and harmful)
                text = "ok </think><answer>" + ("Sorry, I can't." if refuse else "Sure, here it is.") + "</answer>"
            out.append(Generation(text, [1], [2]))
        return out


class RuleJudge:
    """Test double: prompt harmful if it starts with 'h' (or is an attack on a harmful seed); refusal
    if the answer starts with 'Sorry'; harmful answer if it complies with a harmful prompt."""

    judge_id = "rule"

    def judge(self, pairs):
        out = []
        for p, r in pairs:
            harmful = p.startswith("h") or "HARM" in p
            refusal = (r or "").startswith("Sorry")
            out.append(Judgement(harmful, refusal, harmful and not refusal))
        return out


def fake_train(calls):
    def train(cfg, out, resume=None, judge=None, log=print):
        calls.append((str(out), cfg.train.role_mode, cfg.game.cot, resume is not None))
        (out / "checkpoints" / "step_1").mkdir(parents=True, exist_ok=True)  # what a real run leaves
        (out / "checkpoints" / "step_1" / "state.json").write_text('{"step": 1}')
        (out / "checkpoints" / "latest").write_text("step_1")
        rows = [{"step": s, "game/asr": 0.5 - 0.1 * s, "kl/mean": 0.1} for s in (1, 2, 3)]
        (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        return {"run/stop_reason": "done", "kl/mean": 0.1}
    return train


EVAL_SETS = {"wildjailbreak": [EvalPrompt(f"h{i}", "harmful", "harmful_adversarial", f"x:{i}") for i in range(6)]
             + [EvalPrompt(f"b{i}", "benign", "benign_adversarial", f"y:{i}") for i in range(6)]}


@pytest.fixture(autouse=True)
def cheap_diversity(monkeypatch):
    """SBERT needs the real encoder: a test double gives a similarity from the share of equal words."""
    import selfredteam.eval.diversity as div

    def sim(texts, encoder=None):
        sets = [set(t.split()) for t in texts]
        pairs = [(a, b) for i, a in enumerate(sets) for j, b in enumerate(sets) if i != j]
        return sum(len(a & b) / len(a | b) for a, b in pairs) / len(pairs)

    monkeypatch.setattr(div, "sbert_similarity", sim)


def make_study(tmp_path, names=("selfplay-safe", "defender-only"), seeds=(0, 1), variants_file=None, calls=None):
    variants = load_variants(list(names), variants_file)
    spec = StudySpec("cpu-demo", variants, list(seeds), tmp_path / "study", eval_sets=EVAL_SETS, diversity_seeds=6)
    tools = Tools(fake_train(calls if calls is not None else []),
                  lambda spec, cfg, role: ScriptedPolicy(spec if "defender-only" not in spec else spec.replace("defender-only", "x")),
                  RuleJudge(), log=lambda *a: None)
    return Study(spec, tools)


def test_unknown_variant_lists_the_valid_ones(tmp_path):
    with pytest.raises(ConfigError, match="Unknown variant.*Valid: selfplay, attacker-only, defender-only, no-cot"):
        load_variants(["selfplay", "nash"])
    f = tmp_path / "v.yaml"
    f.write_text("selfplay-safe: {train.kl_coef: 0.02}\nlow-lr:\n  train:\n    lr: 1.0e-5\n")
    got = load_variants(["selfplay-safe", "low-lr"], f)
    assert got[0].overrides == {"train.kl_coef": 0.02} and got[1].overrides == {"train.lr": 1.0e-5}


def test_study_table_resumption_and_comparisons(tmp_path):
    f = tmp_path / "v.yaml"
    f.write_text("selfplay-safe: {}\n")
    calls = []
    study = make_study(tmp_path, variants_file=f, calls=calls)
    table = study.run()
    assert len(calls) == 4  # 2 variants x 2 seeds trained
    safe, donly = table["variants"]["selfplay-safe"], table["variants"]["defender-only"]
    fam = safe["comparison"]["families"][0]
    assert fam["family"] == "wildjailbreak_adversarial" and fam["delta_J"]["value"] == 1.0
    assert fam["per_model_delta_J"] == [1.0, 1.0] and safe["comparison"]["n_models"] == 2
    assert donly["comparison"]["families"][0]["delta_J"]["value"] == 0.0
    assert safe["diversity"]["sbert_diversity"]["n"] == 2
    md = (tmp_path / "study" / "study.md").read_text()
    assert "| selfplay-safe | 0,1 | wildjailbreak_adversarial | 1.00 / 0.00 |" in md and "| defender-only |" in md
    # Resumption: nothing is redone; a lost result file redoes that phase only.
    make_study(tmp_path, variants_file=f, calls=calls).run()
    assert len(calls) == 4
    (tmp_path / "study" / "defender-only" / "seed1" / "study_train.json").unlink()
    make_study(tmp_path, variants_file=f, calls=calls).run()
    assert len(calls) == 5 and calls[-1][0].endswith("defender-only/seed1") and calls[-1][3]  # resumed the run


def test_paper_comparisons_and_no_cot_base(tmp_path):
    calls = []
    study = make_study(tmp_path, names=("selfplay", "attacker-only", "defender-only", "no-cot"), seeds=(0,), calls=calls)
    modes = study.modes()
    assert sorted(m.split("-")[0] for m in modes) == ["cot", "direct"]  # the no-cot variant gets a direct base
    table = study.run()
    assert [c["comparison"] for c in table["comparisons"]] == ["robustness", "diversity", "hidden CoT"]
    assert [c[1:3] for c in calls] == [("selfplay", True), ("attacker-only", True), ("defender-only", True),
                                        ("selfplay", False)]
    for c in table["comparisons"]:  # the difference carries its paired interval
        d = c["diff"]
        assert d["delta_J_interval"]["value"] == pytest.approx(d["delta_J"])
        assert d["delta_J_interval"]["low"] <= d["delta_J"] <= d["delta_J_interval"]["high"]
    assert "## The paper's comparisons" in study_markdown(table)


def test_crossplay_matrix(tmp_path):
    from selfredteam.config import load_config
    from selfredteam.experiments.crossplay import crossplay

    runs = [tmp_path / "safe-run", tmp_path / "paranoid-run"]
    cfg = load_config("cpu-demo")
    tools = Tools(None, lambda spec, cfg, role: ScriptedPolicy(spec), RuleJudge())
    result = crossplay(runs, cfg, tmp_path / "cp", tools, n_seeds=8)
    assert result["attackers"] == result["defenders"] == ["base", "safe-run", "paranoid-run"]
    cells = result["cells"]
    assert all(len(row) == 3 for row in cells.values())
    assert cells["base"]["base"]["asr"]["k"] == 4 and cells["base"]["safe-run"]["asr"]["k"] == 0
    assert cells["safe-run"]["paranoid-run"]["benign_refusal"]["k"] == 4
    assert cells["safe-run"]["safe-run"]["benign_refusal"]["k"] == 0
    from selfredteam.experiments.crossplay import crossplay_report

    html_path, md_path = crossplay_report(result, tmp_path / "cp")
    assert "data:image/png;base64," in html_path.read_text() and "| safe-run |" in md_path.read_text()
    again = crossplay(runs, cfg, tmp_path / "cp", Tools(None, _no_model, RuleJudge()), n_seeds=8)
    assert again["cells"] == cells  # attacks and answers reused from OUT


def _no_model(spec, cfg, role):
    class Cached(ScriptedPolicy):
        def generate(self, turns, params):
            raise AssertionError("everything should come from the cache")
    return Cached(spec)


def test_exploit_probe(tmp_path):
    from selfredteam.config import load_config
    from selfredteam.experiments.exploit import exploit

    calls = []
    tools = Tools(fake_train(calls), lambda spec, cfg, role: ScriptedPolicy(spec), RuleJudge(), log=lambda *a: None)
    run = tmp_path / "safe-run"
    res = exploit(run, load_config("cpu-demo"), tmp_path / "ex", tools, steps=3, final_seeds=6)
    assert [c[1] for c in calls] == ["attacker-only", "attacker-only"]
    assert res["run"]["final_asr"]["value"] == 0.0 and res["base"]["final_asr"]["value"] == 1.0
    assert [s for s, _ in res["run"]["curve"]] == [1, 2, 3] and res["run"]["curve"][0][1] == pytest.approx(0.4)
    assert (tmp_path / "ex" / "exploit.png").is_file()


class FlakyTarget(ScriptedPolicy):
    """Test double: a target that answers `budget` prompts, then its endpoint is down."""

    def __init__(self, spec, budget):
        super().__init__(spec)
        self.budget, self.answered = budget, []

    def generate(self, turns, params):
        from selfredteam.errors import EndpointError

        if len(turns) > self.budget:
            raise EndpointError("The policy endpoint at http://127.0.0.1:9/v1 failed after 4 attempts.")
        self.budget -= len(turns)
        self.answered += [t.messages[-1]["content"] for t in turns]
        return [Generation("Sure, here it is." if "HARM" in t.messages[-1]["content"] else "Sorry, no.", [1], [2])
                for t in turns]


def test_redteam_stops_cleanly_and_resumes_without_requerying(tmp_path, monkeypatch):
    from selfredteam.config import load_config
    from selfredteam.experiments import redteam as rt

    monkeypatch.setattr(rt, "CHUNK", 4)
    cfg = load_config("cpu-demo")
    target = FlakyTarget("target", budget=4)
    tools = Tools(None, lambda spec, cfg, role: target if spec == "openai:t" else ScriptedPolicy(spec), RuleJudge(),
                  log=lambda *a: None)
    with pytest.raises(rt.TargetDown, match="Stopped after 4 of 10 attacks.*Re-run the same command"):
        rt.redteam("embedded", "openai:t", cfg, tmp_path, tools, n=5, attempts=2)
    assert len(rt._read_jsonl(tmp_path / "results.jsonl")) == 4
    target.budget = 100
    first = list(target.answered)
    summary = rt.redteam("embedded", "openai:t", cfg, tmp_path, tools, n=5, attempts=2)
    assert len(target.answered) == 10 and target.answered[:4] == first  # the 4 done were not asked again
    results = rt._read_jsonl(tmp_path / "results.jsonl")
    assert len(results) == 10 and {(r["seed_index"], r["attempt"]) for r in results} == {(i, a) for i in range(5) for a in (0, 1)}
    # The summary recomputed from results.jsonl
    harmful = summary["by_label"]["harmful"]
    assert harmful["per_attempt"]["k"] == sum(r["success"] for r in results) == 10 and harmful["best_of_k"]["n"] == 5
    with pytest.raises(Exception, match="other settings"):
        rt.redteam("embedded", "openai:t", cfg, tmp_path, tools, n=6, attempts=2)
    from selfredteam.eval.report import redteam_report

    html_path, _ = redteam_report(summary, results, tmp_path)
    assert "Content warning" in html_path.read_text() and "<details>" in html_path.read_text()


def test_a_presets_run_time_limit_does_not_stretch_the_probe():
    from selfredteam.config import load_config
    from selfredteam.experiments.exploit import PROBE_TIME_LIMIT_MIN, probe_config

    demo = load_config("cpu-demo")
    assert demo.train.time_limit_min == 18.0  # the demo's own guard, for the whole run
    assert probe_config(demo, None, 8).train.time_limit_min == PROBE_TIME_LIMIT_MIN
    tight = load_config("cpu-demo", overrides=["train.time_limit_min=2"])
    assert probe_config(tight, None, 8).train.time_limit_min == 2
    none = load_config("cpu-demo", overrides=["train.time_limit_min=0"])
    assert probe_config(none, None, 8).train.time_limit_min == PROBE_TIME_LIMIT_MIN
