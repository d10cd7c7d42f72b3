"""Checkpoint formats: atomic writes, weights-only loading, the authors' EasyDict checkpoints."""
import os
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from method.models.checkpoint import (
    CheckpointError,
    atomic_save,
    load_model,
    model_payload,
    own_to_released,
    read_checkpoint,
    released_to_own,
)
from method.models.model import DLDKD, ModelConfig

easydict = pytest.importorskip("easydict")
# The released TVR checkpoint's key names and shapes, one "name<TAB>(shape)" a line (tests/golden/README.md).
KEYS_TSV = Path(__file__).resolve().parent / "golden" / "released_checkpoint_keys_tvr.tsv"


def released_state(visual=3072, query=768, hidden=384, seed=0) -> OrderedDict:
    """A state dict with the released TVR key names and shapes (scaled to the given sizes), random values."""
    if not KEYS_TSV.is_file():
        pytest.fail(f"golden file missing: {KEYS_TSV} (it is part of the repository: restore tests/golden/)",
                    pytrace=False)
    sizes = {3072: visual, 768: query, 384: hidden}
    g = torch.Generator().manual_seed(seed)
    state = OrderedDict()
    for line in KEYS_TSV.read_text().splitlines():
        name, shape = line.split("\t")
        dims = tuple(sizes.get(int(s), int(s)) for s in shape.strip("()").split(",") if s.strip())
        state[name] = torch.randn(dims, generator=g) * 0.1
    return state


def released_cfg(visual=3072, query=768, hidden=384) -> "easydict.EasyDict":
    return easydict.EasyDict(
        visual_input_size=visual, query_input_size=query, A_hidden_size=hidden, B_hidden_size=hidden,
        max_ctx_l=128, max_desc_l=30, map_size=32, input_drop=0.1, device=torch.device("cpu"), drop=0.1,
        n_heads=4, initializer_range=0.02, margin=0.1, use_hard_negative=True, hard_pool_size=20)


def test_released_key_list_has_74_tensors():
    state = released_state()
    assert len(state) == 74
    assert sum(t.numel() for t in state.values()) == 5_755_392


def test_released_checkpoint_loads_weights_only(tmp_path):
    state = released_state(visual=16, query=12, hidden=8)
    path = tmp_path / "model.ckpt"
    torch.save({"model": state, "model_cfg": released_cfg(16, 12, 8), "epoch": 7}, path)
    with pytest.raises(Exception):  # plain weights-only loading refuses the EasyDict ...
        torch.load(path, weights_only=True)
    model, info = load_model(path, {"n_heads": 2})  # ... ours does not, without running code
    assert info == {"epoch": 7, "released": True, "format": "iccv", "model_config": model.cfg.to_dict()}
    assert model.cfg.student_cfg.hidden_size == 8 and model.cfg.student_cfg.n_heads == 4  # model_cfg wins over opt.json
    ours = model.state_dict()
    for key, value in state.items():
        if key.startswith("A_query_input_proj."):
            continue  # never used by the released model
        torch.testing.assert_close(ours[("exploration." if key[0] == "A" else "inheritance.") + key[2:]], value)


def test_module_prefix_is_accepted(tmp_path):
    state = released_state(visual=16, query=12, hidden=8)
    path = tmp_path / "model.ckpt"
    torch.save({"model": OrderedDict(("module." + k, v) for k, v in state.items()),
                "model_cfg": released_cfg(16, 12, 8), "epoch": 0}, path)
    model, _ = load_model(path)
    torch.testing.assert_close(model.inheritance.mapping_linear.weight, state["B_mapping_linear.weight"])


def test_key_mapping_round_trip():
    state = released_state(visual=16, query=12, hidden=8)
    back = own_to_released(released_to_own(state))
    assert set(back) == set(state) - {k for k in state if k.startswith("A_query_input_proj.")}


def test_shape_mismatch_names_the_tensor(tmp_path):
    state = released_state(visual=16, query=12, hidden=8)
    path = tmp_path / "model.ckpt"
    cfg = released_cfg(20, 12, 8)  # says 20-d frames, weights are 16-d
    torch.save({"model": state, "model_cfg": cfg, "epoch": 0}, path)
    with pytest.raises(CheckpointError, match=r"frame_input_proj.*\(16,\).*\(20,\)"):
        load_model(path)


