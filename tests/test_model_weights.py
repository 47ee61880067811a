"""``model.weights`` / ``model.weights_sha256`` on the built-in model families (issue: a shared
dense start for a search, part 1): a state-dict file loaded by ``build_model``, every problem one
``ConfigError`` naming the field and the value, raised by the checks that run before any work."""

from __future__ import annotations

import hashlib

import pytest
import torch

from trainables import ConfigError, TrialConfig, check_trial, fit
from trainables.data import describe, load
from trainables.models import build_model
from trainables.train import evaluate

DATA = {"name": "digits"}
MLP = {"name": "mlp", "hidden": [12]}


def _saved_mlp(tmp_path, model=MLP, seed=3):
    """An MLP for the digits data, built with its own seed, saved as a plain state dict."""
    torch.manual_seed(seed)
    net = build_model(TrialConfig.from_dict({"data": DATA, "model": model}).model, describe(
        TrialConfig.from_dict({"data": DATA}).data))
    path = tmp_path / "start.pt"
    torch.save(net.state_dict(), path)
    return net, path


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_fit_with_zero_epochs_scores_the_given_weights(tmp_path):
    net, path = _saved_mlp(tmp_path)
    cfg = TrialConfig.from_dict({"data": DATA, "model": {**MLP, "weights": str(path),
                                                         "weights_sha256": _sha(path)},
                                 "optim": {"epochs": 0}, "seed": 11})
    check_trial(cfg)
    result = fit(cfg)
    direct = evaluate(net, load(cfg.data).test)
    assert result.metrics["test_accuracy"] == pytest.approx(direct["accuracy"])
    for name, tensor in net.state_dict().items():
        assert torch.equal(result.model.state_dict()[name].cpu(), tensor), name


def test_weights_are_loaded_only_when_asked(tmp_path):
    net, path = _saved_mlp(tmp_path)
    cfg = TrialConfig.from_dict({"data": DATA, "model": {**MLP, "weights": str(path)}})
    spec = describe(cfg.data)
    loaded = build_model(cfg.model, spec)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in net.state_dict().items())
    torch.manual_seed(99)
    fresh = build_model(cfg.model, spec, weights=False)
    assert not torch.equal(fresh.state_dict()["fc1.weight"], net.state_dict()["fc1.weight"])


def test_a_relative_path_is_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = TrialConfig.from_dict({"model": {**MLP, "weights": "w/start.pt"}})
    assert cfg.model.weights == str(tmp_path / "w" / "start.pt")
    assert TrialConfig.from_dict(cfg.to_dict()).model.weights == cfg.model.weights


def _error(cfg_dict) -> str:
    with pytest.raises(ConfigError) as info:
        check_trial(TrialConfig.from_dict(cfg_dict))
    message = str(info.value)
    assert "\n" not in message
    return message


def test_a_missing_file_names_the_field_and_the_path(tmp_path):
    missing = tmp_path / "nope.pt"
    message = _error({"data": DATA, "model": {**MLP, "weights": str(missing)}})
    assert message == f"invalid config: model.weights: no such file (got '{missing}')"


def test_an_unreadable_file_names_the_field(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_text("not a state dict")
    message = _error({"data": DATA, "model": {**MLP, "weights": str(junk)}})
    assert message.startswith("invalid config: model.weights: cannot be read as a state dict")
    assert f"(got '{junk}')" in message


def test_wrong_shapes_name_the_field_and_the_layer(tmp_path):
    _, path = _saved_mlp(tmp_path, model={"name": "mlp", "hidden": [20]})
    message = _error({"data": DATA, "model": {**MLP, "weights": str(path)}})
    assert message.startswith("invalid config: model.weights: does not match the model: fc1.weight has "
                              "shape [20, 64] in the file, [12, 64] in the model")
    assert f"(got '{path}')" in message


def test_missing_keys_name_the_field(tmp_path):
    _, path = _saved_mlp(tmp_path, model={"name": "mlp", "hidden": [12, 12]})
    message = _error({"data": DATA, "model": {**MLP, "weights": str(path)}})
    assert "model.weights: does not match the model: unexpected keys ['fc3.weight', 'fc3.bias']" in message


def test_a_changed_file_fails_its_hash(tmp_path):
    _, path = _saved_mlp(tmp_path)
    recorded = _sha(path)
    _saved_mlp(tmp_path, seed=4)  # same shapes, other contents: only the hash tells
    message = _error({"data": DATA, "model": {**MLP, "weights": str(path), "weights_sha256": recorded}})
    assert message == (f"invalid config: model.weights_sha256: does not match the file {path} (its sha256 "
                       f"is {_sha(path)}): the file changed (got '{recorded}')")


def test_the_hash_is_checked_where_the_model_is_built(tmp_path):
    _, path = _saved_mlp(tmp_path)
    cfg = TrialConfig.from_dict({"data": DATA, "model": {**MLP, "weights": str(path),
                                                         "weights_sha256": "0" * 64}})
    with pytest.raises(ConfigError, match=r"^invalid config: model\.weights_sha256: does not match"):
        build_model(cfg.model, describe(cfg.data))
    build_model(cfg.model, describe(cfg.data), weights=False)  # an architecture only: no file read


@pytest.mark.parametrize("model, expected", [
    ({"weights": "IMAGENET1K_V1"}, "model.weights: model 'mlp' has no named weights: give a state-dict "
                                   "file path (with a `/` or a file suffix, e.g. ./IMAGENET1K_V1.pt) "
                                   "(got 'IMAGENET1K_V1')"),
    ({"weights_sha256": "ab" * 32}, "model.weights_sha256: checks the `model.weights` file, but "
                                    "model.weights is None (got '" + "ab" * 32 + "')"),
    ({"weights": "/w.pt", "weights_sha256": "xyz"}, "model.weights_sha256: expected 64 hexadecimal "
                                                    "digits (`sha256sum FILE`) (got 'xyz')"),
])
def test_bad_values_are_config_errors(model, expected):
    with pytest.raises(ConfigError) as info:
        TrialConfig.from_dict({"model": {**MLP, **model}})
    assert str(info.value) == "invalid config: " + expected


@pytest.mark.parametrize("name", ["lenet_cges", "resnet20", "vgg16_cifar"])
def test_every_built_in_family_has_weights(name, tmp_path):
    missing = tmp_path / "nope.pt"
    cfg = TrialConfig.from_dict({"model": {"name": name, "weights": str(missing)}})
    assert cfg.model.weights == str(missing)
    with pytest.raises(ConfigError, match=rf"model\.weights: model '{name}' has no named weights"):
        TrialConfig.from_dict({"model": {"name": name, "weights": "DEFAULT"}})
