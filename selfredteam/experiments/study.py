"""`selfredteam study`: the paper's comparisons in one command.

Each variant is a named set of config overrides on the same preset, so every variant trains
with the same budget (steps, games per step, tokens). For each variant x seed:

    train        the run (`rl.loop.train`), in OUT/<variant>/seed<S>/
    eval         its defender on the chosen benchmarks, against the base model's answers to the
                 same prompts: refusal rates, J = refusal(harmful) - refusal(benign), ΔJ, Δ
                 over-refusal, ΔASR (eval/compare.py)
    diversity    its attacker revising one fixed seed set (the same for every variant): SBERT
                 similarity / diversity and Self-BLEU
    exploit      optionally, the best-response probe against its defender (experiments/exploit.py)

plus the base model's answers and attacks once. Then one table shaped like the paper's
comparisons (robustness: self-play vs defender-only; diversity: self-play vs attacker-only;
hidden CoT vs none), means over seeds with intervals, and the HTML report of all runs. Every
phase writes its result file when it ends and a re-run skips finished phases (phases.py).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from selfredteam.checkpoint import has_checkpoint
from selfredteam.config import Config, flatten, load_config
from selfredteam.errors import ConfigError, UserError
from selfredteam.experiments.phases import Phase, Progress, run_phases
from selfredteam.experiments.tools import Tools
from selfredteam.fsutil import read_jsonl

BASE = "base"


@dataclass(frozen=True)
class Variant:
    name: str
    overrides: dict[str, Any]
    description: str = ""


VARIANTS: dict[str, Variant] = {v.name: v for v in [
    Variant("selfplay", {}, "both roles learn online (the paper's method)"),
    Variant("attacker-only", {"train.role_mode": "attacker-only"}, "the attacker learns against a frozen defender"),
    Variant("defender-only", {"train.role_mode": "defender-only"},
            "the defender learns on vanilla seeds (plus train.static_prompts: static attacks) with no attacker"),
    Variant("no-cot", {"game.cot": False}, "self-play without the hidden chain of thought"),
]}
"""The paper's ablations. Users add their own in a YAML file: `name: {section.key: value}`."""

COMPARISONS = [
    ("robustness", "selfplay", "defender-only", "defender safety: self-play vs a defender trained without an adaptive attacker"),
    ("diversity", "selfplay", "attacker-only", "attack diversity: self-play vs an attacker trained against a frozen defender"),
    ("hidden CoT", "selfplay", "no-cot", "hidden chain of thought vs answering directly"),
]


def load_variants(names: list[str], path: Path | None = None) -> list[Variant]:
    """The named variants, from the built-ins and the YAML file `path`; unknown names list the valid."""
    registry = dict(VARIANTS)
    if path:
        if not path.is_file():
            raise ConfigError(f"Variants file {path} does not exist.")
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
            raise ConfigError(f"{path} must map variant names to override mappings, e.g. `low-kl: {{train.kl_coef: 0.001}}`.")
        for name, overrides in data.items():
            registry[str(name)] = Variant(str(name), flatten(overrides), f"from {path.name}")
    unknown = [n for n in names if n not in registry]
    if unknown:
        raise ConfigError(f"Unknown variant(s) {', '.join(unknown)}. Valid: {', '.join(registry)}"
                          + ("" if path else "; add your own with --variants-file FILE.yaml") + ".")
    if not names:
        raise ConfigError("--variants needs at least one variant.")
    return [registry[n] for n in names]


@dataclass
class StudySpec:
    preset: str
    variants: list[Variant]
    seeds: list[int]
    out: Path
    config_path: Path | None = None
    overrides: list[str] = field(default_factory=list)
    eval_sets: dict[str, list] = field(default_factory=dict)
    """benchmark name -> EvalPrompts (chosen and sampled once: every model answers the same)."""
    diversity_seeds: int = 32
    exploit_steps: int = 0
    """0: no exploit phase; N: the best-response probe with N steps per run."""

    def config(self, variant: Variant | None, seed: int) -> Config:
        sets = [f"{k}={json.dumps(v) if isinstance(v, (list, dict)) else v}" for k, v in (variant.overrides if variant else {}).items()]
        return load_config(self.preset, self.config_path, [*self.overrides, *sets, f"run.seed={seed}"])


