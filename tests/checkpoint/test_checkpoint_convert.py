"""`convert`: a fixture in the 2021 release layout (8 slices made here with MindSpore's slicing
rules, the strategy file, three .npy tables, vocab.model) converts back bitwise and drives
`generate`; MindFormers and HF round trips are bitwise with the orientations checked by hand;
what does not fit is refused with names and shapes."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import yaml

from ckpt_fixtures import CKPT_MODEL, trained_tensors
from pangu_ms.cli import main
from pangu_ms.errors import CheckpointError

DP, MP = 2, 4
L = CKPT_MODEL["num_layers"]

# the 2021 code's names, read from its PANGUALPHA_Model: nn.Dense dense1/2/3 store [out, in];
# Mapping (attention.projection, output.projection) and Mapping_output (output.mapping) [in, out]
RELEASED_INNER = {
    "ln1.gamma": "layernorm1.gamma", "ln1.beta": "layernorm1.beta",
    "attention.linear_q.weight": "attention.dense1.weight", "attention.linear_q.bias": "attention.dense1.bias",
    "attention.linear_k.weight": "attention.dense2.weight", "attention.linear_k.bias": "attention.dense2.bias",
    "attention.linear_v.weight": "attention.dense3.weight", "attention.linear_v.bias": "attention.dense3.bias",
    "attention.linear_out.weight": "attention.projection.weight",
    "attention.linear_out.bias": "attention.projection.bias",
    "ln2.gamma": "layernorm2.gamma", "ln2.beta": "layernorm2.beta",
    "ffn.linear_fc1.weight": "output.mapping.weight", "ffn.linear_fc1.bias": "output.mapping.bias",
    "ffn.linear_fc2.weight": "output.projection.weight", "ffn.linear_fc2.bias": "output.projection.bias",
}
TRANSPOSED = {"attention.dense1.weight", "attention.dense2.weight", "attention.dense3.weight"}
# (device matrix, tensor map, optimizer-sharded) as MindSpore derives them from the 2021 shard calls;
# an op using fewer devices than the stage gets the repeat count prepended (every matrix spans 8)
LAYOUT_2021 = {
    "attention.dense1.weight": ([DP, 1, MP], [0, 1], True),  # MatMul((dp,1),(mp,1)) transpose_b
    "attention.dense1.bias": ([DP, MP], [0], False),
    "attention.projection.weight": ([DP, MP, 1], [1, 0], True),  # MatMul((dp,mp),(mp,1))
    "attention.projection.bias": ([MP, DP, 1], [0], False),  # Add((dp,1),(1,)), repeated over mp
    "output.mapping.weight": ([DP, 1, MP], [1, 0], True),  # MatMul((dp,1),(1,mp))
    "output.mapping.bias": ([DP, MP], [0], False),
    "output.projection.weight": ([DP, MP, 1], [1, 0], True),
    "output.projection.bias": ([MP, DP, 1], [0], False),
    "layernorm": ([MP, DP, 1, 1], [0], False),  # Mul((dp,1,1),(1,))
}
for k in ("dense2", "dense3"):
    LAYOUT_2021[f"attention.{k}.weight"] = LAYOUT_2021["attention.dense1.weight"]
    LAYOUT_2021[f"attention.{k}.bias"] = LAYOUT_2021["attention.dense1.bias"]


def released_weights(ours: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The trained weights under the 2021 names and orientation (layers only: the three embedding
    tables ship as .npy files)."""
    out = {}
    for i, (src, dst) in enumerate([(f"backbone.blocks.{i}", f"backbone.blocks.{i}") for i in range(L - 1)]
                                   + [("backbone.query_layer", "backbone.top_query_layer")]):
        for inner, theirs in RELEASED_INNER.items():
            a = ours[f"lm.{src}.{inner}"]
            out[f"{dst}.{theirs}"] = a.T.copy() if theirs in TRANSPOSED else a
    out["backbone.layernorm.gamma"] = ours["lm.backbone.final_ln.gamma"]
    out["backbone.layernorm.beta"] = ours["lm.backbone.final_ln.beta"]
    return out


def layout_2021(name: str):
    if "layernorm" in name:
        return LAYOUT_2021["layernorm"]
    return next(v for k, v in LAYOUT_2021.items() if name.endswith(k))


def mindspore_slice(a: np.ndarray, dev: list[int], tmap: list[int], opt: bool, rank: int) -> np.ndarray:
    """The slice device `rank` holds, by MindSpore's rules: device coordinates row-major over `dev`,
    dimension d split by dev[-1 - tmap[d]] at that axis' coordinate, then (parallel optimizer) the
    first dimension's block cut again over the repeated dp axis (axis 0)."""
    coord, r = [], rank
    for n in reversed(dev):
        coord.insert(0, r % n)
        r //= n
    idx = []
    for d, m in enumerate(tmap):
        k = 1 if m == -1 else dev[len(dev) - 1 - m]
        c = 0 if m == -1 else coord[len(dev) - 1 - m]
        size = a.shape[d] // k
        idx.append([c * size, (c + 1) * size])
    if opt:
        piece = (idx[0][1] - idx[0][0]) // dev[0]
        idx[0] = [idx[0][0] + coord[0] * piece, idx[0][0] + (coord[0] + 1) * piece]
    return np.ascontiguousarray(a[tuple(slice(x, y) for x, y in idx)])


