"""GETER: the toy TKG and its label rules, graph-embedding pooling by hand, the prefix splice, one SFT step that
moves the projector and the LoRA weights, prefix-aware generation, BLEU/ROUGE on a hand case, and a 2-step
`r1 fit --config geter.yaml` smoke run."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import torch

from datamodules.tasks.temporal_kg import (LABELS, chain_connects, generate_tkg, label_for, make_temporal_kg,
                                           reasoning_paths)
from modules.papers.geter.graph_prefix import (IGNORE_INDEX, PrefixGenerateEngine, TemporalKGEncoder, collate_graph,
                                  explanation_scores, parse_answer, pool_quads, splice_prefix, temporal_label_reward,
                                  temporal_messages)
from modules.policy import LoraSettings
from modules.rollout.engine import SamplingSettings
from recipes.cli import main
from recipes.geter import GETER
from recipes.cli.registry import CONFIG_DIR

FAST = ["--trainer.max_steps", "2", "--data.num_rows", "24", "--data.val_size", "4", "--data.batch_size", "2",
        "--model.sampling.max_new_tokens", "8", "--trainer.val_check_interval", "1", "--trainer.limit_val_batches", "1",
        "--trainer.enable_progress_bar", "false",
        "--model.max_length", "1024"]  # the tiny test tokenizer is near character-level


# ------------------------------------------------------------------------------------------- the toy TKG
def test_generator_is_deterministic_per_seed():
    assert generate_tkg(seed=3).facts == generate_tkg(seed=3).facts
    assert generate_tkg(seed=3).facts != generate_tkg(seed=4).facts
    assert make_temporal_kg(12, seed=3) == make_temporal_kg(12, seed=3)
    assert make_temporal_kg(12, seed=3) != make_temporal_kg(12, seed=4)


def test_rows_follow_the_label_rules_and_the_window():
    window = 5
    kg = generate_tkg(seed=0)
    facts, future = kg.fact_set, set(kg.future)
    rows = make_temporal_kg(60, seed=0, window=window)
    assert [r["label"] for r in rows[:6]] == list(LABELS) * 2
    for row in rows:
        query, chains, label = row["query"], row["chains"], row["label"]
        s, _, o, t_q = query
        assert t_q >= kg.split_time and chains
        assert all(tuple(c) in facts and t_q - window <= c[3] < t_q for c in chains)  # BFS window [t_q - w, t_q)
        assert label_for(query, chains, facts) == label
        if label == "Yes":
            assert tuple(query) in future and chain_connects(s, o, chains)
        elif label == "No":  # object corruption: connected, but no such event
            assert tuple(query) not in facts and chain_connects(s, o, chains)
        else:
            assert not chain_connects(s, o, chains)
        assert row["response"] == f"{label}. {row['explanation']}"
        assert kg.entity_names[s] in row["prompt"] and "Chain 1:" in row["prompt"]


def test_bfs_finds_only_shortest_paths_within_max_hops():
    events = [(0, 0, 1, 1), (1, 1, 3, 2), (0, 2, 2, 1), (2, 3, 3, 3), (0, 4, 4, 0), (4, 0, 5, 1), (5, 0, 3, 2)]
    paths = reasoning_paths(events, 0, 3)
    assert paths == [[(0, 0, 1, 1), (1, 1, 3, 2)], [(0, 2, 2, 1), (2, 3, 3, 3)]]  # the 3-hop path is not shortest
    assert reasoning_paths(events, 0, 3, max_hops=1) == []
    assert reasoning_paths([(3, 1, 0, 4)], 0, 3) == [[(3, 1, 0, 4)]]  # events link both ways


# ------------------------------------------------------------------------------------------- graph token
def test_graph_embedding_is_the_mean_of_concatenated_triples_by_hand():
    ent = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0], [4.0, -1.0]])  # (E=4, d=2)
    rel = torch.tensor([[10.0, 0.0], [0.0, 20.0]])  # (R=2, d=2)
    enc = TemporalKGEncoder(4, 2, 2, entity_init=ent, relation_init=rel)
    rows = [{"query": [0, 1, 2, 9], "chains": [[0, 0, 3, 7], [3, 1, 2, 8]]}, {"query": [1, 0, 3, 9], "chains": []}]
    q, c, m = collate_graph(rows)
    got = enc.graph_embedding(q, c, m)
    assert got.shape == (2, 6) and enc.out_dim == 6

    def triple(s, r, o):
        return torch.cat([ent[s], rel[r], ent[o]])

    row0 = (triple(0, 1, 2) + triple(0, 0, 3) + triple(3, 1, 2)) / 3  # query triple + 2 chain quads; time unused
    row1 = triple(1, 0, 3)  # no chains: the query triple alone (padding ignored)
    assert torch.allclose(got, torch.stack([row0, row1]))
    assert torch.allclose(pool_quads(ent, rel, q, c, m), got)
    with pytest.raises(ValueError, match="num_entities"):
        collate_graph([{"query": [0, 1, 7, 1], "chains": []}], num_entities=4)


def test_temporal_layer_only_moves_entities_on_the_chains():
    enc = TemporalKGEncoder(6, 2, 4, temporal_layer=True, tau=2.0, seed=1)
    q, c, m = collate_graph([{"query": [0, 1, 5, 9], "chains": [[0, 0, 3, 8]]}])
    h = temporal_messages(enc.entity, enc.relation, q, c, m, lambda x: torch.tanh(enc.message(x)), tau=enc.tau)
    assert h.shape == (1, 6, 4)
    for e in (1, 2, 4, 5):  # not on the chain: no message
        assert torch.allclose(h[0, e], enc.entity[e])
    for e in (0, 3):
        assert not torch.allclose(h[0, e], enc.entity[e])
    got = enc.graph_embedding(q, c, m)
    assert torch.allclose(got, pool_quads(h, enc.relation, q, c, m))
    assert not torch.allclose(got, TemporalKGEncoder(6, 2, 4, seed=1).graph_embedding(q, c, m))
    got.sum().backward()
    assert enc.message.weight.grad is not None and enc.message.weight.grad.abs().sum() > 0


def test_splice_puts_the_prefix_before_the_prompt_with_mask_1_and_label_minus_100():
    torch.manual_seed(0)
    embeds = torch.randn(2, 4, 3)  # (B, L, H)
    mask = torch.tensor([[1, 1, 1, 0], [0, 0, 1, 1]])  # right-padded (training) and left-padded (generation)
    labels = torch.tensor([[IGNORE_INDEX, 7, 8, IGNORE_INDEX], [IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, 9]])
    prefix = torch.randn(2, 2, 3)  # k = 2
    e, m, y = splice_prefix(embeds, mask, labels, prefix)
    assert e.shape == (2, 6, 3) and m.shape == y.shape == (2, 6)
    assert torch.equal(e[0, :2], prefix[0]) and torch.equal(e[0, 2:], embeds[0])  # plain prepend
    assert m[0].tolist() == [1, 1, 1, 1, 1, 0] and y[0].tolist() == [IGNORE_INDEX] * 3 + [7, 8, IGNORE_INDEX]
    assert torch.equal(e[1, :2], embeds[1, :2]) and torch.equal(e[1, 2:4], prefix[1])  # after the left padding
    assert torch.equal(e[1, 4:], embeds[1, 2:])
    assert m[1].tolist() == [0, 0, 1, 1, 1, 1] and y[1].tolist() == [IGNORE_INDEX] * 5 + [9]
    assert splice_prefix(embeds, mask, None, prefix)[2] is None


# ------------------------------------------------------------------------------------------- the recipe
@pytest.fixture(scope="module")
def module(tiny_model_path):
    torch.manual_seed(0)
    return GETER(tiny_model_path, lora=LoraSettings(r=4, alpha=8, dropout=0.05), optimizer={"learning_rate": 1e-2},
                 sampling=SamplingSettings(max_new_tokens=6))


@pytest.fixture(scope="module")
def rows():
    return make_temporal_kg(6, seed=0)


def test_one_sft_step_moves_projector_and_lora_and_keeps_them_in_checkpoints(module, rows):
    batch = module.encode(rows[:3])
    assert batch["query"].shape == (3, 4) and batch["chains"].shape[0] == 3
    groups = module.parameter_groups()
    assert [g["name"] for g in groups] == ["policy", "graph_prefix"]
    opt = torch.optim.AdamW(groups, lr=1e-2)
    named = dict(module.named_parameters())
    lora = next(n for n in named if "lora_B" in n)
    before = {n: named[n].detach().clone() for n in ("projector.proj.weight", lora, "encoder.entity")}
    module.train()
    loss, n_tokens, metrics = module.forward_loss(batch)
    assert torch.isfinite(loss) and n_tokens == int((batch["labels"] != IGNORE_INDEX).sum())
    opt.zero_grad()
    loss.backward()
    opt.step()
    assert not torch.equal(named["projector.proj.weight"], before["projector.proj.weight"])
    assert not torch.equal(named[lora], before[lora])
    assert torch.equal(named["encoder.entity"], before["encoder.entity"])  # frozen by default
    assert metrics["graph/prefix_norm"] > 0
    # The graph token changes the loss: zeroing the projector gives another value.
    with torch.no_grad():
        loss_a, _, _ = module.forward_loss(batch)
        saved = module.projector.proj.weight.clone()
        module.projector.proj.weight.zero_()
        loss_b, _, _ = module.forward_loss(batch)
        module.projector.proj.weight.copy_(saved)
    assert not torch.isclose(loss_a, loss_b)
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    kept = set(checkpoint["state_dict"])
    assert {"projector.proj.weight", "projector.proj.bias", lora} <= kept
    assert "encoder.entity" not in kept and not any("embed_tokens" in k for k in kept)


def test_sft_loss_count_matches_the_unprefixed_labels(module, rows):
    # The prefix adds k positions labelled -100: the trained tokens are SFT's own.
    batch = module.encode(rows[:2])
    _, n_graph, _ = module.forward_loss(batch)
    from recipes.sft import SFT
    _, n_plain, _ = SFT.forward_loss(module, batch)
    assert n_graph == n_plain


def test_prefix_generation_matches_a_manual_greedy_decode(module, rows):
    module.eval()
    engine = module.rollout_engine
    assert isinstance(engine, PrefixGenerateEngine)
    batch_rows = [{**r, "system_prompt": module.system_prompt_for(r)} for r in rows[:2]]
    from modules.rollout.engine import split_rows
    prompts, columns = split_rows(batch_rows)
    out = engine.generate(prompts, columns, num_generations=1, greedy=True)
    assert out.completion_ids.shape[0] == 2 and out.completion_ids.shape[1] <= 6
    prefix = module._columns_prefix(columns)  # (2, 1, H)
    model, emb = module.policy.model, module.policy.model.get_input_embeddings()
    for i in range(2):  # one row at a time, no padding: [prefix, prompt] then argmax
        ids = engine.encode_prompts([prompts[i]], [columns["system_prompt"][i]])[0]
        seq = torch.cat([prefix[i:i + 1], emb(ids)], dim=1)
        expected = []
        with torch.no_grad():
            for _ in range(int(out.completion_lengths[i])):
                nxt = int(model(inputs_embeds=seq).logits[0, -1].argmax())
                expected.append(nxt)
                seq = torch.cat([seq, emb(torch.tensor([[nxt]]))], dim=1)
        assert out.completion_ids[i, :len(expected)].tolist() == expected


def test_evaluate_reports_label_accuracy_bleu_and_rouge(module, rows):
    metrics = module.evaluate(rows, batch_size=4)
    for key in ("eval/accuracy", "eval/bleu4", "eval/rougeL", "eval/accuracy/yes", "eval/accuracy/unsure"):
        assert key in metrics and math.isfinite(metrics[key])
    assert 0.0 <= metrics["eval/bleu4"] <= 100.0


# ------------------------------------------------------------------------------------------- answers and metrics
def test_answer_parsing_reward_and_explanation_metrics_by_hand():
    assert parse_answer("Yes. A met B.") == ("Yes", "A met B.")
    assert parse_answer("  NO - nothing links them") == ("No", "nothing links them")
    assert parse_answer("Unsurely") == (None, "Unsurely")
    rewards = temporal_label_reward([""] * 3, ["Unsure. x", "yes", "Maybe"], label=["Unsure", "No", "No"])
    assert rewards == [1.0, 0.0, 0.0]
    # BLEU-4: clipped n-gram precisions 5/6, 3/5, 2/4, 1/3, equal lengths (BP = 1).
    # ROUGE-L: LCS "the cat sat on mat" = 5 tokens of 6 -> F1 = 5/6.
    scores = explanation_scores(["the cat sat on the mat"], ["the cat sat on a mat"])
    assert scores["bleu4"] == pytest.approx(100 * (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25, abs=1e-3)
    assert scores["rougeL"] == pytest.approx(100 * 5 / 6, abs=1e-3)
    assert explanation_scores(["x"], ["x"]) == {"bleu4": 0.0, "rougeL": 100.0}  # no 4-grams: BLEU-4 is 0


# ------------------------------------------------------------------------------------------- end to end
def test_geter_config_trains_two_steps_on_the_tiny_model(tiny_model_path, tmp_path):
    code = main(["fit", "--config", str(CONFIG_DIR / "geter.yaml"), *FAST,
                 "--model.model_name_or_path", str(tiny_model_path), "--trainer.default_root_dir", str(tmp_path),
                 "--trainer.logger", "lightning.pytorch.loggers.CSVLogger", "--trainer.logger.save_dir", str(tmp_path)])
    assert code == 0
    metrics = pd.read_csv(next(Path(tmp_path).rglob("metrics.csv")))
    train = metrics.dropna(subset=["train/loss"])
    assert train["step"].tolist() == [0, 1]
    values = train.filter(like="train/").to_numpy().ravel()
    assert all(math.isfinite(v) for v in values)
    assert (train["train/graph/prefix_norm"] > 0).all()
    assert metrics["val/loss"].dropna().size >= 1
    for key in ("eval/accuracy", "eval/bleu4", "eval/rougeL"):  # HeldOutEval, generating with the graph token
        assert metrics[key].dropna().size >= 1
    ckpt = torch.load(next(Path(tmp_path).rglob("*.ckpt")), map_location="cpu", weights_only=True)
    assert "projector.proj.weight" in ckpt["state_dict"] and any("lora_" in k for k in ckpt["state_dict"])


def test_embeddings_file_starts_the_encoder_and_a_bad_file_names_the_field(tmp_path):
    from recipes.base import RecipeConfigError
    from recipes.geter import _load_embeddings

    good = tmp_path / "emb.pt"
    torch.save({"entity": torch.arange(8.0).view(4, 2), "relation": torch.ones(2, 2)}, good)
    enc = TemporalKGEncoder(4, 2, 2, **_load_embeddings(str(good)))
    assert torch.equal(enc.entity.detach(), torch.arange(8.0).view(4, 2))
    with pytest.raises(ValueError, match="num_entities"):
        TemporalKGEncoder(5, 2, 2, **_load_embeddings(str(good)))
    bad = tmp_path / "bad.pt"
    torch.save({"entity": torch.ones(4, 2)}, bad)
    with pytest.raises(RecipeConfigError, match="model.embeddings_path"):
        _load_embeddings(str(bad))