def test_unknown_format_is_refused(tmp_path):
    path = tmp_path / "model.ckpt"
    torch.save({"model": {"encoder.weight": torch.zeros(2)}}, path)
    with pytest.raises(CheckpointError, match="neither this project's checkpoint"):
        load_model(path)


class Payload:
    """Unpickling this would create a file: a stand-in for arbitrary code in a checkpoint."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


def test_malicious_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "model.ckpt"
    torch.save({"model": {"B_x": torch.zeros(1)}, "model_cfg": Payload(marker)}, path)
    with pytest.raises(CheckpointError, match="refused to load"):
        load_model(path)
    assert not marker.exists()


def test_own_checkpoint_round_trip_weights_only(tmp_path):
    cfg = ModelConfig.of(visual_input_size=6, query_input_size=5, hidden_size=8, n_heads=2)
    model = DLDKD(cfg)
    path = tmp_path / "model.ckpt"
    atomic_save({"format": "dldkd-v1", "model": model.state_dict(), "model_config": cfg.to_dict(), "epoch": 3}, path)
    torch.load(path, weights_only=True)  # plain weights-only load works
    loaded, info = load_model(path)
    assert info["epoch"] == 3 and not info["released"]
    for k, v in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[k], v)


def test_atomic_save_keeps_old_file_when_interrupted(tmp_path, monkeypatch):
    path = tmp_path / "model.ckpt"
    atomic_save({"model": {"w": torch.ones(2)}}, path)

    def broken_save(obj, f):
        f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        atomic_save({"model": {"w": torch.zeros(2)}}, path)
    monkeypatch.undo()
    torch.testing.assert_close(read_checkpoint(path)["model"]["w"], torch.ones(2))
    assert os.listdir(tmp_path) == ["model.ckpt"]  # no temporary file left behind


def test_own_checkpoint_without_a_setting_is_refused_naming_it(tmp_path):
    """A stored model_config that lacks a value that changes the numbers is refused, not filled with a default."""
    model = DLDKD(ModelConfig.of(6, 5, hidden_size=8, n_heads=2, student="gmmformer_v2", single_branch=True,
                                 sft_factor=0.6))
    payload = model_payload(model, 0, 1.0)
    del payload["model_config"]["student_config"]["sft_factor"]
    atomic_save(payload, tmp_path / "model.ckpt")
    with pytest.raises(CheckpointError, match="lacks 'sft_factor'"):
        load_model(tmp_path / "model.ckpt")
    payload["model_config"]["student_config"]["sft_factor"] = 0.6
    atomic_save(payload, tmp_path / "model.ckpt")
    loaded, _ = load_model(tmp_path / "model.ckpt")
    assert loaded.cfg == model.cfg


def test_authors_checkpoint_without_a_setting_takes_the_recipe_table_and_says_so(tmp_path, caplog):
    """An authors' DL-DKD++ checkpoint stores no n_heads: the recipe table's value is taken and logged; without
    a table it is refused naming the key."""
    model = DLDKD(ModelConfig.of(16, 12, hidden_size=8, n_heads=2, share_query_proj=False))
    state = {("exp_" if k.startswith("exploration.") else "") + k.split(".", 1)[1]: v
             for k, v in model.state_dict().items()}
    state = {k.replace("frame_input_proj", "visual_input_proj").replace("frame_pos_embed", "visual_pos_embed")
             .replace("frame_encoder", "visual_encoder").replace("mapping_linear", "out_mapping_linear"): v
             for k, v in state.items()}
    torch.save({"model": state, "model_cfg": {"input_drop": 0.1, "drop": 0.1}, "epoch": 3}, tmp_path / "model.ckpt")
    with pytest.raises(CheckpointError, match="does not store 'n_heads'"):
        load_model(tmp_path / "model.ckpt")
    with caplog.at_level("WARNING", logger="dldkd"):
        loaded, info = load_model(tmp_path / "model.ckpt", fallback=lambda fmt: ({"n_heads": 2}, "the table"))
    assert info["format"] == "dldkdpp" and loaded.cfg.student_cfg.n_heads == 2
    assert "n_heads=2" in caplog.text and "the table" in caplog.text