class Study:
    def __init__(self, spec: StudySpec, tools: Tools) -> None:
        self.spec, self.tools = spec, tools
        base_cfg = spec.config(None, spec.seeds[0])
        self.base_model = base_cfg.model.name_or_path
        from selfredteam.data import load_pool, sample_batch

        # One fixed seed set for every attacker's diversity (the pool of the base config).
        self.div_seeds = sample_batch(load_pool(base_cfg.data), spec.diversity_seeds, base_cfg.game.harmful_fraction,
                                      random.Random(0))

    def run_dir(self, variant: Variant, seed: int) -> Path:
        return self.spec.out / variant.name / f"seed{seed}"

    # -- phases --------------------------------------------------------------------------
    def phases(self) -> list[Phase]:
        s, out = self.spec, self.spec.out
        n_eval = sum(map(len, s.eval_sets.values()))
        phases = []
        # The base model answers and attacks once per way of playing (CoT or direct, token budget):
        # a no-CoT defender is compared with the base model answering directly.
        for mode, cfg in self.modes().items():
            phases += [Phase(f"{BASE} / eval / {mode}", "eval", out / BASE / mode / "eval.json",
                             lambda cfg=cfg, mode=mode: self._eval(self.base_model, cfg, out / BASE / mode), 1.2 * n_eval),
                       Phase(f"{BASE} / diversity / {mode}", "diversity", out / BASE / mode / "diversity.json",
                             lambda cfg=cfg: self._diversity(self.base_model, cfg), 60.0)]
        if s.exploit_steps:
            cfg = s.config(None, s.seeds[0])
            phases.append(Phase(f"{BASE} / exploit", "exploit", out / BASE / "exploit" / "exploit.json",
                                lambda cfg=cfg: self._exploit(None, cfg, out / BASE / "exploit"), 60.0 * s.exploit_steps))
        for v in s.variants:
            for seed in s.seeds:
                cfg, run = s.config(v, seed), self.run_dir(v, seed)
                tag = f"{v.name} / seed {seed}"
                phases += [
                    Phase(f"{tag} / train", "train", run / "study_train.json",
                          lambda cfg=cfg, run=run: self._train(cfg, run), 30.0 * cfg.train.steps),
                    Phase(f"{tag} / eval", "eval", run / "eval" / "study" / "eval.json",
                          lambda cfg=cfg, run=run: self._eval(str(run), cfg, run / "eval" / "study"), 1.2 * n_eval),
                    Phase(f"{tag} / diversity", "diversity", run / "diversity.json",
                          lambda cfg=cfg, run=run: self._diversity(str(run), cfg), 60.0),
                ]
                if s.exploit_steps:
                    phases.append(Phase(f"{tag} / exploit", "exploit", run / "exploit" / "exploit.json",
                                        lambda cfg=cfg, run=run: self._exploit(run, cfg, run / "exploit"),
                                        60.0 * s.exploit_steps))
        return phases

    def modes(self) -> dict[str, Config]:
        """The distinct ways the variants play (CoT or direct, defender budget): one base eval each."""
        out = {}
        for v in self.spec.variants:
            cfg = self.spec.config(v, self.spec.seeds[0])
            out.setdefault(mode_of(cfg), cfg)
        return out

    def _train(self, cfg: Config, run: Path) -> dict[str, Any]:
        import time

        t0 = time.perf_counter()
        resume = run if has_checkpoint(run) else None
        last = self.tools.train(cfg, run, resume=resume, judge=self.tools.judge, log=self.tools.log)
        if last.get("run/stop_reason") == "signal":
            raise KeyboardInterrupt  # Ctrl-C: the run saved a checkpoint; a re-run resumes it
        return {"wall_s": time.perf_counter() - t0, "stop_reason": last.get("run/stop_reason", "done"),
                "kl_last": last.get("kl/mean")}

    def _eval(self, spec: str, cfg: Config, out: Path) -> dict[str, Any]:
        from selfredteam.eval.run import answer_prompts, summarize_answers
        from selfredteam.game.play import sampling_params

        policy = self.tools.policy(spec, cfg, "defender")
        rows = answer_prompts(policy, self.tools.judge, self.spec.eval_sets, cfg.game.cot,
                              sampling_params(cfg.generation, "defender", cfg.game.cot), out)
        return {"summary": summarize_answers(rows), "results": str(out / "results.jsonl")}

    def _diversity(self, spec: str, cfg: Config) -> dict[str, Any]:
        from selfredteam.eval.diversity import diversity_report, generate_attacks
        from selfredteam.game.play import sampling_params

        policy = self.tools.policy(spec, cfg, "attacker")
        attacks = generate_attacks(policy, self.div_seeds, cfg.game.cot, sampling_params(cfg.generation, "attacker", cfg.game.cot))
        return diversity_report(attacks) | {"attacks": attacks}

    def _exploit(self, run: Path | None, cfg: Config, out: Path) -> dict[str, Any]:
        from selfredteam.experiments.exploit import probe

        return probe(str(run) if run else None, cfg, out, self.tools, steps=self.spec.exploit_steps)

    # -- the study -----------------------------------------------------------------------
    def run(self, progress: Progress | None = None) -> dict[str, Any]:
        results = run_phases(self.phases(), progress)
        table = self.assemble(results)
        (self.spec.out / "study.json").write_text(json.dumps(table, indent=2) + "\n")
        (self.spec.out / "study.md").write_text(study_markdown(table))
        return table

    def assemble(self, results: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """Per variant: the defender's change against the base (means over seeds, joint bootstrap),
        the attacker's diversity (mean and range over seeds), the exploit ASR; then the paper's
        three comparisons as differences between variants."""
        from selfredteam.eval.compare import compare_models, delta_j_difference

        variants, answers = {}, {}
        for v in self.spec.variants:
            tags = [f"{v.name} / seed {s}" for s in self.spec.seeds]
            mode = mode_of(self.spec.config(v, self.spec.seeds[0]))
            answers[v.name] = ([_rows(results[f"{t} / eval"]) for t in tags], _rows(results[f"{BASE} / eval / {mode}"]))
            comp = compare_models(*answers[v.name])
            div = [results[f"{t} / diversity"] for t in tags]
            entry = {"description": v.description, "overrides": v.overrides, "seeds": self.spec.seeds, "mode": mode,
                     "comparison": comp, "train": [results[f"{t} / train"] for t in tags],
                     "diversity": {k: _spread([d[k] for d in div]) for k in ("sbert_diversity", "self_bleu_diversity")}}
            if self.spec.exploit_steps:
                entry["exploit_asr"] = _spread([results[f"{t} / exploit"]["final_asr"]["value"] for t in tags])
            variants[v.name] = entry
        comparisons = []
        for title, a, b, what in COMPARISONS:
            if a in variants and b in variants:
                diff = _differences(variants[a], variants[b])
                fam = _family(variants[a])
                if fam:  # the same difference with a paired interval over the prompts
                    diff["delta_J_interval"] = delta_j_difference(*answers[a], *answers[b], fam["family"])
                comparisons.append({"comparison": title, "a": a, "b": b, "what": what, "diff": diff})
        base = {"model": self.base_model, "diversity": {
            mode: {k: results[f"{BASE} / diversity / {mode}"][k] for k in ("sbert_diversity", "self_bleu_diversity")}
            for mode in self.modes()}}
        if self.spec.exploit_steps:
            base["exploit_asr"] = results[f"{BASE} / exploit"]["final_asr"]
        return {"base": base, "variants": variants, "comparisons": comparisons}


def _rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    return read_jsonl(Path(result["results"]))


def _spread(values: list[float]) -> dict[str, float]:
    """Mean over seeds, with the lowest and highest seed (2 seeds do not make a t-interval)."""
    return {"mean": sum(values) / len(values), "min": min(values), "max": max(values), "n": len(values)}


def _family(entry: dict[str, Any], name: str = "wildjailbreak_adversarial") -> dict[str, Any] | None:
    fams = {f["family"]: f for f in entry["comparison"]["families"]}
    return fams.get(name) or next(iter(fams.values()), None)


def _differences(a: dict[str, Any], b: dict[str, Any]) -> dict[str, float | None]:
    fa, fb = _family(a), _family(b)
    return {
        "delta_J": fa["delta_J"]["value"] - fb["delta_J"]["value"] if fa and fb else None,
        "sbert_diversity": a["diversity"]["sbert_diversity"]["mean"] - b["diversity"]["sbert_diversity"]["mean"],
        "self_bleu_diversity": a["diversity"]["self_bleu_diversity"]["mean"] - b["diversity"]["self_bleu_diversity"]["mean"],
    }


def study_markdown(table: dict[str, Any]) -> str:
    """The study table: one row per variant, then the paper's comparisons."""
    from selfredteam.eval.compare import fmt_interval

    lines = ["# selfredteam study", "", f"Base model: {table['base']['model']}. Defender numbers are means over "
             "the seeds with a paired bootstrap over prompts (95%); diversity is the mean over seeds "
             "[lowest, highest seed].", ""]
    has_exploit = any("exploit_asr" in v for v in table["variants"].values())
    header = ["variant", "seeds", "family", "refusal harmful / benign", "J", "ΔJ vs base", "Δ over-refusal",
              "SBERT diversity", "Self-BLEU diversity"] + (["exploit ASR"] if has_exploit else [])
    lines += ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for mode, bd in table["base"]["diversity"].items():
        e = table["base"].get("exploit_asr")
        lines.append(f"| base ({mode}) | - | - | - | - | - | - | {bd['sbert_diversity']:.3f} | "
                     f"{bd['self_bleu_diversity']:.3f} |" + (f" {e['value']:.2f} [{e['low']:.2f}, {e['high']:.2f}] |"
                                                              if has_exploit and e else " - |" if has_exploit else ""))
    for name, v in table["variants"].items():
        f = _family(v)
        div = [f"{d['mean']:.3f} [{d['min']:.3f}, {d['max']:.3f}]" for d in v["diversity"].values()]
        if f:
            m = f["model"]
            cells = [f["family"], f"{m['harmful_refusal']['k'] / m['harmful_refusal']['n']:.2f} / "
                     f"{m['benign_refusal']['k'] / m['benign_refusal']['n']:.2f}", fmt_interval(m["J"]),
                     fmt_interval(f["delta_J"]), fmt_interval(f["delta_over_refusal"])]
        else:
            cells = ["-"] * 5
        row = [name, ",".join(map(str, v["seeds"])), *cells, *div]
        if has_exploit:
            e = v.get("exploit_asr")
            row.append(f"{e['mean']:.2f} [{e['min']:.2f}, {e['max']:.2f}]" if e else "-")
        lines.append("| " + " | ".join(row) + " |")
    if table["comparisons"]:
        lines += ["", "## The paper's comparisons", "", "| comparison | a vs b | ΔJ (a - b) [95%] | SBERT diversity (a - b) | "
                  "Self-BLEU diversity (a - b) |", "|---|---|---|---|---|"]
        for c in table["comparisons"]:
            d = c["diff"]
            dj = ("-" if d["delta_J"] is None else fmt_interval(d["delta_J_interval"]) if d.get("delta_J_interval")
                  else f"{d['delta_J']:+.2f}")
            lines.append(f"| {c['comparison']} | {c['a']} vs {c['b']} | {dj} | {d['sbert_diversity']:+.3f} | "
                         f"{d['self_bleu_diversity']:+.3f} |")
    return "\n".join(lines) + "\n"


def check_runs(paths: list[Path]) -> None:
    """A clear error for a path that is not a `selfredteam train` run (before anything loads)."""
    from selfredteam.policy.spec import is_run_dir

    for p in paths:
        if not is_run_dir(p):
            raise UserError(f"{p} is not a `selfredteam train` run dir (no checkpoints/ or state.json): pass the "
                            "--out dir of a train run, or one of its checkpoints/step_N dirs.")


def mode_of(cfg: Config) -> str:
    """How a config plays a turn, as far as the answers depend on it: `cot-80`, `direct-128`."""
    g = cfg.generation
    return f"{'cot' if cfg.game.cot else 'direct'}-{g.defender_max_new_tokens}-t{g.temperature:g}"
