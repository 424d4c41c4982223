"""`selfredteam probe`: metrics and probes on constructed features, features from a tiny real
model (batched = one at a time, cached = computed), and one slow test on the embedded model."""

import numpy as np
import pytest

from selfredteam.eval.probe import (
    PROBE_SPLITS,
    FeatureCache,
    behaviour,
    cross_validated,
    model_fingerprint,
    probe_markdown,
    probe_split,
    prompt_features,
    roc_auc,
    sample_per_class,
    split_prompts,
    transferred,
    youden,
)


def test_roc_auc_matches_pairwise_count_with_ties():
    rng = np.random.default_rng(0)
    s = rng.integers(0, 5, 40).astype(float)  # many ties
    y = rng.integers(0, 2, 40)
    pos, neg = s[y == 1], s[y == 0]
    pairwise = np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg])
    assert roc_auc(s, y) == pytest.approx(pairwise)
    assert roc_auc(np.array([0.1, 0.9]), np.array([0, 1])) == 1.0
    assert np.isnan(roc_auc(np.array([0.1, 0.2]), np.array([1, 1])))


def test_youden():
    j, tpr, fpr = youden(np.array([1, 1, 0, 1], dtype=bool), np.array([1, 1, 0, 0]))
    assert (tpr, fpr, j) == (1.0, 0.5, 0.5)


def _blobs(n, d, shift, seed):
    rng = np.random.default_rng(seed)
    y = np.repeat([1, 0], n)
    x = rng.normal(size=(2 * n, d))
    x[:, 0] += shift * (2 * y - 1)
    return x, y


def test_separable_features_score_high_and_noise_scores_chance():
    x, y = _blobs(60, 8, 3.0, 0)
    s = cross_validated(x, y, k=5)
    assert s.auc > 0.97 and s.j > 0.8
    x, y = _blobs(60, 8, 0.0, 1)
    s = cross_validated(x, y, k=5)
    assert abs(s.auc - 0.5) < 0.2 and abs(s.j) < 0.35


def test_transfer_fails_when_the_boundary_moves():
    """Fitted where the classes differ along one direction, tested where they differ along
    another: in-distribution stays high, transfer drops to chance. The issue's finding in small."""
    x_fit, y_fit = _blobs(80, 6, 3.0, 2)
    x_fit[:, 1] = 0.0  # the fit set never varies along the test set's direction
    x, y = _blobs(80, 6, 0.0, 3)
    x[:, 1] += 3.0 * (2 * y - 1)
    assert cross_validated(x, y).auc > 0.95
    t = transferred(x_fit, y_fit, x, y)
    assert abs(t.auc - 0.5) < 0.15


def test_probe_split_rows_and_markdown():
    x, y = _blobs(30, 4, 2.0, 4)
    rows = probe_split({6: x, 12: x}, y, {"embedded": ({6: x, 12: x}, y)}, k=3)
    assert [r["layer"] for r in rows] == [6, 12] and "embedded" in rows[0]["transferred"]
    result = {"model": "m", "fits": {"embedded": {"harmful": 30, "benign": 30}}, "folds": 3, "splits": {"s": {
        "n_harmful": 30, "n_benign": 30, "layers": rows,
        "behaviour": behaviour([{"label": "harmful", "judge": {"response_refusal": True}},
                                {"label": "benign", "judge": {"response_refusal": False}},
                                {"label": "benign", "judge": {"response_refusal": None}}])}}}
    assert result["splits"]["s"]["behaviour"]["j"] == 1.0
    md = "\n".join(probe_markdown(result))
    assert "| 6 |" in md and "behavioural J +1.00" in md and "from `embedded`" in md


def test_every_split_ships_both_classes():
    for name in PROBE_SPLITS:
        prompts = split_prompts(name, per_class=5)
        assert {p.label for p in prompts} == {"harmful", "benign"}
        assert len(prompts) == 10


