"""Photos as they come: paths, PIL images and pictures of any size."""

import os
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from sklearn.model_selection import GridSearchCV
from skorch.dataset import ValidSplit
from torch import nn

import sktune.data.photos as photos_module
from sktune import FineTuneClassifier, FineTuneRegressor
from sktune.data.photos import PhotoSpec, decode


def rgb_cnn() -> nn.Sequential:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )


def make_photos(folder: Path, n: int = 24, seed: int = 0):
    """JPEGs of mixed sizes and orientations whose class is their color."""
    rng = np.random.default_rng(seed)
    paths, y = [], []
    for i in range(n):
        label = i % 2
        h, w = rng.integers(24, 80, size=2)
        pixels = rng.integers(0, 60, size=(h, w, 3), dtype=np.uint8)
        pixels[..., 0 if label else 2] += 180
        path = folder / f"{i:03d}.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        paths.append(str(path))
        y.append(label)
    return paths, np.array(y)


@pytest.fixture
def photos(tmp_path):
    return make_photos(tmp_path)


def classifier(**kwargs):
    params = dict(
        image_size=16, max_epochs=3, batch_size=8, lr=0.05, random_state=0, verbose=0
    )
    return FineTuneClassifier(rgb_cnn(), **{**params, **kwargs})


def test_paths_in_every_container_give_the_same_predictions(photos):
    paths, y = photos
    clf = classifier().fit(paths, y)
    assert clf.input_spec_.kind == "photos"
    assert clf.input_spec_.shape == (16, 16, 3)
    expected = clf.predict_proba(paths)
    containers = [
        [Path(p) for p in paths],
        np.array(paths),
        np.array(paths, dtype=object),
        pd.Series(paths),
        pd.DataFrame({"file": paths}),
        tuple(paths),
    ]
    for X in containers:
        np.testing.assert_array_equal(clf.predict_proba(X), expected)
    assert clf.score(paths, y) == 1.0


def test_pil_images_and_ragged_arrays_are_photos(photos):
    paths, y = photos
    clf = classifier().fit(paths, y)
    pil = [Image.open(p) for p in paths]
    arrays = [np.asarray(image) for image in pil]
    assert len({a.shape for a in arrays}) > 1  # ragged
    expected = clf.predict_proba(pil)
    np.testing.assert_array_equal(clf.predict_proba(arrays), expected)
    # From a path a JPEG decodes at a reduced scale (see the draft test):
    # nearly the same pixels.
    np.testing.assert_allclose(clf.predict_proba(paths), expected, atol=0.02)
    # And as training data: the same decoded pixels, the same model.
    np.testing.assert_allclose(
        classifier().fit(arrays, y).predict_proba(pil),
        classifier().fit(pil, y).predict_proba(pil),
        atol=1e-6,
    )


def test_each_photo_is_decoded_once_per_fit(photos, monkeypatch):
    paths, y = photos
    decoded = []

    def counting_decode(source, spec):
        decoded.append(source)
        return decode(source, spec)

    monkeypatch.setattr(photos_module, "decode", counting_decode)
    # A full fine-tune (no cache): every epoch reads every training photo,
    # the validation split is scored every epoch, and still one decode each.
    classifier(max_epochs=3, train_split=ValidSplit(4)).fit(paths, y)
    assert sorted(decoded) == sorted(paths)
    # Restarts train and choose on parts of the decoded photos.
    decoded.clear()
    classifier(max_epochs=2, n_restarts=2).fit(paths, y)
    assert sorted(decoded) == sorted(paths)
    # Beyond the budget, photos are decoded as they are used: the first
    # ones (that fit) once, the rest once per epoch (and the check pass
    # reads them only at the smallest scale).
    decoded.clear()
    per_photo_mb = 16 * 16 * 3 / 2**20
    classifier(max_epochs=3, cache_size=10 * per_photo_mb).fit(paths, y)
    counts = {p: decoded.count(p) for p in paths}
    assert [counts[p] for p in paths[:10]] == [1] * 10
    assert [counts[p] for p in paths[10:]] == [3] * (len(paths) - 10)


