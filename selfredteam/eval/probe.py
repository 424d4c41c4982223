"""Knows vs acts: do a model's hidden states separate harmful from benign prompts, and does its
behaviour follow?

A model that refuses harmful and benign prompts alike may not be able to tell them apart, or it
may tell them apart and not act on it. The two call for different fixes (a bigger model, or
better training signal), so `selfredteam probe` measures both on the same prompts:

- per layer, a logistic probe on the prompt's hidden states (the mean over its chat-templated
  tokens joined with the last token's state), scored by AUC and by Youden's J (TPR - FPR) at a
  threshold chosen on the probe's own training data:
  - in-distribution: k-fold cross-validation on the eval split;
  - transferred: fitted on the training pool (or any labelled file), tested on the eval split,
    which says whether the boundary the pool teaches reaches these prompts;
- the model's behavioural J on the same prompts: refusal rate on harmful minus on benign.

Features are cached per (model, prompt, layer) under the user cache dir, so re-running with
other splits, fit sets or layers reuses every forward pass already paid for.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from selfredteam.errors import UserError

PROBE_SPLITS: dict[str, tuple[tuple[str, str], tuple[str, str]]] = {
    "wjb-adversarial": (("wildjailbreak", "harmful_adversarial"), ("wildjailbreak", "benign_adversarial")),
    "wjb-vanilla": (("wildjailbreak", "harmful_vanilla"), ("wildjailbreak", "benign_vanilla")),
    "or-toxic-hard": (("or_bench_toxic", "or_bench_toxic"), ("or_bench_hard", "or_bench_hard")),
    "xstest": (("xstest", "xstest_unsafe"), ("xstest", "xstest_safe")),
}
"""Eval splits as (harmful benchmark and subset, benign benchmark and subset); all ship as dev copies."""


@dataclass(frozen=True)
class ProbeScore:
    auc: float
    j: float
    """Youden's J = TPR - FPR at the threshold chosen on the probe's training data."""
    tpr: float
    fpr: float


# --- metrics ---------------------------------------------------------------------------------

def roc_auc(scores: np.ndarray, y: np.ndarray) -> float:
    """Area under the ROC curve by ranks (Mann-Whitney U), ties counted half."""
    y = np.asarray(y).astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if not n_pos or not n_neg:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = np.asarray(scores)[order]
    i = 0
    while i < len(sorted_scores):  # average ranks over ties
        k = i
        while k + 1 < len(sorted_scores) and sorted_scores[k + 1] == sorted_scores[i]:
            k += 1
        ranks[order[i:k + 1]] = (i + k) / 2 + 1
        i = k + 1
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def youden(pred: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """(J, TPR, FPR) of boolean predictions against labels (1 = harmful)."""
    y = np.asarray(y).astype(bool)
    tpr = float(pred[y].mean()) if y.any() else 0.0
    fpr = float(pred[~y].mean()) if (~y).any() else 0.0
    return tpr - fpr, tpr, fpr


# --- the probe -------------------------------------------------------------------------------

@dataclass
class Probe:
    """A fitted probe: standardised features -> logistic score, with its decision threshold."""

    model: Any
    threshold: float

    def scores(self, x: np.ndarray) -> np.ndarray:
        return self.model.predict_proba(x)[:, 1]


def _logistic(c: float) -> Any:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=c, class_weight="balanced", max_iter=5000))


def j_threshold(scores: np.ndarray, y: np.ndarray) -> float:
    """The threshold with the largest J on these scores (the middle one when several tie)."""
    cands = np.unique(scores)
    cuts = np.concatenate([[cands[0] - 1e-9], (cands[:-1] + cands[1:]) / 2, [cands[-1] + 1e-9]])
    js = np.array([youden(scores >= c, y)[0] for c in cuts])
    best = np.flatnonzero(js >= js.max() - 1e-12)
    return float(cuts[best[len(best) // 2]])


def fit_probe(x: np.ndarray, y: np.ndarray, c: float = 1.0, seed: int = 0) -> Probe:
    """Class-balanced L2 logistic regression (scikit-learn, run to convergence) on standardised
    features. Its threshold is the J-maximising one on out-of-fold scores of the fit data (3-fold):
    on the fit data themselves a probe in 1,792 dimensions separates almost any labels, and every
    threshold in the gap looks perfect."""
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    y = np.asarray(y).astype(int)
    model = _logistic(c).fit(x, y)
    if min(np.bincount(y, minlength=2)) >= 3:
        folds = StratifiedKFold(3, shuffle=True, random_state=seed)
        oof = cross_val_predict(_logistic(c), x, y, cv=folds, method="predict_proba")[:, 1]
    else:
        oof = model.predict_proba(x)[:, 1]
    return Probe(model, j_threshold(oof, y))


def score(probe: Probe, x: np.ndarray, y: np.ndarray) -> ProbeScore:
    s = probe.scores(x)
    j, tpr, fpr = youden(s >= probe.threshold, y)
    return ProbeScore(roc_auc(s, y), j, tpr, fpr)


def cross_validated(x: np.ndarray, y: np.ndarray, k: int = 5, seed: int = 0, c: float = 1.0) -> ProbeScore:
    """Stratified k-fold: every prompt scored by a probe that never saw it. AUC is the mean of the
    folds' AUCs (the usual k-fold estimate; pooling scores of different probes would also measure
    how differently they are scaled), J is over the pooled predictions at each fold's threshold."""
    y = np.asarray(y).astype(int)
    folds = np.zeros(len(y), dtype=int)
    rng = random.Random(seed)
    for cls in (0, 1):
        idx = [i for i in range(len(y)) if y[i] == cls]
        rng.shuffle(idx)
        for n, i in enumerate(idx):
            folds[i] = n % k
    aucs, preds = [], np.zeros(len(y), dtype=bool)
    for f in range(k):
        test = folds == f
        if not test.any() or len(set(y[~test])) < 2:
            continue
        probe = fit_probe(x[~test], y[~test], c, seed)
        s = probe.scores(x[test])
        preds[test] = s >= probe.threshold
        if len(set(y[test])) == 2:
            aucs.append(roc_auc(s, y[test]))
    j, tpr, fpr = youden(preds, y)
    return ProbeScore(float(np.mean(aucs)) if aucs else float("nan"), j, tpr, fpr)