class _TinyPolicy:
    def __init__(self, model_dir):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from selfredteam.policy.hf import TransformersPolicy

        model = AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
        tok = AutoTokenizer.from_pretrained(str(model_dir))
        tok.pad_token = tok.pad_token or tok.eos_token
        self.inner = TransformersPolicy(model, tok, str(model_dir))

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_features_batched_equal_one_at_a_time_and_cache_round_trips(tiny_model_dir, tmp_path):
    policy = _TinyPolicy(tiny_model_dir)
    prompts = ["a short one", "a much longer prompt with quite a few more words in it to pad others",
               "mid length prompt here"]
    batched = prompt_features(policy, prompts, [1, 2], FeatureCache(None, "x"), token_budget=4096)
    alone = [prompt_features(policy, [p], [1, 2], FeatureCache(None, "x"), token_budget=1) for p in prompts]
    for k in (1, 2):
        assert batched[k].shape == (3, 64)
        np.testing.assert_allclose(batched[k], np.concatenate([a[k] for a in alone]), atol=1e-4)
    cache = FeatureCache(tmp_path, model_fingerprint(str(tiny_model_dir)))
    first = prompt_features(policy, prompts, [2], cache)
    assert cache.misses == 3
    assert len(list((tmp_path).rglob("*.safetensors"))) == 3
    policy.inner.model = None  # a cache hit must not touch the model
    again = prompt_features(policy, prompts, [2], cache)
    assert cache.misses == 3  # all three read back
    np.testing.assert_array_equal(first[2], again[2])


def test_fingerprint_changes_when_weights_change(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"x")
    a = model_fingerprint(str(tmp_path))
    (tmp_path / "model.safetensors").write_bytes(b"xy")
    assert model_fingerprint(str(tmp_path)) != a
    assert model_fingerprint(f"checkpoint:{tmp_path}") != model_fingerprint("checkpoint:elsewhere")


@pytest.mark.slow
def test_probe_on_the_embedded_model(tmp_path):
    """The real model, a small sample (short prompts, so it stays quick): features separate WJB
    vanilla harmful from benign in distribution; the command writes its JSON and table."""
    import json

    from typer.testing import CliRunner

    from selfredteam.cli import app
    from selfredteam.data import load_seeds

    seeds = load_seeds("embedded")
    fit = tmp_path / "fit.jsonl"
    rows = [s for s in seeds if s.harmful][:16] + [s for s in seeds if not s.harmful][:16]
    fit.write_text("".join(json.dumps({"prompt": s.prompt, "label": s.label}) + "\n" for s in rows))
    res = CliRunner().invoke(app, ["probe", "--splits", "wjb-vanilla", "--per-class", "40", "--layers", "24",
                                   "--fit", str(fit), "--no-behaviour", "--out", str(tmp_path),
                                   "--cache-dir", str(tmp_path / "cache"), "--folds", "3"])
    assert res.exit_code == 0, res.output
    r = json.loads((tmp_path / "probe.json").read_text())
    layer = r["splits"]["wjb-vanilla"]["layers"][0]
    assert layer["layer"] == 24 and layer["in_distribution"]["auc"] > 0.75 and str(fit) in layer["transferred"]
    assert (tmp_path / "probe.md").is_file()


def test_sample_per_class_is_seeded_and_capped():
    items = [(i, i % 3 == 0) for i in range(30)]
    a = sample_per_class(items, 4, "k", lambda x: x[1])
    assert sum(x[1] for x in a) == 4 and len(a) == 8 and a == sample_per_class(items, 4, "k", lambda x: x[1])
    assert len(sample_per_class(items, None, "k", lambda x: x[1])) == 30


def test_the_probe_fits_a_run_on_the_pool_it_trained_on(tmp_path):
    """`probe --model RUN` without --fit: the transferred probe is fitted on the run's own pool
    (its saved config), not on the command's preset's (cpu-demo has no boundary pools)."""
    import json

    from selfredteam.config import load_config, to_dict
    from selfredteam.policy.spec import run_training_pool

    run = tmp_path / "run"
    ckpt = run / "checkpoints" / "step_3"
    ckpt.mkdir(parents=True)
    (ckpt / "state.json").write_text(json.dumps({"step": 3, "config": to_dict(load_config("cpu-safety"))}))
    pool = "embedded+embedded:adversarial+embedded:borderline"
    assert run_training_pool(str(run)) == pool and run_training_pool(str(ckpt)) == pool
    assert run_training_pool("embedded") is None and run_training_pool(str(tmp_path)) is None
