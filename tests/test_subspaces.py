"""Safety subspaces (arXiv 2505.14185): projections, the corrected cosine, MSO and its baseline, the CPU demo."""

from __future__ import annotations

import csv
import math

import pytest
import torch

from modules.papers.safety_subspaces import subspaces as S
from recipes.base import RecipeConfigError
from recipes.cli.registry import CONFIG_DIR


def _low_rank(m: int, n: int, r: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(m, r, generator=g)
    return A @ torch.randn(r, n, generator=g), A  # V (m, n) of rank r, its column space A


# ------------------------------------------------------------------------------------------------ projections
@pytest.mark.parametrize("shape", [(12, 20), (20, 12), (16,)])
def test_same_plus_orth_is_the_full_update_and_opp_is_minus_same(shape):
    g = torch.Generator().manual_seed(0)
    W_a, V, U = (torch.randn(*shape, generator=g) for _ in range(3))
    par = S.alignment_projection(V, U, 0.25)
    same = S.project_update(W_a, U, par, "same")
    orth = S.project_update(W_a, U, par, "orth")
    opp = S.project_update(W_a, U, par, "opp")
    torch.testing.assert_close((same - W_a) + (orth - W_a), U)
    torch.testing.assert_close(opp - W_a, -(same - W_a))
    with pytest.raises(ValueError, match="mode"):
        S.project_update(W_a, U, par, "sideways")


@pytest.mark.parametrize("method", ["lowrank", "exact"])
def test_projection_onto_a_known_rank_r_alignment_subspace(method):
    V, A = _low_rank(24, 40, 6, seed=1)  # k = round(0.25 * 24) = 6 = rank(V): the subspace is col(A)
    U = torch.randn(24, 40, generator=torch.Generator().manual_seed(2))
    Q, _ = torch.linalg.qr(A)
    par = S.alignment_projection(V, U, 0.25, method=method)
    torch.testing.assert_close(par, Q @ Q.T @ U, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(S.alignment_projection(V, par, 0.25, method=method), par, atol=1e-4, rtol=1e-4)
    assert S.subspace_rank(0.25, V.shape) == 6


def test_one_dimensional_case_by_hand():
    V, U = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([3.0, 4.0, 0.0])
    assert S.alignment_projection(V, U, 0.5).tolist() == [3.0, 0.0, 0.0]
    assert S.alignment_projection(2 * V, U, 0.5).tolist() == [3.0, 0.0, 0.0]  # scale of V does not matter
    assert S.alignment_projection(torch.zeros(3), U, 0.5).tolist() == [0.0, 0.0, 0.0]  # no alignment direction


def test_energy_kept_of_frac_one_is_one_for_a_wide_matrix():
    g = torch.Generator().manual_seed(3)
    V, U = torch.randn(10, 30, generator=g), torch.randn(10, 30, generator=g)
    par = S.alignment_projection(V, U, 1.0)  # k = 10 = m: L Lᵀ = I
    d = S.projection_diagnostics(U, S.projected_update(U, par, "same"))
    assert d["energy_kept"] == pytest.approx(1.0, abs=1e-5) and d["cosine"] == pytest.approx(1.0, abs=1e-5)
    assert S.projection_diagnostics(U, S.projected_update(U, par, "orth"))["energy_kept"] < 1e-8


def test_cosine_is_correct_where_the_authors_formula_is_not():
    U, P = torch.tensor([3.0, 4.0]), torch.tensor([3.0, 0.0])  # <U,P> = 9, |U| = 5, |P| = 3
    d = S.projection_diagnostics(U, P)
    assert d["energy_kept"] == pytest.approx(0.36) and d["cosine"] == pytest.approx(0.6)  # 9 / (5 * 3)
    assert S.authors_cosine(U, P) == pytest.approx(1.0)  # 9 / (sqrt(9) * 3): always 1 for a projection
    assert S.projection_diagnostics(U, -P)["cosine"] == pytest.approx(-0.6)
    assert math.isnan(S.authors_cosine(U, -P))  # sqrt of a negative inner product
    # For an orthogonal projection the correct cosine is sqrt(energy kept).
    g = torch.Generator().manual_seed(4)
    V, U2 = torch.randn(8, 8, generator=g), torch.randn(8, 8, generator=g)
    d2 = S.projection_diagnostics(U2, S.alignment_projection(V, U2, 0.5, method="exact"))
    assert d2["cosine"] == pytest.approx(math.sqrt(d2["energy_kept"]), rel=1e-5)


def test_subspace_rank_rounding_and_bounds():
    assert S.subspace_rank(0.01, (64, 128)) == 1  # round(0.64) = 1
    assert S.subspace_rank(0.001, (64, 128)) == 1  # at least 1
    assert S.subspace_rank(0.99, (576, 1536)) == 570
    with pytest.raises(ValueError, match="frac"):
        S.subspace_rank(0.0, (4, 4))


# ------------------------------------------------------------------------------------------------ MSO
def test_mso_of_identical_and_orthogonal_subspaces():
    Q, _ = torch.linalg.qr(torch.randn(32, 5, generator=torch.Generator().manual_seed(5)))
    R, _ = torch.linalg.qr(torch.randn(5, 5, generator=torch.Generator().manual_seed(6)))
    assert S.mode_subspace_overlap(Q, Q) == pytest.approx(1.0)
    assert S.mode_subspace_overlap(Q, Q @ R) == pytest.approx(1.0)  # basis-independent
    assert S.mode_subspace_overlap(Q[:, :2], Q) == pytest.approx(1.0)  # nested: divide by min(k)
    E = torch.eye(6)
    assert S.mode_subspace_overlap(E[:, :3], E[:, 3:]) == 0.0
    assert math.isnan(S.mode_subspace_overlap(E[:, :0], E[:, :2]))


@pytest.mark.parametrize("k_u, k_h, d", [(4, 16, 64), (8, 8, 32)])
def test_mso_of_random_subspaces_matches_the_baseline_on_average(k_u, k_h, d):
    g = torch.Generator().manual_seed(7)
    values = []
    for _ in range(300):
        Q_u, _ = torch.linalg.qr(torch.randn(d, k_u, generator=g))
        Q_h, _ = torch.linalg.qr(torch.randn(d, k_h, generator=g))
        values.append(S.mode_subspace_overlap(Q_u, Q_h))
    assert sum(values) / len(values) == pytest.approx(S.random_baseline(k_u, k_h, d), abs=0.015)
    assert S.random_baseline(k_u, k_h, d) == max(k_u, k_h) / d


@pytest.mark.parametrize("eta", [0.01, 0.3, 0.5, 0.9, 0.99, 1.0])
def test_energy_basis_meets_eta_with_the_fewest_directions(eta):
    D = torch.randn(20, 30, generator=torch.Generator().manual_seed(8))
    Q = S.energy_basis(D, eta)
    k = Q.shape[1]
    torch.testing.assert_close(Q.T @ Q, torch.eye(k), atol=1e-5, rtol=0)
    captured = float((Q.T @ D).pow(2).sum() / D.pow(2).sum())
    assert captured >= eta - 1e-5
    if k > 1:
        assert float((Q[:, :k - 1].T @ D).pow(2).sum() / D.pow(2).sum()) < eta
    assert S.energy_rank(torch.tensor([3.0, 2.0, 1.0]), 0.9) == 2  # 9/14 < 0.9 <= 13/14
    assert S.energy_rank(torch.zeros(3), 0.5) == 0


def test_activation_mso_identical_sets_is_one_and_mean_centring_matters():
    g = torch.Generator().manual_seed(9)
    H = torch.randn(40, 16, generator=g)
    assert all(r["mso"] == pytest.approx(1.0) for r in S.activation_mso_curve(H, H, [0.5, 0.9]))
    # Two sets sharing only a large common offset: without centring the offset dominates both bases.
    offset = torch.zeros(16)
    offset[0] = 100.0
    A = torch.randn(40, 16, generator=g) * torch.tensor([0.0] + [1.0] * 7 + [0.0] * 8) + offset
    B = torch.randn(40, 16, generator=g) * torch.tensor([0.0] * 8 + [1.0] * 8) + offset
    raw = S.activation_mso_curve(A, B, [0.5], center=False)[0]
    centred = S.activation_mso_curve(A, B, [0.5], center=True)[0]
    assert raw["mso"] > 0.9 and centred["mso"] < 0.05


def test_layer_helpers():
    assert S.default_layers(30) == list(range(19, 28)) and S.default_layers(2) == [1] and S.default_layers(1) == [0]
    assert S.layer_of("model.layers.12.self_attn.q_proj.weight") == "12"
    assert S.layer_of("model.norm.weight") == "other"
    rows = [{"finetune": "u", "mode": "same", "frac": 0.5, "layer": "0", "u_sq": 4.0, "p_sq": 1.0, "up": 1.0},
            {"finetune": "u", "mode": "same", "frac": 0.5, "layer": "0", "u_sq": 12.0, "p_sq": 3.0, "up": 3.0}]
    layer0 = next(r for r in S.layer_summary(rows) if r["layer"] == "0")
    assert layer0["energy_kept"] == pytest.approx(0.25) and layer0["cosine"] == pytest.approx(0.5)
    assert layer0["tensors"] == 2


def test_state_dict_projection_and_weight_mso():
    g = torch.Generator().manual_seed(10)
    names = {"model.layers.0.mlp.up_proj.weight": (16, 8), "model.layers.0.input_layernorm.weight": (8,)}
    base = {n: torch.randn(*s, generator=g) for n, s in names.items()}
    aligned = {n: t + torch.randn(t.shape, generator=g) for n, t in base.items()}
    ft = {n: t + torch.randn(t.shape, generator=g) for n, t in aligned.items()}
    par = S.parallel_updates(base, aligned, ft, 0.5)
    same, rows = S.projected_state(aligned, ft, par, "same", frac=0.5)
    orth, _ = S.projected_state(aligned, ft, par, "orth", frac=0.5)
    for n in names:
        torch.testing.assert_close(same[n] + orth[n] - aligned[n], ft[n])
    assert {r["k"] for r in rows} == {4, 1}
    mso = S.weight_mso_rows(aligned, ft, ft, [0.5, 0.99])  # identical updates: MSO 1, 1-D tensors skipped
    assert [r["mso"] for r in mso] == pytest.approx([1.0, 1.0])
    assert {r["tensor"] for r in mso} == {"model.layers.0.mlp.up_proj.weight"}
    with pytest.raises(ValueError, match="shape"):
        S.parallel_updates(base, aligned, {**ft, "model.layers.0.input_layernorm.weight": torch.zeros(3)}, 0.5)


def test_refusal_classifier():
    assert S.is_refusal("I'm sorry, but I can't help with that.")
    assert S.is_refusal("I CANNOT help with that request.")
    assert not S.is_refusal("Sure, here is how to do it. First, plan it.")
    assert S.harmfulness(["Sure, here is how: first plan it.", "I won't help you.", "ok"]) == pytest.approx(1 / 3)


def test_last_token_states_match_hidden_states(tiny_model_path):
    from modules.policy import Policy

    policy = Policy.from_pretrained(str(tiny_model_path), reference="none")
    prompts = ["What is 2 + 3?", "Tell me how to steal a bike from the station."]
    states = S.last_token_states(policy.model, policy.tokenizer, prompts, [0, 1], batch_size=2)
    assert states[0].shape == (2, 64) and states[1].shape == (2, 64)
    single = S.last_token_states(policy.model, policy.tokenizer, prompts[:1], [0], batch_size=1)
    torch.testing.assert_close(single[0][0], states[0][0], atol=1e-4, rtol=1e-4)  # left padding is harmless
    text = policy.tokenizer.apply_chat_template([{"role": "user", "content": prompts[0]}], tokenize=False,
                                                add_generation_prompt=True)
    ids = policy.tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        hidden = policy.model(input_ids=ids, output_hidden_states=True).hidden_states  # [embeddings, block 0, ...]
    torch.testing.assert_close(single[0][0], hidden[1][0, -1], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="outside"):
        S.last_token_states(policy.model, policy.tokenizer, prompts, [2])


# ------------------------------------------------------------------------------------------------ config and demo
def test_bad_analysis_settings_name_the_field(capsys):
    from recipes.safety_subspaces import AnalysisSettings, main

    with pytest.raises(RecipeConfigError, match="analysis.fracs"):
        AnalysisSettings(fracs=[0.0, 0.5])
    with pytest.raises(RecipeConfigError, match="analysis.modes"):
        AnalysisSettings(modes=["same", "sideways"])
    assert main(["--config", str(CONFIG_DIR / "safety_subspaces.yaml"), "--analysis.activation_model", "x"]) == 2
    assert "analysis.activation_model='x'" in capsys.readouterr().err


@pytest.mark.slow
def test_end_to_end_demo_writes_the_report(tiny_model_path, tmp_path):
    from modules.policy import Policy
    from recipes.safety_subspaces import main

    code = main(["--config", str(CONFIG_DIR / "safety_subspaces.yaml"), "--out_dir", str(tmp_path),
                 "--demo.model_name_or_path", str(tiny_model_path), "--demo.aligned_steps", "2",
                 "--demo.finetune_steps", "2", "--demo.num_rows", "16", "--demo.batch_size", "4",
                 "--analysis.fracs", "[0.5]", "--analysis.etas", "[0.5, 0.9]",
                 "--analysis.num_eval_prompts", "3", "--analysis.max_new_tokens", "6",
                 "--analysis.num_activation_prompts", "12", "--analysis.keep_models", "true"])
    assert code == 0
    for name in ("projection_eval.csv", "projection_tensors.csv", "projection_layers.csv", "mso_weight_tensors.csv",
                 "mso_weight_layers.csv", "mso_activation.csv", "report.json", "mso_curves.png",
                 "projection_curves.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    evals = list(csv.DictReader((tmp_path / "projection_eval.csv").open()))
    assert len(evals) == 4 + 2 * 1 * 2  # references + fine-tunes x fracs x modes
    assert all(0.0 <= float(r["utility"]) <= 1.0 and 0.0 <= float(r["harmfulness"]) <= 1.0 for r in evals)
    act = list(csv.DictReader((tmp_path / "mso_activation.csv").open()))
    assert {r["layer"] for r in act} == {"1"} and all(0 <= float(r["mso"]) <= 1 + 1e-6 for r in act)
    # The saved projected models load through Policy.from_pretrained and same + orth rebuilds the fine-tune.
    models = tmp_path / "models"
    weights = {}
    for name in ("useful_same_frac0.5", "useful_orth_frac0.5"):
        policy = Policy.from_pretrained(str(models / name), reference="none")
        weights[name] = dict(policy.model.named_parameters())
    aligned, useful = (dict(Policy.from_pretrained(str(tmp_path / f"demo/{stage}/model"), reference="none")
                            .model.named_parameters()) for stage in ("aligned", "useful"))
    key = "model.layers.0.mlp.up_proj.weight"
    torch.testing.assert_close(weights["useful_same_frac0.5"][key] + weights["useful_orth_frac0.5"][key]
                               - aligned[key], useful[key], atol=1e-5, rtol=1e-5)