def test_workers_decode_the_same_pixels(photos):
    paths, y = photos
    alone = classifier(iterator_train__num_workers=0).fit(paths, y)
    workers = classifier(iterator_train__num_workers=2).fit(paths, y)
    np.testing.assert_allclose(
        workers.predict_proba(paths), alone.predict_proba(paths), atol=1e-6
    )
    # Over budget, the training loader decodes in worker processes.
    tight = classifier(iterator_train__num_workers=2, cache_size=1e-3)
    np.testing.assert_allclose(
        tight.fit(paths, y).predict_proba(paths), alone.predict_proba(paths), atol=1e-6
    )


def test_bad_files_are_all_named_before_any_training(photos, tmp_path):
    paths, y = photos
    clf = classifier().fit(paths, y)
    before = clf.predict_proba(paths)
    history = len(clf.history_)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(Path(paths[0]).read_bytes()[:400])
    text = tmp_path / "notes.jpg"
    text.write_text("not a photo")
    bad = list(paths)
    bad[3] = str(tmp_path / "missing.jpg")
    bad[5] = str(truncated)
    bad[7] = str(text)
    bad[9] = str(tmp_path)
    with pytest.raises(ValueError) as info:
        clf.fit(bad, y)
    message = str(info.value)
    assert message.startswith(f"4 of {len(paths)} photos cannot be read")
    for i in (3, 5, 7, 9):
        assert f"X[{i}] '{bad[i]}'" in message
    assert "no such file" in message and "not an image" in message
    assert "truncated" in message and "directory" in message
    # Nothing changed: the fitted model predicts as before.
    assert len(clf.history_) == history
    np.testing.assert_array_equal(clf.predict_proba(paths), before)
    with pytest.raises(ValueError, match=r"1 of 2 photos cannot be read: X\[1\]"):
        clf.predict([paths[0], bad[3]])


@pytest.mark.parametrize(
    "X, match",
    [
        (["a.jpg", 3], r"X\[1\] is 3; every sample of photo input must be a path"),
        (
            [np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.uint16)],
            r"X\[1\] is .* \(an array of uint16, 8 x 8\)",
        ),
        (
            pd.DataFrame({"a": ["x.jpg", "y.jpg"], "b": ["z.jpg", "w.jpg"]}),
            "X has 2 columns of photos",
        ),
    ],
)
def test_photo_input_is_checked_sample_by_sample(X, match):
    with pytest.raises(ValueError, match=match):
        classifier().fit(X, [0, 1][: len(X)])


def test_a_backbone_without_an_input_size_needs_image_size(photos):
    paths, y = photos
    with pytest.raises(ValueError, match=r"pass image_size=\(height, width\)"):
        classifier(image_size=None).fit(paths, y)


def test_strings_are_paths_for_an_image_backbone_and_say_so(photos):
    with pytest.raises(ValueError, match=r"none is a file: .* strings are paths of"):
        classifier().fit(["a great film", "a dull film"], [1, 0])


def test_no_path_is_kept_in_a_fitted_model(photos, tmp_path):
    paths, y = photos
    clf = classifier(freeze="all").fit(paths, y)
    folder = os.fsencode(Path(paths[0]).parent.name)
    assert folder not in pickle.dumps(clf)
    out = tmp_path / "saved"
    clf.save_pretrained(out)
    for file in out.iterdir():
        assert folder not in file.read_bytes(), file.name
    loaded = FineTuneClassifier.from_pretrained(out, backbone=rgb_cnn())
    np.testing.assert_allclose(
        loaded.predict_proba(paths), clf.predict_proba(paths), atol=1e-6
    )


def test_the_prefix_cache_knows_a_file_by_its_contents_and_time(photos):
    paths, y = photos
    classifier(freeze="all").fit(paths, y)
    refit = classifier(freeze="all").fit(paths, y)
    assert refit.cache_info_["reused"] == len(paths)
    # A file rewritten (a new modification time) is a new sample.
    Image.new("RGB", (30, 30), "white").save(paths[0])
    os.utime(paths[0], ns=(0, 10**9))
    changed = classifier(freeze="all").fit(paths, y)
    assert changed.cache_info_["computed"] == 1


def test_a_grid_search_runs_on_paths(photos):
    paths, y = photos
    search = GridSearchCV(classifier(max_epochs=2), {"freeze": [None, "all"]}, cv=2)
    search.fit(paths, y)
    assert search.best_estimator_.predict(paths[:4]).shape == (4,)


def test_a_regressor_takes_photos(photos):
    paths, y = photos
    reg = FineTuneRegressor(rgb_cnn(), image_size=16, max_epochs=2, verbose=0)
    assert reg.fit(paths, y.astype(float)).predict(paths).shape == (len(paths),)


