"""secure-stats: count vectors reach the server only as SecAgg+ sums (Flower's own protocol).

The phases run in-process on a loopback grid (real ClientApp, real secaggplus_mod and
SecAggPlusWorkflow, messages serialised as over the network), which records every reply the
server receives; one end-to-end pair of runs goes through `flwr run`.
"""

import json

import numpy as np
import pytest
from conftest import ROOT
from flwr.common import bytes_to_ndarray
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage

import client_app
from hasa_flwr.federation.config import settings_from_run_config
from hasa_flwr.data.prepare import candidate_words, write_vocab
from hasa_flwr.study.launch import app_defaults
from hasa_flwr.federation.loopback import LoopbackGrid
from hasa_flwr.method.scores import jsd_scores
from hasa_flwr.study.dry_run import loopback_nodes, statistics_phases
from hasa_flwr.federation.secure_stats import protocol_sizes, quantization_range
from hasa_flwr.federation.strategy import FederationError, agree_vocabulary, query_stats

K = 5
NODES = loopback_nodes(K)


def run_config(tmp_path, **overrides):
    cands = tmp_path / "candidates.txt"
    write_vocab(candidate_words("synthetic", 10_000), cands)
    return {**app_defaults(ROOT), "num-clients": K, "vocab-candidates": str(cands), **overrides}


def phases(rc, drop=None):
    """The server's phases up to the scores on a loopback federation: (grid, vocab, clients, scores,
    secure rounds, dropped)."""
    p = statistics_phases(rc, drop=drop)
    return p["grid"], p["vocab"], p["clients"], p["scores"], p["secure"], p["dropped"]


def test_protocol_parameters_fit_flowers_limits():
    assert quantization_range(3) == 2**30 and quantization_range(7) == 2**29 and quantization_range(1000) == 2**22
    for k in (3, 7, 16, 1000, 5000):
        assert k * quantization_range(k) < 2**32
    assert protocol_sizes(3) == (3, 2) and protocol_sizes(7) == (7, 5) and protocol_sizes(1000) == (15, 10)
    with pytest.raises(ValueError, match="at least 3 clients"):
        protocol_sizes(2)


def test_secure_scores_and_vocabulary_equal_the_clear_ones(tmp_path):
    rc = run_config(tmp_path)
    clear_grid = LoopbackGrid(client_app.app, rc, NODES)
    vocab = agree_vocabulary(clear_grid, sorted(NODES), "", 2, 60)[0]
    clients, _, _ = query_stats(clear_grid, sorted(NODES), K, "synthetic", 60, vocab)
    clear = jsd_scores(np.stack([c.label_counts for c in clients]))
    for score in ("jsd", "entropy"):
        _, svocab, sclients, scores, secure, dropped = phases({**rc, "secure-stats": True, "score": score})
        assert svocab == vocab and not dropped
        assert [c.name for c in sclients] == [c.name for c in clients]
        if score == "jsd":
            got = np.array([scores[c.node_id] for c in sclients])
            assert np.abs(got - clear).max() <= 1e-12, np.abs(got - clear).max()
            assert [s.what for s in secure] == ["vocab", "labels"]
            assert all(s.error_bound < 0.5 and s.nodes == sorted(NODES) for s in secure)
            assert secure[1].total.tolist() == np.stack([c.label_counts for c in clients]).sum(0).tolist()
        else:
            assert [s.what for s in secure] == ["vocab"]


def numeric_vectors(grid):
    """(message type, node, vector) for every numeric list or array any client sent the server,
    SecAgg+'s masked vectors decoded."""
    out = []
    for kind, node, reply in grid.received:
        if reply.has_error():
            continue
        for record in reply.content.metric_records.values():
            out += [(kind, node, np.asarray(v, float)) for v in record.values() if isinstance(v, list)]
        for record in reply.content.array_records.values():
            out += [(kind, node, a.numpy().astype(float).ravel()) for a in record.values()]
        for name, record in reply.content.config_records.items():
            for key, value in record.items():
                if name == RECORD_KEY_CONFIGS and key == Key.MASKED_PARAMETERS:
                    out += [(kind, node, bytes_to_ndarray(b).astype(float).ravel()) for b in value]
                elif isinstance(value, list) and value and isinstance(value[0], (int, float)):
                    out += [(kind, node, np.asarray(value, float))]
    return out


