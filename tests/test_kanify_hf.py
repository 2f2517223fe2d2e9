"""fusedkat.kanify on Hugging Face transformers models (random small configs, nothing downloaded):
GPT-2 (Conv1D, tanh-GELU), BERT (MLP split over two sibling modules), ViT, Llama (gated: reported).
Logits before/after, every weight kept, torch.compile(fullgraph=True) and the fuse pass."""
from __future__ import annotations

import logging

import pytest
import torch

transformers = pytest.importorskip("transformers")

import fusedkat  # noqa: E402
import compile_passes  # noqa: E402
from fusedkat.nn import GroupRational, KanLinear  # noqa: E402
from kanify_helpers import GR, RL, assert_state_kept, compile_with_fuse_pass, count, spread_mlps  # noqa: E402

logging.getLogger("transformers").setLevel(logging.ERROR)  # small vocabularies: token-id warnings
VOCAB, SEQ = 64, 12


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _gpt2(n_layer=2):
    cfg = transformers.GPT2Config(n_layer=n_layer, n_embd=32, n_head=2, vocab_size=VOCAB, n_positions=SEQ,
                                  use_cache=False, bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(cfg)


def _bert(n_layer=2):
    cfg = transformers.BertConfig(num_hidden_layers=n_layer, hidden_size=32, num_attention_heads=2,
                                  intermediate_size=64, vocab_size=VOCAB, max_position_embeddings=SEQ,
                                  num_labels=3, pad_token_id=0)
    return transformers.BertForSequenceClassification(cfg)


def _vit(n_layer=2):
    cfg = transformers.ViTConfig(num_hidden_layers=n_layer, hidden_size=32, num_attention_heads=2,
                                 intermediate_size=64, image_size=32, patch_size=8, num_labels=3)
    return transformers.ViTForImageClassification(cfg)


def _ids():
    return torch.randint(0, VOCAB, (2, SEQ), generator=torch.Generator().manual_seed(3))


FAMILIES = {
    # builder, inputs, activation, found_by, (fc1, fc2) of the first MLP
    "gpt2": (_gpt2, lambda: (_ids(),), "gelu_tanh", "trace", ("transformer.h.0.mlp.c_fc", "transformer.h.0.mlp.c_proj")),
    "bert": (_bert, lambda: (_ids(),), "gelu", "sibling order",
             ("bert.encoder.layer.0.intermediate.dense", "bert.encoder.layer.0.output.dense")),
    "vit": (_vit, lambda: (torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4)),), "gelu", None,
            None),  # transformers 5 has one ViTMLP module (trace); 4.x split it like BERT (sibling order)
}


def _model(family):
    torch.manual_seed(0)
    m = FAMILIES[family][0]().eval()
    n = spread_mlps(m)
    return m, n


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_hf_logits_weights_compile_and_fusion(family):
    _, inputs, activation, found_by, first = FAMILIES[family]
    model, n_mlps = _model(family)
    assert n_mlps == 2
    x = inputs()
    k, rep = fusedkat.kanify(model)
    assert len(rep.converted) == 2, str(rep)
    assert {c.activation for c in rep.converted} == {activation}
    if found_by is not None:
        assert {c.found_by for c in rep.converted} == {found_by}
    if first is not None:
        assert (rep.converted[0].fc1, rep.converted[0].fc2) == first
    assert all(isinstance(k.get_submodule(c.act), GroupRational) for c in rep.converted)
    assert all(isinstance(k.get_submodule(c.fc1), KanLinear) for c in rep.converted)
    added = assert_state_kept(model, k)
    assert len(added) == 8
    with torch.no_grad():
        y, yk = model(*x).logits, k(*x).logits
    err = (yk - y).abs().max().item()
    assert err < 2e-2 * y.abs().max().item(), (err, y.abs().max().item())
    k_swish, _ = fusedkat.kanify(model, act_init="swish")  # control: the wrong fit is visibly worse
    with torch.no_grad():
        assert (k_swish(*x).logits - y).abs().max().item() > 5 * err

    compiled, fused, graphs = compile_with_fuse_pass(k)
    with torch.no_grad():
        yc = compiled(*x).logits
    assert len(graphs) == 1  # fullgraph=True: one graph, no break
    assert fused == [2]
    assert count(graphs[0], RL) == 4 and count(graphs[0], GR) == 0
    torch.testing.assert_close(yc, yk, rtol=1e-5, atol=1e-5)


def test_gpt2_conv1d_layout_kept_and_trains():
    model, _ = _model("gpt2")
    k, rep = fusedkat.kanify(model.train())
    c_fc, c_proj = k.transformer.h[0].mlp.c_fc, k.transformer.h[0].mlp.c_proj
    # HF Conv1D stores (in, out): the Parameters keep that layout, the forward uses their transpose
    assert c_fc.transposed and c_proj.transposed and c_proj.rational is None
    assert tuple(c_fc.weight.shape) == (32, 128) and (c_fc.in_features, c_fc.out_features) == (32, 128)
    assert k.transformer.wte.weight is k.lm_head.weight  # the tie survives
    ids = _ids()
    out = k(ids, labels=ids)
    out.loss.backward()
    for p in (c_fc.rational.weight_numerator, k.transformer.h[0].mlp.act.weight_denominator, c_fc.weight):
        assert p.grad is not None and p.grad.abs().sum() > 0


@pytest.mark.slow
def test_gpt2_fusedkat_backend_inductor():
    """The real backend (fuse pass + inductor) on the converted GPT-2, eval logits vs eager."""
    model, _ = _model("gpt2")
    k, _ = fusedkat.kanify(model)
    ids = _ids()
    compiled = torch.compile(k, backend="fusedkat", fullgraph=True)
    with compile_passes.capture_graphs() as graphs, torch.no_grad():
        yc = compiled(ids).logits
    assert len(graphs) == 1 and graphs[0].fused == 2
    assert count(graphs[0].graph, RL) == 4 and count(graphs[0].graph, GR) == 0
    with torch.no_grad():
        torch.testing.assert_close(yc, k(ids).logits, rtol=1e-4, atol=1e-5)


def test_llama_gated_mlp_reported():
    cfg = transformers.LlamaConfig(num_hidden_layers=1, hidden_size=32, num_attention_heads=2, num_key_value_heads=2,
                                   intermediate_size=64, vocab_size=VOCAB)
    k, rep = fusedkat.kanify(transformers.LlamaForCausalLM(cfg))
    assert not rep.converted
    assert [s.path for s in rep.skipped] == ["model.layers.0.mlp.act_fn"]
    assert rep.skipped[0].reason.startswith("gated MLP")


def test_bert_pooler_is_not_an_mlp():
    _, rep = fusedkat.kanify(_bert(1))
    assert [s.path for s in rep.skipped] == ["bert.pooler.activation"]
    assert "no later sibling starts with a linear layer" in rep.skipped[0].reason
