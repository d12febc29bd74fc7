"""The saved-model format and init-from, without Flower."""

import json

import pytest
import torch
from conftest import ROOT

from hasa_flwr.federation.config import settings_from_run_config
from hasa_flwr.study.launch import app_defaults
from hasa_flwr.method.model_files import ModelFileError, load_model
from hasa_flwr.federation.run_models import init_from, save_run_models

VOCAB = ["<pad>", "<unk>", *(f"w{i}" for i in range(30))]


def settings(**over):
    return settings_from_run_config({**app_defaults(ROOT), "embed-dim": 8, "hidden-dim": 16, **over})


def saved_run(tmp_path, s=None):
    s = s or settings()
    model = s.initial_model(len(VOCAB))
    clients = [{"name": "a/b", "partition_id": 0, "width": 0.5, "cap": 0.8},
               {"name": "c", "partition_id": 1, "width": 0.25, "cap": 0.8}]
    save_run_models(tmp_path, s, model.state_dict(), model.slicing_spec(), num_classes=len(VOCAB), input_shape=None,
                    vocab=VOCAB, clients=clients, run_id=7)
    return model


def test_round_trip_is_bit_identical_and_subnets_are_prefixes(tmp_path):
    model = saved_run(tmp_path)
    sup = load_model(tmp_path)
    assert all(torch.equal(v, sup.state[k]) for k, v in model.state_dict().items())
    sub = load_model(tmp_path, client="a/b")  # saved under a safe folder name, found by the client's name
    assert sub.width == 0.5 and (tmp_path / "clients" / "a_b").is_dir()
    assert all(torch.equal(v, sup.build(0.5).state_dict()[k]) for k, v in sub.state.items())
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary folder left behind


def test_metadata_that_does_not_match_the_weights_is_refused(tmp_path):
    saved_run(tmp_path)
    meta_path = tmp_path / "model" / "model.json"
    meta = json.loads(meta_path.read_text())
    meta["model"]["sizes"]["hidden"] = 32
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ModelFileError, match="do not fit|does not match"):
        load_model(tmp_path)
    with pytest.raises(ModelFileError, match="client 'zz' is not in"):
        load_model(tmp_path, client="zz")
    with pytest.raises(ModelFileError, match="holds no saved model"):
        load_model(tmp_path / "clients")


def test_init_from_loads_a_fitting_supernet_and_refuses_others(tmp_path):
    model = saved_run(tmp_path)
    loaded = init_from(settings(**{"init-from": str(tmp_path)}), len(VOCAB), None, VOCAB)
    assert all(torch.equal(v, loaded.state[k]) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="does not fit this run.*LSTM|does not fit this run.*lstm"):
        init_from(settings(**{"init-from": str(tmp_path), "hidden-dim": 24}), len(VOCAB), None, VOCAB)
    with pytest.raises(ValueError, match="vocabulary differs"):
        init_from(settings(**{"init-from": str(tmp_path)}), len(VOCAB), None, [*VOCAB[:-1], "other"])
    with pytest.raises(ValueError, match="width-0.25 subnet, not a supernet"):
        init_from(settings(**{"init-from": str(tmp_path / "clients" / "c")}), len(VOCAB), None, VOCAB)