def revealed(grid, own):
    """Which clients' count vectors (word counts or label histogram) appear, up to scale, among what
    the server received."""
    found = set()
    for _, node, vec in numeric_vectors(grid):
        for name, truth in own.items():
            for t in truth:
                for cand in (vec, vec[1:]):  # SecAgg+ prefixes its weight
                    if cand.size == t.size and t.std() > 0 and cand.std() > 0 and \
                            np.corrcoef(cand, t)[0, 1] > 0.9:
                        found.add(name)
    return found


def test_the_server_receives_no_per_client_histogram_or_count_vector(tmp_path):
    rc = run_config(tmp_path)
    settings = settings_from_run_config(rc)
    fed = settings.load_data()
    cands = candidate_words("synthetic", 10_000)
    own = {}
    for part in fed.clients:
        from hasa_flwr.data import text_split
        counts = text_split(settings.source, fed.clients.index(part), "", "").word_counts()
        own[part.name] = [np.array([counts.get(w, 0) for w in cands], float),
                          part.label_counts(fed.num_classes).astype(float)]
    # the check can fail: in the clear, every client's histogram is among the replies
    clear_grid, *_ = phases({**rc, "score": "jsd"})
    assert revealed(clear_grid, own) == set(own)
    grid, _, _, _, secure, _ = phases({**rc, "secure-stats": True})
    assert revealed(grid, own) == set()
    kinds = {k for k, _, _ in grid.received}
    assert kinds == {"query.vocab", "query.stats", "query.score", "train"}
    for kind, _, reply in grid.received:
        c = reply.content
        if kind == "query.vocab":
            assert set(c.keys()) == {"sizes"} and set(c["sizes"].keys()) == {"tokens"}
        elif kind == "query.stats":
            assert "label-counts" not in c["stats"] and not any(isinstance(v, list) for v in c["stats"].values())
        elif kind == "query.score":
            assert set(c.keys()) == {"metrics"} and set(c["metrics"].keys()) == {"score"}
        else:  # SecAgg+ stages: keys, encrypted shares, masked vectors (and an empty FitRes); nothing else
            assert set(c.config_records.keys()) <= {RECORD_KEY_CONFIGS, "fitres.metrics", "fitres.status"}
            assert len(c.config_records.get("fitres.metrics", {})) == 0
            assert all(dict(m) == {"num_examples": 1} for m in c.metric_records.values())  # the same for all
            assert all(len(a) == 0 for a in c.array_records.values())
    assert len(secure) == 2


def drop_at(stage, victim):
    def drop(msg, node):
        configs = msg.content.config_records.get(RECORD_KEY_CONFIGS)
        return node == victim and configs is not None and configs.get(Key.STAGE) == stage
    return drop


# Flower's SecAgg+ recovers a client lost after key sharing itself; one lost before it halts the
# round, which secure_sum starts again without it
@pytest.mark.parametrize("stage", [Stage.SHARE_KEYS, Stage.COLLECT_MASKED_VECTORS])
def test_a_client_lost_in_the_secure_round_is_left_out_or_stops_the_run(tmp_path, stage):
    rc = {**run_config(tmp_path), "secure-stats": True}
    victim = 103
    with pytest.raises(FederationError, match=r"node\(s\) \[103\] dropped out of the secure vocab round.*"
                                              r"min-train-clients=5"):
        phases(rc, drop=drop_at(stage, victim))
    grid, vocab, clients, scores, secure, dropped = phases({**rc, "min-train-clients": 4}, drop=drop_at(stage, victim))
    assert dropped == [{"node": victim, "phase": "secure vocab", "reason": "dropped out of the SecAgg+ round"}]
    assert victim not in {c.node_id for c in clients} and set(scores) == {c.node_id for c in clients}
    assert secure[0].nodes == [n for n in sorted(NODES) if n != victim] and secure[0].requested == K
    # the survivors' sum is exact: their pooled label histogram counts each of their training targets once
    assert len(vocab) > 2
    assert secure[1].total.sum() == sum(c.n_train for c in clients)