# -- decoding -----------------------------------------------------------------


SPEC = PhotoSpec((32, 32), crop_pct=1.0, interpolation="bilinear")


def test_decode_applies_the_exif_orientation(tmp_path):
    pixels = np.zeros((40, 60, 3), np.uint8)
    pixels[:, :30] = 255  # white on the left
    image = Image.fromarray(pixels)
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated 90 degrees clockwise
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif, quality=95)
    spec = PhotoSpec((60, 40))  # the upright photo: 60 high, 40 wide
    out = decode(str(path), spec)
    assert out.shape == (60, 40, 3)
    # Rotated clockwise, the white left half is now on top.
    assert out[:25].mean() > 200 and out[35:].mean() < 50


@pytest.mark.parametrize(
    "mode", ["L", "LA", "P", "P-transparent", "RGBA", "CMYK", "1", "I;16"]
)
def test_decode_converts_every_mode_to_rgb(tmp_path, mode):
    rgb = Image.fromarray(np.full((20, 30, 3), (200, 120, 40), np.uint8))
    if mode == "I;16":
        image = Image.fromarray(np.full((20, 30), 65535, np.uint16))
    elif mode == "P-transparent":
        image = rgb.convert("P")
        image.info["transparency"] = 0
    else:
        image = rgb.convert(mode)
    path = tmp_path / f"photo.{'tiff' if mode == 'CMYK' else 'png'}"
    image.save(path)
    out = decode(str(path), SPEC)
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    if mode == "I;16":  # 16-bit: the full range, white is 255 (not clipped)
        assert out.min() == 255


def test_decode_gives_gray_to_a_one_channel_backbone(tmp_path):
    path = tmp_path / "photo.jpg"
    Image.new("RGB", (50, 40), (90, 90, 90)).save(path)
    out = decode(str(path), PhotoSpec((16, 16), channels=1))
    assert out.shape == (16, 16, 1)
    assert abs(int(out.mean()) - 90) <= 2


def test_a_large_jpeg_is_reduced_while_it_decodes(tmp_path, monkeypatch):
    from PIL import JpegImagePlugin

    rng = np.random.default_rng(0)
    big = rng.integers(0, 256, (75, 100, 3), dtype=np.uint8).repeat(16, 0).repeat(16, 1)
    path = tmp_path / "big.jpg"
    Image.fromarray(big).save(path, quality=90)  # 1600 x 1200
    sizes = []
    draft = JpegImagePlugin.JpegImageFile.draft

    def recording_draft(self, mode, size):
        result = draft(self, mode, size)
        sizes.append(self.size)
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", recording_draft)
    spec = PhotoSpec((128, 128), crop_pct=0.875, interpolation="bicubic")
    out = decode(str(path), spec)
    assert sizes == [(200, 150)]  # 1/8 scale still covers 128 / 0.875 = 146
    assert out.shape == (128, 128, 3)
    # Against a full-size decode resized the same way, the pixels barely
    # differ (JPEG's DCT scaling is a good downscale).
    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", lambda *a: None)
    full = decode(str(path), spec).astype(float)
    assert np.abs(out - full).mean() < 10


def test_resize_and_crop_follow_timms_evaluation_transform(tmp_path):
    from timm.data import create_transform

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1)
    image = Image.fromarray(pixels)  # 320 x 240, smooth enough to compare
    spec = PhotoSpec((160, 160), crop_pct=0.875, interpolation="bicubic")
    ours = decode(image, spec).astype(float)
    timm = create_transform(
        input_size=(3, 160, 160),
        crop_pct=0.875,
        interpolation="bicubic",
        mean=(0, 0, 0),
        std=(1, 1, 1),
    )
    theirs = timm(image).permute(1, 2, 0).numpy() * 255
    assert ours.shape == theirs.shape
    assert np.abs(ours - theirs).mean() < 3


def test_embed_and_partial_fit_take_photos(photos):
    paths, y = photos
    clf = classifier(freeze="all")
    clf.partial_fit(paths, y, classes=[0, 1])
    clf.partial_fit(paths[:8], y[:8])  # decoded the way the first call fixed
    assert len(clf.history_) == 6
    features = clf.embed(paths)
    assert features.shape == (len(paths), 8)
    np.testing.assert_allclose(clf.embed(paths[:3]), features[:3], atol=1e-6)