def write_strategy(path, names_shapes, dp: int, mp: int) -> None:
    from mindspore.train import node_strategy_pb2 as pb

    m = pb.ParallelStrategyMap()
    m.current_stage = 0
    item = m.parallel_strategy_item.add()
    item.node_name = "Default/network-PANGUALPHAWithLoss"
    item.parallel_strategys.stage = 0
    for name in names_shapes:
        dev, tmap, opt = layout_2021(name)
        dev = [dp if d == DP else mp if d == MP else d for d in dev]
        li = m.parallel_layout_item.add()
        li.param_name = name
        lay = li.parallel_layouts
        lay.dev_matrix.add().dim.extend(dev)
        lay.tensor_map.add().dim.extend(tmap)
        lay.param_split_shape.add()
        lay.indices_offset.add()
        lay.field = 0
        lay.opt_weight_shard_size = dp if opt else 0
        lay.opt_weight_shard_step = mp if opt else 0
    path.write_bytes(m.SerializeToString())


@pytest.fixture(scope="module")
def ours():
    return {k: v for k, v in trained_tensors().items() if k.startswith("lm.")}


@pytest.fixture(scope="module")
def vocab_model(tmp_path_factory):
    from pangu_ms.config import TokenizerConfig
    from pangu_ms.tokenizer import segment, train_tokenizer

    d = tmp_path_factory.mktemp("tok")
    text = ["今天天气很好，我们去公园散步。", "人民日报发表评论文章，讨论经济发展。"]
    train_tokenizer(TokenizerConfig(vocab_size=40, byte_fallback=False, character_coverage=1.0), d,
                    segmented=[segment(t) for t in text * 30])
    return d / "vocab.model"


@pytest.fixture(scope="module")
def released(tmp_path_factory, ours, vocab_model):
    """A directory laid out like the 2021 release download."""
    import mindspore as ms

    d = tmp_path_factory.mktemp("released")
    theirs = released_weights(ours)
    for rank in range(DP * MP):
        ms.save_checkpoint([{"name": n, "data": ms.Tensor(mindspore_slice(a, *layout_2021(n), rank))}
                            for n, a in theirs.items()], str(d / f"filerted_{rank}.ckpt"))
    write_strategy(d / "pangu_alpha_tiny_ckpt_strategy.ckpt", theirs, DP, MP)
    np.save(d / "word_embedding.npy", ours["lm.backbone.word_embedding.embedding_table"])
    np.save(d / "position_embedding.npy", ours["lm.backbone.position_embedding.embedding_table"])
    np.save(d / "top_query_embedding.npy", ours["lm.backbone.top_query_embedding.embedding_table"])
    shutil.copyfile(vocab_model, d / "vocab.model")
    return d


@pytest.fixture(scope="module")
def model_yaml(tmp_path_factory):
    p = tmp_path_factory.mktemp("cfg") / "model.yaml"
    p.write_text(yaml.safe_dump({"model": {**CKPT_MODEL, "dropout": 0.0}}), encoding="utf-8")
    return p


@pytest.fixture(scope="module")
def converted(released, model_yaml, tmp_path_factory):
    out = tmp_path_factory.mktemp("converted")
    assert main(["convert", "--from", "released", "--src", str(released), "--out", str(out),
                 "--config", str(model_yaml)]) == 0
    return out


def _model_weights(run_dir) -> dict[str, np.ndarray]:
    from pangu_ms.checkpoint.inference import model_weights, newest_complete

    return model_weights(newest_complete(run_dir))


def test_released_fixture_converts_back_bitwise(converted, ours):
    got = _model_weights(converted)
    assert got.keys() == ours.keys()
    for n, a in ours.items():
        np.testing.assert_array_equal(got[n], a, err_msg=n)