def test_secure_stats_config_errors(tmp_path):
    rc = run_config(tmp_path)
    with pytest.raises(ValueError, match="at least 3 clients"):
        settings_from_run_config({**rc, "secure-stats": True, "num-clients": 2})
    with pytest.raises(ValueError, match="vocab-path .* or vocab-candidates"):
        settings_from_run_config({**rc, "secure-stats": True, "vocab-candidates": ""})
    with pytest.raises(ValueError, match="min-train-clients must be"):
        settings_from_run_config({**rc, "min-train-clients": 9})
    missing = {**rc, "secure-stats": True, "vocab-candidates": str(tmp_path / "none.txt")}
    with pytest.raises(FederationError, match="server: vocab-candidates .* not found"):
        phases(missing)


def test_secure_and_clear_runs_give_identical_results(superlink, tmp_path):
    """Through `flwr run` (Ray): the same allocation, accuracies and history; the privacy block says
    what the server saw in each mode."""
    from test_e2e import SMALL, run

    cands = tmp_path / "candidates.txt"
    write_vocab(candidate_words("synthetic", 10_000), cands)
    base = {**SMALL, "save-model": False}
    runs = {}
    for secure in (False, True):
        extra = {"secure-stats": True, "vocab-candidates": str(cands)} if secure else {}
        outcome, log = run(superlink, tmp_path / str(secure), {**base, **extra})
        assert outcome.results is not None, log[-3000:]
        runs[secure] = json.loads(outcome.results.read_text())
    clear, secure = runs[False], runs[True]
    keys = ("partition_id", "name", "n_train", "score", "rank", "width", "accuracy", "full_width_accuracy")
    assert [[c[k] for k in keys] for c in clear["clients"]] == [[c[k] for k in keys] for c in secure["clients"]]
    assert [h["accuracies"] for h in clear["history"]] == [h["accuracies"] for h in secure["history"]]
    assert secure["vocabulary"]["hash"] == clear["vocabulary"]["hash"] and secure["vocabulary"]["source"] == "secure"
    p = secure["privacy"]
    assert p["secure_stats"] and {"label_counts", "word_counts"}.isdisjoint(p["server_saw_per_client"])
    assert p["server_saw_pooled_only"] == ["label_histogram", "word_counts_of_public_candidates"]
    assert [r["what"] for r in p["secure_rounds"]] == ["vocab", "labels"]
    assert all(r["clients"] == 7 and r["survives_dropouts"] == 2 for r in p["secure_rounds"])
    assert {"label_counts", "word_counts"} <= set(clear["privacy"]["server_saw_per_client"])


def test_candidates_and_bench_secure_commands(tmp_path, capsys):
    from hasa_flwr.cli import main

    assert main(["candidates", "--top", "2000", "--out", str(tmp_path / "en.txt")]) == 0
    words = (tmp_path / "en.txt").read_text().split()
    assert len(words) == 2000 and words[:3] == ["the", "to", "and"] and len(set(words)) == 2000
    assert all(w.isalpha() and w == w.lower() for w in words)  # cleaned as titles are
    assert main(["candidates", "--from", "synthetic", "--out", str(tmp_path / "syn.txt")]) == 0
    out = tmp_path / "bench"
    assert main(["bench", "secure", "--app", str(ROOT), "--seeds", "0", "--candidates", str(tmp_path / "syn.txt"),
                 "--set", "num-clients=4", "--out", str(out)]) == 0
    row = json.loads((out / "secure.json").read_text())["rows"][0]
    assert row["score_max_abs_error"] == 0.0 and row["pooled_exact"] and row["widths_identical"]
    assert row["vocab_kept"] == 1.0 and row["exchanges_secure"] == 6 and row["bytes_secure"] > 0
    assert "| 0 |" in (out / "secure.md").read_text()


def test_secure_scores_on_images_equal_the_clear_ones():
    """Images have no vocabulary round: only the label histogram is summed securely."""
    rc = {**app_defaults(ROOT), "dataset": "digits", "num-clients": 5}
    clear, secure = statistics_phases(rc), statistics_phases({**rc, "secure-stats": True})
    a = np.array([clear["scores"][c.node_id] for c in clear["clients"]])
    b = np.array([secure["scores"][c.node_id] for c in secure["clients"]])
    assert np.abs(a - b).max() <= 1e-12 and [s.what for s in secure["secure"]] == ["labels"]
    assert all(c.label_counts is None for c in secure["clients"])