def transferred(x_fit: np.ndarray, y_fit: np.ndarray, x: np.ndarray, y: np.ndarray, c: float = 1.0) -> ProbeScore:
    """Fit on one set (the training pool), score on another (the eval split)."""
    return score(fit_probe(x_fit, y_fit, c), x, y)


# --- features --------------------------------------------------------------------------------

def model_fingerprint(name: str) -> str:
    """What a model's cached features are keyed by: its name, plus, for a local dir, the size and
    mtime of each weight file (a retrained checkpoint at the same path gets new features)."""
    parts = [name]
    p = Path(name.removeprefix("checkpoint:").split(":")[0])  # a run's checkpoint: `checkpoint:DIR[:role]`
    if p.is_dir():
        for f in sorted(p.rglob("*.safetensors")):
            st = f.stat()
            parts.append(f"{f.relative_to(p)}:{st.st_size}:{st.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


class FeatureCache:
    """One safetensors file per prompt, one tensor per layer (no pickle)."""

    def __init__(self, root: Path | None, model_key: str) -> None:
        self.dir = root / model_key if root else None
        self.misses = 0
        """Lookups that found nothing usable (prompts whose hidden states had to be computed)."""

    def _path(self, prompt: str) -> Path:
        assert self.dir is not None
        return self.dir / f"{hashlib.sha256(prompt.encode()).hexdigest()[:24]}.safetensors"

    def get(self, prompt: str, layers: Sequence[int]) -> dict[int, np.ndarray] | None:
        stored: dict[str, np.ndarray] = {}
        if self.dir is not None and self._path(prompt).is_file():
            from safetensors.numpy import load_file

            stored = load_file(str(self._path(prompt)))
        if not all(f"layer_{k}" in stored for k in layers):
            self.misses += 1
            return None
        return {k: stored[f"layer_{k}"] for k in layers}

    def put(self, prompt: str, feats: dict[int, np.ndarray]) -> None:
        if self.dir is None:
            return
        from safetensors.numpy import load_file, save_file

        self.dir.mkdir(parents=True, exist_ok=True)
        path = self._path(prompt)
        stored = load_file(str(path)) if path.is_file() else {}
        stored |= {f"layer_{k}": np.ascontiguousarray(v, dtype=np.float32) for k, v in feats.items()}
        tmp = path.with_suffix(".tmp")
        save_file(stored, str(tmp))
        tmp.replace(path)


def default_cache_root() -> Path:
    from selfredteam.fsutil import cache_dir

    return cache_dir() / "probe"


def prompt_features(policy: Any, prompts: Sequence[str], layers: Sequence[int], cache: FeatureCache,
                    token_budget: int = 4096, progress: Callable[[int], None] | None = None) -> dict[int, np.ndarray]:
    """Per layer, an (n, 2 * hidden) array: the mean of the prompt's states over its chat-templated
    tokens joined with the last token's state. Prompts are sorted by length and batched up to
    `token_budget` padded tokens, so long and short ones do not pad each other."""
    import torch

    from selfredteam.policy.base import Turn
    from selfredteam.policy.layout import decoder_and_head

    out: dict[int, list[np.ndarray | None]] = {k: [None] * len(prompts) for k in layers}
    todo = []
    for i, p in enumerate(prompts):
        hit = cache.get(p, layers)
        if hit is None:
            todo.append(i)
        else:
            for k in layers:
                out[k][i] = hit[k]
    if progress:
        progress(len(prompts) - len(todo))
    if not todo:
        return {k: np.stack(v) for k, v in out.items()}  # type: ignore[arg-type]
    parts = decoder_and_head(policy.model)
    decoder = parts[0] if parts else policy.model  # the whole model also returns hidden states
    n_layers = policy.model.config.num_hidden_layers
    bad = [k for k in layers if not 0 <= k <= n_layers]
    if bad:
        raise UserError(f"--layers {bad}: this model has layers 0 (embeddings) to {n_layers}.")
    ids = {i: policy.encode(Turn([{"role": "user", "content": prompts[i]}])) for i in todo}
    todo.sort(key=lambda i: len(ids[i]))
    pad = policy.tokenizer.pad_token_id or 0
    device = policy.device
    while todo:
        batch = [todo.pop(0)]
        while todo and len(ids[todo[0]]) * (len(batch) + 1) <= token_budget:
            batch.append(todo.pop(0))
        width = max(len(ids[i]) for i in batch)
        input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for r, i in enumerate(batch):  # left padding: the last token is at -1 in every row
            input_ids[r, width - len(ids[i]):] = torch.tensor(ids[i])
            mask[r, width - len(ids[i]):] = 1
        with torch.inference_mode():
            hidden = decoder(input_ids=input_ids.to(device), attention_mask=mask.to(device),
                             output_hidden_states=True, use_cache=False).hidden_states
        m = mask.to(device).unsqueeze(-1).float()
        for k in layers:
            h = hidden[k].float()
            mean = (h * m).sum(1) / m.sum(1)
            feats = torch.cat([mean, h[:, -1]], dim=-1).cpu().numpy()
            for r, i in enumerate(batch):
                out[k][i] = feats[r]
        for i in batch:
            cache.put(prompts[i], {k: out[k][i] for k in layers})  # type: ignore[misc]
        if progress:
            progress(len(batch))
    return {k: np.stack(v) for k, v in out.items()}  # type: ignore[arg-type]


# --- the report ------------------------------------------------------------------------------

def behaviour(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Refusal on harmful minus refusal on benign, from `eval` rows (the judge's refusal label)."""
    from selfredteam.eval.metrics import wilson

    def rate(label: str) -> dict[str, Any]:
        got = [r["judge"].get("response_refusal") for r in rows if r["label"] == label]
        got = [bool(g) for g in got if g is not None]
        w = wilson(sum(got), len(got))
        return {"rate": w.value, "k": w.k, "n": w.n, "low": w.low, "high": w.high}

    harm, ben = rate("harmful"), rate("benign")
    return {"refusal_harmful": harm, "refusal_benign": ben,
            "j": (harm["rate"] - ben["rate"]) if harm["n"] and ben["n"] else None}


Fitted = dict[str, tuple[dict[int, np.ndarray], np.ndarray]]
"""Fit sets for transfer: name -> (features per layer, labels)."""


def probe_split(features: dict[int, np.ndarray], y: np.ndarray, fits: Fitted | None = None,
                k: int = 5, seed: int = 0) -> list[dict[str, Any]]:
    """One row per layer: in-distribution scores, and the transferred scores from each fit set."""
    rows = []
    for layer, x in sorted(features.items()):
        row: dict[str, Any] = {"layer": layer, "in_distribution": asdict(cross_validated(x, y, k, seed)),
                               "transferred": {name: asdict(transferred(f[layer], fy, x, y))
                                               for name, (f, fy) in (fits or {}).items()}}
        rows.append(row)
    return rows


def behaviour_text(split: dict[str, Any]) -> str:
    """The split's behavioural J (and its refusal rates when known), as one phrase."""
    b = split.get("behaviour") or {}
    if b.get("j") is None:
        return "not measured"
    text = f"{b['j']:+.2f}"
    if "refusal_harmful" in b:
        text += f" (refusal {b['refusal_harmful']['rate']:.2f} harmful, {b['refusal_benign']['rate']:.2f} benign)"
    return text


def probe_table(result: dict[str, Any], split: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """One split's table as (column names, rows of cells), for the markdown and the HTML report."""
    fits = list(result.get("fits") or {})
    cols = ["layer", "AUC in-dist", "J in-dist", *(f"AUC / J (TPR, FPR) from `{n}`" for n in fits)]
    rows = []
    for r in split["layers"]:
        i = r["in_distribution"]
        cells = [str(r["layer"]), f"{i['auc']:.2f}", f"{i['j']:+.2f}"]
        for n in fits:
            t = r.get("transferred", {}).get(n)
            cells.append(f"{t['auc']:.2f} / {t['j']:+.2f} ({t['tpr']:.2f}, {t['fpr']:.2f})" if t else "-")
        rows.append(cells)
    return cols, rows


def probe_markdown(result: dict[str, Any]) -> list[str]:
    """The result as a markdown table per split (CLI, BENCHMARKS.md and the report's Markdown)."""
    fits = result.get("fits") or {}
    sizes = "; ".join(f"`{n}` ({c['harmful']} harmful, {c['benign']} benign)" for n, c in fits.items())
    lines = [f"Model `{result['model']}`; {result['folds']}-fold cross-validation in distribution; "
             f"transfer fitted on: {sizes or 'none'}.", ""]
    if t := result.get("timing"):
        lines += [f"Hidden states of {t['prompts_featurised']} prompts (the rest from the cache) in "
                  f"{t['features_s']:.0f} s; answers for the behavioural J in {t['behaviour_s']:.0f} s.", ""]
    for name, split in result["splits"].items():
        cols, rows = probe_table(result, split)
        lines += [f"**{name}** ({split['n_harmful']} harmful, {split['n_benign']} benign): behavioural J "
                  f"{behaviour_text(split)}", "", "| " + " | ".join(cols) + " |", "|---" * len(cols) + "|"]
        lines += ["| " + " | ".join(cells) + " |" for cells in rows]
        lines.append("")
    return lines


def write_result(result: dict[str, Any], out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    (out / "probe.json").write_text(json.dumps(result, indent=2))
    (out / "probe.md").write_text("\n".join(["# selfredteam probe: knows vs acts", "", *probe_markdown(result)]))
    return out / "probe.json", out / "probe.md"


def sample_per_class(items: list[Any], per_class: int | None, key: str, harmful: Callable[[Any], bool]) -> list[Any]:
    """At most `per_class` items of each class, a seeded sample per class (`key` seeds it)."""
    if not per_class:
        return list(items)
    out = []
    for cls in (True, False):
        group = [x for x in items if harmful(x) == cls]
        out += random.Random(f"{key}:{cls}").sample(group, per_class) if per_class < len(group) else group
    return out


def split_prompts(name: str, per_class: int | None = None, seed: int = 0) -> list[Any]:
    """The harmful and benign EvalPrompts of a probe split, each class sampled to `per_class` the
    way `eval --per-subset` samples a subset (the same seed gives the same prompts)."""
    from selfredteam.eval.benchmarks import load_benchmark
    from selfredteam.eval.run import sample_subset

    if name not in PROBE_SPLITS:
        raise UserError(f"Unknown probe split {name!r}. Valid: {', '.join(PROBE_SPLITS)}.")
    return [p for bench, subset in PROBE_SPLITS[name]
            for p in sample_subset([x for x in load_benchmark(bench) if x.subset == subset], subset, per_class, seed)]


def run_probe(policy: Any, splits: Sequence[str], layers: Sequence[int], *, fits: dict[str, list[Any]] | None = None,
              per_class: int | None = None, folds: int = 5, seed: int = 0, cache_root: Path | None = None,
              answer: Callable[[str, list[Any]], list[dict[str, Any]]] | None = None,
              progress: Callable[[str, int, int], None] | None = None) -> dict[str, Any]:
    """Probe scores per split and layer (in-distribution, and transferred from each of `fits`,
    name -> Seeds), plus the behavioural J from `answer` (split name, its prompts -> `eval` rows)."""
    if getattr(policy, "model", None) is None or not hasattr(policy, "encode"):
        raise UserError(f"probe reads hidden states: {policy.name} is not a local transformers model "
                        "(use an HF id or dir, `embedded`, or a `train` run dir).")
    import time

    cache = FeatureCache(cache_root, model_fingerprint(policy.name))
    timing = {"features_s": 0.0, "behaviour_s": 0.0}

    def feats(what: str, texts: list[str]) -> dict[int, np.ndarray]:
        done = [0]

        def tick(n: int) -> None:
            done[0] += n
            if progress:
                progress(what, done[0], len(texts))

        t0 = time.perf_counter()
        out = prompt_features(policy, texts, layers, cache, progress=tick)
        timing["features_s"] += time.perf_counter() - t0
        return out

    fitted: Fitted = {}
    for name, seeds in (fits or {}).items():
        labels = np.array([s.harmful for s in seeds], dtype=int)
        if len(set(labels.tolist())) < 2:
            raise UserError(f"Fit set {name} has one class only ({len(seeds)} seeds): a probe needs harmful and "
                            "benign prompts (join a pool of the other class, e.g. embedded+embedded:borderline).")
        fitted[name] = (feats(f"fit set {name}", [s.prompt for s in seeds]), labels)
    result: dict[str, Any] = {"model": policy.name, "layers": list(layers), "folds": folds, "splits": {},
                              "fits": {n: {"harmful": int(fy.sum()), "benign": int(len(fy) - fy.sum())}
                                       for n, (_, fy) in fitted.items()}}
    for name in splits:
        prompts = split_prompts(name, per_class, seed)
        y = np.array([p.label == "harmful" for p in prompts], dtype=int)
        split: dict[str, Any] = {"n_harmful": int(y.sum()), "n_benign": int(len(y) - y.sum()),
                                 "layers": probe_split(feats(name, [p.prompt for p in prompts]), y, fitted, folds, seed)}
        if answer:
            t0 = time.perf_counter()
            split["behaviour"] = behaviour(answer(name, prompts))
            timing["behaviour_s"] += time.perf_counter() - t0
        result["splits"][name] = split
    result["timing"] = timing | {"prompts_featurised": cache.misses}  # hidden-state passes and answers
    return result