def test_converted_release_drives_generate_with_its_vocab_model(converted, capsys):
    from pangu_ms.checkpoint.inference import load_for_inference

    job, _, tok = load_for_inference(converted)
    assert job.model.hidden_size == CKPT_MODEL["hidden_size"] and tok.vocab_size == 40
    assert main(["generate", "--ckpt", str(converted), "--prompt", "今天", "--max-new-tokens", "3",
                 "--temperature", "0", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["prompt"] == "今天"


def test_released_refusals_name_what_differs(released, ours, model_yaml, tmp_path):
    from pangu_ms.checkpoint.convert import import_weights

    def variant(name):
        d = tmp_path / name
        shutil.copytree(released, d)
        return d

    gap = variant("gap")
    (gap / "filerted_5.ckpt").unlink()
    with pytest.raises(CheckpointError, match=r"needs 8 slices but rank\(s\) 5 are missing"):
        import_weights("released", gap, tmp_path / "o1", config=str(model_yaml))
    small = variant("small")
    np.save(small / "word_embedding.npy", np.zeros((500, CKPT_MODEL["hidden_size"]), np.float32))
    with pytest.raises(CheckpointError, match=r"word_embedding.embedding_table is \(500, 128\), expected \(512, 128\)"):
        import_weights("released", small, tmp_path / "o2", config=str(model_yaml))
    other = variant("other")  # the strategy of another layout (dp 4 x mp 2) for these dp 2 x mp 4 slices
    write_strategy(other / "pangu_alpha_tiny_ckpt_strategy.ckpt", released_weights(ours), 4, 2)
    with pytest.raises(CheckpointError, match=r"do not fit the model config|could not merge"):
        import_weights("released", other, tmp_path / "o3", config=str(model_yaml))
    with pytest.raises(CheckpointError, match="pass --config"):
        import_weights("released", released, tmp_path / "o4")  # no shipped size has these dimensions


def test_mindformers_round_trip_is_bitwise_with_its_orientation(converted, ours, model_yaml, tmp_path):
    import mindspore as ms

    from pangu_ms.checkpoint.convert import import_weights

    assert main(["convert", "--to", "mindformers", "--src", str(converted), "--out", str(tmp_path / "mf.ckpt")]) == 0
    mf = {n: p.asnumpy() for n, p in ms.load_checkpoint(str(tmp_path / "mf.ckpt")).items()}
    q = "lm.backbone.query_layer"
    np.testing.assert_array_equal(mf["backbone.top_query_layer.attention.dense1.weight"],
                                  ours[f"{q}.attention.linear_q.weight"].T)  # nn.Dense: [out, in]
    np.testing.assert_array_equal(mf["backbone.blocks.1.attention.projection.weight"],
                                  ours["lm.backbone.blocks.1.attention.linear_out.weight"])  # [in, out]
    np.testing.assert_array_equal(mf["backbone.blocks.0.output.mapping.weight"],
                                  ours["lm.backbone.blocks.0.ffn.linear_fc1.weight"])  # [H, 4H]
    np.testing.assert_array_equal(mf["backbone.embedding.word_embedding.embedding_table"],
                                  ours["lm.backbone.word_embedding.embedding_table"])
    assert len(mf) == len(ours)
    import_weights("mindformers", tmp_path / "mf.ckpt", tmp_path / "back", config=str(model_yaml))
    back = _model_weights(tmp_path / "back")
    for n, a in ours.items():
        np.testing.assert_array_equal(back[n], a, err_msg=n)
    del mf["backbone.blocks.1.attention.dense2.bias"]
    ms.save_checkpoint([{"name": n, "data": ms.Tensor(a)} for n, a in mf.items()], str(tmp_path / "gap.ckpt"))
    with pytest.raises(CheckpointError, match=r"missing 1 weight\(s\), e.g. backbone.blocks.1.attention.dense2.bias"):
        import_weights("mindformers", tmp_path / "gap.ckpt", tmp_path / "x", config=str(model_yaml))


def test_hf_round_trip_is_bitwise_and_readable_by_the_safetensors_package(converted, ours, tmp_path):
    from safetensors.numpy import load_file, save_file

    from pangu_ms.checkpoint.convert import import_weights

    assert main(["convert", "--to", "hf", "--src", str(converted), "--out", str(tmp_path / "hf")]) == 0
    hf = load_file(str(tmp_path / "hf" / "model.safetensors"))
    conf = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert (conf["num_layers"], conf["intermediate_size"], conf["max_position_embeddings"]) == (L, 512, 16)
    q = f"transformer.h.{L - 1}"  # the query layer is the last of transformer.h
    np.testing.assert_array_equal(hf[f"{q}.attn.q_proj.weight"],
                                  ours["lm.backbone.query_layer.attention.linear_q.weight"].T)
    np.testing.assert_array_equal(hf["transformer.h.0.mlp.c_fc.weight"],
                                  ours["lm.backbone.blocks.0.ffn.linear_fc1.weight"].T)
    np.testing.assert_array_equal(hf["transformer.wqe.weight"], ours["lm.backbone.top_query_embedding.embedding_table"])
    assert "lm_head.weight" not in hf and (tmp_path / "hf" / "vocab.model").is_file()
    assert main(["convert", "--from", "hf", "--src", str(tmp_path / "hf"), "--out", str(tmp_path / "back")]) == 0
    back = _model_weights(tmp_path / "back")
    for n, a in ours.items():
        np.testing.assert_array_equal(back[n], a, err_msg=n)
    hf["lm_head.weight"] = hf["transformer.wte.weight"] + 1.0  # an untied head
    save_file(hf, str(tmp_path / "hf" / "model.safetensors"))
    with pytest.raises(CheckpointError, match="lm_head.weight differs from transformer.wte.weight"):
        import_weights("hf", tmp_path / "hf", tmp_path / "x")
